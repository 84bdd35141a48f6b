"""MLflow tracking: one parent run per pipeline invocation, one child run per stage.

The store is ``tracking.uri`` (default ``sqlite:///mlflow.db``); a relative SQLite path is
resolved from the repository root (``DVC_ROOT`` under DVC), never the working directory, so
``dvc exp run --temp`` logs into the same store. Experiments get an absolute
``artifact_location`` and runs are started with an explicit ``experiment_id`` (MLflow 3).

Which stages belong to one invocation: ``DFA_PIPELINE_ID`` if set (``make repro``, the
ablation and search commands set it), else the DVC experiment (``DVC_EXP_NAME``, set by
``dvc exp run`` and by ``dvc queue`` workers), else the ``dvc`` process that runs the stage
(its pid and start time), else none (a stand-alone run without a parent).
``tracking.uri`` may also be ``postgresql://…`` (a shared store) or ``http://host:port`` (an
MLflow server, ``make mlflow-server``).
With ``tracking.enabled: false`` every call is a no-op.

The experiment is marked as a model-training one (``mlflow.experimentKind``) and carries a
runs-table view with the headline metrics as columns; :func:`landing_url` opens it (MLflow
3.17 picks its landing tab from the "GenAI | Model training" switch, so the URL sets that
too). A pipeline's parent run is named so a table compares at a glance
(``repro · synthetic · row 4 · seed 0 · 1a2b3c4``) and carries its stages' headline metrics.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

from dfa.config import Config
from dfa.config.profiles import provenance_of
from dfa.repo import git_commit, git_dirty, repo_root

PIPELINE_TAG = "dfa.pipeline_id"
# The run's dataset profile (method.md §13) and, per key not from params.yaml, its source
# (``source.ot.prior = study:method-v2b``, ``source.train.steps = profile:voc``; dfa.profiles).
PROFILE_TAG, SOURCE_TAG = "dfa.profile", "source."
# MLflow 3 reads this experiment tag to choose the experiment's landing tab (runs vs GenAI overview).
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
# Copied (rounded to 2 decimals) from a stage's run to its pipeline's parent run, so the parent
# rows of the runs table compare whole pipelines; each name is logged by one stage only.
SUMMARY_METRICS = ("seed_miou", "mask_miou", "cam_miou", "seg_miou", "seg_crf_miou", "zero_shot_acc")
# A view of the runs table kept as an experiment tag, the form MLflow's "share view" uses:
# these metrics as columns after a run name wide enough to read, newest runs first.
VIEW_KEY = "dfa-runs"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
RUN_NAME_COLUMN = "attributes.`Run Name`"


def runs_view() -> str:
    columns = [f"metrics.`{m}`" for m in SUMMARY_METRICS]
    return json.dumps({"selectedColumns": columns, "columnOrder": [RUN_NAME_COLUMN, *columns],
                       "columnWidths": {RUN_NAME_COLUMN: 330}, "orderByKey": "attributes.start_time",
                       "orderByAsc": False})


def landing_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table with :func:`runs_view`, in the UI served at ``base``."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}")


def resolve_uri(uri: str, root: Path) -> str:
    """``sqlite:///rel.db`` → ``sqlite:////abs/root/rel.db``; ``postgresql://`` (or
    ``postgres://``) → ``postgresql+psycopg://`` (psycopg 3 is the driver installed; SQLAlchemy's
    bare scheme means psycopg2); other URIs unchanged."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((root / uri[len(prefix):]).resolve())
    for bare in ("postgresql://", "postgres://"):
        if uri.startswith(bare):
            return "postgresql+psycopg://" + uri[len(bare):]
    return uri


def is_server(uri: str) -> bool:
    """An MLflow tracking server (``make mlflow-server``): it owns the artifact root."""
    return uri.startswith(("http://", "https://"))


def _dvc_invocation() -> str | None:
    """``dvc-<pid>-<start>`` of the nearest ``dvc`` ancestor process, if any (Linux /proc)."""
    pid = os.getppid()
    for _ in range(6):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        if any(Path(c.decode(errors="ignore")).name == "dvc" or c.endswith(b"/dvc") for c in cmd[:2]) \
                or (len(cmd) > 2 and cmd[1] == b"-m" and cmd[2] == b"dvc"):
            return f"dvc-{pid}-{stat[19]}"
        pid = int(stat[1])
        if pid <= 1:
            return None
    return None


def pipeline_id() -> str | None:
    # A DVC experiment (DVC_EXP_NAME, also in a queued run's temp dir) is one invocation even when
    # one `dvc queue` worker process runs several experiments one after the other.
    exp = os.environ.get("DVC_EXP_NAME")
    return os.environ.get("DFA_PIPELINE_ID") or (f"dvc-exp-{exp}" if exp else None) or _dvc_invocation()


class NullRun:
    """Tracking switched off."""
    run_id = None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, name: str) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...


class Run(NullRun):
    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))


def client_for(cfg: Config):
    """(MlflowClient, experiment_id), creating the experiment with an absolute artifact root."""
    from mlflow.tracking import MlflowClient
    root = repo_root()
    uri = resolve_uri(cfg.tracking.uri, root)
    with _creation_lock(uri):  # the first use creates the store's tables
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(cfg.tracking.experiment)
    ui_tags = {KIND_TAG: KIND, VIEW_TAG: runs_view()}
    if exp is None:
        # A server stores artifacts under its own root (mlflow-artifacts:/), reachable from every
        # machine; a local store gets an absolute folder, so runs from DVC's temp dirs land beside it.
        artifacts = None if is_server(uri) else \
            (root / cfg.out("mlartifacts") / cfg.tracking.experiment).resolve().as_uri()
        try:
            client.create_experiment(cfg.tracking.experiment, artifact_location=artifacts, tags=ui_tags)
        except Exception:  # created meanwhile by another process
            pass
        exp = client.get_experiment_by_name(cfg.tracking.experiment)
    for key, value in ui_tags.items():  # an experiment made before these tags, or retagged by the UI
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return client, exp.experiment_id


def run_label(cfg: Config, what: str) -> str:
    """``repro · synthetic · row 4 · seed 0 · 1a2b3c4`` (``*`` after the commit: uncommitted changes)."""
    commit = git_commit()[:7] + ("*" if git_dirty() else "")
    row = "no row" if cfg.ablation.row is None else f"row {cfg.ablation.row}"
    return " · ".join([what, cfg.data.name, row, f"seed {cfg.seed}", commit])


@contextmanager
def _creation_lock(uri: str) -> Iterator[None]:
    """Serialise the first touch of a SQLite store across processes on this machine.

    MLflow 3 creates a new SQLite store's tables in seconds of alembic migrations, and two
    processes doing it at once corrupt it (``dvc queue start -j 2``, ``dfa search --workers``
    on SQLite). An advisory lock on ``<store>.lock`` makes the second wait for the first.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = Path(uri[len("sqlite:///"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tags(cfg: Config) -> dict[str, str]:
    tags = {"mlflow.source.git.commit": git_commit(), "dataset": cfg.data.name,
            "ablation.row": str(cfg.ablation.row), "smoke": str(cfg.smoke),
            PROFILE_TAG: provenance_of(cfg).profile or "none"}
    if os.environ.get("DVC_EXP_NAME"):  # set by `dvc exp run` (queued or not): which experiment
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def _parent(client, exp_id: str, pid: str, cfg: Config) -> str:
    found = client.search_runs([exp_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{pid}'", max_results=1)
    if found:
        return found[0].info.run_id
    # The id's first word says what started it: repro (make repro), dvc (dvc repro / exp run), ablation, ...
    run = client.create_run(exp_id, run_name=run_label(cfg, pid.split("-")[0]), tags={PIPELINE_TAG: pid, **_tags(cfg)})
    return run.info.run_id


@contextmanager
def stage_run(cfg: Config, stage: str, nested_in: str | None = None, extra_tags: dict | None = None) -> Iterator[NullRun]:
    """A child run for ``stage`` under this invocation's parent run (or ``nested_in``).

    Logs the flattened params and the resolved config; the run ends FINISHED, or FAILED
    with the error message if the stage raises.
    """
    with _timed(cfg, stage) if nested_in is None else nullcontext():
        if not cfg.tracking.enabled:
            yield NullRun()
            return
        with _mlflow_run(cfg, stage, nested_in, extra_tags) as run:
            yield run


@contextmanager
def _timed(cfg: Config, stage: str) -> Iterator[None]:
    """Record the stage's wall time and the process's peak RSS in reports/timings/<stage>.json
    (read by ``dfa bench`` for its ``pipeline`` entry)."""
    import resource

    from dfa.io import write_json

    t0 = time.perf_counter()
    yield
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    write_json(cfg.out("reports/timings") / f"{stage}.json",
               {"stage": stage, "wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mib": round(peak_kib / 1024, 1)})


@contextmanager
def _mlflow_run(cfg: Config, stage: str, nested_in: str | None, extra_tags: dict | None) -> Iterator[NullRun]:
    import yaml
    client, exp_id = client_for(cfg)
    # Where each value came from, for the keys not from params.yaml as it is: runs compare by source.
    sources = {f"{SOURCE_TAG}{k}": v for k, v in provenance_of(cfg).non_default().items()}
    tags = {**_tags(cfg), **sources, "stage": stage, **(extra_tags or {})}
    parent = nested_in
    if parent is None and (pid := pipeline_id()):
        parent = _parent(client, exp_id, pid, cfg)
    if parent:
        tags["mlflow.parentRunId"] = parent
    name = stage if parent else run_label(cfg, stage)  # a child is named by its stage under its parent
    run = Run(client, client.create_run(exp_id, run_name=name, tags=tags).info.run_id)
    run.log_params(cfg.flat())
    run.log_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), "config.yaml")
    try:
        yield run
    except BaseException as exc:
        client.set_tag(run.run_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(run.run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    client.set_terminated(run.run_id, "FINISHED")
    if parent and nested_in is None:
        _summarise(client, run.run_id, parent)
        client.set_terminated(parent, "FINISHED")


def _summarise(client, run_id: str, parent: str) -> None:
    """Copy the stage's headline metrics (``SUMMARY_METRICS``) to its pipeline's parent run."""
    from mlflow.entities import Metric
    latest = client.get_run(run_id).data.metrics
    metrics = [Metric(k, round(latest[k], 2), int(time.time() * 1000), 0) for k in SUMMARY_METRICS if k in latest]
    if metrics:
        client.log_batch(parent, metrics=metrics)


def init_store(cfg: Config) -> str:
    """Create the store and experiment once, serially (``make setup``; MLflow 3 pitfall), and
    mark it (and its ``-smoke`` twin, if there is one) as a model-training experiment."""
    client, exp_id = client_for(cfg)
    if client.get_experiment_by_name(f"{cfg.tracking.experiment}-smoke") is not None:
        client_for(dataclasses.replace(cfg, smoke=True, tracking=dataclasses.replace(
            cfg.tracking, experiment=f"{cfg.tracking.experiment}-smoke")))
    return exp_id


def temp_uri() -> str:
    return f"sqlite:///{tempfile.mkdtemp(prefix='dfa-mlflow-')}/mlflow.db"
