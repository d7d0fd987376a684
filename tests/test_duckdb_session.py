"""The DuckDB warehouse session's executemany: rows of parameters go as one statement (each `?` a column of values
unnested), a VALUES row with constants keeps them, and whatever that rewrite cannot carry goes the slower ways,
always with the same rows as row-by-row inserts would give (on a real DuckDB file)."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import duckdb
import pytest

from cbm_luigi.settings import load_settings
from cbm_luigi.warehouse import open_warehouse
from cbm_luigi.warehouse.duckdb_wh import _one_kind, _row_items, release_connections

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


def _row_by_row(tmp_path, ddl: str, sql: str, rows, setup: str | None = None) -> list[tuple]:
    """The same rows through DuckDB's own executemany (a statement a row), in a database of its own."""
    with duckdb.connect(str(tmp_path / "reference.duckdb")) as ref:
        if setup:
            ref.execute(setup)
        ref.execute(ddl)
        ref.executemany(sql, rows)
        return ref.execute("SELECT * FROM t ORDER BY id").fetchall()


def test_rows_of_parameters_and_constants_land_as_row_by_row_inserts_would(session, tmp_path):
    assert all(_one_kind(list(c)) for c in zip(*ROWS))  # the one-statement way, not the multi-row VALUES
    session.executemany("INSERT INTO t (id, txt, amount, stamp, flag, x, kind) VALUES (?, ?, ?, ?, ?, ?, 'split')",
                        ROWS)
    got = _rows(session)
    assert got == _row_by_row(tmp_path, TABLE, "INSERT INTO t (id, txt, amount, stamp, flag, x, kind) VALUES "
                                               "(?, ?, ?, ?, ?, ?, 'split')", ROWS)
    assert [r[:6] for r in got] == [tuple(r) for r in ROWS]
    assert {r[6] for r in got} == {"split"} and {r[7] for r in got} == {7}


def test_many_rows_keep_their_pairing(session):
    rows = [[i, f"row {i}", Decimal(i).scaleb(-2), None, i % 2 == 0, float(i)] for i in range(20_000)]
    assert all(_one_kind(list(c)) for c in zip(*rows))  # the one-statement way, not the multi-row VALUES
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
    ("(?, DEFAULT)", None),
    ("(?, $$a,b$$)", None),
])
def test_row_items(row, items):
    assert _row_items(row) == items


MIXED = [  # found in review: one statement typed each list from all its values, and these landed otherwise
    ("bigint_next_to_float", "v BIGINT", [[1, 2 ** 60 + 1], [2, 2.0]]),
    ("decimal_next_to_float", "v DECIMAL(38, 10)", [[1, Decimal("1234567890123456.0123456789")], [2, 0.5]]),
    ("text_of_int_and_float", "v VARCHAR", [[1, 1], [2, 1.5]]),
    ("text_of_bool_and_int", "v VARCHAR", [[1, True], [2, 1]]),
    ("text_of_decimals", "v VARCHAR", [[1, Decimal("1.50")], [2, Decimal("2.123")]]),
]


@pytest.mark.parametrize("name, coldef, rows", MIXED, ids=[m[0] for m in MIXED])
def test_mixed_python_kinds_in_a_column_land_as_row_by_row(session, tmp_path, name, coldef, rows):
    ddl = f"CREATE TABLE t (id INTEGER, {coldef})"
    session.execute("DROP TABLE t")
    session.execute(ddl)
    session.executemany("INSERT INTO t (id, v) VALUES (?, ?)", rows)
    assert _rows(session) == _row_by_row(tmp_path, ddl, "INSERT INTO t (id, v) VALUES (?, ?)", rows)


def test_a_naive_timestamp_next_to_an_aware_one_is_not_shifted(session, tmp_path):
    """An aware datetime typed the whole list TIMESTAMPTZ, and the naive ones were read as UTC (review)."""
    zone = "SET TimeZone = 'Europe/Paris'"
    ddl = "CREATE TABLE t (id INTEGER, v TIMESTAMP)"
    rows = [[1, datetime(2026, 11, 30, 12, 0)], [2, datetime(2026, 11, 30, 12, 0, tzinfo=ZoneInfo("UTC"))]]
    session.execute("DROP TABLE t")
    session.execute(zone)
    session.execute(ddl)
    session.executemany("INSERT INTO t (id, v) VALUES (?, ?)", rows)
    got = _rows(session)
    assert got[0] == (1, datetime(2026, 11, 30, 12, 0))
    assert got == _row_by_row(tmp_path, ddl, "INSERT INTO t (id, v) VALUES (?, ?)", rows, setup=zone)


@pytest.mark.parametrize("item, want", [("$$a,b$$", "a,b"), ("DEFAULT", None)])
def test_a_dollar_quoted_constant_and_default_take_the_values_way(session, item, want):
    """`$$a,b$$` was split at its comma and joined again as 'a, b'; DEFAULT is no SELECT item (review)."""
    session.executemany(f"INSERT INTO t (id, txt) VALUES (?, {item})", [[1], [2]])
    assert session.query("SELECT id, txt FROM t ORDER BY id") == [(1, want), (2, want)]


def test_the_warehouse_keeps_no_parquet_footers(session):
    """DuckDB's parquet_metadata_cache keeps every footer it reads for the life of the process, outside its memory
    limit (600 batch files of 350 columns x 9 row groups held 266 MB), and a LoadAll reads hundreds: it stays off
    (it saved 3 ms a statement over stg; tried and removed)."""
    assert session.scalar("SELECT current_setting('parquet_metadata_cache')") in (False, "false")


def test_the_machines_memory_comes_from_the_warehouses_first_connection(tmp_path, monkeypatch):
    """machine_memory (DuckDB's default limit: the most a MERGE is raised to) is read from the warehouse's first
    connection, before it sets its own limit, instead of from a DuckDB opened for it (17-20 ms); the same value,
    also when this process opened the file before under another limit (DuckDB shares one instance a file, and its
    settings)."""
    from cbm_luigi.warehouse import duckdb_wh

    with duckdb.connect(":memory:") as con:
        default = duckdb_wh._bytes(con.execute("SELECT current_setting('memory_limit')").fetchone()[0])
    monkeypatch.setenv("CBM_ENV_FILE", "")
    monkeypatch.setenv("CBM_DUCKDB_PATH", str(tmp_path / "wh.duckdb"))
    monkeypatch.setenv("CBM_HOME", str(tmp_path))
    monkeypatch.setattr(duckdb_wh, "_DEFAULT_LIMIT", {})
    release_connections()
    held = duckdb.connect(str(tmp_path / "wh.duckdb"))
    held.execute("SET memory_limit = '100MB'")
    real, opened = duckdb.connect, []
    monkeypatch.setattr(duckdb_wh.duckdb, "connect", lambda *a, **k: opened.append(a) or real(*a, **k))
    try:
        settings = load_settings()
        wh = open_warehouse(settings)
        with wh.session() as s:  # then its own limit, set after
            have = duckdb_wh._bytes(s.scalar("SELECT current_setting('memory_limit')"))
            assert abs(have - duckdb_wh._bytes(settings.duckdb_memory_limit)) < 0.01 * have
        assert duckdb_wh.machine_memory() == default
        assert opened == [(str(tmp_path / "wh.duckdb"),)]  # the warehouse's alone
    finally:
        release_connections()
        held.close()
