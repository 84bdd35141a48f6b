"""Loading ``params.yaml``: read the file, apply ``--smoke`` then the ``-S`` dotted overrides
(parsed as YAML scalars, like ``dvc exp run -S``), build the typed :class:`Config` and
validate it; every error is one line naming the key or the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dfa.config.profiles import ProfileError, Provenance, read_profile, sources, study_sources
from dfa.config.checks import ConfigError, build, read_yaml_mapping  # noqa: F401 (re-exported)
from dfa.config.root import Config
from dfa.config.runs import TrackingConfig
from dfa.config.smoke import SMOKE_OVERRIDES, SMOKE_PATHS, SMOKE_SYNTHETIC_PATHS


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` → (``a.b``, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse {raw!r} ({exc})") from None
    return key, value


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    node = d
    parts = key.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def load_config(path: str | Path | None = "params.yaml", overrides: list[str] | tuple[str, ...] = (),
                smoke: bool = False) -> Config:
    """Read params (if the file exists), apply the profile, ``--smoke``, then ``-S`` overrides,
    validate; ``cfg.provenance`` says where each value came from (:mod:`dfa.config.profiles`)."""
    raw: dict[str, Any] = read_yaml_mapping(path, "params file") if path is not None else {}
    parsed = [parse_override(t) for t in overrides]
    # ``profile`` (top level, or -S profile=NAME / --profile NAME) picks a params layer; it is
    # not a Config field, so the fingerprints and MLflow params of a run without one are unchanged.
    profile = raw.pop("profile", None)
    profile = next((v for k, v in reversed(parsed) if k == "profile"), profile)
    parsed = [(k, v) for k, v in parsed if k != "profile"]
    if profile is not None and not isinstance(profile, str):
        raise ConfigError(f"profile: expected a profile name, got {profile!r}")
    layers: list[tuple[str, dict[str, Any]]] = []
    if profile:
        try:
            values = read_profile(profile, set(Config().flat()))
        except ProfileError as exc:
            raise ConfigError(str(exc)) from None
        for k, v in values.items():
            set_dotted(raw, k, v)
        layers.append((f"profile:{profile}", values))
    if smoke:
        name = dict(parsed).get("data.name", (raw.get("data") or {}).get("name", "synthetic"))
        experiment = (raw.get("tracking") or {}).get("experiment", TrackingConfig.experiment)
        values = {**SMOKE_OVERRIDES, **SMOKE_PATHS, **(SMOKE_SYNTHETIC_PATHS if name == "synthetic" else {}),
                  "tracking.experiment": f"{experiment}-smoke", "smoke": True}
        for k, v in values.items():
            set_dotted(raw, k, v)
        layers.append(("smoke", values))
    for k, v in parsed:
        set_dotted(raw, k, v)
    layers.append(("override", dict(parsed)))
    cfg = build(Config, raw, "")
    cfg.check()
    cfg.provenance = Provenance(profile or None, sources(cfg.flat(), layers, study_sources()))
    return cfg


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
