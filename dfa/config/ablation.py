"""Section ``ablation``: the rows of method.md §7, their toggles, the ceilings of §11 and the
seeds of every table cell (§12).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dfa.config.checks import ConfigError, _choice


CEILINGS = ("none", "teacher", "labels", "areas", "grid")


@dataclass
class AblationConfig:
    """Ablation rows of method.md §7 and the toggles behind them.

    ``row`` (0-4) sets the toggles; ``null`` keeps the individual toggles as given.
    ``ceiling`` (§11): none | teacher (LFAA's S_l from ground truth) | labels (HFAR's Y from
    ground truth) | areas (OT's prior = ground-truth areas) | grid (the ground truth's
    majority per token, upsampled and refined by PAR). ``seeds``: the seeds of every table cell (§12).
    """
    row: int | None = 4
    learned_s: bool = True      # A_s from the trained MLP head (LFAA) instead of raw attention
    use_inverse: bool = True    # include the high-pass branch A_inv / A_ha
    align: bool = True          # L_a (LFAA) on
    rectify: bool = True        # L_r (HFAR) on
    combination: str = "ot"     # product = E(⊙) propagation; ot = FG scoring + Sinkhorn OT
    ceiling: str = "none"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    ROWS = {
        0: dict(learned_s=False, use_inverse=False, align=False, rectify=False, combination="product"),
        1: dict(learned_s=False, use_inverse=True, align=False, rectify=False, combination="product"),
        2: dict(learned_s=True, use_inverse=False, align=True, rectify=False, combination="product"),
        3: dict(learned_s=True, use_inverse=True, align=True, rectify=True, combination="product"),
        4: dict(learned_s=True, use_inverse=True, align=True, rectify=True, combination="ot"),
    }
    PAPER_SEED_MIOU = {0: 64.8, 1: 67.2, 2: 75.1, 3: 77.9, 4: 79.1}

    def check(self) -> None:
        if self.row is not None:
            if self.row not in self.ROWS:
                raise ConfigError(f"ablation.row: must be one of 0-4 or null, got {self.row}")
            for k, v in self.ROWS[self.row].items():
                setattr(self, k, v)
        _choice("ablation.combination", self.combination, ("product", "ot"))
        _choice("ablation.ceiling", self.ceiling, CEILINGS)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"ablation.seeds: need distinct seeds, got {self.seeds}")

    def describe(self) -> tuple[str, str]:
        """(affinity used, combination) as in method.md §7's table."""
        s = "A_la" if self.learned_s else "A_s"
        inv = ("A_ha" if self.rectify else "A_inv") if self.use_inverse else None
        if self.combination == "ot":
            return (f"{s}, {inv}" if inv else s), "FG (OT scoring)"
        return (f"{s} ⊙ {inv}" if inv else s), "E(⊙)"
