"""``--smoke`` never touches a real run, and the smoke pipeline is reproducible byte for byte.

A workspace holds a real run's files where the default params put them (metrics, checkpoints,
cache, pseudo masks, reports, the Optuna storage) and an MLflow store whose ``dfa`` experiment
has one run. Every command then runs with ``--smoke``, on the embedded benchmark and on a custom
dataset, and the tree outside ``smoke/`` is hashed before and after: not one file may change,
appear or vanish, and the ``dfa`` experiment keeps its one run.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, run_dfa

pytestmark = pytest.mark.slow  # pipelines and servers: `make test` (CI) runs it, `make test-fast` does not

# A real run's files, as the default params.yaml places them (contents are stand-ins).
REAL_RUN = [
    "data/synthetic/classes.json", "checkpoints/clip/model.pt", "checkpoints/clip/backbone.json",
    "cache/features/index.json", "checkpoints/dfa/model.pt", "checkpoints/dfa-resume/last.pt",
    "outputs/pseudo/seed/img_0.png", "reports/metrics/data.json", "reports/metrics/clip.json",
    "reports/metrics/cache.json", "reports/metrics/train.json", "reports/metrics/pseudo.json",
    "reports/metrics/eval.json", "reports/plots/train_curve.csv", "reports/figures/pseudo_grid.png",
    "reports/figures/eval_grid.png", "reports/eval_per_class.md", "reports/eval_per_class.csv",
    "reports/ablation.md", "reports/ablation.csv", "reports/figures/ablation.png", "reports/bench.json",
    "reports/timings/train.json", "reports/search/study/summary.json", "checkpoints/ablation/row4/model.pt",
    "checkpoints/search/study/trial_0/model.pt", "optuna.db", "mlartifacts/dfa/run/config.yaml",
]
METRICS = ["data", "clip", "cache", "train", "pseudo", "eval"]


def tree_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` except those under ``smoke/``."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[0] != "smoke"}


def store_runs(db: Path, experiment: str) -> list[tuple[str, str, dict]]:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return sorted((r.info.run_id, r.info.run_name, r.data.metrics) for r in client.search_runs([exp.experiment_id]))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """The real run's stand-ins, then every command with --smoke on the embedded benchmark."""
    ws = tmp_path_factory.mktemp("isolation")
    shutil.copy(REPO / "params.yaml", ws / "params.yaml")
    for i, rel in enumerate(REAL_RUN):
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_bytes(f"the real run's {rel} #{i}\n".encode())
    db = tmp_path_factory.mktemp("store") / "mlflow.db"  # the store is not a file of the tree
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    real = client.create_run(client.create_experiment("dfa"), run_name="the real run")
    client.log_metric(real.info.run_id, "seed_miou", 13.3)
    tracking = ["-S", f"tracking.uri=sqlite:///{db}"]
    before, real_runs = tree_hashes(ws), store_runs(db, "dfa")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONHASHSEED", "1")  # the fixture's smoke_workspace runs under other hash seeds
        for stage in ("prepare", "pretrain-clip", "cache", "train", "pseudo", "evaluate"):
            run_dfa(ws, stage, "--smoke", *tracking)
    # the rest need no hash seed of their own, so they run forked (stage_runner: ~8 s less each)
    run_dfa(ws, "check-data", "smoke/data/synthetic")
    run_dfa(ws, "search", "--smoke", "--space", str(REPO / "experiments/frequency.yaml"), "--study", "study",
            "--n-trials", "1", *tracking)
    run_dfa(ws, "ablation", "--smoke", "--rows", "4", "--seeds", "0", *tracking)  # one seed: where, not how well
    run_dfa(ws, "bench", "--smoke", "--only", "sinkhorn", *tracking)  # where it writes, not what it measures
    return {"ws": ws, "db": db, "before": before, "after": tree_hashes(ws), "real_runs": real_runs}


def test_smoke_on_the_embedded_benchmark_writes_only_under_smoke(workspace):
    ws = workspace["ws"]
    assert workspace["after"] == workspace["before"]
    # ... and it did write its own artifacts, under smoke/
    for rel in [*(f"reports/metrics/{m}.json" for m in METRICS), "checkpoints/clip/model.pt",
                "checkpoints/dfa/model.pt", "reports/search/study/summary.json", "reports/ablation.md",
                "reports/bench.json", "optuna.db", "outputs/pseudo/fingerprint.json"]:
        assert (ws / "smoke" / rel).is_file(), rel
    # The MLflow runs went to dfa-smoke; the real experiment still holds its one run, unchanged.
    assert store_runs(workspace["db"], "dfa") == workspace["real_runs"]
    names = {name for _, name, _ in store_runs(workspace["db"], "dfa-smoke")}
    # not a git checkout: the commit reads "unknown"
    assert {f"{stage} · synthetic · row 4 · seed 0 · unknown" for stage in ("prepare", "train", "evaluate")} <= names
    assert {"trial 0", "row 4 · seed 0"} <= names


def test_the_smoke_pipeline_twice_gives_byte_identical_metrics(workspace, smoke_evaluated):
    """Two runs from a clean state, in two workspaces and processes with different hash seeds:
    every metrics file, the training curve and the trained weights are equal byte for byte."""
    a, b = workspace["ws"], smoke_evaluated  # the session's pipeline, run without PYTHONHASHSEED=1
    files = [*(f"smoke/reports/metrics/{m}.json" for m in METRICS), "smoke/reports/plots/train_curve.csv",
             "smoke/checkpoints/clip/model.pt", "smoke/checkpoints/dfa/model.pt"]
    def content(path: Path) -> bytes | dict:
        """The file's bytes; for a metrics file its JSON less the tracking keys' provenance (the
        two runs log to different places, which changes no number)."""
        if path.parent.name != "metrics":
            return path.read_bytes()
        data = json.loads(path.read_text())
        sources = (data.get("config_sources") or {}).get("sources") or {}
        for key in [k for k in sources if k.startswith("tracking.")]:
            del sources[key]
        return data
    differ = [f for f in files if content(a / f) != content(b / f)]
    assert differ == []
    env = json.loads((a / "smoke/reports/metrics/train.json").read_text())["env"]
    assert env["threads"] == 2 and env["deterministic"] is True and env["torch"] and env["cpu_capability"]


def test_smoke_on_a_custom_dataset_writes_only_under_smoke(workspace, tmp_path):
    """The issue's case: ``dfa train --smoke -S data.name=custom`` wrote checkpoints/dfa/model.pt."""
    ws = tmp_path / "custom"
    shutil.copytree(workspace["ws"], ws)
    # A user's dataset and CLIP checkpoint, outside smoke/: inputs, to be read and never written.
    shutil.copytree(ws / "smoke/data/synthetic", ws / "mydata")
    (ws / "myclip").mkdir()
    shutil.copy(ws / "smoke/checkpoints/clip/model.pt", ws / "myclip/model.pt")
    shutil.rmtree(ws / "smoke")
    before = tree_hashes(ws)
    custom = ["-S", "data.name=custom", "-S", "data.root=mydata", "-S", "clip.checkpoint=myclip/model.pt",
              "-S", "tracking.enabled=false"]
    for stage in ("prepare", "pretrain-clip", "cache", "train", "pseudo", "evaluate"):
        run_dfa(ws, stage, "--smoke", *custom)
    run_dfa(ws, "check-data", "mydata")
    run_dfa(ws, "ablation", "--smoke", "--rows", "4", "--seeds", "0", *custom)
    assert tree_hashes(ws) == before
    for rel in ("reports/metrics/train.json", "checkpoints/dfa/model.pt", "checkpoints/clip/backbone.json",
                "cache/features/index.json", "reports/ablation.md"):
        assert (ws / "smoke" / rel).is_file(), rel
    assert json.loads((ws / "smoke/reports/metrics/eval.json").read_text())["dataset"] == "custom"
