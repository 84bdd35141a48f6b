"""Section ``eval`` (and ``eval.crf``): evaluation with multi-scale, flip and DenseCRF
(method.md §6, §8).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dfa.config.checks import ConfigError, _positive


@dataclass
class CRFConfig:
    """DenseCRF parameters (method.md §6 inference)."""
    enabled: bool = True
    iters: int = 10
    gauss_sxy: float = 1.0
    gauss_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0


@dataclass
class EvalConfig:
    """Evaluation (method.md §6, §8)."""
    scales: list[float] = field(default_factory=lambda: [1.0, 1.2, 1.5])
    flip: bool = True
    workers: int = 2
    crf: CRFConfig = field(default_factory=CRFConfig)
    grid_images: int = 6

    def check(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ConfigError(f"eval.scales: need positive scales, got {self.scales}")
        _positive("eval.workers", self.workers)
