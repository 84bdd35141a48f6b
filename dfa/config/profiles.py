"""Dataset profiles (method.md §13) and the source of every resolved parameter.

A profile is a params file under ``experiments/profiles/`` (``voc.yaml``, ``coco.yaml``) that
sets the paper's setting for a real dataset, so a VOC run does not silently inherit the
embedded benchmark's study values. It is chosen by ``--profile NAME`` on any command, or by
the top-level ``profile`` key (``dvc exp run -S profile=voc``). Layers, lowest first:

====================  =====================================================================
source                what set the value
====================  =====================================================================
``default``           the params file (``params.yaml``) or, if it lacks the key, the dataclass
``study:<name>``      the params file, holding the value a study on the embedded ``tune`` split
                      chose (``experiments/profiles/study_sources.yaml``; README "Choices")
``profile:<name>``    the profile
``smoke``             ``--smoke``
``override``          ``-S key=value``
====================  =====================================================================

A profile that names a key no dataclass knows is refused, naming the file and the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from dfa.config.checks import read_yaml_mapping
from dfa.config.root import flatten

PROFILE_DIR = Path("experiments/profiles")
STUDY_SOURCES = "study_sources.yaml"
# The checkout this code runs from: profiles are found there when the working directory has none
# (a workspace that holds only a params.yaml, as the tests' and `dvc exp run --temp`'s).
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Provenance:
    """A loaded config's profile and, for every dotted key, where its value came from."""
    profile: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict)

    def non_default(self) -> dict[str, str]:
        """The keys whose source is not ``default``, sorted: what a run records."""
        return {k: v for k, v in sorted(self.sources.items()) if v != "default"}

    def record(self) -> dict[str, Any]:
        """``config_sources`` of a metrics file."""
        return {"profile": self.profile, "sources": self.non_default()}


def provenance_of(cfg) -> Provenance:
    """``cfg.provenance``, or an empty one for a Config built without :func:`load_config`."""
    return getattr(cfg, "provenance", None) or Provenance()


class ProfileError(ValueError):
    """A missing profile, or a key in it that no params dataclass knows; names the file."""


def _find(name: str) -> Path | None:
    for base in (Path.cwd(), PACKAGE_ROOT):
        if (base / PROFILE_DIR / name).is_file():
            return base / PROFILE_DIR / name
    return None


def known_profiles() -> list[str]:
    names = {p.stem for base in (Path.cwd(), PACKAGE_ROOT) for p in (base / PROFILE_DIR).glob("*.yaml")}
    return sorted(names - {Path(STUDY_SOURCES).stem})


def profile_path(name: str) -> Path:
    """``voc`` → ``experiments/profiles/voc.yaml``; a path to a ``.yaml`` file is taken as it is."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise ProfileError(f"profile {name}: file not found")
        return path
    path = _find(f"{name}.yaml") if name != Path(STUDY_SOURCES).stem else None
    if path is None:
        raise ProfileError(f"profile {name!r}: unknown (known: {', '.join(known_profiles())}; "
                           f"a profile is a file {PROFILE_DIR}/NAME.yaml)")
    return path


def read_profile(name: str, known_keys: set[str]) -> dict[str, Any]:
    """The profile's values as dotted keys; every key must be one of ``known_keys``."""
    path = profile_path(name)
    flat = flatten(read_yaml_mapping(path, "profile"))
    for key in flat:
        if key not in known_keys:
            raise ProfileError(f"{path}: {key}: unknown key (no params dataclass has it)")
    return flat


def study_sources() -> dict[str, dict]:
    """``experiments/profiles/study_sources.yaml``: dotted key → {study, value} of the values
    that a study on the embedded ``tune`` split chose for ``params.yaml``."""
    path = _find(STUDY_SOURCES)
    if path is None:
        return {}
    raw = yaml.safe_load(path.read_text()) or {}
    return {k: v for k, v in raw.items() if isinstance(v, dict) and "study" in v}


def sources(final: Mapping[str, Any], layers: list[tuple[str, Mapping[str, Any]]],
            study: Mapping[str, dict]) -> dict[str, str]:
    """The source of every key of ``final`` (flat): the last layer that set it or a section
    above it; ``default`` otherwise, or ``study:<name>`` if a study chose that very value."""
    out = {}
    for key, value in final.items():
        src = "default"
        for name, layer in layers:
            if any(k == key or key.startswith(k + ".") for k in layer):
                src = name
        if src == "default" and key in study and study[key].get("value") == value:
            src = f"study:{study[key]['study']}"
        out[key] = src
    return out
