"""``dfa pseudo``: seeds and pseudo masks on the seed split (method.md §5, §8, §11, §12).

For each image of ``data.seed_split`` (VOC: train, 1,464 images) at the crop view:

- ``cam``: the raw CAM, Ŝ = [s_bg | S] of the present classes, upsampled, background power,
  PAR — the same path as every row, with the identity in place of an affinity;
- ``seed``: the refined CAM of the configured ablation row (or ceiling, §11) with its
  background, after PAR: the pseudo-label Y that training uses;
- ``mask``: DenseCRF on the seed scores.

Rows with an OT step also report how the transport went (method.md §5): per image the
row-marginal error, the column error, the iterations, convergence and whether a present
class won no token of the posterior (seed collapse); their summary is ``ot`` in
``reports/metrics/pseudo.json`` for every run, the per-image records are kept in
``outputs/pseudo/ot_images.json`` (with ``ot.debug`` also every column's plan sum, prior b
and argmax area, and the legacy column sums in ``ot_columns.json``).

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
from pathlib import Path

import numpy as np

from dfa.config import Config
from dfa.data.dataset import load_labels
from dfa.errors import WorkbenchError
from dfa.features_cache import file_digest, fingerprint
from dfa.io import write_json
from dfa.stages.common import class_spec, console, data_errors, layout_of, limit, progress, setup, write_metrics
from dfa.stages.report import iou_table, save_grid
from dfa.stages.seeds import OT_IMAGES, calibrate, score_seeds, shift_reference
from dfa.stages.training import load_trained
from dfa.stages.views import extractor
from dfa.tracking import stage_run

METRICS = Path("reports/metrics/pseudo.json")
GRID = Path("reports/figures/pseudo_grid.png")
OUTPUTS = Path("outputs/pseudo")


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
            for f in [*out.glob("*/*.png"), out / OT_IMAGES]:  # made by another model or params: start over
                f.unlink(missing_ok=True)
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
        run.log_metrics({f"ot_{k}": float(v) for k, v in (metrics["ot"] or {}).items() if np.isfinite(v)})
        run.log_artifact(cfg.out(GRID))
        run.log_text(table, "per_class_iou.md")
    console.print(table)
    console.print(f"pseudo ({d.name}/{d.seed_split}, row {cfg.ablation.row}"
                  f"{'' if cfg.ablation.ceiling == 'none' else ', ceiling ' + cfg.ablation.ceiling}): raw CAM "
                  f"{metrics['cam_miou']:.1f}, seed {metrics['seed_miou']:.1f}, mask {metrics.get('mask_miou', float('nan')):.1f} mIoU "
                  f"(background power chosen on {d.tune_split}: cam {bg['cam']}, seed {bg['seed']})")
    return 0
