"""``python -m dfa.tracking_init``: create the MLflow store and experiment once, serially.

MLflow 3 takes seconds to create a SQLite store and concurrent creation corrupts it, so
``make setup`` does it before any stage runs.
"""
from dfa.config import load_config
from dfa.tracking import init_store

if __name__ == "__main__":
    cfg = load_config("params.yaml")
    if cfg.tracking.enabled:
        print(f"MLflow store ready: {cfg.tracking.uri} (experiment id {init_store(cfg)})")
