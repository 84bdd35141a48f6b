"""``dfa search`` on the smoke workspace, with temporary Optuna/MLflow stores."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from dfa.config import ConfigError, load_config
from dfa.errors import WorkbenchError
from dfa.stages import search as search_mod
from dfa.stages import search_space
from dfa.stages.common import layout_of

from tests.conftest import module_copy


@pytest.fixture(scope="module")
def smoke_workspace(smoke_workspace, tmp_path_factory) -> Path:
    """This module runs stages inside the workspace: its own copy of the session's (conftest)."""
    return module_copy(smoke_workspace, tmp_path_factory)


REPO = Path(__file__).resolve().parents[1]
SPACES = sorted((REPO / "experiments").glob("*.yaml"))


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    """One folder for the Optuna and MLflow stores of this module: creating a store takes seconds."""
    return tmp_path_factory.mktemp("stores")


def mlflow_runs(db: Path, flt: str):
    """Runs of the smoke experiment (every search and ablation here runs with --smoke)."""
    from mlflow.tracking import MlflowClient
    c = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return c.search_runs([c.get_experiment_by_name("dfa-smoke").experiment_id], filter_string=flt, max_results=100)


# ------------------------------------------------------------------------------ spaces

@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_shipped_spaces_load_and_their_bounds_are_valid_params(path):
    cfg = load_config(REPO / "params.yaml")
    space = search_space.load_space(path, cfg)
    args = argparse.Namespace(params=str(REPO / "params.yaml"), overrides=[], smoke=False)
    # Every corner of the space must be a config the params accept.
    for pick in (0, -1):
        values = {k: (p.choices[pick] if p.type == "categorical" else (p.low, p.high)[pick])
                  for k, p in space.params.items()}
        tcfg = search_mod.trial_config(args, cfg, space, values, "checkpoints/search/x/trial_0")
        assert tcfg.train.dir == "checkpoints/search/x/trial_0" and tcfg.train.steps == cfg.search.train_steps


def test_frequency_and_ablation_spaces_cover_the_issue():
    cfg = load_config(None)
    freq = search_space.load_space(REPO / "experiments/frequency.yaml", cfg)
    assert set(freq.params) == {"frequency.ratio", "loss.alpha_momentum", "loss.lambda_align", "loss.lambda_rect",
                                "ot.lambda_h", "ot.tau", "ot.epsilon"}
    abl = search_space.load_space(REPO / "experiments/ablation.yaml", cfg)
    assert set(abl.params) == {f"ablation.{k}" for k in ("learned_s", "use_inverse", "align", "rectify",
                                                          "combination")}
    assert abl.fixed == {"ablation.row": None}


@pytest.mark.parametrize("body, key", [
    ({"params": {"train.stepz": {"type": "int", "low": 1, "high": 2}}}, "params.train.stepz"),
    ({"params": {"train.steps": {"type": "int", "low": 5, "high": 2}}}, "params.train.steps"),
    ({"params": {"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}}, "params.train.lr.low"),
    ({"params": {"train.lr": {"low": 0.1, "high": 1}}}, "params.train.lr.type"),
    ({"params": {"train.lr": {"type": "normal", "low": 0.1, "high": 1}}}, "params.train.lr.type"),
    ({"params": {"ablation.align": {"type": "categorical", "choices": []}}}, "params.ablation.align.choices"),
    ({"params": {"train.lr": {"type": "float", "low": 0.1, "high": 1, "bins": 3}}}, "params.train.lr.bins"),
    ({"metric": "accuracy", "params": {"train.lr": {"type": "float", "low": 0.1, "high": 1}}}, "metric"),
    ({"fixed": {"nope": 1}, "params": {"train.lr": {"type": "float", "low": 0.1, "high": 1}}}, "fixed.nope"),
    ({"params": {}}, "params"),
    ({"sampler": "tpe", "params": {}}, "sampler"),
    ({"params": {"train.lr": {"type": "float", "low": 0.1, "high": 1}}, "enqueue": [{"train.steps": 3}]},
     "enqueue[0].train.steps"),
    ({"params": {"train.lr": {"type": "float", "low": 0.1, "high": 1}}, "enqueue": [{"train.lr": 2.0}]},
     "enqueue[0].train.lr"),
    ({"params": {"loss.align_form": {"type": "categorical", "choices": ["row"]}},
      "enqueue": [{}, {"loss.align_form": "printed"}]}, "enqueue"),
    ({"params": {"loss.align_form": {"type": "categorical", "choices": ["row"]}},
      "enqueue": [{"loss.align_form": "printed"}]}, "enqueue[0].loss.align_form"),
    ({"params": {"train.lr": {"type": "float", "low": 0.1, "high": 1}}, "when": {"train.lr": {0.1: {"seed": 1}}}},
     "when.train.lr"),
    ({"params": {"loss.align_form": {"type": "categorical", "choices": ["row"]}},
      "when": {"loss.align_form": {"printed": {"seed": 1}}}}, "when.loss.align_form.printed"),
    ({"params": {"loss.align_form": {"type": "categorical", "choices": ["row"]}},
      "when": {"loss.align_form": {"row": {"cache.dirr": "x"}}}}, "when.loss.align_form.row.cache.dirr"),
    ({"params": {"loss.align_form": {"type": "categorical", "choices": ["row"]}, "seed": {"type": "int", "low": 0,
      "high": 2}}, "when": {"loss.align_form": {"row": {"seed": 1}}}}, "when.loss.align_form.row.seed"),
])
def test_bad_space_names_the_key(tmp_path, body, key):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigError) as err:
        search_space.load_space(path, load_config(None))
    assert f"{path}: {key}" in str(err.value)


def test_a_choice_implies_its_when_values_in_the_trial_config_and_prerequisites(in_workspace):
    """``when``: a sampled choice brings the values it needs (the per-head cache of
    ``affinity.channels: heads``); the study checks that branch's prerequisites before it starts."""
    path = in_workspace / "when.yaml"
    path.write_text(yaml.safe_dump({"params": {"affinity.channels": {"type": "categorical",
                                                                     "choices": ["layers", "heads"]}},
                                    "when": {"affinity.channels": {"heads": {"cache.dir": "cache/per-head"}}}}))
    cfg = load_config("params.yaml", [], smoke=True)
    space = search_space.load_space(path, cfg)
    args = argparse.Namespace(params="params.yaml", overrides=[], smoke=True, prepare=False)
    heads = search_mod.trial_config(args, cfg, space, {"affinity.channels": "heads"}, "t")
    layers = search_mod.trial_config(args, cfg, space, {"affinity.channels": "layers"}, "t")
    assert (heads.cache.dir, heads.affinity.channels) == ("cache/per-head", "heads")
    assert layers.cache.dir == cfg.cache.dir != "cache/per-head"
    with pytest.raises(WorkbenchError) as err:            # the layers branch is ready, the heads one is not
        search_mod.check_prerequisites(args, space)
    assert str(err.value).startswith("cache/per-head: feature cache missing")


def test_the_scorer_keeps_an_extractor_per_channels_and_scores_the_asked_images(in_workspace, monkeypatch):
    """A ``heads`` trial after a ``layers`` one gets its own per-head extractor (the first
    method-v3 finalists run failed there: 'affinity.channels=heads needs the per-head attention');
    a screened trial reads ``data.max_seed_images`` tune images, a finalist (``images=0``) all."""
    from dfa.stages import seeds, views
    built, scored = [], []
    monkeypatch.setattr(views, "extractor", lambda cfg, spec, device: built.append(views.per_head(cfg)) or len(built))
    monkeypatch.setattr(seeds, "calibrate", lambda cfg, model, ext, layout, names, labels, bar=None: {})
    monkeypatch.setattr(seeds, "score_seeds", lambda cfg, model, ext, layout, names, labels, **kw:
                        scored.append((ext, len(names))) or ({"seed_miou": 1.0}, None, None))
    # cache.memo_gib=0: the scorer hands score_seeds the extractor itself (a memo would wrap it)
    layers = load_config("params.yaml", ["data.max_seed_images=2", "cache.memo_gib=0"], smoke=True)
    heads = load_config("params.yaml", ["data.max_seed_images=2", "affinity.channels=heads", "cache.memo_gib=0"],
                        smoke=True)
    whole = len(layout_of(layers).read_list(layers.data.tune_split))
    assert whole > 2
    scorer = search_mod.SeedScorer()
    for cfg, images in ((layers, None), (heads, None), (layers, 0), (heads, 0)):
        scorer.for_config(cfg, images=images)(model=None)
    assert built == [False, True]                         # one extractor per channels value, reused after
    assert scored == [(1, 2), (2, 2), (1, whole), (2, whole)]


def test_prepare_writes_a_branch_stage_reports_under_the_study_not_the_pipeline(in_workspace, monkeypatch):
    """``--prepare`` for a ``when`` branch (the per-head cache) once overwrote the pipeline's
    ``reports/metrics/cache.json`` with the branch's; its stages now get the study's ``out_root``."""
    path = in_workspace / "when.yaml"
    path.write_text(yaml.safe_dump({"params": {"affinity.channels": {"type": "categorical",
                                                                     "choices": ["layers", "heads"]}},
                                    "when": {"affinity.channels": {"heads": {"cache.dir": "cache/per-head"}}}}))
    space = search_space.load_space(path, load_config("params.yaml", [], smoke=True))
    args = argparse.Namespace(params="params.yaml", overrides=[], smoke=True, prepare=True, study="v3 heads")
    ran = []
    monkeypatch.setattr(search_mod.search_prereqs, "run_missing", lambda problems, a, extra: ran.append(extra))
    with pytest.raises(WorkbenchError, match="still missing after --prepare"):
        search_mod.check_prerequisites(args, space)     # nothing really ran: the heads cache is still missing
    branch = "smoke/reports/search/v3_heads/prepare/affinity.channels_heads-cache.dir_cache_per-head"
    assert ran == [['affinity.channels="heads"', 'cache.dir="cache/per-head"', f'out_root="{branch}"']]


def test_enqueued_points_run_first_once_and_again_only_after_a_failure(tmp_path):
    path = tmp_path / "space.yaml"
    point = {"train.head_lr_mult": 25.0, "affinity.head": "bilinear"}
    other = {"train.head_lr_mult": 10.0, "affinity.head": "pointwise"}
    path.write_text(yaml.safe_dump({"params": {"train.head_lr_mult": {"type": "float", "low": 1, "high": 100},
                                               "affinity.head": {"type": "categorical",
                                                                 "choices": ["pointwise", "bilinear"]}},
                                    "enqueue": [point, other]}))
    cfg = load_config(None, [f"search.storage=sqlite:///{tmp_path}/optuna.db"])
    space = search_space.load_space(path, cfg)

    def objective(t):      # the "pointwise" point fails (as a trial whose cache was missing)
        lr, head = t.suggest_float("train.head_lr_mult", 1, 100), t.suggest_categorical("affinity.head",
                                                                                         ["pointwise", "bilinear"])
        if lr == 10.0:
            raise RuntimeError("no cache")
        return lr + (head == "bilinear")

    study = search_mod.open_study(cfg, space, "q")
    study.optimize(objective, n_trials=3, catch=(RuntimeError,))
    assert [t.params for t in study.trials[:2]] == [point, other]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[0].value == 26.0 and study.trials[2].params not in (point, other)
    again = search_mod.open_study(cfg, space, "q")       # continued: only the failed point is queued again
    waiting = [t for t in again.trials if t.state == TrialState.WAITING]
    assert [t.system_attrs["fixed_params"] for t in waiting] == [other]


# ------------------------------------------------------------------------------ the CLI

@pytest.mark.slow
def test_search_cli_two_trials_then_one_more(smoke_workspace, dfa_cli, stores):
    storage, mlflow_db = stores / "optuna.db", stores / "mlflow.db"
    cmd = ["search", "--smoke", "--space", str(REPO / "experiments/frequency.yaml"), "--study", "smoke",
           "-S", f"search.storage=sqlite:///{storage}", "-S", f"tracking.uri=sqlite:///{mlflow_db}"]
    dfa_cli(smoke_workspace, *cmd, "--n-trials", "2")
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{storage}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}")
    for t in study.trials:  # the objective Optuna stored is the seed mIoU the trial's MLflow run logged
        assert t.value == pytest.approx(client.get_run(t.user_attrs["mlflow_run_id"]).data.metrics["seed_miou"])

    (parent,) = mlflow_runs(mlflow_db, "tags.stage = 'search' and tags.`optuna.study` = 'smoke'")
    trials = mlflow_runs(mlflow_db, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in trials) == ["trial 0", "trial 1"]
    for r in trials:
        assert r.info.status == "FINISHED" and "seed_miou" in r.data.metrics
        assert r.data.params["trial.frequency.ratio"] == r.data.params["frequency.ratio"]
        assert r.data.params["train.dir"] == f"smoke/checkpoints/search/smoke/trial_{r.data.tags['optuna.trial']}"

    out = smoke_workspace / "smoke/reports/search/smoke"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"complete": 2, "pruned": 0, "failed": 0, "running": 0, "waiting": 0}
    assert summary["best"]["number"] == study.best_trial.number
    assert summary["best"]["params"] == study.best_trial.params
    assert summary["importances"] is not None or summary["importances_note"].startswith("skipped")
    assert (out / "history.png").read_bytes()[:4] == b"\x89PNG"

    dfa_cli(smoke_workspace, *cmd, "--n-trials", "1")  # continues the study
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{storage}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 3  # no replayed samples
    assert len(mlflow_runs(mlflow_db, "tags.stage = 'search' and tags.`optuna.study` = 'smoke'")) == 2
    assert json.loads((out / "summary.json").read_text())["trials"] == 3


# ------------------------------------------------------------------------------ in process: failures, pruning

@pytest.fixture()
def in_workspace(smoke_workspace, monkeypatch):
    """Run stages in this process, in the smoke workspace (repo_root() = the workspace)."""
    for var in ("GIT_DIR", "GIT_WORK_TREE", "DVC_ROOT", "DFA_PIPELINE_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(smoke_workspace)
    return smoke_workspace


def run_search(stores: Path, space: dict, n_trials: int, study: str, rc: int = 0, enqueue: list[dict] = ()):
    """``dfa search`` in this process; ``enqueue``: params of the first trials (Optuna's enqueue_trial)."""
    path = stores / f"{study}.yaml"
    path.write_text(yaml.safe_dump(space))
    overrides = [f"search.storage=sqlite:///{stores}/optuna.db", f"tracking.uri=sqlite:///{stores}/mlflow.db"]
    args = argparse.Namespace(params="params.yaml", overrides=overrides, smoke=True, space=str(path), study=study,
                              n_trials=n_trials)
    if enqueue:
        created = optuna.create_study(study_name=study, storage=f"sqlite:///{stores}/optuna.db", direction="maximize")
        for params in enqueue:
            created.enqueue_trial(params)
    assert search_mod.search(load_config(args.params, overrides, smoke=True), args) == rc
    return optuna.load_study(study_name=study, storage=f"sqlite:///{stores}/optuna.db")


def test_every_trial_failing_exits_non_zero(in_workspace, stores, capsys):
    # ratio > 1 is rejected by the params: every trial fails, each with its reason kept, and the
    # command says so with exit code 1 instead of reporting success.
    space = {"params": {"frequency.ratio": {"type": "float", "low": 1.5, "high": 2.0}}}
    study = run_search(stores, space, 2, "fails", rc=1)
    assert "all 2 trial(s) of this run failed" in capsys.readouterr().err
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2
    assert all(t.user_attrs["error"].startswith("ConfigError: frequency.ratio") for t in study.trials)
    summary = json.loads((in_workspace / "smoke/reports/search/fails/summary.json").read_text())
    assert summary["counts"]["failed"] == 2 and summary["best"] is None
    assert summary["importances"] is None and "at least 2 complete trials" in summary["importances_note"]
    assert "frequency.ratio" in summary["failures"]["0"]
    (parent,) = mlflow_runs(stores / "mlflow.db", "tags.stage = 'search' and tags.`optuna.study` = 'fails'")
    kids = mlflow_runs(stores / "mlflow.db", f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert [r.info.status for r in kids] == ["FAILED", "FAILED"]


def test_pruned_trial(in_workspace, stores, monkeypatch):
    # A pruner that prunes any score below 1000 shows the report → should_prune → TrialPruned path.
    monkeypatch.setattr(search_mod.optuna.pruners, "MedianPruner",
                        lambda **kw: optuna.pruners.ThresholdPruner(lower=1000.0))
    space = {"params": {"loss.lambda_rect": {"type": "float", "low": 0.1, "high": 0.3}}}
    study = run_search(stores, space, 1, "pruned")
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [3]
    assert trial.user_attrs["pruned"].startswith("pruned at step 3")
    (run,) = mlflow_runs(stores / "mlflow.db", "tags.stage = 'trial 0' and tags.`optuna.study` = 'pruned'")
    assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "PRUNED"


def test_a_trial_failing_on_its_own_leaves_the_study_running(in_workspace, stores):
    # The first trial samples a ratio the params reject; the second a valid one: the study goes on
    # after the failure and the run exits 0 because not every trial failed.
    space = {"params": {"frequency.ratio": {"type": "categorical", "choices": [1.5, 0.25]}}}
    study = run_search(stores, space, 2, "one-fails", rc=0,
                       enqueue=[{"frequency.ratio": 1.5}, {"frequency.ratio": 0.25}])
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["error"].startswith("ConfigError: frequency.ratio")
    assert study.trials[1].params == {"frequency.ratio": 0.25}


# ------------------------------------------------------------------------------ prerequisites (issue 12)

def test_prerequisites_of_the_smoke_workspace(in_workspace):
    from dfa.stages.search_prereqs import missing

    assert missing(load_config("params.yaml", [], smoke=True)) == []
    # A cache made with other params is missing too; so is a synthetic set made with other params.
    (stale,) = missing(load_config("params.yaml", ["cache.flip=true"], smoke=True))
    assert stale.stage == "cache" and "made with other params" in stale.what
    (data, cache) = missing(load_config("params.yaml", ["data.synthetic.seed=5"], smoke=True))
    assert data.stage == "prepare" and "data.synthetic.seed: 0 != 5" in data.what
    assert cache.stage == "cache"  # cannot be checked against data that must be remade
    # No feature cache is needed when training runs the encoder online.
    assert missing(load_config("params.yaml", ["cache.enabled=false", "cache.dir=nowhere"], smoke=True)) == []
    (absent,) = missing(load_config("params.yaml", ["cache.dir=nowhere"], smoke=True))
    assert absent.stage == "cache" and absent.what.startswith("nowhere: feature cache missing")
    (clip,) = missing(load_config("params.yaml", ["clip.checkpoint=none.pt", "cache.enabled=false"], smoke=True))
    assert clip.stage == "pretrain-clip" and "none.pt" in clip.what
    (user_file,) = missing(load_config("params.yaml", ["clip.model=ViT-B-16", "clip.checkpoint=/no/vit.pt",
                                                       "cache.enabled=false"], smoke=True))
    assert user_file.stage is None  # no stage makes a user's CLIP weights


def test_search_before_the_cache_stops_in_one_line(smoke_workspace, dfa_cli, tmp_path):
    db = tmp_path / "optuna.db"
    cmd = ["search", "--smoke", "--space", str(REPO / "experiments/frequency.yaml"), "--study", "early",
           "-S", f"search.storage=sqlite:///{db}", "-S", "tracking.enabled=false", "--n-trials", "3"]
    proc = dfa_cli(smoke_workspace, *cmd, "-S", "cache.dir=cache/not-made", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("dfa search: error: cache/not-made: feature cache missing")
    assert "`dfa cache`" in line and "--prepare" in line
    proc = dfa_cli(smoke_workspace, *cmd, "-S", "cache.flip=true", check=False)  # stale: another fingerprint
    assert proc.returncode == 2 and "made with other params" in proc.stderr.strip()
    assert not db.exists()  # no study was started, no trial recorded


@pytest.mark.slow
def test_search_prepare_runs_the_missing_stages(tmp_path, dfa_cli):
    ws = tmp_path / "fresh"
    ws.mkdir()
    (ws / "params.yaml").write_text((REPO / "params.yaml").read_text())
    db = tmp_path / "optuna.db"
    cmd = ["search", "--smoke", "--space", str(REPO / "experiments/frequency.yaml"), "--study", "fresh",
           "-S", f"search.storage=sqlite:///{db}", "-S", "tracking.enabled=false", "--n-trials", "1",
           # below --smoke (which stages run is the claim, not what they make): a third of the images and steps
           "-S", "data.synthetic.num_pretrain=16", "-S", "pretrain.steps=4", "-S", "pretrain.warmup=1",
           "-S", "data.synthetic.num_train_aug=16", "-S", "data.synthetic.num_train=8",
           "-S", "data.synthetic.num_tune=4"]
    proc = dfa_cli(ws, *cmd, check=False)
    assert proc.returncode == 2 and "smoke/data/synthetic: dataset folder not found" in proc.stderr
    assert "`dfa prepare`" in proc.stderr and "(2 more missing)" in proc.stderr
    proc = dfa_cli(ws, *cmd, "--prepare")
    for stage in ("prepare", "pretrain-clip", "cache"):
        assert f"search --prepare: dfa {stage} --params params.yaml" in proc.stderr
    assert (ws / "smoke/cache/features/index.json").exists()
    study = optuna.load_study(study_name="fresh", storage=f"sqlite:///{db}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
