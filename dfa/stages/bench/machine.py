"""``dfa bench`` entries ``pipeline`` (wall time and peak RSS of each DVC stage from
``reports/timings/*.json``) and ``machine`` (CPU, threads, versions, load average).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch


TIMINGS = Path("reports/timings")
DVC_STAGES = ("prepare", "pretrain_clip", "cache_features", "train", "pseudo_labels", "evaluate")


def pipeline_timings(folder: Path = TIMINGS) -> dict:
    """Per-stage wall time and peak RSS recorded by ``dfa.tracking`` (bench's own excluded)."""
    stages = {}
    for path in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if path.stem in DVC_STAGES:  # not bench, ablation or search runs
            stages[path.stem] = {"wall_s": rec.get("wall_s"), "peak_rss_mib": rec.get("peak_rss_mib")}
    if not stages:
        return {"stages": None, "total_wall_s": None, "max_peak_rss_mib": None,
                "note": f"no {folder}/*.json yet: run the pipeline (make repro) first"}
    walls = [s["wall_s"] for s in stages.values() if s["wall_s"] is not None]
    rss = [s["peak_rss_mib"] for s in stages.values() if s["peak_rss_mib"] is not None]
    return {"stages": stages, "total_wall_s": round(sum(walls), 2), "max_peak_rss_mib": max(rss, default=None),
            "note": "from the last run of each stage; stages may come from different invocations"}


def machine_info() -> dict:
    model = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cuda = torch.cuda.is_available()
    return {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "cpu_model": model, "torch": torch.__version__, "numpy": np.__version__,
            "threads": torch.get_num_threads(), "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
