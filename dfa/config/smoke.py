"""``--smoke``: seconds, not minutes (tests and CI). The sizes it shrinks, and the paths it moves
under ``smoke/`` so that checking an install never touches a real run's results.
"""
from __future__ import annotations

from pathlib import Path

SMOKE_OVERRIDES = {
    # --smoke: seconds, not minutes (tests and CI); everything else unchanged.
    "data.synthetic.num_train_aug": 48,
    "data.synthetic.num_train": 16,
    "data.synthetic.num_tune": 12,
    "data.synthetic.num_val": 12,
    "data.crop_size": 64,
    "data.synthetic.num_pretrain": 64,
    "data.max_seed_images": 16,
    "data.max_eval_images": 8,
    "pretrain.width": 64,
    "pretrain.layers": 2,
    "pretrain.heads": 2,
    "pretrain.embed_dim": 64,
    "pretrain.text_width": 64,
    "pretrain.text_layers": 1,
    "pretrain.steps": 20,
    "pretrain.batch_size": 16,
    "pretrain.warmup": 5,
    "clip.last_k": 2,
    "decoder.width": 32,
    "decoder.layers": 1,
    "decoder.heads": 2,
    "train.steps": 12,
    "train.batch_size": 2,
    "train.warmup": 2,
    "train.checkpoint_interval": 5,
    "eval.scales": [1.0, 1.2],
    "eval.grid_images": 2,
    "search.train_steps": 6,
    "search.report_every": 3,
    "refine.par_iters": 5,
    "refine.bg_grid": [0.5, 1.0, 2.0],
    "ablation.seeds": [0, 1],
}


# --smoke writes under smoke/ only, mirroring the normal layout, and logs to its own MLflow
# experiment (``<tracking.experiment>-smoke``), so checking an install never touches a real
# run's results. What the pipeline derives from the data goes there for every dataset ...
SMOKE_ROOT = Path("smoke")
SMOKE_PATHS = {
    "cache.dir": "smoke/cache/features",
    "train.dir": "smoke/checkpoints/dfa",
    "search.storage": "sqlite:///smoke/optuna.db",
}
# ... and on the embedded benchmark the dataset and the small CLIP are made by the pipeline
# too. A real dataset (voc, coco, custom) and its CLIP are inputs: read where they are.
SMOKE_SYNTHETIC_PATHS = {
    "data.root": "smoke/data/synthetic",
    "clip.checkpoint": "smoke/checkpoints/clip/model.pt",
}
