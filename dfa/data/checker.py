"""Validate a dataset tree before anything uses it, and report every problem at once.

Each problem is one line naming the file it is about, so a user fixing a broken
SegmentationClassAug / COCO conversion sees the whole damage on the first run.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from dfa.data.classes import load_class_spec, spec_for
from dfa.data.dataset import load_labels
from dfa.data.io import image_size, read_mask
from dfa.data.layout import DataError, Layout
from dfa.data.splits import roles_for, split_problems

IGNORE = 255
VOC_COUNTS = {"train_aug": 10582, "train": 1464, "val": 1449}
COCO_COUNTS = {"train": 82081, "val": 40137}
EXPECTED_COUNTS = {"voc": VOC_COUNTS, "coco": COCO_COUNTS}


def _fmt(values: Iterable[int], limit: int = 10) -> str:
    values = sorted(int(v) for v in values)
    more = f" ... (+{len(values) - limit})" if len(values) > limit else ""
    return ", ".join(map(str, values[:limit])) + more


def _check_image(layout: Layout, name: str, num_classes: int, labels: dict | None) -> list[str]:
    problems = []
    img_path, mask_path = layout.image_path(name), layout.mask_path(name)
    hw = mask = None
    try:
        hw = image_size(img_path)
    except DataError as exc:
        problems.append(str(exc))
    try:
        mask = read_mask(mask_path)
    except DataError as exc:
        problems.append(str(exc))
    if mask is not None:
        if hw is not None and mask.shape != hw:
            problems.append(f"{mask_path}: mask size {mask.shape[0]}x{mask.shape[1]} (HxW) != image size "
                            f"{hw[0]}x{hw[1]} of {img_path}")
        present = set(np.unique(mask).tolist())
        bad = {v for v in present if v >= num_classes and v != IGNORE}
        if bad:
            problems.append(f"{mask_path}: mask values outside 0..{num_classes - 1} and {IGNORE}: {_fmt(bad)}")
    if labels is None:
        return problems
    lp = layout.labels_path()
    if name not in labels:
        problems.append(f"{lp}: no image-level label for {name} (listed image {img_path})")
        return problems
    label = labels[name]
    if label.shape[0] != num_classes - 1:
        problems.append(f"{lp}: label of {name} has length {label.shape[0]}, expected {num_classes - 1}")
        return problems
    if not (label > 0.5).any():
        # WSSS learns from image-level labels: an image without a foreground class teaches
        # nothing and breaks per-image class normalisation (COCO lists drop such images).
        problems.append(f"{lp}: label of {name} has no foreground class (image {img_path})")
    if mask is not None:
        in_mask = {v for v in present if 0 < v < num_classes}
        in_label = {i + 1 for i in np.flatnonzero(label > 0.5).tolist()}
        if in_mask - in_label:
            problems.append(f"{lp}: label of {name} lacks class(es) {_fmt(in_mask - in_label)} present in "
                            f"{mask_path}")
        # A labelled class can hide entirely under VOC's 255 boundary band (tiny objects), so
        # "labelled but absent" only counts when the mask has no ignore pixels to hide it.
        if (in_label - in_mask) and IGNORE not in present:
            problems.append(f"{lp}: label of {name} has class(es) {_fmt(in_label - in_mask)} absent from "
                            f"{mask_path}")
    return problems


def check_tree(layout: Layout, num_classes: int, splits: Iterable[str] | None = None,
               expected_counts: dict[str, int] | None = None,
               progress: Callable[[int], None] | None = None,
               roles: dict[str, str] | None = None) -> list[str]:
    """Every problem of the tree as one line each (empty list = OK).

    ``splits`` defaults to the layout kind's standard splits; every requested split must
    exist. ``expected_counts`` maps split -> number of listed images. ``progress(n)`` is
    called as images are checked (each distinct image once, even if listed in two splits).
    ``roles``: the ``train``, ``seed`` and ``evaluation`` splits that §12 keeps ``tune`` apart
    from (default: the kind's, ``splits.roles_for``; ``dfa prepare`` passes the params').
    """
    problems: list[str] = []
    splits = [splits] if isinstance(splits, str) else splits  # one split given as a bare name
    splits = list(splits) if splits is not None else list(layout.default_splits)
    lists: dict[str, list[str]] = {}
    for split in splits:
        try:
            names = layout.read_list(split)
        except DataError as exc:
            problems.append(str(exc))
            continue
        lists[split] = names
        dup = len(names) - len(set(names))
        if dup:
            problems.append(f"{layout.list_path(split)}: {dup} duplicated name(s)")
        if expected_counts and split in expected_counts and len(names) != expected_counts[split]:
            problems.append(f"{layout.list_path(split)}: {len(names)} images listed, expected "
                            f"{expected_counts[split]} for split {split!r}")
    # tune: inside the training list, outside the seed and evaluation splits (§12)
    problems.extend(split_problems(layout, lists, tune=layout.tune_split, **(roles or roles_for(layout.kind))))
    # train_aug is the training set of a WSSS method; val images inside it would leak.
    if "train_aug" in lists and "val" in lists:
        leak = set(lists["train_aug"]) & set(lists["val"])
        if leak:
            problems.append(f"{layout.list_path('val')}: {len(leak)} image(s) also listed in "
                            f"{layout.list_path('train_aug')}, e.g. {sorted(leak)[:3]}")

    labels = None
    try:
        labels = load_labels(layout.labels_path())
    except DataError as exc:
        problems.append(str(exc))

    seen: set[str] = set()
    for names in lists.values():
        for name in names:
            if name in seen:
                continue
            seen.add(name)
            try:
                problems.extend(_check_image(layout, name, num_classes, labels))
            except DataError as exc:  # e.g. a COCO name without train2014/val2014
                problems.append(str(exc))
            if progress is not None:
                progress(1)
    return problems


def guess_kind(root: str | Path) -> tuple[str, str]:
    """(kind, why) of a dataset tree, from what it holds; DataError if nothing tells.

    COCO 2014 by its ``train2014``/``val2014`` folders; a ``classes.json`` makes it custom, or
    synthetic when it lists the embedded benchmark's classes; else VOC by its split lists.
    """
    from dfa.data.synthetic import CLASSES as SYNTHETIC_CLASSES

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    for folder in ("JPEGImages", "SegmentationClass"):
        for sub in ("train2014", "val2014"):
            if (root / folder / sub).is_dir():
                return "coco", f"{folder}/{sub}/ is the COCO 2014 layout"
    if (root / "classes.json").exists():
        try:
            classes = load_class_spec(root).classes
        except ValueError as exc:
            raise DataError(str(exc)) from None
        if classes == SYNTHETIC_CLASSES:
            return "synthetic", f"classes.json lists the embedded benchmark's {len(classes)} classes"
        return "custom", f"classes.json lists {len(classes)} classes of its own"
    lists = sorted(p.stem for p in (root / "ImageSets" / "Segmentation").glob("*.txt"))
    if lists:
        return "voc", f"no classes.json, and the VOC split lists {', '.join(lists)} (VOC's 20 classes)"
    raise DataError(f"{root}: cannot tell the dataset kind (no JPEGImages/train2014 or val2014, no classes.json, "
                    f"no ImageSets/Segmentation/*.txt); pass --kind voc|coco|synthetic|custom")


def check_data_main(root: str | Path, kind: str | None = None, splits: Iterable[str] | None = None,
                    counts: bool = True) -> int:
    """CLI body: print ``OK: ...`` and return 0, or one problem per line on stderr and return 1.

    Without ``kind`` it is guessed from the tree (:func:`guess_kind`) and the guess is printed.
    ``counts``: require VOC's / COCO's official number of images per split."""
    try:
        if kind is None:
            kind, why = guess_kind(root)
            print(f"assumed --kind {kind}: {why}")
        layout = Layout(Path(root), kind)
        spec = spec_for(kind, root)
        splits = [splits] if isinstance(splits, str) else splits
        splits = list(splits) if splits is not None else list(layout.default_splits)
        problems = check_tree(layout, spec.num_classes, splits, EXPECTED_COUNTS.get(kind) if counts else None)
    except (DataError, ValueError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        print(f"{len(problems)} problem(s) in {root} ({kind})", file=sys.stderr)
        return 1
    counts = ", ".join(f"{s} {len(layout.read_list(s))}" for s in splits)
    print(f"OK: {root} ({kind}, {spec.num_classes} classes incl. background): {counts} images")
    return 0
