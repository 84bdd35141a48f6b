"""Section ``loss``: the LFAA / HFAR losses and their weights (method.md §3, §4, §6, §10)."""
from __future__ import annotations

from dataclasses import dataclass

from dfa.config.checks import _auto_or_positive, _choice, _nonneg, _range


@dataclass
class LossConfig:
    """LFAA / HFAR losses and weights (method.md §3, §4, §6, §10).

    ``radius``/``window``: ``auto`` (§10: round(0.4·n), the odd number nearest 0.45·n) or tokens.
    ``align_mask``: alpha (v2) | alpha_v1 | topk; ``align_form``: renormalized (v2) | row (the
    student normalised over its whole row) | printed (v1) | generalized; ``token_labels``: majority (v2) | nearest (v1).
    """
    lambda_align: float = 0.1
    lambda_rect: float = 0.2
    alpha_init: float = 0.5
    alpha_momentum: float = 0.9
    align_mask: str = "alpha"
    align_keep: float = 0.25
    align_form: str = "renormalized"
    align_start: float = 0.2       # fraction of train.steps before L_a and L_r switch on
    radius: int | str = "auto"
    window: int | str = "auto"
    hist_cos: float = 0.5
    token_labels: str = "majority"
    label_margin: float = 0.1
    hfar_diagonal: bool = False    # v1 kept the diagonal pairs and S̄_h over all N² pairs
    rect_balance: str = "pairs"    # L_r's positives: pairs (spec) | fg_bg (AffinityNet's split)

    def check(self) -> None:
        _nonneg("loss.lambda_align", self.lambda_align)
        _nonneg("loss.lambda_rect", self.lambda_rect)
        _range("loss.alpha_momentum", self.alpha_momentum, 0.0, 1.0)
        _range("loss.alpha_init", self.alpha_init, 0.0, 1.0)
        _choice("loss.align_mask", self.align_mask, ("alpha", "alpha_v1", "topk"))
        _range("loss.align_keep", self.align_keep, 0.0, 1.0)
        _choice("loss.align_form", self.align_form, ("renormalized", "row", "printed", "generalized"))
        _range("loss.align_start", self.align_start, 0.0, 1.0)
        _auto_or_positive("loss.radius", self.radius)
        _auto_or_positive("loss.window", self.window)
        _choice("loss.token_labels", self.token_labels, ("majority", "nearest"))
        _range("loss.label_margin", self.label_margin, 0.0, 1.0)
        _choice("loss.rect_balance", self.rect_balance, ("pairs", "fg_bg"))
