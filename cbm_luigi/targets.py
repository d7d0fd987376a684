"""Marker-row targets: a warehouse task is complete when its marker row exists in etl.ETL_Markers.

As in luigi.contrib.postgres, the marker is written by the step itself, in the same transaction as the data
it vouches for (`touch`), so a kill at any moment leaves either both or neither.
"""
from __future__ import annotations

import re

import luigi

from .warehouse.base import Session, Warehouse


class MarkerTarget(luigi.Target):
    def __init__(self, warehouse: Warehouse, marker_id: str, *, table: str, step: str, batch_id: str, mode: str):
        self.warehouse = warehouse
        self.marker_id = marker_id
        self.table, self.step, self.batch_id, self.mode = table, step, batch_id, mode

    def exists(self) -> bool:
        return self._count("SELECT COUNT(*) FROM etl.ETL_Markers WHERE MarkerId = ?", [self.marker_id]) > 0

    def _count(self, sql: str, params: list) -> int:
        with self.warehouse.session() as s:
            try:
                return int(s.scalar(sql, params) or 0)
            except Exception as exc:  # noqa: BLE001
                text = str(exc)
                used = [t for t in ("ETL_Markers", "ETL_StageState") if t in sql]
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
    other batch can replace it before this batch is merged and validated. etl.ETL_StageState says what stg holds
    now; when it is not this batch and mode the step is incomplete again, and rerunning the command stages and
    merges this batch again (both are safe to repeat) instead of merging or validating another batch's rows (a
    full merge of an empty incremental batch would soft-delete the whole table). Once the batch is validated
    these targets are not asked any more."""

    def exists(self) -> bool:
        return self._count("SELECT COUNT(*) FROM etl.ETL_Markers m JOIN etl.ETL_StageState st "
                           "ON st.TableName = m.TableName WHERE m.MarkerId = ? AND st.BatchId = ? AND st.Mode = ?",
                           [self.marker_id, self.batch_id, self.mode]) > 0


class StageTarget(StagedBatchTarget):
    """StageTable's target: also records what stg holds, in etl.ETL_StageState."""

    def forget_staged(self, s: Session) -> None:
        """Before stg is replaced: a warehouse that commits the new stg early (SQL Server's bulk copy) must not
        leave the old record naming the batch stg held before."""
        s.execute("DELETE FROM etl.ETL_StageState WHERE TableName = ?", [self.table])

    def touch(self, s: Session, *, run_id: str, rows: int | None, extract_started_at=None) -> None:
        super().touch(s, run_id=run_id, rows=rows)
        self.forget_staged(s)
        s.execute("INSERT INTO etl.ETL_StageState (TableName, BatchId, Mode, RunId, Rows, ExtractStartedAt) "
                  "VALUES (?, ?, ?, ?, ?, ?)", [self.table, self.batch_id, self.mode, run_id, rows,
                                                extract_started_at])


def staged_batch(s: Session, table: str) -> dict | None:
    """What stg.<table> holds now (etl.ETL_StageState), or None if nothing was staged."""
    rows = s.query_dicts("SELECT BatchId, Mode, RunId, Rows, ExtractStartedAt FROM etl.ETL_StageState "
                         "WHERE TableName = ?", [table])
    return rows[0] if rows else None
