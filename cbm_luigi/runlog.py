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


def spool_steps(cache_dir: Path, rows: list[list], ended: datetime | None = None, *, tried: bool = True) -> Path:
    """Keep etl.ETL_Log rows the warehouse did not take, one JSON line each with the time the step ended (to the
    millisecond, as SQL Server's LogTs holds it), in this process's file; returns its path. `tried`: their write
    failed (it may have committed all the same, its answer lost: the replay looks for them by content), else they
    were kept behind rows still waiting. Raises OSError when the cache cannot be written (the caller says both
    failures); a write cut short (a full disk) is taken back, so no half line is left for the next rows."""
    ended = ended or datetime.now()
    ended = ended.replace(microsecond=ended.microsecond // 1000 * 1000)
    pid = os.getpid()
    path = _SPOOL.setdefault((pid, cache_dir),
                             unlogged_dir(cache_dir) / f"{HOST}-{pid}-{uuid.uuid4().hex[:8]}.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(_line(row, ended, tried) for row in rows).encode()
    while True:
        with _locked(path, "ab") as f:
            if f is None:  # replayed and removed between the open and the lock: a new file
                continue
            start = os.fstat(f.fileno()).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(f.fileno(), view):]
                os.fsync(f.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(f.fileno(), start)
                raise
            return path


@contextlib.contextmanager
def _locked(path: Path, mode: str) -> Iterator[IO | None]:
    """`path` opened and locked (flock: a writer and a replay, of any process on this file system, take turns);
    None when the file was removed (replayed) meanwhile, or is gone."""
    try:
        f = open(path, mode, buffering=0) if "b" in mode else open(path, mode, encoding="utf-8")
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


def waiting_rows(cache_dir: Path) -> list[dict]:
    """The rows waiting in `<cache>/unlogged/`, as etl.ETL_Log would hold them (LOG_COLUMNS and LogTs), in the order
    their steps ended: `cbm-etl summary` shows them with the logged ones. Read without a lock (a line being written
    is skipped); a file that cannot be read is left out."""
    out = []
    for p in sorted(unlogged_dir(cache_dir).glob("*.jsonl")):
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, ValueError):
            continue
        for line in text.splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                row, ended, _tried = _parsed(line)
                out.append({**dict(zip(LOG_COLUMNS, row, strict=True)), "LogTs": ended})
    return sorted(out, key=lambda r: r["LogTs"])


RETRY_AFTER_S = 60.0  # a warehouse that refused a replay is not asked again by this process before then
_REFUSED_AT: list[float] = []  # when this process's last replay found the warehouse down (said once a process)


def replay_unlogged(wh: Warehouse, cache_dir: Path, *, answered: bool = False) -> int:
    """Write the rows kept in `<cache>/unlogged/` to etl.ETL_Log in the order their steps ended (whatever process
    kept them), in one transaction, then remove the files; returns the rows still waiting (0: the caller writes
    its own rows; else it keeps them behind these, so etl.ETL_Log's order, which says a table's last step, stays
    the order the steps ended).

    Each row is written once (_write_late): a replay killed after its commit, or a step's write that committed
    though its answer was lost, is followed by one that finds the rows there. A line cut short (a process killed
    while writing it) is said and dropped. A warehouse that does not answer leaves the files, and is asked again
    after RETRY_AFTER_S, or at once by a step that has just worked in it (`answered`). Rows it answers but refuses
    twice are looked for a row at a time: those are moved to a `*.refused` file, said with the warehouse's words,
    so the rows behind them are not held forever. A file this process cannot read or remove is said once and
    left."""
    folder = unlogged_dir(cache_dir)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".jsonl"))
    except FileNotFoundError:
        return 0
    except OSError as exc:  # the folder unreadable: its rows cannot be written, the step's own can
        _say_once(folder, "the etl.ETL_Log rows kept in %s cannot be read (%s): make the folder readable to the "
                          "ETL's user", folder, exc)
        return 0
    if not names:
        return 0
    if answered:
        _REFUSED_AT.clear()
    elif _REFUSED_AT and time.monotonic() - _REFUSED_AT[-1] < RETRY_AFTER_S:
        return unlogged_rows(cache_dir)[0]
    with contextlib.ExitStack() as held:  # every file locked (in name order: two replays never wait on each other)
        files = []
        for name in names:
            path = folder / name
            try:
                f = held.enter_context(_locked(path, "r"))  # a lock needs no write access: another user's file too
                if f is not None:
                    files.append((path, _kept_rows(path, f.read())))
            except (OSError, ValueError) as exc:  # unreadable here, or not UTF-8 (an editor's): left, said
                _say_once(path, "the etl.ETL_Log rows kept in %s cannot be read (%s): make the file the ETL user's "
                                "(and UTF-8, one JSON line a row); the later rows are written without them", path, exc)
        rows = sorted((r for _path, kept in files for r in kept), key=lambda r: r[1])  # by when each step ended
        failure, down = _write_kept(wh, rows) if rows else (None, False)
        if failure is not None and not down:  # refused: which rows, a row at a time (in the same order)
            of = {id(r): path for path, kept in files for r in kept}
            refused: dict[Path, list] = {}
            for r in rows:
                one, down = _write_kept(wh, [r])
                if down:
                    break
                if one is not None:
                    refused.setdefault(of[id(r)], []).append(r)
                    failure = one
            if not down:
                for path, _kept in files:
                    if path in refused:
                        _set_aside(path, refused[path], failure)
                    else:
                        _remove(path)
                return 0
        if down:
            if not _REFUSED_AT:
                log.warning("the etl.ETL_Log rows kept in %s could not be written yet (%s: %s): the warehouse does "
                            "not answer; they stay there, and the steps' own rows wait behind them", folder,
                            type(failure).__name__, mask_secrets(str(failure))[:300])
            _REFUSED_AT[:] = [time.monotonic()]
            return unlogged_rows(cache_dir)[0]
        checkpoint("replay")  # the kill-and-rerun test stops a replay here, after its commit
        for path, _kept in files:
            _remove(path)
    return 0


def _set_aside(path: Path, rows: list[tuple[list, datetime, bool]], failure: Exception) -> None:
    """The rows of `path` the warehouse refused, into `<stem>-<id>.refused` (never over another), the file removed
    (its other rows are written)."""
    refused = path.with_name(f"{path.stem}-{uuid.uuid4().hex[:8]}.refused")
    try:
        refused.write_text("".join(_line(*r) for r in rows), encoding="utf-8")
        path.unlink()
    except OSError as exc:
        _say_once(path, "the warehouse refused %d etl.ETL_Log row(s) kept in %s (%s: %s), and they cannot be set "
                        "aside (%s): move the file out of the folder, and insert them by hand or delete it",
                  len(rows), path, type(failure).__name__, mask_secrets(str(failure))[:1000], exc)
        return
    log.error("the warehouse refused %d etl.ETL_Log row(s) kept in %s, twice (%s: %s); they are now in %s (the "
              "file's other rows are written). Insert them by hand (one JSON line each: the LOG_COLUMNS of "
              "cbm_luigi/runlog.py and LogTs), or delete the file", len(rows), path, type(failure).__name__,
              mask_secrets(str(failure))[:1000], refused)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:  # written: a later replay finds its rows there and writes none again
        _say_once(path, "the etl.ETL_Log rows kept in %s are written, but the file cannot be removed (%s): remove it",
                  path, exc)


_SAID: set[Path] = set()


def _say_once(path: Path, message: str, *args) -> None:
    """A warning about a kept file or its folder, once a process: the replay runs at every step."""
    if path not in _SAID:
        _SAID.add(path)
        log.warning(message, *args)


def _write_kept(wh: Warehouse, rows: list[tuple[list, datetime, bool]]) -> tuple[Exception | None, bool]:
    """Write kept rows, with a second try if the warehouse still answers after the first failed (a deadlock victim,
    a connection dropped and made again). Returns the last failure (None: written) and whether the warehouse did
    not answer."""
    try:
        _write_late(wh, rows)
        return None, False
    except Exception as exc:  # noqa: BLE001 — returned: the caller tells down from refused
        if not _answers(wh):
            return exc, True
    try:
        _write_late(wh, rows)
        return None, False
    except Exception as exc:  # noqa: BLE001 — as above
        return exc, not _answers(wh)


def _answers(wh: Warehouse) -> bool:
    """Whether the warehouse answers a plain query now (after a replay failed: down, or refusing the rows)."""
    try:
        with wh.session() as s:
            s.query("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 — the question is only whether it answers
        return False


def _line(row: list, ended: datetime, tried: bool) -> str:
    """A kept row as its file holds it: one JSON line (spool_steps, and a refused row set aside)."""
    return json.dumps({"row": row, "LogTs": ended.isoformat(), "tried": tried}) + "\n"


def _parsed(line: str) -> tuple[list, datetime, bool]:
    """A kept line back (ValueError, KeyError or TypeError when it is cut short)."""
    kept = json.loads(line)
    return kept["row"], datetime.fromisoformat(kept["LogTs"]), bool(kept.get("tried", True))


def _kept_rows(path: Path, text: str) -> list[tuple[list, datetime, bool]]:
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rows.append(_parsed(line))
        except (ValueError, KeyError, TypeError):
            log.error("a line of %s is cut short (its process was killed while writing it): its etl.ETL_Log row "
                      "is lost: %s", path, line[:500])
    return rows


def _write_late(wh: Warehouse, rows: list[tuple[list, datetime, bool]]) -> None:
    """The kept rows in one transaction, each unless already there: the same run, task, step and status, and the
    same LogTs (a replay killed after its commit) or, for a row whose own write failed, the same duration, rows
    and error (that write committed, its answer lost: the row holds the warehouse's LogTs)."""
    marks = ", ".join("?" * (len(LOG_COLUMNS) + 1))
    with wh.session() as s, s.transaction():
        for row, ended, tried in rows:
            run_id, step, status, n, ms, err, detail, task_id = (row[0], row[3], row[4], row[6], row[11], row[12],
                                                                  row[13], row[14])
            late = row[:13] + [f"{detail}; {LATE_NOTE}" if detail else LATE_NOTE, task_id]
            s.execute(f"INSERT INTO etl.ETL_Log ({_COLUMNS}, LogTs) SELECT {marks} WHERE NOT EXISTS (SELECT 1 FROM "
                      f"etl.ETL_Log WHERE RunId = ? AND TaskId = ? AND Step = ? AND Status = ? AND (LogTs = ? OR "
                      f"(? = 1 AND {_same('DurationMs')} AND {_same('Rows')} AND {_same('ErrorMessage')})))",
                      [*late, ended, run_id, task_id, step, status, ended, int(tried), ms, ms, n, n, err, err])


def _same(column: str) -> str:
    """`column` equal to the parameter, NULL to NULL (IS NOT DISTINCT FROM is SQL Server 2022's)."""
    return f"({column} = ? OR ({column} IS NULL AND ? IS NULL))"


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
