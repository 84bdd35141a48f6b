"""``dfa search --rescore``: finalists re-scored over seeds on tune (method.md §12 v3)."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution

from dfa.config import ConfigError, load_config
from dfa.stages import search as search_mod
from dfa.stages.search_finalists import SPEC, Finalist, parse_seeds, pick, rescore

from tests.conftest import module_copy


@pytest.fixture(scope="module")
def smoke_workspace(smoke_workspace, tmp_path_factory) -> Path:
    """This module runs stages inside the workspace: its own copy of the session's (conftest)."""
    return module_copy(smoke_workspace, tmp_path_factory)


def _study(direction: str, values: list[tuple[float, float]]) -> optuna.Study:
    """An in-memory study of complete trials (param x, value)."""
    study = optuna.create_study(direction=direction)
    for x, v in values:
        study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions={"x": FloatDistribution(0, 1)},
                                                  value=v))
    return study


def test_pick_takes_the_top_trials_by_direction_and_adds_the_spec_setting_once():
    study = _study("maximize", [(0.1, 30.0), (0.2, 50.0), (0.3, 40.0), (0.4, 10.0)])
    got = pick(study, {"x": 0.9}, 2)
    assert [(f.name, f.values, f.screened) for f in got] == [
        ("trial_1", {"x": 0.2}, 50.0), ("trial_2", {"x": 0.3}, 40.0), (SPEC, {"x": 0.9}, None)]
    assert [f.name for f in pick(study, {"x": 0.3}, 2)] == ["trial_1", "trial_2"]   # the spec is a finalist already
    low = _study("minimize", [(0.1, 30.0), (0.2, 50.0), (0.3, 40.0)])
    assert [f.name for f in pick(low, {"x": 0.9}, 1)] == ["trial_0", SPEC]
    assert [f.name for f in pick(_study("maximize", []), {"x": 0.9}, 3)] == [SPEC]   # no complete trial yet


def test_rescore_gives_mean_and_sample_std_per_finalist_best_first():
    fins = [Finalist("a", {"x": 1}, 5.0), Finalist("b", {"x": 2}, 4.0)]
    table = {("a", 0): 10.0, ("a", 1): 12.0, ("a", 2): 14.0, ("b", 0): 20.0, ("b", 1): 20.0, ("b", 2): 20.0}
    rows = rescore(fins, [0, 1, 2], lambda f, s: table[f.name, s])
    assert [r["name"] for r in rows] == ["b", "a"]
    assert rows[1]["mean"] == 12.0 and rows[1]["std"] == 2.0 and rows[0]["std"] == 0.0
    assert rows[1]["values"] == [10.0, 12.0, 14.0] and rows[1]["screened"] == 5.0
    one = rescore(fins[:1], [0], lambda f, s: 3.0)
    assert one[0]["std"] == 0.0 and one[0]["mean"] == 3.0
    assert math.isnan(rescore(fins[:1], [0], lambda f, s: float("nan"))[0]["mean"])


@pytest.mark.parametrize("text", ["", "0,0", "a,1"])
def test_bad_rescore_seeds_name_the_flag(text):
    with pytest.raises(ConfigError, match="--rescore-seeds"):
        parse_seeds(text)
    assert parse_seeds("2, 0") == [2, 0]


@pytest.mark.slow
def test_search_rescore_writes_finalists_to_the_summary(smoke_workspace, monkeypatch, tmp_path):
    """Two trials, then the best one and the params' setting each trained at seeds 0 and 1 and
    scored on tune: mean ± std per finalist in summary.json and finalists.json."""
    for var in ("GIT_DIR", "GIT_WORK_TREE", "DVC_ROOT", "DFA_PIPELINE_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(smoke_workspace)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"loss.lambda_rect": {"type": "float", "low": 0.05, "high": 0.3}}}))
    overrides = [f"search.storage=sqlite:///{tmp_path}/optuna.db", "tracking.enabled=false"]
    args = argparse.Namespace(params="params.yaml", overrides=overrides, smoke=True, space=str(space),
                              study="finals", n_trials=2, rescore=1, rescore_seeds="0,1")
    assert search_mod.search(load_config("params.yaml", overrides, smoke=True), args) == 0
    out = smoke_workspace / "smoke/reports/search/finals"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["complete"] == 2 and summary["finalists"] == json.loads((out / "finalists.json").read_text())
    rows = summary["finalists"]["finalists"]
    names = {r["name"] for r in rows}
    spec = load_config("params.yaml", [], smoke=True).loss.lambda_rect
    assert names == {f"trial_{summary['best']['number']}", SPEC}
    assert next(r for r in rows if r["name"] == SPEC)["params"] == {"loss.lambda_rect": spec}
    for r in rows:
        assert r["seeds"] == [0, 1] and len(r["values"]) == 2 and r["std"] >= 0
        assert r["mean"] == pytest.approx(sum(r["values"]) / 2)
    ckpt = smoke_workspace / "smoke/checkpoints/search/finals/finalists"
    assert (ckpt / SPEC / "seed1" / "model.pt").exists()
