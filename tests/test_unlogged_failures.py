"""etl.ETL_Log rows kept in <cache>/unlogged/ (runlog.spool_steps / replay_unlogged, CbmTask._log) when things go
wrong around them: a warehouse refusing them, a kept file this process cannot write or remove, a write whose answer
was lost, a failure that passes, a full disk. Real functions on a real DuckDB warehouse; found in review.

chattr +i stands for another user's file or folder (or a cache remounted read-only), a tmpfs of 8 KB for a full
disk; both need root and are skipped without it."""
from __future__ import annotations

import time
from datetime import date, datetime

import pytest

from cbm_luigi import runlog
from cbm_luigi.runlog import StepRecord
from cbm_luigi.settings import load_settings
from cbm_luigi.tasks import MergeOds
from cbm_luigi.warehouse import open_warehouse
from cbm_luigi.warehouse.duckdb_wh import release_connections

from .conftest import as_root, tmpfs


def _rows(run_id: str, task_id: str, step: str = "merge") -> list[list]:
    return runlog.log_rows(run_id=run_id, batch_id="2026-11-30", table="famille", mode="full", task_id=task_id,
                           records=[StepRecord(step, rows=7, duration_ms=12)])


def _log(env) -> list[tuple]:
    release_connections()
    return env.sql("SELECT RunId, TaskId, Step, Status, Rows, Detail FROM etl.ETL_Log ORDER BY LogId")


@pytest.fixture(autouse=True)
def _fresh_spool(monkeypatch):
    monkeypatch.setattr(runlog, "_SPOOL", {})
    monkeypatch.setattr(runlog, "_REFUSED_AT", [])


# -- 1. a second refusal in the same process overwrites the first *.refused file ------------------------------------
def test_a_second_refused_file_of_the_same_process_does_not_overwrite_the_first(env):
    """The process keeps one spool path (_SPOOL) for its life; after a refusal the path is renamed *.refused, the
    next kept rows make a new file at the same path, and a second refusal renames it onto the first *.refused
    (os.rename replaces silently): the rows of the first are gone, and `summary` counts only the last."""
    wh = open_warehouse(load_settings())
    runlog.spool_steps(env.cache, [[None] * 15], datetime(2026, 11, 30, 1, 0))  # TableName NOT NULL: refused
    assert runlog.replay_unlogged(wh, env.cache) == 0
    assert runlog.unlogged_rows(env.cache) == (0, 1)
    runlog.spool_steps(env.cache, [[None] * 15, [None] * 15], datetime(2026, 11, 30, 2, 0))  # refused again
    assert runlog.replay_unlogged(wh, env.cache) == 0
    # three refused rows were kept; each must still be somewhere an operator can find it
    assert runlog.unlogged_rows(env.cache) == (0, 3)


def test_a_warehouse_refusing_every_insert_keeps_every_steps_rows(env):
    """The same through CbmTask._log, with a warehouse that answers SELECT 1 but refuses inserts into etl.ETL_Log
    (here a CHECK; on SQL Server: a DENY INSERT, a full transaction log, a read-only database): each step's rows
    are kept, the next step's replay renames the file *.refused, its own rows fail and are kept at the same path,
    and the step after renames that one over the first. Three steps logged; one row left."""
    release_connections()
    env.sql("DROP TABLE etl.ETL_Log")
    env.sql("CREATE TABLE etl.ETL_Log (LogId BIGINT DEFAULT nextval('etl.seq_log'), RunId VARCHAR NOT NULL, "
            "BatchId VARCHAR NOT NULL, TableName VARCHAR NOT NULL, Step VARCHAR NOT NULL, Status VARCHAR NOT NULL, "
            "Mode VARCHAR, Rows BIGINT, RowsInserted BIGINT, RowsUpdated BIGINT, RowsUnchanged BIGINT, "
            "RowsDeleted BIGINT, DurationMs BIGINT, ErrorMessage VARCHAR, Detail VARCHAR, TaskId VARCHAR, "
            "LogTs TIMESTAMP NOT NULL DEFAULT current_timestamp, CHECK (Step = 'never'))")
    release_connections()
    for i, tag in enumerate(("a", "b", "c")):
        task = MergeOds(table="famille", mode="full", batch_date=date(2026, 11, 30), batch_tag=tag)
        task._log([StepRecord("merge", rows=i, duration_ms=1)])
        time.sleep(0.01)
    waiting, refused = runlog.unlogged_rows(env.cache)
    assert waiting + refused == 3, (waiting, refused)


# -- 2. a kept file this process cannot open for writing or remove stops every later step's own rows ----------------
def _immutable(path):
    """chattr +i (root): stands for a file or folder of another user, or a cache remounted read-only."""
    return as_root(["chattr", "+i", str(path)], ["chattr", "-i", str(path)], "chattr +i")


def test_a_kept_file_that_cannot_be_opened_for_writing_does_not_stop_the_steps_own_rows(env):
    """A file kept by another process (another user's, 0644), readable but not writable here: the replay opens it
    'r+' only to flock it, fails, counts its rows as waiting, and the step's own rows go behind them; and since
    this file never goes, every later step's rows do too, with the warehouse up all the time."""
    kept = runlog.spool_steps(env.cache, _rows("run-old", "MergeOds_old"), datetime(2026, 11, 29, 2, 0))
    runlog._SPOOL.clear()  # this process is another one
    with _immutable(kept):
        task = MergeOds(table="famille", mode="full", batch_date=date(2026, 11, 30), batch_tag="a")
        task._log([StepRecord("merge", rows=3, duration_ms=9)])
        got = _log(env)
    # the warehouse took nothing: neither the readable kept row nor the step's own
    assert [(r[1], r[2]) for r in got] == [("MergeOds_old", "merge"), (task.task_id, "merge")], got


def test_a_kept_file_written_but_not_removable_does_not_hold_the_steps_rows_forever(env):
    """The unlogged folder not writable by this process (another user's, or the cache remounted read-only): the
    replay writes the kept rows, cannot remove the file, and reports them as still waiting; the step's own rows
    are then kept instead of written (and cannot be: 'they are lost'), at every step of every run."""
    kept = runlog.spool_steps(env.cache, _rows("run-old", "MergeOds_old"), datetime(2026, 11, 29, 2, 0))
    runlog._SPOOL.clear()
    with _immutable(kept.parent):
        ids = []
        for tag in ("a", "b"):
            task = MergeOds(table="famille", mode="full", batch_date=date(2026, 11, 30), batch_tag=tag)
            task._log([StepRecord("merge", rows=3, duration_ms=9)])
            ids.append(task.task_id)
        got = _log(env)
    assert [r[1] for r in got] == ["MergeOds_old", *ids], got


# -- 3. a write whose commit went through but whose answer was lost is written twice --------------------------------
def test_a_step_whose_log_insert_committed_but_reported_an_error_is_not_written_twice(env, monkeypatch):
    """SQL Server restarting or a connection dropped (the cases the spool is for) can take the answer to an
    INSERT/COMMIT the server already applied. _log then keeps the rows, and the replay's NOT EXISTS cannot find
    them: write_steps let LogTs default to the server's clock, the kept row carries the host's `ended`."""
    from cbm_luigi.warehouse.duckdb_wh import DuckDbSession

    real = DuckDbSession.execute
    lost = []

    def execute(self, sql, params=None):
        real(self, sql, params)
        if sql.startswith("INSERT INTO etl.ETL_Log") and not lost:
            lost.append(sql)  # applied (autocommit), its answer lost once
            raise ConnectionError("[08S01] Communication link failure")
    monkeypatch.setattr(DuckDbSession, "execute", execute)
    task = MergeOds(table="famille", mode="full", batch_date=date(2026, 11, 30), batch_tag="a")
    task._log([StepRecord("merge", rows=3, duration_ms=9)])
    assert lost and list((env.cache / "unlogged").glob("*.jsonl"))  # kept, as the feature says
    nxt = MergeOds(table="famille", mode="full", batch_date=date(2026, 11, 30), batch_tag="b")
    nxt._log([StepRecord("merge", rows=4, duration_ms=9)])  # replays the kept row, then its own
    got = _log(env)
    assert [r[1] for r in got].count(task.task_id) == 1, got


# -- 4. a replay that fails for a passing reason sets the whole file aside for good ---------------------------------
def test_a_replay_that_fails_once_for_a_passing_reason_is_tried_again_not_set_aside(env, monkeypatch):
    """The replay tells 'down' from 'refused' by whether SELECT 1 answers after the failure. A failure that passes
    (SQL Server's deadlock victim 1205 with two workers replaying, a lock timeout, a connection dropped and
    reconnected, a failover that completes within the connect retry) answers SELECT 1 a moment later: the whole
    file (every row the process kept, a night's worth when the warehouse was down) is renamed *.refused, for an
    operator to insert by hand, though a second try would have written it."""
    runlog.spool_steps(env.cache, _rows("run-1", "MergeOds_x", "stage") + _rows("run-1", "MergeOds_y"),
                       datetime(2026, 11, 30, 2, 0))
    real = runlog._write_late
    calls = []

    def once(wh, rows):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("[40001] Transaction (Process ID 57) was deadlocked on lock resources with another "
                               "process and has been chosen as the deadlock victim. Rerun the transaction. (1205)")
        return real(wh, rows)
    monkeypatch.setattr(runlog, "_write_late", once)
    wh = open_warehouse(load_settings())
    runlog.replay_unlogged(wh, env.cache)
    runlog.replay_unlogged(wh, env.cache)
    assert runlog.unlogged_rows(env.cache) == (0, 0) and len(_log(env)) == 2, (runlog.unlogged_rows(env.cache),
                                                                                 _log(env))


# -- 5. a write cut short by a full disk swallows the next row kept in the same file --------------------------------
def test_rows_kept_after_a_full_disk_are_not_lost_behind_the_half_line_it_left(env, caplog):
    """The cache full while rows are kept: spool_steps raises (the caller says those rows are lost), but leaves
    the part it wrote, without its newline. The disk freed, the process's next rows are appended to the same
    file right after that part: their first line is read back as one line 'cut short by a killed process' and
    dropped, though _log said they were kept."""
    with tmpfs(env.cache / "unlogged", "8k") as folder:
        filler = folder / "filler"
        filler.write_bytes(b"x" * 4096)  # one page of two left
        big = runlog.log_rows(run_id="run-1", batch_id="2026-11-30", table="famille", mode="full", task_id="t1",
                              records=[StepRecord("merge", status="FAILED", error="E" * 6000)])
        with pytest.raises(OSError):
            runlog.spool_steps(env.cache, big, datetime(2026, 11, 30, 2, 0))  # said lost by _log: fine
        filler.unlink()
        runlog.spool_steps(env.cache, _rows("run-1", "t2"), datetime(2026, 11, 30, 2, 5))  # said kept
        assert runlog.replay_unlogged(open_warehouse(load_settings()), env.cache) == 0
        got = _log(env)
    assert [r[1] for r in got] == ["t2"], (got, [m for m in caplog.messages if "cut short" in m][:1])
