"""``dfa ui`` and ``dfa dashboard``: MLflow's UI on the tracking store, optuna-dashboard on the
study storage (``make ui``, ``make dashboard``).

Both serve the store the stages write (``tracking.uri``, ``search.storage``; relative SQLite
paths resolve from the repository root, ``--smoke`` picks the smoke experiment and storage).
``dfa ui`` first marks the experiment for MLflow's model-training view and prints the URL of
its runs table, then becomes ``mlflow ui`` (exec), so Ctrl-C stops the server directly.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from dfa.config import Config
from dfa.errors import WorkbenchError
from dfa.repo import repo_root
from dfa.tracking import client_for, landing_url, resolve_uri


def ui(cfg: Config, args) -> int:
    uri = resolve_uri(cfg.tracking.uri, repo_root())
    _, experiment_id = client_for(cfg)  # creates the store if needed; sets the experiment's kind and view
    # plain print: a console would wrap the long URL on a narrow terminal
    print(f"MLflow UI on {uri}\nruns of experiment {cfg.tracking.experiment!r}: "
          f"{landing_url(f'http://{args.host}:{args.port}', experiment_id)}", flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                              "--host", args.host, "--port", str(args.port)])
    return 0  # not reached


def dashboard(cfg: Config, args) -> int:
    from optuna_dashboard import run_server

    url = resolve_uri(cfg.search.storage, repo_root())
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        raise WorkbenchError(f"{url[len('sqlite:///'):]}: no study storage yet (search.storage; "
                             f"`dfa search` creates it)")
    print(f"optuna-dashboard on {url}: http://{args.host}:{args.port}/", flush=True)
    run_server(url, host=args.host, port=args.port)
    return 0
