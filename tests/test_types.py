"""cbm_luigi.types: the documented OpenEdge -> Arrow / DuckDB / SQL Server map, on real values."""
from datetime import date, datetime, timezone
from decimal import Decimal

import duckdb
import pyarrow as pa
import pytest

import cbm_luigi.types as T
from cbm_luigi.types import (MAX_DATE, MAX_DECIMAL_PRECISION, MIN_DATE, TYPE_TABLE, ColumnType,
                             UnsupportedTypeError, check_decimal_fits, map_openedge_type, parse_column_type)

# coltype, width, scale -> arrow, duckdb, mssql
CASES = [
    ("varchar", 16, 0, pa.string(), "VARCHAR", "NVARCHAR(16)"),
    ("character", 60, None, pa.string(), "VARCHAR", "NVARCHAR(60)"),
    ("char", 1, None, pa.string(), "VARCHAR", "NVARCHAR(1)"),
    ("VARCHAR", 31995, 0, pa.string(), "VARCHAR", "NVARCHAR(MAX)"),
    ("lvarchar", 31995, None, pa.string(), "VARCHAR", "NVARCHAR(MAX)"),
    ("clob", 1073741823, None, pa.string(), "VARCHAR", "NVARCHAR(MAX)"),
    ("integer", 4, 0, pa.int32(), "INTEGER", "INT"),
    ("int", None, None, pa.int32(), "INTEGER", "INT"),
    ("smallint", 2, 0, pa.int32(), "INTEGER", "INT"),
    ("tinyint", 1, 0, pa.int32(), "INTEGER", "INT"),
    ("bigint", 8, 0, pa.int64(), "BIGINT", "BIGINT"),
    ("recid", 4, 0, pa.int64(), "BIGINT", "BIGINT"),
    ("numeric", 12, 2, pa.decimal128(12, 2), "DECIMAL(12,2)", "DECIMAL(12,2)"),
    ("decimal", 17, 10, pa.decimal128(17, 10), "DECIMAL(17,10)", "DECIMAL(17,10)"),
    ("numeric", None, None, pa.decimal128(38, 0), "DECIMAL(38,0)", "DECIMAL(38,0)"),
    ("numeric", 0, 4, pa.decimal128(38, 4), "DECIMAL(38,4)", "DECIMAL(38,4)"),
    ("numeric", 50, 10, pa.decimal128(38, 10), "DECIMAL(38,10)", "DECIMAL(38,10)"),
    ("numeric", 5, 10, pa.decimal128(38, 10), "DECIMAL(38,10)", "DECIMAL(38,10)"),
    ("real", 4, 0, pa.float64(), "DOUBLE", "FLOAT"),
    ("float", 8, 0, pa.float64(), "DOUBLE", "FLOAT"),
    ("double precision", 8, 0, pa.float64(), "DOUBLE", "FLOAT"),
    ("date", 4, 0, pa.date32(), "DATE", "DATE"),
    ("timestamp", 8, 0, pa.timestamp("ms"), "TIMESTAMP", "DATETIME2(3)"),
    ("timestamp_timezone", 12, 0, pa.timestamp("ms", tz="UTC"), "TIMESTAMPTZ", "DATETIMEOFFSET(3)"),
    ("timestamp with time zone", None, None, pa.timestamp("ms", tz="UTC"), "TIMESTAMPTZ", "DATETIMEOFFSET(3)"),
    ("Datetime-TZ", None, None, pa.timestamp("ms", tz="UTC"), "TIMESTAMPTZ", "DATETIMEOFFSET(3)"),
    ("bit", 1, 0, pa.bool_(), "BOOLEAN", "BIT"),
    ("logical", 1, 0, pa.bool_(), "BOOLEAN", "BIT"),
    ("varbinary", 64, 0, pa.binary(), "BLOB", "VARBINARY(64)"),
    ("binary", 16, 0, pa.binary(), "BLOB", "VARBINARY(16)"),
    ("varbinary", 9000, 0, pa.binary(), "BLOB", "VARBINARY(MAX)"),
    ("lvarbinary", 100, 0, pa.binary(), "BLOB", "VARBINARY(MAX)"),
    ("blob", None, None, pa.binary(), "BLOB", "VARBINARY(MAX)"),
]


@pytest.mark.parametrize("coltype, width, scale, arrow, ddb, mssql", CASES)
def test_map_openedge_type(coltype, width, scale, arrow, ddb, mssql):
    ct = map_openedge_type(coltype, width, scale)
    assert ct.arrow_type() == arrow
    assert ct.duckdb_type() == ddb
    assert ct.mssql_type() == mssql


def test_every_documented_openedge_type_is_tested_and_table_matches_code():
    tested = {c[0].lower() for c in CASES}
    for names, kind, arrow, ddb, mssql in TYPE_TABLE:
        for name in names:
            assert name in tested
            ct = map_openedge_type(name, 10, 2)
            assert ct.kind == kind
            if kind != "decimal":
                assert str(ct.arrow_type()) == arrow and ct.duckdb_type() == ddb
                assert ct.mssql_type().startswith(mssql.split("(")[0])
        row = [", ".join(names), kind, arrow, ddb, mssql]
        assert any([c.strip() for c in line.strip().strip("|").split("|")] == row
                   for line in T.__doc__.splitlines()), f"docstring table is missing {row}"


def test_precision_clamped_and_documented_bounds():
    assert map_openedge_type("numeric", 50, 10) == ColumnType("decimal", 38, 10)
    assert map_openedge_type("numeric", 50, 0).precision == MAX_DECIMAL_PRECISION == 38
    assert (MIN_DATE, MAX_DATE) == (date(1, 1, 1), date(9999, 12, 31))


def test_nvarchar_boundary():
    assert ColumnType("string", width=4000).mssql_type() == "NVARCHAR(4000)"
    assert ColumnType("string", width=4001).mssql_type() == "NVARCHAR(MAX)"
    assert ColumnType("string", width=10).mssql_type(max_len=4000) == "NVARCHAR(4000)"
    assert ColumnType("string", width=10).mssql_type(max_len=4001) == "NVARCHAR(MAX)"
    assert ColumnType("string", width=0).mssql_type() == "NVARCHAR(MAX)"  # unknown width is unbounded
    assert ColumnType("string", width=None).mssql_type(max_len=0) == "NVARCHAR(MAX)"
    assert ColumnType("binary", width=8000).mssql_type() == "VARBINARY(8000)"
    assert ColumnType("binary", width=8001).mssql_type() == "VARBINARY(MAX)"
    assert map_openedge_type("varchar", 0, 0).mssql_type() == "NVARCHAR(MAX)"


def test_unknown_type_message():
    with pytest.raises(UnsupportedTypeError) as e:
        map_openedge_type("xml", 10, 0, table="produit", column="gencod-v")
    msg = str(e.value)
    for part in ("produit", "gencod-v", "'xml'", "SourceExpression", "CAST", "IsExcluded = 1", "DataType"):
        assert part in msg
    assert isinstance(e.value, ValueError)


def test_invalid_column_types_rejected():
    with pytest.raises(ValueError):
        ColumnType("text")
    with pytest.raises(ValueError):
        ColumnType("decimal", 39, 2)
    with pytest.raises(ValueError):
        ColumnType("decimal", 5, 6)


BOUNDARY = [
    (ColumnType("string", width=31995), ["é" * 31995, "", "x"]),
    (ColumnType("decimal", 38, 2), [Decimal("9" * 36 + ".99"), Decimal("-" + "9" * 36 + ".99"), Decimal("0.01")]),
    (ColumnType("date"), [MIN_DATE, MAX_DATE]),
    (ColumnType("int32"), [-2**31, 2**31 - 1]),
    (ColumnType("int64"), [-2**63, 2**63 - 1]),
    (ColumnType("float64"), [1.7976931348623157e308, -0.5]),
    (ColumnType("timestamp"), [datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999000)]),
    (ColumnType("timestamptz"), [datetime(2024, 3, 31, 1, 30, 0, 123000, tzinfo=timezone.utc)]),
    (ColumnType("bool"), [True, False]),
    (ColumnType("binary"), [b"\x00\xff" * 5000, b""]),
]


@pytest.mark.parametrize("ct, values", BOUNDARY, ids=[c.kind for c, _ in BOUNDARY])
def test_boundary_values_round_trip_arrow_and_duckdb(ct, values):
    arr = pa.array(values + [None], type=ct.arrow_type())
    assert arr.to_pylist() == values + [None]
    assert arr.null_count == 1
    con = duckdb.connect()
    con.execute(f"CREATE TABLE t(c {ct.duckdb_type()})")
    tbl = pa.table({"c": arr})  # noqa: F841 - read by DuckDB's replacement scan
    con.execute("INSERT INTO t SELECT c FROM tbl")
    back = con.sql("SELECT c FROM t").to_arrow_table()
    assert back.column("c").cast(ct.arrow_type()).to_pylist() == values + [None]


def test_decimal_38_digits_overflow_is_detected():
    assert check_decimal_fits(Decimal("9" * 36 + ".99"), 38, 2)
    assert not check_decimal_fits(Decimal("9" * 37 + ".99"), 38, 2)
    assert not check_decimal_fits(Decimal("1.234"), 38, 2)
    assert check_decimal_fits(Decimal("1.2300"), 5, 2)
    assert check_decimal_fits(Decimal("0E-20"), 5, 2)
    assert check_decimal_fits(Decimal("-999.99"), 5, 2)
    assert not check_decimal_fits(Decimal("1000"), 5, 2)
    assert check_decimal_fits(Decimal("1E+2"), 5, 2)
    assert not check_decimal_fits(Decimal("1E+3"), 5, 2)
    assert not check_decimal_fits(Decimal("NaN"), 38, 2)
    assert not check_decimal_fits(Decimal("Infinity"), 38, 2)
    with pytest.raises(pa.ArrowInvalid):
        pa.array([Decimal("9" * 37 + ".99")], type=pa.decimal128(38, 2))


ALL_TYPES = [ColumnType(k) for k in T.KINDS if k != "decimal"] + [
    ColumnType("decimal", 12, 2), ColumnType("decimal", 38, 0), ColumnType("decimal", 38, 38),
    ColumnType("decimal", 1, 0)]


@pytest.mark.parametrize("ct", ALL_TYPES, ids=lambda c: c.duckdb_type())
def test_duckdb_accepts_and_parse_round_trips(ct):
    con = duckdb.connect()
    con.execute(f"CREATE TABLE t(c {ct.duckdb_type()})")
    assert parse_column_type(ct.duckdb_type()) == ct
    reported = con.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 't'").fetchone()[0]
    assert parse_column_type(reported) == ct
    described = con.execute("DESCRIBE t").fetchone()[1]
    assert parse_column_type(described) == ct


@pytest.mark.parametrize("text, expected", [
    ("DECIMAL(12,2)", ColumnType("decimal", 12, 2)),
    ("numeric( 5 , 1 )", ColumnType("decimal", 5, 1)),
    ("VARCHAR", ColumnType("string")),
    ("varchar(20)", ColumnType("string")),
    ("TIMESTAMP WITH TIME ZONE", ColumnType("timestamptz")),
    ("TIMESTAMPTZ", ColumnType("timestamptz")),
    ("TIMESTAMP", ColumnType("timestamp")),
    ("TIMESTAMP_MS", ColumnType("timestamp")),
])
def test_parse_column_type(text, expected):
    assert parse_column_type(text) == expected


def test_parse_unknown_type():
    with pytest.raises(ValueError):
        parse_column_type("HUGEINT")
