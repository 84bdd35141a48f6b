"""A throwaway PostgreSQL server for tests (issue 13): ``initdb`` into a temporary folder, ``pg_ctl``
on a Unix socket (no TCP port), databases on demand, stopped and deleted on teardown.

Import the fixture into a test module: ``from postgres_fixture import postgres  # noqa: F401``.
When the binaries (or psycopg) are absent every test using it is skipped with that reason.
"""
from __future__ import annotations

import shutil
import tempfile

import pytest

from dfa.local_postgres import LocalPostgres, unavailable


class Server:
    def __init__(self, pg: LocalPostgres):
        self.pg = pg

    def database(self, name: str) -> str:
        """Create ``name`` (empty) and return its SQLAlchemy URL."""
        self.pg.drop_db(name)
        self.pg.create_db(name)
        return self.pg.url(name)


@pytest.fixture(scope="session")
def postgres():
    why = unavailable()
    if why:
        pytest.skip(f"no throwaway PostgreSQL: {why}")
    # Under /tmp with a short name: the socket path must stay under 107 bytes, and as root the
    # server's own user must be able to reach the folder (pytest's tmp root is private to root).
    folder = tempfile.mkdtemp(prefix="dfa-pg-")
    pg = LocalPostgres(folder, durable=False).start()  # thrown away: no fsync
    try:
        yield Server(pg)
    finally:
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)
