"""Dress rehearsal of a real VOC (or COCO) run on this machine: `make rehearse-voc`.

Usage: python experiments/rehearse.py [--kind voc|coco] [--out runs/rehearse-voc] [--images 24]
       [--seeds 8] [--val 4] [--steps 24] [--size 375 500]

1. writes a stand-in tree in the dataset's exact layout (dfa/data/rehearsal.py: the embedded
   benchmark's drawings at VOC's sizes, relabelled as the 20 VOC / 80 COCO classes);
2. `dfa check-data --kind KIND` on it (without the official image counts);
3. every stage (prepare, pretrain-clip, cache, train, pseudo, evaluate) with `--profile KIND`,
   an open_clip ViT-B-16 with random weights (`clip.pretrained=null`: nothing can be downloaded
   here) and a few dozen steps, everything written under --out;
4. asserts that the run used a 20×20 grid, K = 8 attention layers and 1 + C columns in OT, that
   each artifact is where the layout says, that nothing was written outside --out, and that the
   MLflow runs carry the profile and the sources of their values.

Its mIoU numbers mean nothing: random CLIP weights, drawn shapes, a few dozen steps. It proves that
a real run will not die on its first night. Prints each stage's wall time (this machine, as run).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dfa.data.layout import Layout  # noqa: E402
from dfa.data.rehearsal import generate  # noqa: E402

STAGES = ("prepare", "pretrain-clip", "cache", "train", "pseudo", "evaluate")
NUM_FG = {"voc": 20, "coco": 80}
WATCHED = ("reports", "outputs", "checkpoints", "cache", "mlartifacts", "smoke", "data")  # must not change


def tree_digest(root: Path) -> dict[str, str]:
    """Name → size and mtime of every file under the repository's own output folders."""
    out = {}
    for top in WATCHED:
        for p in sorted((root / top).rglob("*")) if (root / top).exists() else []:
            if p.is_file():
                st = p.stat()
                out[p.relative_to(root).as_posix()] = f"{st.st_size}:{st.st_mtime_ns}"
    return out


def overrides(kind: str, out: Path, data_root: Path, steps: int) -> list[str]:
    sets = [f"data.root={data_root}", "clip.pretrained=null", "clip.checkpoint=null",
            f"train.steps={steps}", "train.warmup=2", f"train.checkpoint_interval={steps}",
            f"out_root={out}", f"train.dir={out}/checkpoints/dfa", f"cache.dir={out}/cache/features",
            f"tracking.uri=sqlite:///{out.resolve()}/mlflow.db", f"tracking.experiment=rehearse-{kind}",
            "refine.calibrate_images=0", "ot.debug=true", "eval.workers=1"]
    return ["--profile", kind, *[a for s in sets for a in ("-S", s)]]


def subprocess_runner(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """``python -m dfa <args>``, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "dfa", *args], cwd=cwd, env=env, capture_output=True, text=True)


def run(args: list[str], env: dict, runner=subprocess_runner) -> float:
    t0 = time.perf_counter()
    proc = runner(args, REPO, env)
    if proc.returncode != 0:
        sys.exit(f"rehearsal FAILED at `dfa {' '.join(args[:3])} …` (exit {proc.returncode}):\n"
                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def check(kind: str, out: Path, root: Path, lists: dict[str, list[str]], steps: int) -> list[str]:
    """Every failed expectation, one line each."""
    bad = []
    layout = Layout(root, kind)
    seed_split = "train" if kind == "voc" else "val"
    metrics = {}
    for m in ("data", "cache", "train", "pseudo", "eval"):
        path = out / "reports/metrics" / f"{m}.json"
        if path.is_file():
            metrics[m] = json.loads(path.read_text())
        else:
            bad.append(f"{path}: missing")
    train = metrics.get("train", {})
    if train.get("grid") != [20, 20]:
        bad.append(f"train.json grid {train.get('grid')} != [20, 20] (crop 320, ViT-B/16)")
    if train.get("attention_layers") != 8:
        bad.append(f"train.json attention_layers {train.get('attention_layers')} != K = 8")
    if train.get("final_step") != steps:
        bad.append(f"train.json final_step {train.get('final_step')} != {steps}")
    index = json.loads((out / "cache/features/index.json").read_text())
    attn = np.load(out / "cache/features" / index["shards"][0]["dir"] / "attn.npy", mmap_mode="r")
    if attn.shape[1:] != (8, 400, 400):
        bad.append(f"cache attn shape {attn.shape[1:]} != (8, 400, 400)")
    columns = json.loads((out / "outputs/pseudo/ot_columns.json").read_text())
    widths = {len(v) for v in columns.values()}
    if widths != {1 + NUM_FG[kind]}:
        bad.append(f"OT plan columns {widths} != {{{1 + NUM_FG[kind]}}} (background + {NUM_FG[kind]} classes)")
    if len(columns) != len(lists[seed_split]):
        bad.append(f"ot_columns.json has {len(columns)} images, the seed split {len(lists[seed_split])}")
    if not layout.list_path("tune").is_file():
        bad.append(f"{layout.list_path('tune')}: `dfa prepare` did not draw the tune split")
    for sub in ("cam", "seed", "mask"):
        missing = [n for n in lists[seed_split] if not (out / "outputs/pseudo" / sub / f"{n}.png").is_file()]
        if missing:
            bad.append(f"{out}/outputs/pseudo/{sub}: {len(missing)} seed image(s) missing, e.g. {missing[0]}")
    for rel in ("checkpoints/dfa/model.pt", "reports/figures/pseudo_grid.png", "reports/eval_per_class.md",
                "reports/plots/train_curve.csv"):
        if not (out / rel).is_file():
            bad.append(f"{out / rel}: missing")
    for m, js in metrics.items():
        src = js.get("config_sources", {})
        if src.get("profile") != kind or src.get("sources", {}).get("clip.model") != f"profile:{kind}":
            bad.append(f"{m}.json config_sources lacks profile {kind}: {str(src)[:120]}")
    pseudo = metrics.get("pseudo", {})
    if pseudo.get("images") != len(lists[seed_split]):
        bad.append(f"pseudo.json images {pseudo.get('images')} != {len(lists[seed_split])}")
    if len(metrics.get("eval", {}).get("per_class_iou", [])) != 1 + NUM_FG[kind]:
        bad.append(f"eval.json per_class_iou has {len(metrics.get('eval', {}).get('per_class_iou', []))} classes")
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve()}/mlflow.db")
    exp = client.get_experiment_by_name(f"rehearse-{kind}")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    stages = {r.data.tags.get("stage"): r for r in runs if r.data.tags.get("stage")}
    for stage in ("prepare", "cache_features", "train", "pseudo_labels", "evaluate"):
        r = stages.get(stage)
        if r is None:
            bad.append(f"MLflow: no {stage} run in experiment rehearse-{kind}")
        elif (r.data.tags.get("dfa.profile") != kind or r.data.tags.get("source.clip.model") != f"profile:{kind}"
              or r.data.tags.get("source.train.steps") != "override"):
            bad.append(f"MLflow run {stage}: profile/source tags missing or wrong")
    return bad


def main(argv: list[str] | None = None, runner=subprocess_runner) -> int:
    """``runner(args, cwd, env)`` runs one ``dfa`` command (the tests pass one that forks it)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=("voc", "coco"), default="voc")
    ap.add_argument("--out", default=None, help="default runs/rehearse-KIND")
    ap.add_argument("--images", type=int, default=24, help="training images (VOC: train_aug)")
    ap.add_argument("--seeds", type=int, default=8, help="VOC: the train split, a subset of train_aug")
    ap.add_argument("--val", type=int, default=4, help="val images")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    a = ap.parse_args(argv)
    out = Path(a.out or f"runs/rehearse-{a.kind}")
    out = out if out.is_absolute() else REPO / out
    shutil.rmtree(out, ignore_errors=True)
    root = out / ("VOCdevkit/VOC2012" if a.kind == "voc" else "coco2014")
    print(f"rehearsal of a {a.kind.upper()} run in {out}. Its numbers mean NOTHING: random ViT-B-16 weights, "
          "drawn shapes, a few dozen steps; it checks the code path, the sizes and the files.")
    before = tree_digest(REPO)
    t0 = time.perf_counter()
    lists = generate(root, a.kind, num_train_aug=a.images, num_train=a.seeds, num_val=a.val, size=tuple(a.size))
    times = {"generate": time.perf_counter() - t0}
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "DVC_ROOT")}
    env.update(OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO), DFA_PIPELINE_ID=f"rehearse-{a.kind}-{int(time.time())}")
    times["check-data"] = run(["check-data", str(root), "--kind", a.kind, "--no-counts"], env, runner)
    for stage in STAGES:
        times[stage] = run([stage, *overrides(a.kind, out, root, a.steps)], env, runner)
    bad = check(a.kind, out, root, lists, a.steps)
    outside = sorted(set(tree_digest(REPO).items()) ^ set(before.items()))
    if outside:
        bad.append(f"files outside {out} changed: {sorted({k for k, _ in outside})[:5]}")
    n_train = len(lists["train_aug" if a.kind == "voc" else "train"])
    print(f"wall time per stage on this machine ({os.cpu_count()} cores, as run; images "
          f"{a.size[0]}×{a.size[1]}±10 %, {n_train} train / {len(lists['train' if a.kind == 'voc' else 'val'])} seed / "
          f"{len(lists['val'])} val, {a.steps} steps):")
    for k, v in times.items():
        print(f"  {k:14s} {v:7.1f} s")
    metrics = json.loads((out / "reports/metrics/pseudo.json").read_text()) if (out / "reports/metrics/pseudo.json").exists() else {}
    if metrics:
        print(f"(seed mIoU {metrics.get('seed_miou', float('nan')):.1f}: meaningless, as said)")
    if bad:
        print("rehearsal FAILED:\n  " + "\n  ".join(bad))
        return 1
    print(f"rehearsal OK: 20×20 grid, K = 8, {1 + NUM_FG[a.kind]} OT columns, every artifact under {out}, "
          f"MLflow runs tagged with profile {a.kind} and their sources")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
