"""Training-free rows on the embedded benchmark at several crops (issue 10: which grid).

For each crop: the raw CAM, row 0 (untrained attention E(⊙)), row 1 (+ the untrained
inverse head), the ``features`` reference row and the ``grid`` ceiling, each with its
background power chosen on ``tune`` and scored on the first N ``train`` images (seed mIoU,
error shares). Needs ``dfa prepare`` and ``dfa pretrain-clip``; no training. Extra
``-S key=value`` overrides apply to every row (e.g. ``clip.similarity=maskclip``).

    python experiments/probes/grid.py 64,128,160 300
    python experiments/probes/grid.py 128 300 cam,0 -S clip.similarity=maskclip
"""
import json
import sys
import time

import torch

from dfa.config import load_config
from dfa.data.dataset import load_labels
from dfa.model import DFA
from dfa.stages.ablation import features_tokens
from dfa.stages.common import class_spec, layout_of, setup
from dfa.stages.seeds import calibrate, score_seeds
from dfa.stages.views import extractor

args = sys.argv[1:]
overrides = [args[i + 1] for i, a in enumerate(args) if a == "-S"]
args = [a for i, a in enumerate(args) if a != "-S" and (i == 0 or args[i - 1] != "-S")]
crops = [int(c) for c in args[0].split(",")]
n = int(args[1]) if len(args) > 1 else 300
wanted = args[2].split(",") if len(args) > 2 else ["cam", "0", "1", "features", "grid"]
ROWS = {"cam": [], "0": ["ablation.row=0"], "1": ["ablation.row=1"], "features": ["ablation.row=0"],
        "grid": ["ablation.ceiling=grid"]}
out = {}
for crop in crops:
    for row in wanted:
        extra = ROWS[row]
        cfg = load_config("params.yaml", [f"data.crop_size={crop}", "tracking.enabled=false", *extra, *overrides])
        device = setup(cfg)
        spec = class_spec(cfg)
        layout = layout_of(cfg)
        ext = extractor(cfg, spec, device)
        model = DFA(cfg, len(ext.clip.decoder_layers), ext.clip.width, spec.num_classes).eval()
        labels = load_labels(layout.labels_path())
        tune, train = layout.read_list("tune")[:n], layout.read_list("train")[:n]
        fn = features_tokens(cfg) if row == "features" else None
        t0 = time.perf_counter()
        bg = calibrate(cfg, model, ext, layout, tune, labels, seed_fn=fn)
        m, _, _ = score_seeds(cfg, model, ext, layout, train, labels, crf=False, bg=bg, seed_fn=fn)
        kind = "cam" if row == "cam" else "seed"
        res = {k.split("_", 1)[1]: round(v, 2) for k, v in m.items() if k.startswith(kind + "_")}
        res["bg_power"] = bg[kind]
        res["s"] = round(time.perf_counter() - t0, 1)
        out[f"{crop}/{row}"] = res
        print(crop, row, res, flush=True)
print(json.dumps(out, indent=1))
