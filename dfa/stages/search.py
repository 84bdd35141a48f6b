"""``dfa search``: an Optuna study over a search space in ``experiments/*.yaml`` (issue 4).

Each trial trains DFA for ``search.train_steps`` steps with the sampled params and scores
its seeds on the first images of the seed split; intermediate scores feed a median
pruner. The study lives in the RDB storage ``search.storage`` (a relative SQLite path is
resolved from the repository root), so re-running the command continues it. Every trial
is a nested MLflow run under one parent run per invocation, and the summary (best trial,
parameter importances, optimisation history) goes to ``reports/search/<study>/``.

Before the study starts, the data, CLIP checkpoint and feature cache the trials need are
checked once (``search_prereqs``; ``--prepare`` makes what is missing). ``--workers N``
runs N worker processes on the study (``search_workers``; each runs :func:`worker_main`).
The command exits 1 when every trial of this invocation failed or a worker failed on the
storage; a trial that fails on its own (a sampled value the params reject) is recorded
FAILED and the study goes on.

The space file format is described in ``experiments/README.md`` (read by ``search_space``).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState
from rich.markup import escape
from rich.table import Table

from dfa.config import Config, ConfigError, load_config
from dfa.data.dataset import load_labels
from dfa.io import atomic_path, write_json
from dfa.errors import WorkbenchError
from dfa.stages import search_prereqs
from dfa.stages.common import class_spec, console, data_errors, device_of, layout_of, limit
from dfa.stages.search_space import Space, load_space, override_text
from dfa.stages.search_workers import (EXIT_STORAGE, POSTGRES_HINT, WorkerJob, open_storage, retried_as, run_workers,
                                      warm_up, worker_tag)
from dfa.tracking import stage_run

REPORTS = Path("reports/search")
SCORE_IMAGES = 50  # images scored per trial when data.max_seed_images is 0 (the whole split)


def trial_config(args, cfg: Config, space: Space, values: dict[str, Any], train_dir: str) -> Config:
    """The base params + ``-S`` overrides, then the space's fixed values, then what the sampled
    values imply (``when``), then the sampled ones."""
    overrides = [*args.overrides, *(override_text(k, v) for k, v in space.fixed.items()),
                 *(override_text(k, v) for k, v in space.implied(values).items()),
                 *(override_text(k, v) for k, v in values.items()),
                 override_text("train.dir", train_dir), override_text("train.steps", cfg.search.train_steps)]
    return load_config(args.params, overrides, smoke=args.smoke)


# ------------------------------------------------------------------------------ scoring

class SeedScorer:
    """Seed mIoU of a model on the first images of the ``tune`` split (method.md §12: studies
    and defaults are chosen there, never on ``train`` or ``val``); crf off unless needed.

    Each score calibrates the background power on the same tune images first (§5), so a
    trial is judged by what its row gives with its background tuned, as every row is. The
    frozen extractor is kept across trials with the same CLIP params.
    """

    def __init__(self):
        self._extractors: dict[str, Any] = {}

    def for_config(self, cfg: Config, crf: bool | None = False, images: int | None = None,
                   split: str | None = None) -> Callable[..., dict[str, float]]:
        """A ``score(model, bar=None)`` for ``cfg`` on the first ``images`` of ``split`` (default
        ``data.tune_split``; 0: the whole split; None: ``data.max_seed_images``, or ``SCORE_IMAGES``
        when that is 0, as a trial is screened)."""
        from dfa.stages.seeds import calibrate, score_seeds
        from dfa.backbone.memo import with_memo
        from dfa.stages.views import extractor, extractor_key

        device = device_of(cfg)
        spec = class_spec(cfg)
        layout = layout_of(cfg)
        if images is None:
            images = cfg.data.max_seed_images or SCORE_IMAGES
        with data_errors():
            names = limit(layout.read_list(split or cfg.data.tune_split), images)
            labels = load_labels(layout.labels_path())
        key = extractor_key(cfg, device)
        if key not in self._extractors:
            self._extractors[key] = with_memo(extractor(cfg, spec, device), cfg.cache.memo_gib)
        ext = self._extractors[key]

        def score(model, bar=None) -> dict[str, float]:
            bg = calibrate(cfg, model, ext, layout, names, labels, bar)
            metrics, _, _ = score_seeds(cfg, model, ext, layout, names, labels, out=None, bar=bar, crf=crf, bg=bg)
            # Numbers only (MLflow metrics, Optuna user attrs): the OT summary dict becomes ot_<key>.
            ot = metrics.pop("ot", None) or {}
            metrics.update({f"ot_{k}": float(v) for k, v in ot.items()})
            return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        return score


# ------------------------------------------------------------------------------ trials

def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "study"


def study_reports(cfg: Config, study: str) -> Path:
    """``reports/search/<study>/`` (under ``out_root`` or ``smoke/``): the summary, finalists, prepare/."""
    return cfg.out(REPORTS) / _slug(study)


def make_objective(cfg: Config, args, space: Space, parent_id: str | None, scorer: SeedScorer,
                   on_start: Callable[[optuna.Trial], None] | None = None):
    from dfa.stages.training import fit, load_trained

    slug = _slug(args.study)
    crf = None if space.metric == "mask_miou" else False

    def run_trial(trial: optuna.Trial) -> float:
        values = {k: p.suggest(trial) for k, p in space.params.items()}
        tags = {"optuna.study": args.study, "optuna.trial": str(trial.number)}
        try:
            tcfg = trial_config(args, cfg, space, values, str(cfg.out(f"checkpoints/search/{slug}/trial_{trial.number}")))
        except ConfigError:
            # Sampled values the params reject (e.g. out of range): still a visible, FAILED trial run.
            with stage_run(cfg, f"trial {trial.number}", nested_in=parent_id, extra_tags=tags) as run:
                run.log_params({f"trial.{k}": v for k, v in values.items()})
                raise
        pruned = None
        with stage_run(tcfg, f"trial {trial.number}", nested_in=parent_id, extra_tags=tags) as run:
            trial.set_user_attr("mlflow_run_id", run.run_id)
            run.log_params({f"trial.{k}": v for k, v in values.items()})
            score = scorer.for_config(tcfg, crf)

            def report(step: int, model) -> None:
                value = score(model)[space.metric]
                run.log_metrics({space.metric: value}, step=step)
                trial.report(value, step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step} ({space.metric} {value:.2f})")

            try:
                fit(tcfg, run, report)
            except optuna.TrialPruned as exc:
                # Leave the stage run before re-raising: a pruned trial is not a failed run.
                pruned = exc
                run.set_tags({"optuna.state": "PRUNED"})
            if pruned is None:
                metrics = score(load_trained(tcfg, device_of(tcfg)))
                run.log_metrics(metrics, step=tcfg.train.steps)
                run.set_tags({"optuna.state": "COMPLETE"})
        if pruned is not None:
            trial.set_user_attr("pruned", str(pruned))
            raise pruned
        for k, v in metrics.items():
            trial.set_user_attr(k, v)
        return metrics[space.metric]

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_tag())  # host:pid, to find (or kill) the process of a trial
        if "CUDA_VISIBLE_DEVICES" in os.environ:  # the device of a worker (search.devices)
            trial.set_user_attr("cuda_visible_devices", os.environ["CUDA_VISIBLE_DEVICES"])
        if on_start is not None:
            on_start(trial)
        try:
            return run_trial(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            # Optuna (catch=Exception) marks the trial FAILED; the reason must survive in the storage.
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
            console.print(f"[red]trial {trial.number} failed:[/] " + escape(f"{type(exc).__name__}: {exc}"))
            raise
    return objective


def open_study(cfg: Config, space: Space, name: str, worker: int = 0, workers: int = 1) -> optuna.Study:
    """Create or load the study; a stale RUNNING trial of a killed process is failed by heartbeat
    and re-queued (``search_workers.open_storage``)."""
    storage = open_storage(cfg)
    pruner = optuna.pruners.MedianPruner(**{"n_startup_trials": 5, "n_warmup_steps": 0, **space.pruner})
    study = optuna.create_study(study_name=name, storage=storage, direction=space.direction, pruner=pruner,
                                load_if_exists=True)
    if study.direction.name.lower() != space.direction:
        raise ConfigError(f"study {name!r} exists with direction {study.direction.name.lower()}, "
                          f"but {space.path} asks for {space.direction}")
    # Seeded by how far the study got, so a continued study does not replay its first samples, and
    # by the worker's index, so workers started together do not draw the same values. Parallel
    # workers let TPE treat running trials as bad ("constant liar") instead of sampling beside them.
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(study.trials) + 10007 * worker,
                                               constant_liar=workers > 1)
    if worker == 0:
        enqueue_points(study, space.enqueue)
    previous = study.user_attrs.get("space")
    if previous and previous != str(space.path):
        console.print(f"[yellow]study {name!r} was started with space {previous}, now {space.path}[/]")
    elif not previous:
        study.set_user_attr("space", str(space.path))
    return study


def enqueue_points(study: optuna.Study, points: list[dict[str, Any]]) -> None:
    """Queue each of the space's points unless a trial already holds it (waiting, running,
    complete or pruned). A point whose trial FAILED is queued again: the next invocation,
    after the cause is fixed (e.g. a missing cache), tries it instead of skipping it forever."""
    held = [t.system_attrs.get("fixed_params", t.params) for t in study.get_trials(deepcopy=False)
            if t.state != TrialState.FAIL]
    for point in points:
        if not any(all(k in p and p[k] == v for k, v in point.items()) for p in held):
            study.enqueue_trial(point)


# ------------------------------------------------------------------------------ one worker process

def worker_main(job: WorkerJob) -> None:
    """Entry of a spawned worker: run ``job.n_trials`` trials of the study, report each one."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    cfg = load_config(job.params, job.overrides, smoke=job.smoke)
    if cfg.threads == 0:  # share the cores between the workers instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // job.workers))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args = argparse.Namespace(params=job.params, overrides=job.overrides, smoke=job.smoke, space=job.space,
                              study=job.study)
    put = job.events.put
    try:
        warm_up(cfg)
        space = load_space(job.space, cfg)
        study = open_study(cfg, space, job.study, worker=job.index, workers=job.workers)
        objective = make_objective(cfg, args, space, job.parent_run_id, SeedScorer(),
                                   on_start=lambda t: put(("start", job.index, t.number)))
        study.optimize(objective, n_trials=job.n_trials, catch=(Exception,),
                       callbacks=[lambda _study, t: put(("done", job.index, t.number, t.state.name))])
    except Exception as exc:  # the storage, not a trial: optimize() catches what trials raise
        put(("error", job.index, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]))
        sys.exit(EXIT_STORAGE)


# ------------------------------------------------------------------------------ summary

def summarize(study: optuna.Study, space: Space, out_dir: Path) -> dict:
    """``summary.json`` and ``history.png`` under ``out_dir``; returns the summary."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    summary: dict[str, Any] = {
        "study": study.study_name, "space": str(space.path), "metric": space.metric,
        "direction": space.direction, "trials": len(trials),
        "counts": {k: counts.get(k, 0) for k in ("complete", "pruned", "fail", "running", "waiting")},
        "best": None,
    }
    summary["counts"]["failed"] = summary["counts"].pop("fail")
    if complete:
        best = study.best_trial
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params}
    summary["importances"], summary["importances_note"] = importances(study, len(complete))
    retries = retried_as(trials)
    summary["failures"] = {t.number: t.user_attrs.get("error") or _stale_note(t, retries) for t in trials
                           if t.state == TrialState.FAIL}
    write_json(out_dir / "summary.json", summary)
    plot_history(study, space, out_dir / "history.png")
    return summary


def _stale_note(trial, retries: dict[int, int]) -> str:
    """A FAIL without an error of its own: its process died and the heartbeat check failed it."""
    again = retries.get(trial.number)
    return "worker died (failed by heartbeat)" + (f"; re-queued as trial {again}" if again is not None else "")


def importances(study: optuna.Study, n_complete: int) -> tuple[dict[str, float] | None, str | None]:
    if n_complete < 2:
        return None, f"skipped: parameter importances need at least 2 complete trials, the study has {n_complete}"
    try:
        # Optuna's default evaluator (PED-ANOVA since 5.0) needs no scikit-learn.
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}, None
    except Exception as exc:  # e.g. every complete trial sampled the same values
        return None, f"skipped: {type(exc).__name__}: {exc}"


def plot_history(study: optuna.Study, space: Space, path: Path) -> None:
    """Objective per trial (pruned at their last report) and the best so far, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    trials = study.get_trials(deepcopy=False)
    done = [(t.number, t.value) for t in trials if t.state == TrialState.COMPLETE]
    pruned = [(t.number, t.intermediate_values[t.last_step]) for t in trials
              if t.state == TrialState.PRUNED and t.last_step is not None]
    better = max if space.direction == "maximize" else min
    best, running = [], None
    for n, v in done:
        running = v if running is None else better(running, v)
        best.append((n, running))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if done:
        ax.scatter(*zip(*done), label="complete", color="tab:blue", zorder=3)
        ax.step(*zip(*best), where="post", label="best so far", color="tab:red")
    if pruned:
        ax.scatter(*zip(*pruned), marker="x", label="pruned (last report)", color="tab:gray")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(space.metric)
    ax.set_title(f"study {study.study_name}: optimisation history", fontsize=10)
    if done or pruned:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def trials_table(study: optuna.Study, metric: str) -> Table:
    table = Table(title=f"study {study.study_name}")
    for col in ("trial", "state", metric, "params", "note"):
        table.add_column(col)
    for t in study.get_trials(deepcopy=False):
        params = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                           for k, v in t.params.items())
        note = t.user_attrs.get("error") or t.user_attrs.get("pruned") or ""
        value = "" if t.value is None else f"{t.value:.2f}"
        table.add_row(str(t.number), t.state.name, value, escape(params), escape(note[:80]))
    return table


# ------------------------------------------------------------------------------ entry point

def base_config(args, space: Space) -> Config:
    """What every trial shares: the params, ``-S`` and the space's fixed values (nothing sampled)."""
    return load_config(args.params, [*args.overrides, *fixed_overrides(space)], smoke=args.smoke)


def fixed_overrides(space: Space) -> list[str]:
    return [override_text(k, v) for k, v in space.fixed.items()]


def check_prerequisites(args, space: Space) -> None:
    """Stop before the study starts if the data, CLIP checkpoint or feature cache is missing or
    stale (``--prepare`` runs the missing stages first); for the fixed values and for each
    ``when`` branch (e.g. the per-head cache of ``affinity.channels: heads``)."""
    for variant in [{}, *space.variants()]:
        extra = [*fixed_overrides(space), *(override_text(k, v) for k, v in variant.items())]
        _check_one(args, extra, _slug("-".join(f"{k}={v}" for k, v in variant.items())) if variant else None)


def _check_one(args, extra: list[str], branch: str | None = None) -> None:
    """``branch``: a ``when`` branch's name; the stages ``--prepare`` runs for it write their
    reports under the study's ``prepare/<branch>`` (``out_root``), so a branch's cache never
    overwrites the pipeline's own ``reports/metrics/cache.json``."""
    def config() -> Config:
        return load_config(args.params, [*args.overrides, *extra], smoke=args.smoke)

    cfg = config()
    problems = search_prereqs.missing(cfg)
    if problems and getattr(args, "prepare", False):
        root = [] if branch is None else [
            override_text("out_root", str(study_reports(cfg, args.study) / "prepare" / branch))]
        search_prereqs.run_missing(problems, args, [*extra, *root])
        problems = search_prereqs.missing(config())
    if problems:
        first = problems[0]
        if getattr(args, "prepare", False):
            how = "still missing after --prepare"
        elif first.stage:
            how = f"run `dfa {first.stage}` with the same params, or add --prepare to run the missing stages first"
        else:
            how = "fix the params (no dfa stage makes it)"
        more = f" ({len(problems) - 1} more missing)" if len(problems) > 1 else ""
        raise WorkbenchError(f"{first.what}; {how}{more}")


def search(cfg: Config, args) -> int:
    space = load_space(args.space, cfg)
    if args.n_trials < 0:
        raise ConfigError(f"--n-trials: must be >= 0, got {args.n_trials}")
    if getattr(args, "rescore", 0) < 0:
        raise ConfigError(f"--rescore: must be >= 0, got {args.rescore}")
    if getattr(args, "rescore", 0):
        from dfa.stages.search_finalists import parse_seeds
        parse_seeds(args.rescore_seeds)      # a bad list fails before the study runs
    workers = getattr(args, "workers", 1)
    if workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {workers}")
    check_prerequisites(args, space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our table says the rest
    study = open_study(cfg, space, args.study)
    if workers > 1 and cfg.search.storage.startswith("sqlite"):
        console.print(f"[yellow]search: {workers} workers on SQLite: {POSTGRES_HINT}[/]", soft_wrap=True)
    out_dir = study_reports(cfg, args.study)
    tags = {"optuna.study": args.study, "search.space": str(space.path), "search.workers": str(workers)}
    with stage_run(cfg, "search", extra_tags=tags) as parent:
        if workers == 1:
            states: dict[int, str] = {}
            warm_up(cfg)  # as a worker does: one-off imports and store connection outside the first trial
            objective = make_objective(cfg, args, space, parent.run_id, SeedScorer())
            study.optimize(objective, n_trials=args.n_trials, catch=(Exception,),
                           callbacks=[lambda _s, t: states.__setitem__(t.number, t.state.name)])
            errors: list[str] = []
        else:
            outcome = run_workers(cfg, args, study, parent.run_id, workers, worker_main)
            states, errors = outcome.states, outcome.errors
        summary = summarize(study, space, out_dir)
        if summary["best"] is not None:
            parent.log_metrics({f"best_{space.metric}": summary["best"]["value"]})
        if getattr(args, "rescore", 0):   # §12 v3: finalists over several seeds on tune
            from dfa.stages import search_finalists
            search_finalists.run(cfg, args, space, study, base_config(args, space), parent.run_id, out_dir, summary,
                                 trial_config, SeedScorer())
            parent.log_artifact(out_dir / "finalists.json", "search")
        parent.log_artifact(out_dir / "summary.json", "search")
        parent.log_artifact(out_dir / "history.png", "search")
    console.print(trials_table(study, space.metric))
    c = summary["counts"]
    best = summary["best"]
    console.print(f"study {args.study}: {c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed; "
                  + (f"best trial {best['number']} {space.metric} {best['value']:.2f}" if best else "no complete trial")
                  + f" → {out_dir}")
    return outcome_code(args, states, errors, cfg)


def outcome_code(args, states: dict[int, str], errors: list[str], cfg: Config) -> int:
    """0 unless a worker failed on the storage, or every trial of this invocation failed."""
    if errors:
        hint = f"; {POSTGRES_HINT}" if cfg.search.storage.startswith("sqlite") and "locked" in " ".join(errors) else ""
        print(f"dfa search: error: {errors[0]}{hint}" + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""),
              file=sys.stderr)
        return 1
    if states and all(v == "FAIL" for v in states.values()):
        print(f"dfa search: error: all {len(states)} trial(s) of this run failed (reasons in the table above and in "
              f"{REPORTS / _slug(args.study) / 'summary.json'})", file=sys.stderr)
        return 1
    return 0
