"""Seed mIoU of a trained checkpoint under params variants (";"-separated -S overrides per variant).

Usage: python experiments/probes/rows.py N_IMAGES "train.dir=checkpoints/try2;ablation.row=2" "train.dir=...;ablation.row=0"
(reports/benchmark.md, "What the refinement steps do here").
"""
import sys, torch, numpy as np
from dfa.config import load_config
from dfa.stages.common import class_spec, layout_of
from dfa.stages.views import extractor
from dfa.stages.pseudo import score_seeds
from dfa.stages.train import load_trained
from dfa.data.dataset import load_labels
n = int(sys.argv[1]); variants = sys.argv[2:]
for v in variants:
    ov = ["tracking.enabled=false"] + [x for x in v.split(";") if x]
    cfg = load_config("params.yaml", ov)
    spec = class_spec(cfg); lay = layout_of(cfg)
    ext = extractor(cfg, spec, "cpu"); model = load_trained(cfg, "cpu")
    m, _, _ = score_seeds(cfg, model, ext, lay, lay.read_list("train")[:n], load_labels(lay.labels_path()), crf=False)
    print(v, {k: round(x, 1) for k, x in m.items() if k != "mask_miou"}, flush=True)
