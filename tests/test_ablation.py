"""``dfa ablation``: the §7 table with reference and ceiling rows, mean ± std over seeds (§11, §12)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dfa.stages.ablation import INIT, Entry, entries, parse_list, parse_rows

from tests.conftest import module_copy


@pytest.fixture(scope="module")
def smoke_workspace(smoke_workspace, tmp_path_factory) -> Path:
    """This module runs stages inside the workspace: its own copy of the session's (conftest)."""
    return module_copy(smoke_workspace, tmp_path_factory)


SECTION_12 = {"row", "ceiling", "paper_seed_miou", "dataset", "seeds", "seed_miou_mean", "seed_miou_std",
              "mask_miou_mean", "mask_miou_std", "seg_miou_mean", "seg_miou_std", "missed_fg", "wrong_class",
              "spill_bg"}


def mlflow_runs(db: Path, flt: str):
    from mlflow.tracking import MlflowClient
    c = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return c.search_runs([c.get_experiment_by_name("dfa-smoke").experiment_id], filter_string=flt, max_results=200)


def test_plan_shares_untrained_rows_and_labels_ceilings():
    plan = entries([0, 1, 2, 3, 4], ["teacher", "labels", "areas", "grid"])
    assert [e.key for e in plan] == ["cam", "0", "1", "2", "3", "4", "features", "2-init", "3-init", "4-init",
                                     "teacher-ceiling", "labels-ceiling", "areas-ceiling", "grid-ceiling"]
    assert [e.trains for e in plan] == [False, False, False, True, True, True, False, False, False, False, True, True,
                                        False, False]
    assert Entry("4", "areas").per_seed and not Entry("-", "grid").per_seed and not Entry("1").per_seed
    assert all("ceiling" in e.label for e in plan if e.ceiling != "none")
    assert (Entry("2", "teacher").config_row, Entry("3", "labels").config_row) == (2, 3)
    with pytest.raises(Exception, match="--ceilings"):
        parse_list("teacher,oracle", "ceilings", ["teacher", "labels", "areas", "grid"], str)
    assert parse_rows("") == [] and parse_rows("4,2,4") == [4, 2]          # '' runs only the ceilings asked for
    assert [e.key for e in entries(parse_rows(""), ["teacher"], references=False)] == ["teacher-ceiling"]


def test_untrained_heads_rows_are_their_trained_rows_at_step_0():
    """The "k-init" reference rows (§6 v3: what training adds): row k's config with its heads at
    init, no training, scored once. Their affinity is the trained row's at step 0, bit for bit,
    whatever the trained cell's seed, for both ``affinity.channels``; one step later it is not."""
    from types import SimpleNamespace

    import torch

    from dfa.affinity import head_shift
    from dfa.model import DFA
    from dfa.stages.ablation import entry_config

    plan = entries([0, 2, 3, 4], [], references=["untrained"])
    assert [e.key for e in plan] == ["0", "2", "3", "4", "2-init", "3-init", "4-init"]
    assert [e.key for e in entries([0, 1], [], references=["untrained", "cam"])] == ["cam", "0", "1"]
    init = Entry("3-init")
    assert init.config_row == 3 and not init.trains and not init.per_seed and "untrained heads" in init.label
    g = torch.Generator().manual_seed(0)
    full = torch.softmax(torch.randn(2, 2, 3, 26, 26, generator=g) * 3, -1)
    attn, heads = full.mean(2)[..., 1:, 1:], full[..., 1:, 1:]
    tokens = torch.randn(2, 2, 25, 12, generator=g)
    for channels in ("layers", "heads"):
        args = SimpleNamespace(params=None, smoke=False, overrides=[
            "clip.last_k=2", "decoder.width=16", "decoder.layers=1", "decoder.heads=2", "decoder.dropout=0.0",
            f"affinity.channels={channels}", "train.head_lr_mult=10"])
        for row in (2, 3, 4):
            ref_cfg = entry_config(args, Entry(f"{row}{INIT}"), 0, Path("unused"))
            cfg = entry_config(args, Entry(str(row)), 1, Path("unused"))
            assert ref_cfg.ablation == cfg.ablation and cfg.seed == 1
            ref = DFA(ref_cfg, 2, 12, 4, num_heads=3).eval()              # what untrained_model builds
            torch.manual_seed(cfg.seed)
            model = DFA(cfg, 2, 12, 4, num_heads=3)
            assert ref.uses_heads == model.uses_heads == (channels == "heads")
            with torch.no_grad():
                want = ref.row_affinities(ref.affinities(attn, (5, 5), tokens=tokens, heads=heads))
                got = model.row_affinities(model.affinities(attn, (5, 5), tokens=tokens, heads=heads))
            assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
            opt = torch.optim.AdamW(model.trainable_groups())
            aff = model.affinities(attn, (5, 5), tokens=tokens, heads=heads)
            (aff.s_raw.square().mean() + (aff.inv_raw.square().mean() if aff.inv_raw is not None else 0)).backward()
            opt.step()
            with torch.no_grad():
                moved = model.row_affinities(model.affinities(attn, (5, 5), tokens=tokens, heads=heads))
            assert all(float(head_shift(moved[k], want[k]).mean()) > 0 for k in want)


@pytest.fixture(scope="module")
def table(smoke_workspace, dfa_cli, tmp_path_factory):
    ws = tmp_path_factory.mktemp("ablation") / "ws"
    shutil.copytree(smoke_workspace, ws)
    db = ws / "mlflow.db"
    # half the smoke steps and images: the table's layout, seeds and resumption do not need more
    cmd = ["ablation", "--smoke", "--rows", "0,4", "--seeds", "0,1", "-S", f"tracking.uri=sqlite:///{db}",
           "-S", "train.steps=6", "-S", "data.max_seed_images=8"]
    dfa_cli(ws, *cmd, timeout=1200)
    return ws, db, cmd


def test_csv_has_the_section_12_columns_and_one_row_per_row_and_ceiling(table):
    import pandas as pd
    ws, _, _ = table
    df = pd.read_csv(ws / "smoke/reports/ablation.csv", dtype={"row": str})
    assert SECTION_12 <= set(df.columns)
    pairs = list(zip(df["row"], df["ceiling"]))
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == {("cam", "none"), ("0", "none"), ("4", "none"), ("features", "none"), ("4-init", "none"),
                          ("2", "teacher"), ("3", "labels"), ("4", "areas"), ("-", "grid")}
    assert set(df["seeds"]) == {"0 1"} and set(df["dataset"]) == {"synthetic"}
    by = {(r.row, r.ceiling): r for r in df.itertuples()}
    assert by["0", "none"].paper_seed_miou == 64.8 and by["4", "none"].paper_seed_miou == 79.1
    for key in (("cam", "none"), ("0", "none"), ("features", "none"), ("4-init", "none"), ("-", "grid")):
        assert by[key].seed_miou_std == 0 and pd.isna(by[key].seg_miou_mean)    # untrained: once, no decoder
        assert pd.isna(by[key].head_shift_mean)                                 # …and no head shift
    for key in (("4", "none"), ("4", "areas"), ("2", "teacher"), ("3", "labels")):   # §6 v3: trained heads moved
        assert by[key].head_shift_mean > 0 and by[key].head_shift_std >= 0
    assert by["4", "none"].head_shift_ha_mean > 0 and pd.isna(by["2", "teacher"].head_shift_ha_mean)
    assert by["4", "areas"].head_shift_mean == by["4", "none"].head_shift_mean     # the same models
    assert not pd.isna(by["4", "none"].seg_miou_mean)                  # row 4 (--decoder-rows 4): decoder on val
    for key in (("2", "teacher"), ("3", "labels")):
        assert pd.isna(by[key].seg_miou_mean)                              # trained, but not in --decoder-rows
    # the grid ceiling (ground truth on the token grid) bounds every non-ceiling row
    assert by["-", "grid"].seed_miou_mean >= df[df["ceiling"] == "none"]["seed_miou_mean"].max()
    # missed_fg and wrong_class are disjoint shares of the same foreground pixels (§12)
    assert (df[["missed_fg", "wrong_class", "spill_bg"]] >= 0).all().all()
    assert (df["missed_fg"] + df["wrong_class"] <= 100 + 1e-9).all()


def test_seeds_train_separate_models_and_the_table_resumes(table, dfa_cli):
    ws, db, cmd = table
    digests = {s: json.loads((ws / f"smoke/checkpoints/ablation-dfa/4/seed{s}/cell-4.json").read_text())
               for s in (0, 1)}
    assert all("seed_miou" in d["metrics"] for d in digests.values())
    import torch
    states = [torch.load(ws / f"smoke/checkpoints/ablation-dfa/4/seed{s}/model.pt", weights_only=False)["state_digest"]
              for s in (0, 1)]
    assert states[0] != states[1]                                  # the seed changes init and batch order
    cells = sorted((ws / "smoke/checkpoints/ablation-dfa").glob("*/seed*/cell-*.json"))
    before = {p: p.stat().st_mtime_ns for p in cells}
    dfa_cli(ws, *cmd, timeout=1200)                                # a repeat re-scores nothing
    assert {p: p.stat().st_mtime_ns for p in cells} == before


def test_markdown_figure_and_mlflow(table):
    ws, db, _ = table
    md = (ws / "smoke/reports/ablation.md").read_text()
    assert "±" in md and "teacher ceiling (row 2)" in md and "grid ceiling" in md and "wall time" in md
    assert "| head shift | A_ha shift |" in md and "row 4, untrained heads (reference)" in md
    assert "python -m dfa ablation --smoke --rows 0,4 --seeds 0,1" in md
    assert (ws / "smoke/reports/figures/ablation.png").read_bytes()[:4] == b"\x89PNG"
    parents = mlflow_runs(db, "tags.stage = 'ablation'")
    parent = parents[0]
    assert {"4.seed_miou_mean", "4.seed_miou_std", "grid-ceiling.seed_miou_mean"} <= set(parent.data.metrics)
    children = mlflow_runs(db, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    seeds = {(r.data.tags["ablation.row"], r.data.tags["ablation.ceiling"], r.data.tags["ablation.seed"])
             for r in children}
    assert {("4", "none", "0"), ("4", "none", "1"), ("4", "areas", "1"), ("cam", "none", "0")} <= seeds
    assert ("0", "none", "1") not in seeds                        # untrained rows run once


def test_timing_figure_reads_each_cells_phases_from_its_run(table):
    """reports/timings/ablation.png (issue 17): phases logged per cell; a repeat's cells are reuses."""
    from mlflow.tracking import MlflowClient

    from dfa.stages.ablation_timing import cell_timings
    ws, db, _ = table
    assert (ws / "smoke/reports/timings/ablation.png").read_bytes()[:4] == b"\x89PNG"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    first, repeat = sorted(mlflow_runs(db, "tags.stage = 'ablation'"), key=lambda r: r.info.start_time)[:2]
    cells = cell_timings(client, first.info.run_id)
    by = {c["label"]: c for c in cells}
    assert len(cells) == len(by) == 13                  # 9 entries: cam 0 4 features 4-init grid once, 4 ×2 …
    trained, scored = by["row 4 · seed 1"], by["raw CAM · seed 0"]
    assert trained["train"] > 0 and trained["score"] > 0 and trained["decoder"] > 0 and not trained["reused"]
    assert scored["score"] > 0 and scored["decoder"] == 0 and scored["train"] < trained["train"]
    assert all(c["wall_s"] >= c["train"] + c["score"] + c["decoder"] - 1e-6 for c in cells)
    again = cell_timings(client, repeat.info.run_id)
    assert len(again) == len(cells) and all(c["reused"] for c in again)


def test_bad_rows_is_a_one_line_error(smoke_workspace, dfa_cli):
    proc = dfa_cli(smoke_workspace, "ablation", "--smoke", "--rows", "0,9", "-S", "tracking.enabled=false",
                   check=False)
    assert proc.returncode == 2 and "--rows" in proc.stderr and "Traceback" not in proc.stderr
    proc = dfa_cli(smoke_workspace, "ablation", "--smoke", "--rows", "", "--ceilings", "", "--no-references",
                   "-S", "tracking.enabled=false", check=False)
    assert proc.returncode == 2 and "nothing to run" in proc.stderr and "Traceback" not in proc.stderr
