"""benchmarks/audit_writer.py: one tiny run really writes its rows (SQLite, and PostgreSQL when one answers)
and prints figures of the right shape. Nothing here is timed: the figures are only checked for shape."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import audit_writer  # noqa: E402


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_tiny_run_writes_every_row_and_prints_its_figures(backend, capsys):
    args = ["--rows", "40", "--repeat", "2", "--batch", "16"]
    if backend == "postgres":
        pytest.importorskip("psycopg")
        from postgres_server import pg_url

        args += ["--database-url", pg_url()]
    assert audit_writer.main(args) == 0  # (it raises when the log did not write every row)
    out = capsys.readouterr().out
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["rows"] == 40 and figures["store"] == ("PostgreSQL" if backend == "postgres" else "SQLite")
    for part in ("make", "append", "through"):
        assert figures[f"{part}_us_per_row"] > 0 and len(figures["runs"][part]) == 2
        assert figures[f"{part}_us_per_row"] == min(figures["runs"][part])
    assert "CPU us a row" in out
