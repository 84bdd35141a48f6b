"""Headless check of ``make ui``: the page it sends you to is the runs table, with ``seed_miou``.

Usage (from the repository root; Debian: ``apt-get install -y chromium``)::

    python experiments/ui_screenshot.py [--out reports/figures/mlflow_ui.png] [--keep]

Runs two smoke pipelines (row 4 seed 0, row 2 seed 1) into a temporary MLflow store, in the
experiment ``dfa`` as ``make repro`` would (they write files only under ``smoke/``), starts
``python -m dfa ui`` on that store, opens the URL it prints in headless Chromium, saves a
screenshot and checks the rendered page: both pipeline runs by name, the ``seed_miou`` column,
the runs tab. About 3 minutes on two busy cores; exit 1 if a check fails.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "pretrain-clip", "cache", "train", "pseudo", "evaluate")
PIPELINES = ((4, 0), (2, 1))  # (ablation row, seed)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1000", "--virtual-time-budget=15000"]


def dfa(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "dfa", *args], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def chromium(url: str, tmp: Path, *flags: str) -> str:
    profile = Path(tempfile.mkdtemp(prefix="profile-", dir=tmp))  # a fresh profile: what a new user sees
    out = subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, url],
                         capture_output=True, text=True, timeout=180)
    return out.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/figures/mlflow_ui.png")
    ap.add_argument("--keep", action="store_true", help="keep the temporary store")
    args = ap.parse_args()
    if shutil.which("chromium") is None:
        print("chromium not found (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="dfa-ui-"))
    tracking = ["-S", f"tracking.uri=sqlite:///{tmp}/mlflow.db", "-S", "tracking.experiment=dfa"]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k, (row, seed) in enumerate(PIPELINES):
        print(f"smoke pipeline {k + 1}/{len(PIPELINES)}: row {row}, seed {seed}", flush=True)
        for stage in STAGES:
            dfa(stage, "--smoke", *tracking, "-S", f"ablation.row={row}", "-S", f"seed={seed}",
                env={**env, "DFA_PIPELINE_ID": f"repro-{stamp}-{k}"})

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "dfa", "ui", "--port", str(port), *tracking], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)  # its own process group: mlflow's workers go with it
    try:
        url = None
        for line in server.stdout:
            if m := re.search(r"(http://127\.0\.0\.1:\d+/#/\S+)", line):
                url = m.group(1)
                break
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                time.sleep(1)
        print(f"make ui sends you to {url}", flush=True)
        dom = chromium(url, tmp, "--dump-dom")
        out = (REPO / args.out).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        chromium(url, tmp, f"--screenshot={out}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    checks = {"the runs tab": ">Runs<" in dom, "the seed_miou column": "seed_miou" in dom,
              **{f"run 'repro · synthetic · row {r} · seed {s}'": f"repro · synthetic · row {r} · seed {s} · " in dom
                 for r, s in PIPELINES},
              "not the GenAI overview": "Detect Issues" not in dom}
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    print(f"screenshot: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
