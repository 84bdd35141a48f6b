"""The ``tune`` split (method.md §12): where defaults and calibrations are chosen.

``tune`` is a subset of the training list (``train_aug``), the size of the reported seed
split (``train``) and disjoint from it and from ``val``; no default may be chosen on
``train`` or ``val``. The synthetic generator writes it directly; for a real tree (VOC,
COCO, custom) ``dfa prepare`` draws it once, deterministically, and writes
``ImageSets/Segmentation/tune.txt`` if it is missing. A ``--smoke`` run draws the same split
in memory instead (it never writes into a user's tree).
"""
from __future__ import annotations

import numpy as np

from dfa.data.layout import DataError, Layout
from dfa.io import write_text


def draw_tune(train: list[str], seed_split: list[str], eval_split: list[str], size: int, seed: int = 0) -> list[str]:
    """``size`` names of ``train`` outside ``seed_split`` and ``eval_split``, drawn with ``seed``, in list order."""
    exclude = set(seed_split) | set(eval_split)
    pool = [n for n in train if n not in exclude]
    if len(pool) < size:
        raise DataError(f"the tune split needs {size} training images outside the seed and evaluation splits, "
                        f"only {len(pool)} exist")
    pick = set(np.random.default_rng(seed).choice(len(pool), size=size, replace=False).tolist())
    return [n for i, n in enumerate(pool) if i in pick]


def tune_of(layout: Layout, train_split: str, seed_split: str, eval_split: str, seed: int = 0) -> list[str]:
    """The tune split a tree without one gets: the size of the seed split, as far as the
    training list has room outside it."""
    train, seeds, evals = (layout.read_list(s) for s in (train_split, seed_split, eval_split))
    return draw_tune(train, seeds, evals, min(len(seeds), max(0, len(train) - len(seeds))), seed)


def ensure_tune(layout: Layout, train_split: str, seed_split: str, eval_split: str, tune_split: str = "tune",
                seed: int = 0) -> bool:
    """Write ``tune_split`` into the tree if it has none; returns whether it was written."""
    if layout.list_path(tune_split).exists():
        return False
    names = tune_of(layout, train_split, seed_split, eval_split, seed)
    write_text(layout.list_path(tune_split), "\n".join(names) + "\n")
    return True


# Each split's role by dataset kind, as the params' data.train_split / seed_split / eval_split give
# them for a run. COCO has one training list, so its seeds are scored on val (profiles/coco.yaml).
ROLES = {"train": "train_aug", "seed": "train", "evaluation": "val"}
KIND_ROLES = {"coco": {"train": "train", "seed": "val", "evaluation": "val"}}


def roles_for(kind: str) -> dict[str, str]:
    """The split named for each role (``train``, ``seed``, ``evaluation``) in a ``kind`` tree."""
    return {**ROLES, **KIND_ROLES.get(kind, {})}


def split_problems(layout: Layout, lists: dict[str, list[str]], *, tune: str, seed: str, train: str,
                   evaluation: str) -> list[str]:
    """One line per violation of §12: tune inside the training list, disjoint from the seed and
    evaluation splits (VOC: train_aug, train, val; COCO: train, val, val)."""
    if tune not in lists:
        return []
    t = set(lists[tune])
    out = []
    others = {seed: "the reported seed split", evaluation: "the evaluation split"}   # one line if they are one split
    if seed == evaluation:
        others[seed] = "the reported seed and evaluation split"
    for other, why in others.items():
        if other in lists and t & set(lists[other]):
            both = sorted(t & set(lists[other]))
            out.append(f"{layout.list_path(tune)}: {len(both)} image(s) also in {layout.list_path(other)} "
                       f"({why}), e.g. {both[:3]}")
    if train in lists and t - set(lists[train]):
        extra = sorted(t - set(lists[train]))
        out.append(f"{layout.list_path(tune)}: {len(extra)} image(s) not in {layout.list_path(train)}, e.g. {extra[:3]}")
    return out
