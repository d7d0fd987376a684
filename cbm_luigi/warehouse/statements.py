"""Every data statement the warehouse runs, built once for both dialects: DDL for stg/ods, schema evolution,
the MERGE (type 1 and SCD type 2, soft deletes), duplicate-key and validation checks.

Only quoting, booleans, types and a few keywords come from the dialect (dialects.py); the keys, the hashdiff
condition, the soft-delete and SCD2 logic are written here once, so the DuckDB end-to-end tests exercise the
same logic that the SQL Server statements carry.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from ..types import MAX_DECIMAL_PRECISION, ColumnType
from .dialects import WarehouseDialect

# Technical columns. stg carries the first five; ods adds state and either type-1 or SCD2 columns.
STAGE_TECH = ["_etl_hashdiff", "_etl_run_id", "_etl_batch_id", "_etl_loaded_at", "_etl_source_ts"]
ODS_STATE = ["_etl_is_deleted", "_etl_deleted_at"]
TYPE1_TECH = ["_etl_inserted_at", "_etl_updated_at"]
SCD2_TECH = ["_etl_valid_from", "_etl_valid_to", "_etl_is_current"]


class SchemaChangeError(RuntimeError):
    """A source column changed type: never cast silently; the message says how to proceed."""


@dataclass(frozen=True)
class Column:
    name: str
    ctype: ColumnType
    nullable: bool = True
    max_len: int | None = None  # measured longest string (sizes NVARCHAR on SQL Server)


@dataclass
class MergeSpec:
    """What the MERGE needs to know about one table."""
    schema_stg: str
    schema_ods: str
    table: str
    keys: list[str]
    columns: list[str]  # business columns, in stage order
    scd2: bool
    full: bool  # soft-delete keys absent from the batch

    def stg(self, d: WarehouseDialect) -> str:
        return d.table(self.schema_stg, self.table)

    def ods(self, d: WarehouseDialect) -> str:
        return d.table(self.schema_ods, self.table)


def tech_columns(d: WarehouseDialect, *, ods: bool, scd2: bool) -> list[tuple[str, str, bool]]:
    cols = [("_etl_hashdiff", d.hash_type, False), ("_etl_run_id", d.id_type, True),
            ("_etl_batch_id", d.id_type, True), ("_etl_loaded_at", d.ts_type, True),
            ("_etl_source_ts", d.ts_type, True)]
    if ods:
        cols += [("_etl_is_deleted", d.bool_type, False), ("_etl_deleted_at", d.ts_type, True)]
        cols += ([("_etl_valid_from", d.ts_type, False), ("_etl_valid_to", d.ts_type, True),
                  ("_etl_is_current", d.bool_type, False)] if scd2 else
                 [("_etl_inserted_at", d.ts_type, True), ("_etl_updated_at", d.ts_type, True)])
    return cols


_QUOTED = re.compile(r'"(?:[^"]|"")*"|\[(?:[^\]]|\]\])*\]|\'(?:[^\']|\'\')*\'')


def markers(sql: str) -> int:
    """The `?` parameter markers of a statement: not those inside a quoted name or a literal (an operator's
    SqlName `actif?` made every merge of its table fail on the parameter count: found in review)."""
    return _QUOTED.sub("", sql).count("?")


# -- DDL -------------------------------------------------------------------------------------------------------

def _null(d: WarehouseDialect, nullable: bool) -> str:
    # SQL Server: say NULL explicitly (the default nullability follows the session's ANSI_NULL_DFLT_ON)
    return " NOT NULL" if not nullable else (" NULL" if d.name == "mssql" else "")


def create_table(d: WarehouseDialect, schema: str, table: str, columns: list[Column], *, ods: bool,
                 scd2: bool = False) -> str:
    defs = [f"{d.quote(c.name)} {d.column_type(c.ctype, c.max_len)}{_null(d, c.nullable)}" for c in columns]
    defs += [f"{d.quote(n)} {t}{_null(d, nullable)}" for n, t, nullable in tech_columns(d, ods=ods, scd2=scd2)]
    return f"CREATE TABLE {d.table(schema, table)} (\n    " + ",\n    ".join(defs) + "\n)"


def add_column(d: WarehouseDialect, schema: str, table: str, col: Column) -> str:
    # added columns are nullable: existing rows have no value for them
    kw = "ADD" if d.name == "mssql" else "ADD COLUMN"
    return f"ALTER TABLE {d.table(schema, table)} {kw} {d.quote(col.name)} {d.column_type(col.ctype, col.max_len)} NULL"


def widen_column(d: WarehouseDialect, schema: str, table: str, col: Column, nullable: bool) -> str:
    if d.name == "mssql":
        return (f"ALTER TABLE {d.table(schema, table)} ALTER COLUMN {d.quote(col.name)} "
                f"{d.column_type(col.ctype, col.max_len)} {'NULL' if nullable else 'NOT NULL'}")
    return f"ALTER TABLE {d.table(schema, table)} ALTER COLUMN {d.quote(col.name)} TYPE {d.column_type(col.ctype)}"


def alters_column(d: WarehouseDialect, stmt: str, name: str) -> bool:
    """Whether `stmt` (from widen_column / allow_null) changes column `name`."""
    return f" ALTER COLUMN {d.quote(name)} " in stmt


def allow_null(d: WarehouseDialect, schema: str, table: str, name: str, type_text: str) -> str:
    """Make a column optional; `type_text` is its current type (T-SQL restates it, unchanged)."""
    if d.name == "mssql":
        return f"ALTER TABLE {d.table(schema, table)} ALTER COLUMN {d.quote(name)} {type_text} NULL"
    return f"ALTER TABLE {d.table(schema, table)} ALTER COLUMN {d.quote(name)} DROP NOT NULL"


def _width(type_text: str) -> int | None:
    """NVARCHAR(n) -> n, NVARCHAR(MAX)/VARCHAR -> None (unbounded)."""
    t = type_text.upper().replace(" ", "")
    if "(" not in t or "MAX" in t:
        return None
    return int(t[t.index("(") + 1:t.index(")")].split(",")[0])


def _digits(type_text: str, *, room: bool = False) -> tuple[int, int] | None:
    """(integer digits, scale) of an integer or decimal type text, else None. An integer type's values reach
    10 (INTEGER) or 19 (BIGINT) digits, but it has room for every number of 9 or 18 only (`room`)."""
    t = type_text.upper().replace(" ", "")
    if t in ("INT", "INTEGER"):
        return (9 if room else 10), 0
    if t == "BIGINT":
        return (18 if room else 19), 0
    if t.startswith(("DECIMAL(", "NUMERIC(")) and t.endswith(")"):
        p, _, sc = t[t.index("(") + 1:-1].partition(",")
        return int(p) - int(sc or 0), int(sc or 0)
    return None


def _holds(container: str, content: str) -> bool:
    """Whether every value of type `content` fits type `container` exactly (both integer or decimal types)."""
    c, v = _digits(container, room=True), _digits(content)
    return c is not None and v is not None and c[0] >= v[0] and c[1] >= v[1]


def number_for_both(have: str, want: str) -> ColumnType | None:
    """The narrowest DECIMAL that holds every value of both number types (the ERP's usual "more decimals, same
    SQL precision": DECIMAL(12,3) -> DECIMAL(12,4) needs DECIMAL(13,4) for the old values and the new), None when
    either is not a number or it would need more than 38 digits."""
    h, w = _digits(have), _digits(want)
    if h is None or w is None:
        return None
    digits, scale = max(h[0], w[0]), max(h[1], w[1])
    return ColumnType("decimal", digits + scale, scale) if digits + scale <= MAX_DECIMAL_PRECISION else None


TECH_COLUMNS = frozenset(STAGE_TECH + ODS_STATE + TYPE1_TECH + SCD2_TECH)


def evolve(d: WarehouseDialect, schema: str, table: str, wanted: list[Column],
           existing: dict[str, tuple[str, bool]], names: dict[str, str] | None = None,
           overridden: frozenset[str] = frozenset()) -> tuple[list[str], list[str]]:
    """Statements that bring `schema.table` (existing: name -> (type text, nullable)) up to `wanted`.

    New columns are added; strings and binaries longer than the column widen it; a number widens to its new type
    when that holds every old value, to a DECIMAL holding both when neither holds the other, and keeps its type
    when that holds the new one; a column that became optional at the source, or is no longer read (gone
    from the source, excluded), accepts NULL (all logged by the caller); any other type change raises
    SchemaChangeError. Returns (statements, human-readable changes). `names`: how the messages name a column
    (by its Progress name, with the warehouse name when it differs: the SQL name can be another field's).
    `overridden`: the columns whose type an override declares (IsOverride): a change of theirs is the operator's.
    """
    stmts, changes = [], []
    lower = {k.lower(): (k, v) for k, v in existing.items()}
    for col in wanted:
        if col.name.lower() not in lower:
            stmts.append(add_column(d, schema, table, col))
            changes.append(f"{schema}.{table}: added column {col.name} {d.column_type(col.ctype, col.max_len)}")
            continue
        _name, (have, nullable) = lower[col.name.lower()]
        want = d.column_type(col.ctype, col.max_len)
        shown = (names or {}).get(col.name, col.name)
        same = have.upper().replace(" ", "") == want.upper().replace(" ", "")
        wider = None  # the column ods widens to
        if not same and col.ctype.kind in ("string", "binary") and _base(have) == _base(want):
            hw, ww = _width(have), _width(want)
            # max_len 0: measured, and no row of the batch has a value: nothing longer came (found in review: a
            # quiet night widened every text column to its declared width or MAX, and rebuilt the key index)
            if hw is not None and (ww is None or ww > hw) and col.max_len != 0:
                wider = col
            else:
                same = True  # wide enough already
        if not same and wider is None:  # numbers (the hashdiff's text of a number does not depend on its type)
            if _holds(have, want):
                same = True  # ods holds every value of the new type already (fewer digits or decimals)
            elif _holds(want, have):
                wider = col  # INTEGER -> BIGINT, DECIMAL(10,2) -> DECIMAL(14,2) or (12,4)
            elif (both := number_for_both(have, want)) is not None:
                wider = dataclasses.replace(col, ctype=both)  # neither holds the other
        if wider is not None:
            stmts.append(widen_column(d, schema, table, wider, nullable or col.nullable))
            now = d.column_type(wider.ctype, wider.max_len)
            changes.append(f"{schema}.{table}: widened {shown} from {have} to {now}" +
                           ("" if now == want else f" (the source's type is now {want}: the old values and the "
                                                   f"new fit)"))
            if d.name == "mssql":
                continue  # ALTER COLUMN restated the nullability; DuckDB's ALTER ... TYPE keeps NOT NULL
        elif not same and col.name in overridden:  # 'the source type changed' sent the operator to Progress
            raise SchemaChangeError(
                f"{schema}.{table}, column {shown}: its override in config.ETL_Columns (IsOverride = 1) declares "
                f"{want}, and the column holds {have}. Nothing was cast. Set the override's DataType/Width/Scale "
                f"back to a type {have} holds, or migrate the ods column yourself (ALTER TABLE ... / rename it "
                f"away: a new column is added) and rerun the table.")
        elif not same:
            raise SchemaChangeError(
                f"{schema}.{table}, column {shown}: its type changed from {have} to {want} (in Progress, or an "
                f"override in config.ETL_Columns removed since ods was built). Nothing was "
                f"cast. To keep loading it as {have}: on its row in config.ETL_Columns set IsOverride = 1, "
                f"DataType/Width/Scale to that type and a SourceExpression that casts to it (sync-columns keeps "
                f"all four; a value that does not fit is then refused by name). Or migrate the ods column "
                f"yourself (ALTER TABLE ... / rename it away: a new column is added) and rerun the table.")
        if col.nullable and not nullable:
            stmts.append(allow_null(d, schema, table, col.name, have))
            changes.append(f"{schema}.{table}: {shown} now accepts NULL (optional at the source)")
    read = {c.name.lower() for c in wanted}
    for key, (name, (have, nullable)) in lower.items():
        if key not in read and name not in TECH_COLUMNS and not nullable:
            stmts.append(allow_null(d, schema, table, name, have))
            changes.append(f"{schema}.{table}: {name} is no longer read (gone from the source, or excluded): "
                           f"now accepts NULL")
    return stmts, changes


def unread_columns(existing: dict[str, tuple[str, bool]], wanted: list[Column]) -> list[str]:
    """Business columns of the existing table that the plan no longer loads (excluded, gone from the source, an
    array now kept whole): they keep what was loaded before, and rows merged from now on leave them as they
    are (NULL in new rows). Nothing is dropped; the merge says so every time, until an operator decides."""
    read = {c.name.lower() for c in wanted}
    return sorted(n for n in existing if n.lower() not in read and n not in TECH_COLUMNS)


def _base(type_text: str) -> str:
    return type_text.upper().split("(")[0].strip()


# -- checks ----------------------------------------------------------------------------------------------------

def key_problems(d: WarehouseDialect, relation: str, keys: list[str]) -> str:
    """(keys with a NULL part, keys that come more than once) in one pass over `relation`: each pass over stg
    binds its view again on DuckDB (8 ms for 350 columns), and a batch is nearly always right, so null_keys
    and duplicate_keys, which name the first offenders and count them, run only when one is not zero."""
    k = ", ".join(d.quote(c) for c in keys)
    null = " OR ".join(f"{d.quote(c)} IS NULL" for c in keys)
    return (f"SELECT {d.count}(CASE WHEN {null} THEN 1 END) AS null_keys, "
            f"{d.count}(CASE WHEN n > 1 AND NOT ({null}) THEN 1 END) AS duplicated "
            f"FROM (SELECT {k}, {d.count}(*) AS n FROM {relation} GROUP BY {k}) AS g")


def duplicate_keys(d: WarehouseDialect, relation: str, keys: list[str], where: str = "", n: int = 5) -> str:
    k = ", ".join(d.quote(c) for c in keys)
    return d.limit(f"{k}, {d.count}(*) AS n FROM {relation}{' WHERE ' + where if where else ''} "
                   f"GROUP BY {k} HAVING {d.count}(*) > 1 ORDER BY {k}", n)


def null_keys(d: WarehouseDialect, relation: str, keys: list[str], n: int = 5) -> str:
    """The first rows whose key has a NULL part, with how many there are: `=` never matches NULL, so such a row
    would be inserted again by every MERGE (Progress unique indexes admit the unknown value `?`)."""
    k = ", ".join(d.quote(c) for c in keys)
    cond = " OR ".join(f"{d.quote(c)} IS NULL" for c in keys)
    return d.limit(f"{k}, {d.count}(*) OVER () AS n FROM {relation} WHERE {cond} ORDER BY {k}", n)


def ods_null_keys(d: WarehouseDialect, spec: MergeSpec, checked: list[str], n: int = 5) -> str:
    """The first ods rows the MERGE matches by key (type 1: every row; SCD2: current versions) with a NULL in
    one of the `checked` key columns, with how many there are: loaded before the column was part of the key."""
    k = ", ".join(d.quote(c) for c in spec.keys)
    cond = " OR ".join(f"t.{d.quote(c)} IS NULL" for c in checked)
    return d.limit(f"{k}, {d.count}(*) OVER () AS n FROM {spec.ods(d)} AS t WHERE ({cond}) AND {_live(d, spec)} "
                   f"ORDER BY {k}", n)


def _on(d: WarehouseDialect, keys: list[str], left: str = "t", right: str = "s") -> str:
    return " AND ".join(f"{left}.{d.quote(k)} = {right}.{d.quote(k)}" for k in keys)


def _live(d: WarehouseDialect, spec: MergeSpec, alias: str = "t") -> str:
    """Rows of ods that represent the key now: the current version (SCD2), every row (type 1)."""
    return d.is_true(f"{alias}._etl_is_current") if spec.scd2 else "1 = 1"


def _hold(d: WarehouseDialect) -> str:
    """SQL Server: keep the range locks of what a statement read on ods until the transaction ends, so no
    concurrent load of the same table inserts a key in between (SQL Server's advice for MERGE)."""
    return " WITH (HOLDLOCK)" if d.name == "mssql" else ""


def merge_counts(d: WarehouseDialect, spec: MergeSpec) -> str:
    """inserted / updated / unchanged of the batch, and deleted (soft) — computed before the MERGE, in its
    transaction and under its locks (the counts decide whether the MERGE runs, or a plain INSERT instead). One
    join: a full batch's FULL JOIN finds the live ods rows no batch row matches (the ones a full merge
    soft-deletes) in the same pass (the wide reload's counts: 32 -> 14 ms; each pass over stg binds its view
    again on DuckDB). The batch's keys are unique (checked first), so the first three add up to its rows (the
    stage's count) unless ods holds several live rows for one key (PrimaryKeyCols narrowed since ods was built):
    the MERGE would then write one batch row over all of them."""
    changed = f"(t._etl_hashdiff <> s._etl_hashdiff OR {d.is_true('t._etl_is_deleted')})"
    k0 = d.quote(spec.keys[0])
    batch = f"s.{k0} IS NOT NULL AND " if spec.full else ""  # a batch key is never NULL (checked first)
    deleted = (f"{d.count}(CASE WHEN s.{k0} IS NULL AND {_live(d, spec)} AND {d.is_false('t._etl_is_deleted')} "
               f"THEN 1 END)" if spec.full else "0")
    return (f"SELECT {d.count}(CASE WHEN {batch}t.{k0} IS NULL THEN 1 END) AS inserted, "
            f"{d.count}(CASE WHEN {batch}t.{k0} IS NOT NULL AND {changed} THEN 1 END) AS updated, "
            f"{d.count}(CASE WHEN {batch}t.{k0} IS NOT NULL AND NOT {changed} THEN 1 END) AS unchanged, "
            f"{deleted} AS deleted "
            f"FROM {spec.stg(d)} AS s {'FULL' if spec.full else 'LEFT'} JOIN {spec.ods(d)} AS t{_hold(d)} "
            f"ON {_on(d, spec.keys)} AND {_live(d, spec)}")


def live_rows(d: WarehouseDialect, spec: MergeSpec) -> str:
    """ods rows that stand for a key now and are not soft-deleted (what a full read should find again)."""
    return (f"SELECT {d.count}(*) FROM {spec.ods(d)} AS t WHERE {_live(d, spec)} AND "
            f"{d.is_false('t._etl_is_deleted')}")


def _merge_head(d: WarehouseDialect, spec: MergeSpec, on_extra: str = "") -> str:
    return (f"MERGE INTO {spec.ods(d)}{_hold(d)} AS t USING {spec.stg(d)} AS s "
            f"ON ({_on(d, spec.keys)}{on_extra})")


def _soft_delete_clause(d: WarehouseDialect, spec: MergeSpec) -> str:
    if not spec.full:
        return ""
    cond = d.is_false("t._etl_is_deleted") + (f" AND {_live(d, spec)}" if spec.scd2 else "")
    return (f"\nWHEN NOT MATCHED BY SOURCE AND {cond} THEN UPDATE SET "
            f"_etl_is_deleted = {d.true}, _etl_deleted_at = ?")


def _tail(d: WarehouseDialect) -> str:
    # SQL Server: MERGE must end with ';'. No OUTPUT: the counts come from merge_counts, and a statement that
    # writes into a table variable never gets a parallel plan
    return ";" if d.name == "mssql" else ""


def forget_hashes(d: WarehouseDialect, spec: MergeSpec) -> str:
    """Every live row of ods made to look changed (its hashdiff set to the one `?`, '' : never a hash), so the
    merge of a full read rewrites it: ods lost columns its hashes still cover (dropped by hand), which no hash
    comparison would ever fill again (found in review). SCD2 then refreshes in place the versions whose other
    values are unchanged (scd2_refresh)."""
    live = d.is_true("_etl_is_current") if spec.scd2 else "1 = 1"
    return f"UPDATE {spec.ods(d)} SET _etl_hashdiff = ? WHERE {live}"


def merge_type1(d: WarehouseDialect, spec: MergeSpec, changed_only: bool = False) -> tuple[str, int]:
    """Type 1: insert new keys, update where the hashdiff differs (or the row was soft-deleted), soft-delete
    absent keys in full mode. Returns (sql, number of `?` for the load timestamp).

    `changed_only`: the MERGE's source is the batch rows it writes (_changed_rows) and the soft deletes are
    left to soft_delete_absent."""
    carry = spec.columns + STAGE_TECH
    sets = ", ".join(f"{d.quote(c)} = s.{d.quote(c)}" for c in carry)
    ins_cols = ", ".join(d.quote(c) for c in carry + ODS_STATE + TYPE1_TECH)
    ins_vals = ", ".join([f"s.{d.quote(c)}" for c in carry] + [d.false, "NULL", "?", "?"])
    head = (f"MERGE INTO {spec.ods(d)}{_hold(d)} AS t USING {_changed_rows(d, spec)} AS s "
            f"ON ({_on(d, spec.keys)})") if changed_only else _merge_head(d, spec)
    sql = (f"{head}\n"
           f"WHEN MATCHED AND (t._etl_hashdiff <> s._etl_hashdiff OR {d.is_true('t._etl_is_deleted')}) THEN "
           f"UPDATE SET {sets}, _etl_is_deleted = {d.false}, _etl_deleted_at = NULL, _etl_updated_at = ?\n"
           f"WHEN NOT MATCHED THEN INSERT ({ins_cols}) VALUES ({ins_vals})"
           f"{'' if changed_only else _soft_delete_clause(d, spec)}{_tail(d)}")
    return sql, markers(sql)


def _changed_keys(d: WarehouseDialect, spec: MergeSpec) -> str:
    """The keys of the batch rows a merge writes: new keys, changed hashes, soft-deleted keys back (SCD2: against
    the current version), found by keys and hashes alone."""
    k0 = d.quote(spec.keys[0])
    keys = ", ".join(f"c.{d.quote(k)}" for k in spec.keys)
    return (f"SELECT {keys} FROM {spec.stg(d)} AS c LEFT JOIN {spec.ods(d)} AS t ON {_on(d, spec.keys, 't', 'c')} "
            f"AND {_live(d, spec)} WHERE t.{k0} IS NULL OR t._etl_hashdiff <> c._etl_hashdiff OR "
            f"{d.is_true('t._etl_is_deleted')}")


def _changed_rows(d: WarehouseDialect, spec: MergeSpec) -> str:
    """The batch rows a merge writes (_changed_keys), as a relation: taken whole by a semi-join on the key.
    DuckDB's MERGE holds what its source carries in memory: given the whole batch, the weekly full of a 2 M-row
    table with 1 % changed needed its limit raised for every row and peaked at 1.4 GB; given the changed rows,
    0.4 GB under the configured 256MB, for about 1 s more (found in review)."""
    return (f"(SELECT s.* FROM {spec.stg(d)} AS s SEMI JOIN ({_changed_keys(d, spec)}) AS c "
            f"ON {_on(d, spec.keys, 'c', 's')})")


def text_bytes(d: WarehouseDialect, spec: MergeSpec, columns: list[tuple[str, bool]], *, all_new: bool,
               replaced: bool = False) -> str:
    """The bytes of these text and binary columns' values (`(name, is binary)`), one sum a column: in the rows a
    merge writes, the whole batch when `all_new` (or as an upper bound), else its changed rows (_changed_rows,
    before the merge writes); `replaced`: in the live ods rows of its changed keys, which it overwrites."""
    # one sum a column, added up by the caller: `a + b + ...` nests a level a term, and DuckDB refuses 991 of them
    # (found in review: a table of 995 wide columns failed every merge)
    parts = ", ".join(f"sum({d.binary_length_fn if binary else d.text_bytes_fn}(s.{d.quote(n)}))"
                      for n, binary in columns) or "0"
    if replaced:
        return (f"SELECT {parts} FROM {spec.ods(d)} AS s SEMI JOIN ({_changed_keys(d, spec)}) AS c "
                f"ON {_on(d, spec.keys, 'c', 's')} WHERE {_live(d, spec, 's')}")
    return f"SELECT {parts} FROM {spec.stg(d) if all_new else _changed_rows(d, spec)} AS s"


def soft_delete_absent(d: WarehouseDialect, spec: MergeSpec) -> tuple[str, int]:
    """Full mode, beside a merge of the changed rows alone (whose source no longer holds every key of the batch):
    the live rows (SCD2: current versions) whose key the batch lacks are soft-deleted, by keys alone, as the
    MERGE's own `WHEN NOT MATCHED BY SOURCE` does (_soft_delete_clause)."""
    sql = (f"UPDATE {spec.ods(d)} AS t SET _etl_is_deleted = {d.true}, _etl_deleted_at = ? WHERE "
           f"{d.is_false('t._etl_is_deleted')}{' AND ' + _live(d, spec) if spec.scd2 else ''} AND NOT EXISTS "
           f"(SELECT 1 FROM {spec.stg(d)} AS s WHERE {_on(d, spec.keys)})")
    return sql, markers(sql)


def scd2_close(d: WarehouseDialect, spec: MergeSpec, changed_only: bool = False) -> tuple[str, int]:
    """SCD2 step 1: close the current version of changed keys and of soft-deleted keys that came back (their
    deletion stays in the history: the closed version keeps `_etl_is_deleted` and `_etl_deleted_at`), and (full
    mode) flag the current version of absent keys as deleted. scd2_insert then opens the new versions.

    `changed_only`: the source is the changed keys alone (_changed_keys) and the soft deletes are left to
    soft_delete_absent (DuckDB: see merge_statements)."""
    if changed_only:
        sql = (f"MERGE INTO {spec.ods(d)} AS t USING ({_changed_keys(d, spec)}) AS s "
               f"ON ({_on(d, spec.keys)} AND {d.is_true('t._etl_is_current')})\n"
               f"WHEN MATCHED THEN UPDATE SET _etl_valid_to = ?, _etl_is_current = {d.false}{_tail(d)}")
        return sql, markers(sql)
    sql = (f"{_merge_head(d, spec, ' AND ' + d.is_true('t._etl_is_current'))}\n"
           f"WHEN MATCHED AND (t._etl_hashdiff <> s._etl_hashdiff OR {d.is_true('t._etl_is_deleted')}) THEN "
           f"UPDATE SET _etl_valid_to = ?, _etl_is_current = {d.false}"
           f"{_soft_delete_clause(d, spec)}{_tail(d)}")
    return sql, markers(sql)


def scd2_refresh(d: WarehouseDialect, spec: MergeSpec, compared: list[Column],
                 whole_arrays: frozenset[str] = frozenset()) -> tuple[str, int]:
    """SCD2, the first load after a configuration change (a column added or excluded, a type override): the
    batch's hashes cover other columns than ods's, so every member looks changed. A current version whose
    `compared` columns (those the last merge wrote) hold exactly the batch's values is brought up to
    date in place, every column, the hashdiff and the batch that did it, instead of opening a version for a
    change that never happened at the source (a new field's initial value, say); scd2_close and scd2_insert
    then version the keys that really changed. An EXTENT array kept whole (`whole_arrays`, lower-case names)
    that grew holds its old elements then the new ones: the old elements unchanged, it is refreshed in place, as
    new fields are (found in review: every member was versioned). A Progress array has exactly EXTENT elements,
    so its text can only extend the old one when the EXTENT grew."""
    def same_value(c: Column) -> str:
        old, new = f"t.{d.quote(c.name)}", f"s.{d.quote(c.name)}"
        same = d.same_value(old, new, c.ctype)
        return f"({same} OR {d.extends_text(old, new, ';')})" if c.name.lower() in whole_arrays else same

    same = " AND ".join(same_value(c) for c in compared) or "1 = 1"
    sets = ", ".join(f"{d.quote(c)} = s.{d.quote(c)}" for c in spec.columns + STAGE_TECH)
    sql = (f"{_merge_head(d, spec, ' AND ' + d.is_true('t._etl_is_current'))}\n"
           f"WHEN MATCHED AND t._etl_hashdiff <> s._etl_hashdiff AND {d.is_false('t._etl_is_deleted')} AND {same} "
           f"THEN UPDATE SET {sets}{_tail(d)}")
    return sql, markers(sql)


def insert_batch(d: WarehouseDialect, spec: MergeSpec, where: str = "", source: str | None = None) -> tuple[str, int]:
    """INSERT every batch row (optionally filtered, or those of `source`, a relation of stg's rows) as a new live
    row: type 1 stamps inserted/updated, SCD2 opens a current version."""
    carry = spec.columns + STAGE_TECH
    tech, vals = (SCD2_TECH, ["?", "NULL", d.true]) if spec.scd2 else (TYPE1_TECH, ["?", "?"])
    cols = ", ".join(d.quote(c) for c in carry + ODS_STATE + tech)
    select = ", ".join([f"s.{d.quote(c)}" for c in carry] + [d.false, "NULL"] + vals)
    sql = f"INSERT INTO {spec.ods(d)} ({cols})\nSELECT {select} FROM {source or spec.stg(d)} AS s{where}"
    return sql, markers(sql)


def scd2_insert(d: WarehouseDialect, spec: MergeSpec, changed_only: bool = False) -> tuple[str, int]:
    """SCD2 step 2: a new current version for every batch key that has none (new or just closed).
    `changed_only`: found as the changed rows (after scd2_close, exactly the keys with no current version), so
    DuckDB joins the batch's keys and hashes, not its every column (merge_statements)."""
    if changed_only:
        return insert_batch(d, spec, source=_changed_rows(d, spec))
    return insert_batch(d, spec, f"\nWHERE NOT EXISTS (SELECT 1 FROM {spec.ods(d)} AS t WHERE {_on(d, spec.keys)} "
                                 f"AND {d.is_true('t._etl_is_current')})")


def merge_statements(d: WarehouseDialect, spec: MergeSpec, *, all_new: bool = False,
                     refresh: list[Column] | None = None,
                     whole_arrays: frozenset[str] = frozenset()) -> list[tuple[str, int]]:
    """The data statements of one merge, in order; each with how many `?` take the load timestamp.

    `all_new`: no batch key is in ods and nothing is to be soft-deleted (merge_counts said so, e.g. the first
    load): the MERGE would only insert every row, so a plain INSERT does it without joining ods. On DuckDB the
    MERGE (type 1) or the close and insert (SCD2) are given the changed rows alone, and the soft deletes of a
    full batch are an UPDATE of their own.
    `refresh`: the configuration changed since the last merge; SCD2 first refreshes in place the
    current versions whose values in these columns are unchanged (scd2_refresh; `whole_arrays`: the EXTENT
    arrays kept whole, whose old elements are compared)."""
    if all_new:
        return [insert_batch(d, spec)]
    # DuckDB's MERGE holds what its source carries: it is given the changed rows alone (found by keys and hashes)
    # and full mode's soft deletes are an UPDATE of their own; SQL Server's MERGE spills to tempdb
    changed_only = d.name == "duckdb"
    deletes = [soft_delete_absent(d, spec)] if changed_only and spec.full else []
    if not spec.scd2:
        return [merge_type1(d, spec, changed_only=changed_only)] + deletes
    first = [scd2_refresh(d, spec, refresh, whole_arrays)] if refresh is not None else []
    return first + [scd2_close(d, spec, changed_only)] + deletes + [scd2_insert(d, spec, changed_only)]


# -- validation ------------------------------------------------------------------------------------------------

def validation_queries(d: WarehouseDialect, spec: MergeSpec) -> dict[str, str]:
    """The checks on ods alone, each one number; validation_counts adds the batch's (0 means passed; the caller
    compares ods_live_rows with stg_rows)."""
    keys = ", ".join(d.quote(k) for k in spec.keys)
    return {
        "duplicate_current_keys": (
            f"SELECT {d.count}(*) FROM (SELECT {keys} FROM {spec.ods(d)} AS t WHERE {_live(d, spec)} "
            f"GROUP BY {keys} HAVING {d.count}(*) > 1) AS dup"),
        "ods_live_rows": live_rows(d, spec),
    }


def validation_counts(d: WarehouseDialect, spec: MergeSpec) -> tuple[str, list[str]]:
    """Every validation check as one statement (one round trip a table) that reads the batch once: its rows and,
    of them, those whose key is not live in ods with the same hashdiff (each statement over stg binds its view
    again: 7 ms on 350 columns). The SQL and the check names, in the order of its columns. The anti-join is a
    NOT EXISTS in a CASE under the count (SQL Server counts no subquery itself), never a join that a key
    duplicated in ods would multiply."""
    ods, stg, q = spec.ods(d), spec.stg(d), d.quote
    missing = (f"CASE WHEN NOT EXISTS (SELECT 1 FROM {ods} AS t WHERE {_on(d, spec.keys)} AND {_live(d, spec)} "
               f"AND {d.is_false('t._etl_is_deleted')} AND t._etl_hashdiff = s._etl_hashdiff) THEN 1 END")
    batch = (f"SELECT {d.count}(m) AS {q('batch_keys_current_with_same_hash')}, {d.count}(*) AS {q('stg_rows')} "
             f"FROM (SELECT {missing} AS m FROM {stg} AS s) AS x")
    on_ods = validation_queries(d, spec)
    names = ["batch_keys_current_with_same_hash", *on_ods, "stg_rows"]
    columns = [f"({on_ods[n]}) AS {q(n)}" if n in on_ods else f"b.{q(n)}" for n in names]
    return f"SELECT {', '.join(columns)} FROM ({batch}) AS b", names
