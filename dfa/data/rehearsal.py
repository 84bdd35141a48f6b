"""A stand-in dataset tree in VOC's (or COCO's) exact layout, for the dress rehearsal.

``make rehearse-voc`` runs every stage of a real VOC run on this tree (experiments/rehearse.py).
Nothing in it is real: each image is one of the embedded benchmark's drawings
(:func:`dfa.data.synthetic.make_sample`) at VOC's sizes, its 8 generated classes renamed to
dataset classes in rotation so that every class of the dataset appears. The tree proves that
file names, sizes, class counts and split lists of a real run work end to end; any number a
model scores on it means nothing.

VOC (``layout="voc"``)::

    JPEGImages/2008_000123.jpg                  about 500×375, as most VOC images
    SegmentationClassAug/2008_000123.png        VOC palette; 0 background, 1..20, 255 boundary band
    ImageSets/Segmentation/{train_aug,train,val}.txt   train ⊂ train_aug, val disjoint (no tune.txt,
                                                       as VOC is unpacked: ``dfa prepare`` draws it)
    cls_labels_onehot.npy                       pickled dict name → float32 (20,) multi-hot

COCO 2014 (``layout="coco"``): the same in ``JPEGImages/{train2014,val2014}/COCO_train2014_….jpg``
and ``SegmentationClass/{train2014,val2014}/``, lists ``{train,val}.txt``, 80-dim labels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from dfa.data.classes import COCO_CLASSES, VOC_CLASSES
from dfa.data.io import write_mask
from dfa.data.layout import Layout
from dfa.data.synthetic import CLASSES as DRAWN_CLASSES
from dfa.data.synthetic import make_sample
from dfa.io import atomic_path, save_image, write_text

VOC_SIZE = (375, 500)  # (H, W) of most VOC 2012 images; each side varies by up to ``jitter``
BOUNDARY = 3           # pixels of the 255 band around objects, as VOC's SegmentationClassAug has


def _relabel(mask: np.ndarray, offset: int, num_fg: int) -> np.ndarray:
    """Drawn classes 1..8 → dataset classes ``(k − 1 + offset) mod num_fg + 1``; 0 and 255 kept."""
    table = np.arange(256, dtype=np.uint8)
    for k in range(1, len(DRAWN_CLASSES) + 1):
        table[k] = (k - 1 + offset) % num_fg + 1
    return table[mask]


def _names(kind: str, split: str, count: int, start: int) -> list[str]:
    if kind == "coco":
        sub = "train2014" if split == "train" else "val2014"
        return [f"COCO_{sub}_{start + i:012d}" for i in range(count)]
    return [f"{2007 + (start + i) % 6}_{start + i:06d}" for i in range(count)]


def generate(root: str | Path, kind: str = "voc", *, num_train_aug: int = 40, num_train: int = 12,
             num_val: int = 8, size: tuple[int, int] = VOC_SIZE, jitter: float = 0.1, seed: int = 0,
             progress: Callable[[int], None] | None = None) -> dict[str, list[str]]:
    """Write the stand-in tree into ``root``; returns the split lists.

    VOC: ``train_aug`` (``num_train_aug`` images, its first ``num_train`` also ``train``) and
    ``val``. COCO: ``train`` (``num_train_aug`` images) and ``val``. Image ``i`` is drawn from
    ``[seed, i]``: each is the top ``H`` rows of a ``W``×``W`` drawing, so objects keep their
    shape, and its labels are read from the cropped mask (so they always agree with it).
    """
    if kind not in ("voc", "coco"):
        raise ValueError(f"kind must be voc or coco, got {kind!r}")
    if not 1 <= num_train <= num_train_aug or num_val < 1:
        raise ValueError("need 1 <= num_train <= num_train_aug and num_val >= 1")
    root = Path(root)
    layout = Layout(root, kind)
    classes = VOC_CLASSES if kind == "voc" else COCO_CLASSES
    train_name = "train_aug" if kind == "voc" else "train"
    lists = {train_name: _names(kind, "train", num_train_aug, 1)}
    lists["val"] = _names(kind, "val", num_val, num_train_aug + 1)
    if kind == "voc":
        lists["train"] = lists["train_aug"][:num_train]
    rng = np.random.default_rng(seed)
    labels: dict[str, np.ndarray] = {}
    index = 0
    for name in [*lists[train_name], *lists["val"]]:
        h = int(round(size[0] * rng.uniform(1 - jitter, 1 + jitter)))
        w = int(round(size[1] * rng.uniform(1 - jitter, 1 + jitter)))
        while True:  # a crop that keeps no object is drawn again from the next index
            index += 1
            image, mask, _ = make_sample(seed, index, (w, w), ignore_border=BOUNDARY)
            image, mask = image[:h], mask[:h]
            mask = _relabel(mask, offset=len(DRAWN_CLASSES) * (index % 3), num_fg=len(classes))
            present = [v for v in np.unique(mask) if 0 < v <= len(classes)]
            if present:
                break
        vec = np.zeros(len(classes), np.float32)
        vec[np.array(present, int) - 1] = 1
        labels[name] = vec
        save_image(layout.image_path(name), Image.fromarray(image), quality=90)
        write_mask(layout.mask_path(name), mask)
        if progress is not None:
            progress(1)
    for split, names in lists.items():
        write_text(layout.list_path(split), "\n".join(names) + "\n")
    with atomic_path(layout.labels_path()) as tmp, open(tmp, "wb") as fh:
        np.save(fh, labels, allow_pickle=True)
    return lists
