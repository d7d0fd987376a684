"""Kept etl.ETL_Log rows (runlog.spool_steps / replay_unlogged, CbmTask._log) in a run and in `cbm-etl summary`:
a kept file that is not UTF-8, rows of two processes, a warehouse back after a few seconds, summary with rows
waiting or written late under another clock. Real functions, real DuckDB warehouses, real Luigi runs (found in
review). A warehouse that drops for a moment cannot be made with DuckDB: _drop_once stands for it (a mock)."""
from __future__ import annotations

import os
import time
from datetime import date, datetime, timedelta

import pytest

from cbm_luigi import runlog, tasks
from cbm_luigi.cli import main as cbm_etl
from cbm_luigi.runlog import LATE_NOTE, StepRecord
from cbm_luigi.tasks import LoadAll, MergeOds
from cbm_luigi.warehouse.duckdb_wh import release_connections

from .conftest import build, succeeded


@pytest.fixture(autouse=True)
def _fresh_spool(monkeypatch):
    monkeypatch.setattr(runlog, "_SPOOL", {})
    monkeypatch.setattr(runlog, "_REFUSED_AT", [])
    monkeypatch.setattr(runlog, "_SAID", set())


def _log(env) -> list[tuple]:
    release_connections()
    return env.sql("SELECT RunId, BatchId, TableName, Step, Status, Detail FROM etl.ETL_Log ORDER BY LogId")


def _rows(run_id, batch, table, step, status="SUCCESS", error=None):
    return runlog.log_rows(run_id=run_id, batch_id=batch, table=table, mode="full", task_id=f"T_{table}_{batch}",
                           records=[StepRecord(step, status=status, rows=1, duration_ms=5, error=error)])


# -- 1. a kept file whose bytes are not UTF-8 loses every later step's rows --------------------------------------
def test_a_kept_file_that_is_not_utf8_does_not_lose_the_later_steps_rows(env, caplog):
    """replay_unlogged reads a kept file in strict UTF-8 text mode and catches only OSError: a file with one byte
    that is not UTF-8 (a sector gone bad, a shared cache's torn write, an operator who fixed a *.refused file in a
    Latin-1 editor and renamed it back to .jsonl) raises UnicodeDecodeError (a ValueError) out of
    replay_unlogged and out of CbmTask._log: the step's own rows are neither written nor kept, Luigi's event
    callback guard logs only 'Error in event callback', and so it goes for every later step while the file
    stays. The docstring says: 'A file this process cannot read ... is said once and left'."""
    folder = env.cache / "unlogged"
    folder.mkdir(parents=True)
    bad = folder / "otherhost-1-deadbeef.jsonl"
    bad.write_bytes(b'{"row": ["r0", "b0", "famille", "merge", "FAILED", "full", null, null, null, null, null, 5, '
                    b'"Erreur d\xe9j\xe0 vue", null, "t0"], "LogTs": "2026-11-30T01:00:00", "tried": true}\n')
    task = MergeOds(table="famille", mode="full", batch_date=date(2026, 11, 30), batch_tag="a")
    try:
        task._log([StepRecord("merge", rows=3, duration_ms=9)])
    except Exception as exc:  # noqa: BLE001 — inside Luigi this lands in its event-callback guard, and is lost
        pytest.fail(f"CbmTask._log raised {type(exc).__name__}: {exc}: the step's rows are neither written nor "
                    f"kept")
    got = _log(env)
    kept = [p.read_text(errors="replace") for p in folder.glob("*.jsonl") if p != bad]
    assert [r[3] for r in got] == ["merge"] or any('"merge", "SUCCESS"' in k for k in kept), (got, kept)
    assert str(bad) in caplog.text  # the operator is told which file, and what to do


# -- 2. files sorted by their last write: a process's older rows written after another's newer ones ------------
def test_rows_kept_by_two_processes_are_written_in_the_order_their_steps_ended(env):
    """The replay takes the files oldest mtime first, a file whole; a file's mtime is its LAST append. The night
    (process A) keeps famille's FAILED validate of batch b1 at 02:00; the operator's rerun (process B, same cache)
    keeps famille's four steps of batch b2 by 02:30; the night then keeps client's extract at 03:00 in its own
    file. A's file is now the younger: B's rows go in first, then A's: famille's last row by LogId (what
    vw_SLABreach, vw_LastRuns, summary and prune-history read) is the b1 failure, and the table pages FAILING
    although its rerun validated after it."""
    b1 = datetime(2026, 11, 30, 2, 0)
    a_file = runlog.spool_steps(env.cache, _rows("night", "b1", "famille", "validate", "FAILED", "ConnectionError: x"),
                                b1)
    a_spool = dict(runlog._SPOOL)
    time.sleep(0.05)
    runlog._SPOOL.clear()  # the operator's process: a file of its own
    for i, step in enumerate(("extract", "stage", "merge", "validate")):
        runlog.spool_steps(env.cache, _rows("rerun", "b2", "famille", step), b1 + timedelta(minutes=20 + i * 3))
        time.sleep(0.02)
    time.sleep(0.05)
    runlog._SPOOL.clear()
    runlog._SPOOL.update(a_spool)  # the night goes on, its rows behind the waiting ones, in its file
    assert runlog.spool_steps(env.cache, _rows("night", "b1", "client", "extract"), b1 + timedelta(hours=1)) == a_file

    assert runlog.replay_unlogged(tasks.open_warehouse(tasks.load_settings()), env.cache) == 0
    got = [(r[1], r[2], r[3], r[4]) for r in _log(env)]
    sla = env.sql("SELECT SLAStatus, LastStatus FROM etl.vw_SLABreach WHERE TableName = 'famille'")
    assert sla != [("FAILING", "FAILED")], (sla, got)
    assert got == [("b1", "famille", "validate", "FAILED"),
                   ("b2", "famille", "extract", "SUCCESS"), ("b2", "famille", "stage", "SUCCESS"),
                   ("b2", "famille", "merge", "SUCCESS"), ("b2", "famille", "validate", "SUCCESS"),
                   ("b1", "client", "extract", "SUCCESS")], got


# -- 3. one failed replay holds every later step's rows for a minute, past the end of the run --------------------
def _drop_once(monkeypatch, table: str, step: str):
    """The warehouse drops when `table`'s `step` writes its rows, and is still down when the next step replays
    them (its _write_late fails and SELECT 1 gets no answer), then answers again: a failover of a few seconds."""
    real_write, real_late, real_answers = tasks.write_steps, runlog._write_late, runlog._answers
    state = {"dropped": False, "late_failed": False, "answers_failed": False}

    def write_steps(wh, **kw):
        if kw["table"] == table and kw["records"][0].step == step and not state["dropped"]:
            state["dropped"] = True
            raise ConnectionError("[08S01] TCP Provider: An existing connection was forcibly closed")
        return real_write(wh, **kw)

    def write_late(wh, rows):
        if state["dropped"] and not state["late_failed"]:
            state["late_failed"] = True
            raise ConnectionError("[08001] TCP Provider: No connection could be made")
        return real_late(wh, rows)

    def answers(wh):
        if state["late_failed"] and not state["answers_failed"]:
            state["answers_failed"] = True
            return False
        return real_answers(wh)
    monkeypatch.setattr(tasks, "write_steps", write_steps)
    monkeypatch.setattr(runlog, "_write_late", write_late)
    monkeypatch.setattr(runlog, "_answers", answers)
    return state


def test_a_warehouse_back_after_a_few_seconds_gets_the_rest_of_the_nights_rows(env, monkeypatch, capsys):
    """famille's validate cannot write its row (the warehouse drops), the next step (fournis's extract) finds it
    still down when it replays: _REFUSED_AT. The warehouse answers again at once: every later step stages, merges
    and validates in it, yet none writes its etl.ETL_Log rows for RETRY_AFTER_S (60 s), they queue behind; the
    LoadAll (a few seconds here, the last minute of a real night) ends with them all in <cache>/unlogged/, until
    a step of the NEXT run. Meanwhile etl.ETL_Log, the monitoring views and `cbm-etl summary` say the five tables
    that loaded 'never run' (or, for a table loaded before, show yesterday's batch), and nothing writes the rows
    before the next night: neither the end of the run nor summary/check-sla replays them."""
    state = _drop_once(monkeypatch, "famille", "validate")
    assert succeeded(build(LoadAll(mode="full", batch_tag="a", run_id="r1")))
    assert state["answers_failed"]
    waiting, _refused = runlog.unlogged_rows(env.cache)
    got = _log(env)
    capsys.readouterr()
    assert cbm_etl(["summary"]) == 0
    out = capsys.readouterr().out
    assert "never run" not in out, out
    assert waiting == 0 and len(got) == 24, (waiting, len(got), out)


# -- 4. summary: a step whose row waits in unlogged/ is said to have been killed -------------------------------
def test_summary_does_not_say_killed_for_a_step_whose_row_waits(env, monkeypatch, capsys):
    """famille's validate could not write its row (the warehouse dropped at that moment): the run went on and
    succeeded, the row waits in <cache>/unlogged/. `cbm-etl summary` tells the operator 'validate: done (marker
    committed) but not in etl.ETL_Log: the run was killed between the two; its counts are not known here': nothing
    was killed, and the counts are in the kept row."""
    _drop_once(monkeypatch, "famille", "validate")
    assert succeeded(build(tasks.LoadTable(table="famille", mode="full", batch_tag="a", run_id="r1")))
    assert runlog.unlogged_rows(env.cache) == (1, 0)
    capsys.readouterr()
    assert cbm_etl(["summary"]) == 0
    out = capsys.readouterr().out
    assert "the run was killed" not in out, out


# -- 5. summary: a late row's LogTs is the ETL host's clock, its marker's CreatedAt the warehouse's -----------
class _HostBehind(datetime):
    """The ETL host's clock 2 s behind the warehouse server's (NTP on one of them stopped, a VM resumed): the
    DuckDB warehouse's current_timestamp stands for SQL Server's SYSDATETIME()."""
    @classmethod
    def now(cls, tz=None):
        return datetime.now(tz) - timedelta(seconds=2)


def test_summary_shows_a_late_rows_counts_when_the_hosts_clock_is_behind(env, monkeypatch, capsys):
    """famille's merge row could not be written when the merge ended; its validate writes it first (late, LogTs =
    the host's clock at the merge's end), then its own. summary calls a step 'done but unlogged' when its row's
    LogTs is before its marker's CreatedAt (the warehouse's clock): with the host 2 s behind, the merge that IS in
    etl.ETL_Log is reported 'done (marker committed) but not in etl.ETL_Log: the run was killed between the two;
    its counts are not known here', and its counts shown as '?'."""
    monkeypatch.setattr(tasks, "datetime", _HostBehind)
    real = tasks.write_steps
    dropped = []

    def write_steps(wh, **kw):
        if kw["records"][0].step == "merge" and not dropped:
            dropped.append(1)
            raise ConnectionError("[08S01] communication link failure")
        return real(wh, **kw)
    monkeypatch.setattr(tasks, "write_steps", write_steps)
    assert succeeded(build(tasks.LoadTable(table="famille", mode="full", batch_tag="a", run_id="r1")))
    got = _log(env)
    assert [r[3] for r in got] == ["extract", "stage", "merge", "validate"] and LATE_NOTE in got[2][5]
    capsys.readouterr()
    assert cbm_etl(["summary"]) == 0
    out = capsys.readouterr().out
    assert "not in etl.ETL_Log" not in out and " ? " not in out, out


# -- 6. summary: the SLA column beside waiting rows ------------------------------------------------------------
def _sla_of(out: str, table: str) -> str:
    line = next(x for x in out.splitlines() if x.startswith(f"{table} "))
    return line.split()[-2]  # ... SLA batch/mode


def test_summary_gives_the_sla_the_waiting_rows_will_give(env, capsys):
    """summary shows the rows waiting in <cache>/unlogged/ as written, but its SLA column was etl.vw_SLABreach's
    of now: a FAILED merge beside 'SLA OK' (check-sla pages FAILING only once the rows are written; found in
    review, reading the documents as a new operator). Real DuckDB warehouse and kept files (runlog.spool_steps)."""
    assert succeeded(build(tasks.LoadTable(table="famille", mode="full", batch_tag="a", run_id="r1")))
    day = date.today().isoformat()
    # the next batch's merge failed, and the warehouse did not take its row either
    runlog.spool_steps(env.cache, _rows("r2", f"{day}-b", "famille", "extract")
                       + _rows("r2", f"{day}-b", "famille", "merge", status="FAILED", error="boom"))
    capsys.readouterr()
    assert cbm_etl(["summary"]) == 0
    out = capsys.readouterr().out
    assert "famille        FAILED" in out and _sla_of(out, "famille") == "FAILING", out
    capsys.readouterr()
    assert cbm_etl(["write-kept-log"]) == 0 and cbm_etl(["check-sla"]) == 2  # what paging says once written
    assert "famille: FAILING" in capsys.readouterr().out
    # then another batch loaded and validated (its marker committed with it), and its rows wait: etl.vw_SLABreach
    # still says FAILING (b's merge is the latest row written), the rows it will have say the failure is over
    runlog.spool_steps(env.cache, [r for step in ("extract", "stage", "merge", "validate")
                                   for r in _rows("r3", f"{day}-c", "famille", step)])
    release_connections()
    env.sql("INSERT INTO etl.ETL_Markers (MarkerId, TableName, Step, BatchId, Mode, RunId, Rows) VALUES "
            "('m-c-validate', 'famille', 'validate', ?, 'full', 'r3', 1)", [f"{day}-c"])
    assert env.sql("SELECT SLAStatus FROM etl.vw_SLABreach WHERE TableName = 'famille'") == [("FAILING",)]
    assert cbm_etl(["summary"]) == 0
    out = capsys.readouterr().out
    assert "famille        SUCCESS" in out and _sla_of(out, "famille") == "OK", out
    assert cbm_etl(["write-kept-log"]) == 0
    cbm_etl(["check-sla"])  # the other demo tables, never loaded, are not OK
    assert "famille:" not in capsys.readouterr().out
