"""``dfa bench --smoke``: report structure and solver agreement.

Speedups are NOT asserted: speed targets live in the benchmark's own ``targets`` entry
(they depend on the machine and its load), never in unit tests.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from dfa.config import load_config
from dfa.stages.bench import SECTIONS, bench

from tests.conftest import module_copy


@pytest.fixture(scope="module")
def smoke_workspace(smoke_workspace, tmp_path_factory) -> Path:
    """This module runs stages inside the workspace: its own copy of the session's (conftest)."""
    return module_copy(smoke_workspace, tmp_path_factory)


REPO = Path(__file__).resolve().parents[1]
NUM = (int, float)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """Every section but ``search_scaling`` (its own test below, on the session's smoke workspace)."""
    ws = tmp_path_factory.mktemp("bench")
    shutil.copy(REPO / "params.yaml", ws / "params.yaml")
    timings = ws / "smoke" / "reports" / "timings"  # --smoke reads and writes under smoke/
    timings.mkdir(parents=True)
    (timings / "train.json").write_text(json.dumps({"stage": "train", "wall_s": 12.5, "peak_rss_mib": 900.0}))
    (timings / "cache_features.json").write_text(json.dumps({"stage": "cache_features", "wall_s": 3.0,
                                                             "peak_rss_mib": 1200.0}))
    # Not a pipeline stage: left out of the total.
    (timings / "ablation.json").write_text(json.dumps({"stage": "ablation", "wall_s": 99.0, "peak_rss_mib": 5000.0}))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ws)
        cfg = load_config("params.yaml", ["tracking.enabled=false"], smoke=True)
        sections = ",".join(s for s in SECTIONS if s != "search_scaling")
        assert bench(cfg, SimpleNamespace(only=sections, out=None)) == 0
        return json.loads((ws / "smoke" / "reports" / "bench.json").read_text())


def test_top_level_keys(report):
    assert {"sinkhorn", "train_step", "crf", "pipeline", "machine", "gpu", "targets"} <= set(report)
    assert report["smoke"] is True


def test_sinkhorn_entries_and_plan_agreement(report):
    sk = report["sinkhorn"]
    for shape in ("400x21", "1600x81"):
        r = sk[shape]
        for key in ("ours_ms", "pot_loop_ms", "pot_batch_ms", "speedup", "speedup_vs_loop", "ours_to_tol_ms"):
            assert isinstance(r[key], NUM) and r[key] > 0, key
        assert len(r["ours_ms_range"]) == 2 and r["ours_ms_range"][0] <= r["ours_ms"] <= r["ours_ms_range"][1]
        assert r["speedup"] == pytest.approx(min(r["pot_loop_ms"], r["pot_batch_ms"]) / r["ours_ms"], rel=1e-2)
        assert r["max_plan_diff"] < 1e-4
        assert r["max_plan_rel_diff"] < 1e-3
        assert r["max_plan_diff_vs_loop"] < 1e-4
        assert isinstance(r["ours_iters_to_tol"], int) and 0 < r["ours_iters_to_tol"] <= 1000


def test_train_step_entry(report):
    tr = report["train_step"]
    assert "smoke" in tr["arch"]
    assert tr["shapes"]["tokens"][0] == 2 and tr["shapes"]["attn"][1] == tr["last_k"]
    for key in ("cached_ms", "online_ms", "speedup"):
        assert isinstance(tr[key], NUM) and tr[key] > 0


def test_crf_entry(report):
    cr = report["crf"]
    assert cr["identical"] is True
    assert cr["workers"] == 2
    for key in ("serial_s", "parallel_s", "speedup", "warm_s", "speedup_warm", "pool_startup_s"):
        assert isinstance(cr[key], NUM) and cr[key] > 0


def test_pipeline_reads_stage_timings(report):
    pl = report["pipeline"]
    assert set(pl["stages"]) == {"train", "cache_features"}
    assert pl["total_wall_s"] == pytest.approx(15.5)
    assert pl["max_peak_rss_mib"] == pytest.approx(1200.0)


def test_machine_and_gpu(report):
    m = report["machine"]
    assert isinstance(m["cpu_count"], int) and isinstance(m["threads"], int)
    assert isinstance(m["torch"], str) and isinstance(m["device"], str)
    g = report["gpu"]
    assert "skipped" in g or isinstance(g["encoder_images_per_s"], NUM)


def test_targets_are_reported_not_enforced(report):
    for v in report["targets"].values():
        assert set(v) == {"target", "measured", "met"}
        assert v["met"] in (True, False, None)


def test_only_runs_the_named_sections(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "params.yaml", ["tracking.enabled=false"], smoke=True)
    out = tmp_path / "one.json"
    assert bench(cfg, SimpleNamespace(only="sinkhorn", out=str(out))) == 0
    rep = json.loads(out.read_text())
    assert rep["sections"] == ["sinkhorn"] and "sinkhorn" in rep
    assert not {"train_step", "crf", "gpu"} & set(rep)
    assert rep["targets"]["train_step.speedup"]["measured"] is None
    assert not (tmp_path / "reports" / "bench.json").exists()


def test_unknown_section_is_refused(tmp_path, monkeypatch):
    from dfa.errors import WorkbenchError
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "params.yaml", ["tracking.enabled=false"], smoke=True)
    with pytest.raises(WorkbenchError, match="unknown section"):
        bench(cfg, SimpleNamespace(only="sinkhorn,gpus", out=None))


@pytest.mark.slow
def test_search_scaling_entry(smoke_workspace, tmp_path, monkeypatch):
    from dfa.stages.bench.search_scaling import bench_search_scaling
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    cfg = load_config("params.yaml", ["tracking.enabled=false"], smoke=True)
    sc = bench_search_scaling(cfg, True, prepared=smoke_workspace)
    if "skipped" in sc:
        pytest.skip(f"search_scaling was skipped by the benchmark: {sc['skipped']}")
    assert sc["storage"] == "postgresql" and sc["trials_per_run"] == 4 and sc["warm_trials_per_min_2_workers"] > 0
    assert sc["trials_per_min_1_worker"] > 0 and sc["trials_per_min_2_workers"] > 0
    assert sc["speedup_2_workers"] == pytest.approx(sc["trials_per_min_2_workers"] / sc["trials_per_min_1_worker"],
                                                    abs=0.01)
    for backend in ("sqlite", "postgresql"):
        for kind in ("optuna", "mlflow"):
            ms = sc["overhead"][f"{kind}_{backend}_ms_per_trial"]
            lo, hi = sc["overhead"][f"{kind}_{backend}_ms_per_trial_range"]
            assert 0 < lo <= ms <= hi
        assert sc["overhead_ms_per_trial"][backend] > 0



def test_portable_section_runs_each_mode_under_its_own_pins(report):
    """Each mode in a fresh process: the kernel family torch reports there is the pinned one."""
    import torch

    have = torch.backends.cpu.get_cpu_capability()
    modes = report["portable"]["modes"]
    assert modes["default"]["capability"] == [have]
    if have in ("AVX2", "AVX512"):          # a CPU without AVX2 cannot take the avx2 path
        assert modes["avx2"]["capability"] == ["AVX2"]
    assert modes["compatible"]["capability"] == ["DEFAULT"]
    for mode in ("avx2", "compatible"):
        m = modes[mode]
        assert m["cost_cached"] == round(m["cached_ms"] / modes["default"]["cached_ms"], 3) > 0
        assert m["cost_online"] == round(m["online_ms"] / modes["default"]["online_ms"], 3) > 0
