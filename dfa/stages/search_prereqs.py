"""What a study needs before its first trial (issue 12): the data, the CLIP checkpoint, the cache.

``dfa search`` checks these once, with the params every trial shares (base params, ``-S``
overrides and the space's ``fixed`` values), and stops with one line naming the first
missing piece and the command that makes it, instead of letting every trial fail on it.
``--prepare`` runs the missing stages first, as ``python -m dfa <stage>`` with the same
``--params``, ``-S`` and ``--smoke``. "Missing" includes "made with other params": a
synthetic set generated with other generator params, or a feature cache whose fingerprint
differs from the one these params give (``dfa.stages.views.cache_fingerprint``). With
``cache.enabled: false`` the cache is not needed.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dfa.backbone.clip import TINY_NAME
from dfa.config import Config, SyntheticConfig
from dfa.data.layout import DataError, Layout
from dfa.errors import WorkbenchError
from dfa.features_cache import read_index
from dfa.stages.common import console

# Pipeline order: a stage that (re)makes one input may make the later ones stale.
STAGES = ("prepare", "pretrain-clip", "cache")


@dataclass
class Missing:
    stage: str | None  # the dfa command that makes it, or None if no stage can (a user's file)
    what: str          # one line: what is missing and where


def _data(cfg: Config) -> tuple[Missing | None, list[str] | None]:
    """(problem, names of the training split) for the dataset of ``data.root``."""
    root = Path(cfg.data.root)
    make = "prepare" if cfg.data.name == "synthetic" else None
    if not root.is_dir():
        return Missing(make, f"{root}: dataset folder not found (data.root)"), None
    if cfg.data.name == "synthetic":
        marker = root / ".complete"
        try:
            made = json.loads(marker.read_text())
        except (OSError, ValueError):
            return Missing(make, f"{root}: synthetic benchmark incomplete (no {marker.name})"), None
        want = cfg.data.synthetic.__dict__
        made.setdefault("object_scale", SyntheticConfig().object_scale)   # default trees: not in the marker
        other = sorted(k for k in want if k in made and made[k] != want[k])
        if other:
            return Missing(make, f"{root}: synthetic benchmark was generated with other params "
                                 f"(data.synthetic.{other[0]}: {made[other[0]]} != {want[other[0]]})"), None
    layout = Layout(root, cfg.data.name)
    try:
        names = layout.read_list(cfg.data.train_split)
        layout.read_list(cfg.data.seed_split)
        layout.read_list(cfg.data.tune_split)          # trials are scored there (method.md §12)
        if not layout.labels_path().exists():
            raise DataError(f"{layout.labels_path()}: image-level labels not found")
    except DataError as exc:
        return Missing(make, str(exc)), None
    return None, names


def _clip(cfg: Config) -> Missing | None:
    c = cfg.clip
    if c.model == TINY_NAME:
        if not c.checkpoint or not Path(c.checkpoint).is_file():
            return Missing("pretrain-clip", f"{c.checkpoint}: small-CLIP checkpoint not found (clip.checkpoint)")
    elif c.checkpoint and not Path(c.checkpoint).is_file():
        return Missing(None, f"{c.checkpoint}: CLIP checkpoint not found (clip.checkpoint)")
    return None


def _cache(cfg: Config, names: list[str] | None) -> Missing | None:
    from dfa.stages.views import cache_fingerprint

    if not cfg.cache.enabled:
        return None
    where = cfg.cache.dir
    index = read_index(where)
    if index is None:
        return Missing("cache", f"{where}: feature cache missing (cache.dir)")
    if not index.get("complete"):
        return Missing("cache", f"{where}: feature cache incomplete (an interrupted `dfa cache`)")
    if names is None:  # the data must be made first; the cache's fingerprint cannot be checked yet
        return Missing("cache", f"{where}: feature cache cannot be checked before the dataset exists")
    fp = cache_fingerprint(cfg, names)
    if index.get("fingerprint") != fp:
        return Missing("cache", f"{where}: feature cache was made with other params or another backbone "
                                f"(fingerprint {index.get('fingerprint')} != {fp})")
    return None


def missing(cfg: Config) -> list[Missing]:
    """Every missing or stale prerequisite of training and scoring under ``cfg``, in pipeline order."""
    data, names = _data(cfg)
    found = [data, _clip(cfg), _cache(cfg, names)]
    return [m for m in found if m is not None]


def stage_command(stage: str, args, extra_overrides: list[str]) -> list[str]:
    """``python -m dfa <stage>`` with the search's ``--params``, ``-S`` and ``--smoke``."""
    cmd = [sys.executable, "-m", "dfa", stage, "--params", str(args.params)]
    for o in [*args.overrides, *extra_overrides]:
        cmd += ["-S", o]
    return cmd + (["--smoke"] if args.smoke else [])


def run_missing(problems: list[Missing], args, extra_overrides: list[str]) -> list[str]:
    """Run the stages that make ``problems``, in pipeline order; returns the stages run.

    A stage that fails stops here with its exit code (its own error line is above). The
    caller checks again afterwards: a remade input can make a later one stale.
    """
    unmakeable = [p for p in problems if p.stage is None]
    if unmakeable:
        raise WorkbenchError(unmakeable[0].what + "; no dfa stage can make it, fix the params")
    wanted = {p.stage for p in problems}
    ran = []
    for stage in (s for s in STAGES if s in wanted):
        cmd = stage_command(stage, args, extra_overrides)
        console.print("search --prepare: dfa " + " ".join(cmd[3:]), markup=False, highlight=False)
        rc = subprocess.call(cmd)
        if rc != 0:
            raise WorkbenchError(f"search --prepare: `dfa {stage}` exited {rc} (its error is above)")
        ran.append(stage)
    return ran
