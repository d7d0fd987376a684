"""Runs that overlap: real `luigi` processes on one DuckDB warehouse, one holding it while another starts (the
nightly still running when an operator starts a load by hand), under a real luigid (found in review)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from cbm_luigi import demo_source

from .conftest import DEMO_TABLES, assert_ods_equals_source, on_source, running_luigid, subprocess_env

# The `luigi` command (luigi.cmdline.luigi_run) with two test hooks only: the warehouse's lock wait is T_LOCK
# seconds instead of 120, and the fault checkpoint named T_AT, once reached, writes T_PAUSED and waits for the
# file T_RESUME, then goes on (faults.checkpoint sleeps until killed; here the paused load must finish).
RUNNER = r"""
import os, sys, time
from pathlib import Path
import cbm_luigi.warehouse.duckdb_wh as wh
wh.LOCK_WAIT_S = float(os.environ.get('T_LOCK', '120'))
import cbm_luigi.tasks as tasks, cbm_luigi.runlog as runlog
_seen = []
def checkpoint(name):
    if name != os.environ.get('T_AT') or _seen:
        return
    _seen.append(name)
    Path(os.environ['T_PAUSED']).write_text(str(os.getpid()))
    while not Path(os.environ['T_RESUME']).exists():
        time.sleep(0.1)
tasks.checkpoint = checkpoint
runlog.checkpoint = checkpoint
from luigi.cmdline import luigi_run
luigi_run(sys.argv[1:])
"""


def _luigi(env, *args, **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUNNER, "--module", "cbm_luigi", *args], cwd=env.home,
                            env=subprocess_env(env, **extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _luigid_states(port: int) -> dict[str, str]:
    out = {}
    for status in ("DONE", "FAILED", "PENDING", "RUNNING", "DISABLED", "UNKNOWN"):
        q = urllib.parse.quote(json.dumps({"status": status}))
        resp = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/task_list?data={q}", timeout=5))
        for t in resp["response"].values():
            out[f"{t['name']}({t['params'].get('table') or ''})"] = status
    return out


def _scheduler(port: int) -> list[str]:
    return ["--scheduler-host", "127.0.0.1", "--scheduler-port", str(port)]


@contextlib.contextmanager
def night_holding_the_warehouse(env, tmp_path, port: int):
    """The nightly `LoadAll --mode incremental` under the luigid at `port`, paused in its first merge (so it holds
    the DuckDB file) when this yields `(night, go_on)`; `go_on()` lets it finish and returns its stderr. Killed on
    the way out if it still runs."""
    paused, resume = tmp_path / "paused", tmp_path / "resume"
    night = _luigi(env, "LoadAll", "--mode", "incremental", *_scheduler(port),
                   T_AT="merge", T_PAUSED=str(paused), T_RESUME=str(resume))

    def go_on() -> str:
        resume.write_text("go")
        return night.communicate(timeout=300)[1]
    try:
        for _ in range(600):
            if paused.exists() or night.poll() is not None:
                break
            time.sleep(0.1)
        assert paused.exists(), night.communicate()[1][-3000:]
        yield night, go_on
    finally:
        if night.poll() is None:
            night.kill()
            night.wait(10)


def test_a_second_load_that_finds_the_warehouse_busy_under_luigid_does_not_turn_the_running_nights_success_into_exit_25(
        env, tmp_path):
    """The nightly (cron, under luigid as OPERATIONS says) is still running when an operator starts the same load
    by hand with another command line (`--continue-on-error`, or `luigi` instead of cron's `.venv/bin/luigi`: the
    pid lock compares command lines, so it does not stop it). The second run waits for the DuckDB file, then stops
    with WarehouseBusyError and exit 35, as documented. Its LoadAll.complete() raised while scheduling, and its
    worker told luigid that LoadAll (the same task id as the nightly's: continue_on_error is not significant) had
    status UNKNOWN; luigid then never granted the nightly's worker its LoadAll, and the nightly, having loaded every
    table, ended 'not granted run permission by the scheduler' with exit 25 ('not run'): cron paged a failure for
    a night that loaded everything. Now the second run stops before its worker tells luigid anything."""
    with running_luigid(env, tmp_path) as port, night_holding_the_warehouse(env, tmp_path, port) as (night, go_on):
        # the operator's run while the night holds the warehouse (in its first merge)
        second = _luigi(env, "LoadAll", "--mode", "incremental", "--continue-on-error", *_scheduler(port),
                        T_LOCK="2")
        _out, err2 = second.communicate(timeout=120)
        assert second.returncode == 35, err2[-3000:]  # scheduling error, as OPERATIONS says: fine
        assert "held by another process" in err2
        err = go_on()
        for t in DEMO_TABLES:  # the night loaded every table right
            assert_ods_equals_source(env, t)
        states = _luigid_states(port)
        assert night.returncode == 0, (f"the night loaded every table and exited {night.returncode}; luigid has its "
                                       f"LoadAll {states.get('LoadAll()')}:\n{err[-700:]}")
        assert states.get("LoadAll()") == "DONE", states


def test_a_busy_extract_run_by_hand_under_luigid_does_not_strand_the_nights_table(env, tmp_path):
    """_stops_when_busy covered complete() only. `luigi --module cbm_luigi ExtractParquet --table T` (bench/README
    shows running a step alone) while the night holds the warehouse: its complete() returns False without the
    warehouse (no batch file yet), then its requires() meets WarehouseBusyError, and Luigi tells luigid the task is
    UNKNOWN: the night's own ExtractParquet(T) (same task id) is never granted, T is not loaded, and the night that
    should exit 0 does not. The hand run should stop before reporting anything, as LoadAll/LoadTable now do."""
    from cbm_luigi.settings import load_settings
    from cbm_luigi.tasks import _config
    from cbm_luigi.warehouse.duckdb_wh import release_connections
    last = _config(load_settings())[0][-1]["TableName"]  # extracted last by the night
    release_connections()
    with running_luigid(env, tmp_path) as port, night_holding_the_warehouse(env, tmp_path, port) as (night, go_on):
        hand = _luigi(env, "ExtractParquet", "--table", last, "--mode", "incremental", *_scheduler(port),
                      T_LOCK="2")
        _out, err2 = hand.communicate(timeout=120)
        hand_rc = hand.returncode
        err = go_on()
        states = _luigid_states(port)
    assert "held by another process" in err2, err2[-2000:]
    assert night.returncode == 0, (f"hand run exit {hand_rc}; the night exited {night.returncode}, luigid has "
                                   f"ExtractParquet({last}) {states.get(f'ExtractParquet({last})')}, LoadAll "
                                   f"{states.get('LoadAll()')}:\n{err[-900:]}")
    assert env.sql("SELECT count(*) FROM etl.ETL_Markers WHERE Step = 'validate' AND TableName = ?", [last])[0][0]
    assert_ods_equals_source(env, last)


def test_summary_read_through_a_pager_does_not_keep_the_nightly_from_the_warehouse(env, tmp_path):
    """OPERATIONS (Monitoring) gives `cbm-etl summary` as the way to look at the warehouse without holding it, and
    an operator reads a summary of hundreds of tables through a pager (`cbm-etl summary | less`). The command keeps
    the DuckDB file open (and locked) until it has printed its last line: with the pager left open on the first
    screen, the pipe filled, the print blocked, and a load started meanwhile waited, then stopped with exit 35, 'held
    by another process' (found in review). Its rows are read whole first, and the warehouse let go before printing.
    (The pipe is made one page here so 86 tables fill it; a 1,000-table summary, about 110 KB, fills
    Linux's default 64 KB pipe.)"""
    for i in range(80):
        demo_source.add_synthetic_table(env.source, f"stk_{i:02d}", 3, 4)
        env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols, DateModifCol) VALUES (?, 'id', 'dat_mod')",
                [f"stk_{i:02d}"])
    first = _luigi(env, "LoadAll", "--mode", "full", "--local-scheduler")
    _o, e = first.communicate(timeout=600)
    assert first.returncode == 0, e[-2000:]
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    code = ("import sys; from cbm_luigi.cli import main; sys.exit(main(sys.argv[1:]))")
    pager = subprocess.Popen([sys.executable, "-c", code, "summary"], cwd=env.home, env=subprocess_env(env),
                             stdout=w, stderr=subprocess.PIPE, text=True)
    os.close(w)
    try:
        time.sleep(4)  # the summary has read its rows and printed the first screen; the pager reads no further
        assert pager.poll() is None, "the summary did not fill the pipe"
        on_source(env, "UPDATE produit SET libelle = 'changed', dat_mod = date('now') "
                  "WHERE cod_pro = (SELECT min(cod_pro) FROM produit)")
        night = _luigi(env, "LoadAll", "--mode", "incremental", "--batch-tag", "later", "--local-scheduler",
                       T_LOCK="10")
        _o, err = night.communicate(timeout=300)
    finally:
        with os.fdopen(r, "rb") as f:  # the operator quits the pager
            f.read()
        pager.wait(30)
    assert night.returncode == 0, f"exit {night.returncode}: {err[-1200:]}"
    assert_ods_equals_source(env, "produit")

