"""``dfa ablation``: the §7 table with reference and ceiling rows, mean ± std over seeds (§11, §12)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dfa.stages.ablation import Entry, entries, parse_list, parse_rows

SECTION_12 = {"row", "ceiling", "paper_seed_miou", "dataset", "seeds", "seed_miou_mean", "seed_miou_std",
              "mask_miou_mean", "mask_miou_std", "seg_miou_mean", "seg_miou_std", "missed_fg", "wrong_class",
              "spill_bg"}


def mlflow_runs(db: Path, flt: str):
    from mlflow.tracking import MlflowClient
    c = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return c.search_runs([c.get_experiment_by_name("dfa-smoke").experiment_id], filter_string=flt, max_results=200)


def test_plan_shares_untrained_rows_and_labels_ceilings():
    plan = entries([0, 1, 2, 3, 4], ["teacher", "labels", "areas", "grid"])
    assert [e.key for e in plan] == ["cam", "0", "1", "2", "3", "4", "features", "teacher-ceiling",
                                     "labels-ceiling", "areas-ceiling", "grid-ceiling"]
    assert [e.trains for e in plan] == [False, False, False, True, True, True, False, True, True, False, False]
    assert Entry("4", "areas").per_seed and not Entry("-", "grid").per_seed and not Entry("1").per_seed
    assert all("ceiling" in e.label for e in plan if e.ceiling != "none")
    assert (Entry("2", "teacher").config_row, Entry("3", "labels").config_row) == (2, 3)
    with pytest.raises(Exception, match="--ceilings"):
        parse_list("teacher,oracle", "ceilings", ["teacher", "labels", "areas", "grid"], str)
    assert parse_rows("") == [] and parse_rows("4,2,4") == [4, 2]          # '' runs only the ceilings asked for
    assert [e.key for e in entries(parse_rows(""), ["teacher"], references=False)] == ["teacher-ceiling"]


@pytest.fixture(scope="module")
def table(smoke_workspace, dfa_cli, tmp_path_factory):
    ws = tmp_path_factory.mktemp("ablation") / "ws"
    shutil.copytree(smoke_workspace, ws)
    db = ws / "mlflow.db"
    cmd = ["ablation", "--smoke", "--rows", "0,4", "--seeds", "0,1", "-S", f"tracking.uri=sqlite:///{db}"]
    dfa_cli(ws, *cmd, timeout=1200)
    return ws, db, cmd


def test_csv_has_the_section_12_columns_and_one_row_per_row_and_ceiling(table):
    import pandas as pd
    ws, _, _ = table
    df = pd.read_csv(ws / "smoke/reports/ablation.csv", dtype={"row": str})
    assert SECTION_12 <= set(df.columns)
    pairs = list(zip(df["row"], df["ceiling"]))
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == {("cam", "none"), ("0", "none"), ("4", "none"), ("features", "none"),
                          ("2", "teacher"), ("3", "labels"), ("4", "areas"), ("-", "grid")}
    assert set(df["seeds"]) == {"0 1"} and set(df["dataset"]) == {"synthetic"}
    by = {(r.row, r.ceiling): r for r in df.itertuples()}
    assert by["0", "none"].paper_seed_miou == 64.8 and by["4", "none"].paper_seed_miou == 79.1
    for key in (("cam", "none"), ("0", "none"), ("features", "none"), ("-", "grid")):
        assert by[key].seed_miou_std == 0 and pd.isna(by[key].seg_miou_mean)    # untrained: once, no decoder
    assert not pd.isna(by["4", "none"].seg_miou_mean)                  # row 4 (--decoder-rows 4): decoder on val
    for key in (("2", "teacher"), ("3", "labels")):
        assert pd.isna(by[key].seg_miou_mean)                              # trained, but not in --decoder-rows
    # the grid ceiling (ground truth on the token grid) bounds every non-ceiling row
    assert by["-", "grid"].seed_miou_mean >= df[df["ceiling"] == "none"]["seed_miou_mean"].max()
    for share in ("missed_fg", "wrong_class", "spill_bg"):
        assert df[share].between(0, 100).all()


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


def test_bad_rows_is_a_one_line_error(smoke_workspace, dfa_cli):
    proc = dfa_cli(smoke_workspace, "ablation", "--smoke", "--rows", "0,9", "-S", "tracking.enabled=false",
                   check=False)
    assert proc.returncode == 2 and "--rows" in proc.stderr and "Traceback" not in proc.stderr
    proc = dfa_cli(smoke_workspace, "ablation", "--smoke", "--rows", "", "--ceilings", "", "--no-references",
                   "-S", "tracking.enabled=false", check=False)
    assert proc.returncode == 2 and "nothing to run" in proc.stderr and "Traceback" not in proc.stderr
