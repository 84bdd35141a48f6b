"""A PostgreSQL cluster in a folder: ``initdb``, ``pg_ctl start`` on a Unix socket, databases, stop.

Used by the tests (a throwaway server per session), by ``dfa bench`` (``search_scaling``)
and by ``make postgres`` (one machine's server for a shared Optuna storage and MLflow
store). The server listens on a socket in ``<folder>/sock`` and, unless ``listen`` is given,
on no TCP port at all. Authentication is ``trust`` for local connections: a folder-local
server for one user, not a lab's production database (README "Scaling out"). It is durable
(fsync on) unless made with ``durable=False``, as the tests' throwaway server is.

PostgreSQL refuses to run as root; these machines and CI run as root, so there the server
runs as the unprivileged ``postgres`` user (else ``nobody``) and owns the folder.

``python -m dfa.local_postgres start DIR [--db NAME ...]`` prints the URLs;
``python -m dfa.local_postgres stop DIR`` stops it.
"""
from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

BINARIES = ("initdb", "pg_ctl")


def find_binary(name: str) -> str | None:
    """``name`` on PATH, else in Debian's versioned folder (``/usr/lib/postgresql/<v>/bin``)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def unavailable() -> str | None:
    """Why no local server can be started here, or None."""
    absent = [b for b in BINARIES if find_binary(b) is None]
    if absent:
        return f"PostgreSQL binaries not found: {', '.join(absent)} (install postgresql, e.g. apt-get install postgresql)"
    if os.geteuid() == 0 and _server_user() is None:
        return "running as root and neither a 'postgres' nor a 'nobody' user exists to run the server"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg (the PostgreSQL driver) is not installed: pip install 'psycopg[binary]'"
    return None


def _server_user() -> pwd.struct_passwd | None:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


class LocalPostgres:
    """One cluster under ``folder`` (``data/``, ``sock/``, ``server.log``)."""

    def __init__(self, folder: str | Path, port: int = 5432, listen: str = "", durable: bool = True):
        self.durable = durable  # False: fsync off, for throwaway servers (tests) only
        self.folder = Path(folder).resolve()
        self.data = self.folder / "data"
        self.sock = self.folder / "sock"
        self.log = self.folder / "server.log"
        self.port = port
        self.listen = listen
        self.user = _server_user() if os.geteuid() == 0 else None

    # ------------------------------------------------------------------ commands
    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [find_binary(cmd[0]) or cmd[0], *cmd[1:]]
        if self.user is not None:
            argv = ["runuser", "-u", self.user.pw_name, "--", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} exited {proc.returncode}: "
                               f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or ''}")
        return proc

    def _own(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        if self.user is not None:
            for path in (self.folder, self.sock, *( [self.data] if self.data.exists() else [])):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
            if self.log.exists():
                os.chown(self.log, self.user.pw_uid, self.user.pw_gid)

    def running(self) -> bool:
        return self.data.exists() and self._run("pg_ctl", "status", "-D", str(self.data), check=False).returncode == 0

    def start(self) -> "LocalPostgres":
        """initdb (first time only) and start; waits until the server accepts connections."""
        self._own()
        if self.user is not None and subprocess.run(["runuser", "-u", self.user.pw_name, "--", "test", "-w",
                                                     str(self.folder)]).returncode != 0:
            raise RuntimeError(f"{self.folder}: the '{self.user.pw_name}' user that runs the server cannot reach it "
                               f"(a parent folder is private); use a folder under /tmp or /srv")
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                      *([] if self.durable else ["--no-sync"]))
        if not self.running():
            opts = f"-k {self.sock} -p {self.port} -c listen_addresses='{self.listen}'"
            if not self.durable:
                opts += " -c fsync=off -c synchronous_commit=off"
            self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", opts)
        return self

    def stop(self) -> None:
        if self.running():
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data), check=False)

    # ------------------------------------------------------------------ databases
    def url(self, db: str) -> str:
        """A SQLAlchemy URL for Optuna and MLflow: ``postgresql+psycopg://`` over the socket."""
        return f"postgresql+psycopg://postgres@/{db}?host={self.sock}&port={self.port}"

    def create_db(self, *names: str) -> None:
        import psycopg

        with psycopg.connect(host=str(self.sock), port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            have = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
            for name in names:
                if name not in have:
                    conn.execute(f'CREATE DATABASE "{name}"')

    def drop_db(self, *names: str) -> None:
        import psycopg

        with psycopg.connect(host=str(self.sock), port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dfa.local_postgres", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("folder")
    parser.add_argument("--db", action="append", default=[], help="database to create (repeatable)")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--listen", default="", help="TCP addresses to listen on (default: none, socket only)")
    args = parser.parse_args(argv)
    why = unavailable()
    if why:
        print(f"local_postgres: error: {why}", file=sys.stderr)
        return 2
    pg = LocalPostgres(args.folder, args.port, args.listen)
    if args.action == "stop":
        pg.stop()
        print(f"stopped {pg.data}")
        return 0
    if args.action == "status":
        print("running" if pg.running() else "stopped")
        return 0 if pg.running() else 1
    pg.start()
    pg.create_db(*args.db)
    print(f"PostgreSQL running: data {pg.data}, socket {pg.sock}, log {pg.log}")
    for db in args.db:
        print(f"{db}: {pg.url(db)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
