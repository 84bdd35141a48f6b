"""How far the smoke pipeline's metrics move when only the machine changes (README, "Reproducibility").

Usage: python experiments/probes/repro_drift.py

Runs ``dfa prepare … evaluate --smoke`` in fresh temporary workspaces: twice as configured
(must match byte for byte), then with one thread instead of two (``-S threads=1``, as torch's
default on a 1-core machine) and with torch's AVX2 kernels instead of this CPU's AVX-512
(``ATEN_CPU_CAPABILITY=avx2``, as on a CPU without AVX-512). Prints each metric's difference
from the first run. Smoke sizes: 12 training steps, 16 seed and 8 evaluation images.
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
            "AVX2 kernels": ([], {"ATEN_CPU_CAPABILITY": "avx2"})}


def run(overrides: list[str], env: dict) -> Path:
    ws = Path(tempfile.mkdtemp(prefix="dfa-drift-"))
    shutil.copy(REPO / "params.yaml", ws)
    for stage in STAGES:
        subprocess.run([sys.executable, "-m", "dfa", stage, "--smoke", "-S", "tracking.enabled=false", *overrides],
                       cwd=ws, check=True, capture_output=True,
                       env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO), **env})
    return ws / "smoke/reports/metrics"


def main() -> None:
    base = run([], {})
    values = {f: json.loads((base / f"{f}.json").read_text()) for f in METRICS}
    print("metric".ljust(22) + "".join(f"{k:>24}" for k in ["as configured", *VARIANTS]))
    rows = {f"{f}.{k}": [values[f][k]] for f in METRICS for k in METRICS[f]}
    identical = []
    for name, (overrides, env) in VARIANTS.items():
        other = run(overrides, env)
        identical.append(all((base / p.name).read_bytes() == p.read_bytes() for p in other.glob("*.json")))
        for f in METRICS:
            got = json.loads((other / f"{f}.json").read_text())
            for k in METRICS[f]:
                rows[f"{f}.{k}"].append(got[k] - values[f][k])
        shutil.rmtree(other.parents[2])
    for key, (v, *deltas) in rows.items():
        print(key.ljust(22) + f"{v:>24.6g}" + "".join(f"{d:>+24.3g}" for d in deltas))
    print("every metrics file byte-identical to the first run: "
          + ", ".join(f"{n}: {ok}" for n, ok in zip(VARIANTS, identical)))
    env = json.loads((base / "train.json").read_text())["env"]
    print(f"first run: {env}")
    shutil.rmtree(base.parents[2])


if __name__ == "__main__":
    main()
