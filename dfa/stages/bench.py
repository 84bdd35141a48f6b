"""``dfa bench``: speed of the workbench's hot paths, each measured against a peer in the same run.

Every number is a ratio against something timed in the same process, minutes apart at most,
because on the shared 2-core box absolute times swing up to 10× with contention
(perf-anchors §0); the ratios survive that, the absolute times do not. Peers are timed
round-robin (one call of each, repeated), after a warm-up call of each, so a burst of
contention hits all of them alike. Cells are the median over the repeats, with [min, max]
in ``*_range``; speedups are ratios of medians. ``torch.set_num_threads`` is left at its
default. The load average before and after is recorded in ``machine`` so a contended run
can be recognised.

Entries of ``reports/bench.json``:

* ``sinkhorn``: ``dfa.ot.sinkhorn`` vs POT's batched solver (torch) and POT's per-problem
  ``ot.sinkhorn`` (numpy, fp64), same problems, ε, and a fixed 100 iterations (tol 0).
* ``train_step``: a DFA step from cached features vs the same step with the frozen
  encoder online (open_clip ViT-B/16 at 320 px; a tiny ViT with ``--smoke``).
* ``crf``: DenseCRF serial vs a 2-process spawn pool started per call (as ``dfa evaluate``), and
  vs an already running pool.
* ``pipeline``: wall time and peak RSS of each stage from ``reports/timings/*.json``.
* ``machine``; ``gpu`` (only on CUDA: encoder images/s, training it/s, bf16 utilisation).
* ``search_scaling``: smoke-study trials per minute with 1 and 2 search workers on
  PostgreSQL, and Optuna / MLflow storage overhead per trial on SQLite vs PostgreSQL
  (``dfa.stages.bench_search``).
* ``targets``: the acceptance targets of the speed issue and whether this run met them.
"""
from __future__ import annotations

import copy
import datetime
import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dfa.config import Config
from dfa.errors import WorkbenchError
from dfa.io import write_json
from dfa.stages.common import seed_everything
from dfa.tracking import stage_run

OUT = Path("reports/bench.json")
TIMINGS = Path("reports/timings")
DVC_STAGES = ("prepare", "pretrain_clip", "cache_features", "train", "pseudo_labels", "evaluate")

# Acceptance targets (issue): speed targets live here, never in unit tests.
TARGETS = {"sinkhorn.speedup": 1.2, "sinkhorn.speedup_vs_loop": 5.0, "sinkhorn.speedup_to_tol": 1.2,
           "sinkhorn.speedup_vs_loop_to_tol": 5.0, "train_step.speedup": 5.0, "crf.speedup": 1.6}

# Dense bf16 tensor-core peak in TFLOP/s (vendor spec, no sparsity), by device-name substring.
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}  # first match wins
VIT_B16_GFLOP_320 = 74.5  # analytic, per 320² image (perf-anchors §6)


# --------------------------------------------------------------------------- timing helpers
def race(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
         sync: Callable[[], None] = lambda: None) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Time each callable ``repeats`` times, round-robin, after ``warmup`` calls of each.

    Round-robin rather than one block per callable: contention on the shared box comes in
    bursts, and interleaving spreads a burst over all peers instead of penalising one.
    Returns (seconds per call, by name) and the last return value of each.
    """
    last: dict[str, object] = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            last[name] = fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            last[name] = fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times, last


def med(samples: list[float], scale: float = 1e3) -> float:
    return round(float(np.median(samples)) * scale, 3)


def span(samples: list[float], scale: float = 1e3) -> list[float]:
    return [round(min(samples) * scale, 3), round(max(samples) * scale, 3)]


def ratio(num: float | None, den: float | None) -> float | None:
    return round(num / den, 3) if num and den else None


# --------------------------------------------------------------------------- Sinkhorn
def ot_problems(batch: int, n: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of CAM-like OT problems (perf-anchors §2), fp32.

    Similarity = 0.2 + N(0, 0.02²), + 0.1 on each token's class, 3 classes present per
    image; cost = 1 − sim, min-max scaled to [0, 1] per image. Rows uniform; columns
    ~ Dirichlet(0.5): non-uniform marginals need 2–3× the iterations of uniform ones.
    """
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    sim = 0.2 + 0.02 * torch.randn(batch, n, c, generator=g)
    for i in range(batch):
        classes = torch.randperm(c, generator=g)[:3]
        sim[i, torch.arange(n), classes[torch.randint(3, (n,), generator=g)]] += 0.1
    cost = 1 - sim
    lo, hi = cost.amin((1, 2), keepdim=True), cost.amax((1, 2), keepdim=True)
    cost = (cost - lo) / (hi - lo)
    a = torch.full((batch, n), 1.0 / n)
    b = torch.from_numpy(rng.dirichlet(np.full(c, 0.5), size=batch)).float()
    b = b / b.sum(-1, keepdim=True)
    return cost, a, b


def bench_sinkhorn(smoke: bool, epsilon: float, tol: float, device: torch.device = torch.device("cpu")) -> dict:
    """Ours vs POT (batched torch solver, per-problem ``ot.sinkhorn``), same problems, ε, device.

    Two comparisons: ``*_ms`` at a fixed 100 iterations for every solver (equal work), and
    ``*_to_tol_ms`` with every solver stopped by its own rule at the same tolerance ``tol``
    (what a user runs; ours checks ‖T1 − a‖₁ + ‖Tᵀ1 − b‖₁ every iteration, POT's loop the
    2-norm of the column error every 10 iterations, a weaker test). On CPU the loop runs POT's
    numpy backend in fp64 (its default); on CUDA it gets torch CUDA tensors.
    """
    import ot
    import ot.batch

    from dfa.ot import sinkhorn

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    iters, batch, repeats = 100, (4 if smoke else 64), (3 if smoke else 5)
    out: dict = {"device": str(device), "epsilon": epsilon, "iterations": iters, "batch": batch, "repeats": repeats,
                 "tol": tol, "pot_version": ot.__version__,
                 "dtype": {"ours": "float32 torch", "pot_batch": "float32 torch",
                           "pot_loop": "float32 torch (CUDA)" if cuda else "float64 numpy"},
                 "note": "*_ms: fixed 100 iterations (tol=0 / stopThr=0), equal work; *_to_tol_ms: each solver "
                         "stopped by its own rule at tol; pot_loop = ot.sinkhorn per problem; "
                         "pot_batch = ot.batch.solve_batch(method='sinkhorn'), torch backend"}
    for n, c in ((400, 21), (1600, 81)):
        cost, a, b = (t.to(device) for t in ot_problems(batch, n, c))
        if cuda:
            lc, la, lb = cost, a, b
        else:
            lc, la, lb = cost.double().numpy(), a.double().numpy(), b.double().numpy()
        loop_iters: list[int] = []

        def pot_loop(stop=0.0, max_iter=iters):
            loop_iters.clear()
            plans = []
            for i in range(batch):
                plan, log = ot.sinkhorn(la[i], lb[i], lc[i], epsilon, numItermax=max_iter, stopThr=stop, log=True)
                plans.append(plan)
                loop_iters.append(int(log.get("niter", max_iter)))
            return plans

        def pot_batch(stop=0.0, max_iter=iters):
            return ot.batch.solve_batch(cost, epsilon, a=a, b=b, max_iter=max_iter, tol=stop, method="sinkhorn").plan

        fixed = {"ours": lambda: sinkhorn(cost, a, b, epsilon, max_iters=iters, tol=0),
                 "pot_batch": pot_batch, "pot_loop": pot_loop}
        to_tol = {"ours": lambda: sinkhorn(cost, a, b, epsilon, max_iters=1000, tol=tol, return_info=True),
                  "pot_batch": lambda: pot_batch(tol, 1000), "pot_loop": lambda: pot_loop(tol, 1000)}
        try:
            pot_batch(0.0, 1)
        except RuntimeError as exc:  # POT 0.9.7's batched solver mixes devices on CUDA
            out["pot_batch_error"] = f"{type(exc).__name__}: {exc}"
            del fixed["pot_batch"], to_tol["pot_batch"]
        with warnings.catch_warnings():  # stopThr=0 makes POT warn "did not converge"
            warnings.simplefilter("ignore")
            times, plans = race(fixed, repeats, sync=sync)
            tol_times, tol_last = race(to_tol, repeats, sync=sync)
        ms = {k: med(v) for k, v in times.items()}
        tol_ms = {k: med(v) for k, v in tol_times.items()}
        loop_plan = torch.stack([torch.as_tensor(p) for p in plans["pot_loop"]]).to(device)
        ours_plan, batch_plan = plans["ours"], plans.get("pot_batch")
        if batch_plan is None:  # keep the keys; the batched peer is reported as missing
            ms["pot_batch"] = tol_ms["pot_batch"] = None
        out[f"{n}x{c}"] = {
            "ours_ms": ms["ours"], "ours_ms_range": span(times["ours"]),
            "pot_batch_ms": ms["pot_batch"], "pot_batch_ms_range": span(times["pot_batch"]) if ms["pot_batch"] else None,
            "pot_loop_ms": ms["pot_loop"], "pot_loop_ms_range": span(times["pot_loop"]),
            "speedup": ratio(min(x for x in (ms["pot_batch"], ms["pot_loop"]) if x), ms["ours"]),
            "speedup_vs_batch": ratio(ms["pot_batch"], ms["ours"]),
            "speedup_vs_loop": ratio(ms["pot_loop"], ms["ours"]),
            "max_plan_diff": None if batch_plan is None else float((ours_plan - batch_plan).abs().max()),
            # Plan entries are ~1/(N·C), so also give the difference relative to the largest entry.
            "max_plan_rel_diff": None if batch_plan is None else
            float((ours_plan - batch_plan).abs().max() / batch_plan.max()),
            "max_plan_diff_vs_loop": float((ours_plan.double() - loop_plan.double()).abs().max()),
            "ours_to_tol_ms": tol_ms["ours"], "ours_to_tol_ms_range": span(tol_times["ours"]),
            "pot_batch_to_tol_ms": tol_ms["pot_batch"], "pot_loop_to_tol_ms": tol_ms["pot_loop"],
            "ours_iters_to_tol": int(tol_last["ours"][1]["iters"]),
            "pot_loop_iters_to_tol": int(np.median(loop_iters)) if loop_iters else None,
            "speedup_to_tol": ratio(min(x for x in (tol_ms["pot_batch"], tol_ms["pot_loop"]) if x), tol_ms["ours"]),
            "speedup_vs_loop_to_tol": ratio(tol_ms["pot_loop"], tol_ms["ours"]),
        }
    return out


# --------------------------------------------------------------------------- training step
def bench_spec():
    """A made-up 20-class spec with a few background prompts (the text side's size only)."""
    from dfa.data.classes import ClassSpec
    classes = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "table",
               "dog", "horse", "motorbike", "person", "plant", "sheep", "sofa", "train", "monitor"]
    return ClassSpec(classes=classes, synonyms={"person": ["people"]}, background=["ground", "sky", "wall", "water"])


def bench_encoder(cfg: Config, smoke: bool):
    """(FrozenCLIP, crop, arch description): the real ViT-B/16, or a tiny ViT with ``--smoke``.

    Weights are random (``pretrained=None``): timing does not depend on them.
    """
    import open_clip

    from dfa.backbone.clip import TINY_NAME, FrozenCLIP, build_tiny, tiny_config

    if smoke:
        p = cfg.pretrain
        tc = tiny_config(p.width, p.layers, p.heads, p.patch_size, p.image_size, p.embed_dim, p.pool,
                         p.text_width, p.text_layers, p.text_heads, p.context_length)
        model = build_tiny(tc)
        tok = open_clip.get_tokenizer(TINY_NAME, context_length=p.context_length)
        last_k = min(cfg.clip.last_k, p.layers)
        arch = f"{TINY_NAME} (smoke) width {p.width}, {p.layers} layers, patch {p.patch_size}, random weights"
        crop = 8 * p.patch_size
    else:
        model = open_clip.create_model("ViT-B-16", pretrained=None)
        tok = open_clip.get_tokenizer("ViT-B-16")
        last_k, crop, arch = 8, 320, "ViT-B-16 (open_clip, random weights)"
    return FrozenCLIP(model, tok, last_k=last_k, similarity=cfg.clip.similarity), crop, arch


def bench_config(cfg: Config, clip, crop: int, smoke: bool) -> Config:
    """The loaded config with K, crop and (full run) the method.md decoder defaults."""
    c = copy.deepcopy(cfg)
    c.clip.last_k, c.data.crop_size = clip.last_k, crop
    if not smoke:
        c.decoder.width, c.decoder.layers, c.decoder.heads = 256, 3, 8
    return c


def synthetic_views(n: int, crop: int, num_fg: int, device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, 3, crop, crop) already normalised, present (n, num_fg) bool, 3 classes each)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, crop, crop, generator=g)
    present = torch.zeros(n, num_fg, dtype=torch.bool)
    for i in range(n):
        present[i, torch.randperm(num_fg, generator=g)[:3]] = True
    return images.to(device), present.to(device)


def as_batch(f, images: torch.Tensor, present: torch.Tensor) -> dict:
    return {"tokens": f.tokens, "attn": f.attn, "cos": f.cos, "cos_bg": f.cos_bg, "present": present,
            "image": images, "grid": f.grid}


def make_step(model, opt, device) -> Callable[[dict], float]:
    """What ``dfa train`` does per step, minus logging: forward, backward, AdamW."""
    from dfa.stages.train import train_step

    def step(batch: dict) -> float:
        losses = train_step(model, batch, device, 100.0)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        return losses["total"].item()
    return step


def bench_train(cfg: Config, smoke: bool) -> dict:
    """Cached-feature step vs the same step with the frozen encoder run online (CPU, batch 2)."""
    from dfa.backbone.dense import DenseExtractor
    from dfa.model import DFA

    device = torch.device("cpu")
    spec = bench_spec()
    clip, crop, arch = bench_encoder(cfg, smoke)
    c = bench_config(cfg, clip, crop, smoke)
    extract = DenseExtractor(clip, spec, c.clip.templates, "fp32")
    images, present = synthetic_views(2, crop, spec.num_fg, device)
    # The cached batch is the encoder's own output for these views, so both steps do
    # identical work after the encoder: the difference is the encoder alone.
    cached = as_batch(extract(images, present), images, present)
    model = DFA(c, num_blocks=cached["tokens"].shape[1], in_dim=cached["tokens"].shape[-1],
                num_classes=spec.num_classes).to(device).train()
    opt = torch.optim.AdamW(model.trainable_groups(), weight_decay=c.train.weight_decay)
    step = make_step(model, opt, device)
    repeats = 3 if smoke else 5
    times, _ = race({"cached": lambda: step(cached),
                     "online": lambda: step(as_batch(extract(images, present), images, present))}, repeats)
    cached_ms, online_ms = med(times["cached"]), med(times["online"])
    return {"arch": arch, "crop": crop, "batch": 2, "device": "cpu", "last_k": clip.last_k,
            "decoder": {"width": c.decoder.width, "layers": c.decoder.layers, "heads": c.decoder.heads},
            "shapes": {k: list(v.shape) for k, v in cached.items() if torch.is_tensor(v)},
            "repeats": repeats, "cached_ms": cached_ms, "cached_ms_range": span(times["cached"]),
            "online_ms": online_ms, "online_ms_range": span(times["online"]),
            "speedup": ratio(online_ms, cached_ms),
            "note": "step = train_step + backward + AdamW; online adds DenseExtractor on the 2 views (fp32)"}


# --------------------------------------------------------------------------- DenseCRF
def crf_items(n: int, size: int, num_classes: int = 21, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Synthetic (image uint8 (H, W, 3), probs (C, H, W)) pairs: a few smooth blobs per image.

    Probabilities are a softmax of Gaussian bumps (smooth, CAM-like); the image is flat
    colour per blob plus a gradient and mild noise, i.e. the "synthetic" row of perf-anchors §4.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    items = []
    for _ in range(n):
        logits = np.full((num_classes, size, size), -4.0, np.float32)
        logits[0] = 0.5                                                   # background
        for cls in rng.choice(np.arange(1, num_classes), 3, replace=False):
            cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.12, 0.3)
            logits[cls] = 3.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)) - 1.0
        probs = np.exp(logits - logits.max(0))
        probs /= probs.sum(0)
        colours = rng.uniform(30, 225, (num_classes, 3)).astype(np.float32)
        image = colours[probs.argmax(0)] + 40 * (yy + xx)[..., None] + rng.normal(0, 6, (size, size, 3))
        items.append((np.clip(image, 0, 255).astype(np.uint8), probs.astype(np.float32)))
    return items


def bench_crf(cfg: Config, smoke: bool) -> dict:
    """``crf_labels`` serial vs a 2-process spawn pool, on the same images, method.md §6 parameters.

    ``parallel_s`` is what one ``dfa evaluate`` call pays: start a :func:`crf_pool`, run every
    image through it, shut it down. ``warm_s`` is the same images through a pool that is
    already running (the steady state over VOC val's 1,449 images); ``pool_startup_s`` is a
    pool started and run on 2 images of 8×8 px, i.e. the start-up alone.
    """
    from dfa.crf import crf_labels, crf_pool

    workers = 2
    n, size, repeats = (4, 64, 1) if smoke else (16, 320, 3)
    items = crf_items(n, size)
    tiny = crf_items(2, 8, seed=1)
    p = cfg.eval.crf
    params = dict(iters=p.iters, gauss_sxy=p.gauss_sxy, gauss_compat=p.gauss_compat, bilateral_sxy=p.bilateral_sxy,
                  bilateral_srgb=p.bilateral_srgb, bilateral_compat=p.bilateral_compat)

    def pooled(batch):
        with crf_pool(workers) as pool:
            return crf_labels(batch, pool=pool, **params)

    with crf_pool(workers) as warm:
        # Warm-up on 2 images (imports, page cache); the warm pool's workers import pydensecrf here.
        race({"s": lambda: crf_labels(items[:2], workers=1, **params),
              "w": lambda: crf_labels(items[:2], pool=warm, **params)}, 0)
        times, out = race({"serial": lambda: crf_labels(items, workers=1, **params),
                           "parallel": lambda: pooled(items),
                           "warm": lambda: crf_labels(items, pool=warm, **params),
                           "startup": lambda: pooled(tiny)}, repeats, warmup=0)
    serial_s, parallel_s, warm_s, startup_s = (med(times[k], 1) for k in ("serial", "parallel", "warm", "startup"))
    return {"images": n, "size": [size, size], "params": params, "workers": workers, "repeats": repeats,
            "serial_s": serial_s, "serial_s_range": span(times["serial"], 1),
            "parallel_s": parallel_s, "parallel_s_range": span(times["parallel"], 1),
            "speedup": ratio(serial_s, parallel_s),
            "warm_s": warm_s, "warm_s_range": span(times["warm"], 1), "speedup_warm": ratio(serial_s, warm_s),
            "pool_startup_s": startup_s, "pool_startup_s_range": span(times["startup"], 1),
            "identical": all(np.array_equal(s, q) and np.array_equal(s, w)
                             for s, q, w in zip(out["serial"], out["parallel"], out["warm"])),
            "note": f"parallel_s = start a {workers}-process spawn pool, run all images, shut it down "
                    "(one dfa evaluate call); warm_s = an already running pool; pool_startup_s = a pool "
                    "on 2 images of 8x8 px"}


# --------------------------------------------------------------------------- pipeline, machine
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


# --------------------------------------------------------------------------- GPU
def bf16_peak_tflops(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def bench_gpu(cfg: Config, smoke: bool, device: torch.device) -> dict:
    """Encoder images/s (bf16 autocast, batch 32), cached training it/s (batch 4), MFU.

    Runs on any device (the CPU path is only for checking the code); ``bench`` calls it on
    CUDA only.
    """
    from dfa.backbone.dense import DenseExtractor
    from dfa.model import DFA

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    spec = bench_spec()
    clip, crop, arch = bench_encoder(cfg, smoke)
    clip = clip.to(device)
    c = bench_config(cfg, clip, crop, smoke)
    extract = DenseExtractor(clip, spec, c.clip.templates, "bf16")  # autocast on CUDA only
    enc_batch, repeats = (4 if smoke else 32), (3 if smoke else 10)
    images, present = synthetic_views(enc_batch, crop, spec.num_fg, device)
    times, _ = race({"enc": lambda: extract(images, present)}, repeats, warmup=2, sync=sync)
    img_s = enc_batch / float(np.median(times["enc"]))
    peak = bf16_peak_tflops(torch.cuda.get_device_name(device) if cuda else "")
    flop = VIT_B16_GFLOP_320 * 1e9 if not smoke else None  # analytic figure is for ViT-B/16 at 320² only
    tr_images, tr_present = images[:4], present[:4]
    batch = as_batch(extract(tr_images, tr_present), tr_images, tr_present)
    model = DFA(c, num_blocks=batch["tokens"].shape[1], in_dim=batch["tokens"].shape[-1],
                num_classes=spec.num_classes).to(device).train()
    opt = torch.optim.AdamW(model.trainable_groups(), weight_decay=c.train.weight_decay)
    step = make_step(model, opt, device)
    t_times, _ = race({"step": lambda: step(batch),
                       "online": lambda: step(as_batch(extract(tr_images, tr_present), tr_images, tr_present))},
                      repeats, warmup=2, sync=sync)
    return {"device": torch.cuda.get_device_name(device) if cuda else str(device), "arch": arch, "crop": crop,
            "encoder_batch": enc_batch, "encoder_images_per_s": round(img_s, 2),
            "encoder_ms_range": span(times["enc"]), "train_batch": len(tr_images),
            "train_iters_per_s": round(1.0 / float(np.median(t_times["step"])), 3),
            "train_ms_range": span(t_times["step"]),
            "online_train_iters_per_s": round(1.0 / float(np.median(t_times["online"])), 3),
            "train_speedup_cached_vs_online": ratio(med(t_times["online"]), med(t_times["step"])),
            "bf16_peak_tflops": peak,
            "encoder_peak_fraction": round(img_s * flop / (peak * 1e12), 4) if peak and flop else None,
            "note": f"encoder = DenseExtractor (bf16 autocast); {VIT_B16_GFLOP_320} GFLOP/img analytic "
                    "(perf-anchors §6); peak = dense bf16 spec of the card"}


# --------------------------------------------------------------------------- entry point
def check_targets(res: dict) -> dict:
    """Each acceptance target vs this run (the worst shape for Sinkhorn).

    With ``--smoke`` the sizes are far below the targets' (tiny ViT, 64 px CRF), so
    ``met`` is null: the smoke run checks that the benchmark works, not the speed.
    """
    def get(key):
        head, tail = key.split(".")
        if head not in res:
            return None
        if head == "sinkhorn":
            vals = [v[tail] for v in res["sinkhorn"].values() if isinstance(v, dict) and tail in v]
            return min(vals) if vals and None not in vals else None
        return res[head].get(tail)
    out = {}
    for key, target in TARGETS.items():
        val = get(key)
        met = None if val is None or res["smoke"] else bool(val >= target)
        out[key] = {"target": target, "measured": val, "met": met}
    return out


def print_table(res: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    def cell(ms, rng, unit="ms"):
        return escape(f"{ms:g} {unit} [{rng[0]:g}–{rng[1]:g}]")

    t = Table(title=escape("dfa bench: median [min–max] over repeats; speedup = ratio of medians"))
    for col in ("benchmark", "ours", "peer", "speedup"):
        t.add_column(col)
    def sinkhorn_rows(sk: dict, where: str) -> None:
        for shape in ("400x21", "1600x81"):
            r = sk[shape]
            t.add_row(f"sinkhorn {sk['batch']}×{shape} ({where}), 100 it", cell(r["ours_ms"], r["ours_ms_range"]),
                      escape(f"POT batch {r['pot_batch_ms']} ms / loop {r['pot_loop_ms']:g} ms"),
                      f"{r['speedup_vs_batch']}× / {r['speedup_vs_loop']}×")
            t.add_row("", f"to tol: {r['ours_to_tol_ms']:g} ms ({r['ours_iters_to_tol']} it)",
                      escape(f"POT batch {r['pot_batch_to_tol_ms']} ms / loop {r['pot_loop_to_tol_ms']:g} ms "
                             f"({r['pot_loop_iters_to_tol']} it)"),
                      f"{ratio(r['pot_batch_to_tol_ms'], r['ours_to_tol_ms'])}× / {r['speedup_vs_loop_to_tol']}×")

    if "sinkhorn" in res:
        sinkhorn_rows(res["sinkhorn"], "cpu")
    if "train_step" in res:
        tr = res["train_step"]
        t.add_row(f"train step, cached ({tr['arch'].split(' ')[0]})", cell(tr["cached_ms"], tr["cached_ms_range"]),
                  f"online {cell(tr['online_ms'], tr['online_ms_range'])}", f"{tr['speedup']}×")
    if "crf" in res:
        cr = res["crf"]
        t.add_row(f"CRF {cr['images']}×{cr['size'][0]}², {cr['workers']} workers",
                  cell(cr["parallel_s"], cr["parallel_s_range"], "s"),
                  f"serial {cell(cr['serial_s'], cr['serial_s_range'], 's')}",
                  f"{cr['speedup']}× (identical={cr['identical']})")
        t.add_row("", escape(f"warm pool {cr['warm_s']:g} s; start-up {cr['pool_startup_s']:g} s"), "",
                  f"{cr['speedup_warm']}× warm")
    pl = res["pipeline"]
    t.add_row("pipeline total", f"{pl['total_wall_s']} s" if pl["stages"] else "—",
              f"max RSS {pl['max_peak_rss_mib']} MiB" if pl["stages"] else pl["note"], "")
    if "gpu" in res:
        g = res["gpu"]
        t.add_row("gpu", str(g.get("encoder_images_per_s", "—")) + " img/s" if "skipped" not in g else "—",
                  g.get("skipped") or f"train {g['train_iters_per_s']} it/s, peak frac {g['encoder_peak_fraction']}",
                  "")
        if "sinkhorn" in g:
            sinkhorn_rows(g["sinkhorn"], "cuda")
    if "search_scaling" in res:
        sc = res["search_scaling"]
        if "skipped" in sc:
            t.add_row("search workers", "—", escape(sc["skipped"]), "")
        else:
            t.add_row(f"search, 2 workers ({sc['storage']})", f"{sc['trials_per_min_2_workers']} trials/min",
                      f"1 worker {sc['trials_per_min_1_worker']} trials/min", f"{sc['speedup_2_workers']}×")
            ov = sc["overhead_ms_per_trial"]
            t.add_row("storage overhead per trial", f"PostgreSQL {ov['postgresql']} ms", f"SQLite {ov['sqlite']} ms",
                      "(Optuna + MLflow)")
    console = Console(width=max(Console().width, 130))  # wide enough when piped (make bench | tee)
    console.print(t)
    for key, v in res["targets"].items():
        mark = {True: "met", False: "NOT met", None: "n/a"}[v["met"]]
        console.print(f"target {key} ≥ {v['target']}: {v['measured']} → {mark}")


SECTIONS = ("sinkhorn", "train_step", "crf", "gpu", "search_scaling")


def bench(cfg: Config, args=None) -> int:
    """Run the benchmarks (``--only`` picks sections), write the report atomically, print a table.

    The report goes to ``--out`` (default ``reports/bench.json``); sections not run are
    absent from it and their targets read ``measured: null``.
    """
    smoke = bool(cfg.smoke)
    only = getattr(args, "only", None)
    sections = SECTIONS if not only else tuple(x.strip() for x in only.split(",") if x.strip())
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise WorkbenchError(f"dfa bench --only: unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    out_path = Path(getattr(args, "out", None) or cfg.out(OUT))
    seed_everything(cfg.seed)  # threads stay at torch's default on purpose
    with stage_run(cfg, "bench") as run:
        res: dict = {"smoke": smoke, "sections": list(sections), "machine": machine_info()}
        if "sinkhorn" in sections:
            res["sinkhorn"] = bench_sinkhorn(smoke, cfg.ot.epsilon, cfg.ot.tol)
        if "train_step" in sections:
            res["train_step"] = bench_train(cfg, smoke)
        if "crf" in sections:
            res["crf"] = bench_crf(cfg, smoke)
        if "search_scaling" in sections:
            from dfa.stages.bench_search import bench_search_scaling
            res["search_scaling"] = bench_search_scaling(cfg, smoke)
        res["pipeline"] = pipeline_timings(cfg.out(TIMINGS))
        if "gpu" in sections:
            if torch.cuda.is_available():
                res["gpu"] = bench_gpu(cfg, smoke, torch.device("cuda"))
                res["gpu"]["sinkhorn"] = bench_sinkhorn(smoke, cfg.ot.epsilon, cfg.ot.tol, torch.device("cuda"))
            else:
                res["gpu"] = {"skipped": "no CUDA device (torch.cuda.is_available() is False)"}
        res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        res["targets"] = check_targets(res)
        write_json(out_path, res)
        run.log_metrics({k: v["measured"] for k, v in res["targets"].items() if v["measured"] is not None})
        run.log_artifact(out_path)
    print_table(res)
    return 0
