"""Per-image cost of each real-scale stage on this machine (issue 5's full-VOC estimate).

Builds a VOC-layout tree of ``N`` random 500×375 images (VOC's typical size; 21 classes,
one box object each), then runs ``dfa cache``, ``train``, ``pseudo`` and ``evaluate`` with
open_clip ViT-B-16 (random weights: timing does not depend on them) at 320 crop and the
method's defaults (K = 8, every block to the decoder, PAR at half resolution, eval scales
and flip, DenseCRF in ``eval.workers`` processes), and writes each stage's wall time and
its cost per image / step to ``OUT/pipeline_costs.json``.

    python experiments/probes/gpu_pipeline.py OUT [N] [TRAIN_STEPS] [CRF_WORKERS]

Model creation, imports and (for train) the first steps are inside the stage times, so the
per-item costs are upper bounds for long runs. Labels are random: the mIoU is meaningless.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TIMING_NAME = {"cache": "cache_features", "pseudo": "pseudo_labels"}  # reports/timings/<DVC stage>.json


def voc_tree(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    labels, names = {}, []
    for i in range(n):
        name = f"2008_{i:06d}"
        h, w = (375, 500) if i % 3 else (500, 375)
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        cls = 1 + i % 20
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[y0:y0 + h // 3, x0:x0 + w // 3] = cls
        img[mask > 0] = rng.integers(0, 255, 3)
        Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=90)
        Image.fromarray(mask, mode="L").save(root / "SegmentationClassAug" / f"{name}.png")
        vec = np.zeros(20, np.float32)
        vec[cls - 1] = 1
        labels[name], names = vec, names + [name]
    half = n // 2
    for split, items in (("train_aug", names[:half]), ("train", names[:half]), ("val", names[half:])):
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(items) + "\n")
    np.save(root / "cls_labels_onehot.npy", labels, allow_pickle=True)


def main() -> int:
    out = Path(sys.argv[1]).resolve()
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else (os.cpu_count() or 2)
    out.mkdir(parents=True, exist_ok=True)
    ws = Path("/tmp/dfa-gpu-pipeline")
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", ws / "params.yaml")
    voc_tree(ws / "VOC2012", n)
    overrides = ["tracking.enabled=false", "data.name=voc", "data.root=VOC2012", "clip.model=ViT-B-16",
                 "clip.pretrained=null", "clip.checkpoint=null", "clip.last_k=8", "data.crop_size=320",
                 "clip.templates=['a clean origami {}.']", f"train.steps={steps}", "train.batch_size=4",
                 "train.checkpoint_interval=100000", f"eval.workers={workers}",
                 "cache.dir=cache/voc", "train.dir=checkpoints/voc"]
    args = [a for o in overrides for a in ("-S", o)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_WAIT_POLICY": "PASSIVE"}
    res: dict = {"images": n, "train_views": 2 * (n // 2), "train_steps": steps, "train_batch": 4,
                 "seed_images": n // 2, "eval_images": n - n // 2, "crf_workers": workers, "stages": {}}
    for stage in ("prepare", "cache", "train", "pseudo", "evaluate"):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "dfa", stage, *args], cwd=ws, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        (out / f"{stage}.log").write_text(proc.stdout[-20000:] + proc.stderr[-20000:])
        timing = ws / "reports/timings" / f"{TIMING_NAME.get(stage, stage)}.json"
        rec = json.loads(timing.read_text()) if timing.exists() else {}
        res["stages"][stage] = {"rc": proc.returncode, "process_wall_s": round(wall, 2), **rec}
        print(stage, res["stages"][stage], flush=True)
        (out / "pipeline_costs.json").write_text(json.dumps(res, indent=2))  # partial, if cut short
        if proc.returncode != 0:
            break
    st = res["stages"]
    per = {}
    if "cache" in st:
        per["cache_s_per_view"] = st["cache"].get("wall_s", 0) / res["train_views"]
    if "train" in st:
        per["train_s_per_step"] = st["train"].get("wall_s", 0) / steps
    if "pseudo" in st:
        per["pseudo_s_per_image"] = st["pseudo"].get("wall_s", 0) / res["seed_images"]
    if "evaluate" in st:
        per["evaluate_s_per_image"] = st["evaluate"].get("wall_s", 0) / res["eval_images"]
    res["per_item"] = {k: round(v, 5) for k, v in per.items()}
    try:
        import torch
        res["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        pass
    res["cpu_count"] = os.cpu_count()
    (out / "pipeline_costs.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res["per_item"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
