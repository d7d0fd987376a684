"""etl.ETL_Log rows the warehouse did not take when a step ended: kept in `<cache>/unlogged/` and written by a
later step, once, with the time the step ended (runlog.spool_steps / replay_unlogged, CbmTask._log).

Real DuckDB warehouses and real Luigi runs. A warehouse that stops answering in the middle of a run cannot be
made here with DuckDB (the process holds its file open): the runs below get it from CBM_FAIL_AT=log
(faults.py), which raises where the log rows are written, as SQL Server restarting at that moment would."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import date, datetime

from cbm_luigi import runlog
from cbm_luigi.cli import main as cbm_etl
from cbm_luigi.runlog import LATE_NOTE, StepRecord
from cbm_luigi.settings import load_settings
from cbm_luigi.warehouse import open_warehouse
from cbm_luigi.tasks import MergeOds
from cbm_luigi.warehouse.duckdb_wh import DuckDbWarehouse, release_connections

from .conftest import BIN, subprocess_env

SECRET = "hunter2-not-logged"


def _rows(run_id: str, task_id: str) -> list[list]:
    records = [StepRecord("merge", rows=7, inserted=5, updated=2, unchanged=0, deleted=0, duration_ms=1234,
                          detail="merged under the window since 2026-11-29"),
               StepRecord("validate", status="FAILED", duration_ms=56,
                          error=f"ConnectionError: login failed for DSN=erp;UID=etl;PWD={SECRET}")]
    return runlog.log_rows(run_id=run_id, batch_id="2026-11-30", table="famille", mode="full", task_id=task_id,
                           records=records)


def _log(env, where: str = "") -> list[tuple]:
    release_connections()
    return env.sql("SELECT LogId, RunId, Step, Status, Rows, RowsInserted, DurationMs, ErrorMessage, Detail, TaskId, "
                   f"LogTs, BatchId FROM etl.ETL_Log {where} ORDER BY LogId")


def test_kept_rows_are_written_later_with_their_time_secrets_masked(env):
    ended = datetime(2026, 11, 30, 2, 10, 5, 123456)
    path = runlog.spool_steps(env.cache, _rows("run-1", "MergeOds_famille_x"), ended)
    assert path.parent == env.cache / "unlogged"
    text = path.read_text()
    assert len(text.splitlines()) == 2 and SECRET not in text and "PWD={***}" in text

    wh = open_warehouse(load_settings())
    assert runlog.replay_unlogged(wh, env.cache) == 0  # none left waiting
    assert not path.exists()
    got = _log(env)
    assert [r[1:7] for r in got] == [("run-1", "merge", "SUCCESS", 7, 5, 1234), ("run-1", "validate", "FAILED", None,
                                                                                    None, 56)]
    assert all(r[10] == datetime(2026, 11, 30, 2, 10, 5, 123000) for r in got)  # the step's end, to the ms
    assert got[0][8] == f"merged under the window since 2026-11-29; {LATE_NOTE}" and got[1][8] == LATE_NOTE
    assert "PWD={***}" in got[1][7] and SECRET not in got[1][7]
    # nothing left: a second replay writes nothing
    assert runlog.replay_unlogged(open_warehouse(load_settings()), env.cache) == 0
    assert len(_log(env)) == 2


def test_a_replay_killed_after_its_commit_writes_nothing_twice(env, tmp_path):
    ended = datetime(2026, 11, 30, 2, 10, 5, 987000)
    path = runlog.spool_steps(env.cache, _rows("run-1", "MergeOds_famille_x"), ended)
    # a line cut short by a kill while it was written: said and dropped, the others written
    with open(path, "a") as f:
        f.write('{"row": ["run-1", "2026-11-30", "famille", "sta')
    release_connections()
    pause = tmp_path / "paused"
    code = ("from cbm_luigi import runlog; from cbm_luigi.settings import load_settings; "
            "from cbm_luigi.warehouse import open_warehouse; "
            "s = load_settings(); runlog.replay_unlogged(open_warehouse(s), s.cache_dir)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=env.home, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(env, CBM_PAUSE_AT="replay", CBM_PAUSE_FILE=str(pause)))
    try:
        for _ in range(300):
            if pause.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert pause.exists(), proc.communicate(timeout=10)
        os.kill(proc.pid, signal.SIGKILL)
        _out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "is cut short" in err and '"sta' in err
    assert path.exists()  # killed between its commit and removing the file
    assert len(_log(env)) == 2

    # the next replay finds the rows written: none twice, and the file is gone
    assert runlog.replay_unlogged(open_warehouse(load_settings()), env.cache) == 0
    assert not path.exists()
    got = _log(env)
    assert [(r[2], r[3]) for r in got] == [("merge", "SUCCESS"), ("validate", "FAILED")]


def test_a_warehouse_down_keeps_the_rows_and_new_ones_wait_behind_them(env, monkeypatch):
    monkeypatch.setattr(runlog, "_REFUSED_AT", [])
    first = runlog.spool_steps(env.cache, _rows("run-1", "MergeOds_famille_x"), datetime(2026, 11, 30, 2, 0))
    before = first.read_text()
    # a mock: a DuckDB file cannot stop answering under its own process; this stands for SQL Server being down
    connects = []

    def down(self):
        connects.append(1)
        raise ConnectionError("server gone")
    with monkeypatch.context() as m:
        m.setenv("CBM_DUCKDB_PATH", str(env.home / "down" / "wh.duckdb"))
        m.setattr(DuckDbWarehouse, "_connect", down)
        assert runlog.replay_unlogged(open_warehouse(load_settings()), env.cache) == 2
        assert first.read_text() == before and len(runlog._REFUSED_AT) == 1
        tried = len(connects)
        # asked again only after RETRY_AFTER_S: a step's own rows go behind the waiting ones without a try
        task = MergeOds(table="famille", mode="full", batch_date=date(2026, 11, 30), batch_tag="t")
        task._log([StepRecord("merge", rows=3, duration_ms=9)])
        assert len(connects) == tried
    kept = first.read_text()
    assert len(kept.splitlines()) == 3 and '"merge", "SUCCESS", "full", 3' in kept

    # the warehouse back: the next step writes them all, in the order the steps ended, then its own
    release_connections()
    monkeypatch.setattr(runlog, "_REFUSED_AT", [time.monotonic() - runlog.RETRY_AFTER_S - 1])
    task = MergeOds(table="famille", mode="full", batch_date=date(2026, 11, 30), batch_tag="u")
    task._log([StepRecord("merge", rows=4, duration_ms=8)])
    got = _log(env)
    assert [(r[2], r[4], LATE_NOTE in (r[8] or "")) for r in got] == [
        ("merge", 7, True), ("validate", None, True), ("merge", 3, True), ("merge", 4, False)]
    assert not first.exists()


def test_rows_the_warehouse_refuses_are_set_aside_and_the_next_ones_written(env, caplog):
    bad = runlog.spool_steps(env.cache, [[None] * 15], datetime(2026, 11, 30, 1, 0))  # TableName is NOT NULL
    runlog._SPOOL.clear()  # a second process's file, written later
    time.sleep(0.01)
    good = runlog.spool_steps(env.cache, _rows("run-2", "MergeOds_famille_y"), datetime(2026, 11, 30, 2, 0))
    os.utime(good, (time.time() + 5, time.time() + 5))
    assert runlog.replay_unlogged(open_warehouse(load_settings()), env.cache) == 0
    assert not bad.exists() and len(list(bad.parent.glob(f"{bad.stem}-*.refused"))) == 1 and not good.exists()
    assert [r[1] for r in _log(env)] == ["run-2", "run-2"]
    assert "refused 1 etl.ETL_Log row(s) kept in" in caplog.text and "NOT NULL" in caplog.text
    assert runlog.unlogged_rows(env.cache) == (0, 1)


def _luigi(env, tag: str, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(["luigi", "--module", "cbm_luigi", "LoadTable", "--table", "famille", "--mode", "full",
                           "--batch-tag", tag, "--local-scheduler"], cwd=env.home,
                          env=subprocess_env(env, **extra), capture_output=True, text=True, timeout=300)


def test_a_run_whose_log_writes_fail_writes_them_late_in_order(env):
    release_connections()
    first = _luigi(env, "a", CBM_FAIL_AT="log")
    assert first.returncode == 0, first.stderr[-3000:]  # the load itself succeeded
    assert first.stderr.count("could not write etl.ETL_Log") == 4 and "unlogged" in first.stderr
    # each step's own write failed; the next step wrote the earlier rows first, and the table's end the last one
    got = _log(env)
    assert [r[2] for r in got] == ["extract", "stage", "merge", "validate"]
    assert all(LATE_NOTE in r[8] and r[3] == "SUCCESS" for r in got)
    assert [r[10] for r in got] == sorted(r[10] for r in got)  # LogTs: when each step ended
    assert not list((env.cache / "unlogged").glob("*.jsonl"))
    summary = subprocess.run([str(BIN / "cbm-etl"), "summary"], cwd=env.home, env=subprocess_env(env),
                             capture_output=True, text=True, timeout=120)
    assert summary.returncode == 0 and "wait in" not in summary.stdout, summary.stdout
    assert re.search(r"^famille +SUCCESS ", summary.stdout, re.M), summary.stdout

    second = _luigi(env, "b")
    assert second.returncode == 0, second.stderr[-3000:]
    got = _log(env)
    late, own = got[:4], got[4:]
    day = got[0][11][:-2]  # the batch date both runs took (`<date>-a`)
    assert [(r[2], r[11]) for r in own] == [(s, f"{day}-b") for s in ("extract", "stage", "merge", "validate")]
    assert not any(r[8] and LATE_NOTE in r[8] for r in own)
    assert late[3][10] < own[0][10]
    assert env.sql("SELECT BatchId, Step, COUNT(*) FROM etl.ETL_Log GROUP BY ALL HAVING COUNT(*) > 1") == []


def test_write_kept_log_writes_the_waiting_rows_now(env, capsys):
    assert cbm_etl(["write-kept-log"]) == 0
    assert "no etl.ETL_Log row waits" in capsys.readouterr().out
    runlog.spool_steps(env.cache, _rows("run-1", "MergeOds_famille_x"), datetime(2026, 11, 30, 2, 10))
    runlog.spool_steps(env.cache, [[None] * 15], datetime(2026, 11, 30, 2, 11))  # refused: TableName NOT NULL
    release_connections()
    assert cbm_etl(["write-kept-log"]) == 0
    out = capsys.readouterr().out
    assert f"3 row(s) waited in {env.cache / 'unlogged'}" in out and "1 of them refused" in out, out
    assert [(r[2], r[3]) for r in _log(env)] == [("merge", "SUCCESS"), ("validate", "FAILED")]
    assert runlog.unlogged_rows(env.cache) == (0, 1)
