"""``dfa prepare`` and ``dfa check-data``.

prepare: for ``data.name: synthetic`` generate the embedded benchmark into ``data.root``
(idempotent; regenerated when its parameters change); for voc/coco/custom validate the
existing tree with the checker and stop with one line per problem if it is bad.
"""
from __future__ import annotations

from pathlib import Path

from dfa.config import Config
from dfa.data import checker, download, synthetic
from dfa.data.layout import Layout
from dfa.data.splits import ensure_tune
from dfa.errors import WorkbenchError
from dfa.stages.common import console, data_errors, progress, setup, with_smoke_tune, write_metrics
from dfa.tracking import stage_run

METRICS = Path("reports/metrics/data.json")


def prepare(cfg: Config, args=None) -> int:
    root = Path(cfg.data.root)
    setup(cfg)
    with stage_run(cfg, "prepare") as run:
        if cfg.data.name == "synthetic":
            s = cfg.data.synthetic
            total = s.num_train_aug + s.num_val + s.num_pretrain
            with progress() as bar:
                task = bar.add_task("generate synthetic benchmark", total=total, info=str(root))
                synthetic.generate(root, seed=s.seed, num_train_aug=s.num_train_aug, num_train=s.num_train,
                                   num_tune=s.num_tune, num_val=s.num_val, num_pretrain=s.num_pretrain,
                                   size_range=tuple(s.size_range), variant=s.variant,
                                   object_scale=tuple(s.object_scale),
                                   progress=lambda n: bar.update(task, advance=n))
        elif cfg.data.name == "voc" and cfg.data.download and not download.voc_ready(root):
            with progress() as bar, data_errors():
                task = bar.add_task("download VOC 2012 + SBD", total=None, info="MiB")
                download.prepare_voc(
                    root, status=lambda text: bar.update(task, description=text),
                    progress=lambda done, total: bar.update(task, completed=done >> 20,
                                                            total=None if total is None else total >> 20))
        elif not root.exists():
            raise WorkbenchError(f"{root}: dataset folder not found (data.root). Lay out {cfg.data.name} as "
                                 f"described in README.md (VOCdevkit/VOC2012 style) and point data.root at it")
        d = cfg.data
        layout = with_smoke_tune(cfg, Layout(root, cfg.data.name, tune_split=d.tune_split))
        spec = checker.spec_for(cfg.data.name, root)
        if layout.memory:
            console.print(f"--smoke: the tune split is drawn in memory, not written into {root} (method.md §12)")
        with data_errors():
            if not layout.memory and ensure_tune(layout, d.train_split, d.seed_split, d.eval_split, d.tune_split,
                                                 cfg.seed):
                console.print(f"wrote the tune split {layout.list_path(d.tune_split)} (method.md §12)")
        splits = [cfg.data.train_split, cfg.data.seed_split, cfg.data.tune_split, cfg.data.eval_split]
        splits = list(dict.fromkeys(splits))
        with progress() as bar:
            task = bar.add_task("check dataset", total=None, info=str(root))
            problems = checker.check_tree(layout, spec.num_classes, splits,
                                          progress=lambda n: bar.update(task, advance=n),
                                          roles={"train": d.train_split, "seed": d.seed_split,
                                                 "evaluation": d.eval_split})
        if problems:
            for line in problems:
                console.print(line, markup=False, highlight=False)
            raise WorkbenchError(f"{root}: {len(problems)} problem(s) found by the dataset checker (listed above)")
        counts = {split: len(layout.read_list(split)) for split in splits}
        write_metrics(cfg, METRICS, {"dataset": cfg.data.name, "num_classes": spec.num_classes, **counts})
        run.log_metrics({f"images_{k}": v for k, v in counts.items()})
    console.print(f"dataset {cfg.data.name} at {root}: OK, " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def check_data(cfg: Config, args) -> int:
    # no --kind: guessed from the tree
    return checker.check_data_main(args.root, args.kind, args.split, counts=not args.no_counts)
