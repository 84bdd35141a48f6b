"""``dfa cache``: run the frozen CLIP once per training view and store what training needs.

Prints a size estimate before writing; resumes an interrupted run at the first missing
shard; rebuilds a cache whose fingerprint (backbone, checkpoint, prompts, views) changed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dfa.config import Config
from dfa.data.dataset import load_labels
from dfa.data.io import read_image, read_mask
from dfa.features_cache import CacheWriter, arrays as shard_arrays
from dfa.stages.common import class_spec, console, data_errors, layout_of, limit, progress, setup, write_metrics
from dfa.stages.views import cache_fingerprint, extractor, normalise, per_head, square_mask, square_view
from dfa.tracking import stage_run

METRICS = Path("reports/metrics/cache.json")


def cache(cfg: Config, args=None) -> int:
    device = setup(cfg)
    spec = class_spec(cfg)
    layout = layout_of(cfg)
    with data_errors():
        names = layout.read_list(cfg.data.train_split)
        labels = load_labels(layout.labels_path())
    fp = cache_fingerprint(cfg, names)
    ext = extractor(cfg, spec, device)
    flips = [False, True] if cfg.cache.flip else [False]
    dtype = np.float16 if cfg.cache.dtype == "float16" else np.float32
    crop = cfg.data.crop_size
    probe = ext(normalise(square_view(np.zeros((crop, crop, 3), np.uint8), crop)[None], cfg))
    heads = per_head(cfg)   # ``affinity.channels: heads``: every head's maps in place of their mean
    attn = probe.heads if heads else probe.attn
    per_view = sum(t[0].numel() for t in (probe.tokens, attn, probe.cos, probe.cos_bg)) * np.dtype(dtype).itemsize
    per_view += crop * crop * 4 + len(spec.classes)
    total = per_view * len(names) * len(flips)
    console.print(f"feature cache: {len(names)} images × {len(flips)} views × {per_view / 2**20:.2f} MiB "
                  f"= {total / 2**30:.2f} GiB estimated → {cfg.cache.dir}")
    meta = {"views_per_image": len(flips), "grid": list(probe.grid), "crop": crop, "classes": spec.classes,
            "background": spec.background, "logit_scale": ext.logit_scale, "bytes_per_view": per_view,
            **({"per_head": True} if heads else {})}
    writer = CacheWriter(cfg.cache.dir, fp, meta)
    if writer.stale:
        console.print(f"{cfg.cache.dir}: made with other params or another backbone; rebuilding")
    done = writer.done_names
    todo = [n for n in names if n not in done]
    with stage_run(cfg, "cache_features") as run, progress() as bar:
        task = bar.add_task("cache CLIP features", total=len(names), completed=len(done), info="")
        bs = cfg.cache.shard_size
        for start in range(0, len(todo), bs):
            chunk = todo[start:start + bs]
            arrays: dict[str, list] = {k: [] for k in shard_arrays(heads)}
            for i in range(0, len(chunk), 32):
                sub = chunk[i:i + 32]
                with data_errors():
                    raw = [read_image(layout.image_path(n)) for n in sub]
                    gts = [read_mask(layout.mask_path(n)) for n in sub]
                views = np.stack([square_view(im, crop, f) for im in raw for f in flips])
                present = torch.tensor(np.stack([labels[n] for n in sub for _ in flips]) > 0)
                feats = ext(normalise(views, cfg), present)
                arrays["tokens"].append(feats.tokens.cpu().numpy().astype(dtype))
                if heads:
                    arrays["heads"].append(feats.heads.cpu().numpy().astype(dtype))
                else:
                    arrays["attn"].append(feats.attn.cpu().numpy().astype(dtype))
                arrays["cos"].append(feats.cos.cpu().numpy().astype(dtype))
                arrays["cos_bg"].append(feats.cos_bg.cpu().numpy().astype(dtype))
                arrays["image"].append(views)
                arrays["mask"].append(np.stack([square_mask(m, crop, f) for m in gts for f in flips]))
                arrays["label"].append(present.numpy().astype(np.uint8))
                bar.update(task, advance=len(sub))
            writer.write_shard(chunk, {k: np.concatenate(v) for k, v in arrays.items()})
        writer.finish()
        stats = {"images": len(names), "views": len(names) * len(flips), "gib": total / 2**30,
                 "bytes_per_view": per_view, "fingerprint": fp}
        write_metrics(cfg, METRICS, stats)
        run.log_metrics({"cache_gib": stats["gib"], "cache_views": stats["views"]})
    console.print(f"feature cache complete: {stats['views']} views, {stats['gib']:.2f} GiB")
    return 0
