"""The whole pipeline against a real SQL Server, compared with the demo source row for row.

Runs only when CBM_TEST_MSSQL holds an ODBC connection string to a scratch database, e.g.
  CBM_TEST_MSSQL='Driver={ODBC Driver 18 for SQL Server};Server=localhost,1433;Database=cbm_test;UID=sa;
                  PWD=...;TrustServerCertificate=yes'   (one line)
The login needs db_owner (or cbm_etl_deployer + cbm_etl_loader of sql/mssql/grants.sql.example) on that
database. The demo tables' ods/stg tables, markers and config rows are dropped/deleted first: never point it at
a warehouse that matters. What this verifies that tests/test_tsql.py cannot: batch rules (CREATE OR ALTER first
in its batch), types and implicit conversions, the parameter bindings of the staging path, the MERGE semantics
on SQL Server (HOLDLOCK, OUTPUT $action counts, SCD2), the views and etl.SyncConfigColumns.
"""
from __future__ import annotations

import os
import uuid
from datetime import date

import pytest

from cbm_luigi import demo_source
from cbm_luigi.cli import main as cbm_etl
from cbm_luigi.tasks import LoadAll

from .conftest import DEMO_TABLES, TABLE_KEYS, build, make_env, source_rows, succeeded

ODBC = os.environ.get("CBM_TEST_MSSQL", "").strip()

pytestmark = pytest.mark.skipif(
    not ODBC, reason="CBM_TEST_MSSQL is not set: no SQL Server here (set it to an ODBC connection string of a "
                     "scratch database to run the SQL Server end-to-end suite)")


def _connect():
    import pyodbc
    return pyodbc.connect(ODBC, autocommit=True)


def _sql(q: str, params=None) -> list[tuple]:
    con = _connect()
    try:
        cur = con.cursor()
        cur.execute(q, params) if params else cur.execute(q)
        while cur.description is None:
            if not cur.nextset():
                return []
        return [tuple(r) for r in cur.fetchall()]
    finally:
        con.close()


def _reset_demo_objects() -> None:
    """Forget earlier runs of the demo tables on this database (tables, markers, config rows)."""
    con = _connect()
    try:
        cur = con.cursor()
        for schema in ("ods", "stg"):
            if _schema_exists(cur, schema):
                for t in DEMO_TABLES:
                    cur.execute(f"DROP TABLE IF EXISTS [{schema}].[{t}]")
        for table, col in (("etl.ETL_Markers", "TableName"), ("etl.ETL_Log", "TableName"),
                           ("etl.ETL_Validation", "TableName"), ("config.ETL_Columns", "TableName"),
                           ("config.ETL_Dependencies", "TableName"), ("config.ETL_Tables", "TableName"),
                           ("meta.SYSCOLUMNS_FULL", "tbl")):
            if _sql_exists(cur, table):
                cur.execute(f"DELETE FROM {table} WHERE {col} IN ({', '.join('?' for _ in DEMO_TABLES)})",
                            list(DEMO_TABLES))
    finally:
        con.close()


def _schema_exists(cur, schema: str) -> bool:
    return cur.execute("SELECT SCHEMA_ID(?)", [schema]).fetchone()[0] is not None


def _sql_exists(cur, table: str) -> bool:
    return cur.execute("SELECT OBJECT_ID(?, 'U')", [table]).fetchone()[0] is not None


def mssql_ods_rows(table: str, keys: list[str], *, deleted: bool | None = False) -> dict[tuple, dict]:
    """Live rows of ods.<table> on SQL Server (current version for SCD2), business columns only."""
    cols = [r[0] for r in _sql("SELECT COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = 'ods' "
                               "AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION", [table])]
    where = []
    if "_etl_is_current" in cols:
        where.append("_etl_is_current = 1")
    if deleted is not None:
        where.append(f"_etl_is_deleted = {1 if deleted else 0}")
    con = _connect()
    try:
        cur = con.cursor()
        cur.execute(f"SELECT * FROM [ods].[{table}]" + (" WHERE " + " AND ".join(where) if where else ""))
        names = [d[0] for d in cur.description]
        data = cur.fetchall()
    finally:
        con.close()
    out = {}
    for r in data:
        rec = {n: v for n, v in zip(names, r) if not n.startswith("_etl_")}
        out[tuple(rec[k] for k in keys)] = rec
    return out


def assert_mssql_ods_equals_source(env, table: str) -> None:
    src = source_rows(env.source, table)
    ods = mssql_ods_rows(table, TABLE_KEYS[table])
    assert set(ods) == set(src), f"{table}: keys differ: only in source {set(src) - set(ods)}, only in ods " \
                                 f"{set(ods) - set(src)}"
    for k, row in src.items():
        assert ods[k] == row, f"{table} key {k}: ods {ods[k]} != source {row}"


@pytest.fixture
def mssql_env(tmp_path, monkeypatch):
    env = make_env(tmp_path, monkeypatch, init=False)
    monkeypatch.setenv("CBM_WAREHOUSE_KIND", "mssql")
    monkeypatch.setenv("CBM_MSSQL_ODBC", ODBC)
    _reset_demo_objects()
    assert cbm_etl(["init-db"]) == 0
    assert cbm_etl(["init-db"]) == 0  # idempotent
    return env


def test_full_then_incremental_load_on_sql_server(mssql_env):
    env = mssql_env
    tag = "t" + uuid.uuid4().hex[:8]
    assert cbm_etl(["sync-columns", "--all"]) == 0
    assert succeeded(build(LoadAll(mode="full", batch_tag=tag)))
    for t in DEMO_TABLES:
        assert_mssql_ods_equals_source(env, t)
    merges = _sql("SELECT TableName, RowsInserted FROM etl.ETL_Log WHERE Step = 'merge' AND BatchId LIKE ?",
                  [f"%-{tag}"])
    assert {t for t, _n in merges} == set(DEMO_TABLES)
    assert all(n > 0 for _t, n in merges)
    assert {r[0] for r in _sql("SELECT TableName FROM etl.vw_SLABreach WHERE SLAStatus = 'OK'")} >= set(DEMO_TABLES)
    assert _sql("SELECT COUNT(*) FROM etl.vw_TablePerformance WHERE MedianDurationMs IS NOT NULL")[0][0] > 0

    demo_source.mutate(env.source)
    assert succeeded(build(LoadAll(mode="incremental", batch_tag=tag + "i")))
    assert succeeded(build(LoadAll(mode="full", batch_tag=tag + "f")))
    for t in DEMO_TABLES:
        assert_mssql_ods_equals_source(env, t)
    # SCD2 (client): one current version per key; type 1 (produit): one row per key
    assert _sql("SELECT COUNT(*) FROM (SELECT cod_cli FROM ods.client WHERE _etl_is_current = 1 "
                "GROUP BY cod_cli HAVING COUNT(*) > 1) AS d")[0][0] == 0
    assert _sql("SELECT COUNT(*) - COUNT(DISTINCT cod_pro) FROM ods.produit")[0][0] == 0
    failed = _sql("SELECT TableName, Step, ErrorMessage FROM etl.ETL_Log WHERE Status = 'FAILED' "
                  "AND BatchId LIKE ?", [f"{date.today().isoformat()}-{tag}%"])
    assert not failed, failed


def test_sync_procedure_keeps_operator_choices(mssql_env):
    assert cbm_etl(["sync-columns", "famille"]) == 0
    _sql("UPDATE config.ETL_Columns SET IsExcluded = 1 WHERE TableName = 'famille' AND ColumnName = 'libelle'")
    _sql("UPDATE config.ETL_Columns SET IsOverride = 1, SqlName = 'lib', DataType = 'varchar', Width = 7, "
         "SourceExpression = 'SUBSTRING(\"libelle\", 1, 7) AS lib' "
         "WHERE TableName = 'famille' AND ColumnName = 'libelle'")
    _sql("INSERT INTO meta.SYSCOLUMNS_FULL (tbl, col, coltype, width, scale, nullflag, array_extent, display_order) "
         "VALUES ('famille', 'new-col', 'varchar', 10, 0, 'Y', 0, 99)")
    _sql("DELETE FROM meta.SYSCOLUMNS_FULL WHERE tbl = 'famille' AND col = 'actif'")
    added, updated, missing = _sql("EXEC etl.SyncConfigColumns @TableName = N'famille'")[0]
    assert (added, missing) == (1, 1) and updated > 0
    rows = {r[0]: r[1:] for r in _sql("SELECT ColumnName, SqlName, IsExcluded, IsOverride, IsMissingAtSource "
                                      "FROM config.ETL_Columns WHERE TableName = 'famille'")}
    assert rows["libelle"] == ("lib", True, True, False)
    assert _sql("SELECT Width FROM config.ETL_Columns WHERE TableName = 'famille' AND ColumnName = 'libelle'") == [
        (7,)]  # the override's declared type is kept
    assert rows["new-col"] == ("new_col", False, False, False)
    assert rows["actif"][-1] is True
    _sql("INSERT INTO meta.SYSCOLUMNS_FULL (tbl, col, coltype, width, scale, nullflag, array_extent, display_order) "
         "VALUES ('famille', 'new#col', 'varchar', 10, 0, 'Y', 0, 100)")
    import pyodbc
    with pytest.raises(pyodbc.Error, match="name collision"):
        _sql("EXEC etl.SyncConfigColumns @TableName = N'famille'")


def test_sessions_reuse_one_login_and_leave_no_transaction(mssql_env):
    """pooling.ConnectionPool on a real server: one session after another runs on the same server session (@@SPID),
    and a session that failed inside a transaction leaves no connection behind that is still in it."""
    from cbm_luigi.settings import load_settings
    from cbm_luigi.warehouse import open_warehouse

    wh = open_warehouse(load_settings())
    spids = set()
    for _ in range(3):
        with wh.session() as s:
            spids.add(s.scalar("SELECT @@SPID"))
    assert len(spids) == 1
    with pytest.raises(Exception):
        with wh.session() as s, s.transaction():
            s.execute("SELECT 1/0")
    with wh.session() as s:
        assert s.scalar("SELECT @@TRANCOUNT") == 0
