"""Transform: extract parquet -> stage parquet, in DuckDB (vectorised, streaming, bounded memory).

Adds the technical columns and splits EXTENT arrays. The hashdiff is computed here, once, whatever the
warehouse, so DuckDB and SQL Server hold the same hashes.

Canonical form hashed into `_etl_hashdiff` (md5, 32 hex chars):
- business columns only, sorted by SQL name (source column order does not matter);
- a NULL column contributes nothing, so a new column that is NULL everywhere changes no hash;
- a non-NULL string contributes `<sql name>=<length>:<text>` (the length keeps '' distinct from NULL and makes
  the form unambiguous whatever the text holds); any other value `<sql name>=<text>` (its text can hold
  neither `=` nor the separator, so it needs no length, which saves a fifth of the hashing time on wide
  tables); parts are joined with U+001F (SQL-safe names hold neither `=` nor U+001F);
- text forms: strings as is; integers in decimal; decimals without trailing fractional zeros (`12.50` -> `12.5`,
  so a scale change is not a change); doubles in DuckDB's shortest round-trip form; dates `YYYY-MM-DD`;
  timestamps `YYYY-MM-DD HH:MM:SS.ffffff`; time-zone timestamps the same in UTC plus `Z`; logicals `1`/`0`;
  binary as upper-case hex.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from .plan import PlanColumn, TablePlan
from .types import ColumnType
from .warehouse.dialects import DuckDbDialect


_DUCKDB = DuckDbDialect()  # the transform engine is DuckDB: its quoting and literals, from the one helper
_q, _lit = _DUCKDB.quote, _DUCKDB.literal


def canonical_text(expr: str, ctype: ColumnType) -> str:
    """DuckDB expression giving the canonical text of a non-NULL value (see the module docstring)."""
    k = ctype.kind
    if k == "string":
        return expr
    if k in ("int32", "int64", "float64"):
        return f"CAST({expr} AS VARCHAR)"
    if k == "decimal":
        if not ctype.scale:
            return f"CAST({expr} AS VARCHAR)"
        return f"rtrim(rtrim(CAST({expr} AS VARCHAR), '0'), '.')"
    if k == "date":
        return f"strftime({expr}, '%Y-%m-%d')"
    if k == "timestamp":
        return f"strftime({expr}, '%Y-%m-%d %H:%M:%S.%f')"
    if k == "timestamptz":
        return f"(strftime(timezone('UTC', {expr}), '%Y-%m-%d %H:%M:%S.%f') || 'Z')"
    if k == "bool":
        return f"(CASE WHEN {expr} THEN '1' ELSE '0' END)"
    if k == "binary":
        return f"hex({expr})"
    raise ValueError(k)


def hashdiff_expr(columns: list[tuple[str, ColumnType]]) -> str:
    parts = []
    for name, ctype in sorted(columns, key=lambda c: c[0]):
        ref = _q(name)
        text = canonical_text(ref, ctype)
        if ctype.kind in ("string", "binary"):
            parts.append(f"CASE WHEN {ref} IS NULL THEN NULL ELSE {_lit(name + '=')} || "
                         f"CAST(length({text}) AS VARCHAR) || ':' || {text} END")
        else:  # NULL || ... is NULL: concat_ws skips it
            parts.append(f"{_lit(name + '=')} || {text}")
    if not parts:
        return "md5('')"
    return f"md5(concat_ws(chr(31), {', '.join(parts)}))"


def _array_list(c: PlanColumn) -> str:
    """The EXTENT string as a list of elements: `~;` `~~` `~?` unescaped, a bare `?` is NULL (unknown)."""
    ref = _q(c.sql_name)
    esc = f"replace(replace(replace({ref}, '~~', chr(1)), '~;', chr(2)), '~?', chr(3))"
    return (f"list_transform(string_split({esc}, ';'), lambda e: CASE WHEN e = '?' THEN NULL ELSE "
            f"replace(replace(replace(e, chr(2), ';'), chr(3), '?'), chr(1), '~') END)")


def _array_decoded(c: PlanColumn) -> str:
    """A kept-whole array: elements decoded and joined again with `;` (unknown elements become empty)."""
    return f"array_to_string(list_transform({_array_list(c)}, lambda e: coalesce(e, '')), ';')"


@dataclass(frozen=True)
class TechnicalValues:
    run_id: str
    batch_id: str
    loaded_at: datetime


def transform_sql(plan: TablePlan, source_sql: str, tech: TechnicalValues) -> str:
    """SELECT over `source_sql` (a relation with the extract columns) producing the stage columns."""
    key_text = " || ', ' || ".join(f"{_lit(k + '=')} || coalesce(CAST({_q(k)} AS VARCHAR), 'NULL')"
                                   for k in plan.keys)
    inner, outer = [], []
    for c in plan.columns:
        if c.extent and c.array_mode == "split":
            lst = f"_l_{len(inner)}"
            too_many = (f"error('table {plan.table}, column {c.name}, key ' || {key_text} || ': ' || "
                        f"CAST(len({lst}) AS VARCHAR) || ' array elements but the catalog says EXTENT "
                        f"{c.extent}; run cbm-etl sync-columns {plan.table}')")
            inner.append(f"{_array_list(c)} AS {lst}")
            for i, (name, _t, _n) in enumerate(c.output_columns(), 1):
                guard = f"CASE WHEN len({lst}) > {c.extent} THEN {too_many} ELSE {lst}[{i}] END" if i == 1 \
                    else f"{lst}[{i}]"
                outer.append(f"{guard} AS {_q(name)}")
        elif c.extent:
            outer.append(f"{_array_decoded(c)} AS {_q(c.sql_name)}")
        else:
            outer.append(_q(c.sql_name))
    business = plan.output_columns()
    first = f"SELECT *{''.join(', ' + x for x in inner)} FROM ({source_sql}) AS src"
    if plan.date_col:
        d = _q(plan.by_name(plan.date_col).sql_name)
        ts = f"CAST({d} AS TIMESTAMP)"
        if plan.time_of_day_col and plan.date_precision == "date":
            tod = _q(plan.by_name(plan.time_of_day_col).sql_name)
            ts = f"({ts} + to_seconds(CAST(coalesce({tod}, 0) AS BIGINT)))"
        source_ts = ts
    else:
        source_ts = "CAST(NULL AS TIMESTAMP)"
    shaped = f"SELECT {', '.join(outer)}, {source_ts} AS _etl_source_ts FROM ({first}) AS arr"
    return (f"SELECT * EXCLUDE (_etl_source_ts), "
            f"{hashdiff_expr([(n, t) for n, t, _ in business])} AS _etl_hashdiff, "
            f"{_lit(tech.run_id)} AS _etl_run_id, {_lit(tech.batch_id)} AS _etl_batch_id, "
            f"CAST({_lit(tech.loaded_at.strftime('%Y-%m-%d %H:%M:%S.%f'))} AS TIMESTAMP) AS _etl_loaded_at, "
            f"_etl_source_ts FROM ({shaped}) AS shaped")


_ENGINE: dict[tuple, duckdb.DuckDBPyConnection] = {}


def compute_engine(memory_limit: str = "256MB", threads: int = 2, temp_dir: Path | None = None):
    """An in-memory DuckDB used as a vectorised compute engine; one per process (opening one costs ~10 ms,
    which adds up over 1,000 tables). Returns a cursor: close it when done."""
    key = (memory_limit, threads, os.getpid())
    con = _ENGINE.get(key)
    if con is None:
        con = _ENGINE[key] = duckdb.connect()
        con.execute(f"SET memory_limit = {_lit(memory_limit)}")
        con.execute(f"SET threads = {int(threads)}")
        con.execute("SET preserve_insertion_order = false")
    cur = con.cursor()
    if temp_dir:
        cur.execute(f"SET temp_directory = {_lit(str(temp_dir))}")
    return cur


def transform_file(plan: TablePlan, extract_path: Path, stage_path: Path, tech: TechnicalValues, *,
                   memory_limit: str = "256MB", threads: int = 2, measure_lengths: bool = False) -> dict:
    """Write the stage parquet atomically; returns {'rows': n, 'max_lengths': {col: n}} ."""
    tmp = stage_path.with_name(stage_path.name + ".tmp")
    stage_path.parent.mkdir(parents=True, exist_ok=True)
    con = compute_engine(memory_limit, threads, stage_path.parent)
    try:
        src = f"SELECT * FROM read_parquet({_lit(str(extract_path))})"
        sql = transform_sql(plan, src, tech)
        con.execute(f"COPY ({sql}) TO {_lit(str(tmp))} (FORMAT parquet, COMPRESSION snappy, ROW_GROUP_SIZE 100000)")
        rows = con.execute(f"SELECT count(*) FROM read_parquet({_lit(str(tmp))})").fetchone()[0]
        lengths = {}
        strings = [n for n, t, _ in plan.output_columns() if t.kind == "string"]
        if measure_lengths and strings:
            got = con.execute("SELECT " + ", ".join(f"max(length({_q(n)}))" for n in strings) +
                              f" FROM read_parquet({_lit(str(tmp))})").fetchone()
            lengths = {n: int(v or 0) for n, v in zip(strings, got)}
        tmp.replace(stage_path)
        return {"rows": int(rows), "max_lengths": lengths}
    finally:
        con.close()
        tmp.unlink(missing_ok=True)
