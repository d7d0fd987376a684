"""Every T-SQL statement the product can emit, parsed offline with sqlfluff (dialect tsql), plus the SQL Server
warehouse's plain functions (type rendering, parameter sizes, row preparation, staging) without a server.

No SQL Server runs here: sqlfluff proves the syntax (and rejects broken statements, see
test_parse_helper_rejects_broken_sql); batch rules, types and permissions are left to tests/test_mssql_live.py.
The statements come from the real code: the sql/mssql scripts, the statements module for a plan holding every
column kind, and the steps / targets / runlog / config_store / cli functions run against a RecordingSession
that records what they execute on a stub MssqlWarehouse.
"""
from __future__ import annotations

import contextlib
import logging
import json
import re
import sys
import types
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pyodbc
import pytest
import sqlfluff
from sqlfluff.api.simple import APIParsingError

from cbm_luigi import config_store, runlog, steps
from cbm_luigi.extract import META_KEY
from cbm_luigi.plan import ConfigError, PlanColumn, TablePlan
from cbm_luigi.settings import Settings
from cbm_luigi.source import readers
from cbm_luigi.targets import MarkerTarget, StageTarget, record_merged, record_validated, remove_markers, state_query
from cbm_luigi.transform import TechnicalValues
from cbm_luigi.types import ColumnType
from cbm_luigi.warehouse import mssql_wh
from cbm_luigi.warehouse.base import Session, split_script
from cbm_luigi.warehouse.dialects import DuckDbDialect, IdentifierError, TsqlDialect
from cbm_luigi.warehouse.mssql_wh import (MssqlSession, MssqlWarehouse, StageColumn, StageValueError,
                                          arrow_batch_for_bulkcopy, input_sizes, render_type, rows_for_executemany,
                                          sized_for_file, stage_layout, utf16_len)
from cbm_luigi.warehouse.statements import (Column, MergeSpec, SchemaChangeError, add_column, create_table,
                                            duplicate_keys, evolve, forget_hashes, key_problems, live_rows,
                                            merge_counts, merge_statements, null_keys, ods_null_keys, scd2_insert,
                                            validation_counts, validation_queries, widen_column)

D = TsqlDialect()
TECH = TechnicalValues("run-1", "2024-01-01", datetime(2024, 1, 2, 3, 4, 5, 678901))
REPO = Path(__file__).resolve().parent.parent
SQL_DIR = REPO / "sql"  # the scripts as the repository holds them


# -- the parse helper -------------------------------------------------------------------------------------------

def _params_to_variables(sql: str) -> str:
    """What sqlfluff is given instead of the statement (the product's text itself is never changed):

    - the pyodbc `?` markers (outside quotes and brackets) become @p1, @p2 ... (sqlfluff rejects `?`);
    - `]]` inside a bracketed identifier (T-SQL's escape for `]`, e.g. [a]]b]) becomes `__`: sqlfluff 4.5's
      tsql lexer ends a bracketed identifier at the first `]`. Same length, same structure.
    """
    out, n, i, quote = [], 0, 0, None
    closing = {"'": "'", '"': '"', "[": "]"}
    while i < len(sql):
        ch = sql[i]
        if quote:
            if ch == closing[quote]:
                if i + 1 < len(sql) and sql[i + 1] == ch:  # doubled: escaped
                    out.append("__" if quote == "[" else ch + ch)
                    i += 2
                    continue
                quote = None
            out.append(ch)
        elif ch in closing:
            quote = ch
            out.append(ch)
        elif ch == "?":
            n += 1
            out.append(f"@p{n}")
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def parse_tsql(sql: str, label: str = ""):
    """sqlfluff parse tree of one T-SQL batch; fails the test on any unparsable section."""
    text = _params_to_variables(sql)
    try:
        tree = sqlfluff.parse(text, dialect="tsql")
    except APIParsingError as exc:
        pytest.fail(f"sqlfluff (tsql) cannot parse {label}:\n{text}\n--\n{exc}", pytrace=False)
    assert tree, f"{label}: empty parse"
    return tree


def assert_all_parse(statements: list[str], what: str) -> None:
    failures = []
    seen = set()
    for sql in statements:
        if sql in seen:
            continue
        seen.add(sql)
        try:
            parse_tsql(sql, what)
        except pytest.fail.Exception as exc:
            failures.append(str(exc))
    assert not failures, f"{len(failures)} of {len(seen)} statements of {what} do not parse:\n\n" + \
        "\n\n".join(failures)
    assert seen, f"{what}: no statement recorded"


@pytest.mark.parametrize("broken", [
    "SELEC x FROM t",
    "SELECT a FROM t WHERE (",
    "MERGE INTO [ods].[t] WITH (HOLDLOCK) AS t USING [stg].[t] AS s ON (t.[k] = s.[k]) WHEN MATCHED THEN",
    "CREATE TABLE [stg].[t] ([a] NVARCHAR(10) NOT NULL [b] INT)",
    "INSERT INTO etl.ETL_Markers (MarkerId, Rows VALUES (?, ?)",
    "IF SCHEMA_ID(N'x') IS NULL EXEC(N'CREATE SCHEMA [x]'",
])
def test_parse_helper_rejects_broken_sql(broken):
    with pytest.raises(pytest.fail.Exception, match="cannot parse"):
        parse_tsql(broken, "a deliberately broken statement")


def test_params_become_variables_outside_quotes_only():
    sql = "SELECT '?' AS a, [b?] AS c, [x]]?] FROM t WHERE x = ? AND y = '''?' AND z = ?"
    assert _params_to_variables(sql) == \
        "SELECT '?' AS a, [b?] AS c, [x__?] FROM t WHERE x = @p1 AND y = '''?' AND z = @p2"


# -- sql/mssql scripts ------------------------------------------------------------------------------------------

def _script_statements() -> list[tuple[str, str]]:
    out = []
    for path in sorted((SQL_DIR / "mssql").glob("*.sql")):
        for i, stmt in enumerate(split_script(path.read_text(encoding="utf-8"), "mssql"), 1):
            out.append((f"{path.name}#{i}", stmt))
    return out


SCRIPT_STATEMENTS = _script_statements()


@pytest.mark.parametrize("label,sql", SCRIPT_STATEMENTS, ids=[s[0] for s in SCRIPT_STATEMENTS])
def test_script_statement_parses(label, sql):
    parse_tsql(sql, label)


def test_grants_example_parses_and_is_not_run_by_init_db():
    path = SQL_DIR / "mssql" / "grants.sql.example"
    stmts = split_script(path.read_text(encoding="utf-8"), "mssql")
    assert any("GRANT" in s for s in stmts)
    assert_all_parse(stmts, path.name)
    assert path.name not in {p.name for p in (SQL_DIR / "mssql").glob("*.sql")}


def test_scripts_mirror_duckdb_tables_columns_and_views():
    files = sorted(p.name for p in (SQL_DIR / "mssql").glob("*.sql"))
    assert files == ["01_schemas.sql", "02_config.sql", "03_etl.sql", "04_views.sql", "05_procedures.sql"]
    assert MssqlWarehouse.script_statements(_stub_warehouse()) == [s for _l, s in SCRIPT_STATEMENTS]
    ms = "\n".join(s for _l, s in SCRIPT_STATEMENTS)
    duck = "\n".join((SQL_DIR / "duckdb" / f).read_text() for f in sorted(p.name for p in
                                                                            (SQL_DIR / "duckdb").glob("*.sql")))
    # every DuckDB table exists in T-SQL with the same columns, in the same order
    for m in re.finditer(r"CREATE TABLE IF NOT EXISTS (\w+\.\w+) \((.*?)\n\);", duck, re.S):
        table, body = m.group(1), m.group(2)
        cols = [ln.split()[0] for ln in body.splitlines() if ln.strip() and not ln.strip().startswith(
            ("PRIMARY KEY", "--"))]
        t = re.search(rf"IF OBJECT_ID\(N'{re.escape(table)}', N'U'\) IS NULL\s+CREATE TABLE {re.escape(table)} "
                      rf"\((.*?)\n\)", ms, re.S)
        assert t, f"{table} missing in sql/mssql"
        tcols = [ln.split()[0].strip("[]") for ln in t.group(1).splitlines()
                 if ln.strip() and not ln.strip().startswith(("CONSTRAINT", "--"))]
        assert tcols == cols, f"{table}: {tcols} != {cols}"
    # views: same output columns
    for view in ("vw_LastRuns", "vw_TablePerformance", "vw_SLABreach"):
        assert f"CREATE OR ALTER VIEW etl.{view} AS" in ms
    for col in ("MedianDurationMs", "PERCENTILE_CONT(0.5)", "RowsPerSecond", "HoursSinceSuccess", "'NEVER_LOADED'",
                "'FAILING'", "'LATE'", "'OK'", "AS SLAStatus", "DATEADD(DAY, -7, SYSDATETIME())"):
        assert col in ms
    for schema in ("config", "etl", "stg", "ods", "meta"):
        assert f"IF SCHEMA_ID(N'{schema}') IS NULL EXEC(N'CREATE SCHEMA [{schema}]')" in ms
    assert "LogId           BIGINT IDENTITY(1, 1)" in ms
    assert "BOOLEAN" not in ms and "TIMESTAMP " not in ms.replace("DATETIME2(3)", "")
    assert "\nGO" not in "".join(s for _l, s in SCRIPT_STATEMENTS)  # GO is a separator, never sent


def test_sync_procedure_shape():
    proc = dict(SCRIPT_STATEMENTS)["05_procedures.sql#1"]
    assert proc.startswith("CREATE OR ALTER PROCEDURE etl.SyncConfigColumns\n    @TableName NVARCHAR(128) = NULL")
    for needle in ("SET XACT_ABORT ON;", "BEGIN TRY", "BEGIN TRANSACTION;", "COMMIT TRANSACTION;", "BEGIN CATCH",
                   "ROLLBACK TRANSACTION;", "THROW;", "IsMissingAtSource = 1", "meta.SYSCOLUMNS_FULL",
                   "Latin1_General_BIN2", "THROW 50011"):
        assert needle in proc, needle
    # operator choices are never written: IsExcluded / ArrayMode only appear in the INSERT of new columns
    update_existing = proc[proc.index("UPDATE c\n"):proc.index("SET @updated")]
    for kept in ("IsExcluded", "ArrayMode", "SqlName", "SourceExpression"):
        assert kept not in update_existing
    # IsOverride is only read: an override keeps the type its expression returns
    assert update_existing.count("c.IsOverride = 1") == 3 and "IsOverride" not in update_existing.replace(
        "c.IsOverride = 1", "")
    for col in ("DataType", "Width", "Scale"):
        assert f"{col} = CASE WHEN c.IsOverride = 1 THEN c.{col} ELSE k.{col} END" in update_existing


# -- a plan with every column kind ------------------------------------------------------------------------------

def all_kind_columns() -> list[Column]:
    return [
        Column("code", ColumnType("string", width=20), nullable=False, max_len=12),
        Column("label", ColumnType("string")),  # unbounded: NVARCHAR(MAX)
        Column("memo", ColumnType("string", width=8000)),  # past 4000: NVARCHAR(MAX)
        Column("qty", ColumnType("int32"), nullable=False),
        Column("big", ColumnType("int64")),
        Column("price", ColumnType("decimal", 15, 4)),
        Column("ratio", ColumnType("float64")),
        Column("day", ColumnType("date")),
        Column("ts", ColumnType("timestamp")),
        Column("tstz", ColumnType("timestamptz")),
        Column("flag", ColumnType("bool")),
        Column("raw", ColumnType("binary", width=16)),
        Column("blob", ColumnType("binary")),
        Column("order", ColumnType("string", width=5)),  # reserved word
        Column("a]b", ColumnType("int32")),  # bracket in the name
        Column("odd name-é", ColumnType("string", width=3)),
    ]


KIND_TYPES = {"code": "NVARCHAR(12)", "label": "NVARCHAR(MAX)", "memo": "NVARCHAR(MAX)", "qty": "INT",
              "big": "BIGINT", "price": "DECIMAL(15,4)", "ratio": "FLOAT", "day": "DATE", "ts": "DATETIME2(3)",
              "tstz": "DATETIMEOFFSET(3)", "flag": "BIT", "raw": "VARBINARY(16)", "blob": "VARBINARY(MAX)",
              "order": "NVARCHAR(5)", "a]b": "INT", "odd name-é": "NVARCHAR(3)"}


def specs(keys=("code",)) -> list[tuple[str, MergeSpec]]:
    names = [c.name for c in all_kind_columns()]
    return [(f"{'scd2' if scd2 else 'type1'}-{'full' if full else 'incremental'}",
             MergeSpec("stg", "ods", "all_kinds", list(keys), names, scd2=scd2, full=full))
            for scd2 in (False, True) for full in (True, False)]


def statement_module_outputs() -> list[tuple[str, str]]:
    cols = all_kind_columns()
    out = [("create stg", create_table(D, "stg", "all_kinds", cols, ods=False)),
           ("create ods type1", create_table(D, "ods", "all_kinds", cols, ods=True, scd2=False)),
           ("create ods scd2", create_table(D, "ods", "all_kinds", cols, ods=True, scd2=True))]
    for c in cols:
        out.append((f"add {c.name}", add_column(D, "ods", "all_kinds", c)))
    for c in cols:
        if c.ctype.kind == "string":
            out.append((f"widen {c.name} null", widen_column(D, "ods", "all_kinds", c, True)))
            out.append((f"widen {c.name} not null", widen_column(D, "ods", "all_kinds", c, False)))
    existing = {"CODE": ("NVARCHAR(4)", False), "label": ("NVARCHAR(10)", True), "qty": ("INT", False)}
    stmts, _changes = evolve(D, "ods", "all_kinds", cols, existing)
    out += [(f"evolve #{i}", s) for i, s in enumerate(stmts, 1)]
    for keys in (["code"], ["code", "qty", "a]b"]):
        out.append((f"duplicate_keys {keys}", duplicate_keys(D, D.table("stg", "all_kinds"), keys)))
        out.append((f"key_problems {keys}", key_problems(D, D.table("stg", "all_kinds"), keys)))
        out.append((f"null_keys {keys}", null_keys(D, D.table("stg", "all_kinds"), keys)))
        out.append((f"duplicate_keys {keys} where", duplicate_keys(D, D.table("ods", "all_kinds"), keys,
                                                                   "t._etl_is_current = 1")))
        for label, spec in specs(keys):
            out.append((f"merge_counts {label} {keys}", merge_counts(D, spec)))
            out.append((f"live_rows {label} {keys}", live_rows(D, spec)))
            out.append((f"forget_hashes {label} {keys}", forget_hashes(D, spec)))
            out.append((f"ods_null_keys {label} {keys}", ods_null_keys(D, spec, keys[-1:])))
            for i, (sql, _n) in enumerate(merge_statements(D, spec), 1):
                out.append((f"merge {label} {keys} #{i}", sql))
            out += [(f"merge {label} {keys} all new", sql) for sql, _n in merge_statements(D, spec, all_new=True)]
            refreshed = merge_statements(D, spec, refresh=[c for c in all_kind_columns() if c.name != "label"])
            out += [(f"merge {label} {keys} after a config change #{i}", sql)
                    for i, (sql, _n) in enumerate(refreshed, 1)]
            grown = merge_statements(D, spec, refresh=all_kind_columns(), whole_arrays=frozenset({"label"}))
            out += [(f"merge {label} {keys} after an EXTENT grew #{i}", sql) for i, (sql, _n) in enumerate(grown, 1)]
            for name, sql in validation_queries(D, spec).items():
                out.append((f"validation {label} {keys} {name}", sql))
            out.append((f"validation {label} {keys} as one statement", validation_counts(D, spec)[0]))
    return out


STATEMENT_OUTPUTS = statement_module_outputs()


@pytest.mark.parametrize("label,sql", STATEMENT_OUTPUTS, ids=[s[0] for s in STATEMENT_OUTPUTS])
def test_statement_parses(label, sql):
    parse_tsql(sql, label)


def test_create_table_types_and_explicit_nullability():
    sql = create_table(D, "stg", "all_kinds", all_kind_columns(), ods=False)
    for name, t in KIND_TYPES.items():
        null = " NOT NULL" if name in ("code", "qty") else " NULL"
        assert f"{D.quote(name)} {t}{null}," in sql, (name, t)
    assert "[_etl_hashdiff] CHAR(32) NOT NULL" in sql and "[_etl_loaded_at] DATETIME2(3) NULL" in sql
    scd2 = create_table(D, "ods", "all_kinds", all_kind_columns(), ods=True, scd2=True)
    assert "[_etl_is_current] BIT NOT NULL" in scd2 and "[_etl_valid_to] DATETIME2(3) NULL" in scd2
    assert "[_etl_is_deleted] BIT NOT NULL" in scd2


def test_duckdb_rendering_unchanged_by_tsql_fixes():
    duck = DuckDbDialect()
    cols = [Column("a", ColumnType("string")), Column("b", ColumnType("int32"), False)]
    sql = create_table(duck, "stg", "t", cols, ods=False)
    assert sql == ('CREATE TABLE "stg"."t" (\n    "a" VARCHAR,\n    "b" INTEGER NOT NULL,\n'
                   '    "_etl_hashdiff" VARCHAR(32) NOT NULL,\n    "_etl_run_id" VARCHAR(64),\n'
                   '    "_etl_batch_id" VARCHAR(64),\n    "_etl_loaded_at" TIMESTAMP,\n'
                   '    "_etl_source_ts" TIMESTAMP\n)')
    assert duck.length_fn == "length"


def test_merge_semantics_on_text():
    for label, spec in specs():
        stmts = merge_statements(D, spec)
        merges = [s for s, _n in stmts if "MERGE INTO" in s]
        assert len(merges) == 1, label
        m = merges[0]
        assert m.startswith("MERGE INTO [ods].[all_kinds] WITH (HOLDLOCK) AS t USING [stg].[all_kinds] AS s"), label
        assert m.endswith(";") and m.count(";") == 1  # the terminating one, T-SQL requires it
        # no OUTPUT into a table variable: it would keep the MERGE from a parallel plan (the counts come from
        # merge_counts)
        assert "OUTPUT" not in m and "@" not in m, label
        assert len(re.findall(r"WHEN MATCHED\b", m)) == 1, f"{label}: T-SQL allows one WHEN MATCHED ... UPDATE"
        assert ("WHEN NOT MATCHED BY SOURCE" in m) == spec.full, label
        if spec.scd2:  # after a configuration change: a refresh in place first, NULL-safe on every column held
            held = [c for c in all_kind_columns() if c.name in ("label", "qty", "blob")]
            first, _n = merge_statements(D, spec, refresh=held)[0]
            assert first.startswith("MERGE INTO [ods].[all_kinds] WITH (HOLDLOCK) AS t USING [stg].[all_kinds] AS s")
            # text exactly: a binary collation (the database's is usually case-insensitive) and its length
            # (`=` ignores trailing blanks); numbers as they are; NULL the same as NULL
            assert ("((t.[label] = s.[label] COLLATE Latin1_General_BIN2 AND DATALENGTH(t.[label]) = "
                    "DATALENGTH(s.[label])) OR (t.[label] IS NULL AND s.[label] IS NULL))") in first
            assert "((t.[qty] = s.[qty]) OR (t.[qty] IS NULL AND s.[qty] IS NULL))" in first
            assert ("((t.[blob] = s.[blob] AND DATALENGTH(t.[blob]) = DATALENGTH(s.[blob])) OR "
                    "(t.[blob] IS NULL AND s.[blob] IS NULL))") in first  # no collation on binary
            assert "[_etl_hashdiff] = s.[_etl_hashdiff]" in first and "[_etl_batch_id] = s.[_etl_batch_id]" in first
            assert first.endswith(";")
        else:
            assert merge_statements(D, spec, refresh=all_kind_columns()) == stmts  # type 1 updates in place anyway
        if spec.scd2:
            assert "ON ([t].[code] = [s].[code] AND t._etl_is_current = 1)".replace("[t].", "t.").replace(
                "[s].", "s.") in m
            assert any(s.startswith("INSERT INTO [ods].[all_kinds]") for s, _n in stmts)
        # parameters: one `?` per load timestamp, as counted
        for s, n in stmts:
            assert s.count("?") == n
    every = "\n".join(s for _l, s in STATEMENT_OUTPUTS)
    for banned in ("IS DISTINCT FROM", " LIMIT ", "TRUE", "FALSE", "NOT t._etl", "ADD COLUMN", " TYPE "):
        assert banned not in every, banned
    assert "t._etl_is_deleted = 1" in every and "t._etl_is_deleted = 0" in every
    assert "t._etl_is_current = 1" in every
    assert "SELECT TOP (5) [code], COUNT_BIG(*) AS n FROM [stg].[all_kinds]" in every
    # every count is a COUNT_BIG: COUNT and SUM of an int overflow past 2,147,483,647 rows (Msg 8115)
    assert "COUNT(" not in every.replace("COUNT_BIG(", "") and "SUM(" not in every


def test_alter_column_restates_nullability():
    c = Column("code", ColumnType("string", width=20), max_len=30)
    assert widen_column(D, "ods", "t", c, True) == "ALTER TABLE [ods].[t] ALTER COLUMN [code] NVARCHAR(30) NULL"
    assert widen_column(D, "ods", "t", c, False).endswith("NVARCHAR(30) NOT NULL")
    assert add_column(D, "ods", "t", c) == "ALTER TABLE [ods].[t] ADD [code] NVARCHAR(30) NULL"


def test_evolve_on_sql_server_types():
    cols = [Column("code", ColumnType("string", width=20), max_len=30), Column("n", ColumnType("int32")),
            Column("new", ColumnType("decimal", 10, 2))]
    stmts, changes = evolve(D, "ods", "t", cols, {"code": ("NVARCHAR(10)", False), "n": ("INT", True)})
    # `code` is optional at the source now (Column's default): the widening restates it NULL
    assert stmts == ["ALTER TABLE [ods].[t] ALTER COLUMN [code] NVARCHAR(30) NULL",
                     "ALTER TABLE [ods].[t] ADD [new] DECIMAL(10,2) NULL"]
    assert len(changes) == 2
    assert evolve(D, "ods", "t", cols[:1], {"code": ("NVARCHAR(MAX)", True)}) == ([], [])
    # a narrower number at the source: ods holds every value already, and keeps its type
    assert evolve(D, "ods", "t", cols[1:2], {"n": ("BIGINT", True)}) == ([], [])
    # neither holds the other (the ERP's "more decimals, same SQL precision"): a decimal that holds both
    more = [Column("w", ColumnType("decimal", 12, 4))]
    widened, said = evolve(D, "ods", "t", more, {"w": ("DECIMAL(12,3)", True)})
    assert widened == ["ALTER TABLE [ods].[t] ALTER COLUMN [w] DECIMAL(13,4) NULL"], widened
    assert "widened w from DECIMAL(12,3) to DECIMAL(13,4)" in said[0]
    # an INTEGER has room for 9 digits, not every 10-digit decimal: DECIMAL(10,0) -> INT keeps DECIMAL(10,0)
    assert evolve(D, "ods", "t", [Column("n", ColumnType("int32"))], {"n": ("DECIMAL(10,0)", True)}) == ([], [])
    assert evolve(D, "ods", "t", [Column("n", ColumnType("decimal", 10, 0))], {"n": ("INT", True)})[0] == [
        "ALTER TABLE [ods].[t] ALTER COLUMN [n] DECIMAL(10,0) NULL"]
    with pytest.raises(SchemaChangeError, match="its type changed from DECIMAL\\(38,0\\) to DECIMAL\\(38,10\\)"):
        evolve(D, "ods", "t", [Column("x", ColumnType("decimal", 38, 10))], {"x": ("DECIMAL(38,0)", True)})
    with pytest.raises(SchemaChangeError, match="its type changed from INT to DATE"):
        evolve(D, "ods", "t", [Column("n", ColumnType("date"))], {"n": ("INT", True)})
    assert_all_parse(stmts + widened, "evolve")


def test_evolve_widens_binaries_and_accepts_null_when_the_source_does():
    cols = [Column("img", ColumnType("binary", width=100), max_len=250),
            Column("qty", ColumnType("decimal", 12, 2), nullable=True),
            Column("code", ColumnType("string", width=20), nullable=False, max_len=5),
            Column("lib", ColumnType("string", width=20), nullable=True, max_len=5)]
    existing = {"img": ("VARBINARY(100)", True), "qty": ("DECIMAL(12,2)", False), "code": ("NVARCHAR(20)", False),
                "lib": ("NVARCHAR(MAX)", False)}
    stmts, changes = evolve(D, "ods", "t", cols, existing)
    assert stmts == ["ALTER TABLE [ods].[t] ALTER COLUMN [img] VARBINARY(250) NULL",
                     "ALTER TABLE [ods].[t] ALTER COLUMN [qty] DECIMAL(12,2) NULL",
                     "ALTER TABLE [ods].[t] ALTER COLUMN [lib] NVARCHAR(MAX) NULL"]  # kept (MAX), made optional
    assert changes[1] == "ods.t: qty now accepts NULL (optional at the source)"
    assert_all_parse(stmts, "evolve binary/null")
    duck, _ = evolve(DuckDbDialect(), "ods", "t", cols[1:2], {"qty": ("DECIMAL(12,2)", False)})
    assert duck == ['ALTER TABLE "ods"."t" ALTER COLUMN "qty" DROP NOT NULL']


def test_bracket_quoting_and_identifier_limit():
    assert D.quote("a]b") == "[a]]b]"
    assert D.quote("x" * 128) == "[" + "x" * 128 + "]"
    with pytest.raises(IdentifierError):
        D.quote("x" * 129)
    with pytest.raises(IdentifierError):
        D.quote("")
    with pytest.raises(IdentifierError):
        create_table(D, "stg", "t", [Column("y" * 129, ColumnType("int32"))], ods=False)
    with pytest.raises(IdentifierError):
        D.table("stg", "z" * 129)
    sql = create_table(D, "stg", "t]x", all_kind_columns(), ods=False)
    assert "[stg].[t]]x]" in sql and "[a]]b] INT NULL" in sql
    parse_tsql(sql, "create with brackets")


# -- recording the statements of the product's functions ---------------------------------------------------------

class RecordingSession(MssqlSession):
    """Records what the product executes; answers queries with canned results (first matching pattern)."""

    def __init__(self, answers: list[tuple[str, object]] | None = None):
        super().__init__(FakeConnection(self))
        self.answers = list(answers or [])
        self.log: list[tuple[str, list]] = []

    def _answer(self, sql):
        for pattern, result in self.answers:
            if re.search(pattern, sql, re.S):
                return result(sql) if callable(result) else result
        return None

    def execute(self, sql, params=None):
        self.log.append((sql, list(params or [])))

    def query(self, sql, params=None):
        self.log.append((sql, list(params or [])))
        got = self._answer(sql)
        if got is None:
            if "AS null_keys" in sql:  # by default the batch's keys are all known and unique
                return [(0, 0)]
            return [] if "sys.index_columns" in sql else [(0,)]  # by default ods has no clustered index
        return [tuple(r.values()) if isinstance(r, dict) else r for r in got]

    def query_dicts(self, sql, params=None):
        self.log.append((sql, list(params or [])))
        got = self._answer(sql)
        return [r for r in got if isinstance(r, dict)] if got else []

    @property
    def statements(self) -> list[str]:
        return [s for s, _p in self.log]


class FakeCursor:
    """Stands for a pyodbc cursor in the executemany staging path."""

    def __init__(self, session):
        self.session = session
        self.fast_executemany = False
        self.sizes = None
        self.calls: list[tuple[str, list, list, bool]] = []

    def setinputsizes(self, sizes):
        self.sizes = list(sizes)

    def executemany(self, sql, rows):
        self.session.log.append((sql, []))
        self.calls.append((sql, list(rows), self.sizes, self.fast_executemany))

    def close(self):
        pass


class FakeConnection:
    def __init__(self, session):
        self.session = session
        self.cursors: list[FakeCursor] = []

    def cursor(self):
        cur = FakeCursor(self.session)
        self.cursors.append(cur)
        return cur


class StubWarehouse(MssqlWarehouse):
    """MssqlWarehouse whose sessions are one RecordingSession (no server)."""

    def __init__(self, session: RecordingSession | None = None, bulk: str = "executemany"):
        super().__init__(_settings())
        self.bulk_mode = bulk
        self.rec = session or RecordingSession()

    @contextlib.contextmanager
    def session(self):
        yield self.rec


def _settings(**kw) -> Settings:
    base = dict(home=Path("/tmp"), source_kind="demo", source_path=Path("/nonexistent"), source_odbc="",
                source_init_sql=(), source_isolation="DEFAULT", source_dialect="openedge", odbc_reader="auto",
                warehouse_kind="mssql", duckdb_path=Path("/nonexistent.duckdb"),
                mssql_odbc="Driver={ODBC Driver 18 for SQL Server};Server=db,1433;Database=cbm;UID=etl;PWD=s3cr;et;"
                           "Encrypt=yes")
    base.update(kw)
    return Settings(**base)


def _stub_warehouse(**kw) -> StubWarehouse:
    return StubWarehouse(**kw)


def all_kind_plan(*, dimension: bool, keys=("code",)) -> TablePlan:
    cols = [PlanColumn(c.name, c.name, c.ctype, c.nullable) for c in all_kind_columns()]
    cols.append(PlanColumn("zal", "zal", ColumnType("string", width=10), True, extent=3))
    return TablePlan(table="all-kinds", destination="all_kinds", keys=list(keys), columns=cols,
                     is_dimension=dimension)


def stage_table(plan: TablePlan, rows: int = 7) -> pa.Table:
    """A batch parquet's content for `plan` (as transform.py writes it: timestamps in microseconds; the run's
    technical values are not in it, staging adds them)."""
    data = {}
    for name, ct, _nullable in plan.output_columns():
        k = ct.kind
        if k == "string":
            vals = [f"{name[:2]}{i}" for i in range(rows)]  # fits every width of the plan (>= 3)
        elif k in ("int32", "int64"):
            vals = list(range(rows))
        elif k == "decimal":
            vals = [Decimal(i) / 4 for i in range(rows)]
        elif k == "float64":
            vals = [i / 3 for i in range(rows)]
        elif k == "date":
            vals = [date(2024, 1, 1) + timedelta(days=i) for i in range(rows)]
        elif k == "timestamp":
            vals = [datetime(2024, 1, 1, 12, 0, 0, 123456) + timedelta(seconds=i) for i in range(rows)]
        elif k == "timestamptz":
            vals = [datetime(2024, 1, 1, 12, tzinfo=timezone.utc) + timedelta(hours=i) for i in range(rows)]
        elif k == "bool":
            vals = [i % 2 == 0 for i in range(rows)]
        else:
            vals = [bytes([i]) * 3 for i in range(rows)]
        typ = pa.timestamp("us") if k == "timestamp" else ct.arrow_type()
        data[name] = pa.array(vals, typ)
    data["_etl_hashdiff"] = pa.array([f"{i:032x}" for i in range(rows)])
    data["_etl_source_ts"] = pa.array([None] * rows, pa.timestamp("us"))
    return pa.table(data)


def _canned(batch_id="2024-01-01", plan=None, ods_exists=False, mode="full"):
    names = [n for n, t, _ in plan.output_columns() if t.kind == "string"] if plan else []
    info = [(n, "nvarchar", 4, None, None, None, "YES") for n in names[:1]] if ods_exists else []
    if ods_exists and plan:  # the technical column that tells which kind ods was built as
        info.append(("_etl_is_current", "bit", None, None, None, None, "NO") if plan.is_dimension else
                    ("_etl_inserted_at", "datetime2", None, None, None, 3, "NO"))
    return [
        (r"SELECT t\.LastSuccessTs, st\.MergedExtractStartedAt", [(None, None)]),
        (r"FROM etl\.ETL_TableState", [{"BatchId": batch_id, "Mode": mode, "RunId": "run-0", "Rows": 7,
                                         "ExtractStartedAt": datetime(2024, 1, 1),
                                         "ExtractShape": plan and plan.extract_shape()}]),
        (r"AS \[stg_rows\]", [(0, 0, 7, 7)]),  # the validation counts: all passed
        (r"COLUMN_NAME = 'LastSuccessUtc'", [(1,)]),  # an upgraded warehouse
        (r"INFORMATION_SCHEMA\.COLUMNS", info),
        (r"SELECT TOP \(5\)", []),
        (r"MAX\(0\.5 \* DATALENGTH", [tuple(Decimal("12.0") for _ in names)]),
        (r"AS inserted", [(1, 2, 4, 0)]),  # inserted, updated, unchanged, deleted: the 7 rows staged
        (r"SELECT @@TRANCOUNT", [(1,)]),
        (r"FROM config\.ETL_Tables", [{"TableName": "all-kinds", "DestinationTable": "all_kinds",
                                       "PrimaryKeyCols": "code"}]),
    ]


@pytest.fixture
def stage_file(tmp_path):
    def make(plan, rows=7):
        path = tmp_path / f"{plan.destination}.stage.parquet"
        table = stage_table(plan, rows)  # made under this plan, as the extract records it
        pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps({"shape": plan.extract_shape()})}), path)
        return path
    return make


@pytest.mark.parametrize("dimension", [False, True], ids=["type1", "scd2"])
@pytest.mark.parametrize("mode", ["full", "incremental"])
@pytest.mark.parametrize("ods_exists", [False, True], ids=["ods-new", "ods-evolves"])
def test_step_statements_parse(dimension, mode, ods_exists, stage_file):
    plan = all_kind_plan(dimension=dimension, keys=("code", "qty"))
    rec = RecordingSession(_canned(plan=plan, ods_exists=ods_exists, mode=mode))
    wh = StubWarehouse(rec)
    marker = StageTarget(wh, "StageTable_all_kinds_2024_01_01_abc", table="all-kinds", step="stage",
                         batch_id="2024-01-01", mode=mode, shape=plan.extract_shape())
    path = stage_file(plan)
    steps.stage(wh, plan, path, TECH, marker=marker, run_id="run-1", extract_started_at=datetime(2024, 1, 1))
    steps.merge(wh, plan, mode=mode, batch_id="2024-01-01", marker=marker, run_id="run-1")
    steps.validate(wh, plan, mode=mode, batch_id="2024-01-01", marker=marker, run_id="run-1",
                   extract_started_at=datetime(2024, 1, 1))
    stmts = rec.statements
    for needle in ("SET XACT_ABORT ON", "BEGIN TRANSACTION", "COMMIT TRANSACTION", "DROP TABLE IF EXISTS [stg].",
                   "CREATE TABLE [stg].[all_kinds]", "INSERT INTO [stg].[all_kinds]", "INSERT INTO etl.ETL_Markers",
                   "UPDATE etl.ETL_TableState SET BatchId = ?",
                   "UPDATE etl.ETL_TableState SET MergedExtractStartedAt", "INSERT INTO etl.ETL_Validation",
                   "UPDATE config.ETL_Tables SET LastSuccessTs", "INFORMATION_SCHEMA.COLUMNS"):
        assert any(needle in s for s in stmts), needle
    assert any(s.startswith("ALTER TABLE [ods]") for s in stmts) == ods_exists
    assert any(s.startswith("CREATE TABLE [ods]") for s in stmts) != ods_exists
    # into an ods made just now every row is new: inserted, with the stage's count, no MERGE and no count query
    assert any("MERGE INTO [ods].[all_kinds]" in s for s in stmts) == ods_exists
    assert any(s.startswith("INSERT INTO [ods].[all_kinds]") for s in stmts) or ods_exists
    assert any("AS inserted" in s for s in stmts) == ods_exists
    assert_all_parse(stmts, f"steps ({'scd2' if dimension else 'type1'}, {mode})")


class _RowTooWide(RecordingSession):
    """Mock (no SQL Server here): the data statements fail as SQL Server fails a row past 8,060 bytes in-row."""

    def execute(self, sql, params=None):
        super().execute(sql, params)
        if sql.startswith(("MERGE INTO [ods]", "INSERT INTO [ods]")):
            raise RuntimeError("('42000', '[42000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Cannot "
                               "create a row of size 9912 which is greater than the allowable maximum row size of "
                               "8060. (511) (SQLExecDirectW)')")


def test_a_row_sql_server_finds_too_wide_when_written_is_named_with_the_way_out(stage_file):
    """Split array elements are NVARCHAR: their bytes are not fixed-length, so only the write can tell (Msg 511).
    The merge stops with the table and the arrays to keep whole, and rolls back."""
    plan = all_kind_plan(dimension=False)
    rec = _RowTooWide(_canned(plan=plan))
    wh = StubWarehouse(rec)
    marker = StageTarget(wh, "StageTable_all_kinds_2024_01_01_abc", table="all-kinds", step="stage",
                         batch_id="2024-01-01", mode="full", shape=plan.extract_shape())
    steps.stage(wh, plan, stage_file(plan), TECH, marker=marker, run_id="r", extract_started_at=datetime(2024, 1, 1))
    with pytest.raises(ConfigError, match=r"^table all-kinds: a row is too wide for SQL Server .* Nothing was "
                                          r"merged: keep the largest arrays whole \(ArrayMode = 'single' .*\), then "
                                          r"rerun the table. SQL Server said: .*Cannot create a row of size 9912"):
        steps.merge(wh, plan, mode="full", batch_id="2024-01-01", marker=marker, run_id="r")
    assert rec.statements[-1] == "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION"


class _StageDropped(RecordingSession):
    """Mock (no SQL Server here): stg.all_kinds was dropped by hand after the stage; SQL Server's error 208 for the
    first statement that reads it, and INFORMATION_SCHEMA no longer lists it."""

    def query(self, sql, params=None):
        if "FROM [stg].[all_kinds]" in sql:
            super().query(sql, params)
            raise RuntimeError("('42S02', \"[42S02] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Invalid "
                               "object name 'stg.all_kinds'. (208) (SQLExecDirectW)\")")
        if "INFORMATION_SCHEMA.COLUMNS" in sql and params and params[0] == "stg":
            super().query(sql, params)
            return []
        return super().query(sql, params)


def test_a_stage_dropped_on_sql_server_is_named_with_the_rerun_that_stages_it_again():
    plan = all_kind_plan(dimension=False)
    rec = _StageDropped(_canned(plan=plan))
    marker = StageTarget(StubWarehouse(rec), "m", table="all-kinds", step="merge", batch_id="2024-01-01",
                         mode="full", shape=plan.extract_shape())
    with pytest.raises(steps.RelationGoneError, match=r"^table all-kinds: stg\.all_kinds no longer exists \(dropped "
                                                      r"since batch 2024-01-01 was staged\?\): nothing was merged\. "
                                                      r"Run the same command again: it stages batch 2024-01-01"):
        steps.merge(StubWarehouse(rec), plan, mode="full", batch_id="2024-01-01", marker=marker, run_id="r")
    assert "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION" in rec.statements


def test_failed_step_rolls_back_under_xact_abort(stage_file):
    plan = all_kind_plan(dimension=False)
    rec = RecordingSession(_canned("another-batch", plan=plan))
    wh = StubWarehouse(rec)
    marker = MarkerTarget(wh, "m", table="all-kinds", step="merge", batch_id="2024-01-01", mode="full")
    with pytest.raises(steps.StaleStageError):
        steps.merge(wh, plan, mode="full", batch_id="2024-01-01", marker=marker, run_id="r")
    assert rec.statements[:2] == ["SET XACT_ABORT ON", "BEGIN TRANSACTION"]
    assert rec.statements[-1] == "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION"
    assert "COMMIT TRANSACTION" not in rec.statements
    assert_all_parse(rec.statements, "rollback path")


def test_marker_runlog_config_statements_parse(tmp_path):
    rec = RecordingSession([(r"SELECT TableName FROM config\.ETL_Tables$", [("Client",), ("famille",)]),
                            (r"SELECT t\.TableName FROM config\.ETL_Tables AS t LEFT JOIN", [("famille",)]),
                            (r"SELECT t\.\*, st\.MergedShape, .* FROM config\.ETL_Tables AS t LEFT JOIN "
                             r"etl\.ETL_TableState AS st ON st\.TableName = t\.TableName WHERE t\.TableName = \?",
                             [{"TableName": "famille"}]),
                            (r"SELECT \* FROM config\.ETL_Tables", [{"TableName": "famille"}]),
                            (r"COUNT\(\*\) FROM etl\.ETL_Markers", [(2,)]),
                            (r"FROM config\.ETL_Dependencies", [("client", "famille")])])
    wh = StubWarehouse(rec)
    m = MarkerTarget(wh, "MergeOds_famille_2024_01_01_x", table="famille", step="merge", batch_id="2024-01-01",
                     mode="full")
    m.touch(rec, run_id="r", rows=3)
    assert m.exists()
    assert remove_markers(rec, table="famille", batch_id="2024-01-01") == 2
    remove_markers(rec, table="famille")
    runlog.write_steps(wh, run_id="r", batch_id="b", table="famille", mode="full", task_id="t",
                       records=[runlog.StepRecord("merge", rows=1, inserted=1, updated=0, unchanged=0, deleted=0,
                                                  duration_ms=5),
                                runlog.StepRecord("stage", status="FAILED", error="boom PWD=secret")])
    # rows the warehouse did not take, written by a later step (runlog.replay_unlogged)
    runlog.spool_steps(tmp_path, runlog.log_rows(run_id="r", batch_id="b", table="famille", mode="full", task_id="t",
                                                 records=[runlog.StepRecord("merge", rows=1, duration_ms=5)]),
                       datetime(2024, 1, 2, 3, 4, 5, 678901))
    assert runlog.replay_unlogged(wh, tmp_path) == 0  # none left waiting
    late = [p for s, p in rec.log if s.startswith("INSERT INTO etl.ETL_Log") and "NOT EXISTS" in s]
    assert len(late) == 1 and late[0][15] == datetime(2024, 1, 2, 3, 4, 5, 678000) == late[0][20]
    config_store.advance_last_success(rec, "famille", datetime(2024, 1, 1))
    config_store.table_rows(rec)
    config_store.table_rows(rec, active_only=False)
    config_store.table_row(rec, "famille")
    config_store.column_rows(rec, "famille")
    assert config_store.dependencies(rec) == {"Client": ["famille"]}  # spelled as configured
    config_store.load_tables_csv(rec, REPO / "config" / "tables.csv")
    # init-db on an upgraded warehouse: the loaded tables and the configuration of their last load
    assert config_store.record_loaded_configurations(rec, wh) == 0  # famille has no columns here: left alone
    record_validated(rec, "famille", started_at=datetime(2024, 1, 1, 2), started_utc=datetime(2024, 1, 1, 1))
    record_merged(rec, "famille", datetime(2024, 1, 1, 2), shape="0123456789abcdef", columns=["cod_fam", "libelle"])
    record_merged(rec, "famille", None, shape="0123456789abcdef", columns=["cod_fam"])
    stmts = rec.statements
    assert any(s.startswith("SELECT t.TableName FROM config.ETL_Tables AS t LEFT JOIN etl.ETL_TableState") for s in
               stmts)
    assert [datetime(2024, 1, 1, 1), 60, "famille"] in [
        p for s, p in rec.log if s.startswith("UPDATE etl.ETL_TableState SET ValidatedAtUtc")]
    merged = [p for s, p in rec.log if "MergedShape = ?" in s]
    assert merged[-2:] == [[datetime(2024, 1, 1, 2)] * 2 + ["0123456789abcdef", '["cod_fam", "libelle"]', "famille"],
                           ["0123456789abcdef", '["cod_fam"]', "famille"]]
    # famille had no columns: recorded as not known (its next load reads in full)
    assert ["unknown", None, "famille"] in merged
    assert "INSERT INTO etl.ETL_Markers (MarkerId, TableName, Step, BatchId, Mode, RunId, Rows) " \
           "VALUES (?, ?, ?, ?, ?, ?, ?)" in stmts
    assert any(s.startswith("INSERT INTO etl.ETL_Log") for s in stmts)
    assert any(s.startswith("INSERT INTO config.ETL_Tables") for s in stmts)
    log_params = [p for s, p in rec.log if s.startswith("INSERT INTO etl.ETL_Log")]
    assert all("secret" not in str(p) for p in log_params)
    # prune-history: the same statements as on DuckDB (tests/test_cli.py runs them there)
    before = len(rec.log)
    rec.answers.insert(0, (r"^SELECT COUNT\(\*\) FROM etl\.ETL_(Log|Validation|Markers) WHERE", [(5,)]))
    assert set(runlog.prune_history(wh, datetime(2024, 1, 1)).values()) == {5}
    pruned = [s for s, _p in rec.log[before:]]
    assert sum(s.startswith("DELETE FROM etl.") for s in pruned) == 3, pruned
    assert_all_parse(stmts + pruned, "markers / run log / config / prune-history")


def test_sync_columns_statements_parse(tmp_path):
    from cbm_luigi import demo_source
    from cbm_luigi.source.readers import EmbeddedReader

    src = tmp_path / "demo.sqlite"
    demo_source.generate(src, scale=0.05)
    existing = {"TableName": "produit", "ColumnName": "cod_pro", "SqlName": "cod_pro", "SourceExpression": None,
                "IsOverride": False, "IsExcluded": False, "DataType": "varchar", "Width": 30, "Scale": None,
                "NullFlag": "N", "ArrayExtent": 0, "OrdinalPosition": 1, "Label": None, "Description": None,
                "IsMissingAtSource": False}
    override = dict(existing, ColumnName="libelle", SqlName="lib", SourceExpression='UPPER("libelle") AS lib',
                    IsOverride=True)
    vanished = dict(existing, ColumnName="vanished", SqlName="vanished")
    rec = RecordingSession([
        (r"SELECT \* FROM config\.ETL_Columns WHERE TableName = \?", lambda sql: [existing, override, vanished]),
        (r"SELECT COUNT\(\*\) FROM config\.ETL_Columns", [(0,)]),
    ])
    reader = EmbeddedReader(src)
    try:
        with rec.transaction():
            stats = config_store.sync_columns(rec, reader, "produit")
        config_store.ensure_columns(rec, lambda: contextlib.nullcontext(reader), "produit")
    finally:
        reader.close() if hasattr(reader, "close") else None
    assert stats["missing"] == 1
    stmts = rec.statements
    assert any(s.startswith("INSERT INTO meta.SYSCOLUMNS_FULL") for s in stmts)
    assert any(s.startswith("UPDATE config.ETL_Columns SET DataType") for s in stmts)
    assert_all_parse(stmts, "sync-columns")


def test_cli_statements_parse(monkeypatch, tmp_path, capsys):
    from cbm_luigi import cli

    rec = RecordingSession([(r"etl\.vw_LastRuns", [{"TableName": "famille", "Step": "merge", "Status": "SUCCESS",
                                                    "Rows": 1, "RowsInserted": 1, "RowsUpdated": 0,
                                                    "RowsUnchanged": 0, "RowsDeleted": 0, "DurationMs": 3,
                                                    "BatchId": "b", "Mode": "full", "ErrorMessage": None}]),
                            (r"etl\.vw_SLABreach", [{"TableName": "famille", "IsCritical": True,  # as pyodbc
                                                     "SLAHours": Decimal("26.00"), "HoursSinceSuccess": 30.25,
                                                     "LastStatus": "SUCCESS", "LastError": None,
                                                     "LastRunTs": datetime(2024, 1, 1), "SLAStatus": "LATE",
                                                     "LastSuccessTs": None}]),
                            (r"COUNT\(\*\) FROM etl\.ETL_Markers", [(0,)]),
                            (r"FROM etl\.ETL_Markers AS m", [("famille", "b", "full", "merge", datetime(2024, 1, 1),
                                                               "r")]),
                            (r"COUNT\(\*\) FROM config\.ETL_Tables", [(1,)])])
    wh = StubWarehouse(rec)
    monkeypatch.setattr(cli, "open_warehouse", lambda settings: wh)
    monkeypatch.setenv("CBM_HOME", str(tmp_path))
    monkeypatch.setenv("CBM_ENV_FILE", "")
    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path / "cache"))
    assert cli.main(["init-db"]) == 0
    assert cli.main(["summary"]) == 0
    assert cli.main(["invalidate", "famille"]) == 0
    capsys.readouterr()
    assert cli.main(["check-sla", "--critical"]) == 2  # SQL Server's types: DECIMAL hours, BIT as bool
    assert capsys.readouterr().out.splitlines() == [
        "famille: LATE: last validated load started 30.2 h ago (SLA 26.00 h)",
        "check-sla: 1 of 1 critical table(s) not OK (`cbm-etl summary` shows each table's last batch; "
        "OPERATIONS.md says how to rerun)"]
    stmts = rec.statements
    assert stmts[:len(SCRIPT_STATEMENTS)] == [s for _l, s in SCRIPT_STATEMENTS]
    assert_all_parse(stmts[len(SCRIPT_STATEMENTS):], "cli")


# -- mssql_wh: introspection, layout, parameter sizes, row preparation -------------------------------------------

@pytest.mark.parametrize("info,expected", [
    (("nvarchar", 40, None, None, None), "NVARCHAR(40)"),
    (("nvarchar", -1, None, None, None), "NVARCHAR(MAX)"),
    (("varbinary", -1, None, None, None), "VARBINARY(MAX)"),
    (("varbinary", 16, None, None, None), "VARBINARY(16)"),
    (("char", 32, None, None, None), "CHAR(32)"),
    (("decimal", None, 15, 4, None), "DECIMAL(15,4)"),
    (("numeric", None, 38, 0, None), "DECIMAL(38,0)"),
    (("datetime2", None, None, None, 3), "DATETIME2(3)"),
    (("datetimeoffset", None, None, None, 3), "DATETIMEOFFSET(3)"),
    (("bit", None, 1, None, None), "BIT"),
    (("int", None, 10, 0, None), "INT"),
    (("bigint", None, 19, 0, None), "BIGINT"),
    (("float", None, 53, None, None), "FLOAT"),
    (("date", None, None, None, 0), "DATE"),
])
def test_render_type(info, expected):
    assert render_type(*info) == expected


def test_table_columns_match_what_the_dialect_writes():
    """A table created from the plan reads back with the same type text: evolve sees no change."""
    info = {"NVARCHAR(12)": ("nvarchar", 12, None, None, None), "NVARCHAR(MAX)": ("nvarchar", -1, None, None, None),
            "INT": ("int", None, 10, 0, None), "BIGINT": ("bigint", None, 19, 0, None),
            "DECIMAL(15,4)": ("decimal", None, 15, 4, None), "FLOAT": ("float", None, 53, None, None),
            "DATE": ("date", None, None, None, 0), "DATETIME2(3)": ("datetime2", None, None, None, 3),
            "DATETIMEOFFSET(3)": ("datetimeoffset", None, None, None, 3), "BIT": ("bit", None, 1, None, None),
            "VARBINARY(16)": ("varbinary", 16, None, None, None),
            "VARBINARY(MAX)": ("varbinary", -1, None, None, None), "NVARCHAR(5)": ("nvarchar", 5, None, None, None),
            "NVARCHAR(3)": ("nvarchar", 3, None, None, None)}
    cols = all_kind_columns()
    rows = [(c.name, *info[KIND_TYPES[c.name]], "YES" if c.nullable else "NO") for c in cols]
    rec = RecordingSession([(r"INFORMATION_SCHEMA\.COLUMNS", rows)])
    wh = StubWarehouse(rec)
    got = wh.table_columns(rec, "ods", "all_kinds")
    assert got == {c.name: (KIND_TYPES[c.name], c.nullable) for c in cols}
    assert evolve(D, "ods", "all_kinds", cols, got) == ([], [])
    assert rec.log[-1] == (mssql_wh.TABLE_COLUMNS_SQL, ["ods", "all_kinds"])
    parse_tsql(mssql_wh.TABLE_COLUMNS_SQL, "table_columns")


def test_stage_layout_and_input_sizes():
    layout = stage_layout(D, all_kind_columns())
    assert [c.name for c in layout][-5:] == ["_etl_hashdiff", "_etl_run_id", "_etl_batch_id", "_etl_loaded_at",
                                            "_etl_source_ts"]
    sizes = dict(zip([c.name for c in layout], input_sizes(layout)))
    assert sizes["code"] == (pyodbc.SQL_WVARCHAR, 12, 0)
    assert sizes["label"] == (pyodbc.SQL_WLONGVARCHAR, 0, 0)
    assert sizes["memo"] == (pyodbc.SQL_WLONGVARCHAR, 0, 0)
    assert sizes["price"] == (pyodbc.SQL_DECIMAL, 15, 4)
    assert sizes["qty"][0] == pyodbc.SQL_INTEGER and sizes["big"][0] == pyodbc.SQL_BIGINT
    assert sizes["ratio"][0] == pyodbc.SQL_DOUBLE and sizes["flag"][0] == pyodbc.SQL_BIT
    assert sizes["day"][0] == pyodbc.SQL_TYPE_DATE
    assert sizes["ts"] == (pyodbc.SQL_TYPE_TIMESTAMP, 23, 3)
    assert sizes["tstz"] == (pyodbc.SQL_WVARCHAR, 34, 0)
    assert sizes["raw"] == (pyodbc.SQL_VARBINARY, 16, 0) and sizes["blob"] == (pyodbc.SQL_LONGVARBINARY, 0, 0)
    assert sizes["_etl_hashdiff"] == (pyodbc.SQL_WVARCHAR, 32, 0)
    assert sizes["_etl_run_id"] == (pyodbc.SQL_WVARCHAR, 64, 0)


def _batch(plan, rows=7) -> pa.RecordBatch:
    """A batch as the stage loaders send it: the file's columns plus the run's values, in layout order."""
    table = stage_table(plan, rows)
    for name, arr in TECH.arrays(rows):
        table = table.append_column(name, arr)
    layout = stage_layout(D, steps.stage_columns(plan))
    return table.select([c.name for c in layout]).to_batches()[0]


def test_rows_for_executemany_converts_per_column():
    plan = all_kind_plan(dimension=False)
    layout = stage_layout(D, steps.stage_columns(plan))
    rows = rows_for_executemany(_batch(plan), layout, table="all_kinds")
    assert len(rows) == 7 and all(len(r) == len(layout) for r in rows)
    row = dict(zip([c.name for c in layout], rows[3]))
    assert row["code"] == "co3" and row["qty"] == 3 and isinstance(row["qty"], int)
    assert row["price"] == Decimal("0.75") and row["price"].as_tuple().exponent == -4  # quantized to the scale
    assert row["ratio"] == pytest.approx(1.0) and row["flag"] is False
    assert row["day"] == date(2024, 1, 4)
    assert row["ts"] == datetime(2024, 1, 1, 12, 0, 3, 123000)  # cut to DATETIME2(3)
    assert row["tstz"] == "2024-01-01 15:00:00.000 +00:00"
    assert row["raw"] == b"\x03\x03\x03"
    assert row["_etl_loaded_at"] == datetime(2024, 1, 2, 3, 4, 5, 678000)
    assert row["_etl_source_ts"] is None
    # one Python type per column
    for i, c in enumerate(layout):
        assert len({type(r[i]) for r in rows if r[i] is not None}) <= 1, c.name


def test_rows_for_executemany_rejects_what_the_driver_would_truncate():
    layout = [StageColumn("k", "INT", False), StageColumn("name", "NVARCHAR(5)"), StageColumn("b", "VARBINARY(2)"),
              StageColumn("p", "DECIMAL(4,2)")]
    ok = pa.record_batch({"k": [1, 2], "name": ["abcde", "x😀"], "b": [b"ab", None],
                          "p": pa.array([Decimal("12.34"), Decimal("1.5")], pa.decimal128(6, 3))})
    assert rows_for_executemany(ok, layout)[1] == (2, "x😀", None, Decimal("1.50"))
    long = pa.record_batch({"k": [1, 42], "name": ["abc", "abcd😀"], "b": [None, None],
                            "p": pa.array([None, None], pa.decimal128(4, 2))})
    with pytest.raises(StageValueError) as e:
        rows_for_executemany(long, layout, table="client", keys=["k"], row_offset=10_000)
    msg = str(e.value)
    assert "stg.client.name NVARCHAR(5)" in msg and "6 characters (UTF-16 code units) > 5" in msg
    assert "k=42" in msg and "row 10002" in msg and "'abcd😀'" in msg
    with pytest.raises(StageValueError, match=r"3 bytes > 2"):
        rows_for_executemany(pa.record_batch({"k": [1], "name": ["a"], "b": [b"abc"],
                                              "p": pa.array([None], pa.decimal128(4, 2))}), layout)
    with pytest.raises(StageValueError, match=r"does not fit DECIMAL\(4,2\)"):
        rows_for_executemany(pa.record_batch({"k": [1], "name": ["a"], "b": [None],
                                              "p": pa.array([Decimal("123.4")], pa.decimal128(6, 1))}), layout)
    with pytest.raises(StageValueError, match="NULL in a NOT NULL column"):
        rows_for_executemany(pa.record_batch({"k": pa.array([None], pa.int32()), "name": ["a"], "b": [None],
                                              "p": pa.array([None], pa.decimal128(4, 2))}), layout)
    with pytest.raises(ValueError, match="has no column p"):
        rows_for_executemany(pa.record_batch({"k": [1], "name": ["a"], "b": [None]}), layout, table="client")


def test_arrow_batch_for_bulkcopy_checks_and_casts():
    plan = all_kind_plan(dimension=False)
    layout = stage_layout(D, steps.stage_columns(plan))
    out = arrow_batch_for_bulkcopy(_batch(plan), layout, table="all_kinds")
    assert out.schema.names == [c.name for c in layout]
    assert out.column(out.schema.names.index("ts"))[3].as_py() == datetime(2024, 1, 1, 12, 0, 3, 123000)
    # both paths agree on time zones: DATETIME2 gets the UTC wall time, DATETIMEOFFSET keeps the instant
    berlin = pa.array([datetime(2024, 7, 1, 12, 0, 0, 123456, tzinfo=ZoneInfo("Europe/Berlin"))],
                      pa.timestamp("us", tz="Europe/Berlin"))
    tz_layout = [StageColumn("x", "DATETIME2(3)"), StageColumn("y", "DATETIMEOFFSET(3)")]
    tz_batch = pa.record_batch({"x": berlin, "y": berlin})
    arrow_row = arrow_batch_for_bulkcopy(tz_batch, tz_layout).to_pylist()[0]
    odbc_row = rows_for_executemany(tz_batch, tz_layout)[0]
    assert arrow_row["x"] == odbc_row[0] == datetime(2024, 7, 1, 10, 0, 0, 123000)
    assert arrow_row["y"] == datetime(2024, 7, 1, 10, 0, 0, 123000, tzinfo=timezone.utc)
    assert odbc_row[1] == "2024-07-01 12:00:00.123 +02:00"
    layout2 = [StageColumn("k", "INT", False), StageColumn("name", "NVARCHAR(5)")]
    with pytest.raises(StageValueError, match=r"k=7.*'abcd😀'"):
        arrow_batch_for_bulkcopy(pa.record_batch({"k": [1, 7], "name": ["abc", "abcd😀"]}), layout2,
                                 table="t", keys=["k"])


def test_utf16_sizing_of_the_stage_file(tmp_path):
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"a": ["ab", "😀😀x"], "b": ["x", None], "r": [b"abcd", b""]}), path)
    cols = [Column("a", ColumnType("string", width=3), max_len=3), Column("b", ColumnType("string", width=10)),
            Column("r", ColumnType("binary", width=2))]
    got = {c.name: c for c in sized_for_file(cols, path, D)}
    assert got["a"].max_len == 5 and utf16_len("😀😀x") == 5  # 3 code points, 5 UTF-16 units
    assert got["b"] == cols[1] and got["r"].max_len == 4


def test_replace_stage_executemany_path(stage_file, monkeypatch):
    monkeypatch.setattr(mssql_wh, "CHUNK_ROWS", 3)
    plan = all_kind_plan(dimension=False)
    rec = RecordingSession([(r"COUNT_BIG", [(7,)])])
    wh = StubWarehouse(rec, bulk="executemany")
    n = wh.replace_stage(rec, "all_kinds", stage_file(plan), steps.stage_columns(plan, {"code": 12}), TECH)
    assert n == 7
    assert rec.statements[0] == "DROP TABLE IF EXISTS [stg].[all_kinds]"
    assert rec.statements[1].startswith("CREATE TABLE [stg].[all_kinds]")
    calls = [c for cur in rec.con.cursors for c in cur.calls]
    assert [len(rows) for _s, rows, _z, _f in calls] == [3, 3, 1]  # bounded batches
    sql, _rows, sizes, fast = calls[0]
    assert fast and sizes == input_sizes(stage_layout(D, steps.stage_columns(plan, {"code": 12})))
    assert sql.startswith("INSERT INTO [stg].[all_kinds] ([code], [label], [memo]") and sql.count("?") == len(sizes)
    assert_all_parse(rec.statements, "replace_stage (executemany)")


# pyodbc's fast_executemany (src/params.cpp, ExecuteMulti) allocates one parameter array for every row of a call,
# each parameter at its bound size (setinputsizes), not its value's: read from pyodbc's source for this check
_PYODBC_FIXED = {pyodbc.SQL_DECIMAL: 19, pyodbc.SQL_INTEGER: 8, pyodbc.SQL_BIGINT: 8, pyodbc.SQL_DOUBLE: 8,
                 pyodbc.SQL_BIT: 1, pyodbc.SQL_TYPE_DATE: 6, pyodbc.SQL_TYPE_TIMESTAMP: 16}


def _pyodbc_parameter_array(sizes, rows: int) -> int:
    row = 0
    for sql_type, size, _digits in sizes:
        if sql_type in (pyodbc.SQL_WVARCHAR, pyodbc.SQL_WLONGVARCHAR):
            buf = 2 * size if size else 16
        elif sql_type in (pyodbc.SQL_VARBINARY, pyodbc.SQL_LONGVARBINARY):
            buf = size if size else 16
        else:
            buf = _PYODBC_FIXED[sql_type]
        row += buf + 8
    return row * rows


def test_executemany_staging_keeps_pyodbcs_parameter_array_bounded_whatever_the_declared_widths(tmp_path):
    """30 comment fields declared NVARCHAR(4000) holding a few characters each: the batch file is small, so staging
    read 10,000 rows a batch (sized from the values), and one executemany call made pyodbc allocate 10,000 x 30 x
    8,008 bytes, 2.4 GB (found in review). Each call now carries what fits STAGE_BATCH_BYTES at the bound sizes."""
    rows, cols = 10_000, 30
    names = [f"comment_{j:02d}" for j in range(cols)]
    data = {n: pa.array([f"r{i:06d}-{j:02d}" for i in range(rows)]) for j, n in enumerate(names)}
    data["_etl_hashdiff"] = pa.array(["0" * 32] * rows)
    data["_etl_source_ts"] = pa.array([None] * rows, pa.timestamp("us"))
    path = tmp_path / "notes.stage.parquet"
    pq.write_table(pa.table(data), path)
    rec = RecordingSession([(r"COUNT_BIG", [(rows,)])])
    wh = StubWarehouse(rec, bulk="executemany")
    wh.replace_stage(rec, "notes", path, [Column(n, ColumnType("string", width=4000)) for n in names], TECH_STAGE)
    calls = [c for cur in rec.con.cursors for c in cur.calls]
    assert sum(len(r) for _s, r, _z, _f in calls) == rows  # every row, once
    assert [r[0][0] for _s, r, _z, _f in calls[:2]] == ["r000000-00", f"r{len(calls[0][1]):06d}-00"]  # in order
    worst = max(_pyodbc_parameter_array(sizes, len(r)) for _s, r, sizes, _f in calls)
    assert worst <= mssql_wh.STAGE_BATCH_BYTES, f"{worst / 1e6:.0f} MB for one executemany call"


def test_replace_stage_error_names_the_key(stage_file, monkeypatch):
    """By the key's Progress name, as the step passes it (the warehouse used to guess it from config.ETL_Tables
    with sql_safe_name, which can be another column's name)."""
    plan = all_kind_plan(dimension=False)
    rec = RecordingSession()
    wh = StubWarehouse(rec, bulk="executemany")
    path = stage_file(plan)
    monkeypatch.setattr(mssql_wh, "sized_for_file", lambda cols, p, d: cols)  # keep the too-narrow width
    with pytest.raises(StageValueError, match=r"stg\.all_kinds\.odd name-é NVARCHAR\(2\).*\(cod-e='co0'; row 1 "):
        wh.replace_stage(rec, "all_kinds", path, steps.stage_columns(plan, {"odd name-é": 2}), TECH,
                         keys={"code": "cod-e"})
    assert not any("config.ETL_Tables" in st for st in rec.statements)
    assert_all_parse(rec.statements, "replace_stage (error path)")


def test_replace_stage_bulkcopy_path_commits_ddl_first(stage_file, monkeypatch):
    calls = {}

    class BulkCursor:
        def bulkcopy_arrow(self, table, source, **kw):
            batches = list(source)
            calls.update(table=table, rows=sum(b.num_rows for b in batches), kw=kw, schema=source.schema)
            return {"rows_copied": calls["rows"]}

    class BulkConnection:
        def cursor(self):
            return BulkCursor()

        def commit(self):
            calls["committed"] = True

        def close(self):
            calls["closed"] = True

    fake = types.ModuleType("mssql_python")
    fake.connect = lambda conn_str: calls.setdefault("conn_str", conn_str) and BulkConnection()
    fake.Cursor = BulkCursor
    monkeypatch.setitem(sys.modules, "mssql_python", fake)
    plan = all_kind_plan(dimension=True)
    rec = RecordingSession([(r"SELECT @@TRANCOUNT", [(1,)]), (r"COUNT_BIG", [(7,)])])
    wh = StubWarehouse(rec, bulk="auto")
    marker = StageTarget(wh, "m", table="all-kinds", step="stage", batch_id="2024-01-01", mode="full",
                         shape=plan.extract_shape())
    steps.stage(wh, plan, stage_file(plan), TECH, marker=marker, run_id="run-1")
    st = rec.statements
    create = next(i for i, s in enumerate(st) if s.startswith("CREATE TABLE [stg]"))
    assert st[create + 1:create + 4] == ["SELECT @@TRANCOUNT", "COMMIT TRANSACTION", "BEGIN TRANSACTION"]
    assert st[-1] == "COMMIT TRANSACTION"
    # the record of what stg held is gone in the transaction the bulk copy commits early: a kill after that
    # commit cannot leave it naming the previous batch over the new rows
    forget = next(i for i, x in enumerate(st) if x.startswith("UPDATE etl.ETL_TableState SET BatchId = ''"))
    assert forget < create and any(x.startswith("UPDATE etl.ETL_TableState SET BatchId = ?") for x in st[create:])
    assert calls["table"] == "[stg].[all_kinds]" and calls["rows"] == 7 and calls["committed"] and calls["closed"]
    assert calls["kw"]["column_mappings"][-1] == "_etl_source_ts" and calls["kw"]["keep_nulls"]
    assert calls["kw"]["timeout"] == 86_400  # not mssql-python's 30 s, which fails big tables
    assert "driver" not in calls["conn_str"].lower() and "Server=db,1433" in calls["conn_str"]
    assert calls["schema"].field("ts").type == pa.timestamp("ms")
    assert_all_parse(st, "replace_stage (bulkcopy)")


# -- sessions over a fake pyodbc connection ----------------------------------------------------------------------

class _PyodbcCursor:
    def __init__(self, results, log):
        self.results, self.log, self.i = results, log, 0

    def execute(self, sql, params=None):
        self.log.append((sql, params))
        if isinstance(self.results, Exception):
            raise self.results
        self.i = 0
        return self

    @property
    def description(self):
        r = self.results[self.i] if self.i < len(self.results) else None
        return None if r is None else [(n, None) for n in r[0]]

    def fetchall(self):
        return self.results[self.i][1]

    def nextset(self):
        self.i += 1
        if self.i < len(self.results) and self.results[self.i] == "error":
            raise RuntimeError("error of the 2nd statement")
        return self.i < len(self.results)

    def close(self):
        pass


class _PyodbcConnection:
    def __init__(self, results):
        self.results, self.log = results, []

    def cursor(self):
        return _PyodbcCursor(self.results, self.log)


def test_session_query_skips_rowcounts_and_drains_errors():
    con = _PyodbcConnection([None, (("act", "n"), [("INSERT", 2), ("UPDATE", 1)])])
    s = MssqlSession(con)
    assert s.query("DECLARE ...; MERGE ...; SELECT act, n ...", [1]) == [("INSERT", 2), ("UPDATE", 1)]
    assert s.query_dicts("x") == [{"act": "INSERT", "n": 2}, {"act": "UPDATE", "n": 1}]
    assert con.log[0] == ("DECLARE ...; MERGE ...; SELECT act, n ...", [1])
    assert con.log[1] == ("x", None)  # no params: no parameter list sent
    with pytest.raises(RuntimeError, match="2nd statement"):
        MssqlSession(_PyodbcConnection([None, "error"])).execute("a; b")


def test_session_transaction_uses_xact_abort():
    con = _PyodbcConnection([None])
    s = MssqlSession(con)
    with s.transaction():
        s.execute("UPDATE x SET a = 1")
    assert [q for q, _p in con.log] == ["SET XACT_ABORT ON", "BEGIN TRANSACTION", "UPDATE x SET a = 1",
                                        "COMMIT TRANSACTION"]
    con.log.clear()
    with pytest.raises(ZeroDivisionError), s.transaction():
        1 / 0
    assert [q for q, _p in con.log][-1] == "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION"
    for q, _p in con.log:
        parse_tsql(q, "transaction control")


def test_warehouse_settings_and_helpers(monkeypatch):
    wh = MssqlWarehouse(_settings())
    assert wh.kind == "mssql" and wh.needs_string_lengths and isinstance(wh.dialect, TsqlDialect)
    assert "s3cr" not in wh.describe() and "PWD={***}" in wh.describe()
    assert mssql_wh._without_driver("Driver={ODBC Driver 18 for SQL Server};Server=h;PWD={a;b}") == \
        "Server=h;PWD={a;b}"
    monkeypatch.setenv("CBM_MSSQL_BULK", "nope")
    with pytest.raises(ValueError, match="CBM_MSSQL_BULK"):
        MssqlWarehouse(_settings())
    monkeypatch.setenv("CBM_MSSQL_BULK", "bulkcopy")
    monkeypatch.setitem(sys.modules, "mssql_python", None)
    with pytest.raises(RuntimeError, match="mssql_python is not installed"):
        MssqlWarehouse(_settings())._bulkcopy_module()
    # 1.4-1.12 import fine but have no Cursor.bulkcopy_arrow (mocked module: no SQL Server driver here)
    old = types.ModuleType("mssql_python")
    old.__version__, old.Cursor = "1.12.0", type("Cursor", (), {"bulkcopy": lambda self, *a: None})
    monkeypatch.setitem(sys.modules, "mssql_python", old)
    with pytest.raises(RuntimeError, match=r"mssql_python 1.12.0 has no Cursor.bulkcopy_arrow"):
        MssqlWarehouse(_settings())._bulkcopy_module()
    monkeypatch.setenv("CBM_MSSQL_BULK", "auto")
    assert MssqlWarehouse(_settings())._bulkcopy_module() is None  # auto: the executemany path, with a warning
    with pytest.raises(RuntimeError, match="needs CBM_MSSQL_ODBC"):
        MssqlWarehouse(_settings(mssql_odbc=""))._connect()


def test_offset_text_keeps_offsets():
    berlin = datetime(2024, 7, 1, 12, 0, 0, 987654, tzinfo=ZoneInfo("Europe/Berlin"))
    assert mssql_wh._offset_text(berlin, 3) == "2024-07-01 12:00:00.987 +02:00"
    assert mssql_wh._offset_text(datetime(5, 1, 2), 0) == "0005-01-02 00:00:00 +00:00"


def test_stage_lengths_query_counts_utf16_units_with_trailing_blanks():
    plan = all_kind_plan(dimension=False)
    rec = RecordingSession([(r"DATALENGTH", [tuple(Decimal("3.0") for _ in range(6))])])
    got = steps.stage_lengths(rec, StubWarehouse(rec), plan)
    assert set(got.values()) == {3}
    q = rec.statements[-1]
    assert "MAX(0.5 * DATALENGTH([code]))" in q and "LEN(" not in q
    parse_tsql(q, "stage_lengths")


def test_session_base_class_is_a_session():
    assert issubclass(RecordingSession, Session)


def test_all_new_batch_is_one_plain_insert_with_the_merge_insert_values():
    for label, spec in specs():
        (sql, n), = merge_statements(D, spec, all_new=True)
        assert sql.startswith("INSERT INTO [ods].[all_kinds] (") and "MERGE" not in sql and "JOIN" not in sql, label
        assert "NOT EXISTS" not in sql and n == (1 if spec.scd2 else 2), label
        if spec.scd2:  # the same columns and values as the SCD2 insert of a merge, without its filter
            assert sql == scd2_insert(D, spec)[0].split("\nWHERE NOT EXISTS")[0], label


def test_merge_counts_read_ods_under_the_merge_locks():
    """The counts choose MERGE, INSERT or nothing: on SQL Server they keep their range locks to the commit, so
    a concurrent load of the same table cannot insert a key between the count and the write."""
    for label, spec in specs():
        sql = merge_counts(D, spec)
        assert sql.count("[ods].[all_kinds] AS t WITH (HOLDLOCK)") == 1, label  # its one join
        assert "HOLDLOCK" not in merge_counts(DuckDbDialect(), spec), label


def test_a_table_past_sql_servers_column_limit_is_refused_before_staging(stage_file):
    cols = [PlanColumn("code", "code", ColumnType("string", width=10), False),
            PlanColumn("zal", "zal", ColumnType("string", width=10), True, extent=600),
            PlanColumn("ztx", "ztx", ColumnType("string", width=10), True, extent=500)]
    plan = TablePlan(table="wide", destination="wide", keys=["code"], columns=cols)
    rec = RecordingSession()
    wh = StubWarehouse(rec)
    with pytest.raises(ConfigError, match=r"^table wide: ods.wide would have 1110 columns, more than the 1024 the "
                                          r"warehouse admits. Nothing was staged: keep the largest arrays whole "
                                          r"\(ArrayMode = 'single' in config.ETL_Columns: zal \(600\), ztx \(500\)\)"):
        steps.check_column_count(wh, plan)
    assert rec.statements == []
    steps.check_column_count(StubWarehouse(rec), TablePlan(table="ok", destination="ok", keys=["code"],
                                                            columns=cols[:2]))  # 601 + 9 technical: fine


def test_a_table_past_sql_servers_row_size_is_refused_before_staging():
    """480 decimal columns without a catalog width: DECIMAL(38,2) takes 17 bytes, so 8,160 bytes of fixed-length
    data a row, past SQL Server's 8,060 (Msg 1701 at CREATE TABLE), far below 1,024 columns."""
    cols = [PlanColumn("code", "code", ColumnType("string", width=10), False)] + [
        PlanColumn(f"m{i:03d}", f"m{i:03d}", ColumnType("decimal", 38, 2), True) for i in range(480)]
    plan = TablePlan(table="rows", destination="rows", keys=["code"], columns=cols)
    with pytest.raises(ConfigError, match=r"ods.rows would have rows of at least 8,\d{3} bytes of fixed-length "
                                          r"data, more than the 8,060 the warehouse admits. Nothing was staged: "
                                          r"exclude columns"):
        steps.check_column_count(StubWarehouse(RecordingSession()), plan)
    # DECIMAL(9,2) takes 5 bytes: 2,400 bytes, fine
    steps.check_column_count(StubWarehouse(RecordingSession()), TablePlan(
        table="rows", destination="rows", keys=["code"],
        columns=cols[:1] + [PlanColumn(c.name, c.sql_name, ColumnType("decimal", 9, 2)) for c in cols[1:]]))
    d = TsqlDialect()
    assert [d.fixed_bits(t) for t in ("DECIMAL(9,2)", "DECIMAL(38,10)", "DATETIME2(3)", "DATETIMEOFFSET(3)",
                                      "CHAR(32)", "BIT", "NVARCHAR(20)", "VARBINARY(MAX)", "BIGINT")] == \
        [40, 136, 56, 72, 256, 1, 0, 0, 64]


def test_ods_gets_a_clustered_index_on_its_keys_and_keeps_it_through_key_widening(caplog):
    rec = RecordingSession([(r"FROM sys\.indexes", [])])
    wh = StubWarehouse(rec)
    types = {"code": ("NVARCHAR(20)", False), "qty": ("DECIMAL(12,2)", False)}
    before, after = wh.key_index_ddl(rec, "all_kinds", ["code", "qty"], [])
    assert before == [] and after(types) == [
        "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE object_id = OBJECT_ID(N'[ods].[all_kinds]') "
        "AND type IN (1, 5)) "
        "CREATE CLUSTERED INDEX [CX_ods_all_kinds] ON [ods].[all_kinds] ([code], [qty])"]
    # ours, on the keys: kept
    ours = RecordingSession([(r"FROM sys\.indexes", [("CX_ods_all_kinds", "code"), ("CX_ods_all_kinds", "qty")]),
                             (r"INFORMATION_SCHEMA\.COLUMNS", [("code", "nvarchar", 20, None, None, None, "NO"),
                                                               ("qty", "decimal", None, 12, 2, None, "NO")])])
    assert StubWarehouse(ours).key_index_ddl(ours, "all_kinds", ["code", "qty"], []) == ([], None)
    assert_all_parse([ours.statements[-1]], "clustered index columns")
    # a key column lengthened: SQL Server does it in place under the index, which stays
    widen = ["ALTER TABLE [ods].[all_kinds] ALTER COLUMN [code] NVARCHAR(30) NOT NULL"]
    assert StubWarehouse(ours).key_index_ddl(ours, "all_kinds", ["code", "qty"], widen) == ([], None)
    # a key column's type widened (DECIMAL(12,2) -> (14,2)): SQL Server cannot alter it under the index, which
    # goes first and comes back
    retyped = ["ALTER TABLE [ods].[all_kinds] ALTER COLUMN [qty] DECIMAL(14,2) NOT NULL"]
    before, after = StubWarehouse(ours).key_index_ddl(ours, "all_kinds", ["code", "qty"], retyped)
    assert before == ["DROP INDEX IF EXISTS [CX_ods_all_kinds] ON [ods].[all_kinds]"] and after(types)
    assert_all_parse(before + after(types), "key index")
    # PrimaryKeyCols changed (a key field renamed: qty's old column is made optional): made again on the new key
    renamed = ["ALTER TABLE [ods].[all_kinds] ALTER COLUMN [qty] DECIMAL(12,2) NULL"]
    before, after = StubWarehouse(ours).key_index_ddl(ours, "all_kinds", ["code", "num"], renamed)
    assert before == ["DROP INDEX IF EXISTS [CX_ods_all_kinds] ON [ods].[all_kinds]"]
    assert after({**types, "num": ("INT", True)})[0].endswith("([code], [num])")
    before, after = StubWarehouse(ours).key_index_ddl(ours, "all_kinds", ["soc", "code", "qty"], [])  # a field added
    assert before == ["DROP INDEX IF EXISTS [CX_ods_all_kinds] ON [ods].[all_kinds]"]
    # keys that cannot be index keys: said, and merges go on without the index
    with caplog.at_level(logging.WARNING):
        assert after({"code": ("NVARCHAR(MAX)", False), "qty": ("DECIMAL(12,2)", False)}) == []
        assert after({"code": ("NVARCHAR(450)", False), "qty": ("DECIMAL(12,2)", False)}) == []  # 900 + 9 bytes
    assert "no clustered index on the key (" in caplog.text
    # a table whose clustered index is a DBA's own: left alone
    rec2 = RecordingSession([(r"FROM sys\.indexes", [("IX_dba", "code")])])
    assert StubWarehouse(rec2).key_index_ddl(rec2, "all_kinds", ["code"], widen) == ([], None)


def _merged_on_sql_server(code: tuple, index: list[tuple], longest: int = 12) -> list[str]:
    """The statements steps.merge runs for the all-kinds table over an existing ods whose `code` column is as
    INFORMATION_SCHEMA describes it (`code`), with `index` the rows of its clustered index (name, column), and
    stg's longest text `longest` characters."""
    plan = all_kind_plan(dimension=False)
    names = [n for n, t, _ in plan.output_columns() if t.kind == "string"]
    rec = RecordingSession([(r"SELECT t\.LastSuccessTs, st\.MergedExtractStartedAt", [(None, None)]),
                            (r"FROM etl\.ETL_TableState", [{"BatchId": "2024-01-01", "Mode": "full", "RunId": "r",
                                                            "Rows": 7, "ExtractStartedAt": datetime(2024, 1, 1),
                                                            "ExtractShape": plan.extract_shape()}]),
                            (r"INFORMATION_SCHEMA\.COLUMNS", [code]), (r"SELECT TOP \(5\)", []),
                            (r"MAX\(0\.5 \* DATALENGTH", [tuple(Decimal(longest) for _ in names)]),
                            (r"FROM sys\.indexes AS i", index), (r"AS inserted", [(7, 0, 0, 0)]),
                            (r"SELECT @@TRANCOUNT", [(1,)])])
    wh = StubWarehouse(rec)
    marker = MarkerTarget(wh, "m", table="all-kinds", step="merge", batch_id="2024-01-01", mode="full")
    steps.merge(wh, plan, mode="full", batch_id="2024-01-01", marker=marker, run_id="r")
    return rec.statements


def test_merge_lengthening_a_key_column_keeps_the_index(stage_file):
    """ods.code is NVARCHAR(2) (ods widths follow the data); stg holds 12-character codes. SQL Server lengthens an
    indexed NVARCHAR in place (the same type, a larger size, not a PRIMARY KEY's index): the merge dropped our
    clustered index and made it again, rewriting ods twice under a schema lock that blocked every reader until
    it committed (found in review)."""
    st = _merged_on_sql_server(("code", "nvarchar", 2, None, None, None, "NO"), [("CX_ods_all_kinds", "code")])
    assert "ALTER TABLE [ods].[all_kinds] ALTER COLUMN [code] NVARCHAR(12) NOT NULL" in st
    assert [x for x in st if "DROP INDEX" in x or "CREATE CLUSTERED INDEX" in x] == []
    assert_all_parse(st, "merge with key widening")


@pytest.mark.parametrize("longest", [500, 5000])  # 1,000 bytes (past the index's 900), then NVARCHAR(MAX)
def test_merge_lengthening_a_key_column_past_an_index_key_drops_the_index(stage_file, longest):
    """A key lengthened past what an index key may hold: the index is dropped before the ALTER (SQL Server would
    refuse the ALTER under it, or every longer key later); whether it is made again is the `after` part's rule,
    from ods's types after the ALTER (test_ods_gets_a_clustered_index_on_its_keys_and_keeps_it_through_key_widening:
    the harness answers INFORMATION_SCHEMA with the types from before)."""
    st = _merged_on_sql_server(("code", "nvarchar", 2, None, None, None, "NO"), [("CX_ods_all_kinds", "code")],
                               longest=longest)
    drop = st.index("DROP INDEX IF EXISTS [CX_ods_all_kinds] ON [ods].[all_kinds]")
    alter = next(i for i, x in enumerate(st) if x.startswith("ALTER TABLE [ods].[all_kinds] ALTER COLUMN [code]"))
    assert drop < alter
    assert_all_parse(st, "merge with a key lengthened past an index key")


@pytest.mark.parametrize("index", [[("CX_ods_all_kinds", "code")], [], [("CX_ods_all_kinds", "other")]])
def test_the_null_key_check_reads_ods_only_when_its_key_index_cannot_vouch_for_the_key(stage_file, index):
    """ods.code may hold NULL (optional at the source): the check for rows loaded under another key scans the
    whole table, every night. Our clustered index on exactly the key was made by the merge that set the key, so
    it vouches for every row; with none, or on other columns (the key changed), ods is read."""
    statements = _merged_on_sql_server(("code", "nvarchar", 20, None, None, None, "YES"), index)
    checked = [x for x in statements if "[code] IS NULL) AND" in x]
    assert bool(checked) == (index != [("CX_ods_all_kinds", "code")]), statements
    if checked:
        assert_all_parse(checked, "null key check")


def test_tsql_merge_gives_one_parameter_per_marker_whatever_the_column_names(stage_file):  # noqa: F811
    """The same count on the SQL Server path, through the RecordingSession of test_tsql: each statement the
    merge executes gets as many parameters as it has `?` markers outside brackets and quotes (what pyodbc
    binds). A column `[actif?]` adds four to the type-1 MERGE's count (SET, INSERT list, VALUES)."""
    cols = [PlanColumn("code", "code", ColumnType("string", width=20), False),
            PlanColumn("actif", "actif?", ColumnType("bool"))]
    plan = TablePlan(table="famille", destination="famille", keys=["code"], columns=cols)
    rec = RecordingSession(_canned(plan=plan, mode="full"))
    wh = StubWarehouse(rec)
    marker = StageTarget(wh, "StageTable_famille_2024_01_01_abc", table="famille", step="stage",
                         batch_id="2024-01-01", mode="full", shape=plan.extract_shape())
    steps.stage(wh, plan, stage_file(plan), TECH, marker=marker, run_id="run-1",
                extract_started_at=datetime(2024, 1, 1))
    steps.merge(wh, plan, mode="full", batch_id="2024-01-01", marker=marker, run_id="run-1")
    merges = [(sql, params) for sql, params in rec.log if sql.startswith(("MERGE", "INSERT INTO [ods]"))]
    assert merges
    for sql, params in merges:
        markers = _params_to_variables(sql).count("@p")
        assert len(params) == markers, f"{len(params)} parameters for {markers} markers in:\n{sql}"


def _cli_plan() -> TablePlan:
    cols = [PlanColumn("soc", "soc", ColumnType("int32"), False),
            PlanColumn("code", "code", ColumnType("string", width=20), False),
            PlanColumn("nom", "nom", ColumnType("string", width=20), True)]
    return TablePlan(table="cli2", destination="cli2", keys=["soc", "code"], columns=cols, is_dimension=False)


def test_sql_server_null_key_advice_runs_as_written():
    """ERP upgrade to several companies: `soc` joins the key (PrimaryKeyCols = 'soc,code'), ods has no soc yet.
    The merge is refused (NullOdsKeyError) and, its transaction rolled back, gives the statements to run. Given
    as one text `ALTER ... ADD [soc]; UPDATE ... [soc]`, SQL Server compiled it as one batch and refused it (Msg
    207, Invalid column name: found in review): they are given one at a time."""
    plan = _cli_plan()
    info = [("code", "nvarchar", 20, None, None, None, "NO"), ("nom", "nvarchar", 20, None, None, None, "YES")]
    rec = RecordingSession([
        (r"SELECT t\.LastSuccessTs, st\.MergedExtractStartedAt", [(None, None)]),
        (r"FROM etl\.ETL_TableState", [{"BatchId": "2024-01-01", "Mode": "full", "RunId": "r", "Rows": 3,
                                        "ExtractStartedAt": datetime(2024, 1, 1),
                                        "ExtractShape": plan.extract_shape()}]),
        (r"INFORMATION_SCHEMA\.COLUMNS", info),
        (r"FROM \[ods\]\.\[cli2\] AS t WHERE \(", [(None, "C1", 3)]),  # ods rows without soc
        (r"SELECT TOP \(5\)", []),
        (r"MAX\(0\.5 \* DATALENGTH", [(Decimal("2"), Decimal("5"))]),
        (r"FROM sys\.indexes AS i", [("CX_ods_cli2", "code")]),
        (r"AS inserted", [(3, 0, 0, 0)]), (r"SELECT @@TRANCOUNT", [(1,)])])
    wh = StubWarehouse(rec)
    marker = MarkerTarget(wh, "m", table="cli2", step="merge", batch_id="2024-01-01", mode="full")
    with pytest.raises(steps.NullOdsKeyError) as got:
        steps.merge(wh, plan, mode="full", batch_id="2024-01-01", marker=marker, run_id="r")
    text = str(got.value)
    given = re.search(r"one statement at a time: (.*?) \(<value>", text).group(1)
    statements = re.findall(r"`([^`]+)`", given)
    # each its own batch: SQL Server compiles a batch whole, and an UPDATE of a column the batch adds fails
    assert statements == ["ALTER TABLE [ods].[cli2] ADD [soc] INT NULL",
                          "UPDATE [ods].[cli2] SET [soc] = <value> WHERE [soc] IS NULL"], text
    assert_all_parse([x.replace("<value>", "1") for x in statements], "null key advice")


def _catalog(indexes: list[tuple[int, str, int, list[tuple[str, int]]]]) -> duckdb.DuckDBPyConnection:
    """A DuckDB copy of the three catalog views the product reads, for one table (object_id 1) with columns
    code, qty: `indexes` = (index_id, name, type, [(column, key_ordinal)])."""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA sys")
    con.execute("CREATE TABLE sys.indexes (object_id INT, index_id INT, name VARCHAR, type INT)")
    con.execute("CREATE TABLE sys.index_columns (object_id INT, index_id INT, column_id INT, key_ordinal INT)")
    con.execute("CREATE TABLE sys.columns (object_id INT, column_id INT, name VARCHAR)")
    con.execute("CREATE MACRO OBJECT_ID(x) AS 1")
    ids = {"code": 1, "qty": 2}
    con.executemany("INSERT INTO sys.columns VALUES (1, ?, ?)", [[i, n] for n, i in ids.items()])
    for index_id, name, kind, cols in indexes:
        con.execute("INSERT INTO sys.indexes VALUES (1, ?, ?, ?)", [index_id, name, kind])
        con.executemany("INSERT INTO sys.index_columns VALUES (1, ?, ?, ?)",
                        [[index_id, ids[c], k] for c, k in cols])
    return con


def _would_run(con, stmt: str) -> bool:
    """Whether SQL Server would run the CREATE of `IF NOT EXISTS (<query>) CREATE ...` (its guard on `con`)."""
    m = re.match(r"IF NOT EXISTS \((SELECT .*?)\) CREATE ", stmt, re.S)
    if not m:
        return True
    query = re.sub(r"N'((?:[^']|'')*)'", r"'\1'", m.group(1))
    return not con.execute(f"SELECT EXISTS ({query})").fetchone()[0]


@pytest.mark.parametrize("name", ["CCI_all_kinds", "CX_ods_all_kinds"])
def test_a_clustered_columnstore_index_is_the_dbas_whatever_its_name(name):
    """A DBA's clustered columnstore (sys.indexes.type 5, its columns with key_ordinal 0) is left alone (found in
    review): seen as no clustered index, the merge ran `IF NOT EXISTS (... AND type = 1) CREATE CLUSTERED INDEX`
    and SQL Server refused a second clustered index (Msg 1902), every night. Made from ours the documented way
    (`CREATE CLUSTERED COLUMNSTORE INDEX CX_ods_<t> ... WITH (DROP_EXISTING = ON)`) it keeps our name: taken
    for ours on the wrong columns, the next merge dropped it and made a rowstore index again."""
    con = _catalog([(1, name, 5, [("code", 0), ("qty", 0)])])

    def catalog(sql):
        return con.execute(sql.replace("?", "'[ods].[all_kinds]'")).fetchall()

    rec = RecordingSession([(r"FROM sys\.indexes AS i", catalog)])
    wh = StubWarehouse(rec)
    before, after = wh.key_index_ddl(rec, "all_kinds", ["code"], [])
    types = {"code": ("NVARCHAR(20)", False), "qty": ("INT", False)}
    ddl = before + [st for st in (after(types) if after else []) if _would_run(con, st)]
    assert ddl == [], f"the merge would replace the DBA's clustered columnstore index: {ddl}"
    assert not wh.keyed_as(rec, "all_kinds", ["code"])


def test_catalog_emulation_agrees_with_the_product_on_rowstore_indexes():
    """The emulation above answers like the harness's canned rows for the cases the product handles: our
    rowstore index on the key is kept, a heap gets one (the CREATE's guard lets it run)."""
    for indexes, creates in [([(1, "CX_ods_all_kinds", 1, [("code", 1)])], False), ([], True)]:
        con = _catalog(indexes)
        rec = RecordingSession([(r"FROM sys\.indexes AS i",
                                 lambda sql, con=con: con.execute(sql.replace("?", "'x'")).fetchall())])
        wh = StubWarehouse(rec)
        before, after = wh.key_index_ddl(rec, "all_kinds", ["code"], [])
        made = [st for st in (after({"code": ("NVARCHAR(20)", False)}) if after else []) if _would_run(con, st)]
        assert bool(made) == creates


def test_summary_queries_parse_as_tsql(monkeypatch, capsys, tmp_path):
    from cbm_luigi import cli, runlog

    rec = RecordingSession([(r"FROM etl\.ETL_Markers AS m", []), (r"Step = 'validate' AND TableName IN", [])])
    monkeypatch.setattr(cli, "open_warehouse", lambda settings: StubWarehouse(rec))
    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(runlog, "_SPOOL", {})
    # a failed step's row waiting in the cache: summary asks whether its batch validated since (_sla_once_written)
    runlog.spool_steps(tmp_path, runlog.log_rows(run_id="r", batch_id="2026-11-30", table="client", mode="full",
                                                 task_id="t", records=[runlog.StepRecord("merge", status="FAILED")]))
    assert cli.main(["summary"]) == 0
    assert any("row_number() OVER" in x for x in rec.statements)
    assert any("FROM etl.ETL_Markers AS m JOIN" in x for x in rec.statements)  # the markers' query parses too
    assert any("TableName IN (?)" in x for x in rec.statements)
    assert_all_parse(rec.statements, "cbm-etl summary")


def test_summary_stays_under_sql_servers_2100_parameters(monkeypatch, tmp_path, capsys):
    """After a night the warehouse did not answer, every table has a FAILED row waiting in the cache, and summary
    asked whether each one's batch validated since with one `?` a table: 2,200 tables made a statement SQL Server
    refuses (Msg 8003: at most 2,100 parameters), when the operator needs the summary most (found in review)."""
    from cbm_luigi import cli, runlog

    asked = []
    rec = RecordingSession([(r"FROM etl\.ETL_Markers AS m", []),
                            (r"Step = 'validate' AND TableName IN", lambda sql: asked.append(sql) or [])])
    monkeypatch.setattr(cli, "open_warehouse", lambda settings: StubWarehouse(rec))
    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(runlog, "_SPOOL", {})
    rows = []
    for i in range(2_200):
        rows += runlog.log_rows(run_id="r", batch_id="2026-11-30", table=f"t{i:04d}", mode="full", task_id=f"k{i}",
                                records=[runlog.StepRecord("extract", status="FAILED", error="warehouse down")])
    runlog.spool_steps(tmp_path, rows)
    assert cli.main(["summary"]) == 0
    assert max(len(p) for _s, p in rec.log) <= 2_100
    assert sum(x.count("?") for x in asked) == 2_200  # every table asked about


def test_a_missing_sql_server_driver_is_named_with_the_way_out():
    """Real pyodbc and unixODBC (no SQL Server needed): the driver named in CBM_MSSQL_ODBC is not installed."""
    wh = MssqlWarehouse(_settings(mssql_odbc="Driver={No Such Driver 99};Server=db,1433;UID=etl;PWD=s3cr;et;",
                                  connect_retries=1))
    with pytest.raises(RuntimeError) as err:
        wh._connect()
    text = str(err.value)
    assert text.startswith("cannot connect to SQL Server") and "odbcinst -q -d" in text and "docs/mssql.md" in text
    assert "s3cr" not in text and "PWD={***}" in text


# -- 1. the DuckDB memory cap put back after a failed step, run on SQL Server ----------------------------------

def test_a_failed_sql_server_step_does_not_reconnect_to_put_back_a_duckdb_memory_limit(monkeypatch, caplog):
    """e3576a2 made every failed step open a new warehouse session to put DuckDB's memory cap back
    (steps._limits_named -> _settle_resources). SQL Server has no such cap (Warehouse.settle_resources is a no-op
    there), yet the failed step still opens a session for it. When the step failed because SQL Server is
    unreachable (a failover, a restart: its most common failure), that session goes through the whole
    connection retry cycle again (1 + CBM_CONNECT_RETRIES logins, 2 + 4 + 8 s of sleep plus each login's
    timeout), and then the log says it 'could not put the warehouse's memory limit back', a limit SQL Server
    does not have (found in review). A warehouse that sets no memory limit is left alone."""
    attempts: list[str] = []

    def unreachable(odbc, autocommit=False):
        attempts.append(odbc)
        raise pyodbc.OperationalError("08001", "[08001] [Microsoft][ODBC Driver 18 for SQL Server]TCP Provider: "
                                               "Error code 0x2749 (10057) (SQLDriverConnect)")

    monkeypatch.setattr(pyodbc, "connect", unreachable)
    slept: list[float] = []
    monkeypatch.setattr(mssql_wh.time, "sleep", slept.append)
    wh = MssqlWarehouse(_settings(mssql_odbc="Driver={ODBC Driver 18 for SQL Server};Server=parity-down,1433;"
                                             "Database=cbm;UID=etl;PWD=x;Encrypt=yes"))
    plan = all_kind_plan(dimension=False)
    marker = MarkerTarget(wh, "m", table="all-kinds", step="merge", batch_id="2024-01-01", mode="full")
    caplog.set_level(logging.WARNING)
    with pytest.raises(RuntimeError, match="cannot connect to SQL Server"):
        steps.merge(wh, plan, mode="full", batch_id="2024-01-01", marker=marker, run_id="r")
    memory = [r.getMessage() for r in caplog.records if "memory limit" in r.getMessage()]
    assert not memory, f"a warning about DuckDB's memory limit on SQL Server: {memory}"
    assert len(attempts) == 1 + wh.settings.connect_retries, (
        f"{len(attempts)} logins (sleeping {sum(slept):.0f} s between them) for one failed step: the failure path "
        f"connected again to put back a memory limit SQL Server does not have")


# -- 2. the merge's check of what stg holds, under SQL Server's concurrency ------------------------------------

class _ConcurrentStage(RecordingSession):
    """SQL Server admits a second load while one runs (OPERATIONS: 'SQL Server has no such limit'; --workers N
    is fine): here the same table's full merge of batch N runs while another run (an operator's LoadTable, an
    overlapping cron of the other mode) stages the table. The other run's stage commits (stg replaced, the
    state row saying its batch) after the merge has checked etl.ETL_TableState and before it reads stg. Nothing
    the merge sent would have made that stage wait: it is played here at the merge's first read of stg."""

    def __init__(self, plan):
        self.plan = plan
        self.state = {"BatchId": "2024-01-01", "Mode": "full", "RunId": "night", "Rows": 5000,
                      "ExtractStartedAt": datetime(2024, 1, 1, 1), "ExtractShape": plan.extract_shape()}
        names = [n for n, t, _ in plan.output_columns() if t.kind == "string"]
        super().__init__([
            (r"SELECT t\.LastSuccessTs, st\.MergedExtractStartedAt", [(None, None)]),
            (r"FROM etl\.ETL_TableState", lambda sql: [dict(self.state)]),
            (r"INFORMATION_SCHEMA\.COLUMNS", [(n, "nvarchar", 40, None, None, None, "YES") for n in names[:1]] +
             [("_etl_inserted_at", "datetime2", None, None, None, 3, "NO")]),
            (r"SELECT TOP \(5\)", self._other_run_staged),
            (r"MAX\(0\.5 \* DATALENGTH", [tuple(Decimal("12.0") for _ in names)]),
            # stg now holds the other run's 3-row incremental batch: the full merge would soft-delete the rest
            (r"AS inserted", [(0, 1, 2, 4997)]),
            (r"SELECT @@TRANCOUNT", [(1,)]),
        ])
        self.replaced_at: int | None = None

    def _other_run_staged(self, sql):
        if self.replaced_at is None and "[stg]." in sql:
            self.replaced_at = len(self.log)
            self.state = {**self.state, "BatchId": "2024-01-01-fix", "Mode": "incremental", "RunId": "operator",
                          "Rows": 3, "ExtractStartedAt": datetime(2024, 1, 1, 9)}
        return []


def test_the_merge_holds_what_it_checked_stg_holds_until_it_commits_on_sql_server():
    """On DuckDB one process holds the warehouse, so nothing can replace stg.<table> between the merge's check
    of etl.ETL_TableState (steps._check_staged) and its MERGE. On SQL Server another run can: the check is a
    plain read under READ COMMITTED (its shared lock is gone when the SELECT ends), and the other run's stage
    only needs that row (its forget_staged UPDATE) and stg (DROP/CREATE). The merge then MERGEs the other
    run's rows as its own batch: a full batch's merge over another run's incremental stage soft-deletes every
    row outside its window, and commits (its validation then fails as stale, the rows stay deleted until the
    next full: found in review). The merge keeps the state row it checked locked until it commits (UPDLOCK,
    HOLDLOCK), so the other run's stage (its UPDATE of that row comes first) waits; the validation too."""
    plan = all_kind_plan(dimension=False)
    rec = _ConcurrentStage(plan)
    wh = StubWarehouse(rec)
    marker = MarkerTarget(wh, "MergeOds_all_kinds_2024_01_01_full", table="all-kinds", step="merge",
                          batch_id="2024-01-01", mode="full")
    merged = None
    try:
        merged = steps.merge(wh, plan, mode="full", batch_id="2024-01-01", marker=marker, run_id="night")
    except (steps.StaleStageError, steps.DuplicateKeyError):  # the other run's 3 rows are not the 5,000 staged
        pass
    stmts = rec.statements
    begin = stmts.index("BEGIN TRANSACTION")
    check = next(i for i, s in enumerate(stmts) if i > begin and "FROM etl.ETL_TableState" in s
                 and "BatchId <> ''" in s)
    held = re.search(r"UPDLOCK|HOLDLOCK|XLOCK|TABLOCKX", stmts[check], re.I) or any(
        "sp_getapplock" in s for s in stmts[begin:check + 1])
    soft_delete = [s for s in stmts if s.startswith("MERGE INTO [ods]") and "NOT MATCHED BY SOURCE" in s]
    outcome = ("ran its soft-deleting MERGE over the other run's incremental stage and committed"
               if soft_delete and "COMMIT TRANSACTION" in stmts else "went on")
    parse_tsql(stmts[check], "the merge's locking read of etl.ETL_TableState")
    assert held, (
        f"the merge's check of what stg holds takes no lock:\n  {stmts[check]}\nso another run's stage "
        f"committed in between (after statement {rec.replaced_at}), and the merge of full batch 2024-01-01 "
        f"{outcome} (soft-deleted, as counted: {merged and merged.deleted})")


# -- SQL Server errors known by number and SQLSTATE, whatever the session language (DBA review) ---------------

# pyodbc's text of a SQL Server error: (SQLSTATE, '[SQLSTATE] [driver][SQL Server]<message> (<native error>)
# (<function>)'). The message is in the session's language: "The session language determines the datetime
# formats and system messages" (docs: SET LANGUAGE); a login gets the server's default language (French on a
# French installation, the likely one for a French ERP). SQLSTATE and native error number do not change.
FR_511 = ("('42000', \"[42000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Impossible de créer une ligne "
          "de taille 9912, supérieure à la taille de ligne maximale autorisée de 8060. (511) (SQLExecDirectW)\")")
FR_208_STATE = ("('42S02', \"[42S02] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Nom d'objet "
                "'etl.ETL_TableState' non valide. (208) (SQLExecDirectW)\")")
FR_207_SHAPE = ("('42S22', \"[42S22] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Nom de colonne non "
                "valide : 'ExtractShape'. (207) (SQLExecDirectW)\")")


def test_a_row_too_wide_is_recognised_by_its_error_number_not_its_english_text():
    """Msg 511 (a row past 8,060 bytes in-row) was recognised by its English text only
    (MssqlWarehouse.row_too_wide: "allowable maximum row size"): on a French session the merge failed with SQL
    Server's raw message instead of naming the table and the arrays to keep whole (found in review)."""
    wh = StubWarehouse()
    english = ("('42000', \"[42000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Cannot create a row of "
               "size 9912 which is greater than the allowable maximum row size of 8060. (511) (SQLExecDirectW)\")")
    assert wh.row_too_wide(english)  # the same error in English is
    assert wh.row_too_wide(FR_511), "Msg 511 in French is not recognised as a row too wide"


class _Failing(RecordingSession):
    def __init__(self, text):
        super().__init__()
        self.text = text

    def query(self, sql, params=None):
        raise RuntimeError(self.text)

    def query_dicts(self, sql, params=None):
        raise RuntimeError(self.text)


@pytest.mark.parametrize("text,needle", [(FR_208_STATE, "init-db"), (FR_207_SHAPE, "init-db")],
                         ids=["208-table-missing", "207-column-missing"])
def test_a_warehouse_not_upgraded_is_told_to_run_init_db_whatever_the_session_language(text, needle):
    """targets.state_query turns "the state table / a later column is missing" into "run `cbm-etl init-db
    --no-tables` once", by matching English texts ("Invalid object name", "invalid column name"). The
    SQLSTATEs 42S02 / 42S22 (and native errors 208 / 207) are in the text whatever the language; they were not
    looked at, so a French session got SQL Server's raw error (found in review)."""
    wh = StubWarehouse()
    english = text.replace("Nom d'objet 'etl.ETL_TableState' non valide.", "Invalid object name 'etl.ETL_TableState'.") \
        .replace("Nom de colonne non valide : 'ExtractShape'.", "Invalid column name 'ExtractShape'.")
    with pytest.raises(RuntimeError, match="init-db"):  # the same error in English gets the advice
        state_query(_Failing(english), wh, "SELECT st.ExtractShape FROM etl.ETL_Markers m JOIN etl.ETL_TableState st "
                                           "ON st.TableName = m.TableName WHERE m.MarkerId = ?", ["m"])
    with pytest.raises(RuntimeError) as err:
        state_query(_Failing(text), wh, "SELECT st.ExtractShape FROM etl.ETL_Markers m JOIN etl.ETL_TableState st "
                                        "ON st.TableName = m.TableName WHERE m.MarkerId = ?", ["m"])
    assert needle in str(err.value), f"no init-db advice: {err.value}"


def test_an_uninitialised_sql_server_warehouse_is_said_whatever_the_session_language():
    """config_store.uninitialised_hint (the advice when config/etl tables are missing: run init-db, or check
    CBM_WAREHOUSE_KIND) matched "Invalid object name" only (found in review)."""
    text = FR_208_STATE.replace("etl.ETL_TableState", "config.ETL_Tables")
    english = text.replace("Nom d'objet 'config.ETL_Tables' non valide.", "Invalid object name 'config.ETL_Tables'.")
    assert config_store.uninitialised_hint(english, "mssql:Server=db") is not None  # in English it is
    assert config_store.uninitialised_hint(text, "mssql:Server=db") is not None


# -- a batch without a value in a column widens no ods column (DBA review) ------------------------------------

def test_a_column_null_in_every_row_of_a_batch_does_not_widen_ods(stage_file):
    """docs/mssql.md: ods widths "come from the longest value in stg" and columns are "widened when longer
    values come". stage_lengths gives 0 for a column NULL in every row of the batch (MAX over no value; an
    empty incremental batch: every column), and stage_columns turned 0 into "no length" -> the declared type:
    NVARCHAR(MAX) for an unbounded Progress text (lvarchar/clob), the catalog width for a bounded one. evolve
    then widened ods with no longer value seen (found in review): `ALTER COLUMN [label] NVARCHAR(MAX)`, logged as a schema change;
    a key column is widened too, its clustered index dropped and built again (a rebuild of the table in the
    nightly's transaction) for a night that brought no row."""
    plan = all_kind_plan(dimension=False)
    # ods as earlier merges made it: every string/binary column sized from the data seen (12)
    info = []
    for name, ct, nullable in plan.output_columns():
        typ = D.column_type(ct, 12 if ct.kind in ("string", "binary") else None)
        base = typ.split("(")[0].lower()
        m = re.search(r"\((\d+)(?:,(\d+))?\)", typ)
        char_len = int(m.group(1)) if m and ct.kind in ("string", "binary") else None
        prec, scale = (int(m.group(1)), int(m.group(2))) if ct.kind == "decimal" else (None, None)
        dt = 3 if base in ("datetime2", "datetimeoffset") else None
        info.append((name, base, char_len, prec, scale, dt, "YES" if nullable else "NO"))
    info.append(("_etl_inserted_at", "datetime2", None, None, None, 3, "YES"))
    names = [n for n, t, _ in plan.output_columns() if t.kind in ("string", "binary")]
    answers = [(r"INFORMATION_SCHEMA\.COLUMNS", info),
               (r"MAX\(0\.5 \* DATALENGTH", [tuple(None for _ in names)]),  # no value in the batch
               (r"AS inserted", [(0, 0, 7, 0)]),
               (r"FROM sys\.indexes AS i", [("CX_ods_all_kinds", "code")])]
    rec = RecordingSession(answers + _canned(plan=plan, ods_exists=True, mode="incremental"))
    wh = StubWarehouse(rec)
    marker = MarkerTarget(wh, "m", table="all-kinds", step="merge", batch_id="2024-01-01", mode="incremental")
    steps.merge(wh, plan, mode="incremental", batch_id="2024-01-01", marker=marker, run_id="r")
    altered = [s for s in rec.statements if " ALTER COLUMN " in s or s.startswith("DROP INDEX")]
    assert altered == [], "widened with no value seen:\n" + "\n".join(altered)


# -- staging reads bounded by bytes ------------------------------------------------------------------------------

TECH_STAGE = TechnicalValues("run-1", "2024-01-01", datetime(2024, 1, 2))


def _wide_text_file(path: Path, rows: int, cols: int, chars: int) -> list[Column]:
    """A batch file of `cols` text columns of `chars` characters each (a wide table with comment fields), written
    in small row groups as the extract writes it (transform.ROW_GROUP_BYTES)."""
    names = [f"txt_{j:03d}" for j in range(cols)]
    data = {n: pa.array([f"{i:08d}{j:03d}".ljust(chars, "x") for i in range(rows)]) for j, n in enumerate(names)}
    data["_etl_hashdiff"] = pa.array(["0" * 32] * rows)
    data["_etl_source_ts"] = pa.array([None] * rows, pa.timestamp("us"))
    table = pa.table(data)
    pq.write_table(table, path, row_group_size=max(1, (16 << 20) // (cols * chars)))
    return [Column(n, ColumnType("string", width=chars)) for n in names]


def _spy_batches(monkeypatch) -> list[int]:
    """The bytes of every batch read from a parquet file through ParquetFile.iter_batches."""
    seen: list[int] = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *a, **kw):
        for b in real(self, *a, **kw):
            seen.append(b.nbytes)
            yield b
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    return seen


def test_sql_server_staging_reads_the_batch_file_in_batches_bounded_by_bytes(tmp_path, monkeypatch):
    """SQL Server staging (replace_stage) reads the batch file twice: `sized_for_file` read it in batches of
    CHUNK_ROWS * 10 = 100,000 rows of every bounded text column, then `_batches` in CHUNK_ROWS = 10,000 rows of
    every column, whatever the width (found in review; now mssql_wh.file_batches sizes them by bytes). The extract sizes its batches by bytes (about 8 MB, at most
    readers.MAX_BATCH_BYTES = 32 MB as measured); staging did not, so its memory grew with the rows up to
    100,000 and with the width without bound. Measured on bench's wide shape (350 columns, 88 text columns of
    ~12 characters), one process per size: sized_for_file alone peaked at 210 / 251 / 350 / 584 MB for 20k / 40k /
    80k / 160k rows (128 MB before it), the bulk-copy path 324 / 368 / 410 / 590 MB, executemany 582 / 630 / 683 /
    794 MB. Here 2,000 rows of 20 comment fields of 2,000 characters (80 MB of text): each read must stay
    within the readers' bound."""
    path = tmp_path / "wide.stage.parquet"
    columns = _wide_text_file(path, rows=2_000, cols=20, chars=2_000)
    seen = _spy_batches(monkeypatch)
    sized = mssql_wh.sized_for_file(columns, path, D)
    assert all(c.max_len is None or c.max_len <= 2_000 for c in sized)
    sizing = list(seen)
    seen.clear()
    layout = mssql_wh.stage_layout(D, sized)
    rows = sum(b.num_rows for b in mssql_wh.MssqlWarehouse._batches(None, path, layout, TECH_STAGE))
    assert rows == 2_000
    assert max(sizing) <= readers.MAX_BATCH_BYTES, f"sized_for_file read {max(sizing) / 1e6:.0f} MB at once"
    assert max(seen) <= readers.MAX_BATCH_BYTES, f"staging read {max(seen) / 1e6:.0f} MB at once"
