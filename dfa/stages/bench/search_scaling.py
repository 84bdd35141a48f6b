"""``dfa bench`` section ``search_scaling`` (issue 13): search workers and storage overhead.

* Trials per minute of the smoke study (``experiments/frequency.yaml``, ``--smoke`` trials)
  with 1 and with 2 workers, PostgreSQL storage and MLflow store on a throwaway local
  server, alternated ``repeats`` times (medians). Throughput is trials over the span from
  the first trial's start to the last one's end, read from the study, so process start-up
  is excluded; ``warm_*`` leaves out each worker's first trial too. On 2 idle cores the
  ratio is bounded near 2×; other load on the cores lowers that bound.
* Storage overhead per trial in ms, SQLite vs PostgreSQL, timed round-robin in this
  process: Optuna (ask, the space's suggestions, two intermediate reports, user attributes,
  tell, with heartbeats on) and MLflow (one nested trial run as ``dfa search`` logs it: the
  flattened params, the resolved config, two metrics, its end).

Everything runs in a temporary folder (the smoke workspace is made there by
``dfa search --prepare``); without PostgreSQL binaries the section is skipped with the reason.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna

from dfa.config import Config, load_config
from dfa.local_postgres import LocalPostgres, unavailable

SPACE = Path(__file__).resolve().parents[3] / "experiments" / "frequency.yaml"


def _throughput(storage: str, study: str, warm: bool = False) -> float:
    """Finished trials per minute between the first start and the last completion; ``warm``: leaving
    out each worker process's first trial (it loads the CLIP extractor and opens the stores)."""
    trials = [t for t in optuna.load_study(study_name=study, storage=storage).trials if t.datetime_complete]
    if warm:
        firsts = {}
        for t in sorted(trials, key=lambda t: t.datetime_start):
            firsts.setdefault(t.user_attrs.get("worker"), t.number)
        trials = [t for t in trials if t.number not in firsts.values()]
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return 60.0 * len(trials) / span


def _search(ws: Path, study: str, workers: int, n_trials: int, storage: str, tracking: str, prepare: bool) -> None:
    cmd = [sys.executable, "-m", "dfa", "search", "--smoke", "--space", str(SPACE), "--study", study,
           "--workers", str(workers), "--n-trials", str(n_trials), "-S", f"search.storage={storage}",
           "-S", f"tracking.uri={tracking}", *(["--prepare"] if prepare else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SPACE.parents[1]), os.environ.get("PYTHONPATH", "")])}
    env.pop("DVC_ROOT", None)
    env.pop("DFA_PIPELINE_ID", None)
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"dfa search --workers {workers} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")


def _storage_overhead(cfg: Config, urls: dict[str, tuple[str, str]], trials: int, repeats: int) -> dict:
    """ms per trial of Optuna's and MLflow's calls for one trial, per backend, round-robin."""
    from dfa.stages.bench.timing import med, race, span
    from dfa.stages.search_space import load_space
    from dfa.stages.search_workers import open_storage
    from dfa.tracking import client_for, stage_run

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per timed trial
    space = load_space(SPACE, cfg)
    studies, cfgs, parents = {}, {}, {}
    for name, (storage, tracking) in urls.items():
        c = load_config(None, [f"search.storage={storage}", f"tracking.uri={tracking}", "search.heartbeat_s=60"])
        cfgs[name] = c
        studies[name] = optuna.create_study(storage=open_storage(c), study_name=f"overhead-{name}",
                                            load_if_exists=True, direction="maximize")
        client, exp_id = client_for(c)  # creates the store and the experiment once, untimed
        parents[name] = client.create_run(exp_id, run_name="bench overhead").info.run_id

    def objective(trial: optuna.Trial) -> float:
        for p in space.params.values():
            p.suggest(trial)
        trial.set_user_attr("worker", "bench")
        for step in (3, 6):
            trial.report(1.0 * step, step)
        for key in ("mlflow_run_id", "seed_miou", "cam_miou"):
            trial.set_user_attr(key, 1.0)
        return 1.0

    def optuna_calls(name: str):
        return lambda: studies[name].optimize(objective, n_trials=trials)

    def mlflow_calls(name: str):
        def run():
            for n in range(trials):
                with stage_run(cfgs[name], f"trial {n}", nested_in=parents[name]) as r:
                    r.log_params({"trial.x": n})
                    r.log_metrics({"seed_miou": 1.0}, step=3)
                    r.log_metrics({"seed_miou": 2.0}, step=6)
        return run

    fns = {f"optuna_{n}": optuna_calls(n) for n in urls} | {f"mlflow_{n}": mlflow_calls(n) for n in urls}
    samples, _ = race(fns, repeats=repeats, warmup=1)
    out = {}
    for key, times in samples.items():
        per_trial = [t / trials for t in times]
        out[f"{key}_ms_per_trial"] = med(per_trial)
        out[f"{key}_ms_per_trial_range"] = span(per_trial)
    return out


def bench_search_scaling(cfg: Config, smoke: bool, prepared: Path | None = None) -> dict:
    """The section's entry. ``prepared``: a workspace whose ``smoke/`` tree (data, CLIP, cache) is
    copied in first, so ``--prepare`` finds those stages done (the tests' shared workspace)."""
    why = unavailable()
    if why:
        return {"skipped": why}
    n_trials, repeats = (4, 1) if smoke else (6, 2)  # at least 2 per worker: "warm" drops the first
    tmp = Path(tempfile.mkdtemp(prefix="dfa-bench-search-"))
    pg_dir = tempfile.mkdtemp(prefix="dfa-pg-")  # its own folder: the server's user must reach it
    pg = LocalPostgres(pg_dir)
    try:
        pg.start()
        pg.create_db("optuna", "mlflow", "optuna_overhead", "mlflow_overhead")
        ws = tmp / "ws"
        ws.mkdir()
        if prepared is not None:
            shutil.copytree(Path(prepared) / "smoke", ws / "smoke")
        shutil.copy(Path("params.yaml") if Path("params.yaml").exists() else SPACE.parents[1] / "params.yaml",
                    ws / "params.yaml")
        storage, tracking = pg.url("optuna"), pg.url("mlflow")
        load_before = os.getloadavg()  # other processes on the cores bound what a second worker can add
        rates: dict[int, list[float]] = {1: [], 2: []}
        warm: dict[int, list[float]] = {1: [], 2: []}
        for r in range(repeats):
            for workers in (1, 2):
                study = f"scaling-w{workers}-r{r}"
                _search(ws, study, workers, n_trials, storage, tracking, prepare=(r == 0 and workers == 1))
                rates[workers].append(_throughput(storage, study))
                warm[workers].append(_throughput(storage, study, warm=True))
        one, two = statistics.median(rates[1]), statistics.median(rates[2])
        warm_one, warm_two = statistics.median(warm[1]), statistics.median(warm[2])
        res = {"space": SPACE.name, "trials_per_run": n_trials, "repeats": repeats, "storage": "postgresql",
               "postgresql_fsync": pg.durable,
               "cpu_count": os.cpu_count(),
               "trials_per_min_1_worker": round(one, 2), "trials_per_min_2_workers": round(two, 2),
               "trials_per_min_1_worker_all": [round(x, 2) for x in rates[1]],
               "trials_per_min_2_workers_all": [round(x, 2) for x in rates[2]],
               "speedup_2_workers": round(two / one, 2),
               "warm_trials_per_min_1_worker": round(warm_one, 2), "warm_trials_per_min_2_workers": round(warm_two, 2),
               "warm_speedup_2_workers": round(warm_two / warm_one, 2),
               "loadavg_before": [round(x, 2) for x in load_before]}
        urls = {"sqlite": (f"sqlite:///{tmp}/overhead-optuna.db", f"sqlite:///{tmp}/overhead-mlflow.db"),
                "postgresql": (pg.url("optuna_overhead"), pg.url("mlflow_overhead"))}
        # repo_root() = the temporary folder: the runs' artifacts stay out of the repository.
        root_before = os.environ.get("DVC_ROOT")
        os.environ["DVC_ROOT"] = str(tmp)
        try:
            res["overhead"] = _storage_overhead(cfg, urls, trials=5 if smoke else 10, repeats=3 if smoke else 7)
        finally:
            if root_before is None:
                os.environ.pop("DVC_ROOT", None)
            else:
                os.environ["DVC_ROOT"] = root_before
        o = res["overhead"]
        res["overhead_ms_per_trial"] = {b: round(o[f"optuna_{b}_ms_per_trial"] + o[f"mlflow_{b}_ms_per_trial"], 1)
                                        for b in urls}
        return res
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(pg_dir, ignore_errors=True)
