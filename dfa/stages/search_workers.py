"""Parallel Optuna workers on one study (issue 13): storage, worker processes, dead-worker recovery.

``dfa search --workers N`` starts N worker processes (spawn, never fork: torch has run in
the parent). Each opens the study from ``search.storage`` and runs its share of the
invocation's ``--n-trials`` with ``study.optimize``; trial numbers and sampling state come
from the shared storage, so the same command on another machine against the same storage
joins the study with its own workers. SQLite takes one writer at a time: it works for a
few workers on one machine (a long lock timeout), PostgreSQL is the storage for more.

A worker sends heartbeats every ``search.heartbeat_s``. When one dies mid-trial (a kill,
an OOM), the coordinator waits until the trial's heartbeat is ``search.grace_s`` old, fails
it through Optuna's ``fail_stale_trials``, whose ``RetryHeartbeatStaleTrialCallback`` (the
``RetryFailedTrialCallback`` of older Optuna) re-queues its params as a WAITING trial, and
starts a replacement worker for the dead one's remaining share; the next ``ask`` of any
worker picks the re-queued trial up first. The dead trial's MLflow run is marked KILLED.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from dfa.config import Config
from dfa.stages.common import console, repo_root
from dfa.tracking import resolve_uri

SQLITE_TIMEOUT_S = 60   # how long a SQLite writer waits for the lock before "database is locked"
EXIT_STORAGE = 3        # a worker's exit code when the storage itself failed (not a trial)
POSTGRES_HINT = ("SQLite takes one writer at a time; for more workers use PostgreSQL: "
                 "-S search.storage=postgresql://USER@HOST/DB (README \"Scaling out\")")


# ------------------------------------------------------------------------------ storage

def storage_url(cfg: Config) -> str:
    return resolve_uri(cfg.search.storage, repo_root())


def open_storage(cfg: Config) -> optuna.storages.RDBStorage:
    """``search.storage`` with heartbeats and the stale-trial retry callback."""
    url = storage_url(cfg)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    else:
        engine = {"pool_pre_ping": True}  # a server restart must not leave dead pooled connections
    s = cfg.search
    with warnings.catch_warnings():  # heartbeats and retries are "experimental" since optuna 2.8 and still work
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=s.max_retry)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=s.heartbeat_s,
                                          grace_period=s.grace_s, heartbeat_stale_trial_callback=retry)


def fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def retried_as(trials: list[optuna.trial.FrozenTrial]) -> dict[int, int]:
    """{failed trial number: the number of the trial that re-ran its params}."""
    return {t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")}


def worker_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# ------------------------------------------------------------------------------ one worker

@dataclass
class WorkerJob:
    """Everything a spawned worker needs (picklable)."""
    index: int
    n_trials: int
    workers: int
    params: str
    overrides: list[str]
    smoke: bool
    space: str
    study: str
    parent_run_id: str | None
    events: object = None  # a multiprocessing queue of (kind, worker index, ...) tuples


def warm_up(cfg: Config) -> None:
    """Pay a fresh process's one-off costs before its first trial, not inside it: the imports a
    trial makes lazily (training, scoring, open_clip) and the MLflow store's first connection."""
    import dfa.stages.seeds  # noqa: F401
    import dfa.stages.training  # noqa: F401
    import dfa.stages.views  # noqa: F401
    if cfg.tracking.enabled:
        from dfa.tracking import client_for
        client_for(cfg)


# ------------------------------------------------------------------------------ the coordinator

@dataclass
class Slot:
    """One worker position: its share of trials, the process now filling it, what it finished."""
    index: int
    share: int
    process: object = None
    finished: int = 0
    running: int | None = None        # trial number it is running now
    restarts: int = 0
    waiting_for: int | None = None    # a dead worker's trial that must go stale before the restart
    died_at: float = 0.0


@dataclass
class Outcome:
    """What the trials of this invocation became, and the workers' own errors."""
    states: dict[int, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def shares(n_trials: int, workers: int) -> list[int]:
    return [n_trials // workers + (i < n_trials % workers) for i in range(workers)]


def run_workers(cfg: Config, args, study: optuna.Study, parent_run_id: str | None, workers: int,
                target: Callable[[WorkerJob], None]) -> Outcome:
    """Start ``workers`` spawned workers on ``study`` and wait for all of them.

    ``target(job)`` is a worker's entry (``dfa.stages.search.worker_main``): a module-level
    function, so that a spawned process can import it by name."""
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    devices = [str(d) for d in cfg.search.devices]
    out = Outcome()
    slots = [Slot(i, n) for i, n in enumerate(shares(args.n_trials, workers))]

    def start(slot: Slot) -> None:
        job = WorkerJob(slot.index, slot.share - slot.finished, workers, str(args.params), list(args.overrides),
                        bool(args.smoke), str(args.space), args.study, parent_run_id, events)
        env_before = os.environ.get("CUDA_VISIBLE_DEVICES")
        if devices:  # a spawned child inherits the environment of this moment
            os.environ["CUDA_VISIBLE_DEVICES"] = devices[slot.index % len(devices)]
        try:
            slot.process = ctx.Process(target=target, args=(job,), name=f"dfa-search-worker-{slot.index}")
            slot.process.start()
        finally:
            if devices:
                if env_before is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = env_before
        slot.running, slot.waiting_for = None, None
        where = f" on CUDA_VISIBLE_DEVICES={devices[slot.index % len(devices)]}" if devices else ""
        console.print(f"search worker {slot.index}: pid {slot.process.pid}, {job.n_trials} trial(s){where}")

    def handle(event: tuple) -> None:
        kind, i = event[0], event[1]
        if kind == "start":
            slots[i].running = event[2]
        elif kind == "done":
            slots[i].running = None
            slots[i].finished += 1
            out.states[event[2]] = event[3]
        elif kind == "error":
            out.errors.append(f"worker {i}: {event[2]}")

    def reap(slot: Slot) -> None:
        """The slot's process ended: done, a storage error, or a death that needs a replacement."""
        code = slot.process.exitcode
        slot.process = None
        if slot.finished >= slot.share or code == EXIT_STORAGE:
            return
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        if slot.restarts >= cfg.search.max_retry:
            out.errors.append(f"worker {slot.index} died ({how}) {slot.restarts + 1} times; giving up its "
                              f"{slot.share - slot.finished} remaining trial(s)")
            return
        slot.restarts += 1
        slot.waiting_for, slot.died_at = slot.running, time.monotonic()
        trial = f" in trial {slot.running}" if slot.running is not None else ""
        console.print(f"[yellow]search worker {slot.index} died ({how}){trial}; a replacement starts "
                      + (f"once the trial's heartbeat is {cfg.search.grace_s} s old[/]" if trial else "now[/]"))
        if slot.running is None:
            start(slot)

    def restart_if_stale(slot: Slot) -> None:
        number = slot.waiting_for
        fail_stale(study)  # Optuna's own check: fails trials whose heartbeat is older than grace_s
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        patience = cfg.search.grace_s + 3 * cfg.search.heartbeat_s + 60
        if trial.state == TrialState.RUNNING and time.monotonic() - slot.died_at < patience:
            return
        out.states[number] = trial.state.name
        _mark_run_killed(cfg, trial, slot.index)
        retry = retried_as(study.get_trials(deepcopy=False)).get(number)
        console.print(f"search: trial {number} failed by heartbeat"
                      + (f", re-queued as trial {retry}" if retry is not None else ""))
        start(slot)

    try:
        for slot in slots:
            if slot.share > 0:
                start(slot)
        while any(s.process is not None or s.waiting_for is not None for s in slots):
            try:
                handle(events.get(timeout=0.5))
                continue  # drain every pending event before looking at the processes
            except queue.Empty:
                pass
            for slot in slots:
                if slot.process is not None and not slot.process.is_alive():
                    slot.process.join()
                    reap(slot)
                elif slot.process is None and slot.waiting_for is not None:
                    restart_if_stale(slot)
    except BaseException:
        for slot in slots:
            if slot.process is not None and slot.process.is_alive():
                slot.process.terminate()
        for slot in slots:
            if slot.process is not None:
                slot.process.join(timeout=30)
        raise
    while True:  # events sent just before a worker exited
        try:
            handle(events.get_nowait())
        except queue.Empty:
            break
    return out


def _mark_run_killed(cfg: Config, trial: optuna.trial.FrozenTrial, worker: int) -> None:
    """The MLflow run of a trial whose worker died stays RUNNING forever unless someone ends it."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if not run_id or not cfg.tracking.enabled:
        return
    from dfa.tracking import client_for

    try:
        client, _ = client_for(cfg)
        client.set_tag(run_id, "error", f"worker {worker} died; the trial was failed by heartbeat and re-queued")
        client.set_terminated(run_id, "KILLED")
    except Exception as exc:  # tracking must not stop the study
        console.print(f"[yellow]could not mark MLflow run {run_id} killed: {exc}[/]")
