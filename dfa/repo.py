"""Where the repository is and which commit it is at: read by the stages and by tracking.

Below both (it imports nothing of the package), so ``dfa/tracking.py`` needs no import from
``dfa/stages/``.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


def repo_root() -> Path:
    """The repository root: ``DVC_ROOT`` under DVC (``dvc exp run --temp`` works in a copy), else
    the git top level of the working directory, else the working directory."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip()).resolve()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return Path.cwd().resolve()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def git_dirty() -> bool:
    """Whether tracked files differ from the commit (the code that ran is not ``git_commit()``)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                             text=True, timeout=10)
        return out.returncode == 0 and bool(out.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        return False
