"""Section ``ot``: frequency-guided CAM generation by optimal transport (method.md §5)."""
from __future__ import annotations

from dataclasses import dataclass

from dfa.config.checks import _choice, _nonneg, _positive, _range


@dataclass
class OTConfig:
    """Frequency-guided CAM generation by optimal transport (method.md §5, v2).

    ``formulation``: balanced | relaxed | dustbin | reweight; ``prior``: cam_area |
    cam_area_scaled (the pre-issue-17 count on O-scaled scores) | softmax_sum | tempered |
    uniform | decoder | refined (areas counted on the E(⊙) read-out of the row's learned
    affinities, its background power ``refined_power``) | oracle (the ``areas`` ceiling only);
    ``readout``: posterior | colmax (v1); ``normalize``: class | image; ``score``: fixed |
    literal. ``reg_m`` is τ_m of the relaxed columns; ``tau`` the ``tempered`` prior's
    temperature. ``dfa pseudo`` keeps every image's row/column error, iterations, convergence
    and empty-class flag in ``outputs/pseudo/ot_images.json`` and their summary in
    ``reports/metrics/pseudo.json`` (``ot``); ``debug`` adds each column's plan sum, prior b,
    argmax area and empty flag (background first, absent classes null) to those records and
    the column sums alone to ``outputs/pseudo/ot_columns.json``, so a collapse is visible.
    """
    score: str = "fixed"
    formulation: str = "balanced"
    prior: str = "cam_area"
    prior_mix: float = 0.2
    refined_power: float = 1.0
    tau: float = 0.1
    reg_m: float = 0.3
    readout: str = "posterior"
    normalize: str = "class"
    epsilon: float = 0.1
    max_iters: int = 100
    tol: float = 1e-6
    lambda_l: float = 1.0
    lambda_h: float = 0.1
    debug: bool = False

    def check(self) -> None:
        _choice("ot.score", self.score, ("fixed", "literal"))
        _choice("ot.formulation", self.formulation, ("balanced", "relaxed", "dustbin", "reweight"))
        _choice("ot.prior", self.prior, ("cam_area", "cam_area_scaled", "softmax_sum", "tempered", "uniform",
                                         "decoder", "refined", "oracle"))
        _choice("ot.readout", self.readout, ("posterior", "colmax"))
        _choice("ot.normalize", self.normalize, ("class", "image"))
        _range("ot.prior_mix", self.prior_mix, 0.0, 1.0)
        _positive("ot.refined_power", self.refined_power)
        _positive("ot.tau", self.tau)
        _positive("ot.reg_m", self.reg_m)
        _positive("ot.epsilon", self.epsilon)
        _positive("ot.max_iters", self.max_iters)
        _nonneg("ot.lambda_l", self.lambda_l)
        _nonneg("ot.lambda_h", self.lambda_h)
