"""Every mapping of the type table with its boundary values (longest string, extreme numbers, first and last
date, NULL), through the whole pipeline and each reader: embedded, pyodbc and arrow-odbc (real ODBC driver)."""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest

from cbm_luigi import demo_source
from cbm_luigi.demo_source import Col, TableDef
from cbm_luigi.tasks import LoadTable

from .conftest import build, succeeded
from .test_source_odbc import odbc_vars

LONG = ("é" * 31994) + "z"  # OpenEdge VARCHAR maximum, multi-byte
# doubles: the SQLite ODBC driver passes them as 15-digit text, so the largest double it can carry is this one
# (DBL_MAX itself arrives as -inf there, which conform.py refuses: see test_non_finite_double_is_refused)
COLS = [Col("id", "integer", nullable=False), Col("s-max", "varchar", 31995), Col("i32", "integer"),
        Col("i64", "bigint"), Col("dec38", "numeric", 38, 2), Col("dec15", "numeric", 15, 4), Col("d", "date"),
        Col("ts", "timestamp"), Col("b", "bit"), Col("f", "float"), Col("dat_mod", "date")]
ROWS = [
    (1, LONG, -2**31, -2**63, "-" + "9" * 36 + ".99", "-99999999999.9999", "0001-01-01", "0001-01-01 00:00:00.000",
     0, -1.79769313486231e308, "2026-01-01"),
    (2, "", 2**31 - 1, 2**63 - 1, "9" * 36 + ".99", "99999999999.9999", "9999-12-31", "9999-12-31 23:59:59.999",
     1, 5e-324, "2026-01-01"),
    (3, None, None, None, None, None, None, None, None, None, None),
]
EXPECTED = {
    1: {"s_max": LONG, "i32": -2**31, "i64": -2**63, "dec38": Decimal("-" + "9" * 36 + ".99"),
        "dec15": Decimal("-99999999999.9999"), "d": date(1, 1, 1), "ts": datetime(1, 1, 1), "b": False,
        "f": -1.79769313486231e308},
    2: {"s_max": "", "i32": 2**31 - 1, "i64": 2**63 - 1, "dec38": Decimal("9" * 36 + ".99"),
        "dec15": Decimal("99999999999.9999"), "d": date(9999, 12, 31), "ts": datetime(9999, 12, 31, 23, 59, 59, 999000),
        "b": True, "f": 5e-324},
    3: dict.fromkeys(["s_max", "i32", "i64", "dec38", "dec15", "d", "ts", "b", "f"]),
}


@pytest.mark.parametrize("reader", ["embedded", "pyodbc", "arrow-odbc"])
def test_boundaries_survive_every_reader(env, monkeypatch, reader):
    demo_source.add_table(env.source, TableDef("bornes", COLS, ("id",), ROWS))
    if reader != "embedded":
        for k, v in odbc_vars(env, reader).items():
            monkeypatch.setenv(k, v)
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols, DateModifCol) VALUES ('bornes', 'id', 'dat_mod')")
    assert succeeded(build(LoadTable(table="bornes", mode="full")))
    types = dict(env.sql("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'ods' "
                         "AND table_name = 'bornes'"))
    assert {k: types[k] for k in EXPECTED[1]} == {
        "s_max": "VARCHAR", "i32": "INTEGER", "i64": "BIGINT", "dec38": "DECIMAL(38,2)", "dec15": "DECIMAL(15,4)",
        "d": "DATE", "ts": "TIMESTAMP", "b": "BOOLEAN", "f": "DOUBLE"}
    with env.con() as c:
        cur = c.execute(f"SELECT id, {', '.join(EXPECTED[1])} FROM ods.bornes ORDER BY id")
        got = {r[0]: dict(zip(EXPECTED[1], r[1:])) for r in cur.fetchall()}
    for i in EXPECTED:
        for k in EXPECTED[i]:
            assert (i, k, got[i][k]) == (i, k, EXPECTED[i][k])


def test_a_value_beyond_the_type_is_refused_with_its_key(env):
    rows = [(1, "9" * 37 + ".5", "2026-01-01")]  # 37 integer digits: DECIMAL(38,2) holds 36
    demo_source.add_table(env.source, TableDef("trop", [Col("id", "integer", nullable=False),
                                                        Col("x", "numeric", 38, 2), Col("dat_mod", "date")],
                                               ("id",), rows))
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols, DateModifCol) VALUES ('trop', 'id', 'dat_mod')")
    assert not succeeded(build(LoadTable(table="trop", mode="full")))
    err = env.sql("SELECT ErrorMessage FROM etl.ETL_Log WHERE TableName = 'trop' AND Status = 'FAILED'")[0][0]
    assert "table trop, column x, key id=1" in err and "9" * 37 in err and "SourceExpression" in err


def test_non_finite_double_is_refused(env, monkeypatch):
    for k, v in odbc_vars(env, "pyodbc").items():
        monkeypatch.setenv(k, v)
    demo_source.add_table(env.source, TableDef("dbl", [Col("id", "integer", nullable=False), Col("f", "float"),
                                                       Col("dat_mod", "date")], ("id",),
                                               [(1, 1.0, None), (2, -1.7976931348623157e308, None)]))
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols, DateModifCol) VALUES ('dbl', 'id', 'dat_mod')")
    assert not succeeded(build(LoadTable(table="dbl", mode="full")))
    err = env.sql("SELECT ErrorMessage FROM etl.ETL_Log WHERE TableName = 'dbl' AND Status = 'FAILED'")[0][0]
    assert "table dbl, column f, key id=2" in err and "-inf" in err


@pytest.mark.parametrize("reader", ["embedded", "pyodbc", "arrow-odbc"])
@pytest.mark.parametrize("column, value", [("d", "0000-02-29"), ("d", "10000-01-01"), ("ts", "0000-03-01 12:00:00.000"),
                                           ("ts", "10000-03-01 12:00:00.000")])
def test_a_date_outside_years_1_to_9999_stops_the_table_naming_it(env, monkeypatch, reader, column, value):
    """Arrow takes year 0 or 10000 from the driver's text or struct without a word, and DuckDB stores them
    (SQL Server cannot): refused like any value the warehouse cannot hold. pyodbc cannot even build the Python
    date: its error says what it is and how to find the row."""
    if reader == "pyodbc" and column == "ts":
        pytest.skip("the SQLite ODBC driver clamps a TIMESTAMP's year into 1..9999 before pyodbc sees it (README)")
    row = {"id": 7, "d": "2024-02-29", "ts": "2024-02-29 23:59:59.999", "dat_mod": None, column: value}
    demo_source.add_table(env.source, TableDef("annee", [Col("id", "integer", nullable=False), Col("d", "date"),
                                                         Col("ts", "timestamp"), Col("dat_mod", "date")],
                                               ("id",), [(1, "2020-01-01", None, None), tuple(row.values())]))
    if reader != "embedded":
        for k, v in odbc_vars(env, reader).items():
            monkeypatch.setenv(k, v)
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols, DateModifCol) VALUES ('annee', 'id', 'dat_mod')")
    assert not succeeded(build(LoadTable(table="annee", mode="full")))
    [(step, err)] = env.sql("SELECT Step, ErrorMessage FROM etl.ETL_Log WHERE Status = 'FAILED'")
    assert step == "extract"
    if reader == "pyodbc":
        assert "outside years 1 to 9999" in err and "PUB.annee" in err and "arrow-odbc" in err
    else:
        # named with the value as the source has it (year 10000 text is already refused by the parse, year 0 by
        # the range check)
        assert f"table annee, column {column}, key id=7: value '{value[:10]}" in err, err
        assert "outside years 1 to 9999" in err if value.startswith("0000") else "does not fit" in err or \
            "outside years 1 to 9999" in err
    assert env.sql("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'ods'") == [(0,)]
