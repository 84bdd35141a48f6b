"""How far can the E(⊙) read-out of rows 0–3 go with a better affinity? (issue 10's flat ceilings)

Scores the row-0 read-out (``A = Norm(⊙ A_k)``, squared, ``minmax(A @ CAM)``) with affinities
that need no training, on the reported split as the §11 ceilings do (background power
chosen on ``tune``):

* ``attention``: Norm(mean_K W), row 0 itself (a check: it must equal the table's row 0);
* ``oracle``: the ground truth's same-class matrix at token resolution (1 same, 0 otherwise;
  ignored tokens relate to themselves only): the best any learned affinity could give;
* ``attention∧oracle``: the attention with its cross-class pairs removed (what a head that
  learned the teacher perfectly while keeping the attention's shape would give).

    python experiments/probes/affinity_oracle.py 300 attention oracle attention-and-oracle
"""
import sys
import time

import torch

from dfa.affinity import renormalize_rows
from dfa.cam import minmax_tokens
from dfa.config import load_config
from dfa.data.dataset import load_labels
from dfa.losses import token_labels
from dfa.model import DFA, TokenScores, same_class
from dfa.refine import product_affinity
from dfa.stages.common import class_spec, layout_of, setup
from dfa.stages.seeds import calibrate, score_seeds
from dfa.stages.views import extractor


def oracle_affinity(view_gt: torch.Tensor, grid, num_classes: int) -> torch.Tensor:
    """1 for same-class token pairs, 0 otherwise; an ignored token relates to itself only."""
    same, ok = same_class(token_labels(view_gt, grid, num_classes, "majority", min_share=0.0))
    eye = torch.eye(same.shape[-1], dtype=torch.bool, device=same.device)
    return ((same.bool() & ok) | eye).float()


def seed_fn_for(kind: str, cfg):
    def seed_fn(model, chunk, s_hat, valid):
        f = chunk.feats
        attn = renormalize_rows(f.attn.float()).mean(1)
        oracle = oracle_affinity(chunk.view_gt, f.grid, model.num_classes)
        aff = {"attention": attn, "oracle": oracle + 1e-6, "attention-and-oracle": attn * oracle + 1e-9}[kind]
        a = product_affinity([aff], cfg.affinity.sinkhorn_rounds, cfg.affinity.square)
        fg = minmax_tokens(a @ s_hat[..., 1:]) * valid[:, None, 1:]
        return TokenScores(fg=fg, bg=None)
    return seed_fn


n, kinds = int(sys.argv[1]), sys.argv[2:] or ["attention", "oracle", "attention-and-oracle"]
cfg = load_config("params.yaml", ["tracking.enabled=false", "ablation.row=0"])
device = setup(cfg)
spec, layout = class_spec(cfg), layout_of(cfg)
ext = extractor(cfg, spec, device)
model = DFA(cfg, len(ext.clip.decoder_layers), ext.clip.width, spec.num_classes).to(device).eval()
labels = load_labels(layout.labels_path())
tune = layout.read_list(cfg.data.tune_split)[:n]
train = layout.read_list(cfg.data.seed_split)[:n]
for kind in kinds:
    t0 = time.perf_counter()
    fn = seed_fn_for(kind, cfg)
    bg = calibrate(cfg, model, ext, layout, tune, labels, seed_fn=fn)
    m, _, _ = score_seeds(cfg, model, ext, layout, train, labels, crf=False, bg=bg, seed_fn=fn)
    print(f"{kind:22s} seed {m['seed_miou']:5.1f} (raw CAM {m['cam_miou']:5.1f}) | missed {m['seed_missed_fg']:5.1f} "
          f"wrong {m['seed_wrong_class']:5.1f} spill {m['seed_spill_bg']:5.1f} | bg {bg['seed']} "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)
