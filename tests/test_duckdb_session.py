"""The DuckDB warehouse session's executemany: rows of parameters go as one statement (each `?` a column of values
unnested), a VALUES row with constants keeps them, and whatever that rewrite cannot carry goes the slower ways,
always with the same rows as row-by-row inserts would give (on a real DuckDB file)."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import duckdb
import pytest

from cbm_luigi.settings import load_settings
from cbm_luigi.warehouse import open_warehouse
from cbm_luigi.warehouse.duckdb_wh import _row_items, release_connections

ROWS = [
    [1, "plain", Decimal("12.3400"), datetime(2026, 11, 30, 5, 6, 7, 891011), True, 1.5],
    [2, None, None, None, None, None],
    [3, "é\u001f'quoted', and a comma", Decimal("-0.0001"), datetime(1, 1, 1), False, -2.0],
    [4, "x" * 5000, Decimal("99999999999999.9999"), datetime(9999, 12, 31, 23, 59, 59, 999999), None, 0.0],
]
TABLE = ("CREATE TABLE t (id INTEGER, txt VARCHAR, amount DECIMAL(18, 4), stamp TIMESTAMP, flag BOOLEAN, "
         "x DOUBLE, kind VARCHAR, dflt INTEGER DEFAULT 7)")


@pytest.fixture
def session(tmp_path, monkeypatch):
    monkeypatch.setenv("CBM_ENV_FILE", "")
    monkeypatch.setenv("CBM_DUCKDB_PATH", str(tmp_path / "wh.duckdb"))
    monkeypatch.setenv("CBM_HOME", str(tmp_path))
    release_connections()
    wh = open_warehouse(load_settings())
    with wh.session() as s:
        s.execute(TABLE)
        yield s
    release_connections()


def _rows(s) -> list[tuple]:
    return s.query("SELECT * FROM t ORDER BY id")


def test_rows_of_parameters_and_constants_land_as_row_by_row_inserts_would(session, tmp_path):
    session.executemany("INSERT INTO t (id, txt, amount, stamp, flag, x, kind) VALUES (?, ?, ?, ?, ?, ?, 'split')",
                        ROWS)
    got = _rows(session)
    # the same rows through DuckDB's own row-by-row executemany, in a database of its own
    with duckdb.connect(str(tmp_path / "reference.duckdb")) as ref:
        ref.execute(TABLE)
        ref.executemany("INSERT INTO t (id, txt, amount, stamp, flag, x, kind) VALUES (?, ?, ?, ?, ?, ?, 'split')",
                        ROWS)
        want = ref.execute("SELECT * FROM t ORDER BY id").fetchall()
    assert got == want
    assert [r[:6] for r in got] == [tuple(r) for r in ROWS]
    assert {r[6] for r in got} == {"split"} and {r[7] for r in got} == {7}


def test_many_rows_keep_their_pairing(session):
    rows = [[i, f"row {i}", Decimal(i) / 100, None, i % 2 == 0, float(i)] for i in range(20_000)]
    session.executemany("INSERT INTO t (id, txt, amount, stamp, flag, x) VALUES (?, ?, ?, ?, ?, ?)", rows)
    assert session.query("SELECT count(*), count(*) FILTER (WHERE txt <> 'row ' || id OR amount * 100 <> id "
                         "OR x <> id OR flag <> (id % 2 = 0)) FROM t")[0] == (20_000, 0)


def test_a_parameter_inside_an_expression_and_a_short_row_take_the_slower_ways(session):
    session.executemany("INSERT INTO t (id, txt) VALUES (?, coalesce(?, 'none'))", [[1, None], [2, "b"]])
    assert session.query("SELECT id, txt FROM t ORDER BY id") == [(1, "none"), (2, "b")]
    with pytest.raises(duckdb.Error):  # a row missing a value is refused, never cut short
        session.executemany("INSERT INTO t (id, txt) VALUES (?, ?)", [[3, "c"], [4]])
    assert session.query("SELECT count(*) FROM t WHERE id > 2") == [(0,)]


def test_a_value_that_does_not_fit_is_refused_whole(session):
    with pytest.raises(duckdb.ConversionException):
        session.executemany("INSERT INTO t (id, txt) VALUES (?, ?)", [[1, "a"], [2 ** 40, "b"]])
    assert session.query("SELECT count(*) FROM t") == [(0,)]


@pytest.mark.parametrize("row, items", [
    ("(?, ?, ?)", ["?", "?", "?"]),
    ("(?, 'a,b', ?)", ["?", "'a,b'", "?"]),
    ("(?, 'it''s (x', now())", ["?", "'it''s (x'", "now()"]),
    ("(?, coalesce(?, 1))", None),
    ("(?, '?')", None),
    ("()", None),
    ("(?, (1, 2)", None),
])
def test_row_items(row, items):
    assert _row_items(row) == items
