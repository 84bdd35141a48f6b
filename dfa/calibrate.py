"""Calibration of the background power (method.md §5, §12): score maps → label maps at each
image's size → confusion matrices per candidate power → the power with the best mIoU.

Every row's background rule (``refine.bg_power``, the exponent of the background channel)
is chosen on the tune split from ``refine.bg_grid``, so a refinement is compared with a raw
CAM calibrated as well. Tensors and arrays in, tensors and numbers out; the loop over a
split (features, chunks, progress) is :func:`dfa.stages.seeds.calibrate`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dfa.metrics import confusion_matrix, miou


def labels_at_image_size(scores: torch.Tensor, images: list[np.ndarray]) -> list[np.ndarray]:
    """(B, K, crop, crop) scores (absent channels < 0) → argmax label map at each image's size
    (``images[j].shape[:2]``).

    Only the kept channels (score ≥ 0 somewhere) are resized; absent ones cannot win."""
    out = []
    for j, im in enumerate(images):
        kept = torch.nonzero(scores[j].amax(dim=(-2, -1)) >= 0).flatten()
        up = F.interpolate(scores[j:j + 1, kept].float(), size=im.shape[:2], mode="bilinear", align_corners=False)
        out.append(kept[up[0].argmax(0)].cpu().numpy())
    return out


def labels_for_powers(bg: torch.Tensor, fg: torch.Tensor, images: list[np.ndarray]) -> list[list[np.ndarray]]:
    """:func:`labels_at_image_size` of ``cat([bg[:, i:i+1], fg], 1)`` for every power i, with
    the class channels resized and reduced once per image rather than once per power.

    ``bg`` (B, P, crop, crop) the background channel at each of P powers, ``fg`` (B, C, crop,
    crop) the class channels (absent < 0), shared by the powers. Bilinear resizing acts per
    channel, so each label equals the full argmax's: background where it is ≥ the best kept
    class (argmax takes the first maximum, and background is channel 0), else that class.
    Returns P lists of label maps (one per image)."""
    out: list[list[np.ndarray]] = [[] for _ in range(bg.shape[1])]
    for j, im in enumerate(images):
        size = im.shape[:2]
        kept = torch.nonzero(fg[j].amax(dim=(-2, -1)) >= 0).flatten()
        if len(kept):
            up = F.interpolate(fg[j:j + 1, kept].float(), size=size, mode="bilinear", align_corners=False)[0]
            best, arg = up.max(0)
            cls = kept[arg] + 1
        for i in range(bg.shape[1]):
            b = bg[j, i]
            if not len(kept):
                lab = torch.zeros(size, dtype=torch.long) if bool(b.amax() >= 0) else None
            elif not bool(b.amax() >= 0):          # not kept (all < 0, or NaN), as labels_at_image_size
                lab = cls
            else:
                up_b = F.interpolate(b[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
                lab = torch.where(up_b >= best, torch.zeros_like(cls), cls)
            if lab is None:
                raise ValueError(f"image {j}: no kept channel (every score < 0)")
            out[i].append(lab.cpu().numpy())
    return out


def add_confusion(conf: torch.Tensor, preds: list[np.ndarray], gts: list[np.ndarray]) -> None:
    """Add each (prediction, ground truth) pair's confusion matrix to ``conf`` (K, K) in place."""
    n = conf.shape[0]
    for p, g in zip(preds, gts):
        conf += confusion_matrix(torch.from_numpy(np.asarray(p, dtype=np.int64)),
                                 torch.from_numpy(g.astype(np.int64)), n)


def choose_powers(conf: dict[str, dict[float, torch.Tensor]], powers: list[float]) -> dict:
    """``conf[kind][p]``: the confusion matrix of ``kind`` with background power ``p``.

    Returns ``{kind: best p, ..., "table": {kind: {p: mIoU %}}}``; ties (to 6 decimals of
    the mIoU) go to the power nearest 1, then to the first in ``powers``."""
    table = {k: {p: 100 * miou(c)[0] for p, c in v.items()} for k, v in conf.items()}
    best = {k: max(powers, key=lambda p: (round(v[p], 6), -abs(np.log(p)))) for k, v in table.items()}
    return {**best, "table": table}
