"""Draw ``reports/timings/ablation.png`` for an ablation table already in the tracking store.

``dfa ablation`` draws it itself at the end of a table; this draws it again from the runs
(for a table run before the figure existed, or another benchmark's under ``runs/<name>``)::

    python experiments/ablation_timings.py [--run-id ID] [-S out_root=runs/alt ...] [--out PATH]

Without ``--run-id``: the most recent finished ``ablation`` stage run of the experiment.
The wall time in the title is that run's (start to end).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))      # this checkout's dfa, whatever the environment has installed

from dfa.config import load_config  # noqa: E402
from dfa.stages.ablation_timing import FIGURE, cell_timings, timing_figure  # noqa: E402
from dfa.tracking import client_for  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-id", default=None, help="the ablation stage run (default: the latest finished)")
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="key=value, as for dfa")
    ap.add_argument("--out", default=None, help=f"figure path (default <out_root>/{FIGURE})")
    args = ap.parse_args()
    cfg = load_config("params.yaml", args.overrides)
    client, exp_id = client_for(cfg)
    if args.run_id:
        run = client.get_run(args.run_id)
    else:
        found = client.search_runs([exp_id], "tags.stage = 'ablation' and attributes.status = 'FINISHED'",
                                   max_results=1, order_by=["attributes.start_time DESC"])
        if not found:
            raise SystemExit(f"no finished ablation run in experiment {cfg.tracking.experiment!r}")
        run = found[0]
    total = (run.info.end_time - run.info.start_time) / 1000
    out = Path(args.out) if args.out else cfg.out(FIGURE)
    timing_figure(cell_timings(client, run.info.run_id), total, out, f"dfa ablation on {cfg.data.name}")
    print(f"{out}: run {run.info.run_id}, {total / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
