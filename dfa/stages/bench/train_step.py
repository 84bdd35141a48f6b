"""``dfa bench`` section ``train_step``: a DFA step from cached features vs the same step with
the frozen encoder online (open_clip ViT-B/16 at 320 px; a tiny ViT with ``--smoke``).
"""
from __future__ import annotations

import torch

from dfa.config import Config
from dfa.stages.bench.timing import med, race, ratio, span
from dfa.stages.bench.workload import as_batch, bench_config, bench_encoder, bench_spec, make_step, synthetic_views


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
