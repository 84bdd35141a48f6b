"""``dfa bench`` section ``gpu`` (CUDA only): encoder images/s under bf16 autocast, cached
training it/s, and the encoder's fraction of the card's dense bf16 peak.
"""
from __future__ import annotations

import numpy as np
import torch

from dfa.config import Config
from dfa.stages.bench.timing import med, race, ratio, span
from dfa.stages.bench.workload import as_batch, bench_config, bench_encoder, bench_spec, make_step, synthetic_views


# Dense bf16 tensor-core peak in TFLOP/s (vendor spec, no sparsity), by device-name substring.
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}  # first match wins
VIT_B16_GFLOP_320 = 74.5  # analytic, per 320² image (perf-anchors §6)


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
