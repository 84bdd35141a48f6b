"""``make ui`` / ``dfa ui`` and ``make dashboard`` / ``dfa dashboard``: the servers a lab opens.

The dashboard is started for real and must answer HTTP with the study; MLflow's server takes
half a minute to start on a busy 2-core machine, so ``dfa ui`` is checked up to the exec (what
it serves and the URL it prints); ``experiments/ui_screenshot.py`` opens the real one.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import REPO, cli_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recipe(target: str) -> str:
    """The command line of a Makefile target (its first recipe line)."""
    lines = (REPO / "Makefile").read_text().splitlines()
    return lines[lines.index(next(line for line in lines if line.startswith(f"{target}:"))) + 1].strip()


def test_make_targets_run_the_commands():
    assert recipe("dashboard").startswith("$(PY) -m dfa dashboard")
    assert recipe("ui").startswith("$(PY) -m dfa ui")


def test_dashboard_serves_the_study_storage(tmp_path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path}/studies/optuna.db"
    (tmp_path / "studies").mkdir()
    study = optuna.create_study(study_name="lab-study", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    port = free_port()
    # the relative path resolves from the workspace (the repository root), as the stages' does
    proc = subprocess.Popen([sys.executable, "-m", "dfa", "dashboard", "-S", "search.storage=sqlite:///studies/optuna.db",
                             "--port", str(port)], cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, body = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, f"no answer on port {port}; exit {proc.poll()}"
        assert [s["study_name"] for s in body["study_summaries"]] == ["lab-study"]
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}/" in out


def test_dashboard_without_a_storage_says_so(tmp_path, dfa_cli):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    proc = dfa_cli(tmp_path, "dashboard", "--port", str(free_port()), check=False)
    assert proc.returncode == 2 and "no study storage yet" in proc.stderr and "optuna.db" in proc.stderr


def test_ui_marks_the_experiment_prints_its_runs_url_and_serves_the_store(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from dfa.config import load_config
    from dfa.stages import ui as ui_mod
    from dfa.tracking import KIND, KIND_TAG

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(ui_mod.os, "execv", lambda path, argv: calls.append(argv))
    cfg = load_config(REPO / "params.yaml", [])
    assert ui_mod.ui(cfg, argparse.Namespace(host="127.0.0.1", port=5123)) == 0
    (argv,) = calls
    db = f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert argv[1:] == ["-m", "mlflow", "ui", "--backend-store-uri", db, "--host", "127.0.0.1", "--port", "5123"]
    exp = MlflowClient(tracking_uri=db).get_experiment_by_name("dfa")
    assert exp.tags[KIND_TAG] == KIND
    url = re.search(r"http://127\.0\.0\.1:5123/\S+", capsys.readouterr().out).group(0)
    assert url.startswith(f"http://127.0.0.1:5123/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning")
    assert not Path(tmp_path / "smoke").exists()
