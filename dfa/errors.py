"""Expected failures: the CLI prints their message as one line and exits non-zero."""


class WorkbenchError(Exception):
    """A problem the user can fix (bad data, missing artifact, mismatched checkpoint)."""


class NumericalError(WorkbenchError):
    """A NaN/Inf loss or a degenerate solver input; names the step and the term."""
