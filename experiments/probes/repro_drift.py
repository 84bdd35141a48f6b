"""How far the smoke pipeline's metrics move when only the machine changes (README, "Reproducibility").

Usage: python experiments/probes/repro_drift.py [VARIANT ...]   (default: every variant)

Runs ``dfa prepare … evaluate --smoke`` in fresh temporary workspaces: twice as configured
(must match byte for byte), then with one thread instead of two (``-S threads=1``, as torch's
default on a 1-core machine) and with torch's AVX2 kernels instead of this CPU's AVX-512
(``ATEN_CPU_CAPABILITY=avx2``, as on a CPU without AVX-512), and under the portable mode
(``DFA_PORTABLE=1`` and ``=compatible``). Prints each metric's difference from the first run. Smoke sizes: 12 training steps, 16 seed and 8 evaluation images.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STAGES = ("prepare", "pretrain-clip", "cache", "train", "pseudo", "evaluate")
METRICS = {"clip": ("final_loss", "zero_shot_acc"), "train": ("final_loss", "alpha"),
           "pseudo": ("cam_miou", "seed_miou", "mask_miou"), "eval": ("seg_miou", "seg_crf_miou")}
VARIANTS = {"as configured (again)": ([], {}), "threads=1": (["-S", "threads=1"], {}),
            "AVX2 kernels": ([], {"ATEN_CPU_CAPABILITY": "avx2"}),
            # the portable mode (dfa.kernels): every kernel path pinned before torch loads
            "portable": ([], {"DFA_PORTABLE": "1"}), "portable compatible": ([], {"DFA_PORTABLE": "compatible"})}


def run(overrides: list[str], env: dict) -> Path:
    ws = Path(tempfile.mkdtemp(prefix="dfa-drift-"))
    shutil.copy(REPO / "params.yaml", ws)
    for stage in STAGES:
        subprocess.run([sys.executable, "-m", "dfa", stage, "--smoke", "-S", "tracking.enabled=false", *overrides],
                       cwd=ws, check=True, capture_output=True,
                       env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO), **env})
    return ws / "smoke/reports/metrics"


def without_env(path: Path) -> dict:
    """A metrics file without its ``env`` (which names the mode, so always differs)."""
    return {k: v for k, v in json.loads(path.read_text()).items() if k != "env"}


def main() -> None:
    chosen = {k: v for k, v in VARIANTS.items() if not sys.argv[1:] or k in sys.argv[1:]}
    base = run([], {})
    values = {f: json.loads((base / f"{f}.json").read_text()) for f in METRICS}
    print("metric".ljust(22) + "".join(f"{k:>24}" for k in ["as configured", *chosen]))
    rows = {f"{f}.{k}": [values[f][k]] for f in METRICS for k in METRICS[f]}
    identical = []
    for name, (overrides, env) in chosen.items():
        other = run(overrides, env)
        identical.append(sorted(p.name for p in other.glob("*.json") if without_env(base / p.name) != without_env(p))
                         + [f for f in ("plots/train_curve.csv", "../checkpoints/dfa/model.pt")
                            if (base.parent / f).read_bytes() != (other.parent / f).read_bytes()])
        for f in METRICS:
            got = json.loads((other / f"{f}.json").read_text())
            for k in METRICS[f]:
                rows[f"{f}.{k}"].append(got[k] - values[f][k])
        shutil.rmtree(other.parents[2])
    for key, (v, *deltas) in rows.items():
        print(key.ljust(22) + f"{v:>24.6g}" + "".join(f"{d:>+24.3g}" for d in deltas))
    print("files that differ from the first run (metrics apart from env, curve, weights): "
          + "; ".join(f"{n}: {', '.join(d) or 'none'}" for n, d in zip(chosen, identical)))
    env = json.loads((base / "train.json").read_text())["env"]
    print(f"first run: {env}")
    shutil.rmtree(base.parents[2])


if __name__ == "__main__":
    main()
