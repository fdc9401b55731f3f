"""The PostgreSQL the store tests use: 127.0.0.1:5432, database `test`, trust auth (as on the dev machines
and in CI). `pg_url()` returns its URL, starting the local cluster first when it is installed but stopped
(`pg_ctlcluster`, as root). Without one the test is skipped, unless NLWEB_REQUIRE_POSTGRES is set (CI sets
it: there a PostgreSQL test must run, and `.ci/run` starts or installs the server)."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

PG_URL = os.environ.get("NLWEB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
_checked: list[str] = []


def _reachable(psycopg) -> str | None:
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
        return None
    except psycopg.OperationalError as e:
        return str(e).strip()


def _start_local_cluster() -> None:
    if not shutil.which("pg_ctlcluster") or os.geteuid() != 0:
        return
    for conf in glob.glob("/etc/postgresql/*/main"):
        version = conf.split("/")[3]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                       capture_output=True, timeout=60)


def pg_url() -> str:
    """The test database's URL; skips (or fails under NLWEB_REQUIRE_POSTGRES) when none answers."""
    psycopg = pytest.importorskip("psycopg")
    if _checked:
        return _checked[0]
    problem = _reachable(psycopg)
    if problem is not None:
        _start_local_cluster()
        problem = _reachable(psycopg)
    if problem is not None:
        msg = f"no PostgreSQL at {PG_URL}: {problem}"
        if os.environ.get("NLWEB_REQUIRE_POSTGRES"):
            pytest.fail(msg + " (NLWEB_REQUIRE_POSTGRES is set; .ci/run starts one)")
        pytest.skip(msg)
    _checked.append(PG_URL)
    return PG_URL
