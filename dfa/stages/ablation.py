"""``dfa ablation``: the table of method.md §7 with the reference and ceiling rows of §11,
every cell a mean ± std over seeds (§12), as ``reports/ablation.{md,csv}`` and a figure.

Entries, in table order: the raw CAM; rows 0-4; the ``features`` reference row (E(⊙) with
an affinity from the frozen CLIP's own last-block token features); the untrained-heads
reference rows ``2-init``, ``3-init``, ``4-init`` (row k with its heads at their
initialisation: no training, so row k minus it is what training added, §6 v3); the ceilings
``teacher`` (row 2 with LFAA's S_l from ground truth), ``labels`` (row 3 with HFAR's Y from
ground truth), ``areas`` (row 4's trained model with ground-truth OT areas) and ``grid``
(the ground truth's majority per token, upsampled, PAR).

Work is shared: the feature cache serves every training; rows that need no training (the
raw CAM, rows 0-1, ``features``, the ``-init`` rows, ``grid``) are scored once, since the seed
only covers the decoder/head initialisation and the batch order (§12; the ``mean`` head init
does not depend on the seed); ``areas`` re-scores row 4's checkpoints. Every trained cell
also reports ``head_shift`` (§6 v3): how far its Sinkhorn-normalised affinity moved from the
same heads untrained, on ``data.seed_split`` (A_ha's alone as ``head_shift_ha``). Every cell calibrates its background power on ``data.tune_split`` and is
reported on ``data.seed_split`` (seed and DenseCRF mask mIoU, the three error shares);
the trained cells of the rows in ``--decoder-rows`` (default 4) also report their decoder
on ``data.eval_split`` (multi-scale + flip, no CRF).
A cell's result is kept beside its checkpoint with a fingerprint, so an interrupted or
repeated table resumes and re-scores only what changed. One parent MLflow run carries the
means and stds; each (entry, seed) is a child run.
"""
from __future__ import annotations

import math
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dfa.config import CEILINGS, AblationConfig, Config, ConfigError, load_config
from dfa.io import atomic_path, write_json, write_text
from dfa.stages.common import console, git_commit, progress
from dfa.stages.ablation_timing import FIGURE as TIMING_FIGURE, REUSED_TAG, cell_timings, timing_figure

MARKDOWN = Path("reports/ablation.md")
CSV = Path("reports/ablation.csv")
FIGURE = Path("reports/figures/ablation.png")
SHARES = ("missed_fg", "wrong_class", "spill_bg")
SHIFTS = ("head_shift", "head_shift_ha")   # §6 v3: the row's affinity; A_ha alone (rows that train it)
COLUMNS = ["row", "ceiling", "label", "affinity", "combination", "trained", "seed_miou_mean", "seed_miou_std",
           "mask_miou_mean", "mask_miou_std", "seg_miou_mean", "seg_miou_std", *SHARES, "bg_power",
           *[f"{k}_{s}" for k in SHIFTS for s in ("mean", "std")], "paper_seed_miou", "dataset", "seeds"]
CEILING_ROW = {"teacher": 2, "labels": 3, "areas": 4}
INIT = "-init"          # row "2-init": row 2 with its heads untrained (a reference row)
REFERENCES = ("cam", "features", "untrained")


@dataclass(frozen=True)
class Entry:
    """One line of the table: ``row`` is "cam", "0"-"4", "features", "2-init"-"4-init" (row k,
    heads untrained) or "-" (the grid ceiling)."""
    row: str
    ceiling: str = "none"

    @property
    def key(self) -> str:
        return self.row if self.ceiling == "none" else f"{self.ceiling}-ceiling"

    @property
    def config_row(self) -> int:
        if self.ceiling in CEILING_ROW:
            return CEILING_ROW[self.ceiling]
        if self.row.endswith(INIT):
            return int(self.row[:-len(INIT)])
        return int(self.row) if self.row.isdigit() else 0

    @property
    def trains(self) -> bool:
        """Needs its own training: rows 2-4 and the teacher/labels ceilings."""
        return self.ceiling in ("teacher", "labels") or (self.ceiling == "none" and self.row in ("2", "3", "4"))

    @property
    def per_seed(self) -> bool:
        return self.trains or self.ceiling == "areas"

    @property
    def label(self) -> str:
        if self.ceiling != "none":
            return f"{self.ceiling} ceiling" + (f" (row {self.config_row})" if self.ceiling in CEILING_ROW else "")
        if self.row.endswith(INIT):
            return f"row {self.config_row}, untrained heads (reference)"
        return {"cam": "raw CAM", "features": "features (reference)"}.get(self.row, f"row {self.row}")


def parse_list(text: str, what: str, allowed=None, cast=int) -> list:
    try:
        values = [cast(v.strip()) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{what}: expected a comma-separated list, got {text!r}") from None
    bad = [v for v in values if allowed is not None and v not in allowed]
    if bad:
        raise ConfigError(f"--{what}: {bad[0]!r} is not one of {', '.join(map(str, allowed))}")
    return list(dict.fromkeys(values))


def parse_rows(text: str) -> list[int]:
    """``--rows``: '' runs no row (only the ceilings and references asked for)."""
    return parse_list(text, "rows", sorted(AblationConfig.ROWS))


def entries(rows: list[int], ceilings: list[str], references=True) -> list[Entry]:
    """The table's entries in order. ``references``: True (all of :data:`REFERENCES`), False
    (none) or a list of them; ``untrained`` adds "k-init" for each trained row k asked for."""
    refs = set(REFERENCES if references is True else references or ())
    out = [Entry("cam")] if "cam" in refs else []
    out += [Entry(str(r)) for r in rows]
    out += [Entry("features")] if "features" in refs else []
    out += [Entry(f"{r}{INIT}") for r in rows if r >= 2] if "untrained" in refs else []
    out += [Entry("-" if c == "grid" else str(CEILING_ROW[c]), c) for c in ceilings]
    return out


def ablation_root(cfg: Config) -> Path:
    """Checkpoints of a table live beside ``train.dir``: ``checkpoints/ablation-dfa`` for the
    default, ``checkpoints/ablation-dfa-smoke`` under --smoke, one per dataset set-up."""
    train = Path(cfg.train.dir)
    return train.parent / f"ablation-{train.name}"


def entry_config(args, entry: Entry, seed: int, root: Path) -> Config:
    name = entry.key if entry.ceiling != "areas" else "4"      # areas re-scores row 4's models
    return load_config(args.params, [*args.overrides, f"ablation.row={entry.config_row}",
                                     f"ablation.ceiling={entry.ceiling}", f"seed={seed}",
                                     f"train.dir={(root / name / f'seed{seed}').as_posix()}"], smoke=args.smoke)


# ------------------------------------------------------------------------------ the features row

def features_tokens(cfg: Config):
    """``seed_fn`` of the ``features`` reference row: E(⊙) with the frozen CLIP's last-block
    token affinity (centred cosine, softmax at T = 0.1, Sinkhorn, squared)."""
    import torch

    from dfa.affinity import feature_affinity
    from dfa.cam import minmax_tokens
    from dfa.model import TokenScores
    from dfa.refine import product_affinity

    def seed_fn(model, chunk, s_hat, valid):
        with torch.no_grad():
            a = product_affinity([feature_affinity(chunk.feats.tokens[:, -1], 0.1)], cfg.affinity.sinkhorn_rounds,
                                 cfg.affinity.square)
            fg = minmax_tokens(a @ s_hat[..., 1:]) * valid[:, None, 1:]
            bg = None if cfg.cam.background == "residual" else (a @ s_hat[..., :1])[..., 0].clamp(0, 1)
        return TokenScores(fg=fg, bg=bg)
    return seed_fn


# ------------------------------------------------------------------------------ one cell

class Context:
    """What every cell shares: the frozen extractor, the splits, the labels."""

    def __init__(self, cfg: Config):
        from dfa.data.dataset import load_labels
        from dfa.stages.common import class_spec, data_errors, device_of, layout_of, limit
        from dfa.backbone.memo import with_memo
        from dfa.stages.views import extractor

        self.device = device_of(cfg)
        self.spec = class_spec(cfg)
        self.layout = layout_of(cfg)
        d = cfg.data
        with data_errors():
            self.train = limit(self.layout.read_list(d.seed_split), d.max_seed_images)
            self.tune = limit(self.layout.read_list(d.tune_split), d.max_seed_images)
            self.val = limit(self.layout.read_list(d.eval_split), d.max_eval_images)
            self.labels = load_labels(self.layout.labels_path())
        self.ext = with_memo(extractor(cfg, self.spec, self.device), cfg.cache.memo_gib)


def untrained_model(cfg: Config, ctx: Context):
    from dfa.model import DFA
    clip = ctx.ext.clip
    return DFA(cfg, len(clip.decoder_layers), clip.width, ctx.spec.num_classes, clip.num_heads).to(ctx.device).eval()


def run_cell(args, entry: Entry, seed: int, ctx: Context, parent_id: str | None, root: Path) -> dict:
    """Train (or resume, or reuse) one (entry, seed) and score it; returns its metrics."""
    import json

    from dfa.features_cache import file_digest, fingerprint
    from dfa.stages.seeds import calibrate, score_seeds, shift_reference
    from dfa.stages.segment import decoder_miou
    from dfa.stages.training import fit, load_trained
    from dfa.tracking import stage_run

    cfg = entry_config(args, entry, seed, root)
    cell_path = Path(cfg.train.dir) / f"cell-{entry.key}.json"
    tags = {"ablation.row": entry.row, "ablation.ceiling": entry.ceiling, "ablation.seed": str(seed)}
    with stage_run(cfg, f"{entry.label} · seed {seed}", nested_in=parent_id, extra_tags=tags) as run:
        model_file = Path(cfg.train.dir) / "model.pt"
        t0 = time.perf_counter()
        if entry.trains:
            fit(cfg, run, ext=ctx.ext)
        times = {"time_train_s": time.perf_counter() - t0}     # reports/timings/ablation.png
        needs_model = entry.per_seed
        want_seg = entry.trains and wants_decoder(args, entry)
        fp = fingerprint({"cfg": cfg.flat(), "model": file_digest(model_file) if needs_model else "",
                          "entry": entry.key, **({"seg": want_seg} if entry.trains else {})})
        if cell_path.exists():
            cached = json.loads(cell_path.read_text())
            if cached.get("fingerprint") == fp:
                run.set_tags({REUSED_TAG: "1"})
                run.log_metrics({k: v for k, v in cached["metrics"].items() if _finite(v)})
                return cached["metrics"]
        if needs_model:
            if not model_file.exists():
                raise ConfigError(f"{model_file}: the areas ceiling re-scores row 4's model; "
                                  f"run row 4 (--rows 4) for seed {seed} first")
            model = load_trained(cfg, ctx.device)
        else:
            model = untrained_model(cfg, ctx)
        fn = features_tokens(cfg) if entry.row == "features" else None
        kind = "cam" if entry.row == "cam" else "seed"
        with progress() as bar:
            t0 = time.perf_counter()
            bg = calibrate(cfg, model, ctx.ext, ctx.layout, ctx.tune, ctx.labels, bar, seed_fn=fn)
            m, _, _ = score_seeds(cfg, model, ctx.ext, ctx.layout, ctx.train, ctx.labels, bar=bar, bg=bg, seed_fn=fn,
                                  crf=False if kind == "cam" else None,
                                  shift_ref=shift_reference(cfg, model) if needs_model else None)
            times["time_score_s"] = time.perf_counter() - t0
            seg = float("nan")
            if want_seg:
                t0 = time.perf_counter()
                seg = decoder_miou(cfg, model, ctx.ext, ctx.layout, ctx.val, bar)
                times["time_decoder_s"] = time.perf_counter() - t0
        if kind == "cam":   # the raw CAM row reports the raw CAM as its seed (its mask: CRF on it is not run)
            m = {**m, "seed_miou": m["cam_miou"], **{f"seed_{s}": m[f"cam_{s}"] for s in SHARES},
                 "bg_power_seed": m["bg_power_cam"], "mask_miou": float("nan")}
        metrics = {"seed_miou": m["seed_miou"], "mask_miou": m.get("mask_miou", float("nan")), "seg_miou": seg,
                   **{s: m[f"seed_{s}"] for s in SHARES}, "bg_power": m["bg_power_seed"],
                   "cam_miou": m["cam_miou"], **{k: m[k] for k in SHIFTS if k in m}}
        run.log_metrics({**{k: v for k, v in metrics.items() if _finite(v)}, **times})
        write_json(cell_path, {"fingerprint": fp, "metrics": metrics})
    return metrics


def wants_decoder(args, entry: Entry) -> bool:
    """``--decoder-rows``: whether this trained cell also scores its decoder on the eval split.
    Rows, not ceilings, by the row's number; 'all' means every trained cell."""
    text = str(getattr(args, "decoder_rows", "4") or "").strip()
    if text == "all":
        return True
    rows = parse_list(text, "decoder-rows", [str(r) for r in sorted(AblationConfig.ROWS)], str)
    return entry.ceiling == "none" and entry.row in rows


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# ------------------------------------------------------------------------------ the table

def aggregate(entry: Entry, cfg: Config, cells: dict[int, dict], seeds: list[int]) -> dict:
    """One table row: mean ± std (sample std, ddof 1; 0 for one value) over the seeds."""
    def stat(key):
        vals = np.array([cells[s].get(key) for s in seeds if _finite(cells[s].get(key))], dtype=float)
        if not len(vals):
            return float("nan"), float("nan")
        return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    if entry.row.isdigit() or entry.row.endswith(INIT):
        tmp = load_config(None, [f"ablation.row={entry.config_row}"]).ablation
        affinity, combination = tmp.describe()
        affinity += " (heads untrained)" if entry.row.endswith(INIT) else ""
    else:
        affinity, combination = {"cam": ("identity", "none"), "features": ("CLIP token features", "E(⊙)"),
                                 "-": ("ground truth per token", "PAR")}[entry.row]
    row = {"row": entry.row, "ceiling": entry.ceiling, "label": entry.label, "affinity": affinity,
           "combination": combination, "trained": entry.trains, "dataset": cfg.data.name,
           "seeds": " ".join(map(str, seeds)),
           "paper_seed_miou": AblationConfig.PAPER_SEED_MIOU.get(int(entry.row)) if entry.row.isdigit()
           and entry.ceiling == "none" else float("nan")}
    for key in ("seed_miou", "mask_miou", "seg_miou"):
        row[f"{key}_mean"], row[f"{key}_std"] = stat(key)
    for key in (*SHARES, "bg_power"):
        row[key] = stat(key)[0]
    for key in SHIFTS:
        row[f"{key}_mean"], row[f"{key}_std"] = stat(key)
    return row


def command_line(args) -> str:
    """The command as typed (when run from the CLI), else an equivalent one rebuilt from ``args``."""
    if sys.argv[1:2] == ["ablation"]:
        return "python -m dfa " + shlex.join(sys.argv[1:])
    parts = ["ablation", "--rows", args.rows]
    for flag in ("seeds", "ceilings", "references", "name"):
        if getattr(args, flag, None) is not None:
            parts += [f"--{flag}", getattr(args, flag)]
    if args.params != "params.yaml":
        parts += ["--params", str(args.params)]
    parts += ["--smoke"] if args.smoke else []
    for o in args.overrides:
        parts += ["-S", o]
    return "python -m dfa " + shlex.join(parts)


def commit_label() -> str:
    from dfa.repo import git_dirty
    commit = git_commit()
    return commit + (" (with uncommitted changes)" if commit != "unknown" and git_dirty() else "")


def _cell(mean: float, std: float, fmt: str = ".1f") -> str:
    return "—" if not math.isfinite(mean) else f"{mean:{fmt}} ± {std:{fmt}}"


def csv_text(df) -> str:
    """The CSV: 3 decimals, but 4 significant digits for the head shifts (small numbers: a shift of
    5e-4 is not 0)."""
    out = df.copy()
    for col in (f"{k}_{s}" for k in SHIFTS for s in ("mean", "std")):
        out[col] = [f"{v:.4g}" if _finite(v) else "" for v in out[col]]
    return out.to_csv(index=False, float_format="%.3f")


def outputs(name: str) -> tuple[Path, Path, Path]:
    """``reports/<name>.md``, ``reports/<name>.csv``, ``reports/figures/<name>.png`` (``--name``)."""
    return MARKDOWN.with_name(f"{name}.md"), CSV.with_name(f"{name}.csv"), FIGURE.with_name(f"{name}.png")


def markdown(df, cfg: Config, args, seeds: list[int], wall_s: float, fig: Path = FIGURE) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["| row | affinity | combination | seed mIoU | mask mIoU | decoder on val | missed fg % | "
             "wrong class % | bg spill % | bg power | head shift | A_ha shift | paper (VOC) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples(index=False):
        paper = "" if not _finite(r.paper_seed_miou) else f"{r.paper_seed_miou:.1f}"
        lines.append(f"| {r.label} | {r.affinity} | {r.combination} | {_cell(r.seed_miou_mean, r.seed_miou_std)} | "
                     f"{_cell(r.mask_miou_mean, r.mask_miou_std)} | {_cell(r.seg_miou_mean, r.seg_miou_std)} | "
                     f"{r.missed_fg:.1f} | {r.wrong_class:.1f} | {r.spill_bg:.1f} | {r.bg_power:.3g} | "
                     f"{_cell(r.head_shift_mean, r.head_shift_std, '.2g')} | "
                     f"{_cell(r.head_shift_ha_mean, r.head_shift_ha_std, '.2g')} | {paper} |")
    return (f"# Ablation (method.md §7, §11, §12) on {cfg.data.name}\n\n"
            f"- command: `{command_line(args)}`\n"
            f"- date: {when}; wall time {wall_s / 60:.1f} min\n"
            f"- git commit: {commit_label()}\n"
            f"- seeds {', '.join(map(str, seeds))}; every cell is mean ± std over them (rows without training "
            f"are the same for every seed); {cfg.train.steps} training steps per trained cell"
            f"{' (smoke sizes)' if cfg.smoke else ''}\n"
            f"- background power of every row chosen on `{cfg.data.tune_split}` from {cfg.refine.bg_grid}; seeds, "
            f"masks and error shares reported on `{cfg.data.seed_split}`; the decoder on `{cfg.data.eval_split}` "
            f"(multi-scale + flip, no CRF), for the trained rows of `--decoder-rows` only\n\n"
            + "\n".join(lines) + "\n\n"
            "Ceiling rows feed one module ground truth (method.md §11) and are labelled as such; the error shares are "
            "of the seed (missed fg and wrong class: % of foreground pixels; bg spill: % of background pixels). A "
            "claim \"row a beats row b\" needs a difference larger than the two stds added together (§12). Head "
            "shift (§6 v3): mean |A − A_init| / mean A_init of the Sinkhorn-normalised affinity the row uses "
            "(row 4: A_la) against the same heads untrained, on the seed split; A_ha shift: the inverse head's "
            "alone. About 0 means the row measures its untrained heads (compare the \"untrained heads\" rows).\n\n"
            f"![ablation](figures/{fig.name})\n")


def figure(df, path: Path, dataset: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(df))
    fig, (ax, ax2, ax3) = plt.subplots(3, 1, figsize=(1.0 * len(df) + 3, 9), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 2, 1.5]})
    colors = ["tab:gray" if c != "none" else "tab:blue" for c in df["ceiling"]]
    ax.bar(x, df["seed_miou_mean"], 0.6, yerr=df["seed_miou_std"].fillna(0), color=colors, capsize=3)
    paper = df["paper_seed_miou"].astype(float)
    ax.scatter(x[paper.notna()], paper[paper.notna()], marker="_", s=300, color="k", label="paper (VOC train)")
    ax.set_ylabel("seed mIoU (%)")
    ax.set_title(f"ablation on {dataset}: mean ± std over seeds (grey: ceiling rows)", fontsize=10)
    ax.legend(fontsize=8)
    w = 0.27
    for i, (share, col) in enumerate(zip(SHARES, ("tab:orange", "tab:purple", "tab:red"))):
        ax2.bar(x + (i - 1) * w, df[share], w, label=share.replace("_", " "), color=col)
    ax2.set_ylabel("% of fg / bg pixels")
    ax2.legend(fontsize=8, ncol=3)
    w = 0.38
    for i, (key, name, col) in enumerate((("head_shift", "row's affinity (row 4: A_la)", "tab:green"),
                                          ("head_shift_ha", "A_ha alone", "tab:olive"))):
        mean = df[f"{key}_mean"].astype(float)
        ax3.bar(x + (i - 0.5) * w, mean.fillna(0), w, yerr=df[f"{key}_std"].astype(float).fillna(0), color=col,
                capsize=2, label=name)
    ax3.set_ylabel("head shift")
    ax3.set_title("head shift (§6): mean |A − A_init| / mean A_init on the seed split (0: untrained)", fontsize=9)
    ax3.legend(fontsize=8, ncol=2)
    ax3.set_xticks(x, df["label"], rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def ablation(cfg: Config, args) -> int:
    import pandas as pd
    from rich.table import Table

    from dfa.tracking import stage_run

    t0 = time.perf_counter()
    rows = parse_rows(args.rows)
    seeds = parse_list(args.seeds, "seeds") if getattr(args, "seeds", None) else list(cfg.ablation.seeds)
    ceilings = (parse_list(args.ceilings, "ceilings", [c for c in CEILINGS if c != "none"], str)
                if getattr(args, "ceilings", None) is not None else ["teacher", "labels", "areas", "grid"])
    if "areas" in ceilings and 4 not in rows:
        console.print("[yellow]the areas ceiling re-scores row 4's models: they must exist already[/]")
    text = getattr(args, "references", None)
    refs = parse_list(",".join(REFERENCES) if text is None else text, "references", REFERENCES, str)
    plan = entries(rows, ceilings, references=False if getattr(args, "no_references", False) else refs)
    if not plan:
        raise ConfigError("nothing to run: --rows and --ceilings are empty and --no-references is set")
    wants_decoder(args, Entry("4"))                     # a bad --decoder-rows fails before the first cell
    ctx = Context(cfg)
    results = []
    with stage_run(cfg, "ablation", extra_tags={"ablation.rows": ",".join(map(str, rows)),
                                                 "ablation.seeds": ",".join(map(str, seeds))}) as parent:
        for entry in plan:
            cells = {}
            for s in (seeds if entry.per_seed else seeds[:1]):
                cells[s] = run_cell(args, entry, s, ctx, parent.run_id, ablation_root(cfg))
            for s in seeds:
                cells.setdefault(s, cells[seeds[0]])           # untrained rows: the same for every seed
            row = aggregate(entry, cfg, cells, seeds)
            results.append(row)
            parent.log_metrics({f"{entry.key}.{k}": v for k, v in row.items()
                                if k.endswith(("_mean", "_std")) or k in SHARES if _finite(v)})
        wall = time.perf_counter() - t0
        df = pd.DataFrame(results, columns=COLUMNS)
        md, csv, fig = (cfg.out(p) for p in outputs(getattr(args, "name", None) or "ablation"))  # smoke/ with --smoke
        write_text(csv, csv_text(df))
        figure(df, fig, cfg.data.name)
        write_text(md, markdown(df, cfg, args, seeds, wall, fig))
        parent.log_metrics({"wall_s": wall})
        for path in (md, csv, fig):
            parent.log_artifact(path, "ablation")
        if cfg.tracking.enabled:   # the cells' times come from their runs (ablation_timing)
            timing_figure(cell_timings(parent.client, parent.run_id), wall, cfg.out(TIMING_FIGURE),
                          f"dfa ablation on {cfg.data.name}")
    table = Table(title=f"ablation on {cfg.data.name}: seed mIoU, mean ± std over seeds {seeds}")
    for head in ("row", "seed", "mask", "decoder", "missed", "wrong", "spill"):
        table.add_column(head, justify="left" if head == "row" else "right")
    for r in results:
        table.add_row(r["label"], _cell(r["seed_miou_mean"], r["seed_miou_std"]),
                      _cell(r["mask_miou_mean"], r["mask_miou_std"]), _cell(r["seg_miou_mean"], r["seg_miou_std"]),
                      f"{r['missed_fg']:.1f}", f"{r['wrong_class']:.1f}", f"{r['spill_bg']:.1f}")
    console.print(table)
    console.print(f"ablation ({len(plan)} rows × seeds {seeds}) in {wall / 60:.1f} min → {md}, {csv}, {fig}")
    return 0
