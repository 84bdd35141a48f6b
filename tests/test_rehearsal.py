"""The VOC dress rehearsal (experiments/rehearse.py) and a real tree without a tune list."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dfa.data.checker import check_data_main
from dfa.data.classes import VOC_CLASSES
from dfa.data.dataset import load_labels
from dfa.data.io import image_size, read_mask
from dfa.data.layout import Layout
from dfa.data.rehearsal import generate
from stage_runner import run_command
from tests.conftest import REPO, run_dfa


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rehearsal") / "VOCdevkit/VOC2012"
    generate(root, "voc", num_train_aug=10, num_train=3, num_val=2, size=(75, 100))
    return root


def test_the_stand_in_tree_has_vocs_layout_and_passes_the_checker(tree, capsys):
    layout = Layout(tree, "voc")
    lists = {s: layout.read_list(s) for s in ("train_aug", "train", "val")}
    assert lists["train"] == lists["train_aug"][:3] and not set(lists["val"]) & set(lists["train_aug"])
    assert not layout.list_path("tune").exists()  # as VOC is unpacked: `dfa prepare` draws it
    labels = load_labels(layout.labels_path())
    assert set(labels) == set(lists["train_aug"]) | set(lists["val"])
    assert {v.shape for v in labels.values()} == {(len(VOC_CLASSES),)}
    for name in lists["train_aug"]:
        h, w = image_size(layout.image_path(name))
        assert 67 <= h <= 83 and 90 <= w <= 110 and h < w   # VOC's 375×500 scaled, ±10 %
        assert read_mask(layout.mask_path(name)).shape == (h, w)
    assert check_data_main(tree, "voc", counts=False) == 0, capsys.readouterr().err


@pytest.mark.slow
def test_a_smoke_run_on_a_tree_without_tune_draws_it_in_memory(tree, tmp_path):
    """`dfa train --smoke` used to stop at "list file for split 'tune' is missing"; it must run
    and write nothing into the user's tree."""
    (tmp_path / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    before = digest(tree)
    args = ["--smoke", "--profile", "voc", "-S", f"data.root={tree}", "-S", "clip.pretrained=null",
            "-S", "tracking.enabled=false"]
    for stage in ("prepare", "cache", "train"):   # train 2 steps: that it runs is the claim, not what it learns
        run_dfa(tmp_path, stage, *args, *(["-S", "train.steps=2", "-S", "train.warmup=1"] if stage == "train" else []))
    assert digest(tree) == before
    assert json.loads((tmp_path / "smoke/reports/metrics/data.json").read_text())["tune"] == 3
    # any other command names `dfa prepare` as the fix, in one line
    proc = run_dfa(tmp_path, "pseudo", *args[1:], check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "list file for split 'tune' is missing; run `dfa prepare`" in line


def rehearse_module():
    spec = importlib.util.spec_from_file_location("rehearse", REPO / "experiments/rehearse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_small_rehearsal_passes(tmp_path, capsys):
    """The rehearsal at a few images of a quarter of VOC's size (crop 320, ViT-B-16, K = 8 as in
    `make rehearse-voc`): every stage, its assertions, its MLflow runs. The script's own code runs
    here; its `dfa` commands run forked (stage_runner), as the other tests' do."""
    out = tmp_path / "rehearse"
    forked = lambda args, cwd, env: run_command(tuple(args), cwd, env, timeout=1800)  # noqa: E731
    code = rehearse_module().main(["--out", str(out), "--images", "4", "--seeds", "2", "--val", "1",
                                   "--steps", "2", "--size", "94", "125"], runner=forked)
    proc = SimpleNamespace(stdout=capsys.readouterr().out)
    assert code == 0, proc.stdout[-3000:]
    assert "rehearsal OK: 20×20 grid, K = 8, 21 OT columns" in proc.stdout
    assert "numbers mean NOTHING" in proc.stdout
    columns = json.loads((out / "outputs/pseudo/ot_columns.json").read_text())
    # (this test replaced test_pipeline's ViT-B-16 VOC code path: the same stages, plus the profile)
    ev = json.loads((out / "reports/metrics/eval.json").read_text())
    assert ev["dataset"] == "voc" and len(ev["per_class_iou"]) == len(VOC_CLASSES) + 1 == 21
    assert json.loads((out / "reports/metrics/train.json").read_text())["grid"] == [20, 20]
    assert len(columns) == 2 and all(len(v) == 21 for v in columns.values())
    assert np.load(out / "VOCdevkit/VOC2012/cls_labels_onehot.npy", allow_pickle=True).item()
