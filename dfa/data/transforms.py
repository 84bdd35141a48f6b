"""Geometric and photometric transforms for (image, mask) pairs.

Both transforms take ``(image uint8 HxWx3 np.ndarray, mask uint8 HxW np.ndarray | None)``
and return ``(image float32 tensor 3xhxw normalised, mask int64 tensor hxw | None,
raw uint8 tensor hxwx3)``; ``raw`` is the image in the same geometry as ``image`` (for PAR
and CRF, which need colours). Nothing assumes square images, a class count or a size.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # on the 0..255 scale
IMAGENET_STD = (58.395, 57.12, 57.375)
IGNORE = 255

Sample = tuple[torch.Tensor, "torch.Tensor | None", torch.Tensor]


def _normalise(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 HxWx3 -> float32 3xHxW, (x - mean) / std per channel."""
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


def _resize(img: np.ndarray, hw: tuple[int, int], resample: int) -> np.ndarray:
    h, w = hw
    if img.shape[:2] == (h, w):
        return img
    return np.array(Image.fromarray(img).resize((w, h), resample=resample))  # writable copy for torch


class TrainTransform:
    """Random rescale -> random horizontal flip -> random crop ``crop_size`` x ``crop_size``.

    Rescale draws one factor in ``scale_range`` (image bilinear, mask nearest). When the
    rescaled image is smaller than the crop, it is placed at a random offset on a canvas
    padded with the mean colour (0 after normalisation) and mask 255 (ignored).
    Randomness comes from ``generator`` if given, else torch's global RNG (which the
    DataLoader seeds differently per worker, unlike numpy's).
    """

    def __init__(self, crop_size: int, scale_range: tuple[float, float] = (0.5, 2.0), flip: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 generator: torch.Generator | None = None) -> None:
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be 0 < lo <= hi, got {scale_range}")
        self.crop_size = int(crop_size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.flip = flip
        self.mean, self.std = tuple(mean), tuple(std)
        self.generator = generator

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _randint(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi] inclusive."""
        return int(torch.randint(lo, hi + 1, (), generator=self.generator))

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> Sample:
        lo, hi = self.scale_range
        scale = lo + (hi - lo) * self._rand()
        h, w = image.shape[:2]
        hw = (max(1, round(h * scale)), max(1, round(w * scale)))
        image = _resize(image, hw, Image.BILINEAR)
        if mask is not None:
            mask = _resize(mask, hw, Image.NEAREST)
        if self.flip and self._rand() < 0.5:
            image = image[:, ::-1]
            mask = mask[:, ::-1] if mask is not None else None

        c = self.crop_size
        h, w = hw
        # Top-left of the crop window in image coordinates; negative = image placed inside padding.
        top = self._randint(0, h - c) if h >= c else -self._randint(0, c - h)
        left = self._randint(0, w - c) if w >= c else -self._randint(0, c - w)
        ys, xs = max(top, 0), max(left, 0)                    # source window
        ye, xe = min(top + c, h), min(left + c, w)
        yd, xd = ys - top, xs - left                           # destination offset

        out = torch.zeros(3, c, c)                              # mean colour normalises to 0
        out[:, yd:yd + ye - ys, xd:xd + xe - xs] = _normalise(image[ys:ye, xs:xe], self.mean, self.std)
        raw = torch.tensor([round(v) for v in self.mean], dtype=torch.uint8).expand(c, c, 3).clone()
        raw[yd:yd + ye - ys, xd:xd + xe - xs] = torch.from_numpy(np.ascontiguousarray(image[ys:ye, xs:xe]))
        out_mask = None
        if mask is not None:
            out_mask = torch.full((c, c), IGNORE, dtype=torch.long)
            out_mask[yd:yd + ye - ys, xd:xd + xe - xs] = torch.from_numpy(
                np.ascontiguousarray(mask[ys:ye, xs:xe])).long()
        return out, out_mask, raw


class EvalTransform:
    """Optional resize of the image to ``size`` = (h, w) (bilinear), then normalise.

    The mask is never resized: evaluation compares predictions upsampled to the original
    mask size, as the VOC/COCO protocol does. An int ``size`` means a square (h = w = size).
    """

    def __init__(self, size: int | tuple[int, int] | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        if isinstance(size, int):
            size = (size, size)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> Sample:
        if self.size is not None:
            image = _resize(image, self.size, Image.BILINEAR)
        raw = torch.from_numpy(np.ascontiguousarray(image))
        out_mask = torch.from_numpy(np.ascontiguousarray(mask)).long() if mask is not None else None
        return _normalise(image, self.mean, self.std), out_mask, raw
