"""Sections ``tracking`` (MLflow) and ``search`` (Optuna studies and their workers)."""
from __future__ import annotations

from dataclasses import dataclass, field

from dfa.config.checks import ConfigError, _nonneg, _positive


@dataclass
class TrackingConfig:
    """MLflow tracking (issue 4). Relative sqlite paths resolve from the repository root."""
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "dfa"


@dataclass
class SearchConfig:
    """Optuna studies (issue 4) and their parallel workers (issue 13).

    ``storage``: an RDB URL; SQLite (one writer at a time) for one process, ``postgresql://``
    (psycopg 3) for ``--workers`` > 1 or workers on several machines. ``devices``: one
    ``CUDA_VISIBLE_DEVICES`` value per worker, round-robin (empty: workers inherit it).
    A worker that stops sending heartbeats every ``heartbeat_s`` for ``grace_s`` seconds has
    its trial failed and re-queued, at most ``max_retry`` times per trial.
    """
    storage: str = "sqlite:///optuna.db"
    train_steps: int = 300
    report_every: int = 100
    devices: list[int | str] = field(default_factory=list)
    heartbeat_s: int = 60
    grace_s: int = 180
    max_retry: int = 3

    def check(self) -> None:
        _positive("search.heartbeat_s", self.heartbeat_s)
        if not self.grace_s > self.heartbeat_s:
            raise ConfigError(f"search.grace_s: must be > search.heartbeat_s ({self.heartbeat_s}), got {self.grace_s}")
        _nonneg("search.max_retry", self.max_retry)
