"""``dfa bench`` section ``portable``: what the portable kernel mode costs (issue 18).

The pins (``dfa.kernels``) act only if they are in the environment before torch loads, so each
mode runs in its own fresh ``python`` process: the same ``train_step`` workload (a cached-feature
DFA step and the step with the encoder online), under the default kernels, ``DFA_PORTABLE=avx2``
and ``DFA_PORTABLE=compatible``. Modes are run round-robin (default, avx2, compatible, default,
…) so a burst of contention hits all alike; a mode's cell is the median over its processes of
each process's median. The cost is the ratio portable / default of those medians (> 1: slower).
Each process reports the kernel family torch dispatched to, so a pin that did not act shows.

Run as a module, this file is the worker: ``python -m dfa.stages.bench.portable CONFIG.yaml
[--smoke]`` prints one JSON line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from dfa.config import Config
from dfa.kernels import KERNEL_VARS, PORTABLE_LEVELS
from dfa.stages.bench.timing import ratio

MODES = ("default", *PORTABLE_LEVELS)       # default, avx2, compatible


def mode_env(mode: str) -> dict[str, str]:
    """This process's environment with ``mode``'s pins (none for ``default``)."""
    env = {k: v for k, v in os.environ.items() if k not in (*KERNEL_VARS, "DFA_PORTABLE")}
    if mode != "default":
        env.update(PORTABLE_LEVELS[mode], DFA_PORTABLE=mode)
    return env


def run_worker(config: Path, smoke: bool, mode: str) -> dict:
    cmd = [sys.executable, "-m", "dfa.stages.bench.portable", str(config), *(["--smoke"] if smoke else [])]
    proc = subprocess.run(cmd, env=mode_env(mode), capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"bench portable: the {mode} worker exited {proc.returncode}: {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_portable(cfg: Config, smoke: bool, rounds: int | None = None) -> dict:
    """Median step times of each kernel mode, over ``rounds`` fresh processes per mode."""
    from dfa.config.loader import dump_yaml
    import numpy as np

    rounds = rounds or (1 if smoke else 3)
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "params.yaml"
        config.write_text(dump_yaml(cfg))
        for _ in range(rounds):
            for mode in MODES:
                runs[mode].append(run_worker(config, smoke, mode))
    out: dict = {"rounds": rounds, "arch": runs["default"][0]["arch"], "modes": {}}
    for mode, rs in runs.items():
        out["modes"][mode] = {"capability": sorted({r["capability"] for r in rs}),
                              "cached_ms": round(float(np.median([r["cached_ms"] for r in rs])), 3),
                              "online_ms": round(float(np.median([r["online_ms"] for r in rs])), 3)}
    base = out["modes"]["default"]
    for mode in PORTABLE_LEVELS:
        m = out["modes"][mode]
        m["cost_cached"] = ratio(m["cached_ms"], base["cached_ms"])
        m["cost_online"] = ratio(m["online_ms"], base["online_ms"])
    out["note"] = ("cost = portable / default median step time (> 1: slower); each mode in its own process, "
                   "round-robin; capability = torch's kernel family in that process")
    return out


def _worker(argv: list[str]) -> None:
    import torch

    from dfa.config import load_config
    from dfa.stages.bench.train_step import bench_train

    cfg = load_config(argv[0])
    res = bench_train(cfg, "--smoke" in argv[1:])
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "arch": res["arch"],
                      "cached_ms": res["cached_ms"], "online_ms": res["online_ms"]}))


if __name__ == "__main__":
    _worker(sys.argv[1:])
