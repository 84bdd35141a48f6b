"""Building views and their features: shared by cache, train, pseudo and evaluate."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from PIL import Image

from dfa.backbone.dense import DenseExtractor
from dfa.backbone.load import load_backbone
from dfa.config import Config
from dfa.data.classes import ClassSpec
from dfa.features_cache import FORMAT, file_digest, fingerprint


def square_view(image: np.ndarray, size: int, flip: bool = False) -> np.ndarray:
    """uint8 HxWx3 → the cached view: resized to size×size (bilinear), optionally mirrored."""
    out = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return np.ascontiguousarray(out[:, ::-1]) if flip else out


def square_mask(mask: np.ndarray, size: int, flip: bool = False) -> np.ndarray:
    """uint8 HxW label map → the view's labels: resized to size×size (nearest), optionally mirrored."""
    out = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
    return np.ascontiguousarray(out[:, ::-1]) if flip else out


def normalise(images: np.ndarray | torch.Tensor, cfg: Config) -> torch.Tensor:
    """uint8 (B, H, W, 3) → float (B, 3, H, W) with the configured mean/std."""
    if not isinstance(images, torch.Tensor):
        images = torch.from_numpy(np.array(images, dtype=np.uint8))  # copies read-only memmaps
    x = images.permute(0, 3, 1, 2).float()
    mean = torch.tensor(cfg.data.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def extractor(cfg: Config, spec: ClassSpec, device) -> DenseExtractor:
    clip = load_backbone(cfg, spec, device)
    return DenseExtractor(clip, spec, cfg.clip.templates, cfg.clip.precision, heads=per_head(cfg))


def extractor_key(cfg: Config, device) -> str:
    """What :func:`extractor` reads from ``cfg``: two configs with one key may share an extractor
    (a study keeps it across trials; a ``heads`` trial must not get a ``layers`` one)."""
    return json.dumps([cfg.clip.__dict__, cfg.data.name, str(cfg.data.root), str(device), per_head(cfg)],
                      sort_keys=True, default=str)


def per_head(cfg: Config) -> bool:
    """Whether views carry every head's attention (``affinity.channels: heads``, method.md §2 v3)."""
    return cfg.affinity.channels == "heads"


def cache_fingerprint(cfg: Config, names: list[str]) -> str:
    """Everything that changes cached tensors: a cache with another value is rebuilt."""
    c = cfg.clip
    return fingerprint({
        "format": FORMAT, "model": c.model, "pretrained": c.pretrained, "checkpoint": file_digest(c.checkpoint),
        "last_k": c.last_k, "similarity": c.similarity, "templates": c.templates, "precision": c.precision,
        "decoder_layers": c.decoder_layers,
        "data": cfg.data.name, "root": str(cfg.data.root), "split": cfg.data.train_split,
        "names": hashlib.sha256("\n".join(names).encode()).hexdigest(),
        "crop": cfg.data.crop_size, "mean": cfg.data.mean, "std": cfg.data.std,
        "flip": cfg.cache.flip, "dtype": cfg.cache.dtype,
        # per-head maps replace the layer maps: a layers cache is never read as a heads cache
        # (the key is absent for ``layers``, so today's caches keep their fingerprint)
        **({"channels": "heads"} if per_head(cfg) else {}),
    })
