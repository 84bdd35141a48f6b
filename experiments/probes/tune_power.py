"""Seed mIoU on ``tune`` of trained models, over a background-power grid (tune only, issue 17).

For each ``NAME=ROW:TRAIN_DIR[:key=value,...]`` the model of ``TRAIN_DIR/model.pt`` is read
with ``ablation.row=ROW`` (and the overrides), its seeds are scored on the whole ``tune``
split at every power of ``--grid`` (``dfa.stages.seeds.calibrate``, as every table cell
chooses its power) and one JSON line is printed: the best power, its tune seed mIoU and the
whole curve. Nothing is scored on ``train`` or ``val``: usable to choose. The best value is
chosen on the images it is scored on, so it overstates a model by about 1 (README, Choices);
compare models with each other, not with a table.

    # was the grid's top (4) too low for the rows that chose it? (reports/benchmark.md)
    python experiments/probes/tune_power.py --grid 0.5,1,2,3,4,5.6,8,11,16,23 \\
        row2=2:checkpoints/ablation-dfa/2/seed0 row3=3:checkpoints/ablation-dfa/3/seed0
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from dfa.config import load_config  # noqa: E402
from dfa.stages.ablation import Context  # noqa: E402
from dfa.stages.seeds import calibrate  # noqa: E402
from dfa.stages.training import load_trained  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="NAME=ROW:TRAIN_DIR[:key=value,...]")
    ap.add_argument("--grid", default=None, help="comma-separated powers (default refine.bg_grid)")
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="key=value for every model")
    args = ap.parse_args()
    grid = [f"refine.bg_grid=[{args.grid}]"] if args.grid else []
    ctx = Context(load_config("params.yaml", [*args.overrides, *grid]))
    for spec in args.models:
        name, rest = spec.split("=", 1)
        row, train_dir, *more = rest.split(":", 2)
        extra = more[0].split(",") if more else []
        cfg = load_config("params.yaml", [*args.overrides, *grid, f"ablation.row={row}",
                                          f"train.dir={train_dir}", *extra])
        table = calibrate(cfg, load_trained(cfg, ctx.device), ctx.ext, ctx.layout, ctx.tune, ctx.labels)["table"]
        curve = table["seed"]
        best = max(curve, key=curve.get)
        print(json.dumps({"name": name, "row": row, "train_dir": train_dir, "best_power": best,
                          "tune_seed_miou": round(curve[best], 2),
                          "curve": {str(p): round(v, 2) for p, v in curve.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
