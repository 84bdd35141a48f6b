"""Seed mIoU of one trained model's affinities under OT / background variants (no retraining).

Each variant re-scores the model of TRAIN_DIR with ``-S`` overrides: background power
chosen on the first N ``tune`` images and the seed scored on the same N tune images (a
development probe: nothing here is a reported number). Prints one line per variant.

    python experiments/probes/ot_variants.py checkpoints/dfa 100 "ot.prior=uniform" "ot.prior_mix=0.5;ot.epsilon=0.05"
"""
import sys
import time

from dfa.config import load_config
from dfa.data.dataset import load_labels
from dfa.stages.common import class_spec, layout_of, setup
from dfa.stages.seeds import calibrate, score_seeds
from dfa.stages.training import load_trained
from dfa.stages.views import extractor

train_dir, n, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3:] or [""]
ext = None
for v in variants:
    over = [o for o in v.split(";") if o]
    cfg = load_config("params.yaml", ["tracking.enabled=false", f"train.dir={train_dir}", *over])
    device = setup(cfg)
    spec, layout = class_spec(cfg), layout_of(cfg)
    ext = ext or extractor(cfg, spec, device)
    model = load_trained(cfg, device)
    labels = load_labels(layout.labels_path())
    names = layout.read_list(cfg.data.tune_split)[:n]
    t0 = time.perf_counter()
    bg = calibrate(cfg, model, ext, layout, names, labels)
    m, _, _ = score_seeds(cfg, model, ext, layout, names, labels, crf=False, bg=bg)
    print(f"{v or 'defaults':55s} seed {m['seed_miou']:5.1f} cam {m['cam_miou']:5.1f} | missed {m['seed_missed_fg']:5.1f} "
          f"wrong {m['seed_wrong_class']:5.1f} spill {m['seed_spill_bg']:5.1f} | bg {bg['seed']} ({time.perf_counter() - t0:.0f}s)",
          flush=True)
