"""``dfa train``: single-stage DFA training (method.md §6), the loop of
:mod:`dfa.stages.training`; writes the metrics and the loss curve.
"""
from __future__ import annotations

import csv
from pathlib import Path

from dfa.config import Config
from dfa.io import write_text
from dfa.stages.common import console, write_metrics
from dfa.stages.training import fit
from dfa.tracking import stage_run

METRICS = Path("reports/metrics/train.json")
CURVE = Path("reports/plots/train_curve.csv")


def train(cfg: Config, args=None) -> int:
    with stage_run(cfg, "train") as run:
        result = fit(cfg, run)
        metrics = {k: v for k, v in result.items() if k != "curve"}
        write_metrics(cfg, METRICS, metrics)
        write_curve(result["curve"], cfg.out(CURVE))
        run.log_metrics({"final_loss": metrics["final_loss"] or 0.0})
        run.log_artifact(cfg.out(CURVE))
    console.print(f"trained {cfg.train.steps} steps → {Path(cfg.train.dir) / 'model.pt'} "
                  f"(digest {metrics['state_digest'][:12]})")
    return 0


def write_curve(curve: list[dict], path: Path = CURVE) -> None:
    if not curve:
        return
    import io
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(curve[0]))
    w.writeheader()
    w.writerows(curve)
    write_text(path, buf.getvalue())
