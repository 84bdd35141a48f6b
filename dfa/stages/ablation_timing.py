"""Where ``dfa ablation``'s time goes: one bar per (entry, seed) cell, split into its phases,
as ``reports/timings/ablation.png`` (issue 17: the table must stay within 90 min on 2 cores).

The source is the tracking store, not the process: every cell is an MLflow child run of the
``ablation`` stage run, so its start and end are already recorded, and :func:`run_cell` logs
how long its phases took (``time_train_s``, ``time_score_s``, ``time_decoder_s``). A cell
reused from its ``cell-*.json`` is tagged ``ablation.reused`` and marked so: its bar is the
reuse, not the computation. Runs logged before the phase metrics existed show their whole
duration as "other". The same function draws a finished table's figure from its run id
(``experiments/ablation_timings.py``).
"""
from __future__ import annotations

from pathlib import Path

from dfa.io import atomic_path

FIGURE = Path("reports/timings/ablation.png")
PHASES = (("train", "tab:blue"), ("score", "tab:orange"), ("decoder", "tab:green"))
REUSED_TAG = "ablation.reused"


def cell_timings(client, parent_id: str) -> list[dict]:
    """The child runs of ``parent_id`` oldest first, as ``{label, wall_s, reused, <phase>:
    seconds}`` (the label names the seed; an unfinished run counts 0 s; phases absent: 0)."""
    from mlflow.entities import ViewType

    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                              run_view_type=ViewType.ALL, max_results=5000, order_by=["attributes.start_time ASC"])
    out = []
    for r in runs:
        end = r.info.end_time or r.info.start_time
        tags, metrics = r.data.tags, r.data.metrics
        out.append({"label": r.info.run_name or r.info.run_id,
                    "wall_s": max(0.0, (end - r.info.start_time) / 1000), "reused": tags.get(REUSED_TAG) == "1",
                    **{p: float(metrics.get(f"time_{p}_s", 0.0)) for p, _ in PHASES}})
    return out


def timing_figure(cells: list[dict], total_s: float, path: Path, title: str) -> None:
    """Horizontal stacked bars, one per cell in table order, phases then the rest ("other":
    the model build, the cell's MLflow run); the title gives the table's wall time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not cells:
        return
    y = list(range(len(cells)))[::-1]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(cells) + 1.6))
    left = [0.0] * len(cells)
    parts = [(p, c, [cell[p] / 60 for cell in cells]) for p, c in PHASES]
    parts.append(("other", "tab:gray", [max(0.0, c["wall_s"] - sum(c[p] for p, _ in PHASES)) / 60 for c in cells]))
    for name, color, widths in parts:
        ax.barh(y, widths, left=left, color=color, label=name, edgecolor="white", linewidth=0.3)
        left = [a + b for a, b in zip(left, widths)]
    for yi, cell, x in zip(y, cells, left):
        if cell["reused"]:
            ax.text(x, yi, " reused", va="center", fontsize=7, color="0.3")
    ax.set_yticks(y, [c["label"] for c in cells], fontsize=7)
    ax.set_xlabel("minutes")
    logged = any(c[p] for c in cells for p, _ in PHASES)
    ax.set_title(f"{title}: {total_s / 60:.1f} min in all, {len(cells)} cells "
                 f"(sum of cells {sum(c['wall_s'] for c in cells) / 60:.1f} min)"
                 + ("" if logged else "\nphases not logged by this run: each bar is the whole cell"), fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")     # long row labels
    plt.close(fig)
