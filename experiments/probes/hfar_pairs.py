"""What does HFAR teach A_ha? Pair statistics of trained affinities on ``tune`` (issue 17).

For each ``NAME=ROW:TRAIN_DIR[:key=value,...]`` (``TRAIN_DIR=init`` reads the row's heads
untrained) the model's affinities are computed on the first ``--images`` ``tune`` images and,
with the ground truth's majority label per token, summarised by pair kind:

* ``inv_raw`` (L_r's input, the symmetrised sigmoid of the inverse head) averaged over
  same-class foreground pairs, background–background pairs and foreground–background pairs,
  within L_r's radius (the pairs HFAR trains) and beyond it (the pairs it never sees);
* ``leak``: the E(⊙) read-out's propagation matrix (row 2: Norm(A_la)², row 3:
  Norm(A_la ⊙ A_ha)², before the CAM) — the share of a background token's row mass that
  sits on foreground tokens (what spills a CAM into the background), and of a foreground
  token's mass on background tokens (what dilutes an object), averaged over tokens.

Ground truth is read on ``tune`` only to describe the models; nothing is chosen here.

    python experiments/probes/hfar_pairs.py --images 100 \\
        init3=3:init row3=3:checkpoints/ablation-dfa/3/seed0 \\
        labels=3:checkpoints/ablation-dfa/labels-ceiling/seed0:ablation.ceiling=labels
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from dfa.config import load_config  # noqa: E402
from dfa.losses import radius_mask, token_labels  # noqa: E402
from dfa.refine import product_affinity  # noqa: E402
from dfa.stages.ablation import Context, untrained_model  # noqa: E402
from dfa.stages.seeds import load_chunk  # noqa: E402
from dfa.stages.training import load_trained  # noqa: E402


def masked_mean(x: torch.Tensor, m: torch.Tensor) -> float:
    return float((x * m).sum() / m.sum().clamp_min(1))


@torch.no_grad()
def stats(cfg, model, ctx, names: list[str], batch: int = 20) -> dict:
    acc: dict[str, list[float]] = {}
    for i in range(0, len(names), batch):
        chunk = load_chunk(cfg, ctx.ext, ctx.layout, names[i:i + batch], ctx.labels, ctx.device)
        f = chunk.feats
        y = token_labels(chunk.view_gt, f.grid, model.num_classes, "majority", min_share=0.0)
        ok = y != 255
        fg, bg = ok & (y > 0), ok & (y == 0)
        same = (y[:, :, None] == y[:, None, :]) & fg[:, :, None] & fg[:, None, :]
        bb = bg[:, :, None] & bg[:, None, :]
        cross = (fg[:, :, None] & bg[:, None, :]) | (bg[:, :, None] & fg[:, None, :])
        near = radius_mask(*f.grid, model.sizes(f.grid)["radius"], device=y.device, include_self=False)
        aff = model.affinities(f.attn, f.grid, tokens=f.tokens, heads=f.heads)
        out = {}
        if aff.inv_raw is not None:
            for where, m in (("near", near), ("far", ~near)):
                for kind, k in (("same_fg", same), ("bg_bg", bb), ("fg_bg", cross)):
                    out[f"inv_raw.{kind}.{where}"] = masked_mean(aff.inv_raw, k & m)
        raws = [aff.s_raw] + ([aff.inv_raw] if cfg.ablation.row == 3 and aff.inv_raw is not None else [])
        a = product_affinity(raws, cfg.affinity.sinkhorn_rounds, cfg.affinity.square)
        a = a / a.sum(-1, keepdim=True)
        to_fg = (a * fg[:, None, :]).sum(-1)
        out["leak.bg_to_fg"] = masked_mean(to_fg, bg.float())
        out["leak.fg_to_bg"] = masked_mean(1 - to_fg, fg.float())
        for k, v in out.items():
            acc.setdefault(k, []).append(v)
    return {k: round(sum(v) / len(v), 4) for k, v in acc.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="NAME=ROW:TRAIN_DIR|init[:key=value,...]")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("-S", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    ctx = Context(load_config("params.yaml", args.overrides))
    names = ctx.tune[:args.images]
    for spec in args.models:
        name, rest = spec.split("=", 1)
        row, train_dir, *more = rest.split(":", 2)
        extra = more[0].split(",") if more else []
        cfg = load_config("params.yaml", [*args.overrides, f"ablation.row={row}", *extra]
                          + ([] if train_dir == "init" else [f"train.dir={train_dir}"]))
        model = untrained_model(cfg, ctx) if train_dir == "init" else load_trained(cfg, ctx.device)
        print(json.dumps({"name": name, "row": row, **stats(cfg, model.eval(), ctx, names)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
