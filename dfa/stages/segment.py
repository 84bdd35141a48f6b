"""The decoder's inference (method.md §6, §8), shared by ``dfa evaluate`` and the ablation's
decoder column: each scale s of ``eval.scales`` views the image at round(crop·s / patch)·patch
square, with and without a horizontal flip; the softmax is upsampled to the image's size
and averaged. The CLIP runs its tokens-only path (``decoder_tokens``: no attention maps, no
S), memoised when ``ext`` is a memo (the ablation's seeds of row 4 share ``val``'s views).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dfa.config import Config
from dfa.data.io import read_image, read_mask
from dfa.metrics import confusion_matrix, miou
from dfa.stages.common import data_errors
from dfa.stages.views import normalise, square_view


@torch.no_grad()
def segment_probs(cfg: Config, model, ext, image: np.ndarray, device) -> torch.Tensor:
    """(num_classes, H, W) softmax averaged over scales and flips, at the image's size."""
    patch = ext.clip.patch
    size = image.shape[:2]
    total = None
    for s in cfg.eval.scales:
        side = max(patch, int(round(cfg.data.crop_size * s / patch)) * patch)
        flips = (False, True) if cfg.eval.flip else (False,)
        views = np.stack([square_view(image, side, f) for f in flips])
        tokens, grid = ext.decoder_tokens(normalise(views, cfg))
        logits = model.segment(tokens.to(device), grid)
        if cfg.eval.flip:
            logits = torch.stack([logits[0], logits[1].flip(-1)])
        probs = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).softmax(1).sum(0)
        total = probs if total is None else total + probs
    return (total / total.sum(0, keepdim=True)).cpu()


@torch.no_grad()
def decoder_miou(cfg: Config, model, ext, layout, names: list[str], bar=None) -> float:
    """The decoder's mIoU (%) on ``names`` with ``eval.scales`` and flips, without CRF (the
    ablation's per-row segmentation column)."""
    conf = torch.zeros(model.num_classes, model.num_classes, dtype=torch.int64)
    task = bar.add_task("decoder on val", total=len(names), info="") if bar is not None else None
    for name in names:
        with data_errors():
            image, gt = read_image(layout.image_path(name)), read_mask(layout.mask_path(name))
        pred = segment_probs(cfg, model, ext, image, ext.device).argmax(0)
        conf += confusion_matrix(pred, torch.from_numpy(gt.astype(np.int64)), model.num_classes)
        if bar is not None:
            bar.update(task, advance=1)
    return 100 * miou(conf)[0]
