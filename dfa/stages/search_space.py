"""Search space files (``experiments/*.yaml``, format in ``experiments/README.md``), read by
``dfa search`` and by ``dfa bench``'s ``search_scaling`` section: every error names the file
and the key.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from dfa.config import Config, ConfigError, read_yaml_mapping

METRICS = ("seed_miou", "cam_miou", "mask_miou")
TYPES = ("float", "int", "categorical")


@dataclass
class ParamSpec:
    """One searched key: ``float``/``int`` in [low, high] (optionally log or stepped) or ``categorical``."""
    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.key, self.choices)


@dataclass
class Space:
    path: Path
    params: dict[str, ParamSpec]
    metric: str = "seed_miou"
    direction: str = "maximize"
    fixed: dict[str, Any] = field(default_factory=dict)
    pruner: dict[str, int] = field(default_factory=dict)
    # Points tried first (e.g. the spec's and a probe's setting): TPE's random start-up then
    # spends no trial rediscovering them. Keys left out are sampled. A continued study queues
    # only the points no trial holds yet, or whose trial failed (``search.enqueue_points``).
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    # Values a sampled choice implies: {searched key: {choice: {params key: value}}}. E.g. the
    # feature cache that ``affinity.channels: heads`` needs (per-head maps) lives elsewhere.
    when: dict[str, dict[Any, dict[str, Any]]] = field(default_factory=dict)

    def implied(self, values: dict[str, Any]) -> dict[str, Any]:
        """The ``when`` values that the sampled ``values`` imply."""
        out: dict[str, Any] = {}
        for key, by_choice in self.when.items():
            if key in values and values[key] in by_choice:
                out.update(by_choice[values[key]])
        return out

    def variants(self) -> list[dict[str, Any]]:
        """Each ``when`` branch as overrides (the choice and what it implies): what a trial of
        that branch needs besides the fixed values (its prerequisites are checked too)."""
        return [{key: choice, **extra} for key, by_choice in self.when.items() for choice, extra in by_choice.items()]


def override_text(key: str, value: Any) -> str:
    # JSON is a YAML subset, so ``-S``'s YAML parser reads back exactly this value.
    return f"{key}={json.dumps(value)}"


def load_space(path: str | Path, cfg: Config) -> Space:
    """Read and check a space file; every error names the file and the key."""
    path = Path(path)
    raw = read_yaml_mapping(path, "search space")
    unknown = sorted(set(raw) - {"metric", "direction", "params", "fixed", "pruner", "enqueue", "when", "description"})
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key")
    known = set(cfg.flat())
    metric = raw.get("metric", "seed_miou")
    if metric not in METRICS:
        raise ConfigError(f"{path}: metric: must be one of {', '.join(METRICS)}, got {metric!r}")
    direction = raw.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"{path}: direction: must be maximize or minimize, got {direction!r}")
    fixed = raw.get("fixed") or {}
    for key in fixed:
        if key not in known:
            raise ConfigError(f"{path}: fixed.{key}: not a params key")
    pruner = raw.get("pruner") or {}
    for key, value in pruner.items():
        if key not in ("n_startup_trials", "n_warmup_steps", "interval_steps") or not isinstance(value, int):
            raise ConfigError(f"{path}: pruner.{key}: expected n_startup_trials, n_warmup_steps or "
                              f"interval_steps with an integer value, got {value!r}")
    params = {}
    for key, spec in (raw.get("params") or {}).items():
        params[key] = _param(path, key, spec, known)
    if not params:
        raise ConfigError(f"{path}: params: the space has no parameters")
    return Space(path, params, metric, direction, fixed, pruner, _enqueue(path, raw.get("enqueue"), params),
                 _when(path, raw.get("when"), params, known))


def _when(path: Path, raw: Any, params: dict[str, ParamSpec], known: set[str]) -> dict:
    """``when``: {searched categorical key: {one of its choices: {params key (not searched): value}}}."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: when: expected a mapping of searched keys")
    for key, by_choice in raw.items():
        where = f"{path}: when.{key}"
        spec = params.get(key)
        if spec is None or spec.type != "categorical":
            raise ConfigError(f"{where}: not a searched categorical key (params)")
        if not isinstance(by_choice, dict):
            raise ConfigError(f"{where}: expected a mapping of its choices")
        for choice, implied in by_choice.items():
            if choice not in spec.choices:
                raise ConfigError(f"{where}.{choice}: not one of {spec.choices}")
            if not isinstance(implied, dict) or not implied:
                raise ConfigError(f"{where}.{choice}: expected a non-empty mapping of params keys")
            for target in implied:
                if target not in known or target in params:
                    raise ConfigError(f"{where}.{choice}.{target}: not a params key, or a searched one")
    return {k: dict(v) for k, v in raw.items()}


def _enqueue(path: Path, raw: Any, params: dict[str, ParamSpec]) -> list[dict[str, Any]]:
    """``enqueue``: a list of {searched key: value}; each value must lie in its key's range."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(p, dict) and p for p in raw):
        raise ConfigError(f"{path}: enqueue: expected a list of non-empty mappings of searched keys")
    for i, point in enumerate(raw):
        for key, value in point.items():
            where = f"{path}: enqueue[{i}].{key}"
            spec = params.get(key)
            if spec is None:
                raise ConfigError(f"{where}: not a searched key (params)")
            if spec.type == "categorical":
                if value not in spec.choices:
                    raise ConfigError(f"{where}: {value!r} is not one of {spec.choices}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not spec.low <= value <= spec.high:
                raise ConfigError(f"{where}: expected a number in [{spec.low}, {spec.high}], got {value!r}")
    return [dict(p) for p in raw]


def _param(path: Path, key: str, spec: Any, known: set[str]) -> ParamSpec:
    where = f"{path}: params.{key}"
    if key not in known:
        raise ConfigError(f"{where}: not a params key")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with type, low/high or choices")
    extra = sorted(set(spec) - {"type", "low", "high", "log", "step", "choices"})
    if extra:
        raise ConfigError(f"{where}.{extra[0]}: unknown key")
    if "type" not in spec:
        raise ConfigError(f"{where}.type: missing (float, int or categorical)")
    p = ParamSpec(key, **spec)
    if p.type not in TYPES:
        raise ConfigError(f"{where}.type: must be one of {', '.join(TYPES)}, got {p.type!r}")
    if p.type == "categorical":
        if not isinstance(p.choices, list) or not p.choices:
            raise ConfigError(f"{where}.choices: need a non-empty list")
        return p
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (p.low, p.high))
    if not ok or not p.low < p.high:
        raise ConfigError(f"{where}: need numbers low < high, got low={p.low!r} high={p.high!r}")
    if p.log and p.low <= 0:
        raise ConfigError(f"{where}.low: a log scale needs low > 0, got {p.low}")
    if p.log and p.step is not None:
        raise ConfigError(f"{where}: log and step cannot be combined")
    return p
