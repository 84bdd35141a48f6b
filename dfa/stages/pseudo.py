"""``dfa pseudo``: seeds and pseudo masks on the seed split (method.md §5, §8).

For each image of ``data.seed_split`` (VOC: train, 1,464 images) at the crop view:

- ``cam``: the raw CAM, S of the present classes against (1 − max S)^p;
- ``seed``: the refined CAM of the configured ablation row with its background, after
  PAR: the pseudo-label Y that training uses;
- ``mask``: DenseCRF on the seed scores.

All three are upsampled to the image's size and scored against its ground truth with
one accumulated confusion matrix each. Seed and mask PNGs are written (atomically) to
``outputs/pseudo/{cam,seed,mask}/``; a re-run with the same model resumes at the first missing image.
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dfa.config import Config
from dfa.crf import crf_labels, crf_pool
from dfa.data.dataset import load_labels
from dfa.data.io import read_image, read_mask, write_mask
from dfa.features_cache import file_digest, fingerprint
from dfa.io import write_json
from dfa.metrics import confusion_matrix, miou
from dfa.refine import cams_to_label
from dfa.stages.common import class_spec, console, data_errors, layout_of, limit, progress, setup, write_metrics
from dfa.stages.report import save_grid, iou_table
from dfa.stages.train import load_trained
from dfa.stages.views import extractor, normalise, square_view
from dfa.tracking import stage_run

METRICS = Path("reports/metrics/pseudo.json")
GRID = Path("reports/figures/pseudo_grid.png")
OUTPUTS = Path("outputs/pseudo")


def crf_params(cfg: Config) -> dict:
    c = cfg.eval.crf
    return dict(iters=c.iters, gauss_sxy=c.gauss_sxy, gauss_compat=c.gauss_compat, bilateral_sxy=c.bilateral_sxy,
                bilateral_srgb=c.bilateral_srgb, bilateral_compat=c.bilateral_compat)


def to_probs(scores: torch.Tensor) -> np.ndarray:
    """(1 + C, H, W) scores (absent classes < 0) → probabilities for the CRF unary."""
    s = scores.clamp_min(0) + 1e-5 * (scores >= 0)
    return (s / s.sum(0, keepdim=True)).numpy()


def score_seeds(cfg: Config, model, ext, layout, names: list[str], labels: dict, out: Path | None = None,
                bar=None, crf: bool | None = None) -> tuple[dict, dict, list]:
    """mIoU (percent) of cam / seed / mask over ``names``; PNGs under ``out`` (resumable).

    Returns (metrics, per-class IoU per kind, grid rows for the figure).
    """
    n_cls = len(ext.spec.classes) + 1
    conf = {k: torch.zeros(n_cls, n_cls, dtype=torch.int64) for k in ("cam", "seed", "mask")}
    grid_rows: list = []
    task = bar.add_task("seeds and pseudo masks", total=len(names), info="") if bar is not None else None
    use_crf = cfg.eval.crf.enabled if crf is None else crf
    with (crf_pool(cfg.eval.workers) if use_crf else None) or nullcontext() as pool:
        for i in range(0, len(names), 16):
            _score_chunk(cfg, model, ext, layout, names[i:i + 16], labels, out, use_crf, pool, conf, grid_rows)
            if bar is not None:
                bar.update(task, advance=len(names[i:i + 16]))
    scores = {k: miou(c) for k, c in conf.items()}
    metrics = {f"{k}_miou": 100 * v[0] for k, v in scores.items()}
    return metrics, {k: v[1] for k, v in scores.items()}, grid_rows


def _score_chunk(cfg, model, ext, layout, sub, labels, out, use_crf, pool, conf, grid_rows) -> None:
    """Predict (or read back) one chunk of images and add it to the confusion matrices."""
    with data_errors():
        raw = [read_image(layout.image_path(n)) for n in sub]
        gts = [read_mask(layout.mask_path(n)) for n in sub]
    if out is not None and all((out / k / f"{n}.png").exists() for n in sub for k in conf):
        preds = {k: [read_mask(out / k / f"{n}.png") for n in sub] for k in conf}
    else:
        preds = predict(cfg, model, ext, raw, [labels[n] for n in sub], cfg.data.crop_size, ext.device,
                        use_crf, pool)
        if out is not None:
            for k, maps in preds.items():
                for n, m in zip(sub, maps):
                    write_mask(out / k / f"{n}.png", m.astype(np.uint8))
    for k in conf:
        for p, g in zip(preds[k], gts):
            conf[k] += confusion_matrix(torch.from_numpy(p.astype(np.int64)),
                                        torch.from_numpy(g.astype(np.int64)), len(conf["cam"]))
    for j in range(min(len(sub), cfg.eval.grid_images - len(grid_rows))):
        grid_rows.append([raw[j], gts[j], preds["cam"][j], preds["seed"][j], preds["mask"][j]])


def pseudo(cfg: Config, args=None) -> int:
    device = setup(cfg)
    spec = class_spec(cfg)
    layout = layout_of(cfg)
    with data_errors():
        names = limit(layout.read_list(cfg.data.seed_split), cfg.data.max_seed_images)
        labels = load_labels(layout.labels_path())
    model = load_trained(cfg, device)
    ext = extractor(cfg, spec, device)
    out = cfg.out(OUTPUTS)
    fp = fingerprint({"model": file_digest(Path(cfg.train.dir) / "model.pt"), "cfg": cfg.flat()})
    stamp = out / "fingerprint.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("fp") != fp:
        for f in out.glob("*/*.png"):  # made by another model or params: start over
            f.unlink()
    write_json(stamp, {"fp": fp})
    with stage_run(cfg, "pseudo_labels") as run, progress() as bar:
        metrics, ious, grid_rows = score_seeds(cfg, model, ext, layout, names, labels, out, bar)
        metrics.update(dataset=cfg.data.name, split=cfg.data.seed_split, images=len(names),
                       ablation_row=cfg.ablation.row)
        write_metrics(cfg, METRICS, metrics)
        save_grid(cfg.out(GRID), grid_rows, ["image", "ground truth", "raw CAM", "refined CAM (seed)", "pseudo mask"])
        table = iou_table(["background", *spec.classes], ious)
        run.log_metrics({k: v for k, v in metrics.items() if k.endswith("miou")})
        run.log_artifact(cfg.out(GRID))
        run.log_text(table, "per_class_iou.md")
    console.print(table)
    console.print(f"pseudo ({cfg.data.name}/{cfg.data.seed_split}, row {cfg.ablation.row}): raw CAM "
                  f"{metrics['cam_miou']:.1f}, seed {metrics['seed_miou']:.1f}, mask {metrics['mask_miou']:.1f} mIoU")
    return 0


@torch.no_grad()
def predict(cfg: Config, model, ext, raw: list[np.ndarray], labels: list[np.ndarray], crop: int,
            device, crf: bool | None = None, pool=None) -> dict[str, list[np.ndarray]]:
    """Label maps (cam, seed, mask) at each image's own size."""
    views = np.stack([square_view(im, crop) for im in raw])
    image = normalise(views, cfg).to(device)
    present = torch.tensor(np.stack(labels) > 0, device=device)
    f = ext(image, present)
    aff = model.affinities(f.attn, f.grid)
    refined = model.refine(aff, f.sim, f.sim_bg, present, image, f.grid)
    cam = f.sim.transpose(1, 2).reshape(len(raw), -1, *f.grid) * present[:, :, None, None]
    cam = F.interpolate(cam, size=(crop, crop), mode="bilinear", align_corners=False).clamp(0, 1)
    cam_scores = cams_to_label(cam, present, cfg.refine.bg_power, invalid_value=-1.0)
    out: dict[str, list[np.ndarray]] = {"cam": [], "seed": [], "mask": []}
    crf_items = []
    for j, im in enumerate(raw):
        size = im.shape[:2]
        up = lambda s: F.interpolate(s[j:j + 1].float(), size=size, mode="bilinear", align_corners=False)[0].cpu()  # noqa: E731
        out["cam"].append(up(cam_scores).argmax(0).numpy())
        seed = up(refined.scores)
        out["seed"].append(seed.argmax(0).numpy())
        crf_items.append((im, to_probs(seed)))
    if (cfg.eval.crf.enabled if crf is None else crf):
        out["mask"] = crf_labels(crf_items, workers=cfg.eval.workers, pool=pool, **crf_params(cfg))
    else:
        out["mask"] = list(out["seed"])
    return out
