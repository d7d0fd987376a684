"""etl.ETL_Log: one row per table and step, written from the task's own process."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .faults import checkpoint
from .settings import mask_secrets
from .warehouse.base import Warehouse

log = logging.getLogger(__name__)
MAX_ERROR = 4000


def kept_error(text: str, limit: int = MAX_ERROR) -> str:
    """A message as etl.ETL_Log keeps it: up to `limit` characters, its start and its end. The way out is at
    the end of every message, so cutting the end alone lost it from the run log and `summary` (found in review:
    a long value in a message pushed it out)."""
    if len(text) <= limit:
        return text
    cut, said = "", None
    while said != cut:  # the marker's length depends on the number it says
        said, cut = cut, f" [... {len(text) - (limit - len(cut)):,} characters left out ...] "
    head = (limit - len(cut)) // 2
    tail = limit - len(cut) - head
    return text[:head] + cut + text[-tail:]


@dataclass
class StepRecord:
    step: str
    status: str = "SUCCESS"
    rows: int | None = None
    duration_ms: int | None = None
    inserted: int | None = None
    updated: int | None = None
    unchanged: int | None = None
    deleted: int | None = None
    error: str | None = None
    detail: str | None = None
    extra: dict = field(default_factory=dict)


def write_steps(wh: Warehouse, *, run_id: str, batch_id: str, table: str, mode: str, task_id: str,
                records: list[StepRecord]) -> None:
    if not records:
        return
    with wh.session() as s:
        checkpoint("log")  # a Ctrl-C here lands in a Luigi event callback (tasks._interrupt_raised_again)
        for r in records:
            err = kept_error(mask_secrets(r.error)) if r.error else None
            detail = mask_secrets(r.detail) if r.detail else None  # a window or scheduling text: masked as well
            s.execute("INSERT INTO etl.ETL_Log (RunId, BatchId, TableName, Step, Status, Mode, Rows, RowsInserted, "
                      "RowsUpdated, RowsUnchanged, RowsDeleted, DurationMs, ErrorMessage, Detail, TaskId) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      [run_id, batch_id, table, r.step, r.status, mode, r.rows, r.inserted, r.updated, r.unchanged,
                       r.deleted, r.duration_ms, err, detail, task_id])


# the pipeline's own records, by the column that dates them; each table's latest batch is always kept whole
HISTORY = (("etl.ETL_Validation", "CheckedAt"), ("etl.ETL_Markers", "CreatedAt"), ("etl.ETL_Log", "LogTs"))
LATEST_BATCHES = ("SELECT TableName, BatchId, Mode FROM (SELECT TableName, BatchId, Mode, row_number() OVER "
                  "(PARTITION BY TableName ORDER BY LogId DESC) AS rn FROM etl.ETL_Log) AS x WHERE rn = 1")
# every batch holding a table's last row of a step: vw_LastRuns shows them (a table failing at its extract since
# before the cut shows its last merge and validation: found in review), and with them their markers, which say
# that the batch validated (clean-cache)
LAST_OF_EACH_STEP = ("SELECT BatchId FROM (SELECT BatchId, row_number() OVER (PARTITION BY TableName, Step ORDER BY "
                     "LogId DESC) AS rn FROM etl.ETL_Log) AS x WHERE rn = 1")
MIN_KEEP_DAYS = 30  # vw_TablePerformance reads 7 days; a month leaves every recent rerun and its triage


def prune_history(wh: Warehouse, before) -> dict[str, int]:
    """Delete the run log, validation results and markers written before `before` (the warehouse's local time,
    as LogTs), each table in its own transaction, except every row of a batch that holds some table's last row of
    a step (so each table's latest batch: the monitoring views and `summary` read it, and its validate marker ends
    a failure). A pruned batch's markers are gone: a rerun of it redoes its steps, and the merge refuses it if a
    newer load came since. Returns the rows deleted per table."""
    where = f"< ? AND BatchId NOT IN (SELECT BatchId FROM ({LAST_OF_EACH_STEP}) AS latest)"
    deleted = {}
    for table, dated in HISTORY:  # ETL_Log last: the latest batches are read from it
        with wh.session() as s, s.transaction():
            deleted[table] = int(s.scalar(f"SELECT COUNT(*) FROM {table} WHERE {dated} {where}", [before]) or 0)
            if deleted[table]:
                s.execute(f"DELETE FROM {table} WHERE {dated} {where}", [before])
    return deleted
