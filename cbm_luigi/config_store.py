"""config.ETL_Tables / ETL_Columns / ETL_Dependencies: reading plans, syncing columns from the catalog.

Operator choices survive a sync: IsExcluded, ArrayMode, and SqlName/SourceExpression/DataType/Width/Scale
when IsOverride is set (an override declares the type its expression returns).
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
from collections.abc import Iterable
import logging
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .naming import array_element_names, free_array_name, resolve_column_names, sql_safe_name
from .plan import PLAN_ERRORS, ConfigError, TablePlan, build_plan
from .settings import warn_once
from .source import catalog
from .source.dialect import quote as oe_quote
from .source.readers import Reader
from .types import UnsupportedTypeError, map_openedge_type
from .targets import LOADED_STATE, UNKNOWN_SHAPE, record_configuration, state_query
from .warehouse.base import Session, Warehouse
from .warehouse.statements import TECH_COLUMNS

log = logging.getLogger(__name__)

TABLE_FIELDS = ["TableName", "DestinationTable", "PrimaryKeyCols", "HasTimestamps", "DateModifCol",
                "DateModifPrecision", "TimeOfDayCol", "LookbackInterval", "FilterClause", "IsDimension", "IsFact",
                "IsCritical", "Priority", "SLAHours", "IsActive", "Notes"]
_BOOL = {"HasTimestamps", "IsDimension", "IsFact", "IsCritical", "IsActive"}


def table_rows(s: Session, *, active_only: bool = True, names: list[str] | None = None) -> list[dict]:
    rows = s.query_dicts("SELECT * FROM config.ETL_Tables" + (" WHERE IsActive = ?" if active_only else "") +
                         " ORDER BY Priority, TableName", [True] if active_only else [])
    if names:
        wanted = {n.lower() for n in names}
        rows = [r for r in rows if r["TableName"].lower() in wanted]
    return rows


def table_row(s: Session, table: str, warehouse: Warehouse | None = None) -> dict:
    """The table's config.ETL_Tables row, with what etl.ETL_TableState recorded of what ods holds
    (targets.LOADED_STATE; one query: a plan is built for every table of a run)."""
    rows = state_query(s, warehouse, f"SELECT t.*, {', '.join('st.' + c for c in LOADED_STATE)} FROM config.ETL_Tables "
                       f"AS t LEFT JOIN etl.ETL_TableState AS st ON st.TableName = t.TableName WHERE t.TableName = ?",
                       [table], dicts=True)
    if not rows:
        raise ConfigError(f"table {table!r} is not in config.ETL_Tables: add a row (or a line in "
                          f"config/tables.csv and run `cbm-etl init-db`)")
    return rows[0]


def column_rows(s: Session, table: str) -> list[dict]:
    return s.query_dicts("SELECT * FROM config.ETL_Columns WHERE TableName = ? AND IsMissingAtSource = ? "
                         "ORDER BY OrdinalPosition", [table, False])


def uninitialised_hint(error: str, warehouse: str) -> str | None:
    """The advice for an error that says the config/etl tables are missing, naming the warehouse that was opened
    (a settings mistake opens the embedded default instead of SQL Server, and init-db would build it there)."""
    # SQL Server's text is in the session's language: its SQLSTATE and number (208) are not
    if re.search(r"does not exist|Invalid object name|\b42S02\b|\(208\)", error) and \
            re.search(r"ETL_|\b(etl|config|meta)\.", error):
        return (f"{error.splitlines()[0]} (the warehouse opened is {warehouse}: if it is the one meant, run "
                f"`cbm-etl init-db`; if not, check CBM_WAREHOUSE_KIND and its settings in .env)")
    return None


def record_loaded_configurations(s: Session, warehouse: Warehouse) -> int:
    """Upgrade (init-db): a table loaded before etl.ETL_TableState recorded the configuration of its merges gets
    one, so its first change after the upgrade reads in full as any other. The configuration now when ods has
    exactly its columns; else (a column synced but not loaded yet, or a configuration that makes no plan now)
    UNKNOWN_SHAPE: the table's next load reads in full once and refreshes, whatever it was loaded under."""
    tables = [r[0] for r in s.query("SELECT t.TableName FROM config.ETL_Tables AS t LEFT JOIN etl.ETL_TableState "
                                    "AS st ON st.TableName = t.TableName WHERE t.LastSuccessTs IS NOT NULL AND "
                                    "st.MergedShape IS NULL")]
    # a version of 2026-11-28/29 recorded the configuration as ValidatedShape, under a fingerprint computed
    # otherwise: a change it had not loaded yet cannot be told from the configuration now (found in review)
    legacy = bool(s.scalar("SELECT COUNT(*) FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = 'etl' AND "
                           "TABLE_NAME = 'ETL_TableState' AND LOWER(COLUMN_NAME) = 'validatedshape'"))
    tracked = {r[0] for r in s.query("SELECT TableName FROM etl.ETL_TableState WHERE ValidatedShape IS NOT NULL")} \
        if legacy else set()
    known = 0
    for table in tables:
        if table in tracked:
            log.warning("init-db: table %s: its next load reads in full once (its configuration was recorded by "
                        "an older version in another form)", table)
            record_configuration(s, table, UNKNOWN_SHAPE, None)
            continue
        try:
            plan = _plan(s, table, warehouse)
        except PLAN_ERRORS as exc:
            log.warning("init-db: table %s: its next load reads in full (its configuration makes no plan now: %s)",
                        table, exc)
            record_configuration(s, table, UNKNOWN_SHAPE, None)
            continue
        columns = [n for n, _t, _ in plan.output_columns()]
        in_ods = {n.lower() for n in warehouse.table_columns(s, "ods", plan.destination)} - TECH_COLUMNS
        if in_ods == {n.lower() for n in columns}:
            record_configuration(s, table, plan.extract_shape(), columns)
            known += 1
        else:  # its configuration changed since ods was loaded: the change must still read in full
            record_configuration(s, table, UNKNOWN_SHAPE, None)
    return known


def load_plan(s: Session, table: str, warehouse: Warehouse) -> TablePlan:
    """The table's plan, with what ods was last merged under."""
    plan = _plan(s, table, warehouse)
    if plan.merged_shape is None and plan.last_success_ts is not None:
        # loaded by a version that did not record its configuration, and init-db has not recorded it yet (killed
        # after its DDL, before record_loaded_configurations): a change made before the upgrade may be pending,
        # so read in full once, as init-db would have said; the merge then records it (found in review: the
        # window was read alone, the merge recorded the configuration, and the change waited for a full)
        warn_once(log, f"table {table}: its configuration was never recorded (`cbm-etl init-db --no-tables` did "
                       f"not finish after the upgrade?): its next load reads in full once")
        plan.merged_shape = UNKNOWN_SHAPE
    return plan


def _plan(s: Session, table: str, warehouse: Warehouse) -> TablePlan:
    """The plan as configured and recorded (init-db records a configuration for the tables that have none)."""
    row = table_row(s, table, warehouse)
    plan = build_plan(row, column_rows(s, table))
    plan.destination = sql_safe_name(plan.destination)
    plan.merged_shape = row["MergedShape"]
    plan.merged_columns = json.loads(row["MergedColumns"]) if row["MergedColumns"] else None
    plan.last_success_clock = (row["ValidatedAtUtc"], row["ValidatedUtcOffset"])
    # two tables loading into one ods table would overwrite (and, in full mode, soft-delete) each other's rows.
    # Every other table's destination goes through the naming rules here: `café` and `cafe`, `1x` and `c_1x`
    # meet only there (a SQL pre-filter on case and punctuation missed them). 1,000 tables: about 2 ms.
    mine = plan.destination.lower()
    for other, dest in s.query("SELECT TableName, DestinationTable FROM config.ETL_Tables WHERE TableName <> ?",
                               [table]):
        if _safe(dest or other).lower() == mine:
            raise ConfigError(f"tables {table} and {other} both load into ods.{plan.destination} "
                              f"(DestinationTable in config.ETL_Tables, or its SQL-safe form): give one of them "
                              f"another DestinationTable, then rerun")
    return plan


@functools.lru_cache(maxsize=8192)
def _safe(name: str) -> str:
    return sql_safe_name(name)


def dependencies(s: Session) -> dict[str, list[str]]:
    """config.ETL_Dependencies as {table: [tables it waits for]}, each name spelled as in config.ETL_Tables
    (Progress names ignore case, and a pasted name's surrounding blanks are no part of it: ` Fournis` is
    `fournis`); a name not configured stays as written. A row whose TableName is no configured table does
    nothing: that is said, as it is for a DependsOn of no active table (a typo there was ignored without a word:
    found in review)."""
    spelled = {r[0].strip().lower(): r[0] for r in s.query("SELECT TableName FROM config.ETL_Tables")}
    deps: dict[str, list[str]] = {}
    for t, d in s.query("SELECT TableName, DependsOn FROM config.ETL_Dependencies ORDER BY TableName, DependsOn"):
        if t.strip().lower() not in spelled:
            warn_once(log, f"config.ETL_Dependencies row (TableName {t!r}, DependsOn {d!r}): {t!r} is no table of "
                           f"config.ETL_Tables, so the row does nothing: correct its TableName, or delete it")
        t, d = spelled.get(t.strip().lower(), t), spelled.get(d.strip().lower(), d)
        if d not in deps.setdefault(t, []):
            deps[t].append(d)
    return deps


def needed_by(deps: dict[str, list[str]], tables: Iterable[str], active: set[str]) -> set[str]:
    """Every table that one of `tables` waits for, directly or not: the config.ETL_Dependencies edges a load
    follows (to an active table other than itself)."""
    seen: set[str] = set()
    todo = list(tables)
    while todo:
        t = todo.pop()
        for d in deps.get(t, []):
            if d != t and d in active and d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def waits_for(table: str, tables: list[dict], deps: dict[str, list[str]], *, critical_stops: bool) -> list[str]:
    """The active tables `table`'s extract waits for in a batch: its config.ETL_Dependencies (to an active table
    other than itself), and with `critical_stops` (LoadAll without --continue-on-error) every critical table
    before it in Priority, unless a critical table waits for `table` itself (directly or not): waiting for it
    could wait for itself, and Luigi would leave the run pending."""
    active = {t["TableName"] for t in tables}
    need = [d for d in deps.get(table, []) if d != table and d in active]
    if critical_stops:
        critical = [t["TableName"] for t in tables if t["IsCritical"]]
        mine = next((t["Priority"] for t in tables if t["TableName"] == table), None)
        if mine is not None and table not in needed_by(deps, critical, active):
            need += [t["TableName"] for t in tables
                     if t["IsCritical"] and t["Priority"] < mine and t["TableName"] not in need]
    return need


def waiting_for(failed: str, tables: list[dict], deps: dict[str, list[str]], *, critical_stops: bool) -> list[str]:
    """The active tables that wait for `failed`, directly or not (waits_for), in Priority order: a night where
    `failed` did not load leaves them unloaded too, and says which they are."""
    waits = {t["TableName"]: waits_for(t["TableName"], tables, deps, critical_stops=critical_stops) for t in tables}
    seen: set[str] = set()
    todo = [failed]
    while todo:
        u = todo.pop()
        for t, need in waits.items():
            if u in need and t not in seen and t != failed:
                seen.add(t)
                todo.append(t)
    return [t["TableName"] for t in tables if t["TableName"] in seen]


def freed_by_continue_on_error(failed: str, tables: list[dict], deps: dict[str, list[str]]) -> set[str]:
    """Of the tables that wait for `failed` in a LoadAll, those --continue-on-error would load anyway: they wait
    only through a critical table's place in Priority (`failed`'s or a critical table's that waits for it), not
    through config.ETL_Dependencies."""
    return (set(waiting_for(failed, tables, deps, critical_stops=True))
            - set(waiting_for(failed, tables, deps, critical_stops=False)))


def in_run(wanted: Iterable[str], tables: list[dict], deps: dict[str, list[str]], *, critical_stops: bool) -> set[str]:
    """The tables a LoadAll of `wanted` loads: those, and what they wait for (waits_for), directly or not."""
    run, todo = set(wanted), list(wanted)
    while todo:
        for t in waits_for(todo.pop(), tables, deps, critical_stops=critical_stops):
            if t not in run:
                run.add(t)
                todo.append(t)
    return run


def dependency_cycle(deps: dict[str, list[str]], table: str) -> list[str] | None:
    """A cycle of config.ETL_Dependencies through `table` (`[a, b, a]`), else None. Luigi would only leave
    such tables pending; the caller says which rows make the cycle."""
    path: list[str] = []
    cleared: set[str] = set()  # walked to the end without coming back to `table`

    def walk(t: str) -> list[str] | None:
        if t in path:
            return path + [t] if t == table else None
        if t in cleared:
            return None
        path.append(t)
        for d in deps.get(t, []):
            if d != t and (found := walk(d)):
                return found
        path.pop()
        cleared.add(t)
        return None

    return walk(table)


def newer_load_than(s: Session, table: str, extract_started_at):
    """The start of the newest extract merged into ods.<table> (etl.ETL_TableState, validated or not) or of its
    last validated load (LastSuccessTs), if later than `extract_started_at`: a batch that old must not be
    merged over it. Else None. 1 ms of slack: SQL Server keeps LastSuccessTs to the millisecond."""
    rows = s.query("SELECT t.LastSuccessTs, st.MergedExtractStartedAt FROM config.ETL_Tables AS t LEFT JOIN "
                   "etl.ETL_TableState AS st ON st.TableName = t.TableName WHERE t.TableName = ?", [table])
    known = [v for v in (rows[0] if rows else ()) if v is not None]
    last = max(known) if known else None
    if last is None or extract_started_at is None or extract_started_at >= last - timedelta(milliseconds=1):
        return None
    return last


_HAS_UTC: set[str] = set()  # warehouses (Warehouse.describe()) seen with config.ETL_Tables.LastSuccessUtc


def _has_last_success_utc(s: Session, warehouse: str | None) -> bool:
    """Whether config.ETL_Tables has LastSuccessUtc (an older warehouse lacks it until `init-db`). Only a yes is
    remembered, per process: no step drops the column, and asking every validation cost DuckDB 1-3 ms a table
    (its INFORMATION_SCHEMA is built from the whole catalog, so it grows with the number of tables)."""
    if warehouse is not None and warehouse in _HAS_UTC:
        return True
    found = bool(s.scalar("SELECT COUNT(*) FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = 'config' AND "
                          "TABLE_NAME = 'ETL_Tables' AND COLUMN_NAME = 'LastSuccessUtc'"))
    if found and warehouse is not None:
        _HAS_UTC.add(warehouse)
    return found


def advance_last_success(s: Session, table: str, ts: datetime, utc: datetime | None = None, *,
                         warehouse: str | None = None) -> None:
    """Move LastSuccessTs (the source's local time, CBM_SOURCE_TIMEZONE or this host's: the clock of the
    incremental window) forward only (rerunning an older batch never moves it back), and LastSuccessUtc with
    it: the same instant in UTC, which vw_SLABreach counts its hours from (local times are an hour off across a
    daylight-saving change): `utc` as the extract recorded it, else `ts` converted here. A warehouse not upgraded yet (`cbm-etl init-db` adds the
    column) keeps working without it. `warehouse` (its describe()) lets the column's presence be asked once."""
    if not _has_last_success_utc(s, warehouse):
        warn_once(log, "config.ETL_Tables has no LastSuccessUtc column: run `cbm-etl init-db --no-tables` once "
                       "(vw_SLABreach counts hours in local time until then)")
        s.execute("UPDATE config.ETL_Tables SET LastSuccessTs = ? WHERE TableName = ? "
                  "AND (LastSuccessTs IS NULL OR LastSuccessTs < ?)", [ts, table, ts])
        return
    if utc is None:
        utc = ts.astimezone(timezone.utc).replace(tzinfo=None)  # a naive `ts` is this process's local time
    s.execute("UPDATE config.ETL_Tables SET LastSuccessTs = ?, LastSuccessUtc = ? WHERE TableName = ? "
              "AND (LastSuccessTs IS NULL OR LastSuccessTs < ?)", [ts, utc, table, ts])


_TRUE, _FALSE = ("1", "true", "yes", "y", "oui", "o", "vrai"), ("0", "false", "no", "n", "non", "faux")


def _csv_value(field: str, v: str, where: str):
    v = v.strip()
    if v == "":
        return None
    try:
        if field in _BOOL:
            if v.lower() not in _TRUE + _FALSE:
                raise ValueError("1/0, true/false, yes/no or oui/non")
            return v.lower() in _TRUE
        if field == "Priority":
            return int(v)
        if field == "SLAHours":  # a French Excel writes 26,5 (but 1,000 is no number of hours to guess at)
            return float(v.replace(",", ".") if re.fullmatch(r"\d+,\d{1,2}", v) else v)
    except ValueError as exc:
        what = exc.args[0] if field in _BOOL else "a number"
        raise ConfigError(f"{where}, column {field}: {v!r} is not {what}") from None
    return v


def load_tables_csv(s: Session, path: Path) -> int:
    """Insert the tables of a CSV (header = ETL_Tables column names) that are not configured yet. Excel's ways
    of saving one are taken (a UTF-8 BOM, `;` between fields, spaces around names); anything else it cannot
    read as written is an error naming the line: a table left out or switched off silently is worse."""
    added, seen = 0, set()
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:  # French Excel's "CSV (séparateur: point-virgule)" is Windows-1252
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path} line {line}: byte 0x{data[exc.start]:02X} is not UTF-8 (saved in another code "
                          f"page, such as Excel's plain CSV on Windows): save the file as 'CSV UTF-8' and run the "
                          f"command again") from None
    dialect = csv.Sniffer().sniff(text.splitlines()[0] if text.strip() else ",", delimiters=",;")
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    header = [h.strip() for h in reader.fieldnames or []]
    unknown = [h for h in header if h and h not in TABLE_FIELDS]
    if unknown or "TableName" not in header:
        raise ConfigError(f"{path}: header columns {unknown or header} are not config.ETL_Tables columns "
                          f"({', '.join(TABLE_FIELDS)}; TableName is required)")
    for line, row in enumerate(reader, 2):
        if None in row:
            raise ConfigError(f"{path} line {line}: more fields than the header (a '{dialect.delimiter}' inside a "
                              f"value? put the value in double quotes)")
        values = {k.strip(): _csv_value(k.strip(), v or "", f"{path} line {line}") for k, v in row.items()}
        if not values.get("TableName"):
            continue
        if values["TableName"].lower() in seen:
            raise ConfigError(f"{path} line {line}: table {values['TableName']} appears twice")
        seen.add(values["TableName"].lower())
        if s.scalar("SELECT COUNT(*) FROM config.ETL_Tables WHERE LOWER(TableName) = LOWER(?)",
                    [values["TableName"]]):  # Progress names ignore case: `Produit` is the configured `produit`
            continue
        values = {k: v for k, v in values.items() if v is not None}
        cols = ", ".join(values)
        s.execute(f"INSERT INTO config.ETL_Tables ({cols}) VALUES ({', '.join('?' * len(values))})",
                  list(values.values()))
        added += 1
    return added


def safe_names(cols: list[catalog.CatalogColumn], reserved: Iterable[str] = ()) -> dict[str, str]:
    """SQL names for a table's columns, array element names (`zal_1`) included in the collision check; no column
    or element takes a `reserved` name (the names already given to the table's other columns)."""
    reserved = set(reserved)
    taken = {r.lower() for r in reserved}
    names = [c.name for c in cols]
    mapping = resolve_column_names(names, reserved=reserved)
    elements = {e for c in cols if c.array_extent for e in array_element_names(mapping[c.name], c.array_extent)}
    if elements & set(mapping.values()) or {e.lower() for e in elements} & taken:
        plain = [c.name for c in cols if not c.array_extent]
        arrays = resolve_column_names([c.name for c in cols if c.array_extent], reserved=reserved)
        for c in cols:  # an array whose element names are taken moves to a free name
            if c.array_extent:
                arrays[c.name] = free_array_name(arrays[c.name], c.array_extent, taken)
        elements = {e for c in cols if c.array_extent for e in array_element_names(arrays[c.name], c.array_extent)}
        mapping = {**resolve_column_names(plain, reserved=reserved | set(arrays.values()) | elements), **arrays}
    return mapping


def _names_in_use(known: dict[str, dict]) -> set[str]:
    """Every ods column name the table's configured columns own (array elements included)."""
    used = set()
    for r in known.values():
        used.add(r["SqlName"])
        if r.get("ArrayExtent") and (r.get("ArrayMode") or "split") == "split":
            used.update(array_element_names(r["SqlName"], int(r["ArrayExtent"])))
    return used


def sync_columns(s: Session, reader: Reader, table: str) -> dict[str, int]:
    """Refresh config.ETL_Columns (and the meta.SYSCOLUMNS_FULL copy) of `table` from the source catalog."""
    cols = catalog.read_columns(reader, table)
    if not cols:
        raise ConfigError(f"table {table}: no column in SYSPROGRESS.SYSCOLUMNS_FULL for owner PUB — "
                          "does the table exist (`cbm-etl discover`)?")
    now = datetime.now()
    known = {r["ColumnName"]: r for r in s.query_dicts("SELECT * FROM config.ETL_Columns WHERE TableName = ?",
                                                          [table])}
    # Progress names are case-insensitive: a column whose catalog spelling changed case is the same column
    spelled = {n.lower(): n for n in known}
    cols = [dataclasses.replace(c, name=spelled.get(c.name.lower(), c.name)) for c in cols]
    overridden = {n for n, r in known.items() if r["IsExcluded"] or r["IsOverride"]}
    for c in cols:  # a type the product cannot map: its row is written all the same, so the operator can set
        if c.name not in overridden:  # the override or exclusion the message asks for; loading fails until then
            try:
                map_openedge_type(c.coltype, c.width, c.scale, table=table, column=c.name)
            except UnsupportedTypeError as exc:
                log.warning("%s", exc)
    # a configured column keeps its SqlName for good (its ods column holds its history); only new columns are
    # named, around every name in use, so a new `prix_vte` never takes over the column `prix-vte` fills
    names = {**{n: r["SqlName"] for n, r in known.items()},
             **safe_names([c for c in cols if c.name not in known], reserved=_names_in_use(known))}
    s.execute("DELETE FROM meta.SYSCOLUMNS_FULL WHERE tbl = ?", [table])
    # "changed": a column whose catalog facts differ from the row's (a refreshed row that did not change is
    # "unchanged": counted as updated, an unchanged catalog read as 15 changes, found in review)
    stats = {"added": 0, "changed": 0, "unchanged": 0, "missing": 0}
    meta_rows, updates, inserts = [], [], []
    for c in cols:
        meta_rows.append([table, c.name, c.coltype, c.width, c.scale, "Y" if c.nullable else "N", c.array_extent,
                          c.label, c.description, c.position])
        sql_name = names[c.name]
        expr = f"{oe_quote(c.name)} AS {oe_quote(sql_name)}"
        if c.name in known:
            override = bool(known[c.name]["IsOverride"])
            coltype, width, scale = c.coltype, c.width, c.scale
            if override:  # the operator's expression, and the type it returns
                k = known[c.name]
                expr, coltype, width, scale = k["SourceExpression"], k["DataType"], k["Width"], k["Scale"]
            row = [coltype, width, scale, "Y" if c.nullable else "N", c.array_extent, c.position, c.label,
                   c.description, False]
            k = known[c.name]  # what the row says now
            had = [k["DataType"], k["Width"], k["Scale"], k["NullFlag"], k["ArrayExtent"], k["OrdinalPosition"],
                   k["Label"], k["Description"], bool(k["IsMissingAtSource"])]
            updates.append([*row, now, sql_name, expr, table, c.name])
            stats["changed" if row != had else "unchanged"] += 1
        else:
            inserts.append([table, c.name, sql_name, expr, c.coltype, c.width, c.scale, "Y" if c.nullable else "N",
                            c.array_extent, False, False, c.position, c.label, c.description, False, now])
            stats["added"] += 1
    # one statement per kind, many rows: a 350-column table is 700 single-row statements otherwise
    s.executemany("INSERT INTO meta.SYSCOLUMNS_FULL (tbl, col, coltype, width, scale, nullflag, array_extent, "
                  "label, description, display_order) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", meta_rows)
    s.executemany("UPDATE config.ETL_Columns SET DataType = ?, Width = ?, Scale = ?, NullFlag = ?, "
                  "ArrayExtent = ?, OrdinalPosition = ?, Label = ?, Description = ?, IsMissingAtSource = ?, "
                  "SyncedAt = ?, SqlName = ?, SourceExpression = ? WHERE TableName = ? AND ColumnName = ?", updates)
    s.executemany("INSERT INTO config.ETL_Columns (TableName, ColumnName, SqlName, SourceExpression, DataType, "
                  "Width, Scale, NullFlag, ArrayExtent, ArrayMode, IsExcluded, IsOverride, OrdinalPosition, "
                  "Label, Description, IsMissingAtSource, SyncedAt) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'split', ?, ?, ?, ?, ?, ?, ?)", inserts)
    present = {c.name for c in cols}
    gone = [name for name in known if name not in present]
    for name in gone:
        s.execute("UPDATE config.ETL_Columns SET IsMissingAtSource = ?, SyncedAt = ? "
                  "WHERE TableName = ? AND ColumnName = ?", [True, now, table, name])
        log.warning("table %s: column %s is no longer in the source catalog (kept in ods, no longer read)",
                    table, name)
    stats["missing"] = len(gone)
    return stats


def ensure_columns(s: Session, reader_factory, table: str) -> None:
    """Sync on first use, so adding a table is one INSERT into config.ETL_Tables."""
    if not s.scalar("SELECT COUNT(*) FROM config.ETL_Columns WHERE TableName = ?", [table]):
        with reader_factory() as reader, s.transaction():
            stats = sync_columns(s, reader, table)
        log.info("table %s: columns synced from the source catalog on first use: %s", table, stats)
