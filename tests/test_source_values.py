"""Values that must arrive unchanged, through the whole pipeline and each reader: embedded (sqlite3), pyodbc and
arrow-odbc (the real unixODBC driver manager and SQLite ODBC driver). A value that would change stops the table
with table, column, key and value; nothing is rounded, cut or coerced on the way."""
from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal

import pytest

from cbm_luigi import demo_source, settings
from cbm_luigi.demo_source import Col, TableDef
from cbm_luigi.extract import read_extract_meta
from cbm_luigi.source import conform, readers
from cbm_luigi.tasks import LoadTable

from .conftest import build, succeeded
from .test_source_odbc import odbc_vars

READERS = ["embedded", "pyodbc", "arrow-odbc"]


def load(env, monkeypatch, reader: str, table: TableDef) -> str | None:
    """Load `table` in full through `reader`: None when it loaded, else the run log's error message."""
    demo_source.add_table(env.source, table)
    if reader != "embedded":
        for k, v in odbc_vars(env, reader).items():
            monkeypatch.setenv(k, v)
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols, DateModifCol) VALUES (?, 'id', 'dat_mod')",
            [table.name])
    if succeeded(build(LoadTable(table=table.name, mode="full"))):
        return None
    return env.sql("SELECT ErrorMessage FROM etl.ETL_Log WHERE TableName = ? AND Status = 'FAILED'", [table.name])[0][0]


def ods(env, table: str, col: str) -> list:
    return [r[0] for r in env.sql(f'SELECT "{col}" FROM ods."{table}" ORDER BY id')]


def cols(*extra: Col) -> list[Col]:
    return [Col("id", "integer", nullable=False), *extra, Col("dat_mod", "date")]


@pytest.mark.parametrize("reader", READERS)
def test_timestamps_keep_milliseconds_and_refuse_what_is_finer(env, monkeypatch, reader):
    assert load(env, monkeypatch, reader, TableDef("ts_ms", cols(Col("ts", "timestamp")), ("id",), [
        (1, "2026-01-01 00:00:00.123", None), (2, "9999-12-31 23:59:59.999", None), (3, None, None)])) is None
    assert ods(env, "ts_ms", "ts") == [datetime(2026, 1, 1, 0, 0, 0, 123000),
                                       datetime(9999, 12, 31, 23, 59, 59, 999000), None]
    err = load(env, monkeypatch, reader, TableDef("ts_us", cols(Col("ts", "timestamp")), ("id",), [
        (1, "2026-01-01 00:00:00.123", None), (2, "2026-01-01 00:00:00.123456", None)]))
    assert err and "table ts_us, column ts, key id=2" in err and "123456" in err and "SourceExpression" in err


@pytest.mark.parametrize("reader", READERS)
def test_a_double_in_a_decimal_column_is_taken_only_when_nothing_is_rounded(env, monkeypatch, reader):
    # the stand-in stores NUMERIC(10,2) as a double (REAL), as a driver reporting NUMERIC as double would hand over
    assert load(env, monkeypatch, reader, TableDef("dbl_ok", cols(Col("x", "numeric", 10, 2)), ("id",), [
        (1, 1.23, None), (2, 0.07, None), (3, -99999999.99, None), (4, None, None)])) is None
    assert ods(env, "dbl_ok", "x") == [Decimal("1.23"), Decimal("0.07"), Decimal("-99999999.99"), None]
    err = load(env, monkeypatch, reader, TableDef("dbl_bad", cols(Col("x", "numeric", 10, 2)), ("id",), [
        (1, 1.23, None), (2, 1.234, None)]))
    assert err and "table dbl_bad, column x, key id=2: value 1.234" in err and "rounded" in err
    # from 11 decimal places on, valid doubles used to be refused (pc.round scales by an inexact 10^-n)
    assert load(env, monkeypatch, reader, TableDef("dbl_fine", cols(Col("x", "numeric", 15, 12)), ("id",), [
        (1, 1.1, None), (2, 0.5, None), (3, -0.000000000001, None), (4, 123.456789012345, None)])) is None
    assert ods(env, "dbl_fine", "x") == [Decimal("1.1"), Decimal("0.5"), Decimal("-0.000000000001"),
                                         Decimal("123.456789012345")]
    # columns of one type are converted together: the bad value is still named by its own column
    err = load(env, monkeypatch, reader, TableDef("dbl_bad2", cols(Col("x", "numeric", 10, 2), Col("y", "numeric",
                                                                                                    10, 2)), ("id",),
                                                  [(1, 1.23, 2.5, None), (2, 0.5, 7.125, None)]))
    assert err and "table dbl_bad2, column y, key id=2: value 7.125" in err and "rounded" in err


@pytest.mark.parametrize("reader", READERS)
def test_a_column_of_unknown_values_loads_alone_or_beside_others(env, monkeypatch, reader):
    # arrow-odbc hands an all-NULL NUMERIC over as a double column of NULLs: a check that asked "are all values
    # fine?" got NULL back and refused it, but only when no other NUMERIC of its type shared its conversion
    assert load(env, monkeypatch, reader, TableDef("unknowns", cols(Col("x", "numeric", 10, 2), Col("ts", "timestamp"),
                                                                    Col("b", "bit")), ("id",),
                                                   [(1, None, None, None, None), (2, None, None, None, None)])) is None
    assert ods(env, "unknowns", "x") == ods(env, "unknowns", "ts") == ods(env, "unknowns", "b") == [None, None]


@pytest.mark.parametrize("reader", READERS)
def test_datetime_tz_loads_in_utc_through_every_reader(env, monkeypatch, reader, caplog):
    # The stand-in's DATETIME-TZ is text with its offset that the SQLite ODBC driver reports as TIMESTAMP and
    # hands over in UTC without the offset. arrow-odbc, asked for a timestamp with a zone, used to abort the
    # whole process (a Rust panic).
    monkeypatch.setattr(settings, "_WARNED", set())  # said once per table and column in a process
    values = ["2020-01-01 10:00:00.123+02:00", "2020-01-01 10:00:00.123-05:30", "2020-06-30T23:59:59Z", None]
    table = TableDef("tz", cols(Col("t", "timestamp_timezone")), ("id",),
                     [(i, v, None) for i, v in enumerate(values, 1)])
    assert load(env, monkeypatch, reader, table) is None
    got = env.sql("SELECT CAST(timezone('UTC', t) AS VARCHAR) FROM ods.tz ORDER BY id")
    assert [r[0] for r in got] == ["2020-01-01 08:00:00.123", "2020-01-01 15:30:00.123", "2020-06-30 23:59:59",
                                   None]
    # the same values hash the same whatever the reader: the embedded reader parses the text, the others get
    # the driver's UTC value (and say that they take it as UTC)
    assert env.sql("SELECT _etl_hashdiff FROM ods.tz WHERE id = 1")[0][0] == \
        env.sql("SELECT md5('id=1' || chr(31) || 't=2020-01-01 08:00:00.123000Z')")[0][0]
    said = [m for m in caplog.messages if "column t: DATETIME-TZ values arrive without their offset" in m]
    assert bool(said) == (reader != "embedded")
    if reader == "embedded":  # the SQLite ODBC driver applies an offset only to a value with a fraction (README)
        whole = TableDef("tz_whole", cols(Col("t", "timestamp_timezone")), ("id",),
                         [(1, "2020-01-01 00:30:00+01:00", None)])
        assert load(env, monkeypatch, reader, whole) is None
        assert env.sql("SELECT CAST(timezone('UTC', t) AS VARCHAR) FROM ods.tz_whole") == [("2019-12-31 23:30:00",)]


@pytest.mark.parametrize("reader", READERS)
def test_an_unknown_logical_is_not_false(env, monkeypatch, reader):
    """A NULL logical contributes nothing to the hashdiff: it hashed as `b=0`, like false, so a change between
    the two was never loaded (and a new all-NULL logical column changed every hash)."""
    table = TableDef("lg", cols(Col("b", "bit")), ("id",), [(1, None, None), (2, 0, None)])
    assert load(env, monkeypatch, reader, table) is None
    assert env.sql("SELECT _etl_hashdiff FROM ods.lg WHERE id = 1")[0][0] == env.sql("SELECT md5('id=1')")[0][0]
    demo_source.add_table(env.source, TableDef("lg", table.cols, ("id",), [(1, 0, None), (2, None, None)]))
    readers.release_readers()
    assert succeeded(build(LoadTable(table="lg", mode="full", batch_tag="swap")))
    assert ods(env, "lg", "b") == [False, None]


def test_a_control_character_in_a_split_array_is_refused_and_a_whole_one_keeps_it(env, monkeypatch):
    value = demo_source.encode_extent(["a\x01b", "c;d", None])
    err = load(env, monkeypatch, "embedded", TableDef("ctl", cols(Col("zal", "varchar", 10, extent=3)), ("id",),
                                                      [(1, value, None)]))
    assert err and "table ctl, column zal, key id=1: an element holds a control character" in err
    assert "ArrayMode = 'single'" in err
    env.sql("UPDATE config.ETL_Columns SET ArrayMode = 'single' WHERE TableName = 'ctl' AND ColumnName = 'zal'")
    assert succeeded(build(LoadTable(table="ctl", mode="full", batch_tag="whole")))
    assert ods(env, "ctl", "zal") == [value]


def test_a_logical_other_than_0_or_1_is_refused(env, monkeypatch):
    # embedded only: the SQLite ODBC driver itself turns 12 into 1 before any reader sees it
    err = load(env, monkeypatch, "embedded", TableDef("logic", cols(Col("b", "bit")), ("id",), [
        (1, 1, None), (2, 12, None)]))
    assert err and "table logic, column b, key id=2: value 12" in err


@pytest.mark.parametrize("reader", READERS)
def test_names_beyond_32_characters_are_read_under_a_short_alias(env, monkeypatch, reader):
    # two 32-character Progress names with one SQL-safe name: the loser's `_2` makes a 34-character alias
    table = TableDef("longnames", cols(Col("designation-commerciale-longue-a", "varchar", 40),
                                       Col("designation_commerciale_longue_a", "varchar", 40)), ("id",),
                     [(1, "tiret", "souligne", None), (2, None, "b", None)])
    assert load(env, monkeypatch, reader, table) is None
    assert ods(env, "longnames", "designation_commerciale_longue_a_2") == ["tiret", None]
    assert ods(env, "longnames", "designation_commerciale_longue_a") == ["souligne", "b"]
    [path] = env.cache.glob("*/full/longnames*.extract.parquet")
    sql = read_extract_meta(path)["sql"]
    assert all(len(name) <= 32 for name in re.findall(r'"([^"]*)"', sql)), sql


def test_arrow_odbc_refuses_a_value_longer_than_its_buffer_and_names_the_column(env, monkeypatch):
    table = TableDef("docs", cols(Col("usr", "varchar", 16), Col("notes", "varchar", 31995), Col("doc", "varbinary")),
                     ("id",), [(1, "u", "n" * 50, b"\x00" * 50, None), (2, "v", "n" * 200, b"\xff" * 200, None)])
    assert load(env, monkeypatch, "arrow-odbc", table) is None  # within the bounds: every byte arrives
    assert ods(env, "docs", "doc") == [b"\x00" * 50, b"\xff" * 200] and ods(env, "docs", "notes")[1] == "n" * 200

    monkeypatch.setattr(readers, "MAX_BINARY_BYTES", 100)  # a BLOB's bound, scaled down to the stand-in's values
    err = load(env, monkeypatch, "arrow-odbc", TableDef("docs_bin", table.cols, ("id",), table.rows))
    assert err and "PUB.docs_bin" in err and "column doc: a value of 200 bytes is longer" in err
    assert "(doc: 100 bytes, cbm_luigi's bound for binary)" in err  # the buffer it overflowed, and why so small
    assert "nothing was cut" in err
    assert "IsExcluded" in err and "CBM_ODBC_READER=pyodbc" in err

    monkeypatch.setattr(readers, "MAX_BINARY_BYTES", 4 * 1024 * 1024)
    monkeypatch.setattr(readers, "MAX_TEXT_BYTES", 100)  # the same for text (an LVARCHAR / CLOB)
    err = load(env, monkeypatch, "arrow-odbc", TableDef("docs_txt", table.cols, ("id",), table.rows))
    assert err and "PUB.docs_txt" in err and "column notes: a value of 200 bytes" in err and "usr" not in err

    # a VARBINARY without a width: the driver reports 255 bytes, and that is the buffer (not the bound)
    err = load(env, monkeypatch, "arrow-odbc", TableDef("docs_255", cols(Col("doc", "varbinary")), ("id",),
                                                        [(1, b"\x01" * 255, None), (2, b"\x02" * 256, None)]))
    assert err and "column doc: a value of 256 bytes is longer" in err
    assert "(doc: 255 bytes, the driver reports the column 255 bytes wide)" in err

    # pyodbc has no such bound: the same rows load whole
    assert load(env, monkeypatch, "pyodbc", TableDef("docs_py", table.cols, ("id",), table.rows)) is None
    assert ods(env, "docs_py", "notes")[1] == "n" * 200



@pytest.mark.parametrize("reader", READERS)
def test_number_and_date_arrays_arrive_whole_through_every_reader(env, monkeypatch, reader):
    # OpenEdge hands an EXTENT field over as text (`1.5;2;?`), whatever its element type
    table = TableDef("arr", cols(Col("qte", "numeric", 10, 2, extent=3), Col("dts", "date", extent=2)), ("id",),
                     [(1, demo_source.encode_extent(["1.5", "2", None]),
                       demo_source.encode_extent(["2026-01-31", "2026-02-01"]), None)])
    assert load(env, monkeypatch, reader, table) is None
    assert env.sql("SELECT qte_1, qte_2, qte_3, dts_1, dts_2 FROM ods.arr") == [("1.5", "2", None, "2026-01-31",
                                                                                "2026-02-01")]


def test_a_time_zone_timestamp_pushed_past_year_9999_by_its_offset_is_refused_in_utc():
    """DATETIME-TZ lands in UTC: 9999-12-31 23:30-01:00 is year 10000 there, which no warehouse column holds."""
    import pyarrow as pa

    schema = pa.schema([pa.field("id", pa.int32()), pa.field("t", pa.timestamp("us", "UTC"))])
    batch = pa.record_batch([pa.array([1, 2], pa.int32()),
                             pa.array(["0001-01-01 00:30:00+00:00", "9999-12-31 23:30:00-01:00"])], names=["id", "t"])
    with pytest.raises(conform.SourceValueError, match=r"table x, column t, key id=2: value '10000-01-01 00:30:00"
                                                       r".*outside years 1 to 9999.*\(in UTC\)"):
        conform.conform_batch(batch, schema, table="x", keys=["id"])
    ok = conform.conform_batch(batch.slice(0, 1), schema, table="x", keys=["id"])
    assert ok.column("t")[0].as_py() == datetime(1, 1, 1, 0, 30, tzinfo=ok.column("t")[0].as_py().tzinfo)
