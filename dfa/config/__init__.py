"""Typed configuration: ``params.yaml`` becomes these dataclasses once, at the edge.

Every open choice of ``method.md`` is a named field here with the spec's default; the
docstring of each section names the ``method.md`` section it configures. Loading rejects
unknown keys, wrong types and out-of-range values with one message naming the key.
Overrides use dotted keys, ``-S train.steps=100``, parsed as YAML scalars like
``dvc exp run -S``.

One module per group of ``params.yaml`` sections (``data``, ``clip`` with ``pretrain`` and
``cache``, ``affinity`` with ``cam`` and ``frequency``, ``loss``, ``ot``, ``refine``, ``train``
with ``decoder``, ``evaluation`` for ``eval``, ``ablation``, ``runs`` for ``tracking`` and
``search``), ``root`` (the whole :class:`Config`), ``smoke`` (``--smoke``), ``loader`` (read,
override, validate) and ``checks`` (the error type, value checks and typed building). Every
name is re-exported here: ``from dfa.config import X`` is the way to import it.
"""
from __future__ import annotations

from dfa.config.ablation import CEILINGS, AblationConfig
from dfa.config.affinity import AffinityConfig, CamConfig, FrequencyConfig
from dfa.config.checks import (ConfigError, _auto_or_positive, _choice, _coerce, _nonneg, _positive, _range,
                               build)
from dfa.config.clip import PRECISIONS, CacheConfig, ClipConfig, PretrainConfig, bf16_autocast
from dfa.config.data import IMAGENET_MEAN, IMAGENET_STD, DataConfig, SyntheticConfig
from dfa.config.evaluation import CRFConfig, EvalConfig
from dfa.config.loader import dump_yaml, load_config, parse_override, read_yaml_mapping, set_dotted
from dfa.config.loss import LossConfig
from dfa.config.ot import OTConfig
from dfa.config.refine import RefineConfig
from dfa.config.root import Config, flatten, out_path
from dfa.config.runs import SearchConfig, TrackingConfig
from dfa.config.smoke import SMOKE_OVERRIDES, SMOKE_PATHS, SMOKE_ROOT, SMOKE_SYNTHETIC_PATHS
from dfa.config.train import DecoderConfig, TrainConfig

__all__ = [
    "CEILINGS", "IMAGENET_MEAN", "IMAGENET_STD", "PRECISIONS", "SMOKE_OVERRIDES", "SMOKE_PATHS", "SMOKE_ROOT",
    "SMOKE_SYNTHETIC_PATHS", "AblationConfig", "AffinityConfig", "CRFConfig", "CacheConfig", "CamConfig",
    "ClipConfig", "Config", "ConfigError", "DataConfig", "DecoderConfig", "EvalConfig", "FrequencyConfig",
    "LossConfig", "OTConfig", "PretrainConfig", "RefineConfig", "SearchConfig", "SyntheticConfig",
    "TrackingConfig", "TrainConfig", "bf16_autocast", "build", "dump_yaml", "flatten", "load_config", "out_path",
    "parse_override", "read_yaml_mapping", "set_dotted",
    "_auto_or_positive", "_choice", "_coerce", "_nonneg", "_positive", "_range",
]
