"""Marker-row targets: a warehouse task is complete when its marker row exists in etl.ETL_Markers.

As in luigi.contrib.postgres, the marker is written by the step itself, in the same transaction as the data
it vouches for (`touch`), so a kill at any moment leaves either both or neither.
"""
from __future__ import annotations

import luigi

from .warehouse.base import Session, Warehouse


class MarkerTarget(luigi.Target):
    def __init__(self, warehouse: Warehouse, marker_id: str, *, table: str, step: str, batch_id: str, mode: str):
        self.warehouse = warehouse
        self.marker_id = marker_id
        self.table, self.step, self.batch_id, self.mode = table, step, batch_id, mode

    def exists(self) -> bool:
        with self.warehouse.session() as s:
            try:
                return bool(s.scalar("SELECT COUNT(*) FROM etl.ETL_Markers WHERE MarkerId = ?", [self.marker_id]))
            except Exception as exc:  # noqa: BLE001
                if "ETL_Markers" in str(exc) or "does not exist" in str(exc).lower():
                    raise RuntimeError("the warehouse has no etl.ETL_Markers table: run `cbm-etl init-db` "
                                       f"first ({self.warehouse.describe()})") from exc
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
