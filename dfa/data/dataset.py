"""A torch Dataset over a VOC-layout tree (VOC, COCO-in-VOC-style, synthetic).

Image-level labels come from ``cls_labels_onehot.npy`` and never from the masks: on real
data the masks of train_aug are not available to a weakly supervised method.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from dfa.data.io import read_image, read_mask
from dfa.data.layout import DataError, Layout
from dfa.data.transforms import EvalTransform


def load_labels(path: str | Path) -> dict[str, np.ndarray]:
    """The pickled dict name -> multi-hot (num_fg,) of ``cls_labels_onehot.npy``."""
    path = Path(path)
    try:
        obj = np.load(path, allow_pickle=True)
        obj = obj.item() if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == () else obj
    except FileNotFoundError:
        raise DataError(f"{path}: image-level label file is missing") from None
    except Exception as exc:  # numpy raises many kinds for a bad pickle
        raise DataError(f"{path}: unreadable label file ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict name -> multi-hot vector, got {type(obj).__name__}")
    return {str(k): np.asarray(v, dtype=np.float32).reshape(-1) for k, v in obj.items()}


class WSSSDataset(Dataset):
    """Items are dicts:

    - ``name``: str
    - ``image``: float32 3xhxw, normalised by ``transform``
    - ``label``: float32 (num_fg,), multi-hot from the label file
    - ``mask``: int64 hxw (255 = ignore), only if ``with_mask``
    - ``raw``: uint8 hxwx3, the image in the same geometry as ``image``

    ``transform(image, mask) -> (image, mask, raw)``; default :class:`EvalTransform` ().
    ``num_fg`` (optional) checks every label's length up front.
    """

    def __init__(self, layout: Layout, split: str, transform: Callable | None = None, with_mask: bool = True,
                 num_fg: int | None = None) -> None:
        self.layout = layout
        self.split = split
        self.names = layout.read_list(split)
        self.transform = transform or EvalTransform()
        self.with_mask = with_mask
        labels = load_labels(layout.labels_path())
        missing = [n for n in self.names if n not in labels]
        if missing:
            raise DataError(f"{layout.labels_path()}: no image-level label for {len(missing)} image(s) of "
                            f"{layout.list_path(split)}, e.g. {missing[:3]}")
        self.labels = {n: labels[n] for n in self.names}
        lengths = {v.shape[0] for v in self.labels.values()}
        if len(lengths) != 1 or (num_fg is not None and lengths != {num_fg}):
            want = f"{num_fg}" if num_fg is not None else "one common length"
            raise DataError(f"{layout.labels_path()}: label lengths {sorted(lengths)} for split {split!r}, "
                            f"expected {want}")
        self.num_fg = lengths.pop()

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        image = read_image(self.layout.image_path(name))
        mask = read_mask(self.layout.mask_path(name)) if self.with_mask else None
        if mask is not None and mask.shape != image.shape[:2]:
            raise DataError(f"{self.layout.mask_path(name)}: mask size {mask.shape} != image size "
                            f"{image.shape[:2]} of {self.layout.image_path(name)}")
        img_t, mask_t, raw = self.transform(image, mask)
        item = {"name": name, "image": img_t, "label": torch.from_numpy(self.labels[name].copy()), "raw": raw}
        if self.with_mask:
            item["mask"] = mask_t
        return item
