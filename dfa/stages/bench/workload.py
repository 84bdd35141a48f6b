"""What the ``train_step`` and ``gpu`` sections of ``dfa bench`` run: a made-up class spec, the
encoder (ViT-B/16 or the smoke tiny ViT, random weights), the config, synthetic views and one
training step as ``dfa train`` takes it (:func:`dfa.stages.training.train_step`).
"""
from __future__ import annotations

import copy
from typing import Callable

import torch

from dfa.config import Config


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
    from dfa.stages.training import train_step

    def step(batch: dict) -> float:
        losses = train_step(model, batch, device, 100.0)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        return losses["total"].item()
    return step
