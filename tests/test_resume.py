"""Exact resume (issue 6): an interrupted `dfa train` ends bit-identical to an uninterrupted one."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import cli_env, copy_of

STEPS = ["-S", "train.steps=40", "-S", "train.checkpoint_interval=5", "-S", "tracking.enabled=false"]


def _train(ws: Path, run_dir: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dfa", "train", "--smoke", *STEPS, "-S", f"train.dir={run_dir}"],
                            cwd=ws, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _digest(ws: Path) -> str:
    return json.loads((ws / "smoke/reports/metrics/train.json").read_text())["state_digest"]


def _wait_for_checkpoint(ws: Path, run_dir: str, proc: subprocess.Popen, min_step: int) -> int:
    """Block until the resume checkpoint holds at least ``min_step`` steps; return its step."""
    path = ws / f"{run_dir}-resume" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, f"training ended before it could be interrupted:\n{proc.communicate()}"
        try:
            step = torch.load(path, map_location="cpu", weights_only=False)["step"]
            if step >= min_step:
                return step
        except (FileNotFoundError, EOFError, RuntimeError):
            pass
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def reference(smoke_workspace, tmp_path_factory):
    ws = tmp_path_factory.mktemp("resume-ref")
    shutil.copytree(smoke_workspace, ws, dirs_exist_ok=True)
    proc = _train(ws, "checkpoints/uninterrupted")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return _digest(ws)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_training_resumes_bit_identical(smoke_workspace, tmp_path, reference, sig):
    ws = tmp_path / "ws"
    shutil.copytree(smoke_workspace, ws)
    proc = _train(ws, "checkpoints/run")
    step = _wait_for_checkpoint(ws, "checkpoints/run", proc, min_step=10)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, "an interrupted run must not report success"
    if sig != signal.SIGKILL:  # a catchable signal saves the state at the step it stopped
        assert "re-run the same command to resume" in err, err
        assert not (ws / "checkpoints/run/model.pt").exists()
    resumed = _train(ws, "checkpoints/run")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resuming training from step" in err
    assert int(err.split("resuming training from step ")[1].split()[0]) >= step
    assert json.loads((ws / "smoke/reports/metrics/train.json").read_text())["final_step"] == 40
    assert _digest(ws) == reference


def test_changed_params_do_not_resume_from_a_foreign_checkpoint(smoke_trained, tmp_path, dfa_cli):
    ws = copy_of(smoke_trained, tmp_path / "ws")    # trained with the smoke params
    proc = dfa_cli(ws, "train", "--smoke", "-S", "tracking.enabled=false", "-S", "loss.lambda_rect=0.5")
    assert "made with other params; starting afresh" in proc.stderr


def test_cache_resumes_at_the_first_missing_shard(smoke_workspace, tmp_path, dfa_cli):
    """A killed `dfa cache` keeps its finished shards and the re-run only adds the rest."""
    ws = tmp_path / "ws"
    shutil.copytree(smoke_workspace, ws)
    args = ["cache", "--smoke", "-S", "tracking.enabled=false", "-S", "cache.shard_size=4", "-S", "cache.dir=cache/resumed"]
    proc = subprocess.Popen([sys.executable, "-m", "dfa", *args], cwd=ws, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    index = ws / "cache/resumed/index.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if len(json.loads(index.read_text())["shards"]) >= 2:
                break
        except (FileNotFoundError, ValueError):
            pass
        assert proc.poll() is None, "cache finished before it could be interrupted"
        time.sleep(0.02)
    proc.kill()
    proc.communicate()
    done = json.loads(index.read_text())
    assert not done["complete"]
    first = {s["dir"]: (ws / "cache/resumed" / s["dir"] / "tokens.npy").stat().st_mtime_ns for s in done["shards"]}
    dfa_cli(ws, *args)
    final = json.loads(index.read_text())
    assert final["complete"] and sum(len(s["names"]) for s in final["shards"]) == 48
    for d, mtime in first.items():  # finished shards were kept, not rewritten
        assert (ws / "cache/resumed" / d / "tokens.npy").stat().st_mtime_ns == mtime
    reference = json.loads((ws / "smoke/cache/features/index.json").read_text())
    assert final["fingerprint"] != "" and [n for s in final["shards"] for n in s["names"]] == \
        [n for s in reference["shards"] for n in s["names"]]


def test_read_ahead_gives_the_same_training(smoke_workspace, tmp_path, reference):
    """``cache.prefetch=0`` (synchronous reads) ends with the same weights as the default read-ahead."""
    ws = tmp_path / "ws"
    shutil.copytree(smoke_workspace, ws)
    proc = subprocess.run([sys.executable, "-m", "dfa", "train", "--smoke", *STEPS, "-S", "cache.prefetch=0",
                           "-S", "train.dir=checkpoints/sync"], cwd=ws, env=cli_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert _digest(ws) == reference
