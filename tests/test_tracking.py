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


def test_experiment_is_marked_for_the_runs_table(store):
    """MLflow 3 opens a model-training experiment on its runs table; the view shows seed_miou."""
    import json

    from mlflow.tracking import MlflowClient

    from dfa.tracking import KIND, KIND_TAG, VIEW_KEY, VIEW_TAG, landing_url, runs_view
    with stage_run(config(store), "prepare"):
        pass
    c, exp_id = client(store)
    tags = c.get_experiment(exp_id).tags
    assert tags[KIND_TAG] == KIND == "custom_model_development" and tags[VIEW_TAG] == runs_view()
    assert "metrics.`seed_miou`" in json.loads(runs_view())["selectedColumns"]
    assert landing_url("http://127.0.0.1:5000/", exp_id) == (
        f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs?workflowType=machine_learning"
        f"&viewStateShareKey={VIEW_KEY}")
    # An experiment made before (or retagged "genai" by the UI) is marked on the next stage run.
    raw = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    old = raw.create_experiment("older", tags={KIND_TAG: "genai_development"})
    with stage_run(config(store, "tracking.experiment=older"), "prepare"):
        pass
    assert raw.get_experiment(old).tags[KIND_TAG] == KIND and VIEW_TAG in raw.get_experiment(old).tags


def test_pipeline_run_is_named_and_carries_the_headline_metrics(store, monkeypatch):
    monkeypatch.setenv("DFA_PIPELINE_ID", "repro-20261127-120000")
    cfg = config(store, "ablation.row=2", "seed=3")
    with stage_run(cfg, "train") as run:
        run.log_metrics({"final_loss": 1.5})
    with stage_run(cfg, "pseudo_labels") as run:
        run.log_metrics({"seed_miou": 13.21087, "mask_miou": 13.2, "cam_miou": 35.04})
    (parent,) = runs(store, f"tags.`{PIPELINE_TAG}` = 'repro-20261127-120000'")
    # the store folder is no git checkout, so the commit reads "unknown"
    assert parent.info.run_name == "repro · synthetic · row 2 · seed 3 · unknown"
    assert parent.data.metrics == {"seed_miou": 13.21, "mask_miou": 13.2, "cam_miou": 35.04}
    kids = runs(store, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in kids) == ["pseudo_labels", "train"]


def test_smoke_runs_go_to_their_own_experiment(store):
    (store / "reports/timings/train.json").unlink(missing_ok=True)  # left by the tests above
    cfg = load_config(None, [f"tracking.uri=sqlite:///{store}/mlflow.db"], smoke=True)
    assert cfg.tracking.experiment == "dfa-smoke"
    with stage_run(cfg, "train") as run:
        run_id = run.run_id
    from mlflow.tracking import MlflowClient
    c = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    got = c.get_run(run_id)
    assert c.get_experiment(got.info.experiment_id).name == "dfa-smoke"
    assert got.info.run_name == "train · synthetic · row 4 · seed 0 · unknown"  # stand-alone: named in full
    assert "/smoke/mlartifacts/dfa-smoke" in got.info.artifact_uri
    assert (store / "smoke/reports/timings/train.json").exists() and not (store / "reports/timings/train.json").exists()
