"""How much of row 3's score does A_ha cost? Row 3's E(⊙) with A_ha raised to γ, on ``tune`` (issue 17).

Re-scores one trained row-3 model with ``Norm(A_la ⊙ A_ha^γ)²`` in place of its product:
γ = 1 is row 3 itself, γ = 0 drops A_ha (row 3's jointly trained A_la alone, what row 2's
read-out would give with row 3's heads), values between soften A_ha. For each γ the seed
mIoU on the whole ``tune`` split at its best background power is printed (tune only, as
``tune_power.py``: the best power is chosen on the images it is scored on).

    python experiments/probes/ha_gamma.py checkpoints/ablation-dfa/3/seed0 --gammas 0,0.5,1
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from dfa.cam import minmax_tokens  # noqa: E402
from dfa.config import load_config  # noqa: E402
from dfa.model import TokenScores  # noqa: E402
from dfa.refine import product_affinity  # noqa: E402
from dfa.stages.ablation import Context  # noqa: E402
from dfa.stages.seeds import calibrate  # noqa: E402
from dfa.stages.training import load_trained  # noqa: E402


def seed_fn_for(gamma: float, cfg):
    def seed_fn(model, chunk, s_hat, valid):
        f = chunk.feats
        aff = model.affinities(f.attn, f.grid, tokens=f.tokens, heads=f.heads)
        affs = [aff.s_raw] + ([aff.inv_raw.clamp_min(1e-6) ** gamma] if gamma else [])
        a = product_affinity(affs, cfg.affinity.sinkhorn_rounds, cfg.affinity.square)
        return TokenScores(fg=minmax_tokens(a @ s_hat[..., 1:]) * valid[:, None, 1:], bg=None)
    return seed_fn


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("train_dir")
    ap.add_argument("--gammas", default="0,0.5,1")
    ap.add_argument("-S", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config("params.yaml", [*args.overrides, "ablation.row=3", f"train.dir={args.train_dir}"])
    if cfg.cam.background != "residual":
        raise SystemExit("ha_gamma.py reads the residual background only (cam.background=residual)")
    ctx = Context(cfg)
    model = load_trained(cfg, ctx.device)
    for g in (float(x) for x in args.gammas.split(",")):
        curve = calibrate(cfg, model, ctx.ext, ctx.layout, ctx.tune, ctx.labels, seed_fn=seed_fn_for(g, cfg))["table"]["seed"]
        best = max(curve, key=curve.get)
        print(json.dumps({"train_dir": args.train_dir, "gamma": g, "best_power": best,
                          "tune_seed_miou": round(curve[best], 2)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
