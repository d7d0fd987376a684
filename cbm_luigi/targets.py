"""Marker-row targets: a warehouse task is complete when its marker row exists in etl.ETL_Markers.

As in luigi.contrib.postgres, the marker is written by the step itself, in the same transaction as the data
it vouches for (`touch`), so a kill at any moment leaves either both or neither.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime

import luigi

from .warehouse.base import Session, Warehouse


class MarkerTarget(luigi.Target):
    def __init__(self, warehouse: Warehouse, marker_id: str, *, table: str, step: str, batch_id: str, mode: str):
        self.warehouse = warehouse
        self.marker_id = marker_id
        self.table, self.step, self.batch_id, self.mode = table, step, batch_id, mode

    def __str__(self) -> str:
        # stable: Luigi recognises a dependency that keeps failing at run time by this text, and gives up
        return f"marker {self.marker_id}"

    def exists(self) -> bool:
        return self._count("SELECT COUNT(*) FROM etl.ETL_Markers WHERE MarkerId = ?", [self.marker_id]) > 0

    def _count(self, sql: str, params: list) -> int:
        rows = self._query(sql, params)
        return int(rows[0][0] or 0) if rows else 0

    def _query(self, sql: str, params: list) -> list[tuple]:
        with self.warehouse.session() as s:
            return state_query(s, self.warehouse, sql, params)

    def forget(self, s: Session) -> None:
        """Remove the marker inside the caller's open transaction: the step is to be done again."""
        s.execute("DELETE FROM etl.ETL_Markers WHERE MarkerId = ?", [self.marker_id])

    def touch(self, s: Session, *, run_id: str, rows: int | None) -> None:
        """Write the marker inside the caller's open transaction."""
        self.forget(s)
        s.execute("INSERT INTO etl.ETL_Markers (MarkerId, TableName, Step, BatchId, Mode, RunId, Rows) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?)",
                  [self.marker_id, self.table, self.step, self.batch_id, self.mode, run_id, rows])


def remove_markers(s: Session, *, table: str, batch_id: str | None = None) -> int:
    """Forget completed warehouse steps of a table (all batches, or one), so the next run redoes them."""
    where, params = "TableName = ?", [table]
    if batch_id:
        where += " AND BatchId = ?"
        params.append(batch_id)
    n = int(s.scalar(f"SELECT COUNT(*) FROM etl.ETL_Markers WHERE {where}", params) or 0)
    s.execute(f"DELETE FROM etl.ETL_Markers WHERE {where}", params)
    return n


def validated_in(s: Session, batch_id: str) -> set[tuple[str, str]]:
    """(table, mode) of every table the batch validated: its validate markers."""
    return {(t, m) for t, m in s.query("SELECT TableName, Mode FROM etl.ETL_Markers WHERE BatchId = ? AND "
                                       "Step = 'validate'", [batch_id])}


# columns of the state tables added after the first release: a warehouse made before lacks them until init-db
_LATER_COLUMNS = ("ExtractShape", "MergedShape", "MergedColumns", "ValidatedAtUtc", "ValidatedUtcOffset")


def state_query(s: Session, warehouse: Warehouse | None, sql: str, params: list, *, dicts: bool = False) -> list:
    """A query on the pipeline's state tables (rows as tuples, or as dicts); a warehouse made before them (or
    before a column of theirs) is told to run init-db, not shown the database's puzzled error."""
    try:
        return s.query_dicts(sql, params) if dicts else s.query(sql, params)
    except Exception as exc:  # noqa: BLE001 — re-raised, with the way out when it is a missing table or column
        text = str(exc)
        where = f"; {warehouse.describe()}" if warehouse else ""
        used = [t for t in ("ETL_Markers", "ETL_TableState") if t in sql]
        # DuckDB: "Table with name X does not exist! Did you mean ...", SQL Server: "Invalid object name"
        m = re.search(r"(?:with name|object name)\s+'?(?:etl\.)?(\w+)", text, re.I)
        named = [t for t in used if m and m.group(1).lower() == t.lower()]
        if m and not named and m.group(1).lower() not in ("etl_markers", "etl_tablestate"):
            raise  # another table is missing (config.*): said by whoever asked for it
        if named or "does not exist" in text.lower() or "invalid object name" in text.lower() or \
                warehouse is not None and warehouse.missing_relation(text):  # SQL Server's text is in its language
            which = " / ".join(f"etl.{t}" for t in named or used)
            raise RuntimeError(f"the warehouse lacks {which}: run `cbm-etl init-db --no-tables` once (it adds what "
                               f"is missing and changes nothing else{where})") from exc
        # DuckDB: Table "st" does not have a column named "X"; SQL Server: Invalid column name 'X'
        later = [c for c in _LATER_COLUMNS if c.lower() in text.lower()]
        if later and re.search(r"does not have a column|not found|invalid column name|\b42S22\b|\(207\)", text, re.I):
            raise RuntimeError(f"the warehouse lacks etl.ETL_TableState.{later[0]}, which this version uses: run "
                               f"`cbm-etl init-db --no-tables` once (it adds what is missing and changes nothing "
                               f"else{where})") from exc
        raise


class StagedBatchTarget(MarkerTarget):
    """The target of a step that works on stg.<table> (stage, merge): its marker, and stg still holding this
    batch and mode.

    stg.<table> is one relation per table, so the same day's incremental run (same batch id, other mode) or any
    other batch can replace it before this batch is merged and validated. etl.ETL_TableState says what stg holds
    now; when it is not this batch and mode the step is incomplete again, and rerunning the command stages and
    merges this batch again (both are safe to repeat) instead of merging or validating another batch's rows (a
    full merge of an empty incremental batch would soft-delete the whole table). Once the batch is validated
    these targets are not asked any more.

    `shape` is the table's configuration now (TablePlan.extract_shape, or a function that gives it: asked only
    when the marker is there, so a first run does not build the plan while scheduling): stg staged under
    another one (a column excluded or a type overridden since) is stale too, and the rerun extracts and stages
    the batch again."""

    def __init__(self, warehouse: Warehouse, marker_id: str, *, table: str, step: str, batch_id: str, mode: str,
                 shape: str | Callable[[], str | None] | None = ""):
        super().__init__(warehouse, marker_id, table=table, step=step, batch_id=batch_id, mode=mode)
        self._shape = shape

    @property
    def shape(self) -> str | None:
        return self._shape() if callable(self._shape) else self._shape

    def exists(self) -> bool:
        rows = self._query("SELECT st.ExtractShape FROM etl.ETL_Markers m JOIN etl.ETL_TableState st "
                           "ON st.TableName = m.TableName WHERE m.MarkerId = ? AND st.BatchId = ? AND st.Mode = ?",
                           [self.marker_id, self.batch_id, self.mode])
        return bool(rows) and rows[0][0] is not None and rows[0][0] == self.shape


class StageTarget(StagedBatchTarget):
    """StageTable's target: also records what stg holds, in etl.ETL_TableState."""

    def forget_staged(self, s: Session) -> None:
        """Before stg is replaced: a warehouse that commits the new stg early (SQL Server's bulk copy) must not
        leave the record naming the batch stg held before. The table's merge watermark is kept."""
        _ensure_state_row(s, self.table)
        s.execute("UPDATE etl.ETL_TableState SET BatchId = '', Mode = '', RunId = NULL, Rows = NULL, "
                  "ExtractStartedAt = NULL, StagedAt = NULL, ExtractShape = NULL WHERE TableName = ?", [self.table])

    def touch(self, s: Session, *, run_id: str, rows: int | None, extract_started_at=None,
              shape: str | None = None) -> None:
        """The marker, and what stg holds now: this batch and mode, made under `shape` (the batch file's)."""
        super().touch(s, run_id=run_id, rows=rows)
        _ensure_state_row(s, self.table)
        s.execute("UPDATE etl.ETL_TableState SET BatchId = ?, Mode = ?, RunId = ?, Rows = ?, ExtractStartedAt = ?, "
                  "StagedAt = ?, ExtractShape = ? WHERE TableName = ?",
                  [self.batch_id, self.mode, run_id, rows, extract_started_at, datetime.now(), shape, self.table])


def _ensure_state_row(s: Session, table: str) -> None:
    s.execute("INSERT INTO etl.ETL_TableState (TableName) SELECT ? WHERE NOT EXISTS "
              "(SELECT 1 FROM etl.ETL_TableState WHERE TableName = ?)", [table, table])


def staged_batch(s: Session, table: str, dialect=None) -> dict | None:
    """What stg.<table> holds now (etl.ETL_TableState), or None if nothing usable was staged; with the
    warehouse's `dialect`, the row stays locked until the session's transaction ends (WarehouseDialect.held)."""
    state = dialect.held("etl.ETL_TableState") if dialect else "etl.ETL_TableState"
    rows = s.query_dicts(f"SELECT BatchId, Mode, RunId, Rows, ExtractStartedAt, ExtractShape FROM {state} "
                         "WHERE TableName = ? AND BatchId <> ''", [table])
    return rows[0] if rows else None


# what etl.ETL_TableState records of what ods holds: the configuration (TablePlan.extract_shape) its hashes were
# last written under and the columns that merge wrote (JSON list), and the last validated extract's start in UTC
# with the source clock's offset from UTC then (minutes)
LOADED_STATE = ("MergedShape", "MergedColumns", "ValidatedAtUtc", "ValidatedUtcOffset")
# a configuration not known (recorded by init-db for a table whose last load it cannot vouch for): never equal
# to a real one, so the table's next load reads in full and refreshes, as after any change
UNKNOWN_SHAPE = "unknown"


def record_validated(s: Session, table: str, *, started_at: datetime, started_utc: datetime | None) -> None:
    """In the validation's transaction: the clock the batch was counted in (unknown for an extract cached by an
    older version, which did not record its UTC start). The stage made the table's row."""
    offset = round((started_at - started_utc).total_seconds() / 60) if started_utc else None
    s.execute("UPDATE etl.ETL_TableState SET ValidatedAtUtc = ?, ValidatedUtcOffset = ? WHERE TableName = ?",
              [started_utc, offset, table])


def record_configuration(s: Session, table: str, shape: str, columns: list[str] | None) -> None:
    """The configuration ods's hashes are under, for a table whose merges did not record it (init-db)."""
    _ensure_state_row(s, table)
    s.execute("UPDATE etl.ETL_TableState SET MergedShape = ?, MergedColumns = ? WHERE TableName = ?",
              [shape, json.dumps(columns) if columns is not None else None, table])


def record_merged(s: Session, table: str, extract_started_at, *, shape: str, columns: list[str]) -> None:
    """In the merge's transaction: the newest extract merged into ods.<table> (only moves forward: a batch read
    before it must not be merged over it, validated or not, config_store.newer_load_than), and the configuration
    ods's hashes are now under, with the columns this merge wrote: a change merged, then reverted before its
    validation, is a change again (found in review: the weekly full then versioned every member)."""
    _ensure_state_row(s, table)
    moved = ("MergedExtractStartedAt = CASE WHEN MergedExtractStartedAt IS NULL OR MergedExtractStartedAt < ? "
             "THEN ? ELSE MergedExtractStartedAt END, " if extract_started_at is not None else "")
    s.execute(f"UPDATE etl.ETL_TableState SET {moved}MergedShape = ?, MergedColumns = ? WHERE TableName = ?",
              [extract_started_at] * (2 if moved else 0) + [shape, json.dumps(columns), table])
