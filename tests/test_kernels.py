"""What decides the arithmetic is recorded in ``env``, and the portable mode really pins it (dfa.kernels)."""
from __future__ import annotations

import json
import shutil

import pytest

from dfa.kernels import PortableError, portable_level, torch_build
from tests.conftest import REPO, run_dfa

SHOW = """PyTorch built with:
  - GCC 11.2
  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for Intel(R) 64 architecture applications
  - Intel(R) MKL-DNN v3.7.1 (Git Hash 8d263e693366ef8db40acc569cc7d8edf644556d)
  - OpenMP 201511 (a.k.a. OpenMP 4.5)
  - CPU capability usage: AVX512
  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, CXX_COMPILER=/opt/rh/gcc-toolset-11/root/usr/bin/c++, LAPACK_INFO=mkl,
"""


def test_torch_build_keeps_the_blas_mkl_and_onednn_versions():
    got = torch_build(SHOW)
    assert (got["blas"], got["mkl"], got["onednn"]) == ("mkl", "2024.2-Product", "3.7.1")
    assert got["config_sha"] != torch_build(SHOW.replace("3.7.1", "3.7.2"))["config_sha"]
    assert set(torch_build("PyTorch built with:\n  - Build settings: BLAS_INFO=open,")) == {"blas", "config_sha"}


def test_portable_levels():
    assert portable_level(None) is None and portable_level("0") is None
    assert portable_level("1") == "avx2" and portable_level("COMPATIBLE") == "compatible"
    with pytest.raises(PortableError, match="DFA_PORTABLE='avx9'"):
        portable_level("avx9")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("kernels")
    shutil.copy(REPO / "params.yaml", ws / "params.yaml")
    return ws


def env_of(ws) -> dict:
    return json.loads((ws / "smoke/reports/metrics/data.json").read_text())["env"]


def test_env_names_the_cpu_and_the_blas_build(workspace):
    run_dfa(workspace, "prepare", "--smoke", "-S", "tracking.enabled=false")
    env = env_of(workspace)
    assert env["cpu"]["model"] and env["cpu"]["vendor"]
    import torch
    assert env["torch_build"] == torch_build(torch.__config__.show())
    assert env["portable"] is False and "kernel_pins" not in env


PINS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
        "compatible": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}}


@pytest.mark.parametrize("how,level,capability", [("--portable", "avx2", "AVX2"),
                                                  ("DFA_PORTABLE=compatible", "compatible", "DEFAULT")])
def test_portable_mode_pins_the_kernels_before_torch_loads(workspace, how, level, capability, monkeypatch):
    """Under the portable mode torch dispatches to the pinned kernels whatever the CPU (the
    ``compatible`` level changes it on any x86 machine), and ``env`` records the mode and its pins."""
    flags = [how] if how.startswith("--") else []
    if not flags:
        monkeypatch.setenv(*how.split("="))
    run_dfa(workspace, "prepare", "--smoke", "-S", "tracking.enabled=false", *flags)
    env = env_of(workspace)
    assert env["cpu_capability"] == capability
    assert env["portable"] == level and env["kernel_pins"] == PINS[level]


def test_an_unknown_portable_level_stops_with_one_line(workspace, monkeypatch):
    monkeypatch.setenv("DFA_PORTABLE", "avx9")
    proc = run_dfa(workspace, "prepare", "--smoke", "-S", "tracking.enabled=false", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "dfa prepare: error: DFA_PORTABLE='avx9': expected 1, avx2, compatible or 0"]
