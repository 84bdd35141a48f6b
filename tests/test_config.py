"""Params: loading params.yaml, ``-S`` dotted overrides, validation messages, ablation rows, --smoke."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dfa.config import (SMOKE_OVERRIDES, SMOKE_PATHS, SMOKE_SYNTHETIC_PATHS, AblationConfig, Config, ConfigError,
                        dump_yaml, flatten, load_config, parse_override)

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"


def test_params_yaml_loads_and_names_every_option():
    cfg = load_config(PARAMS)
    assert isinstance(cfg, Config) and not cfg.smoke
    written = set(flatten(yaml.safe_load(PARAMS.read_text())))
    # Every option is in params.yaml so `dvc exp run -S` and studies can reach it.
    assert set(cfg.flat()) - {"smoke"} == written - {"profile"}  # profile picks a layer (dfa.config.profiles)


def test_dumped_config_loads_back_identically(tmp_path):
    cfg = load_config(PARAMS, ["train.steps=7", "ablation.row=2"])
    path = tmp_path / "p.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path).to_dict() == cfg.to_dict()


def test_no_params_file_gives_defaults_and_a_missing_one_is_an_error(tmp_path):
    assert load_config(None).to_dict() == Config().to_dict()
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


@pytest.mark.parametrize("text, key, expected", [
    ("train.steps=100", "train.steps", 100),
    ("train.lr=1e-6", "train.lr", 1e-6),            # YAML 1.1 reads 1e-6 as a string
    ("ot.tol=1.0e-08", "ot.tol", 1e-8),
    ("loss.lambda_align=1", "loss.lambda_align", 1.0),  # an int where a float is expected
    ("cache.flip=false", "cache.flip", False),
    ("cache.enabled=true", "cache.enabled", True),
    ("eval.scales=[0.5, 1.0, 1.75]", "eval.scales", [0.5, 1.0, 1.75]),
    ("refine.par_dilations=[1,2]", "refine.par_dilations", [1, 2]),
    ("clip.templates=['a {}.', 'the {}.']", "clip.templates", ["a {}.", "the {}."]),
    ("clip.pretrained=null", "clip.pretrained", None),
    ("clip.pretrained=openai", "clip.pretrained", "openai"),
    ("data.synthetic.seed=5", "data.synthetic.seed", 5),
    ("ablation.row=null", "ablation.row", None),
    ("train.dir=checkpoints/x=y", "train.dir", "checkpoints/x=y"),  # only the first = splits
])
def test_dotted_overrides(text, key, expected):
    value = load_config(PARAMS, [text]).flat()[key]
    assert value == expected and type(value) is type(expected)


def test_later_overrides_win():
    assert load_config(PARAMS, ["train.steps=3", "train.steps=4"]).train.steps == 4


@pytest.mark.parametrize("text, key", [
    ("train.stepz=1", "train.stepz"),
    ("nosuch=1", "nosuch"),
    ("data.synthetic.colour=1", "data.synthetic.colour"),
])
def test_unknown_key_is_named(text, key):
    with pytest.raises(ConfigError) as err:
        load_config(PARAMS, [text])
    assert str(err.value).startswith(key) and "unknown key" in str(err.value)


@pytest.mark.parametrize("text, key, what", [
    ("train.steps=abc", "train.steps", "integer"),
    ("train.steps=1.5", "train.steps", "integer"),
    ("train.steps=true", "train.steps", "integer"),
    ("train.lr=fast", "train.lr", "number"),
    ("cache.flip=maybe", "cache.flip", "true/false"),
    ("eval.scales=3", "eval.scales", "list"),
    ("eval.scales=[1.0, big]", "eval.scales[1]", "number"),
    ("data.name=7", "data.name", "string"),
    ("train=5", "train", "mapping"),
])
def test_wrong_type_is_named(text, key, what):
    with pytest.raises(ConfigError) as err:
        load_config(PARAMS, [text])
    assert str(err.value).startswith(key + ":") and what in str(err.value)


@pytest.mark.parametrize("text, key, rng", [
    ("frequency.ratio=0", "frequency.ratio", "(0, 1]"),
    ("frequency.ratio=1.5", "frequency.ratio", "(0, 1]"),
    ("frequency.ratio=-0.2", "frequency.ratio", "(0, 1]"),
    ("loss.lambda_align=-0.1", "loss.lambda_align", ">= 0"),
    ("loss.lambda_rect=-1e-3", "loss.lambda_rect", ">= 0"),
    ("ot.lambda_h=-1", "ot.lambda_h", ">= 0"),
    ("ot.epsilon=0", "ot.epsilon", "> 0"),
    ("loss.alpha_momentum=1.5", "loss.alpha_momentum", "[0.0, 1.0]"),
    ("clip.similarity=dino", "clip.similarity", "surgery"),
    ("data.scale_range=[2.0, 1.0]", "data.scale_range", "low <= high"),
    ("refine.par_scale=0", "refine.par_scale", "(0, 1]"),
    ("refine.par_scale=2", "refine.par_scale", "(0, 1]"),
    ("cache.prefetch=-1", "cache.prefetch", ">= 0"),
    ("decoder.precision=fp16", "decoder.precision", "bf16"),
    ("clip.precision=half", "clip.precision", "auto"),
])
def test_out_of_range_names_key_and_range(text, key, rng):
    with pytest.raises(ConfigError) as err:
        load_config(PARAMS, [text])
    msg = str(err.value)
    assert msg.startswith(key + ":") and rng in msg


def test_boundary_values_are_accepted():
    cfg = load_config(PARAMS, ["frequency.ratio=1", "loss.lambda_align=0", "loss.lambda_rect=0"])
    assert (cfg.frequency.ratio, cfg.loss.lambda_align, cfg.loss.lambda_rect) == (1.0, 0.0, 0.0)


@pytest.mark.parametrize("text", ["train.steps", "=3", "train.steps=[1,"])
def test_malformed_override(text):
    with pytest.raises(ConfigError):
        parse_override(text)


@pytest.mark.parametrize("row", sorted(AblationConfig.ROWS))
def test_ablation_row_sets_the_toggles(row):
    # The row wins over toggles given beside it: a row is a complete setting.
    a = load_config(PARAMS, [f"ablation.row={row}", "ablation.align=false", "ablation.combination=product"]).ablation
    for k, v in AblationConfig.ROWS[row].items():
        assert getattr(a, k) == v, k


def test_ablation_rows_describe_the_paper_table():
    described = {r: load_config(None, [f"ablation.row={r}"]).ablation.describe() for r in AblationConfig.ROWS}
    assert described == {0: ("A_s", "E(⊙)"), 1: ("A_s ⊙ A_inv", "E(⊙)"), 2: ("A_la", "E(⊙)"),
                         3: ("A_la ⊙ A_ha", "E(⊙)"), 4: ("A_la, A_ha", "FG (OT scoring)")}


def test_ablation_row_null_keeps_the_toggles():
    a = load_config(PARAMS, ["ablation.row=null", "ablation.rectify=false", "ablation.combination=product"]).ablation
    assert (a.row, a.rectify, a.combination, a.learned_s) == (None, False, "product", True)


def test_unknown_ablation_row():
    with pytest.raises(ConfigError, match=r"^ablation\.row: .*0-4"):
        load_config(PARAMS, ["ablation.row=7"])


def test_smoke_sizes_and_paths():
    cfg = load_config(PARAMS, smoke=True)
    flat = cfg.flat()
    assert cfg.smoke
    for k, v in {**SMOKE_OVERRIDES, **SMOKE_PATHS, **SMOKE_SYNTHETIC_PATHS}.items():
        assert flat[k] == v, k
    # --smoke never points at the default benchmark's artifacts: everything it writes is under smoke/
    full = load_config(PARAMS).flat()
    for k in {**SMOKE_PATHS, **SMOKE_SYNTHETIC_PATHS}:
        assert flat[k] != full[k] and flat[k].removeprefix("sqlite:///").startswith("smoke/"), k
    assert cfg.tracking.experiment == full["tracking.experiment"] + "-smoke"
    assert cfg.out("reports/metrics/train.json") == Path("smoke/reports/metrics/train.json")
    assert load_config(PARAMS).out("reports/metrics/train.json") == Path("reports/metrics/train.json")


def test_overrides_apply_after_smoke():
    cfg = load_config(PARAMS, ["train.steps=3", "train.dir=elsewhere"], smoke=True)
    assert (cfg.train.steps, cfg.train.dir, cfg.data.root) == (3, "elsewhere", SMOKE_SYNTHETIC_PATHS["data.root"])


@pytest.mark.parametrize("name", ["voc", "custom"])
def test_smoke_reads_a_real_dataset_in_place_and_writes_under_smoke(tmp_path, name):
    raw = yaml.safe_load(PARAMS.read_text())
    raw["data"].update(name=name, root="/datasets/VOC2012")
    raw["clip"].update(checkpoint="/models/ViT-B-16.pt")
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path, smoke=True)
    # the dataset and its CLIP are inputs, read where they are ...
    assert (cfg.data.root, cfg.clip.checkpoint) == ("/datasets/VOC2012", "/models/ViT-B-16.pt")
    # ... and everything derived from them goes under smoke/, as on the embedded benchmark
    assert (cfg.train.dir, cfg.cache.dir) == (SMOKE_PATHS["train.dir"], SMOKE_PATHS["cache.dir"])
    assert cfg.search.storage == SMOKE_PATHS["search.storage"]
    assert cfg.train.steps == SMOKE_OVERRIDES["train.steps"]
    # the same with data.name given as an override
    cfg = load_config(PARAMS, [f"data.name={name}", "data.root=/datasets/x"], smoke=True)
    assert cfg.train.dir == SMOKE_PATHS["train.dir"] and cfg.data.root == "/datasets/x"
