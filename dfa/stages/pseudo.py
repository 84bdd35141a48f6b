"""``dfa pseudo``: seeds and pseudo masks on the seed split (method.md §5, §8, §11, §12).

For each image of ``data.seed_split`` (VOC: train, 1,464 images) at the crop view:

- ``cam``: the raw CAM, Ŝ = [s_bg | S] of the present classes, upsampled, background power,
  PAR — the same path as every row, with the identity in place of an affinity;
- ``seed``: the refined CAM of the configured ablation row (or ceiling, §11) with its
  background, after PAR: the pseudo-label Y that training uses;
- ``mask``: DenseCRF on the seed scores.

A row that trains a head also reports ``head_shift`` (§6 v3): how far its Sinkhorn-normalised
affinity moved from the same heads untrained, over the seed split (computed here, where the
split's features are already extracted, not in ``dfa train``).

Every kind's background rule (``refine.bg_power``) is first chosen on ``data.tune_split``
from ``refine.bg_grid`` (§5, §12: a refinement must beat a raw CAM calibrated as well);
``refine.calibrate: false`` keeps ``refine.bg_power``. All kinds are upsampled to the
image's size and scored against its ground truth with one accumulated confusion matrix
each: mIoU and the three error shares of §12. Seed and mask PNGs are written (atomically)
to ``outputs/pseudo/{cam,seed,mask}/``; a re-run with the same model resumes at the first
missing image.
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dfa.config import Config
from dfa.affinity import head_shift
from dfa.crf import crf_labels, crf_pool
from dfa.data.dataset import load_labels
from dfa.data.io import read_image, read_mask, write_mask
from dfa.errors import WorkbenchError
from dfa.features_cache import file_digest, fingerprint
from dfa.io import write_json
from dfa.losses import token_labels
from dfa.metrics import confusion_matrix, error_shares, miou
from dfa.model import TokenScores, decoder_areas, gt_areas
from dfa.stages.common import class_spec, console, data_errors, layout_of, limit, progress, setup, write_metrics
from dfa.stages.report import iou_table, save_grid
from dfa.stages.train import load_trained
from dfa.stages.views import extractor, normalise, square_mask, square_view
from dfa.tracking import stage_run

METRICS = Path("reports/metrics/pseudo.json")
GRID = Path("reports/figures/pseudo_grid.png")
OUTPUTS = Path("outputs/pseudo")
KINDS = ("cam", "seed", "mask")
CHUNK = 16


def crf_params(cfg: Config) -> dict:
    c = cfg.eval.crf
    return dict(iters=c.iters, gauss_sxy=c.gauss_sxy, gauss_compat=c.gauss_compat, bilateral_sxy=c.bilateral_sxy,
                bilateral_srgb=c.bilateral_srgb, bilateral_compat=c.bilateral_compat)


def to_probs(scores: torch.Tensor) -> np.ndarray:
    """(1 + C, H, W) scores (absent classes < 0) → probabilities for the CRF unary."""
    s = scores.clamp_min(0) + 1e-5 * (scores >= 0)
    return (s / s.sum(0, keepdim=True)).numpy()


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


def _at_image_size(scores: torch.Tensor, raw: list[np.ndarray]) -> list[np.ndarray]:
    """(B, K, crop, crop) scores (absent channels < 0) → argmax label map at each image's size.

    Only the kept channels (score ≥ 0 somewhere) are resized; absent ones cannot win."""
    out = []
    for j, im in enumerate(raw):
        kept = torch.nonzero(scores[j].amax(dim=(-2, -1)) >= 0).flatten()
        up = F.interpolate(scores[j:j + 1, kept].float(), size=im.shape[:2], mode="bilinear", align_corners=False)
        out.append(kept[up[0].argmax(0)].cpu().numpy())
    return out


def _add(conf: torch.Tensor, preds: list[np.ndarray], gts: list[np.ndarray]) -> None:
    n = conf.shape[0]
    for p, g in zip(preds, gts):
        conf += confusion_matrix(torch.from_numpy(np.asarray(p, dtype=np.int64)), torch.from_numpy(g.astype(np.int64)), n)


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
            for p, scores in zip(grid_values, model.finish_powers(chunk.image, bg_up, fg_up, valid, grid_values,
                                                                  weight)):
                _add(conf[kind][p], _at_image_size(scores, chunk.raw), chunk.gts)
        if bar is not None:
            bar.update(task, advance=len(chunk.names))
    table = {k: {p: 100 * miou(c)[0] for p, c in v.items()} for k, v in conf.items()}
    best = {k: max(grid_values, key=lambda p: (round(v[p], 6), -abs(np.log(p)))) for k, v in table.items()}
    return {**best, "table": table}


# ------------------------------------------------------------------------------ scoring

@torch.no_grad()
def predict(cfg: Config, model, ext, chunk: Chunk, bg: dict, crf: bool, pool=None, seed_fn=None) -> tuple[dict, list]:
    """Label maps (cam, seed, mask) at each image's size, and the figure rows of the chunk."""
    toks, valid = chunk_tokens(cfg, model, ext, chunk, seed_fn)
    grid = chunk.feats.grid
    cam = model.refine(None, None, valid, chunk.image, grid, tokens=toks["cam"], bg_power=bg["cam"])
    seed = model.refine(None, None, valid, chunk.image, grid, tokens=toks["seed"], bg_power=bg["seed"])
    out = {"cam": _at_image_size(cam.scores, chunk.raw), "seed": _at_image_size(seed.scores, chunk.raw)}
    sums = toks["seed"].column_sums
    if cfg.ot.debug and sums is not None:   # the plan's column sums per image: a collapse shows here
        out["columns"] = [[round(float(v), 6) if ok else None for v, ok in zip(row, keep)]
                          for row, keep in zip(sums.tolist(), valid.tolist())]
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
                row.append(_at_image_size(F.interpolate(m, size=chunk.image.shape[-2:], mode="nearest"),
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
    columns: dict[str, list] = {}
    shifts: dict[str, list] = {}
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
                columns.update(zip(sub, preds.pop("columns", [])))
                gts = chunk.gts
                figure.extend(rows[:max(0, cfg.eval.grid_images - len(figure))])
                if out is not None:
                    for k, maps in preds.items():
                        for n, m in zip(sub, maps):
                            write_mask(out / k / f"{n}.png", np.asarray(m).astype(np.uint8))
            for k in KINDS:
                _add(conf[k], preds[k], gts)
            if shift_ref is not None:
                for k, v in chunk_shift(model, shift_ref, chunk).items():
                    shifts.setdefault(k, []).extend(v.tolist())
            if bar is not None:
                bar.update(task, advance=len(sub))
    if columns and out is not None:
        write_json(out / "ot_columns.json", columns)   # ot.debug: [background, class 1, ...] per image
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
    metrics.update({k: float(np.mean(v)) for k, v in shifts.items()})
    return metrics, ious, figure


def figure_titles(cfg: Config) -> list[str]:
    titles = ["image", "ground truth", "raw CAM"]
    if cfg.ablation.combination == "ot" and cfg.ablation.ceiling != "grid" and cfg.ot.formulation != "reweight":
        titles += ["refined CAM M_r", "OT posterior"]
    return titles + ["seed (after PAR)", "mask (CRF)"]


def pseudo(cfg: Config, args=None) -> int:
    device = setup(cfg)
    spec = class_spec(cfg)
    layout = layout_of(cfg)
    d = cfg.data
    with data_errors():
        names = limit(layout.read_list(d.seed_split), d.max_seed_images)
        tune = limit(layout.read_list(d.tune_split), d.max_seed_images) if cfg.refine.calibrate else []
        labels = load_labels(layout.labels_path())
    if set(tune) & set(names):
        raise WorkbenchError(f"{layout.list_path(d.tune_split)}: shares images with the reported split "
                             f"{d.seed_split}; calibrating there would tune on the reported numbers (method.md §12)")
    model = load_trained(cfg, device)
    ext = extractor(cfg, spec, device)
    out = cfg.out(OUTPUTS)
    with stage_run(cfg, "pseudo_labels") as run, progress() as bar:
        bg = calibrate(cfg, model, ext, layout, tune, labels, bar)
        fp = fingerprint({"model": file_digest(Path(cfg.train.dir) / "model.pt"), "cfg": cfg.flat(),
                          "bg": {k: bg[k] for k in ("cam", "seed")}})
        stamp = out / "fingerprint.json"
        if stamp.exists() and json.loads(stamp.read_text()).get("fp") != fp:
            for f in out.glob("*/*.png"):  # made by another model or params: start over
                f.unlink()
        write_json(stamp, {"fp": fp})
        metrics, ious, figure = score_seeds(cfg, model, ext, layout, names, labels, out, bar, bg=bg,
                                            shift_ref=shift_reference(cfg, model))
        metrics.update(dataset=d.name, split=d.seed_split, images=len(names), ablation_row=cfg.ablation.row,
                       ceiling=cfg.ablation.ceiling, calibrated_on=d.tune_split if cfg.refine.calibrate else None,
                       tune_miou={k: {str(p): round(v, 2) for p, v in t.items()} for k, t in bg["table"].items()})
        write_metrics(cfg, METRICS, metrics)
        save_grid(cfg.out(GRID), figure, figure_titles(cfg))
        table = iou_table(["background", *spec.classes], ious)
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float) and np.isfinite(v)})
        run.log_artifact(cfg.out(GRID))
        run.log_text(table, "per_class_iou.md")
    console.print(table)
    console.print(f"pseudo ({d.name}/{d.seed_split}, row {cfg.ablation.row}"
                  f"{'' if cfg.ablation.ceiling == 'none' else ', ceiling ' + cfg.ablation.ceiling}): raw CAM "
                  f"{metrics['cam_miou']:.1f}, seed {metrics['seed_miou']:.1f}, mask {metrics.get('mask_miou', float('nan')):.1f} mIoU "
                  f"(background power chosen on {d.tune_split}: cam {bg['cam']}, seed {bg['seed']})")
    return 0
