"""Section ``refine``: the background score, its calibration and PAR (method.md §5, §12)."""
from __future__ import annotations

from dataclasses import dataclass, field

from dfa.config.checks import ConfigError, _positive


@dataclass
class RefineConfig:
    """Background score and PAR (method.md §5). ``bg_power`` is the exponent of the background
    channel; ``bg_grid`` the values ``dfa pseudo`` and the ablation choose it from on the
    ``tune`` split for every row (§5, §12) when ``calibrate`` is on. Training calibrates its
    own pseudo-labels the same way when it starts, on ``calibrate_images`` tune images."""
    bg_power: float = 1.0
    calibrate: bool = True
    calibrate_images: int = 100   # tune images the training labels' power is chosen on at step 0 (0: all)
    bg_grid: list[float] = field(default_factory=lambda: [0.1, 0.15, 0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 3.0, 4.0])
    par_dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 12, 24])
    par_iters: int = 20
    # PAR on the image resized by this factor, the result resized back: the anchors' default
    # (WeCLIP / ToCo ``refine_cams_with_bkg_v2(..., down_scale=2)``), 4x less work than 1.0.
    par_scale: float = 0.5

    def check(self) -> None:
        _positive("refine.bg_power", self.bg_power)
        if not self.bg_grid or any(not v > 0 for v in self.bg_grid):
            raise ConfigError(f"refine.bg_grid: need positive values, got {self.bg_grid}")
        if not 0 < self.par_scale <= 1:
            raise ConfigError(f"refine.par_scale: must lie in (0, 1], got {self.par_scale!r}")
