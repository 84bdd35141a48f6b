"""What every stage shares: repository paths, device, seeds, dataset handles, progress bars."""
from __future__ import annotations

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
from dfa.errors import WorkbenchError
from dfa.repo import git_commit, repo_root  # noqa: F401  (stages import them from here)

console = Console(stderr=True)


def device_of(cfg: Config) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError("device=cuda but no CUDA device is available")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def setup(cfg: Config) -> torch.device:
    """Threads, seeds, device: the first call of every stage."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    return device_of(cfg)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def layout_of(cfg: Config) -> Layout:
    root = Path(cfg.data.root)
    if not root.exists():
        raise WorkbenchError(f"{root}: dataset folder not found (data.root; run `dfa prepare` for the synthetic set)")
    return Layout(root, cfg.data.name)


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
