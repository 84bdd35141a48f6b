"""Dataset profiles (method.md §13), the sources of resolved values, and ``dfa config``."""
from __future__ import annotations

import shutil

import pytest
import yaml

from dfa.config import ConfigError, load_config
from dfa.config.profiles import study_sources
from dfa.tracking import stage_run
from tests.conftest import REPO, run_dfa

PARAMS = REPO / "params.yaml"
STUDY_KEYS = ["frequency.ratio", "frequency.temperature", "loss.align_start", "loss.lambda_align",
              "loss.lambda_rect", "ot.epsilon", "ot.prior"]
V3_KEYS = ["affinity.head", "train.head_lr_mult"]      # the v3 finalists (README, Choices)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace with only params.yaml: the profiles are found beside the code."""
    path = tmp_path_factory.mktemp("profiles")
    shutil.copy(PARAMS, path / "params.yaml")
    return path


def test_precedence_params_then_profile_then_overrides():
    cfg = load_config(PARAMS, ["profile=voc", "train.steps=5"])
    assert (cfg.train.steps, cfg.data.crop_size, cfg.clip.model) == (5, 320, "ViT-B-16")
    src = cfg.provenance.sources
    assert (src["train.steps"], src["data.crop_size"], src["seed"]) == ("override", "profile:voc", "default")
    # the profile replaces the study's values with the spec's, and says so
    assert (cfg.ot.prior, src["ot.prior"]) == ("cam_area", "profile:voc")
    # --smoke sits between the profile and -S
    smoke = load_config(PARAMS, ["profile=voc", "data.crop_size=96"], smoke=True)
    assert (smoke.train.steps, smoke.provenance.sources["train.steps"]) == (12, "smoke")
    assert (smoke.data.crop_size, smoke.provenance.sources["data.crop_size"]) == (96, "override")


def test_profile_key_in_the_params_file_is_the_same_switch(tmp_path):
    raw = yaml.safe_load(PARAMS.read_text())
    raw["profile"] = "voc"
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_config(path).to_dict() == load_config(PARAMS, ["profile=voc"]).to_dict()
    # the key picks a layer, it is not a value: a run without a profile keeps its fingerprints
    assert "profile" not in load_config(PARAMS).flat()


def test_without_a_profile_the_studys_values_say_so():
    cfg = load_config(PARAMS)
    assert cfg.provenance.profile is None
    assert cfg.provenance.non_default() == ({k: "study:method-v2b" for k in STUDY_KEYS}
                                            | {k: "study:method-v3-finalists" for k in V3_KEYS})
    assert set(study_sources()) == set(STUDY_KEYS) | set(V3_KEYS)
    # a value changed from the study's is no longer the study's
    assert load_config(PARAMS, ["ot.epsilon=0.1"]).provenance.sources["ot.epsilon"] == "override"


def test_unknown_profile_and_unknown_profile_key_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"profile 'vocc': unknown \(known: coco, voc"):
        load_config(PARAMS, ["profile=vocc"])
    bad = tmp_path / "mine.yaml"
    bad.write_text("data:\n  crop_size: 320\n  cropsize: 320\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: data.cropsize: unknown key"):
        load_config(PARAMS, [f"profile={bad}"])


@pytest.mark.parametrize("profile,fix", [("vocc", "unknown"), ("BAD", "data.cropsize: unknown key")])
def test_the_cli_stops_with_one_line_and_exit_2(ws, profile, fix):
    (ws / "bad.yaml").write_text("data:\n  cropsize: 320\n")
    proc = run_dfa(ws, "train", "--profile", "bad.yaml" if profile == "BAD" else profile, check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("dfa train: error:") and fix in line


def test_dfa_config_shows_each_value_with_its_source(ws):
    out = run_dfa(ws, "config", "--profile", "voc").stdout
    for line in ("model: ViT-B-16  profile:voc", "crop_size: 320  profile:voc", "steps: 30000  profile:voc",
                 "head_lr_mult: 10.0  profile:voc", "last_k: 8  profile:voc", "seed: 0  default"):
        assert line in out, line
    plain = run_dfa(ws, "config").stdout
    assert "prior: uniform  study:method-v2b" in plain and "epsilon: 0.14  study:method-v2b" in plain
    assert "steps: 400  default" in plain


def test_dfa_config_yaml_reads_back_as_the_same_config(ws):
    text = run_dfa(ws, "config", "--profile", "voc", "-S", "train.steps=7", "--format", "yaml").stdout
    assert "  steps: 7  # override" in text and "  crop_size: 320  # profile:voc" in text
    (ws / "resolved.yaml").write_text(text)
    assert load_config(ws / "resolved.yaml").to_dict() == load_config(PARAMS, ["profile=voc", "train.steps=7"]).to_dict()


def test_a_run_logs_its_profile_and_sources_in_mlflow(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DFA_PIPELINE_ID", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(PARAMS, ["profile=voc", "train.steps=9", f"tracking.uri={uri}", "tracking.experiment=t"],
                      smoke=True)
    with stage_run(cfg, "train") as run:
        run_id = run.run_id
    tags = MlflowClient(tracking_uri=uri).get_run(run_id).data.tags
    assert tags["dfa.profile"] == "voc"
    assert (tags["source.clip.model"], tags["source.train.steps"], tags["source.data.max_seed_images"]) == \
        ("profile:voc", "override", "smoke")
    assert "source.seed" not in tags  # default values are not tagged
