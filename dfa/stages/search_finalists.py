"""``dfa search --rescore N``: re-score a study's finalists over several seeds (method.md §12 v3).

A study may screen with one seed (and, per trial, the first images of ``tune``). Before a
value becomes a default, its finalists are trained again over ``--rescore-seeds`` (default
0,1,2) and scored on the whole ``tune`` split, as mean ± std:

- the top N complete trials, best first;
- the spec's own setting: the values of the searched keys in the params (``params.yaml`` and
  ``-S``: pass ``-S`` to re-score method.md's value where params.yaml differs; the space's
  ``fixed`` values apply to every finalist alike).

A finalist that repeats another's values is scored once. Each (finalist, seed) trains into
``checkpoints/search/<study>/finalists/<name>/seed<s>`` and resumes there, so a repeated
command only scores. The result goes to ``finalists.json`` beside the study's
``summary.json``, and into the summary as ``finalists``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
from optuna.trial import TrialState

from dfa.config import Config, ConfigError
from dfa.io import write_json
from dfa.stages.common import console, device_of
from dfa.tracking import stage_run

SPEC = "spec"


@dataclass
class Finalist:
    name: str                 # "trial_12" or "spec"
    values: dict[str, Any]    # the searched keys' values
    screened: float | None    # the study's one-seed value (None for the spec's setting unless a trial had it)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--rescore-seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--rescore-seeds: need distinct seeds, got {text!r}")
    return seeds


def pick(study: optuna.Study, spec_values: dict[str, Any], top_n: int) -> list[Finalist]:
    """The top ``top_n`` complete trials (by the study's direction) and the spec's setting."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    done.sort(key=lambda t: t.value, reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)
    out: list[Finalist] = []
    for t in done[:top_n]:
        if all(t.params != f.values for f in out):
            out.append(Finalist(f"trial_{t.number}", dict(t.params), t.value))
    same = [f for f in out if f.values == spec_values]
    if not same:
        out.append(Finalist(SPEC, dict(spec_values), None))
    return out


def rescore(finalists: list[Finalist], seeds: list[int], score: Callable[[Finalist, int], float]) -> list[dict]:
    """``score(finalist, seed)`` for every pair; mean ± sample std (ddof 1) per finalist, best mean first."""
    rows = []
    for f in finalists:
        values = [float(score(f, s)) for s in seeds]
        ok = [v for v in values if math.isfinite(v)]
        rows.append({"name": f.name, "params": f.values, "screened": f.screened, "seeds": seeds, "values": values,
                     "mean": float(np.mean(ok)) if ok else float("nan"),
                     "std": float(np.std(ok, ddof=1)) if len(ok) > 1 else 0.0 if ok else float("nan")})
    return sorted(rows, key=lambda r: -r["mean"] if math.isfinite(r["mean"]) else math.inf)


def spec_values(base: Config, keys: list[str]) -> dict[str, Any]:
    flat = base.flat()
    return {k: flat[k] for k in keys}


def trainer(cfg: Config, args, space, parent_id: str | None, out_root: Path, trial_config: Callable,
            scorer) -> Callable[[Finalist, int], float]:
    """``score(finalist, seed)``: train the finalist's values at ``seed`` (resuming), score on all of ``tune``.
    ``trial_config`` and ``scorer`` are the search command's own (passed in: no import back into it)."""
    from dfa.stages.training import fit, load_trained

    crf = None if space.metric == "mask_miou" else False

    def score(f: Finalist, seed: int) -> float:
        tcfg = trial_config(args, cfg, space, {**f.values, "seed": seed}, str(out_root / f.name / f"seed{seed}"))
        tags = {"optuna.study": args.study, "search.finalist": f.name, "search.seed": str(seed)}
        with stage_run(tcfg, f"finalist {f.name} · seed {seed}", nested_in=parent_id, extra_tags=tags) as run:
            run.log_params({f"finalist.{k}": v for k, v in f.values.items()})
            fit(tcfg, run)
            metrics = scorer.for_config(tcfg, crf, images=0)(load_trained(tcfg, device_of(tcfg)))
            run.log_metrics(metrics)
        console.print(f"finalist {f.name} seed {seed}: {space.metric} {metrics[space.metric]:.2f}")
        return metrics[space.metric]
    return score


def run(cfg: Config, args, space, study: optuna.Study, base: Config, parent_id: str | None, out_dir: Path,
        summary: dict, trial_config: Callable, scorer) -> list[dict]:
    """Pick, re-score, and write ``finalists.json`` and the summary's ``finalists``."""
    seeds = parse_seeds(getattr(args, "rescore_seeds", "0,1,2"))
    finalists = pick(study, spec_values(base, list(space.params)), args.rescore)
    root = cfg.out(f"checkpoints/search/{out_dir.name}/finalists")
    rows = rescore(finalists, seeds, trainer(cfg, args, space, parent_id, root, trial_config, scorer))
    result = {"metric": space.metric, "split": cfg.data.tune_split, "seeds": seeds,
              "train_steps": cfg.search.train_steps, "finalists": rows}
    write_json(out_dir / "finalists.json", result)
    write_json(out_dir / "summary.json", {**summary, "finalists": result})
    for r in rows:
        console.print(f"finalist {r['name']}: {space.metric} {r['mean']:.2f} ± {r['std']:.2f} over seeds {seeds} "
                      f"({', '.join(f'{k}={v}' for k, v in r['params'].items())})")
    return rows
