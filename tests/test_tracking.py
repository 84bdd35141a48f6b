"""MLflow tracking against a temporary SQLite store: parent/child runs, params, metrics, failures."""
from __future__ import annotations

from pathlib import Path

import pytest

from dfa.config import load_config
from dfa.tracking import PIPELINE_TAG, NullRun, resolve_uri, stage_run


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A folder for one SQLite store shared by this module (creating one takes seconds)."""
    return tmp_path_factory.mktemp("tracking")


@pytest.fixture(autouse=True)
def isolated(store, monkeypatch):
    # repo_root() is DVC_ROOT and the cwd is the temporary folder: artifacts and stage
    # timings land there, never in the checkout.
    monkeypatch.setenv("DVC_ROOT", str(store))
    monkeypatch.chdir(store)
    monkeypatch.delenv("DFA_PIPELINE_ID", raising=False)


def config(store: Path, *overrides: str):
    return load_config(None, [f"tracking.uri=sqlite:///{store}/mlflow.db", "tracking.experiment=test",
                              *overrides])


def client(store: Path):
    from mlflow.tracking import MlflowClient
    c = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    return c, c.get_experiment_by_name("test").experiment_id


def runs(store: Path, flt: str = ""):
    c, exp = client(store)
    return c.search_runs([exp], filter_string=flt, max_results=1000)


def test_resolve_uri(tmp_path):
    assert resolve_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_uri("sqlite:///sub/o.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/sub/o.db"
    assert resolve_uri("sqlite:////abs/o.db", tmp_path) == "sqlite:////abs/o.db"
    assert resolve_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"


def test_pipeline_parent_with_two_stage_children(store, monkeypatch):
    monkeypatch.setenv("DFA_PIPELINE_ID", "test-pipeline-1")
    cfg = config(store, "ablation.row=2", "train.steps=17")
    with stage_run(cfg, "prepare") as run:
        run.log_metrics({"images": 12.0})
    with stage_run(cfg, "train") as run:
        for step in (1, 2, 3):
            run.log_metrics({"loss_total": 1.0 / step, "lr": 1e-4}, step=step)
        train_id = run.run_id

    (parent,) = runs(store, f"tags.`{PIPELINE_TAG}` = 'test-pipeline-1'")
    children = runs(store, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["stage"] for r in children) == ["prepare", "train"]
    assert all(r.info.status == "FINISHED" for r in [parent, *children])
    c, _ = client(store)
    train = c.get_run(train_id)
    # flattened params, tags and the per-step curve
    assert train.data.params["train.steps"] == "17" and train.data.params["frequency.ratio"] == "0.25"
    assert train.data.tags["ablation.row"] == "2" and train.data.tags["dataset"] == "synthetic"
    assert "mlflow.source.git.commit" in train.data.tags
    assert [m.step for m in c.get_metric_history(train_id, "loss_total")] == [1, 2, 3]
    # the resolved config is an artifact, stored under the temporary root
    assert "config.yaml" in [a.path for a in c.list_artifacts(train_id)]
    assert Path(store / "mlartifacts").is_dir()


def test_same_pipeline_id_reuses_its_parent(store, monkeypatch):
    monkeypatch.setenv("DFA_PIPELINE_ID", "test-pipeline-2")
    cfg = config(store)
    for stage in ("pseudo_labels", "evaluate"):
        with stage_run(cfg, stage):
            pass
    parents = runs(store, f"tags.`{PIPELINE_TAG}` = 'test-pipeline-2'")
    assert len(parents) == 1
    assert len(runs(store, f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")) == 2


def test_failing_stage_is_marked_failed(store, monkeypatch):
    monkeypatch.setenv("DFA_PIPELINE_ID", "test-pipeline-3")
    cfg = config(store)
    with pytest.raises(RuntimeError, match="boom"):
        with stage_run(cfg, "evaluate") as failing:
            raise RuntimeError("boom")
    c, _ = client(store)
    run = c.get_run(failing.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: boom"


def test_explicit_nesting_and_no_parent_without_pipeline(store):
    cfg = config(store)
    with stage_run(cfg, "search") as parent:
        for n in range(2):
            with stage_run(cfg, f"trial {n}", nested_in=parent.run_id, extra_tags={"optuna.trial": str(n)}) as run:
                run.log_metrics({"seed_miou": 10.0 + n})
    c, _ = client(store)
    top = c.get_run(parent.run_id)
    assert "mlflow.parentRunId" not in top.data.tags  # no DFA_PIPELINE_ID, no dvc: a stand-alone run
    kids = runs(store, f"tags.`mlflow.parentRunId` = '{parent.run_id}'")
    assert sorted(r.data.metrics["seed_miou"] for r in kids) == [10.0, 11.0]


def test_disabled_tracking_makes_no_store(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["tracking.enabled=false", f"tracking.uri=sqlite:///{tmp_path}/off.db"])
    with stage_run(cfg, "train") as run:
        assert isinstance(run, NullRun) and run.run_id is None
        run.log_metrics({"x": 1.0})
        run.log_params({"a": 1})
        run.log_artifact(tmp_path / "missing.png")
    with pytest.raises(ValueError):
        with stage_run(cfg, "train"):
            raise ValueError("not swallowed")
    assert not list(tmp_path.rglob("*.db")) and not (tmp_path / "mlartifacts").exists()
