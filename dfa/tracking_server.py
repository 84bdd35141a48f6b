"""``python -m dfa.tracking_server``: one MLflow tracking server for a lab (``make mlflow-server``).

``mlflow server`` with a PostgreSQL backend store (``--backend``, any SQLAlchemy URL;
``postgresql://`` means psycopg 3) and an artifact root it serves itself (``--artifacts``,
proxied: clients upload through the server, so other machines need no shared disk). Point
every stage at it with ``-S tracking.uri=http://HOST:PORT``. ``--allowed-hosts`` is passed on
to MLflow's host check, needed when other machines reach the server by a name or address
other than localhost.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from dfa.tracking import resolve_uri


def command(backend: str, artifacts: str | Path, host: str, port: int, allowed_hosts: str | None = None,
            workers: int = 2) -> list[str]:
    mlflow = shutil.which("mlflow", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    cmd = [mlflow or "mlflow", "server", "--backend-store-uri", resolve_uri(backend, Path.cwd()),
           "--artifacts-destination", Path(artifacts).resolve().as_uri(), "--serve-artifacts",
           "--host", host, "--port", str(port), "--workers", str(workers)]
    return cmd + (["--allowed-hosts", allowed_hosts] if allowed_hosts else [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dfa.tracking_server", description=__doc__.splitlines()[0])
    p.add_argument("--backend", required=True, help="backend store URL, e.g. postgresql://USER@HOST/mlflow")
    p.add_argument("--artifacts", default="mlartifacts-server", help="artifact root the server writes to")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--allowed-hosts", default=None, help="e.g. 'gpu-box:5000,10.0.0.5:5000'")
    p.add_argument("--workers", type=int, default=2, help="server worker processes")
    a = p.parse_args(argv)
    Path(a.artifacts).mkdir(parents=True, exist_ok=True)
    cmd = command(a.backend, a.artifacts, a.host, a.port, a.allowed_hosts, a.workers)
    print(" ".join(cmd), flush=True)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main())
