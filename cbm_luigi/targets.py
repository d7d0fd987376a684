"""Marker-row targets: a warehouse task is complete when its marker row exists in etl.ETL_Markers.

As in luigi.contrib.postgres, the marker is written by the step itself, in the same transaction as the data
it vouches for (`touch`), so a kill at any moment leaves either both or neither.
"""
from __future__ import annotations

import re
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
        with self.warehouse.session() as s:
            try:
                return int(s.scalar(sql, params) or 0)
            except Exception as exc:  # noqa: BLE001
                text = str(exc)
                used = [t for t in ("ETL_Markers", "ETL_TableState") if t in sql]
                # DuckDB: "Table with name X does not exist! Did you mean ...", SQL Server: "Invalid object name"
                m = re.search(r"(?:with name|object name)\s+'?(?:etl\.)?(\w+)", text, re.I)
                named = [t for t in used if m and m.group(1).lower() == t.lower()]
                if named or "does not exist" in text.lower() or "invalid object name" in text.lower():
                    which = " / ".join(f"etl.{t}" for t in named or used)
                    raise RuntimeError(f"the warehouse lacks {which}: run `cbm-etl init-db` (it adds what is "
                                       f"missing and changes nothing else; {self.warehouse.describe()})") from exc
                raise

    def touch(self, s: Session, *, run_id: str, rows: int | None) -> None:
        """Write the marker inside the caller's open transaction."""
        s.execute("DELETE FROM etl.ETL_Markers WHERE MarkerId = ?", [self.marker_id])
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


class StagedBatchTarget(MarkerTarget):
    """The target of a step that works on stg.<table> (stage, merge): its marker, and stg still holding this
    batch and mode.

    stg.<table> is one relation per table, so the same day's incremental run (same batch id, other mode) or any
    other batch can replace it before this batch is merged and validated. etl.ETL_TableState says what stg holds
    now; when it is not this batch and mode the step is incomplete again, and rerunning the command stages and
    merges this batch again (both are safe to repeat) instead of merging or validating another batch's rows (a
    full merge of an empty incremental batch would soft-delete the whole table). Once the batch is validated
    these targets are not asked any more."""

    def exists(self) -> bool:
        return self._count("SELECT COUNT(*) FROM etl.ETL_Markers m JOIN etl.ETL_TableState st "
                           "ON st.TableName = m.TableName WHERE m.MarkerId = ? AND st.BatchId = ? AND st.Mode = ?",
                           [self.marker_id, self.batch_id, self.mode]) > 0


class StageTarget(StagedBatchTarget):
    """StageTable's target: also records what stg holds, in etl.ETL_TableState."""

    def forget_staged(self, s: Session) -> None:
        """Before stg is replaced: a warehouse that commits the new stg early (SQL Server's bulk copy) must not
        leave the record naming the batch stg held before. The table's merge watermark is kept."""
        _ensure_state_row(s, self.table)
        s.execute("UPDATE etl.ETL_TableState SET BatchId = '', Mode = '', RunId = NULL, Rows = NULL, "
                  "ExtractStartedAt = NULL, StagedAt = NULL WHERE TableName = ?", [self.table])

    def touch(self, s: Session, *, run_id: str, rows: int | None, extract_started_at=None) -> None:
        super().touch(s, run_id=run_id, rows=rows)
        _ensure_state_row(s, self.table)
        s.execute("UPDATE etl.ETL_TableState SET BatchId = ?, Mode = ?, RunId = ?, Rows = ?, ExtractStartedAt = ?, "
                  "StagedAt = ? WHERE TableName = ?", [self.batch_id, self.mode, run_id, rows, extract_started_at,
                                                      datetime.now(), self.table])


def _ensure_state_row(s: Session, table: str) -> None:
    s.execute("INSERT INTO etl.ETL_TableState (TableName) SELECT ? WHERE NOT EXISTS "
              "(SELECT 1 FROM etl.ETL_TableState WHERE TableName = ?)", [table, table])


def staged_batch(s: Session, table: str) -> dict | None:
    """What stg.<table> holds now (etl.ETL_TableState), or None if nothing usable was staged."""
    rows = s.query_dicts("SELECT BatchId, Mode, RunId, Rows, ExtractStartedAt FROM etl.ETL_TableState "
                         "WHERE TableName = ? AND BatchId <> ''", [table])
    return rows[0] if rows else None


def record_merged(s: Session, table: str, extract_started_at) -> None:
    """In the merge's transaction: the newest extract merged into ods.<table> (only moves forward). A batch
    read before it must not be merged over it, validated or not (config_store.newer_load_than)."""
    if extract_started_at is None:
        return
    _ensure_state_row(s, table)
    s.execute("UPDATE etl.ETL_TableState SET MergedExtractStartedAt = ? WHERE TableName = ? AND "
              "(MergedExtractStartedAt IS NULL OR MergedExtractStartedAt < ?)",
              [extract_started_at, table, extract_started_at])
