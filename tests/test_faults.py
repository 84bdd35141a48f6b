"""Bad input gets a clear one-line error, and nothing finished is lost (issue 6)."""
from __future__ import annotations

import errno
import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from dfa.io import atomic_path, write_json
from tests.conftest import copy_of


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "timings" not in p.parts}


def test_atomic_write_survives_a_full_disk(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"seed_miou": 1.0})
    before = target.read_bytes()
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"seed_miou": ')  # half written when the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind


@pytest.fixture()
def ws(smoke_trained, tmp_path):
    """A private copy of the session's trained smoke workspace (the tests change files in it)."""
    return copy_of(smoke_trained, tmp_path / "ws")


def test_nan_loss_names_step_and_term_and_keeps_last_good_state(ws, dfa_cli):
    proc = dfa_cli(ws, "train", "--smoke", "-S", "tracking.enabled=false", "-S", "train.lr=1e30",
                   "-S", "train.dir=checkpoints/nan", "-S", "train.checkpoint_interval=1", check=False)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "non-finite loss at step" in line and "term '" in line and "Traceback" not in proc.stderr
    state = torch.load(ws / "checkpoints/nan-resume/last.pt", map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_corrupt_image_fails_the_stage_and_damages_nothing(ws, dfa_cli):
    dfa_cli(ws, "pseudo", "--smoke", "-S", "tracking.enabled=false")
    reports = _hashes(ws / "smoke/reports")
    names = (ws / "smoke/data/synthetic/ImageSets/Segmentation/train.txt").read_text().split()
    victim = ws / "smoke/data/synthetic/JPEGImages" / f"{names[-1]}.jpg"
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    shutil.rmtree(ws / "smoke/outputs")  # force recomputation
    proc = dfa_cli(ws, "pseudo", "--smoke", "-S", "tracking.enabled=false", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert victim.name in proc.stderr.strip().splitlines()[-1]
    assert _hashes(ws / "smoke/reports") == reports


def test_stale_cache_is_refused_by_train(ws, dfa_cli):
    proc = dfa_cli(ws, "train", "--smoke", "-S", "tracking.enabled=false", "-S", "clip.last_k=1", check=False)
    assert proc.returncode == 2
    assert "feature cache was made with other params" in proc.stderr


def test_clip_checkpoint_class_mismatch_is_named(ws, monkeypatch):
    monkeypatch.chdir(ws)
    from dfa.backbone.load import load_backbone
    from dfa.config import load_config
    from dfa.data.classes import VOC_SPEC
    from dfa.errors import WorkbenchError

    cfg = load_config("params.yaml", ["tracking.enabled=false"], smoke=True)
    with pytest.raises(WorkbenchError, match="does not match the dataset"):
        load_backbone(cfg, VOC_SPEC)
    ckpt = torch.load(cfg.clip.checkpoint, weights_only=False)
    ckpt["config"]["vision_cfg"]["width"] = 48
    torch.save(ckpt, ws / "bad.pt")
    cfg.clip.checkpoint = str(ws / "bad.pt")
    from dfa.stages.common import class_spec
    with pytest.raises(WorkbenchError, match="architecture mismatch"):
        load_backbone(cfg, class_spec(cfg))


def test_missing_dataset_folder_and_bad_param(tmp_path, dfa_cli):
    from tests.conftest import REPO
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    proc = dfa_cli(tmp_path, "cache", "-S", "tracking.enabled=false", "-S", "data.root=nowhere", check=False)
    assert proc.returncode == 2 and "nowhere: dataset folder not found" in proc.stderr
    proc = dfa_cli(tmp_path, "train", "-S", "frequency.ratio=1.5", check=False)
    assert proc.returncode == 2 and "frequency.ratio" in proc.stderr and "(0, 1]" in proc.stderr


def test_unwritable_output_is_one_line(ws, dfa_cli):
    (ws / "smoke/reports/metrics/pseudo.json").unlink(missing_ok=True)
    (ws / "smoke/reports/metrics").rmdir() if not any((ws / "smoke/reports/metrics").iterdir()) else None
    blocker = ws / "smoke/reports" / "metrics_blocker"
    blocker.write_text("x")
    # A file where the stage needs a folder: the write fails like on a read-only mount.
    proc = dfa_cli(ws, "pseudo", "--smoke", "-S", "tracking.enabled=false", "-S",
                   "train.dir=smoke/checkpoints/dfa", check=False)
    assert proc.returncode == 0  # sanity: the normal run works
    target = ws / "smoke/outputs"
    shutil.rmtree(target)
    target.write_text("not a folder")
    proc = dfa_cli(ws, "pseudo", "--smoke", "-S", "tracking.enabled=false", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "outputs" in proc.stderr.strip().splitlines()[-1]
