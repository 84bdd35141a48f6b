"""``python -m dfa <command>``: parse, apply overrides, dispatch to ``dfa.stages``.

Every command reads ``params.yaml`` (``--params``), takes repeatable ``-S key=value``
overrides and ``--smoke``. Expected failures (bad params, bad data, a NaN loss) print one
line naming the key or file and exit non-zero, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# 2-thread torch slows 9-18x beside another busy process without this (perf-anchors §0).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

COMMANDS = {
    "prepare": ("dfa.stages.prepare", "generate the embedded benchmark or validate a real dataset"),
    "check-data": ("dfa.stages.prepare", "validate a dataset tree (VOC layout; the kind is guessed unless --kind)"),
    "pretrain-clip": ("dfa.stages.pretrain_clip", "pretrain the embedded benchmark's small CLIP"),
    "cache": ("dfa.stages.cache", "cache frozen-CLIP features for training"),
    "train": ("dfa.stages.train", "train the DFA affinity heads and decoder"),
    "pseudo": ("dfa.stages.pseudo", "seeds and pseudo masks on the seed split"),
    "evaluate": ("dfa.stages.evaluate", "segmentation mIoU with multi-scale, flip and DenseCRF"),
    "search": ("dfa.stages.search", "an Optuna study over a search space in experiments/"),
    "ablation": ("dfa.stages.ablation", "the ablation table: rows 0-4, references and ceilings over seeds"),
    "bench": ("dfa.stages.bench", "speed benchmarks against peers, written to reports/bench.json"),
    "config": ("dfa.stages.show_config", "print the resolved params, each value with its source (default, "
                                         "study:NAME, profile:NAME, smoke, override)"),
    "ui": ("dfa.stages.ui", "serve MLflow's UI on the tracking store; prints the runs table's URL"),
    "dashboard": ("dfa.stages.ui", "serve optuna-dashboard on the study storage (search.storage)"),
}
SERVER_PORTS = {"ui": 5000, "dashboard": 8080}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    common.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a dotted params key (repeatable)")
    common.add_argument("--smoke", action="store_true", help="tiny data, model and steps (seconds)")
    common.add_argument("--profile", default=None, metavar="NAME",
                        help="a dataset profile, experiments/profiles/NAME.yaml (voc, coco; method.md §13): "
                             "above the params file, below -S (as -S profile=NAME)")
    common.add_argument("--portable", action="store_true",
                        help="pin torch's, MKL's and oneDNN's kernel paths to AVX2 (as DFA_PORTABLE=1; "
                             "README, Reproducibility)")
    parser = argparse.ArgumentParser(prog="dfa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, parents=[common], help=help_text)
        if name == "check-data":
            p.add_argument("root", help="dataset root")
            p.add_argument("--kind", default=None,
                           help="voc | coco | synthetic | custom (default: guessed from the tree, and said)")
            p.add_argument("--split", action="append", default=None, help="split(s) to check")
            p.add_argument("--no-counts", action="store_true",
                           help="do not require the official image counts of voc/coco (a subset, a rehearsal tree)")
        if name == "search":
            p.add_argument("--space", required=True, help="search space YAML (experiments/*.yaml)")
            p.add_argument("--study", required=True, help="study name")
            p.add_argument("--n-trials", type=int, default=10, help="trials of this run, split over the workers")
            p.add_argument("--workers", type=int, default=1,
                           help="worker processes on the study (PostgreSQL search.storage for more than a few)")
            p.add_argument("--prepare", action="store_true",
                           help="run the missing prepare / pretrain-clip / cache stages before the study")
            p.add_argument("--rescore", type=int, default=0, metavar="TOP_N",
                           help="after the trials, re-train the top N complete trials and the params' own setting "
                                "over --rescore-seeds and score them on all of tune (method.md §12 v3)")
            p.add_argument("--rescore-seeds", default="0,1,2", help="seeds of --rescore (default 0,1,2)")
        if name == "ablation":
            p.add_argument("--rows", default="0,1,2,3,4", help="comma-separated rows")
            p.add_argument("--seeds", default=None, help="comma-separated seeds (default ablation.seeds)")
            p.add_argument("--ceilings", default=None,
                           help="comma-separated ceiling rows: teacher,labels,areas,grid (default all; '' none)")
            p.add_argument("--name", default=None,
                           help="report name: reports/NAME.{md,csv}, reports/figures/NAME.png (default ablation)")
            p.add_argument("--references", default=None,
                           help="reference rows: comma-separated cam,features,untrained (the trained rows with "
                                "their heads at init, k-init; default all three)")
            p.add_argument("--no-references", action="store_true",
                           help="leave out every reference row (raw CAM, features, untrained heads)")
            p.add_argument("--decoder-rows", default="4",
                           help="rows whose trained cells also score their decoder on the eval split "
                                "(multi-scale + flip; ~100 s a cell on 2 cores): comma-separated rows, "
                                "'all' or '' (default 4)")
        if name == "bench":
            p.add_argument("--only", default=None,
                           help="comma-separated sections (sinkhorn,train_step,crf,gpu,search_scaling; default all)")
            p.add_argument("--out", default=None, help="report path (default reports/bench.json)")
        if name == "config":
            p.add_argument("--format", choices=("tree", "yaml"), default="tree",
                           help="tree: rich tree with sources (default); yaml: plain YAML that --params reads back")
        if name in SERVER_PORTS:
            p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
            p.add_argument("--port", type=int, default=SERVER_PORTS[name],
                           help=f"port (default {SERVER_PORTS[name]})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The kernel pins act only if they are in the environment before torch loads (dfa.kernels).
    from dfa.kernels import PortableError, apply_portable, portable_level
    try:
        level = portable_level(os.environ.get("DFA_PORTABLE")) or ("avx2" if args.portable else None)
        if level:
            apply_portable(level)
    except PortableError as exc:
        print(f"dfa {args.command}: error: {exc}", file=sys.stderr)
        return 2
    from dfa.config import ConfigError, load_config
    if args.profile:  # as an override, so the commands that reload params per cell or trial keep it
        args.overrides = [f"profile={args.profile}", *args.overrides]
    from dfa.errors import WorkbenchError

    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        cfg = load_config(args.params, args.overrides, smoke=args.smoke)
        entry = getattr(module, args.command.replace("-", "_"))
        return int(entry(cfg, args) or 0)
    except (ConfigError, WorkbenchError) as exc:
        print(f"dfa {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only folder, a full disk: name the file, keep the rest intact
        print(f"dfa {args.command}: error: {exc.strerror or exc} ({exc.filename or 'no file name'})", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        detail = f": {exc}" if str(exc) else ""
        print(f"dfa {args.command}: interrupted{detail}", file=sys.stderr)
        return 130
