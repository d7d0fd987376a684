"""Source layer without a server: the OpenEdge SQL text, conforming driver values, error translation."""
from __future__ import annotations

import logging
import math
import os
import random
import re
import sqlite3
import subprocess
import sys
from datetime import date, datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from cbm_luigi.naming import resolve_column_names
from cbm_luigi.plan import PlanColumn, TablePlan
from cbm_luigi.settings import load_settings, mask_secrets
from cbm_luigi.source import readers
from cbm_luigi.source.conform import conform_batch
from cbm_luigi.source.dialect import (OPENEDGE_MAX_IDENTIFIER, OpenEdgeDialect, SourceColumn, SqliteStandInDialect,
                                      Window, result_names, source_alias)
from cbm_luigi.source.errors import SourceError, SourceValueError, translate
from cbm_luigi.source.readers import _odbc_retry, _rows_to_batch, pooled_reader, release_readers
from cbm_luigi.types import ColumnType

OE = OpenEdgeDialect()


def test_extract_sql_for_progress_hyphens_reserved_words_arrays_and_window():
    cols = [SourceColumn("cod_pro", "cod_pro"), SourceColumn("gencod-v", "gencod_v_2"),
            SourceColumn("order", "order_"), SourceColumn("zal", "zal"), SourceColumn("Mixed-Case", "mixed_case"),
            SourceColumn("desc", "desc_", 'SUBSTRING("desc", 1, 200)')]
    w = Window("dat_mod", datetime(2026, 11, 26, 14, 30, 5), "date", "heure")
    sql, params = OE.extract_sql("produit", cols, w, "\"cod_soc\" = 1")
    assert sql == (
        'SELECT "cod_pro" AS "cod_pro", "gencod-v" AS "gencod_v_2", "order" AS "order_", "zal" AS "zal", '
        '"Mixed-Case" AS "mixed_case", SUBSTRING("desc", 1, 200) AS "desc_" FROM PUB."produit" '
        'WHERE "dat_mod" >= CAST(? AS DATE) AND ("dat_mod" > CAST(? AS DATE) OR "heure" >= 52205 OR "heure" IS NULL)'
        ' AND ("cod_soc" = 1\n)')  # the dat_mod range is a top-level AND term: the server can use its index
    assert params == ["2026-11-26", "2026-11-26"]
    sql, params = OE.extract_sql("lignecli", cols[:1], Window("dat_mod", datetime(2026, 11, 26, 23, 0), "date"))
    assert sql.endswith('FROM PUB."lignecli" WHERE "dat_mod" >= CAST(? AS DATE)') and params == ["2026-11-26"]
    sql, params = OE.extract_sql("t", cols[:1], Window("ts", datetime(2026, 1, 2, 3, 4, 5), "datetime"))
    assert sql.endswith('WHERE "ts" >= CAST(? AS TIMESTAMP)') and params == ["2026-01-02 03:04:05"]
    assert OE.table_ref('we"ird') == 'PUB."we""ird"'


def test_time_of_day_window_selects_the_same_rows_as_the_or_form():
    """The window was `d > D OR (d = D AND (h >= S OR h IS NULL))`; it is now `d >= D AND (d > D OR h >= S OR
    h IS NULL)` so the date range can use the index. Same rows on every edge: the boundary day below, at and
    above S, NULL time (counts as modified), NULL date (never in a window), the day before."""
    con = sqlite3.connect(":memory:")
    con.execute('CREATE TABLE t (k INTEGER, "dat_mod" TEXT, "heure" INTEGER)')
    rows = [(1, "2026-11-25", 86399), (2, "2026-11-25", None), (3, "2026-11-26", 0), (4, "2026-11-26", 52204),
            (5, "2026-11-26", 52205), (6, "2026-11-26", 52206), (7, "2026-11-26", None), (8, "2026-11-27", 0),
            (9, "2026-11-27", None), (10, None, 60000), (11, None, None), (12, "2026-12-31", 86399)]
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
    w = Window("dat_mod", datetime(2026, 11, 26, 14, 30, 5), "date", "heure")
    new, params = SqliteStandInDialect().window_predicate(w)
    old = '("dat_mod" > ? OR ("dat_mod" = ? AND ("heure" >= 52205 OR "heure" IS NULL)))'

    def keys(pred):
        return [r[0] for r in con.execute(f"SELECT k FROM t WHERE {pred} ORDER BY k", params)]
    assert keys(new) == keys(old) == [5, 6, 7, 8, 9, 12]
    assert keys(f"NOT ({new})") == keys(f"NOT ({old})") == [1, 2, 3, 4]  # NULL dates are in neither
    assert not re.search(r"\bOR\b", new.split(" AND ", 1)[0])  # the top-level first term is the plain range


def test_aliases_longer_than_openedge_identifiers_are_read_under_a_32_character_name():
    # two 32-character Progress names with the same SQL-safe name: one gets `_2`, 34 characters
    names = resolve_column_names(["designation-commerciale-longue-a", "designation_commerciale_longue_a"])
    long = names["designation-commerciale-longue-a"]
    assert len(long) == 34
    cols = [SourceColumn(n, a) for n, a in names.items()] + [SourceColumn("x", "a" * 128, 'UPPER("x")')]
    sql, _ = OE.extract_sql("t", cols)
    assert all(len(i) <= OPENEDGE_MAX_IDENTIFIER for i in re.findall(r'"((?:[^"]|"")*)"', sql))
    assert '"designation_commerciale_longue_a" AS "designation_commerciale_longue_a"' in sql  # short: unchanged
    assert source_alias(long) != source_alias("a" * 128) and source_alias(long) == source_alias(long)
    read = [source_alias(a) for a in (*names.values(), "a" * 128)]
    assert result_names(read, [*names.values(), "a" * 128]) == [*names.values(), "a" * 128]


def test_catalog_queries_are_the_documented_ones():
    assert "SYSPROGRESS.SYSTABLES" in OE.tables_sql() and "tbltype = 'T'" in OE.tables_sql()
    assert "SYSPROGRESS.SYSCOLUMNS_FULL" in OE.columns_sql() and "array_extent" in OE.columns_sql()
    assert "idxtype = 'U'" in OE.unique_index_sql()
    assert OE.ping_sql == "SELECT fld FROM SYSPROGRESS.SYSCALCTABLE"  # the one-row system table (SQL Reference)


def _batch(**cols) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(cols)


def test_conform_casts_exactly_and_names_the_bad_value():
    schema = pa.schema([pa.field("cod", pa.int32(), nullable=False), pa.field("prix", pa.decimal128(6, 2)),
                        pa.field("d", pa.date32()), pa.field("ts", pa.timestamp("ms"))])
    ok = conform_batch(_batch(cod=[1, 2], prix=[1234.5, None], d=["2026-01-31", None],
                              ts=[datetime(2026, 1, 1, 1, 2, 3, 456000), None]), schema, table="t", keys=["cod"])
    assert ok.column("prix").to_pylist() == [Decimal("1234.50"), None]
    assert ok.column("d").to_pylist() == [date(2026, 1, 31), None]
    with pytest.raises(SourceValueError) as e:  # overflow of DECIMAL(6,2)
        conform_batch(_batch(cod=[7, 8], prix=[Decimal("1.00"), Decimal("123456.78")], d=[None, None],
                             ts=[None, None]), schema, table="produit", keys=["cod"])
    msg = str(e.value)
    assert "table produit, column prix, key cod=8" in msg and "123456.78" in msg and "SourceExpression" in msg
    with pytest.raises(SourceValueError, match=r"column ts, key cod=3.*microsecond|column ts, key cod=3"):
        conform_batch(_batch(cod=[3], prix=[None], d=[None], ts=[datetime(2026, 1, 1, 0, 0, 0, 123456)]),
                      schema, table="t", keys=["cod"])  # would lose microseconds: refused, not truncated
    with pytest.raises(SourceValueError, match="NULL .* mandatory"):
        conform_batch(_batch(cod=[None], prix=[None], d=[None], ts=[None]), schema, table="t", keys=["cod"])


def test_conform_takes_a_double_only_when_it_is_a_decimal_of_the_column_scale():
    schema = pa.schema([pa.field("k", pa.int32()), pa.field("x", pa.decimal128(10, 2))])
    ok = conform_batch(_batch(k=[1, 2, 3, 4], x=[1.23, 0.07, -2.5, None]), schema, table="t",
                       keys=["k"])  # 1.23 arrives as 1.2299999999999999822: its nearest decimal of scale 2
    assert ok.column("x").to_pylist() == [Decimal("1.23"), Decimal("0.07"), Decimal("-2.50"), None]
    for bad in (1.234, 0.1 + 0.2, -2.675, 1e-3):  # would be rounded to 2 places: refused
        with pytest.raises(SourceValueError, match=rf"column x, key k=2: value {re.escape(repr(bad))} does not"):
            conform_batch(_batch(k=[1, 2], x=[1.5, bad]), schema, table="t", keys=["k"])


def test_conform_converts_columns_of_one_type_together_and_still_names_the_bad_one():
    """Columns with the same driver and catalog types are converted in one pass (conform._cast_alike): the same
    values as one by one, NULLs and the mandatory check per column, and a bad value named by its own column."""
    names = ["k", "a", "b", "c", "n"]
    schema = pa.schema([pa.field("k", pa.int32()), *(pa.field(c, pa.decimal128(10, 2)) for c in "abc"),
                        pa.field("n", pa.decimal128(10, 2), nullable=False)])
    batch = _batch(k=[1, 2, 3], a=[1.23, None, -2.5], b=[0.07, 4.1, None], c=[None, None, None], n=[1.0, 2.0, 3.0])
    ok = conform_batch(batch, schema, table="t", keys=["k"])
    assert ok.schema == schema
    assert ok.column("a").to_pylist() == [Decimal("1.23"), None, Decimal("-2.50")]
    assert ok.column("b").to_pylist() == [Decimal("0.07"), Decimal("4.10"), None]
    assert ok.column("c").to_pylist() == [None] * 3 and ok.column("n").to_pylist()[2] == Decimal("3.00")
    for col in names[1:]:
        assert ok.column(col).equals(conform_batch(batch.select(["k", col]), pa.schema([schema.field("k"),
                                     schema.field(col)]), table="t", keys=["k"]).column(col))
    with pytest.raises(SourceValueError, match=r"column b, key k=3: value 1.234 does not"):
        conform_batch(_batch(k=[1, 2, 3], a=[1.0, 2.0, 3.0], b=[1.0, 2.0, 1.234], c=[None] * 3, n=[1.0] * 3),
                      schema, table="t", keys=["k"])
    with pytest.raises(SourceValueError, match=r"column n, key k=2: NULL"):
        conform_batch(_batch(k=[1, 2, 3], a=[1.0] * 3, b=[1.0] * 3, c=[1.0] * 3, n=[1.0, None, 3.0]),
                      schema, table="t", keys=["k"])


@pytest.mark.parametrize("src,target", [
    (pa.float64(), pa.decimal128(10, 2)), (pa.timestamp("us"), pa.date32()), (pa.int64(), pa.bool_()),
    (pa.int64(), pa.decimal128(15, 4)), (pa.string(), pa.timestamp("ms")), (pa.float64(), pa.float64())])
def test_conform_takes_a_column_of_unknown_values_alone_or_in_a_group(src, target):
    schema = pa.schema([pa.field("k", pa.int32()), pa.field("v", target), pa.field("w", target)])
    for v, w in (([None, None], [None, None]), ([None, None], pa.array([None, None], src)), ([], [])):
        batch = pa.RecordBatch.from_arrays([pa.array(range(len(v)), pa.int32()), pa.array(v, src),
                                            pa.array(w, src)], names=["k", "v", "w"])
        for s in (schema, pa.schema([schema.field("k"), schema.field("v")])):  # beside a twin, and alone
            out = conform_batch(batch.select(s.names), s, table="t", keys=["k"])
            assert out.column("v").to_pylist() == [None] * len(v) and out.schema == s


def test_conform_takes_exactly_the_doubles_nearest_to_a_decimal_at_every_scale():
    """Compared with exact decimal arithmetic, 20,000 doubles over scales 0-15: the nearest double to a decimal
    of the scale (under 15 digits) is taken as that decimal, its neighbours are refused unless they are the
    nearest double to another decimal. pc.round(x, ndigits) refused valid values from 11 places on."""
    rnd = random.Random(7)
    for scale in range(16):
        schema = pa.schema([pa.field("k", pa.int32()), pa.field("x", pa.decimal128(38, scale))])
        xs = []
        for _ in range(1250):
            digits = rnd.randint(1, 15)
            d = Decimal(rnd.randint(-10**digits + 1, 10**digits - 1)).scaleb(-scale)
            if abs(d) < Decimal(10) ** (15 - scale):
                x = float(d)
                xs.append(x if rnd.random() < 0.6 else math.nextafter(x, rnd.choice([math.inf, -math.inf])))
        for x in xs:  # the exact expectation: x's nearest decimal of the scale, and whether x is its double
            nearest = Decimal(x).quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_EVEN)
            if float(nearest) != x:
                with pytest.raises(SourceValueError, match="would be rounded"):
                    conform_batch(_batch(k=[1], x=[x]), schema, table="t", keys=["k"])
        good = [x for x in xs
                if float(Decimal(x).quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_EVEN)) == x]
        out = conform_batch(_batch(k=list(range(len(good))), x=good), schema, table="t", keys=["k"])
        assert out.column("x").to_pylist() == [Decimal(x).quantize(Decimal(1).scaleb(-scale),
                                                                    rounding=ROUND_HALF_EVEN) for x in good]
        assert len(good) > 300


D0, D1 = datetime(2026, 1, 1), datetime(2026, 1, 1, 0, 0, 0, 123000)


@pytest.mark.parametrize("values,target,expected", [
    ([0, 1, None], pa.bool_(), [False, True, None]), ([12], pa.bool_(), None), ([-1], pa.bool_(), None),
    ([2.0], pa.bool_(), None), (["true", "0"], pa.bool_(), [True, False]),
    ([True], pa.int32(), None), ([False], pa.decimal128(5, 0), None), ([True], pa.string(), None),
    ([7, -3], pa.decimal128(15, 4), [Decimal("7.0000"), Decimal("-3.0000")]),  # SQLite: an integral NUMERIC
    ([10**11], pa.decimal128(15, 4), None), ([7.5], pa.int32(), None), ([Decimal("7.5")], pa.int64(), None),
    ([date(2026, 1, 1)], pa.int32(), None), ([D0], pa.int64(), None), ([7], pa.timestamp("ms"), None),
    ([7], pa.date32(), None), ([7.0], pa.timestamp("ms"), None),
    ([D0], pa.date32(), [date(2026, 1, 1)]), ([datetime(2026, 1, 1, 13, 0)], pa.date32(), None),
    ([datetime(2026, 1, 1, 0, 0, 0, 1000)], pa.date32(), None),
    ([D1], pa.timestamp("ms"), [D1]), ([datetime(2026, 1, 1, 0, 0, 0, 123456)], pa.timestamp("ms"), None),
    ([datetime(2026, 1, 1, 0, 0, 0, 123456)], pa.timestamp("ms", tz="UTC"), None),
    (["2026-01-01 10:00:00"], pa.timestamp("ms", tz="UTC"), None),  # DATETIME-TZ text without its offset
    (["2026-01-01 10:00:00.5+02:00"], pa.timestamp("ms", tz="UTC"), [datetime(2026, 1, 1, 8, 0, 0, 500000,
                                                                              tzinfo=timezone.utc)]),
    ([5], pa.string(), ["5"]), ([b"ab"], pa.string(), ["ab"]),
])
def test_conform_refuses_what_arrow_would_change_silently(values, target, expected):
    """Arrow's safe casts make 12 True, True 1, a datetime its date, a date its day number: refused, with key
    and value. What arrives as the DB-API readers build it (`_rows_to_batch`) either fits exactly or stops."""
    schema = pa.schema([pa.field("k", pa.int32()), pa.field("v", target)])
    batch = _rows_to_batch([(i, v) for i, v in enumerate(values, 1)], ["k", "v"])
    if expected is not None:
        assert conform_batch(batch, schema, table="t", keys=["k"]).column("v").to_pylist() == expected
    else:
        with pytest.raises(SourceValueError, match=rf"table t, column v, key k=1: value {re.escape(repr(values[0]))}"):
            conform_batch(batch, schema, table="t", keys=["k"])


def test_rows_to_batch_keeps_the_driver_values_and_names_a_mixed_column():
    batch = _rows_to_batch([(1, datetime(2026, 1, 1, 0, 0, 0, 123456))], ["k", "ts"])
    assert batch.column("ts").to_pylist() == [datetime(2026, 1, 1, 0, 0, 0, 123456)]  # not cut to .123
    with pytest.raises(ValueError, match="column v: the driver's values do not make one typed column"):
        _rows_to_batch([(1, 5), (2, "abc")], ["k", "v"])


def test_conform_refuses_a_double_that_cannot_be_an_exact_decimal():
    schema = pa.schema([pa.field("k", pa.int32()), pa.field("x", pa.decimal128(38, 2))])
    with pytest.raises(SourceValueError, match="key k=1"):
        conform_batch(_batch(k=[1], x=[1e30 + 0.1]), schema, table="t", keys=["k"])


def test_conform_makes_a_decimal_or_text_a_float_only_when_it_reads_back_the_same():
    """A float column (an override `DataType = 'float'` on a NUMERIC expression) handed an exact decimal, or a
    number's text: Arrow's safe cast checks nothing there, and 12345678901234567.1 landed as 12345678901234568
    (found in review). Refused, naming the key; 0.1 and the like, which read back the same, are taken."""
    for values, arrow_type in (([Decimal("12345678901234567.1")], pa.decimal128(38, 1)),
                               ([Decimal("99999999999999.99")], pa.decimal128(38, 2)),
                               (["1.0000000000000001"], pa.string())):
        batch = pa.RecordBatch.from_arrays([pa.array([1], pa.int32()), pa.array(values, arrow_type)],
                                           names=["id", "montant"])
        schema = pa.schema([pa.field("id", pa.int32()), pa.field("montant", pa.float64())])
        with pytest.raises(SourceValueError, match=r"table lignes, column montant, key id=1: value "):
            conform_batch(batch, schema, table="lignes", keys=["id"])
    batch = pa.RecordBatch.from_arrays(
        [pa.array([1, 2, 3], pa.int32()), pa.array([Decimal("0.1"), Decimal("-1234567.89"), None],
                                                  pa.decimal128(38, 2)),
         pa.array(["0.1", "1e5", "123456789012.345"]), pa.array(["0.1", "12345678", "16777216"])],
        names=["id", "d", "t", "r"])
    schema = pa.schema([pa.field("id", pa.int32()), pa.field("d", pa.float64()), pa.field("t", pa.float64()),
                        pa.field("r", pa.float32())])
    out = conform_batch(batch, schema, table="lignes", keys=["id"])
    assert out.column(1).to_pylist() == [0.1, -1234567.89, None]
    assert out.column(2).to_pylist() == [0.1, 100000.0, 123456789012.345]
    assert out.column(3).to_pylist() == [pa.scalar(0.1, pa.float32()).as_py(), 12345678.0, 16777216.0]
    batch = pa.RecordBatch.from_arrays([pa.array([7], pa.int32()), pa.array(["16777217"])], names=["id", "r"])
    with pytest.raises(SourceValueError, match=r"key id=7: value '16777217' does not fit float"):
        conform_batch(batch, pa.schema([pa.field("id", pa.int32()), pa.field("r", pa.float32())]), table="lignes",
                      keys=["id"])


def _one(values, arrow_type, target):
    batch = pa.RecordBatch.from_arrays([pa.array([1] * len(values), pa.int32()), pa.array(values, arrow_type)],
                                       names=["id", "v"])
    return conform_batch(batch, pa.schema([pa.field("id", pa.int32()), pa.field("v", target)]), table="lignes",
                         keys=["id"])


@pytest.mark.parametrize("scale", [0, 2, 10, 16, 18])
def test_a_decimal_of_any_scale_that_reads_back_the_same_as_a_float_is_taken(scale):
    """The float check compared the double rounded to the decimal's scale with the decimal: at scale 10,
    12345678.1 (12345678.0999999996 as a double) was refused, and 95 % of two-decimal values; at 16 and 18, 0.1
    (found in review). A decimal is compared as its exact text is, with the double's shortest form."""
    for text in ("12345678.1", "0.1", "-0.3", "99999999.99", "0"):
        value = Decimal(text).quantize(Decimal(1).scaleb(-scale)) if scale or "." not in text else None
        if value is None or len(value.as_tuple().digits) > 38:
            continue
        assert _one([value], pa.decimal128(38, scale), pa.float64()).column(1).to_pylist() == [float(text)]


@pytest.mark.parametrize("text,becomes", [("1e-400", "0.0"), ("4.9e-324", "5e-324")])
def test_a_number_text_too_small_for_a_double_is_refused_not_made_zero(text, becomes):
    """Only texts of more than 15 digits were checked: '1e-400' became 0.0 without a word (found in review), and
    a subnormal loses digits too. '0.000' and '-0' are zero and taken."""
    with pytest.raises(SourceValueError, match=f"value '{text}' does not fit double without loss .*would be "
                                               f"{becomes} as double"):
        _one([text], pa.string(), pa.float64())
    assert _one(["0.000", "-0", "+.5", "5.", "007", "1E+2"], pa.string(), pa.float64()).column(1).to_pylist() == \
        [0.0, -0.0, 0.5, 5.0, 7.0, 100.0]


def test_text_of_more_than_38_digits_is_never_parsed_into_another_decimal():
    """Arrow parses text of 39 digits into a decimal128 wrongly and silently (39 nines became
    -20847100762815390390123822295304634369; 1.222... with 42 decimals, 0.00; 200 nines, -1: found in review).
    Refused, naming the key; trailing zeros after the point are no digits that count."""
    for text, arrow_type in (("9" * 39, pa.decimal128(38, 0)), ("1." + "2" * 42, pa.decimal128(38, 2)),
                             ("9" * 200, pa.decimal128(38, 2)), ("-" + "9" * 77, pa.decimal128(38, 0)),
                             ("1" * 31, pa.decimal128(38, 10))):  # 31 digits rescaled to 10 places: 41
        with pytest.raises(SourceValueError, match="key id=1: value '"):
            _one([text], pa.string(), arrow_type)
    out = _one(["1." + "0" * 100, "-12.50", "1000", "1e3", "9" * 36 + ".99"], pa.string(), pa.decimal128(38, 2))
    assert out.column(1).to_pylist() == [Decimal("1.00"), Decimal("-12.50"), Decimal("1000.00"), Decimal("1000.00"),
                                         Decimal("9" * 36 + ".99")]


@pytest.mark.parametrize("target,value", [(pa.float64(), "1." + "0" * 5000 + "1"),
                                          (pa.int32(), "n/a " * 1500),
                                          (pa.date32(), "2020-01-01 " + "y" * 5000),
                                          (pa.decimal128(10, 2), "1" * 5000)])
def test_a_long_value_refused_is_shown_in_part_in_the_whole_message(target, value):
    """The value was cut, but the cast's own words in brackets quoted it whole (Arrow's "Failed to parse string:
    '<the value>'", the float check's text): a message of the CLOB's size (found in review)."""
    with pytest.raises(SourceValueError) as err:
        _one([value], pa.string(), target)
    said = str(err.value)
    assert len(said) < 1000 and "To carry it over:" in said, f"{len(said):,} characters: {said[:300]}"


def _conform_text(values, target, ids=None):
    ids = ids or list(range(1, len(values) + 1))
    batch = pa.RecordBatch.from_arrays([pa.array(ids, pa.int32()), pa.array(values, pa.string())],
                                       names=["id", "v"])
    return conform_batch(batch, pa.schema([pa.field("id", pa.int32()), pa.field("v", target)]), table="lignes",
                         keys=["id"])


@pytest.mark.parametrize("text", [".0", ".00", "-.0", "+.00", "." + "0" * 40])
def test_a_zero_as_text_without_its_integer_digit_is_taken_as_zero(text):
    """A review of 7d811e4: it cut the trailing zeros after the point before Arrow parses the text (so 1.000... of 100 digits
    fits DECIMAL(76)); '.00' becomes '.', which Arrow refuses: a zero that Arrow (and the code before) read as
    0.00 stops the table as a value that 'does not fit without loss'. '.5' and '0.' are taken."""
    assert _conform_text([".5", "0.", text], pa.decimal128(12, 2)).column(1).to_pylist() == \
        [Decimal("0.50"), Decimal("0.00"), Decimal("0.00")]


@pytest.mark.parametrize("other,said", [("9" * 80, "more than 76 digits"), ("abc", "'abc'")])
def test_the_reason_of_a_refusal_is_that_of_the_value_it_names(other, said):
    """A batch with two bad values: the first (key id=2, '12.345', three decimals in a scale-2 column) is named,
    but the reason in brackets is the whole column's cast's, which met another row's problem first (7d811e4's
    76-digit check runs over every value before any is parsed; Arrow's parse errors come before its rescale
    errors): 'value '12.345' does not fit ... (more than 76 digits)'. The operator looks for 76 digits in a
    value of five. The reason must be that of the value named."""
    with pytest.raises(SourceValueError) as err:
        _conform_text(["1.5", "12.345", other], pa.decimal128(18, 2))
    message = str(err.value)
    assert "key id=2: value '12.345'" in message, message
    assert said not in message, message



@pytest.mark.parametrize("text,target", [
    ("9.9e38", pa.decimal128(38, 0)),    # 99 followed by 37 zeros: 39 digits, became -30847100762815390390...
    ("-7e36", pa.decimal128(38, 2)),     # 37 + 2 digits, became -194352661581230730732507851364635770.88
    ("1.5e30", pa.decimal128(38, 10)),   # 31 + 10 digits, became 2757585547870760761151727300.2198695936
    ("1e-39", pa.decimal128(12, 0)),     # became 0
    ("123e-41", pa.decimal128(38, 2)),   # became 0.00
])
def test_short_text_with_an_exponent_is_not_parsed_into_a_wrong_decimal(text, target):
    """A review found cb4dd8b sending text of at most 38 characters straight to Arrow ('text no longer than this has at most 38
    digits: Arrow parses it into a decimal128 right'). An exponent gives a short text many digits: Arrow's
    decimal128 parse then overflows or loses the value without a word, the bug 7d811e4 fixed for 39 nines.
    The value must be loaded exactly or refused, never changed."""
    try:
        got = _conform_text([text], target).column(1)[0].as_py()
    except SourceValueError:
        return  # refused: fine
    assert got == Decimal(text), f"{text!r} into {target} was loaded as {got}"


def test_a_refused_short_value_next_to_a_long_one_is_named(monkeypatch):
    """_first_bad halves over prefixes, assuming a prefix is refused exactly when it holds a refused value. Since
    cb4dd8b the conversion of the whole column depends on its longest text (> 38 characters: DECIMAL(76)), so a
    prefix without the long text is converted another way: '9.9e38' is refused in the column (DECIMAL(76) sees 39
    digits) but taken alone (Arrow's garbage); the message says 'key some row: value ?', naming neither."""
    long_ok = "1." + "0" * 40  # 42 characters, 1
    with pytest.raises(SourceValueError) as err:
        _conform_text(["9.9e38", long_ok], pa.decimal128(38, 0))
    message = str(err.value)
    assert "key id=1: value '9.9e38'" in message, message


def test_a_decimal_text_is_taken_or_refused_alike_whatever_the_other_rows():
    """Found in review: the careful path trimmed blanks and made a lone '.' zero, Arrow's parse does neither, and
    which one ran depended on the longest text of the batch: '1.50 ' loaded next to a long text and stopped the
    table alone, and the halving named a row the column took. Each value is now taken or refused on its own:
    blanks and a lone point are refused everywhere (as Arrow does), and the row named is the one refused."""
    long_ok = "1." + "0" * 40
    for values in (["1.50 ", "2"], ["1.50 ", long_ok], [".", long_ok], ["-.", "2"]):
        with pytest.raises(SourceValueError, match=f"key id=1: value '{re.escape(values[0])}'"):
            _conform_text(values, pa.decimal128(12, 2))
    with pytest.raises(SourceValueError, match="key id=2: value '1.0000"):
        _conform_text(["1.50", "1." + "0" * 40 + "5"], pa.decimal128(12, 2))
    assert _conform_text(["1.50", long_ok, ".00"], pa.decimal128(12, 2)).column(1).to_pylist() == \
        [Decimal("1.50"), Decimal("1.00"), Decimal("0.00")]


def test_long_text_with_an_exponent_is_not_parsed_into_a_wrong_decimal():
    """Found in review: DECIMAL(76)'s own parse of an exponent far below the scale is wrong without a word: 1 followed by 38 zeros and 'e-96' (1e-58)
    loads as 1, '1.' + 40 zeros + 'e-56' (1e-56) as 100."""
    for text in ("1" + "0" * 38 + "e-96", "1." + "0" * 40 + "e-56"):
        try:
            got = _conform_text([text], pa.decimal128(38, 0)).column(1)[0].as_py()
        except SourceValueError:
            continue
        assert got == Decimal(text), f"{text!r} loaded as {got}"


def test_a_lone_point_is_not_read_as_zero():
    """cb4dd8b's '.00' fix on the careful path turns a text reduced to its point into 0 (`^([+-]?)\\.$` -> `\\10`):
    a lone '.', '-.' or '+.' (no digit at all, not a number) loads as 0.00 when a text of the batch is longer
    than 38 characters; Arrow refuses it otherwise."""
    for text in (".", "-."):
        with pytest.raises(SourceValueError):
            _conform_text([text, "1." + "0" * 40], pa.decimal128(12, 2))


def _loaded_or_refused(text, target):
    try:
        return _conform_text([text], target).column(1)[0].as_py()
    except SourceValueError:
        return "refused"


@pytest.mark.parametrize("text,target", [
    ("1e-102", pa.decimal128(20, 9)),        # 0E-9
    ("10e-102", pa.decimal128(20, 9)),       # 0E-9
    ("100e-103", pa.decimal128(10, 0)),      # 0
    ("1e-540", pa.decimal128(20, 9)),        # 0E-9
    ("1e-506615", pa.decimal128(38, 2)),     # 0.00 (any column)
    ("4374e-506615", pa.decimal128(18, 2)),  # 0.00
])
def test_a_value_with_an_exponent_below_minus_100_is_not_loaded_as_zero(text, target):
    """Found in review of b224231: _plain left an exponent past 100 'for the parse to refuse'; Arrow's parse does not refuse it, it rescales
    and wraps around (the '1e-39 became 0' bug b224231 set out to fix, moved past 100). Non-zero text must be
    refused (no column holds it), never loaded as 0."""
    got = _loaded_or_refused(text, target)
    assert got == "refused", f"{text!r} (= {Decimal(text)}) into {target} was loaded as {got!r}"


@pytest.mark.parametrize("text", ["1e-10000000", "1e-2000000000"])
def test_a_huge_negative_exponent_is_refused_not_a_crash(text):
    """_plain leaves it to Arrow's parse; pyarrow 26's string->decimal cast segfaults on it. The extract process
    (the luigi worker) dies: no refusal naming table, column and key, no FAILED row in etl.ETL_Log."""
    code = ("import pyarrow as pa\n"
            "from cbm_luigi.source.conform import conform_batch\n"
            "from cbm_luigi.source.errors import SourceValueError\n"
            "b = pa.RecordBatch.from_arrays([pa.array([1], pa.int32()), pa.array([%r])], names=['id', 'v'])\n"
            "try:\n"
            "    conform_batch(b, pa.schema([pa.field('id', pa.int32()), pa.field('v', pa.decimal128(18, 2))]),\n"
            "                  table='lignes', keys=['id'])\n"
            "    print('LOADED')\n"
            "except SourceValueError as e:\n"
            "    print('REFUSED', str(e)[:200])\n" % text)
    envv = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=envv)
    assert p.returncode == 0 and p.stdout.startswith("REFUSED"), (
        f"{text!r}: exit code {p.returncode} (-11/139 = segmentation fault), stdout {p.stdout!r}, "
        f"stderr {p.stderr[-300:]!r}")


@pytest.mark.parametrize("text,target", [
    ("1e+-2", pa.decimal128(10, 4)),           # loaded as 0.0100
    ("968093e+-9", pa.decimal128(37, 34)),     # loaded as 0.000968093
    ("5e+-0", pa.decimal128(10, 2)),           # loaded as 5.00
])
def test_an_exponent_with_two_signs_is_refused(text, target):
    """Decimal refuses 'e+-', so _plain hands the text over 'for the parse to refuse'; Arrow takes it, as if the
    '+' were not there. The docstring promises a refusal; the plain counterparts ('+-1', '--1') are refused."""
    got = _loaded_or_refused(text, target)
    assert got == "refused", f"{text!r} (not a number) was loaded as {got!r}"


@pytest.mark.parametrize("plain,with_exponent", [("1_000", "1_0e2"), ("١٠٠", "١e2"), ("１００", "１e2")])
def test_text_refused_without_an_exponent_is_refused_with_one(plain, with_exponent):
    """'1_000', Arabic-Indic or fullwidth digits are refused (not ASCII number text), but the same digits with an
    exponent go through Python's Decimal, which reads underscores and any Unicode digit: '1_0e2' loads as 1000,
    '١e2' as 100. A value is taken or refused by whether it has an 'e', not by what it is."""
    assert _loaded_or_refused(plain, pa.decimal128(12, 2)) == "refused"
    got = _loaded_or_refused(with_exponent, pa.decimal128(12, 2))
    assert got == "refused", f"{plain!r} is refused, {with_exponent!r} loaded as {got!r}"


@pytest.mark.parametrize("text", ["0e200", "-0E+117", "0.000e999"])
def test_a_zero_with_a_large_exponent_is_taken(text):
    """Zero in any column; '0e-200' is taken, '0e200' refused: 'cannot be represented as decimal128'."""
    got = _loaded_or_refused(text, pa.decimal128(12, 2))
    assert got == Decimal(0), f"{text!r} (zero) was {got!r}"


# An exponent Python's Decimal itself cannot hold (|exponent| >= 10**18): decimal.InvalidOperation, an
# ArithmeticError, escapes the cast (conform._CAST_ERRORS does not list it).
HUGE_EXPONENT = ["1e1000000000000000000", "0e1000000000000000000", "1.5E-9223372036854775808",
                 "12345678901234567890e-99999999999999999999"]


def _two_texts(values, target):
    return (pa.RecordBatch.from_arrays([pa.array([1, 2], pa.int32()), pa.array(values, pa.string())],
                                       names=["id", "n"]),
            pa.schema([pa.field("id", pa.int32()), pa.field("n", target)]))


@pytest.mark.parametrize("target", [pa.decimal128(38, 10), pa.decimal128(5, 2)], ids=str)
@pytest.mark.parametrize("text", HUGE_EXPONENT)
def test_huge_exponent_text_into_decimal_is_refused_with_column_and_key(text, target):
    batch, schema = _two_texts(["1.5", text], target)
    with pytest.raises(SourceValueError) as err:  # it was decimal.InvalidOperation from conform._plain (review)
        conform_batch(batch, schema, table="t", keys=["id"])
    assert "id=2" in str(err.value)


@pytest.mark.parametrize("target", [pa.float64(), pa.float32()], ids=str)
@pytest.mark.parametrize("text", ["1.5E-9223372036854775808", "12345678901234567890e-99999999999999999999"])
def test_huge_negative_exponent_text_into_float_is_refused_with_column_and_key(text, target):
    batch, schema = _two_texts(["1.5", text], target)
    with pytest.raises(SourceValueError) as err:  # from conform._check_float_exact, before (review)
        conform_batch(batch, schema, table="t", keys=["id"])
    assert "id=2" in str(err.value)


@pytest.mark.parametrize("text,fix,transient", [
    ("[DataDirect][ODBC Progress OpenEdge Wire Protocol driver][OPENEDGE]Column zlib in table PUB.client has value "
     "exceeding its max length or precision.", "dbtool", False),
    ("[OPENEDGE]Access denied (Authorization failed) (7512)", "GRANT SELECT", False),
    ("HYT00 [Microsoft][ODBC Driver Manager] Timeout expired", "CBM_QUERY_TIMEOUT_S", True),
    ("[OPENEDGE]Lock timeout: waited on a record lock", "READ UNCOMMITTED", True),
    ("08S01 Communication link failure", "HOST/PORT", True),
    ("[OPENEDGE]Table/View/Synonym not found (7519)", "cbm-etl discover", False),
    ("IM003 Specified driver could not be loaded due to system error 193", "32/64-bit", False),
])
def test_driver_errors_become_actionable_messages(text, fix, transient):
    err = translate(RuntimeError(text + " DRIVER={x};PWD=topsecret;UID=u"), table="client")
    assert "PUB.client" in str(err) and fix in str(err) and err.transient is transient
    assert "topsecret" not in str(err)


def test_width_overflow_advice_does_not_suggest_truncation():
    err = str(translate(RuntimeError("[OPENEDGE]Column zlib in table PUB.client has value exceeding its max length "
                                     "or precision."), table="client"))
    assert "dbtool" in err and "SourceExpression" in err and "Truncation loses data" in err
    assert "-SQLTruncateTooLarge OUTPUT" not in err and "use it only with truncation off" in err


def test_arrow_odbc_warns_once_when_the_connection_string_does_not_set_the_isolation(monkeypatch, caplog):
    monkeypatch.setattr(readers, "_warned_dil", False)
    caplog.set_level(logging.WARNING, logger=readers.__name__)
    for cs in ("Driver=x;HostName=h;DefaultIsolationLevel=READ UNCOMMITTED", "DRIVER={x};DIL=READ_UNCOMMITTED;A=1",
               "DRIVER={x};dil = {READ UNCOMMITTED}", "Driver=x;DefaultIsolationLevel=0"):
        readers._warn_without_dil(cs)
    assert caplog.records == []
    readers._warn_without_dil("Driver=x;HostName=h;DefaultIsolationLevel=READ COMMITTED;PWD=s3cret")
    readers._warn_without_dil("DRIVER={x};HOST=h")
    assert len(caplog.records) == 1 and "DefaultIsolationLevel=READ UNCOMMITTED" in caplog.text
    assert "s3cret" not in caplog.text


def test_mask_secrets():
    assert mask_secrets("DRIVER={d};HOST=h;UID=etl;PWD={a;b};Password=x") == "DRIVER={d};HOST=h;UID=etl;PWD={***};Password={***}"


def test_retries_transient_errors_only(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("08S01 Communication link failure")
        return "ok"
    assert _odbc_retry(flaky, 3, "connect") == "ok" and len(calls) == 3
    calls.clear()

    def sql_error():
        calls.append(1)
        raise RuntimeError("[OPENEDGE]Syntax error in SQL statement (7587)")
    with pytest.raises(SourceError):
        _odbc_retry(sql_error, 3, "connect")
    assert len(calls) == 1


def test_plan_window_rules():
    cols = [PlanColumn("id", "id", ColumnType("int32"), False), PlanColumn("dat_mod", "dat_mod", ColumnType("date")),
            PlanColumn("heure", "heure", ColumnType("int32"))]
    from datetime import timedelta
    p = TablePlan("t", "t", ["id"], cols, date_col="dat_mod", time_of_day_col="heure", lookback=timedelta(days=1),
                  last_success_ts=datetime(2026, 11, 27, 2, 0))
    w, why = p.window("incremental")
    assert w.since == datetime(2026, 11, 26, 2, 0) and w.time_of_day_column == "heure"
    assert p.window("full")[0] is None
    p.last_success_ts = None
    assert "never loaded" in p.window("incremental")[1]
    p.has_timestamps = False
    assert "falls back to full" in p.window("incremental")[1]


def test_pooled_reader_is_kept_between_tables_and_dropped_after_an_error(env):
    settings = load_settings()
    with pooled_reader(settings) as first:
        assert first.query("SELECT COUNT(*) FROM PUB.produit")[0][0] > 0
    with pooled_reader(settings) as again:
        assert again is first  # one connection for the whole run
    with pytest.raises(ZeroDivisionError), pooled_reader(settings):
        1 / 0  # noqa: B018 — any error while in use
    with pooled_reader(settings) as fresh:
        assert fresh is not first and fresh.query("SELECT 1") == [(1,)]
    assert first.con is None  # the dropped one was closed
    fresh.con.close()  # the connection dies between two tables (server restart, idle timeout)
    with pooled_reader(settings) as revived:
        assert revived is not fresh and revived.query("SELECT COUNT(*) FROM PUB.produit")[0][0] > 0
    release_readers()


def test_conform_takes_fixed_size_and_large_binaries_into_a_binary_column():
    """arrow-odbc reads SQL BINARY(n) as fixed-size binary: the same bytes, not a value of another kind."""
    schema = pa.schema([pa.field("k", pa.int32()), pa.field("v", pa.binary())])
    for arr in (pa.array([b"abcd", None], pa.binary(4)), pa.array([b"abcd", None], pa.large_binary())):
        batch = pa.record_batch([pa.array([1, 2], pa.int32()), arr], names=["k", "v"])
        assert conform_batch(batch, schema, table="t", keys=["k"]).column("v").to_pylist() == [b"abcd", None]


def test_a_filter_clause_ending_in_a_comment_keeps_the_parenthesis():
    cols = [SourceColumn("cod", "cod")]
    sql, _ = OE.extract_sql("t", cols, None, '"x" = 1 -- only company 1')
    assert sql.endswith('WHERE ("x" = 1 -- only company 1\n)')


def test_dbapi_batches_are_bounded_by_their_bytes_whatever_the_declared_widths(tmp_path):
    """A CLOB declared as 128 characters holding 200 KB values: batches of `batch_rows` rows were gigabytes
    (fetchmany of 24,000 such rows). Each fetch is now sized from the bytes of the rows before it."""
    con = sqlite3.connect(tmp_path / "big.sqlite")
    con.execute("CREATE TABLE t (id INTEGER, txt TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"{i:08d}" * 25_000) for i in range(300)])  # 200 KB each
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, "short") for i in range(300, 20_300)])
    con.commit()
    batches = list(readers._DbApiReader._batches(con.execute("SELECT id, txt FROM t ORDER BY id"), ["id", "txt"],
                                                 24_000))
    con.close()
    assert sum(b.num_rows for b in batches) == 20_300
    assert [r for b in batches for r in b.column("id").to_pylist()] == list(range(20_300))  # every row, in order
    assert max(b.nbytes for b in batches) <= readers.MAX_BATCH_BYTES + 400_016  # 32 MB at most, never gigabytes
    assert max(b.num_rows for b in batches) > 5_000  # short rows come in long batches again (each fetch doubles)



def test_dbapi_batches_stay_bounded_when_long_values_follow_short_ones(tmp_path):
    """10 short comments, then 80 of 1 MB (a CLOB declared narrow), batch_rows 1,000: each fetch was sized from
    the rows of the one before, so the second took 1,000 rows whatever they held: one batch of 80 MB after the
    10-row probe (2,000 x 200 KB peaked at 2.35 GB through the embedded reader: found in review). A fetch now
    takes at most twice the rows of the one before: the burst costs one small fetch."""
    con = sqlite3.connect(tmp_path / "burst.sqlite")
    con.execute("CREATE TABLE t (id INTEGER, txt TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"court {i}") for i in range(10)])
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"<{i:04d}>" * 166_667) for i in range(10, 90)])  # 1 MB
    con.commit()
    batches = list(readers._DbApiReader._batches(con.execute("SELECT id, txt FROM t ORDER BY id"), ["id", "txt"],
                                                 1_000))
    con.close()
    assert [r for b in batches for r in b.column("id").to_pylist()] == list(range(90))  # every row, in order
    assert max(b.nbytes for b in batches) <= readers.MAX_BATCH_BYTES, [(b.num_rows, b.nbytes) for b in batches]


def test_a_very_wide_table_reads_batches_of_about_8_mb_not_1000_rows():
    """1,990 columns (OpenEdge's most), 40-character text among them: a row is about 60 KB of the driver's buffers,
    and the batch floor of 1,000 rows made 50 MB batches (a full load of 3,000 rows peaked at 895 MB: found in
    review; 616 MB with batches of 300 rows, in the same time). Tall and ordinary tables keep their sizes."""
    from cbm_luigi.extract import BATCH_BYTES, MIN_BATCH_ROWS, batch_rows_for, estimated_row_bytes
    from cbm_luigi.types import ColumnType

    kinds = [ColumnType("string", width=40), ColumnType("int32"), ColumnType("decimal", precision=12, scale=2)]
    cols = [PlanColumn("id", "id", ColumnType("int32"), False)] + [
        PlanColumn(f"c{i:04d}", f"c{i:04d}", kinds[i % 3]) for i in range(1989)]
    wide = TablePlan("t", "t", ["id"], cols)
    assert estimated_row_bytes(wide) > 40_000
    assert batch_rows_for(wide, 50_000) == MIN_BATCH_ROWS == 300  # about 14 MB, not 1,000 rows
    tall = TablePlan("t", "t", ["id"], cols[:30])
    assert batch_rows_for(tall, 50_000) == min(50_000, BATCH_BYTES // estimated_row_bytes(tall))
