"""Seeds on a split (method.md §5, §8, §11, §12), shared by ``dfa pseudo``, ``dfa search``'s
trials, the ablation's cells and the probes in ``experiments/probes``.

Images go through in chunks of ``CHUNK`` at the crop view with the frozen features:
:func:`chunk_tokens` gives the raw CAM's and the configured row's (or ceiling's) token
scores, :func:`calibrate` chooses each kind's background power on the tune split
(:mod:`dfa.calibrate`), :func:`score_seeds` scores cam / seed / mask against the ground
truth at each image's size (one accumulated confusion matrix per kind) and writes the PNGs.
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dfa.affinity import head_shift
from dfa.calibrate import add_confusion, choose_powers, labels_at_image_size, labels_for_powers
from dfa.config import Config
from dfa.crf import crf_labels, crf_pool
from dfa.data.io import read_image, read_mask, write_mask
from dfa.errors import WorkbenchError
from dfa.io import write_json
from dfa.losses import token_labels
from dfa.metrics import error_shares, miou
from dfa.model import TokenScores, decoder_areas, gt_areas
from dfa.stages.common import crf_params, data_errors
from dfa.stages.views import normalise, square_mask, square_view

KINDS = ("cam", "seed", "mask")
CHUNK = 16
OT_IMAGES = "ot_images.json"   # per-image OT diagnostics, next to the PNGs (resumable)


def to_probs(scores: torch.Tensor) -> np.ndarray:
    """(1 + C, H, W) scores (absent classes < 0) → probabilities for the CRF unary."""
    s = scores.clamp_min(0) + 1e-5 * (scores >= 0)
    return (s / s.sum(0, keepdim=True)).numpy()


# ------------------------------------------------------------------------------ OT diagnostics

def ot_records(tok: TokenScores, valid: torch.Tensor, names: list[str], debug: bool) -> dict[str, dict]:
    """Per image, the OT plan's diagnostics (method.md §5) as JSON values; {} without an OT step.

    ``area_gap`` is the mean over the valid columns of |argmax area − b_c|; ``empty_class``
    whether a present class wins no token of the posterior. With ``debug`` the columns' plan
    sums, prior b, argmax areas and empty flags too (background first, absent classes None)."""
    if tok.ot is None:
        return {}
    d = {k: v.tolist() for k, v in tok.ot.items()}          # one host transfer per chunk
    sums, keep = tok.column_sums.tolist(), valid.tolist()
    out = {}
    for j, name in enumerate(names):
        cols = [c for c, ok in enumerate(keep[j]) if ok]
        gap = sum(abs(d["argmax_area"][j][c] - d["prior"][j][c]) for c in cols) / len(cols)
        rec = {"row_err": d["row_err"][j], "col_err": d["col_err"][j], "iters": d["problem_iters"][j],
               "converged": d["converged"][j], "empty_class": any(d["empty"][j][c] for c in cols if c > 0),
               "area_gap": gap}
        if debug:
            def per_column(values, digits=6):
                return [(round(float(v), digits) if isinstance(v, float) else v) if ok else None
                        for v, ok in zip(values, keep[j])]
            rec.update(columns=per_column(sums[j]), prior=per_column(d["prior"][j]),
                       argmax_area=per_column(d["argmax_area"][j]), empty=per_column(d["empty"][j]))
        out[name] = rec
    return out


def ot_summary(records: list[dict], cfg: Config) -> dict | None:
    """Summary of :func:`ot_records` over a split (``ot`` in pseudo.json); None without OT."""
    if not records:
        return None
    row = np.array([r["row_err"] for r in records])
    iters = np.array([r["iters"] for r in records])
    return {"images": len(records), "tol": cfg.ot.tol, "max_iters": cfg.ot.max_iters,
            "row_err_median": float(np.median(row)), "row_err_max": float(row.max()),
            "col_err_max": float(max(r["col_err"] for r in records)),
            "iters_median": float(np.median(iters)), "iters_max": int(iters.max()),
            "not_converged": sum(not r["converged"] for r in records),
            "empty_class_images": sum(bool(r["empty_class"]) for r in records),
            "area_gap_mean": float(np.mean([r["area_gap"] for r in records]))}


# ------------------------------------------------------------------------------ one chunk

@dataclass
class Chunk:
    """A chunk of images at the crop view, with the frozen features."""
    names: list[str]
    raw: list[np.ndarray]          # images at their own size
    gts: list[np.ndarray]          # ground truth at the image size
    image: torch.Tensor            # (B, 3, crop, crop) normalised
    present: torch.Tensor          # (B, C) bool
    view_gt: torch.Tensor          # (B, crop, crop) ground truth at the view (ceilings only)
    feats: object                  # ViewFeatures


def load_chunk(cfg: Config, ext, layout, names: list[str], labels: dict, device) -> Chunk:
    crop = cfg.data.crop_size
    with data_errors():
        raw = [read_image(layout.image_path(n)) for n in names]
        gts = [read_mask(layout.mask_path(n)) for n in names]
    image = normalise(np.stack([square_view(im, crop) for im in raw]), cfg).to(device)
    present = torch.tensor(np.stack([labels[n] for n in names]) > 0, device=device)
    view_gt = torch.from_numpy(np.stack([square_mask(g, crop) for g in gts])).long().to(device)
    return Chunk(names, raw, gts, image, present, view_gt, ext(image, present))


def grid_tokens(view_gt: torch.Tensor, grid: tuple[int, int], num_classes: int, valid: torch.Tensor) -> TokenScores:
    """The ``grid`` ceiling (§11): the ground truth's most frequent label per token, one-hot.
    A token without any labelled pixel counts as background."""
    y = token_labels(view_gt, grid, num_classes, "majority", min_share=0.0)
    y = y.masked_fill(y == 255, 0)
    onehot = F.one_hot(y, num_classes).float() * valid[:, None, :]
    return TokenScores(fg=onehot[..., 1:], bg=onehot[..., 0])


@torch.no_grad()
def chunk_tokens(cfg: Config, model, ext, chunk: Chunk, seed_fn=None,
                 prior_kind: str | None = None) -> tuple[dict[str, TokenScores], torch.Tensor]:
    """Token scores of the raw CAM and of the configured row (or ceiling) for a chunk; valid
    columns. ``seed_fn(model, chunk, s_hat, valid) → TokenScores`` replaces the row (the
    ablation's ``features`` reference row); ``prior_kind`` replaces ``ot.prior``."""
    f = chunk.feats
    s_hat, valid = model.class_scores(f.cos, f.cos_bg, chunk.present, ext.logit_scale)
    out = {"cam": model.token_scores(None, s_hat, valid)}
    ceiling = cfg.ablation.ceiling
    if seed_fn is not None:
        out["seed"] = seed_fn(model, chunk, s_hat, valid)
        return out, valid
    if ceiling == "grid":
        out["seed"] = grid_tokens(chunk.view_gt, f.grid, model.num_classes, valid)
        return out, valid
    areas, kind = None, prior_kind or cfg.ot.prior
    if ceiling == "areas":
        areas, prior_kind = gt_areas(chunk.view_gt, model.num_classes), "oracle"
    elif kind == "oracle":
        raise WorkbenchError("ot.prior=oracle uses ground-truth areas: it runs only as the areas ceiling "
                             "(ablation.ceiling=areas), never on a reported split otherwise")
    elif kind == "decoder":
        areas = decoder_areas(model.segment(f.tokens, f.grid), valid)
    aff = model.affinities(f.attn, f.grid, tokens=f.tokens, heads=f.heads)
    out["seed"] = model.token_scores(aff, s_hat, valid, areas, prior_kind)
    return out, valid


@torch.no_grad()
def chunk_shift(model, ref, chunk: Chunk) -> dict[str, torch.Tensor]:
    """``head_shift`` per image (§6 v3): the row's Sinkhorn-normalised affinities against the
    same heads untrained (``ref``, :meth:`dfa.model.DFA.untrained`)."""
    f = chunk.feats
    now, init = (m.row_affinities(m.affinities(f.attn, f.grid, tokens=f.tokens, heads=f.heads)) for m in (model, ref))
    return {k: head_shift(now[k], init[k]) for k in now}


def shift_reference(cfg: Config, model):
    """The model's heads at their initialisation when the row trains one (L_a or L_r), else None."""
    ab = cfg.ablation
    return model.untrained() if (ab.align or ab.rectify) and ab.ceiling != "grid" else None


# ------------------------------------------------------------------------------ calibration

@torch.no_grad()
def calibrate(cfg: Config, model, ext, layout, names: list[str], labels: dict, bar=None, seed_fn=None,
              prior_kind: str | None = None) -> dict:
    """Background power per kind chosen on ``names`` (the tune split) from ``refine.bg_grid``.

    Returns ``{"cam": p, "seed": p, "table": {kind: {p: mIoU}}}``; ties go to the value
    nearest 1. Without ``refine.calibrate`` both kinds keep ``refine.bg_power``.
    """
    if not cfg.refine.calibrate:
        return {"cam": cfg.refine.bg_power, "seed": cfg.refine.bg_power, "table": {}}
    grid_values = list(cfg.refine.bg_grid)
    n_cls = model.num_classes
    conf = {k: {p: torch.zeros(n_cls, n_cls, dtype=torch.int64) for p in grid_values} for k in ("cam", "seed")}
    task = bar.add_task("calibrate background on tune", total=len(names), info="") if bar is not None else None
    for i in range(0, len(names), CHUNK):
        chunk = load_chunk(cfg, ext, layout, names[i:i + CHUNK], labels, ext.device)
        toks, valid = chunk_tokens(cfg, model, ext, chunk, seed_fn, prior_kind)
        weight = model.par_weights(chunk.image) if cfg.refine.par_iters > 0 else None
        for kind, tok in toks.items():
            bg_up, fg_up = model.pixel_scores(tok, valid, chunk.image.shape[-2:], chunk.feats.grid)
            bg, fg = model.finish_powers(chunk.image, bg_up, fg_up, valid, grid_values, weight)
            for p, preds in zip(grid_values, labels_for_powers(bg, fg, chunk.raw)):
                add_confusion(conf[kind][p], preds, chunk.gts)
        if bar is not None:
            bar.update(task, advance=len(chunk.names))
    return choose_powers(conf, grid_values)


# ------------------------------------------------------------------------------ scoring

@torch.no_grad()
def predict(cfg: Config, model, ext, chunk: Chunk, bg: dict, crf: bool, pool=None, seed_fn=None) -> tuple[dict, list]:
    """Label maps (cam, seed, mask) at each image's size, and the figure rows of the chunk."""
    toks, valid = chunk_tokens(cfg, model, ext, chunk, seed_fn)
    grid = chunk.feats.grid
    cam = model.refine(None, None, valid, chunk.image, grid, tokens=toks["cam"], bg_power=bg["cam"])
    seed = model.refine(None, None, valid, chunk.image, grid, tokens=toks["seed"], bg_power=bg["seed"])
    out = {"cam": labels_at_image_size(cam.scores, chunk.raw), "seed": labels_at_image_size(seed.scores, chunk.raw)}
    out["ot"] = ot_records(toks["seed"], valid, chunk.names, cfg.ot.debug)
    if crf:
        items = []
        for j, im in enumerate(chunk.raw):
            up = F.interpolate(seed.scores[j:j + 1].float(), size=im.shape[:2], mode="bilinear", align_corners=False)
            items.append((im, to_probs(up[0].cpu())))
        out["mask"] = crf_labels(items, workers=cfg.eval.workers, pool=pool, **crf_params(cfg))
    else:
        out["mask"] = list(out["seed"])
    figure = []
    tok = toks["seed"]
    for j in range(len(chunk.names)):
        row = [chunk.raw[j], chunk.gts[j], out["cam"][j]]
        for maps in (tok.m_r, tok.posterior):
            if maps is not None:
                m = maps[j:j + 1].transpose(1, 2).reshape(1, -1, *grid).masked_fill(~valid[j, None, :, None, None], -1)
                row.append(labels_at_image_size(F.interpolate(m, size=chunk.image.shape[-2:], mode="nearest"),
                                          [chunk.raw[j]])[0])
        row += [out["seed"][j], out["mask"][j]]
        figure.append(row)
    return out, figure


def score_seeds(cfg: Config, model, ext, layout, names: list[str], labels: dict, out: Path | None = None,
                bar=None, crf: bool | None = None, bg: dict | None = None, seed_fn=None,
                shift_ref=None) -> tuple[dict, dict, list]:
    """mIoU (percent) and error shares of cam / seed / mask over ``names``; PNGs under ``out``
    (resumable). ``bg``: the background power per kind (from :func:`calibrate`; default
    ``refine.bg_power``). ``shift_ref``: the heads untrained (:func:`shift_reference`); then
    the metrics carry ``head_shift`` (and ``head_shift_ha``), means over ``names`` (§6 v3).
    Returns (metrics, per-class IoU per kind, figure rows)."""
    bg = bg or {"cam": cfg.refine.bg_power, "seed": cfg.refine.bg_power}
    n_cls = len(ext.spec.classes) + 1
    conf = {k: torch.zeros(n_cls, n_cls, dtype=torch.int64) for k in KINDS}
    figure: list = []
    shifts: dict[str, list] = {}
    records: dict[str, dict] = {}       # OT diagnostics per image (kept next to the PNGs to resume)
    if out is not None and (out / OT_IMAGES).exists():
        records = json.loads((out / OT_IMAGES).read_text())
    task = bar.add_task("seeds and pseudo masks", total=len(names), info="") if bar is not None else None
    use_crf = cfg.eval.crf.enabled if crf is None else crf
    with (crf_pool(cfg.eval.workers) if use_crf else None) or nullcontext() as pool:
        for i in range(0, len(names), CHUNK):
            sub = names[i:i + CHUNK]
            if out is not None and all((out / k / f"{n}.png").exists() for n in sub for k in KINDS):
                with data_errors():
                    preds = {k: [read_mask(out / k / f"{n}.png") for n in sub] for k in KINDS}
                    gts = [read_mask(layout.mask_path(n)) for n in sub]
                chunk = load_chunk(cfg, ext, layout, sub, labels, ext.device) if shift_ref is not None else None
            else:
                chunk = load_chunk(cfg, ext, layout, sub, labels, ext.device)
                preds, rows = predict(cfg, model, ext, chunk, bg, use_crf, pool, seed_fn)
                records.update(preds.pop("ot"))
                gts = chunk.gts
                figure.extend(rows[:max(0, cfg.eval.grid_images - len(figure))])
                if out is not None:
                    if records:         # before the PNGs: a finished chunk always has its records
                        write_json(out / OT_IMAGES, records)
                    for k, maps in preds.items():
                        for n, m in zip(sub, maps):
                            write_mask(out / k / f"{n}.png", np.asarray(m).astype(np.uint8))
            for k in KINDS:
                add_confusion(conf[k], preds[k], gts)
            if shift_ref is not None:
                for k, v in chunk_shift(model, shift_ref, chunk).items():
                    shifts.setdefault(k, []).extend(v.tolist())
            if bar is not None:
                bar.update(task, advance=len(sub))
    records = {n: records[n] for n in names if n in records}
    if cfg.ot.debug and out is not None and records:    # the plan's column sums: [background, class 1, ...]
        write_json(out / "ot_columns.json", {n: r["columns"] for n, r in records.items() if "columns" in r})
    metrics: dict = {}
    ious = {}
    for k, c in conf.items():
        m, per_class = miou(c)
        ious[k] = per_class
        metrics[f"{k}_miou"] = 100 * m
        metrics.update({f"{k}_{name}": v for name, v in error_shares(c).items()})
    if not use_crf:
        for key in [k for k in metrics if k.startswith("mask_")]:
            metrics.pop(key)  # without DenseCRF it is the seed again
    metrics.update({f"bg_power_{k}": float(v) for k, v in bg.items() if k in ("cam", "seed")})
    metrics["ot"] = ot_summary(list(records.values()), cfg)
    metrics.update({k: float(np.mean(v)) for k, v in shifts.items()})
    return metrics, ious, figure
