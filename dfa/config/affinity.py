"""Sections ``cam``, ``affinity`` and ``frequency``: the raw CAM's columns (method.md §1), the
dual-path affinity (§2) and the frequency split and relation maps (§3-4, §10).
"""
from __future__ import annotations

from dataclasses import dataclass

from dfa.config.checks import ConfigError, _auto_or_positive, _choice, _positive


@dataclass
class CamConfig:
    """The raw CAM's columns (method.md §1): ``background`` = residual | prompts | prompt_minmax."""
    background: str = "residual"

    def check(self) -> None:
        _choice("cam.background", self.background, ("residual", "prompts", "prompt_minmax"))


@dataclass
class AffinityConfig:
    """Dual-path affinity (method.md §2). ``inverse``: spatial (v2) | operator (v1)."""
    inverse: str = "spatial"
    hidden: int = 32
    # How the heads start. ``mean`` (v2): each head is a monotone map of the layer mean of its
    # input (A_s: log(N·W), the geometric layer mean of the attention; A_inv: N·W_inv), so
    # row 1 uses a meaningful untrained high-pass affinity. ``attention`` (v1): A_s only.
    # ``random``: PyTorch's default (an untrained head is then a near-constant map).
    head_init: str = "mean"
    # ``pointwise`` (§2): the heads see the K attention maps entry by entry. ``bilinear`` (not in the
    # paper): one more channel, cos(P x_i, P x_j) of the last block's frozen tokens (P: D → ``rank``),
    # starting silent, so a head can learn a relation the attention lacks (dfa.affinity.TokenRelation).
    head: str = "pointwise"
    rank: int = 64
    # §2 v3, what the heads see: ``layers`` (v2), one head-averaged map per kept layer (K channels);
    # ``heads``, every attention head of every kept layer (K·H channels, AFA). Only heads that train
    # read them: rows 0-1 are the same under both (dfa.model.DFA.uses_heads).
    channels: str = "layers"
    renorm_rows: bool = True  # §1 v2: attention rows sum to 1 again after dropping CLS (v1: false)
    sinkhorn_rounds: int = 3
    square: bool = True

    def check(self) -> None:
        _choice("affinity.inverse", self.inverse, ("operator", "spatial"))
        _choice("affinity.head_init", self.head_init, ("mean", "attention", "random"))
        _choice("affinity.head", self.head, ("pointwise", "bilinear"))
        _choice("affinity.channels", self.channels, ("layers", "heads"))
        _positive("affinity.rank", self.rank)
        _positive("affinity.hidden", self.hidden)
        _positive("affinity.sinkhorn_rounds", self.sinkhorn_rounds)


@dataclass
class FrequencyConfig:
    """Frequency split and relation maps (method.md §3-4, §10).

    ``box``: ``auto`` (the ``box_rule`` applied to the grid, §10) or an odd width in tokens;
    ``box_rule``: odd (v2) | v1; ``relation``: softmax (v2) | centred (v1) | raw (paper).
    """
    ratio: float = 0.25
    box: int | str = "auto"
    box_rule: str = "odd"
    relation: str = "softmax"
    temperature: float = 0.1

    def check(self) -> None:
        if not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"frequency.ratio: must lie in (0, 1], got {self.ratio}")
        _auto_or_positive("frequency.box", self.box)
        _choice("frequency.box_rule", self.box_rule, ("odd", "v1"))
        _choice("frequency.relation", self.relation, ("softmax", "centred", "raw"))
        _positive("frequency.temperature", self.temperature)
