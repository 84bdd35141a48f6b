"""End to end: every stage through the CLI, on the smoke benchmark and on the VOC code path."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import copy_of


def test_smoke_pipeline_end_to_end(smoke_trained, dfa_cli, tmp_path):
    """prepare → pretrain-clip → cache → train (the session fixtures) → pseudo → evaluate."""
    ws = copy_of(smoke_trained, tmp_path / "ws")
    debug = ("-S", "ot.debug=true")
    dfa_cli(ws, "pseudo", "--smoke", "-S", "tracking.enabled=false", *debug)
    dfa_cli(ws, "evaluate", "--smoke", "-S", "tracking.enabled=false")
    pseudo = json.loads((ws / "smoke/reports/metrics/pseudo.json").read_text())
    grid = [0.5, 1.0, 2.0]                                   # refine.bg_grid under --smoke
    assert pseudo["calibrated_on"] == "tune" and pseudo["bg_power_seed"] in grid and pseudo["bg_power_cam"] in grid
    assert set(pseudo["tune_miou"]["seed"]) == {str(p) for p in grid}
    assert max(pseudo["tune_miou"]["seed"].values()) == pytest.approx(pseudo["tune_miou"]["seed"][str(pseudo["bg_power_seed"])], abs=0.01)
    for kind in ("cam", "seed", "mask"):
        assert {f"{kind}_{s}" for s in ("miou", "missed_fg", "wrong_class", "spill_bg")} <= set(pseudo)
    # ot.debug: the plan's column sums per image, background first (absent classes None)
    columns = json.loads((ws / "smoke/outputs/pseudo/ot_columns.json").read_text())
    assert len(columns) == pseudo["images"]
    for sums in columns.values():
        assert sums[0] is not None and sum(v is not None for v in sums) >= 2
    # ... and how the transport went (method.md §5): per image in ot_images.json, summarised in pseudo.json
    records = json.loads((ws / "smoke/outputs/pseudo/ot_images.json").read_text())
    assert set(records) == set(columns)
    for name, rec in records.items():
        assert rec["columns"] == columns[name] and 1 <= rec["iters"] <= 100    # ot.max_iters
        # balanced OT (the smoke default): each present column carries its prior b_c, up to the
        # relative column error the solver reports (an independent read of the plan) and rounding
        for got, want in zip(rec["columns"], rec["prior"]):
            assert (got is None) == (want is None)
            if want:
                assert abs(got - want) <= rec["col_err"] * want + 2e-6, (name, got, want, rec["col_err"])
        if rec["converged"]:      # L1 marginal error < tol = 1e-6 over 64 tokens: relative row error < 64e-6
            assert rec["row_err"] < 64e-6 + 1e-7
        else:
            assert rec["iters"] == 100
        present = [c for c, v in enumerate(rec["prior"]) if v is not None]
        assert rec["empty_class"] == any(rec["argmax_area"][c] == 0 for c in present if c > 0)
        assert sum(rec["argmax_area"][c] for c in present) == pytest.approx(1.0, abs=1e-6)
    ot = pseudo["ot"]
    assert ot["images"] == pseudo["images"] and ot["max_iters"] == 100
    assert ot["row_err_max"] == pytest.approx(max(r["row_err"] for r in records.values()))
    assert ot["not_converged"] == sum(not r["converged"] for r in records.values())
    assert ot["empty_class_images"] == sum(r["empty_class"] for r in records.values())
    ev = json.loads((ws / "smoke/reports/metrics/eval.json").read_text())
    per_class = [v for v in ev["per_class_iou"].values() if v is not None]
    assert sum(per_class) / len(per_class) == pytest.approx(ev["seg_crf_miou"], abs=1e-6)
    assert set(ev["per_class_iou"]) >= {"background", "boat"}
    train = json.loads((ws / "smoke/reports/metrics/train.json").read_text())
    assert train["final_step"] == 12 and len(train["state_digest"]) == 64
    assert train["grid"] == [8, 8] and train["resolved"] == {"radius": "3×3", "window": "3×3", "box": "3×3"}
    for png in ("smoke/reports/figures/pseudo_grid.png", "smoke/reports/figures/eval_grid.png"):
        assert Image.open(ws / png).size[0] > 100
    assert len(list((ws / "smoke/outputs/pseudo/mask").glob("*.png"))) == pseudo["images"]
    # A second `dfa pseudo` reads the finished masks back instead of recomputing them.
    before = {p: p.stat().st_mtime_ns for p in (ws / "smoke/outputs/pseudo/mask").glob("*.png")}
    dfa_cli(ws, "pseudo", "--smoke", "-S", "tracking.enabled=false", *debug)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    again = json.loads((ws / "smoke/reports/metrics/pseudo.json").read_text())
    assert again["seed_miou"] == pseudo["seed_miou"] and again["ot"] == pseudo["ot"]   # the OT summary resumes too
    # the oracle prior is refused outside the areas ceiling
    proc = dfa_cli(ws, "pseudo", "--smoke", "-S", "tracking.enabled=false", "-S", "ot.prior=oracle", check=False)
    assert proc.returncode == 2 and "areas ceiling" in proc.stderr


def test_cached_and_online_features_agree(smoke_workspace, monkeypatch, tmp_path):
    """The cache stores what the frozen encoder gives for the same view (fp16 round-off)."""
    # a private copy: the session workspace is shared with the other xdist worker and with
    # smoke_trained, which depends on it (a module-scoped override of it would be a scope error)
    monkeypatch.chdir(copy_of(smoke_workspace, tmp_path / "ws"))
    from dfa.config import load_config
    from dfa.data.io import read_image
    from dfa.features_cache import CachedViews
    from dfa.stages.common import class_spec, layout_of
    from dfa.stages.views import extractor, normalise, square_view

    cfg = load_config("params.yaml", ["tracking.enabled=false"], smoke=True)
    views = CachedViews(cfg.cache.dir)
    ext = extractor(cfg, class_spec(cfg), "cpu")
    layout = layout_of(cfg)
    pairs = [(views.names[0], False), (views.names[3], views.views_per_image == 2)]   # flips when cached
    for name, flip in pairs:
        cached = views.batch([views.view_index(name, int(flip))])
        view = square_view(read_image(layout.image_path(name)), cfg.data.crop_size, flip)
        assert np.array_equal(cached["image"][0].numpy(), view)
        online = ext(normalise(view[None], cfg))
        for key, tol in (("tokens", 2e-2), ("attn", 1e-3), ("cos", 2e-3), ("cos_bg", 2e-3)):
            a, b = cached[key].float(), getattr(online, key)
            assert a.shape == b.shape, key
            assert torch.allclose(a, b, atol=tol, rtol=1e-2), (key, (a - b).abs().max())


@pytest.mark.slow
def test_train_with_torch_compile(smoke_workspace, dfa_cli, tmp_path):
    """`train.compile=true` compiles the decoder in place; the checkpoint keeps plain keys."""
    ws = tmp_path / "ws"
    shutil.copytree(smoke_workspace, ws)
    dfa_cli(ws, "train", "--smoke", "-S", "tracking.enabled=false", "-S", "train.compile=true", timeout=900)
    state = torch.load(ws / "smoke/checkpoints/dfa/model.pt", weights_only=False)["model"]
    assert not any("_orig_mod" in k for k in state)
    dfa_cli(ws, "pseudo", "--smoke", "-S", "tracking.enabled=false")
