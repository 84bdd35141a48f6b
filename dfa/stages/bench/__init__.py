"""``dfa bench``: speed of the workbench's hot paths, each measured against a peer in the same run.

Every number is a ratio against something timed in the same process, minutes apart at most,
because on the shared 2-core box absolute times swing up to 10× with contention
(perf-anchors §0); the ratios survive that, the absolute times do not. Peers are timed
round-robin (one call of each, repeated), after a warm-up call of each, so a burst of
contention hits all of them alike. Cells are the median over the repeats, with [min, max]
in ``*_range``; speedups are ratios of medians. ``torch.set_num_threads`` is left at its
default. The load average before and after is recorded in ``machine`` so a contended run
can be recognised.

Entries of ``reports/bench.json``, each measured by one module of this package (the
timing helpers are ``timing``; the targets and the printed table ``report``):

* ``sinkhorn`` (``sinkhorn``): ``dfa.ot.sinkhorn`` vs POT's batched solver (torch) and POT's
  per-problem ``ot.sinkhorn`` (numpy, fp64), same problems, ε, and a fixed 100 iterations (tol 0).
* ``train_step`` (``train_step``; encoder, views and step in ``workload``): a DFA step from
  cached features vs the same step with the frozen encoder online (open_clip ViT-B/16 at
  320 px; a tiny ViT with ``--smoke``).
* ``crf`` (``crf``): DenseCRF serial vs a 2-process spawn pool started per call (as
  ``dfa evaluate``), and vs an already running pool.
* ``pipeline`` (``machine``): wall time and peak RSS of each stage from ``reports/timings/*.json``.
* ``machine`` (``machine``); ``gpu`` (``gpu``, only on CUDA: encoder images/s, training it/s,
  bf16 utilisation).
* ``portable`` (``portable``): the ``train_step`` workload under the default kernels and the two
  portable modes (``DFA_PORTABLE=avx2`` / ``compatible``), each in fresh processes, round-robin:
  what the portable mode costs in time.
* ``search_scaling`` (``search_scaling``): smoke-study trials per minute with 1 and 2 search
  workers on PostgreSQL, and Optuna / MLflow storage overhead per trial on SQLite vs PostgreSQL.
* ``targets`` (``report``): the acceptance targets of the speed issue and whether this run met them.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from dfa.config import Config
from dfa.errors import WorkbenchError
from dfa.io import write_json
from dfa.stages.bench.crf import bench_crf
from dfa.stages.bench.gpu import bench_gpu
from dfa.stages.bench.machine import TIMINGS, machine_info, pipeline_timings
from dfa.stages.bench.report import check_targets, print_table
from dfa.stages.bench.sinkhorn import bench_sinkhorn
from dfa.stages.bench.train_step import bench_train
from dfa.stages.common import seed_everything
from dfa.tracking import stage_run

OUT = Path("reports/bench.json")
SECTIONS = ("sinkhorn", "train_step", "crf", "portable", "gpu", "search_scaling")


def bench(cfg: Config, args=None) -> int:
    """Run the benchmarks (``--only`` picks sections), write the report atomically, print a table.

    The report goes to ``--out`` (default ``reports/bench.json``); sections not run are
    absent from it and their targets read ``measured: null``.
    """
    smoke = bool(cfg.smoke)
    only = getattr(args, "only", None)
    sections = SECTIONS if not only else tuple(x.strip() for x in only.split(",") if x.strip())
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise WorkbenchError(f"dfa bench --only: unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    out_path = Path(getattr(args, "out", None) or cfg.out(OUT))
    seed_everything(cfg.seed)  # threads stay at torch's default on purpose
    with stage_run(cfg, "bench") as run:
        res: dict = {"smoke": smoke, "sections": list(sections), "machine": machine_info()}
        if "sinkhorn" in sections:
            res["sinkhorn"] = bench_sinkhorn(smoke, cfg.ot.epsilon, cfg.ot.tol)
        if "train_step" in sections:
            res["train_step"] = bench_train(cfg, smoke)
        if "crf" in sections:
            res["crf"] = bench_crf(cfg, smoke)
        if "portable" in sections:
            from dfa.stages.bench.portable import bench_portable
            res["portable"] = bench_portable(cfg, smoke)
        if "search_scaling" in sections:
            from dfa.stages.bench.search_scaling import bench_search_scaling
            res["search_scaling"] = bench_search_scaling(cfg, smoke)
        res["pipeline"] = pipeline_timings(cfg.out(TIMINGS))
        if "gpu" in sections:
            if torch.cuda.is_available():
                res["gpu"] = bench_gpu(cfg, smoke, torch.device("cuda"))
                res["gpu"]["sinkhorn"] = bench_sinkhorn(smoke, cfg.ot.epsilon, cfg.ot.tol, torch.device("cuda"))
            else:
                res["gpu"] = {"skipped": "no CUDA device (torch.cuda.is_available() is False)"}
        res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        res["targets"] = check_targets(res)
        write_json(out_path, res)
        run.log_metrics({k: v["measured"] for k, v in res["targets"].items() if v["measured"] is not None})
        run.log_artifact(out_path)
    print_table(res)
    return 0
