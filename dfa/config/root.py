"""The whole of ``params.yaml``: :class:`Config`, its top-level keys and one field per section,
and where a run writes its fixed artifacts (``out_root``, ``smoke/``).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfa.config.ablation import AblationConfig
from dfa.config.affinity import AffinityConfig, CamConfig, FrequencyConfig
from dfa.config.checks import _choice, _nonneg
from dfa.config.clip import CacheConfig, ClipConfig, PretrainConfig
from dfa.config.data import DataConfig
from dfa.config.evaluation import EvalConfig
from dfa.config.loss import LossConfig
from dfa.config.ot import OTConfig
from dfa.config.refine import RefineConfig
from dfa.config.runs import SearchConfig, TrackingConfig
from dfa.config.smoke import SMOKE_ROOT
from dfa.config.train import DecoderConfig, TrainConfig


@dataclass
class Config:
    device: str = "auto"
    seed: int = 0
    # torch's intra-op threads. Fixed, because how a sum is split over threads changes its
    # rounding: 0 (torch's default, one per core) makes the numbers depend on the machine.
    threads: int = 2
    # torch.use_deterministic_algorithms (warn-only); on CUDA also a fixed cuBLAS workspace.
    deterministic: bool = True
    # A folder that takes every fixed artifact (reports/, outputs/, mlartifacts/) of a run that
    # must not touch the default run's: "" = the repository itself. The second embedded
    # benchmark runs with out_root=runs/alt (make ablation-table-alt); --smoke uses smoke/.
    out_root: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    frequency: FrequencyConfig = field(default_factory=FrequencyConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ot: OTConfig = field(default_factory=OTConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    smoke: bool = False
    # Where each value came from (dfa.config.profiles); set by load_config, outside the dataclass
    # fields so that to_dict/flat (fingerprints, MLflow params) do not carry it.
    provenance: typing.ClassVar = None

    def check(self) -> None:
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        _nonneg("threads", self.threads)
        for f in dataclasses.fields(self):
            sub = getattr(self, f.name)
            if hasattr(sub, "check"):
                sub.check()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, for MLflow params and fingerprints."""
        return flatten(self.to_dict())

    def out(self, path: str | Path) -> Path:
        """Where this run writes a stage's fixed artifact (``reports/metrics/train.json``,
        ``outputs/pseudo``, ...): see :func:`out_path`; ``out_root`` moves them all."""
        return Path(self.out_root) / path if self.out_root else out_path(path, self.smoke)


def out_path(path: str | Path, smoke: bool) -> Path:
    """A fixed artifact path as a run writes it: unchanged, or under ``smoke/`` with ``--smoke``.

    For the paths stages write without a params key (``reports/...``, ``outputs/...``, the
    ablation and search checkpoints); the keyed ones are moved by ``SMOKE_PATHS``.
    """
    return SMOKE_ROOT / path if smoke else Path(path)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
