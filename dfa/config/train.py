"""Sections ``decoder`` and ``train``: the segmentation decoder and single-stage training
(method.md §6).
"""
from __future__ import annotations

from dataclasses import dataclass

from dfa.config.checks import _choice, _nonneg, _positive
from dfa.config.clip import PRECISIONS


@dataclass
class DecoderConfig:
    """Segmentation decoder (method.md §6)."""
    width: int = 256
    layers: int = 3
    heads: int = 8
    dropout: float = 0.1
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16: autocast of the decoder

    def check(self) -> None:
        _choice("decoder.precision", self.precision, PRECISIONS)


@dataclass
class TrainConfig:
    """Single-stage training (method.md §6)."""
    steps: int = 1000
    batch_size: int = 4
    lr: float = 2e-4
    decoder_lr_mult: float = 10.0
    # The affinity heads' lr is lr × head_lr_mult (§6: 1, over 30k steps). Not in the paper: on a
    # schedule of a few hundred steps the heads otherwise end within a few hundredths of their init.
    head_lr_mult: float = 1.0
    # A_ha's head (head_inv, rel_inv) alone: null = head_lr_mult. Not in the paper: at head_lr_mult
    # 25, HFAR turns A_ha into a same-class affinity and row 3 loses its spill cut (README, Results).
    inv_head_lr_mult: float | None = None
    weight_decay: float = 0.01
    warmup: int = 50
    power: float = 1.0
    checkpoint_interval: int = 250
    log_interval: int = 10
    dir: str = "checkpoints/dfa"
    compile: bool = False  # torch.compile the decoder (nn.Module.compile keeps state_dict keys)

    def check(self) -> None:
        _positive("train.steps", self.steps)
        _positive("train.batch_size", self.batch_size)
        _positive("train.lr", self.lr)
        _positive("train.head_lr_mult", self.head_lr_mult)
        if self.inv_head_lr_mult is not None:
            _positive("train.inv_head_lr_mult", self.inv_head_lr_mult)
        _nonneg("train.weight_decay", self.weight_decay)
        _nonneg("train.warmup", self.warmup)
        _positive("train.checkpoint_interval", self.checkpoint_interval)
