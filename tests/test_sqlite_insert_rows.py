"""`sqlite_insert_rows`: multi-row INSERTs that bind a value shared by every row of a statement once.

What is stored must be exactly what one INSERT per row stores, whatever repeats and whatever does not."""
from __future__ import annotations

import sqlite3

import pytest

from nlweb_local.core.batch_writer import SQLITE_ROWS_PER_INSERT, _statement, sqlite_insert_rows

COLUMNS = ("a", "b", "c", "d", "e")
DDL = "CREATE TABLE t (a INTEGER, b TEXT, c REAL, d TEXT, e BLOB)"


def _both(rows, **kw):
    """(what sqlite_insert_rows stored, what one plain INSERT per row stored), each with the stored types."""
    got = []
    for insert in (lambda c: sqlite_insert_rows(c, f"INSERT INTO t ({', '.join(COLUMNS)}) VALUES ", 5, rows, **kw),
                   lambda c: c.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", rows)):
        conn = sqlite3.connect(":memory:")
        conn.execute(DDL)
        insert(conn)
        got.append(conn.execute("SELECT a, typeof(a), b, typeof(b), c, typeof(c), d, typeof(d), e, typeof(e) "
                                "FROM t ORDER BY rowid").fetchall())
        conn.close()
    return got


@pytest.mark.parametrize("n", [1, 2, SQLITE_ROWS_PER_INSERT - 1, SQLITE_ROWS_PER_INSERT, SQLITE_ROWS_PER_INSERT + 1, 130])
def test_rows_with_shared_and_varying_columns_read_back_as_row_by_row_inserts_store_them(n):
    rows = [(i, "same", 0.5, f"row {i}", b"\x00blob") for i in range(n)]
    mine, plain = _both(rows)
    assert mine == plain
    assert [r[0] for r in mine] == list(range(n)) and {r[2] for r in mine} == {"same"}


def test_equal_values_of_different_types_are_not_shared():
    """0, 0.0 and False are equal in Python but a TEXT column stores '0' and '0.0': never bound as one."""
    rows = [(1, 0, 1.0, 0, None), (2, 0.0, 1, 0.0, None), (3, False, 1.0, False, None)]
    mine, plain = _both(rows)
    assert mine == plain
    assert [r[2] for r in mine] == ["0", "0.0", "0"]  # (the TEXT column kept each value's own form)


def test_none_and_every_column_the_same():
    rows = [(None, "x", None, "", b"")] * 70
    mine, plain = _both(rows)
    assert mine == plain and len(mine) == 70


def test_a_statement_binds_a_shared_column_once():
    """The shape: shared columns are parameters 1..k, the rest follow column by column."""
    sql = _statement("INSERT INTO t (a, b, c) VALUES ", 3, 2, (1,))
    assert sql == "INSERT INTO t (a, b, c) VALUES (?2, ?1, ?4), (?3, ?1, ?5)"


def test_rows_of_the_wrong_width_are_refused():
    conn = sqlite3.connect(":memory:")
    conn.execute(DDL)
    with pytest.raises(ValueError, match="rows of 4 values for 5 columns"):
        sqlite_insert_rows(conn, "INSERT INTO t (a, b, c, d, e) VALUES ", 5, [(1, "x", 1.0, "y")])
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
