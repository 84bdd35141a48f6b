"""``dfa evaluate``: the decoder on ``data.eval_split`` with multi-scale + flip and DenseCRF.

Inference (method.md §6, :mod:`dfa.stages.segment`): each scale s of ``eval.scales`` views the image at
round(crop·s / patch)·patch square, with and without a horizontal flip; the decoder's
softmax is upsampled to the image's size and averaged; DenseCRF (``eval.crf``) refines it,
spread over ``eval.workers`` spawn processes. Writes ``reports/metrics/eval.json``
(``seg_miou``, ``seg_crf_miou``) and a per-class IoU table (markdown and CSV).
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from dfa.config import Config
from dfa.crf import crf_labels, crf_pool
from dfa.data.io import read_image, read_mask
from dfa.io import write_text
from dfa.metrics import confusion_matrix, miou
from dfa.stages.common import (class_spec, console, crf_params, data_errors, layout_of, limit, progress, setup,
                               write_metrics)
from dfa.stages.report import iou_table, save_grid
from dfa.stages.segment import segment_probs
from dfa.stages.training import load_trained
from dfa.stages.views import extractor
from dfa.tracking import stage_run

METRICS = Path("reports/metrics/eval.json")
TABLE = Path("reports/eval_per_class.md")
TABLE_CSV = Path("reports/eval_per_class.csv")
GRID = Path("reports/figures/eval_grid.png")


def evaluate(cfg: Config, args=None) -> int:
    device = setup(cfg)
    spec = class_spec(cfg)
    layout = layout_of(cfg)
    with data_errors():
        names = limit(layout.read_list(cfg.data.eval_split), cfg.data.max_eval_images)
    model = load_trained(cfg, device)
    ext = extractor(cfg, spec, device)
    n_cls = spec.num_classes
    conf = {k: torch.zeros(n_cls, n_cls, dtype=torch.int64) for k in ("seg", "seg_crf")}
    rows = []
    pool = crf_pool(cfg.eval.workers) if cfg.eval.crf.enabled else None
    with stage_run(cfg, "evaluate") as run, progress() as bar, (pool or nullcontext()):
        task = bar.add_task("evaluate (multi-scale + flip)", total=len(names), info="")
        chunk = max(2, 4 * cfg.eval.workers)
        for i in range(0, len(names), chunk):
            sub = names[i:i + chunk]
            with data_errors():
                images = [read_image(layout.image_path(n)) for n in sub]
                gts = [read_mask(layout.mask_path(n)) for n in sub]
            probs = [segment_probs(cfg, model, ext, im, device) for im in images]
            preds = [p.argmax(0).numpy() for p in probs]
            crf = (crf_labels([(im, p.numpy()) for im, p in zip(images, probs)], workers=cfg.eval.workers,
                              pool=pool, **crf_params(cfg)) if cfg.eval.crf.enabled else preds)
            for p, c, g in zip(preds, crf, gts):
                gt = torch.from_numpy(g.astype(np.int64))
                conf["seg"] += confusion_matrix(torch.from_numpy(p), gt, n_cls)
                conf["seg_crf"] += confusion_matrix(torch.from_numpy(np.asarray(c, dtype=np.int64)), gt, n_cls)
            for j in range(min(len(sub), cfg.eval.grid_images - len(rows))):
                rows.append([images[j], gts[j], preds[j], np.asarray(crf[j])])
            bar.update(task, advance=len(sub))
        scores = {k: miou(c) for k, c in conf.items()}
        metrics = {"seg_miou": 100 * scores["seg"][0], "seg_crf_miou": 100 * scores["seg_crf"][0],
                   "dataset": cfg.data.name, "split": cfg.data.eval_split, "images": len(names),
                   "scales": cfg.eval.scales, "flip": cfg.eval.flip, "crf": cfg.eval.crf.enabled}
        metrics["per_class_iou"] = {c: (None if np.isnan(float(v)) else 100 * float(v))
                                    for c, v in zip(["background", *spec.classes], scores["seg_crf"][1])}
        table = iou_table(["background", *spec.classes], {k: v[1] for k, v in scores.items()})
        write_metrics(cfg, METRICS, metrics)
        write_text(cfg.out(TABLE), table)
        csv = "class,seg_iou,seg_crf_iou\n" + "".join(
            f"{c},{100 * float(a):.2f},{100 * float(b):.2f}\n"
            for c, a, b in zip(["background", *spec.classes], scores["seg"][1], scores["seg_crf"][1]))
        write_text(cfg.out(TABLE_CSV), csv)
        save_grid(cfg.out(GRID), rows, ["image", "ground truth", "decoder", "decoder + CRF"])
        run.log_metrics({"seg_miou": metrics["seg_miou"], "seg_crf_miou": metrics["seg_crf_miou"]})
        for path in (TABLE, TABLE_CSV, GRID):
            run.log_artifact(cfg.out(path))
    console.print(table)
    console.print(f"evaluate ({cfg.data.name}/{cfg.data.eval_split}): decoder {metrics['seg_miou']:.1f}, "
                  f"+ CRF {metrics['seg_crf_miou']:.1f} mIoU")
    return 0
