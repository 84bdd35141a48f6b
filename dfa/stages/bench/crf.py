"""``dfa bench`` section ``crf``: DenseCRF serial vs a 2-process spawn pool started per call (as
``dfa evaluate``), and vs an already running pool.
"""
from __future__ import annotations

import numpy as np

from dfa.config import Config
from dfa.stages.bench.timing import med, race, ratio, span


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
