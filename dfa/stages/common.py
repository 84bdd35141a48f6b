"""What every stage shares: repository paths, device, seeds, dataset handles, progress bars,
metrics files, DenseCRF parameters."""
from __future__ import annotations

import dataclasses
import functools
import os
import random
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dfa.config import Config
from dfa.data.classes import ClassSpec, spec_for
from dfa.data.layout import DataError, Layout
from dfa.data.splits import tune_of
from dfa.errors import WorkbenchError
from dfa.io import write_json
from dfa.kernels import cpu_model, kernel_env, torch_build
from dfa.config.profiles import provenance_of
from dfa.repo import git_commit, repo_root  # noqa: F401  (stages import them from here)

console = Console(stderr=True)


def device_of(cfg: Config) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError("device=cuda but no CUDA device is available")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def setup(cfg: Config) -> torch.device:
    """Threads, deterministic kernels, seeds, device: the first call of every stage."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = device_of(cfg)
    if cfg.deterministic:
        # cuBLAS reads its workspace setting when CUDA starts, so it is set before any CUDA work.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    seed_everything(cfg.seed)
    return device


def run_env(cfg: Config) -> dict:
    """What a metric's last digits depend on besides params, code and data: the thread count,
    torch's version, the CPU kernel family torch dispatched to, the device, the CPU itself, the
    BLAS/oneDNN build and the portable mode's kernel pins (``dfa.kernels``)."""
    return {"threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "device": device_of(cfg).type,
            "deterministic": cfg.deterministic, "cpu": cpu_model(), "torch_build": _torch_build(),
            **kernel_env()}


@functools.cache
def _torch_build() -> dict[str, str]:
    return torch_build(torch.__config__.show())


def write_metrics(cfg: Config, path: str | Path, metrics: dict) -> None:
    """A stage's metrics JSON (under ``smoke/`` with --smoke), with :func:`run_env` as ``env`` and
    where the params came from as ``config_sources``: the profile and every key whose source is
    not ``default`` (``dfa.config.profiles``)."""
    write_json(cfg.out(path), {**metrics, "config_sources": provenance_of(cfg).record(), "env": run_env(cfg)})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def layout_of(cfg: Config) -> Layout:
    root = Path(cfg.data.root)
    if not root.exists():
        raise WorkbenchError(f"{root}: dataset folder not found (data.root; run `dfa prepare` for the synthetic set)")
    return with_smoke_tune(cfg, Layout(root, cfg.data.name, tune_split=cfg.data.tune_split))


def with_smoke_tune(cfg: Config, layout: Layout) -> Layout:
    """A ``--smoke`` run on a tree without a tune list draws it in memory, as ``dfa prepare``
    would write it (same names): a smoke run never writes into a user's tree. Otherwise the
    layout is unchanged, and a missing tune list names ``dfa prepare`` as the fix."""
    d = cfg.data
    if not cfg.smoke or layout.list_path(d.tune_split).exists():
        return layout
    with data_errors():
        names = tune_of(layout, d.train_split, d.seed_split, d.eval_split, cfg.seed)
    return dataclasses.replace(layout, memory={d.tune_split: tuple(names)})


def class_spec(cfg: Config) -> ClassSpec:
    layout_of(cfg)  # a missing dataset folder is named as such, not as a missing classes.json
    try:
        return spec_for(cfg.data.name, cfg.data.root)
    except (ValueError, DataError) as exc:
        raise WorkbenchError(str(exc)) from None


def progress() -> Progress:
    """A rich progress bar for loops over images or steps."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False, refresh_per_second=2)


@contextmanager
def data_errors():
    """Turn a DataError raised inside a stage into a one-line WorkbenchError."""
    try:
        yield
    except DataError as exc:
        raise WorkbenchError(str(exc)) from None


def limit(items: list, n: int) -> list:
    return items[:n] if n and n > 0 else items


def crf_params(cfg: Config) -> dict:
    """DenseCRF's keyword arguments from ``eval.crf`` (pseudo masks and ``dfa evaluate``)."""
    c = cfg.eval.crf
    return dict(iters=c.iters, gauss_sxy=c.gauss_sxy, gauss_compat=c.gauss_compat, bilateral_sxy=c.bilateral_sxy,
                bilateral_srgb=c.bilateral_srgb, bilateral_compat=c.bilateral_compat)
