"""Source layer without a server: the OpenEdge SQL text, conforming driver values, error translation."""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from cbm_luigi.plan import PlanColumn, TablePlan
from cbm_luigi.settings import load_settings, mask_secrets
from cbm_luigi.source.conform import conform_batch
from cbm_luigi.source.dialect import OpenEdgeDialect, SourceColumn, Window
from cbm_luigi.source.errors import SourceError, SourceValueError, translate
from cbm_luigi.source.readers import _odbc_retry, pooled_reader, release_readers
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
        'WHERE ("dat_mod" > CAST(? AS DATE) OR ("dat_mod" = CAST(? AS DATE) AND ("heure" >= 52205 OR "heure" IS NULL)))'
        ' AND ("cod_soc" = 1)')
    assert params == ["2026-11-26", "2026-11-26"]
    sql, params = OE.extract_sql("lignecli", cols[:1], Window("dat_mod", datetime(2026, 11, 26, 23, 0), "date"))
    assert sql.endswith('FROM PUB."lignecli" WHERE "dat_mod" >= CAST(? AS DATE)') and params == ["2026-11-26"]
    sql, params = OE.extract_sql("t", cols[:1], Window("ts", datetime(2026, 1, 2, 3, 4, 5), "datetime"))
    assert sql.endswith('WHERE "ts" >= CAST(? AS TIMESTAMP)') and params == ["2026-01-02 03:04:05"]
    assert OE.table_ref('we"ird') == 'PUB."we""ird"'


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


def test_conform_refuses_a_double_that_cannot_be_an_exact_decimal():
    schema = pa.schema([pa.field("k", pa.int32()), pa.field("x", pa.decimal128(38, 2))])
    with pytest.raises(SourceValueError, match="key k=1"):
        conform_batch(_batch(k=[1], x=[1e30 + 0.1]), schema, table="t", keys=["k"])


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


def test_mask_secrets():
    assert mask_secrets("DRIVER={d};HOST=h;UID=etl;PWD={a;b};Password=x") == "DRIVER={d};HOST=h;UID=etl;PWD=***;Password=***"


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
