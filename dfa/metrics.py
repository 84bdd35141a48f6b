"""Segmentation metrics: accumulated confusion matrix and mIoU. method.md §8."""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["confusion_matrix", "miou", "error_shares"]


def confusion_matrix(pred, target, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Confusion counts over all pixels, rows = target, columns = prediction. method.md §8.

    Pixels whose target is ``ignore_index`` are skipped. One ``bincount`` of
    ``num_classes * target + pred`` over the kept pixels. Sum the matrices of several
    batches to accumulate over a dataset.

    Args:
        pred, target: integer tensors of the same shape (any), e.g. (B, H, W). numpy
            arrays are accepted and converted.
        num_classes: C (including background).
    Returns:
        (C, C) int64 on the CPU.
    Raises:
        ValueError: shapes differ, or a non-ignored target or its prediction lies outside
            [0, C) (map ignore predictions to a class before scoring).
    """
    pred = torch.as_tensor(pred)
    target = torch.as_tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_index
    target = target[keep]
    pred = pred[keep]
    if target.numel():
        if int(target.min()) < 0 or int(target.max()) >= num_classes:
            raise ValueError(f"target values outside [0, {num_classes}) other than "
                             f"ignore_index={ignore_index}")
        if int(pred.min()) < 0 or int(pred.max()) >= num_classes:
            raise ValueError(f"prediction values outside [0, {num_classes}) on labelled pixels")
    counts = torch.bincount(num_classes * target + pred, minlength=num_classes ** 2)
    return counts.reshape(num_classes, num_classes).cpu()


def miou(conf: torch.Tensor) -> Tuple[float, torch.Tensor]:
    """Mean IoU from a confusion matrix. method.md §8.

    ``IoU_c = conf[c, c] / (Σ_row c + Σ_col c − conf[c, c])``; classes absent from both
    prediction and target (union 0) get NaN and are left out of the mean.

    Args:
        conf: (C, C) counts, rows = target.
    Returns:
        (mIoU as a float in [0, 1] (NaN if every class is absent), per-class IoU (C,)
        float64).
    """
    conf = torch.as_tensor(conf).to(torch.float64)
    tp = conf.diagonal()
    union = conf.sum(dim=0) + conf.sum(dim=1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    present = ~torch.isnan(iou)
    mean = float(iou[present].mean()) if bool(present.any()) else float("nan")
    return mean, iou


def error_shares(conf: torch.Tensor) -> dict[str, float]:
    """Where a label map's errors are, from a confusion matrix (rows = target). method.md §12.

    * ``missed_fg``: foreground pixels labelled background, % of foreground pixels;
    * ``wrong_class``: foreground pixels given another foreground class, % of foreground;
    * ``spill_bg``: background pixels labelled foreground, % of background pixels.

    Class 0 is the background. A share with no pixels to count is NaN.
    """
    conf = torch.as_tensor(conf).to(torch.float64)
    fg = conf[1:].sum()
    bg = conf[0].sum()
    missed = conf[1:, 0].sum()
    wrong = conf[1:, 1:].sum() - conf[1:, 1:].diagonal().sum()
    spill = conf[0, 1:].sum()
    nan = float("nan")
    return {"missed_fg": 100 * float(missed / fg) if fg > 0 else nan,
            "wrong_class": 100 * float(wrong / fg) if fg > 0 else nan,
            "spill_bg": 100 * float(spill / bg) if bg > 0 else nan}
