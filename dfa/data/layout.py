"""Where the files of a dataset tree live (VOC layout, COCO-2014-in-VOC-style, synthetic).

VOC / synthetic / custom::

    root/JPEGImages/{name}.jpg
    root/SegmentationClassAug/{name}.png
    root/ImageSets/Segmentation/{split}.txt
    root/cls_labels_onehot.npy            # pickled dict name -> multi-hot (num_fg,)

COCO 2014 as prepared by the WeCLIP / ExCEL anchors: the same, except images and masks
sit in a ``train2014`` / ``val2014`` subfolder taken from the name
(``COCO_train2014_000000000009`` -> ``train2014``) and masks are in ``SegmentationClass``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

KINDS = ("voc", "coco", "synthetic", "custom")
# Splits a kind has by default (the checker lists these unless told otherwise).
DEFAULT_SPLITS = {"voc": ("train_aug", "train", "val"), "synthetic": ("train_aug", "train", "tune", "val"),
                  "custom": ("train_aug", "train", "val"), "coco": ("train", "val")}


class DataError(Exception):
    """A problem with a dataset file; the message always names the path."""


def _stem(token: str) -> str:
    name = Path(token).name
    return name.rsplit(".", 1)[0] if name.lower().endswith((".jpg", ".jpeg", ".png")) else name


@dataclass(frozen=True)
class Layout:
    """Paths of one dataset tree; ``kind`` is one of ``KINDS``."""

    root: Path
    kind: str = "voc"
    tune_split: str = "tune"   # the split ``dfa prepare`` draws (method.md §12); named in its error
    # Lists held in memory instead of a file: a smoke run on a user's tree draws the tune split
    # here, because it must not write into that tree (README, "The pipeline").
    memory: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.kind not in KINDS:
            raise ValueError(f"unknown dataset kind {self.kind!r}; expected one of {KINDS}")

    @property
    def default_splits(self) -> tuple[str, ...]:
        return DEFAULT_SPLITS[self.kind]

    def list_path(self, split: str) -> Path:
        return self.root / "ImageSets" / "Segmentation" / f"{split}.txt"

    def labels_path(self) -> Path:
        return self.root / "cls_labels_onehot.npy"

    def _coco_sub(self, name: str) -> str:
        for sub in ("train2014", "val2014"):
            if sub in name:
                return sub
        raise DataError(f"{self.root}: COCO image name {name!r} names neither train2014 nor val2014")

    def image_path(self, name: str) -> Path:
        if self.kind == "coco":
            return self.root / "JPEGImages" / self._coco_sub(name) / f"{name}.jpg"
        return self.root / "JPEGImages" / f"{name}.jpg"

    def mask_path(self, name: str) -> Path:
        if self.kind == "coco":
            return self.root / "SegmentationClass" / self._coco_sub(name) / f"{name}.png"
        return self.root / "SegmentationClassAug" / f"{name}.png"

    def read_list(self, split: str) -> list[str]:
        """Image names of a split, one per line (blank lines and extra columns ignored).

        Some VOC lists carry ``image mask`` pairs or ``/JPEGImages/x.jpg`` paths; only the
        first column is kept, without folder and image extension.
        """
        if split in self.memory:
            return list(self.memory[split])
        path = self.list_path(split)
        try:
            text = path.read_text()
        except FileNotFoundError:
            fix = "run `dfa prepare` to draw it (method.md §12)" if split == self.tune_split else \
                "`dfa prepare` checks the tree and lists what it lacks"
            raise DataError(f"{path}: list file for split {split!r} is missing; {fix}") from None
        except OSError as exc:
            raise DataError(f"{path}: unreadable list file ({exc})") from None
        names = [_stem(line.split()[0]) for line in text.splitlines() if line.strip()]
        if not names:
            raise DataError(f"{path}: list file for split {split!r} is empty")
        return names
