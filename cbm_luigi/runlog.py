"""etl.ETL_Log: one row per table and step, written from the task's own process.

Rows the warehouse does not take when a step ends (SQL Server restarting in the night, a dropped connection) are
kept in a file of this process in `<cache>/unlogged/` and written by the next step that reaches the warehouse,
before its own rows, with the time the step ended (spool_steps, replay_unlogged)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

from .faults import checkpoint
from .leftovers import HOST
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


LOG_COLUMNS = ("RunId", "BatchId", "TableName", "Step", "Status", "Mode", "Rows", "RowsInserted", "RowsUpdated",
               "RowsUnchanged", "RowsDeleted", "DurationMs", "ErrorMessage", "Detail", "TaskId")
_COLUMNS = ", ".join(LOG_COLUMNS)
UNLOGGED_DIR = "unlogged"  # in the cache folder; clean-cache removes batch folders only
LATE_NOTE = ("written to etl.ETL_Log by a later step: the warehouse did not take it when this step ended (LogTs is "
             "then the ETL host's clock)")


def log_rows(*, run_id: str, batch_id: str, table: str, mode: str, task_id: str,
             records: list[StepRecord]) -> list[list]:
    """The etl.ETL_Log rows of `records` (LOG_COLUMNS), secrets masked: as written, and as kept when not taken."""
    rows = []
    for r in records:
        err = kept_error(mask_secrets(r.error)) if r.error else None
        detail = mask_secrets(r.detail) if r.detail else None  # a window or scheduling text: masked as well
        rows.append([run_id, batch_id, table, r.step, r.status, mode, r.rows, r.inserted, r.updated, r.unchanged,
                     r.deleted, r.duration_ms, err, detail, task_id])
    return rows


def write_steps(wh: Warehouse, *, run_id: str, batch_id: str, table: str, mode: str, task_id: str,
                records: list[StepRecord]) -> None:
    """The rows all or none (one statement, or one transaction for several), so the ones not taken can be kept
    whole (spool_steps)."""
    rows = log_rows(run_id=run_id, batch_id=batch_id, table=table, mode=mode, task_id=task_id, records=records)
    if not rows:
        return
    with wh.session() as s, (s.transaction() if len(rows) > 1 else contextlib.nullcontext()):
        checkpoint("log")  # a Ctrl-C here lands in a Luigi event callback (tasks._interrupt_raised_again)
        for row in rows:
            s.execute(f"INSERT INTO etl.ETL_Log ({_COLUMNS}) VALUES ({', '.join('?' * len(LOG_COLUMNS))})", row)


def unlogged_dir(cache_dir: Path) -> Path:
    return cache_dir / UNLOGGED_DIR


_SPOOL: dict[tuple[int, Path], Path] = {}  # (pid, cache) -> this process's file (a forked worker has its own)


def spool_steps(cache_dir: Path, rows: list[list], ended: datetime | None = None) -> Path:
    """Keep etl.ETL_Log rows the warehouse did not take, one JSON line each with the time the step ended (to the
    millisecond, as SQL Server's LogTs holds it), in this process's file; returns its path. Raises OSError when
    the cache cannot be written (the caller says both failures)."""
    ended = ended or datetime.now()
    ended = ended.replace(microsecond=ended.microsecond // 1000 * 1000)
    pid = os.getpid()
    path = _SPOOL.setdefault((pid, cache_dir),
                             unlogged_dir(cache_dir) / f"{HOST}-{pid}-{uuid.uuid4().hex[:8]}.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps({"row": row, "LogTs": ended.isoformat()}) + "\n" for row in rows)
    while True:
        with _locked(path, "a") as f:
            if f is None:  # replayed and removed between the open and the lock: a new file
                continue
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
            return path


@contextlib.contextmanager
def _locked(path: Path, mode: str) -> Iterator[IO[str] | None]:
    """`path` opened and locked (flock: a writer and a replay, of any process on this file system, take turns);
    None when the file was removed (replayed) meanwhile, or is gone."""
    try:
        f = open(path, mode, encoding="utf-8")
    except FileNotFoundError:
        yield None
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        yield f if same else None


def unlogged_rows(cache_dir: Path) -> tuple[int, int]:
    """Rows waiting in `<cache>/unlogged/`, and rows the warehouse refused (`*.refused`): `cbm-etl summary`."""
    counts = []
    for pattern in ("*.jsonl", "*.refused"):
        n = 0
        for p in sorted(unlogged_dir(cache_dir).glob(pattern)):
            with contextlib.suppress(OSError):
                n += sum(1 for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
        counts.append(n)
    return counts[0], counts[1]


RETRY_AFTER_S = 60.0  # a warehouse that refused a replay is not asked again by this process before then
_REFUSED_AT: list[float] = []  # when this process's last replay found the warehouse down (said once a process)


def replay_unlogged(wh: Warehouse, cache_dir: Path) -> int:
    """Write the rows kept in `<cache>/unlogged/` to etl.ETL_Log, oldest file first, a file in one transaction,
    then remove it; returns the rows still waiting (0: the caller writes its own rows; else it keeps them behind
    these, so etl.ETL_Log's order, which says a table's last step, stays the order the steps ended).

    Each row is written once: a replay killed after its commit is followed by one that finds its rows there (the
    same run, task, step, status and LogTs). A line cut short (a process killed while writing it) is said and
    dropped. A warehouse that does not answer leaves the files, and is asked again after RETRY_AFTER_S; one that
    answers but refuses a file's rows gets the file renamed `*.refused`, said with the warehouse's words, so the
    rows behind it are not held forever."""
    folder = unlogged_dir(cache_dir)
    try:
        names = sorted((n for n in os.listdir(folder) if n.endswith(".jsonl")),
                       key=lambda n: _mtime(folder / n))
    except FileNotFoundError:
        return 0
    except OSError as exc:  # the folder unreadable: its rows cannot be written, the step's own can
        log.warning("the etl.ETL_Log rows kept in %s cannot be read (%s): make the folder readable", folder, exc)
        return 0
    if not names:
        return 0
    if _REFUSED_AT and time.monotonic() - _REFUSED_AT[-1] < RETRY_AFTER_S:
        return unlogged_rows(cache_dir)[0]
    for name in names:
        path = folder / name
        try:
            with _locked(path, "r+") as f:
                if f is None:
                    continue
                try:
                    rows = _kept_rows(path, f.read())
                    if rows:
                        _write_late(wh, rows)
                except Exception as exc:  # noqa: BLE001 — said, and the rows kept: down, or refused (renamed)
                    if not _answers(wh):
                        if not _REFUSED_AT:
                            log.warning("the etl.ETL_Log rows kept in %s could not be written yet (%s: %s): the "
                                        "warehouse does not answer; they stay there, and the steps' own rows "
                                        "wait behind them", folder, type(exc).__name__,
                                        mask_secrets(str(exc))[:300])
                        _REFUSED_AT[:] = [time.monotonic()]
                        return unlogged_rows(cache_dir)[0]
                    refused = path.with_suffix(".refused")
                    path.rename(refused)
                    log.error("the warehouse refused the etl.ETL_Log rows kept in %s (%s: %s); the file is now %s. "
                              "Insert its rows by hand (one JSON line each: the LOG_COLUMNS of cbm_luigi/runlog.py "
                              "and LogTs), or delete it", path, type(exc).__name__, mask_secrets(str(exc))[:1000],
                              refused)
                    continue
                checkpoint("replay")  # the kill-and-rerun test stops a replay here, after its commit
                path.unlink()
        except OSError as exc:  # the cache itself (a file another user owns, a read-only mount): said, kept
            log.warning("the etl.ETL_Log rows kept in %s could not be read or removed (%s); they stay there",
                        path, exc)
            return unlogged_rows(cache_dir)[0]
    return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _answers(wh: Warehouse) -> bool:
    """Whether the warehouse answers a plain query now (after a replay failed: down, or refusing the rows)."""
    try:
        with wh.session() as s:
            s.query("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 — the question is only whether it answers
        return False


def _kept_rows(path: Path, text: str) -> list[tuple[list, datetime]]:
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            kept = json.loads(line)
            rows.append((kept["row"], datetime.fromisoformat(kept["LogTs"])))
        except (ValueError, KeyError, TypeError):
            log.error("a line of %s is cut short (its process was killed while writing it): its etl.ETL_Log row "
                      "is lost: %s", path, line[:500])
    return rows


def _write_late(wh: Warehouse, rows: list[tuple[list, datetime]]) -> None:
    marks = ", ".join("?" * (len(LOG_COLUMNS) + 1))
    with wh.session() as s, s.transaction():
        for row, ended in rows:
            run_id, step, status, detail, task_id = row[0], row[3], row[4], row[13], row[14]
            row = row[:13] + [f"{detail}; {LATE_NOTE}" if detail else LATE_NOTE, task_id]
            s.execute(f"INSERT INTO etl.ETL_Log ({_COLUMNS}, LogTs) SELECT {marks} WHERE NOT EXISTS (SELECT 1 FROM "
                      f"etl.ETL_Log WHERE RunId = ? AND TaskId = ? AND Step = ? AND Status = ? AND LogTs = ?)",
                      [*row, ended, run_id, task_id, step, status, ended])


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
