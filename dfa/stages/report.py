"""Figures and tables the stages write: label-map grids (PNG) and per-class IoU tables."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dfa.data.io import voc_palette
from dfa.io import atomic_path

_PAL = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)


def colorize(mask: np.ndarray) -> np.ndarray:
    return _PAL[np.asarray(mask, dtype=np.uint8)]


def save_grid(path: str | Path, rows: list[list[np.ndarray]], titles: list[str]) -> None:
    """A PNG grid: one row per image, columns = RGB image then label maps (colourised)."""
    if not rows:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(titles), figsize=(2.2 * len(titles), 2.2 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, item in enumerate(row):
            ax = axes[r][c]
            ax.imshow(item if item.ndim == 3 else colorize(item), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def iou_table(class_names: list[str], ious: dict[str, torch.Tensor]) -> str:
    """Markdown table: one row per class, one column per prediction kind (IoU in %)."""
    kinds = list(ious)
    lines = ["| class | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for i, name in enumerate(class_names):
        cells = []
        for k in kinds:
            v = float(ious[k][i])
            cells.append("—" if np.isnan(v) else f"{100 * v:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
