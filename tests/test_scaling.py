"""Scaling out (issue 13): ``dfa search --workers`` on a real PostgreSQL server and on SQLite, a dead
worker's trial retried by heartbeat, and an MLflow tracking server on a PostgreSQL store.

The server is the throwaway one of ``postgres_fixture`` (a Unix socket, no TCP port); the
MLflow server listens on 127.0.0.1 only.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import cli_env, module_copy
from postgres_fixture import postgres  # noqa: F401  (the fixture)


pytestmark = pytest.mark.slow  # pipelines and servers: `make test` (CI) runs it, `make test-fast` does not


@pytest.fixture(scope="module")
def smoke_workspace(smoke_workspace, tmp_path_factory) -> Path:
    """This module runs stages inside the workspace: its own copy of the session's (conftest)."""
    return module_copy(smoke_workspace, tmp_path_factory)


REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "experiments/frequency.yaml"


def search_cmd(study: str, storage: str, tracking: str, *extra: str) -> list[str]:
    return ["search", "--smoke", "--space", str(SPACE), "--study", study, "-S", f"search.storage={storage}",
            "-S", f"tracking.uri={tracking}", *extra]


def runs(uri: str, flt: str, experiment: str = "dfa-smoke"):
    from mlflow.tracking import MlflowClient
    c = MlflowClient(tracking_uri=uri)
    return c.search_runs([c.get_experiment_by_name(experiment).experiment_id], filter_string=flt, max_results=100)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_on_postgres_then_resume_through_a_tracking_server(smoke_workspace, dfa_cli, postgres, tmp_path):
    storage, store = postgres.database("optuna_pg"), postgres.database("mlflow_pg")
    dfa_cli(smoke_workspace, *search_cmd("pg", storage, store), "--workers", "2", "--n-trials", "4")
    study = optuna.load_study(study_name="pg", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # two processes took trials
    (parent,) = runs(store, "tags.stage = 'search' and tags.`optuna.study` = 'pg'")
    assert parent.data.tags["search.workers"] == "2"
    kids = runs(store, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in kids) == [f"trial {n}" for n in range(4)]
    assert all(r.info.status == "FINISHED" and "seed_miou" in r.data.metrics for r in kids)

    # The same study resumed by one more invocation, tracked through `mlflow server` on the same
    # PostgreSQL store (the command `make mlflow-server` runs), into an experiment the server owns.
    port, artifacts = free_port(), tmp_path / "server-artifacts"
    server = subprocess.Popen([sys.executable, "-m", "dfa.tracking_server", "--backend", store, "--artifacts",
                               str(artifacts), "--port", str(port), "--workers", "1"], env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(1)
        dfa_cli(smoke_workspace, *search_cmd("pg", storage, url), "-S", "tracking.experiment=served",
                "--n-trials", "1")
        study = optuna.load_study(study_name="pg", storage=storage)
        assert [t.number for t in study.trials] == [0, 1, 2, 3, 4] and study.trials[4].state == TrialState.COMPLETE
        (served,) = runs(store, "tags.stage = 'search'", experiment="served")  # the server wrote to PostgreSQL
        (kid,) = runs(store, f"tags.`mlflow.parentRunId` = '{served.info.run_id}'", experiment="served")
        assert kid.info.run_name == "trial 4"
        assert list(artifacts.rglob("summary.json")) and list(artifacts.rglob("config.yaml"))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_a_killed_worker_trial_is_retried_and_the_study_completes(smoke_workspace, postgres):
    storage, store = postgres.database("optuna_kill"), postgres.database("mlflow_kill")
    cmd = [sys.executable, "-m", "dfa", *search_cmd("kill", storage, store), "--workers", "2", "--n-trials", "4",
           "-S", "search.heartbeat_s=1", "-S", "search.grace_s=5"]
    proc = subprocess.Popen(cmd, cwd=smoke_workspace, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    victim = None
    deadline = time.monotonic() + 240
    try:
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
            try:
                trials = optuna.load_study(study_name="kill", storage=storage).get_trials(deepcopy=False)
            except KeyError:  # the study is not created yet
                continue
            for t in trials:  # mid-trial: running, with its MLflow run open
                if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs:
                    victim = t
                    os.kill(int(t.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
                    break
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert victim is not None, "no running trial was seen"
    assert proc.returncode == 0, err[-3000:]
    assert "died (signal 9)" in err
    study = optuna.load_study(study_name="kill", storage=storage)
    by_number = {t.number: t for t in study.trials}
    assert by_number[victim.number].state == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 4  # the run's 4 trials all completed
    summary = json.loads((smoke_workspace / "smoke/reports/search/kill/summary.json").read_text())
    assert summary["failures"][str(victim.number)].startswith("worker died")
    from mlflow.tracking import MlflowClient
    killed = MlflowClient(tracking_uri=store).get_run(victim.user_attrs["mlflow_run_id"])
    assert killed.info.status == "KILLED"


def test_two_workers_on_sqlite_work_or_fail_in_one_line(smoke_workspace, dfa_cli, tmp_path):
    optuna_db, mlflow_db = tmp_path / "optuna.db", tmp_path / "mlflow.db"
    # search.devices: one CUDA_VISIBLE_DEVICES per worker (on a CPU machine no device is visible either way).
    proc = dfa_cli(smoke_workspace, *search_cmd("lite", f"sqlite:///{optuna_db}", f"sqlite:///{mlflow_db}"),
                   "--workers", "2", "--n-trials", "2", "-S", "search.devices=[0,1]", check=False)
    assert "PostgreSQL" in proc.stderr  # the warning when the run starts
    if proc.returncode == 0:
        study = optuna.load_study(study_name="lite", storage=f"sqlite:///{optuna_db}")
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
        assert sorted(t.user_attrs["cuda_visible_devices"] for t in study.trials) == ["0", "1"]
    else:
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("dfa search: error:") and "postgresql://" in last
    for db in (optuna_db, mlflow_db):
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",), db
