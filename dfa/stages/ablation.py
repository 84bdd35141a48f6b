"""``dfa ablation``: the rows of method.md §7 measured now, as ``reports/ablation.{md,csv}``.

Each row trains into its own ``checkpoints/ablation/row<N>`` (``ablation-smoke`` with
``--smoke``, so a smoke run never clobbers real checkpoints). ``fit`` resumes from that
folder's resume checkpoint when its fingerprint matches, so a repeated ablation only
re-scores rows whose params are unchanged; the frozen-feature cache is shared by all rows.
Seeds are scored on the seed split (``data.max_seed_images``; 0 = all) with DenseCRF for
the mask column. One parent MLflow run per invocation, one child per row.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from rich.table import Table

from dfa.config import AblationConfig, Config, ConfigError, load_config, out_path
from dfa.io import atomic_path, write_text
from dfa.stages.common import console, device_of, git_commit, progress
from dfa.stages.search import SeedScorer
from dfa.tracking import stage_run

MARKDOWN = Path("reports/ablation.md")
CSV = Path("reports/ablation.csv")
FIGURE = Path("reports/figures/ablation.png")
COLUMNS = ["row", "affinity", "combination", "seed_miou", "mask_miou", "paper_seed_miou", "dataset", "cam_miou"]


def parse_rows(text: str) -> list[int]:
    try:
        rows = [int(r) for r in str(text).split(",") if r.strip()]
    except ValueError:
        raise ConfigError(f"--rows: expected comma-separated integers, got {text!r}") from None
    bad = [r for r in rows if r not in AblationConfig.ROWS]
    if not rows or bad:
        raise ConfigError(f"--rows: rows must be among {sorted(AblationConfig.ROWS)}, got {text!r}")
    return list(dict.fromkeys(rows))  # keep order, drop repeats


def row_config(args, row: int) -> Config:
    folder = out_path("checkpoints/ablation", args.smoke).as_posix()
    return load_config(args.params, [*args.overrides, f"ablation.row={row}", f"train.dir={folder}/row{row}"],
                       smoke=args.smoke)


def run_row(args, row: int, parent_id: str | None, scorer: SeedScorer) -> dict:
    """Train (or resume) one row and score its seeds; returns its table row."""
    from dfa.stages.train import fit, load_trained

    cfg = row_config(args, row)
    with stage_run(cfg, f"row {row}", nested_in=parent_id, extra_tags={"ablation.row": str(row)}) as run:
        fit(cfg, run)
        model = load_trained(cfg, device_of(cfg))
        score = scorer.for_config(cfg, crf=None, default_images=0)
        with progress() as bar:
            metrics = score(model, bar)
        run.log_metrics(metrics)
    affinity, combination = cfg.ablation.describe()
    return {"row": row, "affinity": affinity, "combination": combination,
            "seed_miou": round(metrics["seed_miou"], 2), "mask_miou": round(metrics["mask_miou"], 2),
            "paper_seed_miou": AblationConfig.PAPER_SEED_MIOU[row], "dataset": cfg.data.name,
            "cam_miou": round(metrics["cam_miou"], 2)}


def command_line(args) -> str:
    """The command as typed (when run from the CLI), else an equivalent one rebuilt from ``args``."""
    if sys.argv[1:2] == ["ablation"]:
        return "python -m dfa " + shlex.join(sys.argv[1:])
    parts = ["ablation", "--rows", args.rows]
    if args.params != "params.yaml":
        parts += ["--params", str(args.params)]
    parts += ["--smoke"] if args.smoke else []
    for o in args.overrides:
        parts += ["-S", o]
    return "python -m dfa " + shlex.join(parts)


def commit_label() -> str:
    commit = git_commit()
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        dirty = ""
    return commit + (" (with uncommitted changes)" if dirty and commit != "unknown" else "")


def markdown(df, cfg: Config, args) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    split = f"{cfg.data.seed_split} ({'all images' if not cfg.data.max_seed_images else f'first {cfg.data.max_seed_images} images'})"
    return (f"# Ablation (method.md §7) on {cfg.data.name}\n\n"
            f"- command: `{command_line(args)}`\n"
            f"- date: {when}\n"
            f"- git commit: {commit_label()}\n"
            f"- seeds scored on: {split}; {cfg.train.steps} training steps per row"
            f"{' (smoke sizes)' if cfg.smoke else ''}\n\n"
            + df.to_markdown(index=False, floatfmt=".1f") + "\n\n"
            "`seed_miou`, `mask_miou` and `cam_miou` are mIoU (%) of the refined CAM, of DenseCRF on it and of "
            "the raw CAM, produced by this run; `paper_seed_miou` is the paper's VOC train number "
            "(comparable only on VOC).\n\n"
            f"![seed mIoU against the paper]({FIGURE.relative_to(MARKDOWN.parent).as_posix()})\n")


def bar_chart(df, path: Path, dataset: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(df))
    fig, ax = plt.subplots(figsize=(1.2 * len(df) + 2.5, 3.5))
    ax.bar(x - 0.2, df["seed_miou"], 0.4, label=f"seed mIoU ({dataset}, this run)")
    ax.bar(x + 0.2, df["paper_seed_miou"], 0.4, label="paper (VOC train)", color="tab:gray")
    ax.set_xticks(x, [f"row {r}" for r in df["row"]])
    ax.set_ylabel("mIoU (%)")
    ax.set_title("ablation rows: seed mIoU", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def results_table(df) -> Table:
    table = Table(title=f"ablation on {df['dataset'].iloc[0]}: mIoU (%)")
    cols = ["row", "affinity", "combination", "cam_miou", "seed_miou", "mask_miou", "paper_seed_miou"]
    for c, head in zip(cols, ["row", "affinity", "combination", "CAM", "seed", "mask", "paper seed"]):
        table.add_column(head, justify="right" if c.endswith("miou") or c == "row" else "left")
    for rec in df[cols].itertuples(index=False):
        table.add_row(*(f"{v:.1f}" if isinstance(v, float) else str(v) for v in rec))
    return table


def ablation(cfg: Config, args) -> int:
    import pandas as pd

    rows = parse_rows(args.rows)
    scorer = SeedScorer()  # one frozen extractor for all rows
    with stage_run(cfg, "ablation", extra_tags={"ablation.row": ",".join(map(str, rows))}) as parent:
        results = [run_row(args, r, parent.run_id, scorer) for r in rows]
        df = pd.DataFrame(results, columns=COLUMNS)
        md, csv, figure = cfg.out(MARKDOWN), cfg.out(CSV), cfg.out(FIGURE)  # under smoke/ with --smoke
        write_text(csv, df.to_csv(index=False))
        bar_chart(df, figure, cfg.data.name)
        write_text(md, markdown(df, cfg, args))
        for path in (md, csv, figure):
            parent.log_artifact(path, "ablation")
    console.print(results_table(df))
    console.print(f"ablation rows {args.rows} → {md}, {csv}, {figure}")
    return 0
