"""Shared fixtures, each built once per session: a smoke workspace (data, small CLIP, feature
cache), the same with a trained smoke model, and that with its pseudo masks and evaluation.
They are read-only to tests: a test that runs a stage in one works on a ``copy_of`` it.
Under pytest-xdist (``make test`` runs two workers, a test file per worker) the first worker
that needs one builds it under a file lock in the run's shared temp folder; the other reuses it.

Stages run as ``python -m dfa`` commands, each its own process, in a temporary folder, so they
see the CLI as a user does and never write into the repository. ``run_dfa`` forks them from a
server that has imported torch, open_clip and MLflow once (``stage_runner``: most of a smoke
stage's time is those imports); what needs a fresh interpreter still gets one. The folder is not a git
repository, so ``repo_root()`` is that folder (GIT_DIR and DVC_ROOT are removed from the
environment so nothing points back at the checkout).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from filelock import FileLock

from stage_runner import run_command

REPO = Path(__file__).resolve().parents[1]


# Test files by measured cost (`make test`'s --durations, 2026-12-02: 280, 205, 165, 155, 100, 100,
# 80 s), heaviest first. `make test` runs xdist with --no-loadscope-reorder, so files are handed
# out in this order: the long ones start at once and the short ones fill the gaps. xdist's default
# order (most tests first) left these few-test, long files for last, one per worker: 12.6 min.
HEAVY_FIRST = ("test_rehearsal.py", "test_smoke_isolation.py", "test_scaling.py", "test_dvc_queue.py",
               "test_bench.py", "test_search.py", "test_pipeline.py")


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: the rest keep their order


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GIT_DIR", "GIT_WORK_TREE", "DVC_ROOT", "DFA_PIPELINE_ID")}
    env["OMP_WAIT_POLICY"] = "PASSIVE"  # two shared cores: spinning OpenMP threads slow everyone
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_dfa(workspace: Path, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m dfa <args>`` in ``workspace`` (in a fork of a preloaded server: ``stage_runner``);
    on failure the assertion shows its output."""
    proc = run_command(args, workspace, cli_env(), timeout)
    if check:
        assert proc.returncode == 0, f"dfa {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``<run temp>/<name>``, made by ``build(path)`` once per test run, across xdist workers too.

    The first caller builds it under a file lock and marks it done; a build that fails leaves no
    mark, so the next caller builds again (and fails with the same message) instead of using half.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent          # gw0, gw1 ... are subfolders of the run's one temp folder
    path, done = base / name, base / f"{name}.done"
    with FileLock(str(base / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def smoke_workspace(tmp_path_factory) -> Path:
    """A folder with params.yaml and the smoke dataset, small CLIP and feature cache."""
    def build(ws: Path) -> None:
        ws.mkdir(parents=True)
        shutil.copy(REPO / "params.yaml", ws / "params.yaml")
        for stage in ("prepare", "pretrain-clip", "cache"):
            run_dfa(ws, stage, "--smoke", "-S", "tracking.enabled=false")
    return built_once(tmp_path_factory, "smoke-workspace", build)


@pytest.fixture(scope="session")
def smoke_trained(smoke_workspace, tmp_path_factory) -> Path:
    """``smoke_workspace`` plus ``dfa train --smoke`` (tracking off): the smoke model, trained once."""
    def build(ws: Path) -> None:
        shutil.copytree(smoke_workspace, ws)
        run_dfa(ws, "train", "--smoke", "-S", "tracking.enabled=false")
    return built_once(tmp_path_factory, "smoke-trained", build)


@pytest.fixture(scope="session")
def smoke_evaluated(smoke_trained, tmp_path_factory) -> Path:
    """``smoke_trained`` plus ``dfa pseudo --smoke`` and ``dfa evaluate --smoke`` (tracking off)."""
    def build(ws: Path) -> None:
        shutil.copytree(smoke_trained, ws)
        for stage in ("pseudo", "evaluate"):
            run_dfa(ws, stage, "--smoke", "-S", "tracking.enabled=false")
    return built_once(tmp_path_factory, "smoke-evaluated", build)


def copy_of(workspace: Path, dest: Path) -> Path:
    """A private copy of a session workspace, for a test that runs stages or changes files."""
    shutil.copytree(workspace, dest)
    return dest


def module_copy(workspace: Path, tmp_path_factory) -> Path:
    """The body of a module's own ``smoke_workspace`` (a module that runs stages in it): the
    session one is shared by xdist workers, which copy it while this module would write."""
    return copy_of(workspace, tmp_path_factory.mktemp("module-ws") / "ws")


@pytest.fixture(scope="session")
def dfa_cli():
    """``dfa_cli(workspace, *args, check=True)``: run the CLI as a subprocess."""
    return run_dfa
