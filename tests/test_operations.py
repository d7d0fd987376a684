"""Operating the pipeline: the luigi command line and its exit codes, a real luigid, a kill in the middle of
a merge, duplicate keys, critical tables, forcing a reload."""
from __future__ import annotations

import json
import sqlite3
from datetime import date, timedelta
import os
import signal
import sys
import re
import subprocess
import time
import urllib.parse
import urllib.request

import duckdb
import luigi
import pytest

from cbm_luigi import demo_source
from cbm_luigi.cli import main as cbm_etl
from cbm_luigi.tasks import LoadAll, LoadTable

from .conftest import (DEMO_TABLES, REPO, assert_ods_equals_source, build, last_error, make_env, on_source, running_luigid,
                       subprocess_env, succeeded)


def luigi_cli(env, *args, extra=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(["luigi", "--module", "cbm_luigi", *args], cwd=env.home, env=subprocess_env(env, **(extra or {})),
                          capture_output=True, text=True, timeout=timeout)


def _validated(env, batch: str) -> set[str]:
    return {r[0] for r in env.sql("SELECT TableName FROM etl.ETL_Markers WHERE Step = 'validate' AND BatchId = ?",
                                  [batch])}


def test_cli_exit_codes(env):
    ok = luigi_cli(env, "LoadTable", "--table", "produit", "--mode", "full", "--local-scheduler")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert_ods_equals_source(env, "produit")
    # a wrong key makes duplicates: the task fails and cron sees exit code 30 ([retcode] task_failed)
    env.sql("UPDATE config.ETL_Tables SET PrimaryKeyCols = 'num_cde' WHERE TableName = 'lignecli'")
    bad = luigi_cli(env, "LoadTable", "--table", "lignecli", "--mode", "full", "--local-scheduler")
    assert bad.returncode == 30, bad.stderr[-3000:]
    err = env.sql("SELECT ErrorMessage FROM etl.ETL_Log WHERE TableName = 'lignecli' AND Status = 'FAILED'")
    assert len(err) == 1
    assert "duplicate keys" in err[0][0] and "num_cde=1000" in err[0][0] and "(4 rows)" in err[0][0]
    assert env.sql("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'ods' "
                   "AND table_name = 'lignecli'")[0][0] == 0  # nothing merged
    # the pipeline's own lines reach the run's log with time and level: Luigi sets up only its logger, and they
    # were dropped (INFO) or bare (warnings) under the `luigi` command (found in review)
    rows = env.sql("SELECT COUNT(*) FROM ods.produit")[0][0]
    assert re.search(rf"^\d{{4}}-\d\d-\d\d [\d:,]+ INFO cbm_luigi\.extract: extract produit: {rows} rows in ",
                     ok.stderr, re.M), ok.stderr[-3000:]
    assert re.search(r"^\d{4}-\d\d-\d\d [\d:,]+ INFO cbm_luigi\.extract: extract lignecli \(full mode\): SELECT ",
                     bad.stderr, re.M), bad.stderr[-3000:]


def test_through_real_luigid(env, tmp_path):
    with running_luigid(env, tmp_path) as port:
        base = f"http://127.0.0.1:{port}/api"
        run = luigi_cli(env, "LoadAll", "--mode", "full", "--scheduler-host", "127.0.0.1", "--scheduler-port",
                        str(port))
        assert run.returncode == 0, run.stderr[-3000:]

        def task_list(status: str) -> dict:
            q = urllib.parse.quote(json.dumps({"status": status}))
            return json.load(urllib.request.urlopen(f"{base}/task_list?data={q}", timeout=5))["response"]

        done = task_list("DONE")
        families = [t["name"] for t in done.values()]
        for fam in ("ExtractParquet", "StageTable", "MergeOds", "ValidateTable"):
            assert families.count(fam) == len(DEMO_TABLES), fam
        assert families.count("LoadAll") == 1
        assert task_list("FAILED") == {}
        for t in DEMO_TABLES:
            assert_ods_equals_source(env, t)


def _business_snapshot(env) -> dict[str, list[tuple]]:
    snap = {}
    with env.con() as c:
        for t in DEMO_TABLES:
            cols = [r[0] for r in c.execute("SELECT column_name FROM information_schema.columns WHERE table_schema"
                                            " = 'ods' AND table_name = ? ORDER BY ordinal_position", [t]).fetchall()
                    if r[0] not in ("_etl_run_id", "_etl_loaded_at", "_etl_inserted_at", "_etl_updated_at",
                                    "_etl_valid_from", "_etl_valid_to", "_etl_deleted_at")]
            sel = ", ".join(f'"{c}"' for c in cols)
            snap[t] = c.execute(f'SELECT {sel} FROM ods."{t}" ORDER BY ALL').fetchall()
    return snap


def _load_all_signalled_at(env, tmp_path, checkpoint: str, sig: int, wait_s: float) -> int | None:
    """`luigi ... LoadAll --mode full` in a process of its own, sent `sig` once it reaches fault checkpoint
    `checkpoint` (faults.py); its exit code, or None if it still ran `wait_s` seconds later (then killed)."""
    pause = tmp_path / "paused"
    proc = subprocess.Popen(["luigi", "--module", "cbm_luigi", "LoadAll", "--mode", "full", "--local-scheduler"],
                            cwd=env.home, env=subprocess_env(env, CBM_PAUSE_AT=checkpoint, CBM_PAUSE_FILE=str(pause)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if pause.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert pause.exists(), f"the run never reached checkpoint {checkpoint}"
        os.kill(proc.pid, sig)
        try:
            return proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("step", ["stage", "merge"])
def test_kill_in_the_middle_of_a_step_then_rerun(env, tmp_path, monkeypatch, step):
    # SIGKILL inside the step's open transaction
    assert _load_all_signalled_at(env, tmp_path, step, signal.SIGKILL, 10) is not None
    # the killed step left nothing: no marker for it (nor, for a stage, a record of what stg holds)
    assert env.sql("SELECT COUNT(*) FROM etl.ETL_Markers WHERE Step = ?", [step])[0][0] == 0
    if step == "stage":
        assert env.sql("SELECT COUNT(*) FROM etl.ETL_TableState")[0][0] == 0
    rerun = luigi_cli(env, "LoadAll", "--mode", "full", "--local-scheduler")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    killed = _business_snapshot(env)

    clean = make_env(tmp_path / "clean", monkeypatch)
    assert succeeded(build(LoadAll(mode="full")))
    assert _business_snapshot(clean) == killed


def test_critical_failure_stops_later_tables_unless_continue_on_error(env):
    # client (critical, priority 30) fails at extract: a broken filter
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_column = 1' WHERE TableName = 'client'")
    result = build(LoadAll(mode="full"))
    assert not succeeded(result)
    loaded = {r[0] for r in env.sql("SELECT DISTINCT TableName FROM etl.ETL_Markers WHERE Step = 'validate'")}
    assert loaded == {"famille", "fournis"}  # before client; produit, lignecli, hisprixa were stopped
    err = env.sql("SELECT ErrorMessage FROM etl.ETL_Log WHERE TableName = 'client' AND Status = 'FAILED'")[0][0]
    assert "PUB.client" in err and "no_such_column" in err
    result = build(LoadAll(mode="full", continue_on_error=True))
    assert not succeeded(result)  # client still fails ...
    loaded = {r[0] for r in env.sql("SELECT DISTINCT TableName FROM etl.ETL_Markers WHERE Step = 'validate'")}
    assert loaded == set(DEMO_TABLES) - {"client"}  # ... but the others are loaded, same task ids


def test_a_night_stopped_by_a_critical_failure_names_the_tables_it_did_not_load(env):
    """A critical table that fails stops the tables after it. The night exited 30 naming the failed table, but
    the tables it stopped were named nowhere: Luigi's summary counts them ('had failed dependencies') and hides
    every parameter of such tasks (found in review). The failure names them."""
    assert luigi_cli(env, "LoadAll", "--mode", "full", "--batch-date", "2026-11-27",
                     "--local-scheduler").returncode == 0
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_column = 1' WHERE TableName = 'client'")
    night = luigi_cli(env, "LoadAll", "--mode", "incremental", "--batch-date", "2026-11-28", "--local-scheduler")
    assert night.returncode == 30, night.stderr[-3000:]
    loaded = _validated(env, "2026-11-28")
    assert loaded == {"famille", "fournis"}  # client failed; produit, lignecli, hisprixa were stopped
    said = re.search(r"table client failed \(extract\): 3 table\(s\) that wait for it are not loaded in batch "
                     r"2026-11-28: (.*)", night.stderr)
    assert said, night.stderr[-3000:]
    assert said.group(1) == ("produit, lignecli, hisprixa (--continue-on-error loads produit, lignecli, hisprixa "
                             "anyway)")


HELD = re.compile(r"table client failed \((\w+)\): (\d+) table\(s\) that wait for it are not loaded in batch "
                  r"(\S+): (.*)")


def _held(stderr: str) -> list[str]:
    """The tables the failure line names ([] when there is no such line)."""
    said = HELD.search(stderr)
    if not said:
        return []
    return [t.strip() for t in said.group(4).split(" (--continue-on-error")[0].split(",")]


def test_a_filtered_run_does_not_name_tables_it_never_asked_for(env):
    """`LoadAll --filter client,famille` (the way an operator reruns a few tables) asks for two tables. client
    (critical, Priority 30) fails; the failure line then says that produit, lignecli and hisprixa 'wait for it
    [and] are not loaded in batch ...': waiting_for walks every active table of config.ETL_Tables, not the
    tables of the run. They were never part of it; the line (the one the pager / triage reads, and OPERATIONS
    says: 'fix T, then rerun the same command') announces three tables held back that the same command will
    never load."""
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_column = 1' WHERE TableName = 'client'")
    run = luigi_cli(env, "LoadAll", "--mode", "full", "--batch-date", "2026-11-28", "--filter", "client,famille",
                    "--local-scheduler")
    assert run.returncode == 30, run.stderr[-3000:]
    asked = {r[0] for r in env.sql("SELECT DISTINCT TableName FROM etl.ETL_Log WHERE BatchId = '2026-11-28'")}
    assert asked == {"client", "famille"}  # produit, lignecli, hisprixa were never part of this run
    named = _held(run.stderr)
    assert not set(named) - asked, f"the failure names tables the run never asked for: {named}"


def test_a_rerun_does_not_name_tables_this_batch_already_loaded(env):
    """The night (no --continue-on-error) stops at client; OPERATIONS' row for the message says
    '--continue-on-error loads those a critical table stopped': the operator does so, and produit, lignecli,
    hisprixa are loaded and validated in the batch. The next run of the night command (the cron's retry, or the
    operator's 'rerun the same command' while client is still broken) fails on client again and logs
    '3 table(s) that wait for it are not loaded in batch B: produit, lignecli, hisprixa': they are loaded in B
    (Luigi did not even ask for client on their behalf: they were complete). The list comes from the
    configuration only, never from what the batch holds."""
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_column = 1' WHERE TableName = 'client'")
    night = luigi_cli(env, "LoadAll", "--mode", "full", "--batch-date", "2026-11-28", "--local-scheduler")
    assert night.returncode == 30 and _held(night.stderr) == ["produit", "lignecli", "hisprixa"]
    rescue = luigi_cli(env, "LoadAll", "--mode", "full", "--batch-date", "2026-11-28", "--continue-on-error",
                       "--local-scheduler")
    assert rescue.returncode == 30, rescue.stderr[-3000:]
    loaded = _validated(env, "2026-11-28")
    assert loaded == {"famille", "fournis", "produit", "lignecli", "hisprixa"}
    retry = luigi_cli(env, "LoadAll", "--mode", "full", "--batch-date", "2026-11-28", "--local-scheduler")
    assert retry.returncode == 30, retry.stderr[-3000:]
    named = _held(retry.stderr)
    assert not set(named) & loaded, f"the failure says {named} are not loaded in the batch; they are: {loaded}"


def test_a_filtered_run_names_the_tables_it_pulled_in_that_the_failure_kept_from_loading(env):
    """`LoadAll --filter lignecli` pulls in client and produit: lignecli waits for the critical tables before it,
    and produit (critical) for client (critical). client fails: produit is not loaded either, and the same
    command loads it once client is fixed, so the failure names it (found in review: only the --filter tables
    were named)."""
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_column = 1' WHERE TableName = 'client'")
    run = luigi_cli(env, "LoadAll", "--mode", "full", "--batch-date", "2026-11-28", "--filter", "lignecli",
                    "--local-scheduler")
    assert run.returncode == 30, run.stderr[-3000:]
    loaded = _validated(env, "2026-11-28")
    assert loaded == set()
    # client was run by this command on lignecli's behalf (it is in this run, though not in --filter) ...
    ran = {r[0] for r in env.sql("SELECT DISTINCT TableName FROM etl.ETL_Log WHERE BatchId = '2026-11-28'")}
    assert ran == {"client"}
    # ... and so was produit, which waits for client: Luigi counts two tasks held back by the failure
    assert re.search(r"2 had failed dependencies", run.stderr), run.stderr[-3000:]
    # once client is fixed, the same command loads produit too
    env.sql("UPDATE config.ETL_Tables SET FilterClause = NULL WHERE TableName = 'client'")
    rerun = luigi_cli(env, "LoadAll", "--mode", "full", "--batch-date", "2026-11-28", "--filter", "lignecli",
                      "--local-scheduler")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    loaded = _validated(env, "2026-11-28")
    assert loaded == {"client", "produit", "lignecli"}
    named = _held(run.stderr)
    assert named == ["produit", "lignecli"], (
        f"the failure line names {named}; this run also left produit unloaded (and its rerun loaded it)")


def test_continue_on_error_loads_every_table_the_failure_line_says_it_loads(env):
    """lignecli waits for client twice: client is critical and before it, and config.ETL_Dependencies says
    lignecli depends on client. The line promised that --continue-on-error loads 'the others', lignecli included,
    which that rerun left unloaded (found in review): it names those it loads."""
    env.sql("INSERT INTO config.ETL_Dependencies (TableName, DependsOn) VALUES ('lignecli', 'client')")
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_column = 1' WHERE TableName = 'client'")
    night = luigi_cli(env, "LoadAll", "--mode", "full", "--batch-date", "2026-11-28", "--local-scheduler")
    assert night.returncode == 30, night.stderr[-3000:]
    said = HELD.search(night.stderr)
    assert said and said.group(4) == ("produit, lignecli, hisprixa (--continue-on-error loads produit, hisprixa "
                                      "anyway)"), night.stderr[-3000:]
    rescue = luigi_cli(env, "LoadAll", "--mode", "full", "--batch-date", "2026-11-28", "--continue-on-error",
                       "--local-scheduler")
    assert rescue.returncode == 30, rescue.stderr[-3000:]
    assert _validated(env, "2026-11-28") == {"famille", "fournis", "produit", "hisprixa"}
    assert _held(rescue.stderr) == ["lignecli"] and "(--continue-on-error loads" not in rescue.stderr


def test_the_tables_waiting_for_a_failed_one_follow_the_edges_a_load_follows():
    from cbm_luigi.config_store import freed_by_continue_on_error, in_run, waiting_for, waits_for

    tables = [{"TableName": n, "Priority": p, "IsCritical": c} for n, p, c in
              [("d", 5, False), ("a", 10, True), ("b", 20, False), ("c", 30, False)]]
    deps = {"a": ["d"], "c": ["b", "gone"]}  # a (critical) waits for d, which is exempt from waiting for a
    assert waits_for("d", tables, deps, critical_stops=True) == []
    assert waits_for("c", tables, deps, critical_stops=True) == ["b", "a"]
    assert waits_for("c", tables, deps, critical_stops=False) == ["b"]
    assert waiting_for("d", tables, deps, critical_stops=True) == ["a", "b", "c"]
    assert waiting_for("a", tables, deps, critical_stops=True) == ["b", "c"]
    assert waiting_for("a", tables, deps, critical_stops=False) == []
    assert waiting_for("b", tables, deps, critical_stops=False) == ["c"]
    # d is not critical, but a (critical) waits for it, and b and c wait for a only by its place in Priority (c
    # also depends on b, which loads then)
    assert freed_by_continue_on_error("d", tables, deps) == freed_by_continue_on_error("a", tables, deps) == {"b", "c"}
    assert freed_by_continue_on_error("b", tables, deps) == set()  # c depends on b
    assert in_run(["c"], tables, deps, critical_stops=True) == {"a", "b", "c", "d"}
    assert in_run(["c"], tables, deps, critical_stops=False) == {"b", "c"}


def test_invalidate_forces_one_table_to_reload(env):
    assert succeeded(build(LoadTable(table="famille", mode="full")))
    with sqlite3.connect(env.source) as con:
        con.execute("UPDATE famille SET libelle = 'abîmé' WHERE cod_fam = 'F001'")
    assert succeeded(build(LoadTable(table="famille", mode="full")))  # same batch: complete, nothing runs
    assert env.sql("SELECT libelle FROM ods.famille WHERE cod_fam = 'F001'")[0][0] != "abîmé"
    assert cbm_etl(["invalidate", "famille", "--batch", date.today().isoformat()]) == 0
    assert succeeded(build(LoadTable(table="famille", mode="full")))
    assert_ods_equals_source(env, "famille")
    assert env.sql("SELECT COUNT(*) FROM etl.ETL_Log WHERE TableName = 'famille' AND Step = 'extract'")[0][0] == 2


def test_the_local_scheduler_does_not_walk_the_whole_graph_on_every_task():
    """cbm_luigi makes --local-scheduler skip prune-on-get-work, as the central scheduler does (scheduling.py)."""
    import luigi.interface

    import cbm_luigi  # noqa: F401 — importing installs it

    sched = luigi.interface._WorkerSchedulerFactory().create_local_scheduler()
    assert sched._config.prune_on_get_work is False and sched._config.record_task_history is False


def test_dependencies_load_first_an_inactive_one_is_not_loaded_and_a_cycle_is_named(env, caplog):
    # famille (priority 10) is made to wait for lignecli (priority 50): it is validated after it
    env.sql("INSERT INTO config.ETL_Dependencies (TableName, DependsOn) VALUES ('famille', 'lignecli')")
    assert succeeded(build(LoadTable(table="famille", mode="full")))
    order = [r[0] for r in env.sql("SELECT TableName FROM etl.ETL_Log WHERE Step = 'validate' ORDER BY LogId")]
    assert order == ["lignecli", "famille"]
    # a dependency on an inactive table: not loaded, said once
    env.sql("UPDATE config.ETL_Tables SET IsActive = FALSE WHERE TableName = 'hisprixa'")
    env.sql("INSERT INTO config.ETL_Dependencies (TableName, DependsOn) VALUES ('fournis', 'hisprixa')")
    assert succeeded(build(LoadTable(table="fournis", mode="full")))
    assert env.sql("SELECT COUNT(*) FROM etl.ETL_Log WHERE TableName = 'hisprixa'") == [(0,)]
    assert any("fournis depends on 'hisprixa', which is not an active table" in m for m in caplog.messages)
    # a cycle: each table would wait for the other forever; the error names the rows
    env.sql("INSERT INTO config.ETL_Dependencies (TableName, DependsOn) VALUES ('lignecli', 'produit'), "
            "('produit', 'lignecli')")
    caplog.clear()
    assert not succeeded(build(LoadTable(table="produit", mode="full", batch_tag="cycle")))
    assert any("config.ETL_Dependencies has a cycle: produit -> lignecli -> produit" in m for m in caplog.messages)
    # the step never ran, yet the table must page: a FAILED row says it could not be scheduled (found in review:
    # the views showed produit OK)
    row = env.sql("SELECT Step, Status, Detail, ErrorMessage FROM etl.ETL_Log WHERE TableName = 'produit' "
                  "ORDER BY LogId DESC LIMIT 1")[0]
    assert row[:3] == ("extract", "FAILED", "failed while scheduling: the step did not run") and "cycle" in row[3]
    assert env.sql("SELECT SLAStatus FROM etl.vw_SLABreach WHERE TableName = 'produit'") == [("FAILING",)]


def test_a_critical_table_waiting_for_a_later_table_does_not_stall_the_batch(env, caplog):
    """client (critical, priority 30) waits for lignecli (priority 50), spelled in another case: lignecli must not
    wait for client in turn (critical tables stop the later ones), or Luigi leaves the whole run pending."""
    env.sql("INSERT INTO config.ETL_Dependencies (TableName, DependsOn) VALUES ('client', 'LigneCli')")
    assert succeeded(build(LoadAll(mode="full")))
    order = [r[0] for r in env.sql("SELECT TableName FROM etl.ETL_Log WHERE Step = 'validate' ORDER BY LogId")]
    assert sorted(order) == sorted(DEMO_TABLES) and order.index("lignecli") < order.index("client")
    assert not any("not an active table" in m for m in caplog.messages)
    # client failing still stops the later tables that do not feed it
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_column = 1' WHERE TableName = 'client'")
    assert not succeeded(build(LoadAll(mode="full", batch_tag="b")))
    loaded = {r[0] for r in env.sql("SELECT TableName FROM etl.ETL_Log WHERE Step = 'validate' AND Status = 'SUCCESS' "
                                    "AND BatchId LIKE '%-b'")}
    assert loaded == {"famille", "fournis", "lignecli"}


def test_only_the_dependencies_a_critical_table_really_waits_for_escape_the_critical_rule(env):
    """A self row (produit -> Produit) and a link through an inactive table (client -> hisprixa -> lignecli) are
    not waited for: they must not exempt produit or lignecli from waiting for the critical tables before them."""
    env.sql("UPDATE config.ETL_Tables SET IsActive = FALSE WHERE TableName = 'hisprixa'")
    env.sql("INSERT INTO config.ETL_Dependencies (TableName, DependsOn) VALUES ('produit', 'Produit'), "
            "('client', 'hisprixa'), ('hisprixa', 'lignecli')")
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_column = 1' WHERE TableName = 'client'")
    assert not succeeded(build(LoadAll(mode="full")))
    loaded = {r[0] for r in env.sql("SELECT TableName FROM etl.ETL_Log WHERE Step = 'validate' AND Status = 'SUCCESS'")}
    assert loaded == {"famille", "fournis"}  # produit and lignecli wait for client, which failed


def test_more_than_one_worker_on_duckdb_is_refused_without_harming_the_warehouse(env):
    """Forked Luigi workers inherited the parent's open DuckDB instance (no lock error) and their writes corrupted
    the file and its WAL for good. Each forked task now stops with the way out; the warehouse stays usable."""
    r = luigi_cli(env, "LoadAll", "--mode", "full", "--local-scheduler", "--workers", "2")
    assert r.returncode != 0
    assert "Run with --workers 1" in r.stderr and "forked worker processes" in r.stderr
    rerun = luigi_cli(env, "LoadAll", "--mode", "full", "--local-scheduler", "--workers", "1")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for t in DEMO_TABLES:
        assert_ods_equals_source(env, t)


def test_the_warehouse_running_out_of_memory_is_named_with_the_setting_and_a_rerun_loads(env, monkeypatch):
    """3,000 rows of 28 KB text under an 8 MB cap: DuckDB's own error said neither the table nor the setting."""
    from cbm_luigi.demo_source import Col, TableDef

    demo_source.add_table(env.source, TableDef(
        "gros", [Col("id", "integer", nullable=False), Col("txt", "varchar", 30), Col("dat_mod", "date")], ("id",),
        [(i, f"x{i:06d}" * 4000, None) for i in range(3000)]))
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols) VALUES ('gros', 'id')")
    monkeypatch.setenv("CBM_DUCKDB_MEMORY_LIMIT", "8MB")
    assert not succeeded(build(LoadTable(table="gros", mode="full")))
    [(step, err)] = env.sql("SELECT Step, ErrorMessage FROM etl.ETL_Log WHERE Status = 'FAILED'")
    assert step == "merge" and err.startswith("MemoryError: table gros: the DuckDB warehouse ran out of memory in "
                                              "the merge, under a limit of 7.6 MiB (CBM_DUCKDB_MEMORY_LIMIT=8MB;")
    assert "Set CBM_DUCKDB_MEMORY_LIMIT to 15MB or more" in err and "Nothing was merged" in err
    assert env.sql("SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'gros' "
                   "AND table_schema = 'ods'") == [(0,)]
    monkeypatch.setenv("CBM_DUCKDB_MEMORY_LIMIT", "256MB")
    luigi.task_register.Register.clear_instance_cache()  # Luigi keeps task instances, and their settings
    assert succeeded(build(LoadTable(table="gros", mode="full")))
    assert env.sql("SELECT COUNT(*), MIN(length(txt)) FROM ods.gros") == [(3000, 28000)]


def test_ctrl_c_during_a_log_write_stops_the_run(env, tmp_path):
    """The log is written from Luigi event callbacks, which return quietly on a KeyboardInterrupt: a Ctrl-C that
    lands there stopped nothing (found in review). It now stops the run as anywhere else, before any later step."""
    # the operator's Ctrl-C, inside the first log write (famille's extract)
    code = _load_all_signalled_at(env, tmp_path, "log", signal.SIGINT, 90)  # 90 s: a busy machine
    assert code is not None and code != 0, "the run went on after Ctrl-C"
    # nothing after the interrupted extract's log write ran: no table was staged
    assert env.sql("SELECT COUNT(*) FROM etl.ETL_Markers WHERE Step <> 'extract'")[0][0] == 0
    rerun = luigi_cli(env, "LoadAll", "--mode", "full", "--local-scheduler")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert env.sql("SELECT COUNT(*) FROM etl.ETL_Markers WHERE Step = 'validate'")[0][0] == len(DEMO_TABLES)


CTRL_C_RUNNER = r"""
import os, signal, sys, threading
import cbm_luigi.warehouse.duckdb_wh as wh
_done = []
def _slow_then(orig):
    def run(self, sql, params=None):
        if not _done and f'"{os.environ["T_TABLE"]}"' in sql and 'ods' in sql:
            _done.append(sql)
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
            orig(self, "SELECT count(*) FROM range(4000000000) AS r(i) WHERE i % 7 = 3")
        return orig(self, sql, params)
    return run
wh.DuckDbSession.execute = _slow_then(wh.DuckDbSession.execute)
wh.DuckDbSession.query = _slow_then(wh.DuckDbSession.query)
from luigi.cmdline import luigi_run
luigi_run(sys.argv[1:])
"""


def test_ctrl_c_while_duckdb_runs_a_warehouse_statement_stops_the_run(env):
    """The operator presses Ctrl-C while the merge of famille (the first table) runs a DuckDB statement. DuckDB's
    Python client takes the SIGINT, interrupts the statement and raises `RuntimeError: Query interrupted` (no
    KeyboardInterrupt is left): Luigi counted it as the table's failure and went on loading every other table,
    and the run ended with exit 30 ('a task failed') (found in review: random kills). The warehouse session now
    raises it as the KeyboardInterrupt it is. A Ctrl-C that lands in a log write stops the run
    (test_operations.test_ctrl_c_during_a_log_write_stops_the_run); one that lands in DuckDB, where a load spends
    most of its time, should too."""
    p = subprocess.run([sys.executable, "-c", CTRL_C_RUNNER, "--module", "cbm_luigi", "LoadAll", "--mode", "full",
                        "--local-scheduler"], cwd=env.home, env=subprocess_env(env, T_TABLE="famille"),
                       capture_output=True, text=True, timeout=300)
    later = [r[0] for r in env.sql("SELECT DISTINCT TableName FROM etl.ETL_Markers WHERE Step = 'validate' "
                                   "ORDER BY 1")]
    logged = env.sql("SELECT TableName, Step, ErrorMessage FROM etl.ETL_Log WHERE Status = 'FAILED'")
    assert not later, (f"after the Ctrl-C (exit {p.returncode}) the run went on and loaded {later}; etl.ETL_Log "
                       f"holds the interrupted step as an ordinary failure: {logged}")
    assert p.returncode != 30, p.stderr[-2000:]
    rerun = luigi_cli(env, "LoadAll", "--mode", "full", "--local-scheduler")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_ods_equals_source(env, "famille")


EXTRACT_CTRL_C_RUNNER = r"""
import os, signal, sys, threading
import cbm_luigi.transform as tf
_done = []
_orig = tf.transform_sql
def slow(plan, source_sql):
    sql = _orig(plan, source_sql)
    if _done or plan.table != os.environ["T_TABLE"]:
        return sql
    _done.append(plan.table)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    # DuckDB is inside this long scalar subquery when the SIGINT comes: the Ctrl-C lands in its C code
    return f"SELECT * FROM ({sql}) WHERE (SELECT count(*) FROM range(4000000000) AS r(i) WHERE i % 7 = 3) >= 0"
tf.transform_sql = slow
from luigi.cmdline import luigi_run
luigi_run(sys.argv[1:])
"""


def test_ctrl_c_while_duckdb_shapes_an_extract_stops_the_run(env):
    """The operator presses Ctrl-C while DuckDB shapes famille's batch (the extract's COPY, on the extract's own
    DuckDB engine, not the warehouse's session). DuckDB interrupts the COPY and raises `Query interrupted`: the
    extract reported it as a failed shaping ("free space in CBM_CACHE_DIR?") and Luigi went on with every other
    table (left from the random-kill review, checked here). It stops the run as the KeyboardInterrupt it is."""
    p = subprocess.run([sys.executable, "-c", EXTRACT_CTRL_C_RUNNER, "--module", "cbm_luigi", "LoadAll", "--mode",
                        "full", "--local-scheduler"], cwd=env.home, env=subprocess_env(env, T_TABLE="famille"),
                       capture_output=True, text=True, timeout=300)
    later = [r[0] for r in env.sql("SELECT DISTINCT TableName FROM etl.ETL_Markers ORDER BY 1")]
    logged = env.sql("SELECT TableName, Step, ErrorMessage FROM etl.ETL_Log WHERE Status = 'FAILED'")
    assert not later, (f"after the Ctrl-C (exit {p.returncode}) the run went on: markers of {later}; etl.ETL_Log "
                       f"holds the interrupted extract as an ordinary failure: {logged}")
    assert p.returncode != 30, p.stderr[-2000:]
    assert not any("shaping the batch" in (e or "") for _t, _s, e in logged), logged
    rerun = luigi_cli(env, "LoadAll", "--mode", "full", "--local-scheduler")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_ods_equals_source(env, "famille")


def test_a_run_with_another_time_zone_is_stopped_before_reading_and_the_source_timezone_setting_fixes_it(env):
    """cron with another TZ than the runs before (found in review): every table was refused as outdated, and
    the advised invalidate did not help; a zone ahead would have moved LastSuccessTs past rows not read yet.
    The run stops before reading and names the setting; with CBM_SOURCE_TIMEZONE every run counts in one zone
    whatever its TZ."""
    far = "Pacific/Kiritimati"  # UTC+14 all year
    ok = luigi_cli(env, "LoadTable", "--table", "famille", "--mode", "full", "--local-scheduler", extra={"TZ": "UTC"})
    assert ok.returncode == 0, ok.stderr[-3000:]
    [(ts, utc)] = env.sql("SELECT LastSuccessTs, LastSuccessUtc FROM config.ETL_Tables WHERE TableName = 'famille'")
    moved = luigi_cli(env, "LoadTable", "--table", "famille", "--mode", "incremental", "--batch-tag", "tz",
                      "--local-scheduler", extra={"TZ": far})
    assert moved.returncode == 30, moved.stderr[-3000:]
    [(err,)] = env.sql("SELECT ErrorMessage FROM etl.ETL_Log WHERE Status = 'FAILED'")
    assert re.search(r"^ConfigError: table famille: this run counts local time at UTC\+14:00, the loads before it "
                     r"at UTC\+00:00 .* Nothing was read\. .* set CBM_SOURCE_TIMEZONE in \.env to the ERP's zone",
                     err), err
    assert env.sql("SELECT LastSuccessTs, LastSuccessUtc FROM config.ETL_Tables WHERE TableName = 'famille'") == [
        (ts, utc)]
    # the host's zone named once for all: the same run in the far TZ loads, and counts in that zone
    fixed = luigi_cli(env, "LoadTable", "--table", "famille", "--mode", "incremental", "--batch-tag", "tz",
                      "--local-scheduler", extra={"TZ": far, "CBM_SOURCE_TIMEZONE": "UTC"})
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    [(ts2, utc2)] = env.sql("SELECT LastSuccessTs, LastSuccessUtc FROM config.ETL_Tables WHERE TableName = 'famille'")
    assert ts2 > ts and abs((ts2 - utc2) - (ts - utc)) < timedelta(minutes=1)
    assert_ods_equals_source(env, "famille")


def test_a_source_timezone_set_after_runs_in_another_zone_is_named_as_the_cause(env):
    """A site that ran in the host's zone (UTC) sets CBM_SOURCE_TIMEZONE to the ERP's, as the template advises: the
    next run stops, as it must (its window would move), but the message told the operator to set
    CBM_SOURCE_TIMEZONE, which was just done, and never named it: following it changed nothing (found in review,
    reading the documents as a new operator). It names the setting and its value as what differs now."""
    ok = luigi_cli(env, "LoadTable", "--table", "famille", "--mode", "full", "--local-scheduler", extra={"TZ": "UTC"})
    assert ok.returncode == 0, ok.stderr[-3000:]
    run = luigi_cli(env, "LoadTable", "--table", "famille", "--mode", "incremental", "--batch-tag", "tz",
                    "--local-scheduler", extra={"TZ": "UTC", "CBM_SOURCE_TIMEZONE": "Asia/Tokyo"})
    assert run.returncode == 30, run.stderr[-3000:]
    [(err,)] = env.sql("SELECT ErrorMessage FROM etl.ETL_Log WHERE Status = 'FAILED'")
    assert "counts local time at UTC+09:00 (Asia/Tokyo), the loads before it at UTC+00:00" in err, err
    assert "CBM_SOURCE_TIMEZONE=Asia/Tokyo is not the zone the earlier runs counted in" in err, err
    assert "TZ in cron" not in err and "to the ERP's zone (e.g. Europe/Paris)" not in err, err
    # following it: the earlier runs' zone set, the run loads
    again = luigi_cli(env, "LoadTable", "--table", "famille", "--mode", "incremental", "--batch-tag", "tz2",
                      "--local-scheduler", extra={"TZ": "Asia/Tokyo", "CBM_SOURCE_TIMEZONE": "UTC"})
    assert again.returncode == 0, again.stderr[-3000:]


@pytest.mark.parametrize("column, shift", [("LastSuccessTs", -timedelta(days=3)),  # moved back to read again
                                           ("LastSuccessUtc", -timedelta(days=2))])  # an older cbm_luigi's write
def test_the_clock_check_takes_no_hand_edit_for_a_zone_change(env, column, shift):
    """It compares what the validation alone records (found in review: it compared LastSuccessTs with
    LastSuccessUtc, and a LastSuccessTs moved back by hand to read a window again stopped every run)."""
    assert succeeded(build(LoadTable(table="fournis", mode="full", batch_tag="a")))
    env.sql(f"UPDATE config.ETL_Tables SET {column} = {column} + ? WHERE TableName = 'fournis'", [shift])
    assert succeeded(build(LoadTable(table="fournis", mode="incremental", batch_tag="b")))
    if column == "LastSuccessTs":  # the window moved back with it
        detail = env.sql("SELECT Detail FROM etl.ETL_Log WHERE Step = 'extract' AND BatchId LIKE '%-b'")[0][0]
        assert detail.startswith("rows with dat_mod >= "), detail


def test_a_logging_conf_file_gets_each_pipeline_line_once(env, tmp_path):
    """Luigi builds the command line's task before it sets up logging: a handler added then doubled every line
    under a logging_conf_file that configures the root logger (found in review)."""
    conf = tmp_path / "logging.conf"
    conf.write_text("[loggers]\nkeys=root\n[handlers]\nkeys=h\n[formatters]\nkeys=f\n"
                    "[logger_root]\nlevel=INFO\nhandlers=h\n"
                    "[handler_h]\nclass=StreamHandler\nlevel=INFO\nformatter=f\nargs=(sys.stderr,)\n"
                    "[formatter_f]\nformat=MINE %(name)s %(message)s\n")
    r = luigi_cli(env, "LoadTable", "--table", "famille", "--mode", "full", "--local-scheduler",
                  "--logging-conf-file", str(conf))
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if "extract famille: " in line and " rows in " in line]
    assert lines and all(line.startswith("MINE cbm_luigi.extract ") for line in lines) and len(lines) == 1, lines


def test_the_pipeline_lines_follow_luigis_log_level(env):
    """`luigi --log-level WARNING` quiets the pipeline's lines as it does Luigi's (found in review: each
    extract's SQL still reached cron's mail)."""
    quiet = luigi_cli(env, "LoadTable", "--table", "famille", "--mode", "full", "--local-scheduler",
                      "--log-level", "WARNING")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert " INFO cbm_luigi." not in quiet.stderr, quiet.stderr[-2000:]
    loud = luigi_cli(env, "LoadTable", "--table", "famille", "--mode", "full", "--batch-tag", "again",
                     "--local-scheduler")
    assert " INFO cbm_luigi.extract: extract famille: " in loud.stderr, loud.stderr[-2000:]


def test_a_batch_already_loaded_says_so_when_run_again(env):
    """A cron started before midnight and rerun the next morning without --batch-date makes the rerun the next
    day's batch; that night's cron finds it complete and reads nothing. It exits 0 (a rerun of a done batch is
    no failure) but says so in the log the cron mails, with the way to rerun a given night (found in review)."""
    first = luigi_cli(env, "LoadAll", "--mode", "incremental", "--batch-date", "2026-11-25", "--local-scheduler")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "was loaded by an earlier run" not in first.stderr
    rows = env.sql("SELECT COUNT(*) FROM etl.ETL_Log")[0][0]
    again = luigi_cli(env, "LoadAll", "--mode", "incremental", "--batch-date", "2026-11-25", "--local-scheduler")
    assert again.returncode == 0, again.stderr[-2000:]
    assert env.sql("SELECT COUNT(*) FROM etl.ETL_Log")[0][0] == rows  # nothing was read or written
    line = next(ln for ln in again.stderr.splitlines() if "was loaded by an earlier run" in ln)
    assert "WARNING" in line and "batch 2026-11-25 (incremental)" in line and "--batch-date" in line, line


def task_states(port: int) -> dict[str, str]:
    out = {}
    for status in ("DONE", "FAILED", "PENDING", "RUNNING", "DISABLED"):
        q = urllib.parse.quote(json.dumps({"status": status}))
        resp = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/task_list?data={q}", timeout=5))
        for tid, t in resp["response"].items():
            out[tid] = (t["name"], t["params"].get("table"), status)
    return out


def cli(env, port, *args):
    return luigi_cli(env, *args, "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port))


def test_the_same_command_rerun_right_after_a_refused_batch_reads_the_table_again_under_luigid(env, tmp_path):
    """The refused batch's message says "the same command reads the table from Progress again"; under the nightly's
    real luigid too, right away: luigid's stable_done_cooldown_secs (10 s by default, 0 in luigi.cfg) kept the
    extract and stage DONE, and the rerun failed with 'Unfulfilled dependency at run time' (found in review)."""
    env.sql("UPDATE config.ETL_Tables SET PrimaryKeyCols = 'cod_pro,gencod_v' WHERE TableName = 'produit'")
    today = date.today().isoformat()
    on_source(env, "UPDATE produit SET gencod_v = 'G' || cod_pro, dat_mod = ? WHERE gencod_v IS NULL AND cod_pro <> "
               "'P00001'", params=[today])
    on_source(env, "UPDATE produit SET gencod_v = NULL WHERE cod_pro = 'P00001'")
    with running_luigid(env, tmp_path) as port:
        first = cli(env, port, "LoadTable", "--table", "produit")
        assert first.returncode == 30, first.stderr[-3000:]
        assert last_error(env, "produit").startswith("NullKeyError")
        on_source(env, "UPDATE produit SET gencod_v = 'G1', dat_mod = ? WHERE cod_pro = 'P00001'", params=[today])
        rerun = cli(env, port, "LoadTable", "--table", "produit")  # the fix was quick (or a scripted retry)
        err = last_error(env, "produit")
        assert "Unfulfilled dependency" not in err, err
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert_ods_equals_source(env, "produit")
        states = {(n, s) for n, _t, s in task_states(port).values()}
        assert ("MergeOds", "FAILED") not in states, states


def test_a_copy_of_the_warehouse_with_its_wal_shows_a_running_loads_failures(env, tmp_path):
    """OPERATIONS, Monitoring: while a load holds the DuckDB file, query a copy of the file with its WAL. The
    running load's commits are in warehouse.duckdb.wal until it closes the file: a copy of the .duckdb alone (what
    the advice said before: found in review) showed the critical table that had just failed as OK."""
    import shutil

    def start(*args, **extra):
        return subprocess.Popen(["luigi", "--module", "cbm_luigi", *args, "--local-scheduler"], cwd=env.home,
                                env=subprocess_env(env, **extra), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    assert start("LoadAll", "--mode", "full").wait(300) == 0
    # client (critical) breaks and runs first; the night goes on with --continue-on-error and is still running
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_column = 1', Priority = 5 "
            "WHERE TableName = 'client'")
    pause = tmp_path / "paused"
    proc = start("LoadAll", "--mode", "incremental", "--batch-tag", "night", "--continue-on-error",
                     CBM_PAUSE_AT="stage", CBM_PAUSE_FILE=str(pause))
    try:
        for _ in range(600):
            if pause.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert pause.exists(), "the load never reached its next stage"
        files = sorted(env.warehouse.parent.glob(env.warehouse.name + "*"))  # `cp var/warehouse.duckdb* /tmp/`
        assert env.warehouse.with_name(env.warehouse.name + ".wal") in files
        (tmp_path / "copy").mkdir()
        for f in files:
            shutil.copy(f, tmp_path / "copy")
        with duckdb.connect(str(tmp_path / "copy" / env.warehouse.name)) as c:
            seen = c.execute("SELECT SLAStatus FROM etl.vw_SLABreach WHERE TableName = 'client'").fetchall()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    truth = env.sql("SELECT SLAStatus FROM etl.vw_SLABreach WHERE TableName = 'client'")
    assert truth == [("FAILING",)]
    assert seen == truth


def test_a_long_error_keeps_its_start_and_its_end_in_the_run_log(env, capsys):
    """etl.ETL_Log keeps up to runlog.MAX_ERROR characters of a message. Cutting its end lost the fix, which every
    message gives last (found in review); the cut is in the middle, and says how much was left out."""
    from cbm_luigi.runlog import MAX_ERROR, StepRecord, write_steps
    from cbm_luigi.settings import load_settings
    from cbm_luigi.warehouse import open_warehouse

    message = "table client, column nom, key id=1: " + "#" * 9000 + " To carry it over: exclude the column."
    write_steps(open_warehouse(load_settings()), run_id="r1", batch_id="2026-11-29", table="client", mode="full",
                task_id="t", records=[StepRecord("extract", "FAILED", error=message)])
    kept = env.sql("SELECT ErrorMessage FROM etl.ETL_Log WHERE RunId = 'r1'")[0][0]
    assert len(kept) == MAX_ERROR
    assert kept.startswith("table client, column nom, key id=1: ###")
    assert kept.endswith("### To carry it over: exclude the column.")
    left_out = int(re.search(r" \[\.\.\. ([\d,]+) characters left out \.\.\.\] ", kept).group(1).replace(",", ""))
    assert kept.count("#") + left_out == 9000  # what was left out is said exactly
    assert cbm_etl(["summary"]) == 0
    assert "To carry it over: exclude the column." in capsys.readouterr().out


def test_luigid_under_this_luigi_cfg_never_retries_a_failed_step_within_the_night(monkeypatch):
    """luigid put a FAILED step back to PENDING after [scheduler] retry_delay (300 s here, 900 s by default) and
    handed it to the night's worker again (found in review, under a real luigid, a night going on for minutes
    after a refused batch): the merge of a refused batch, whose stage the refusal had made incomplete while luigid
    kept it DONE, failed on 'Unfulfilled dependency at run time', and etl.ETL_Log, vw_LastRuns and the web view
    named that instead of the duplicate keys; the table was read twice. luigi.cfg's retry_delay < 0 turns the
    retry off: a step stays FAILED until a run asks for it again, which resets it (a same-day rerun).
    Luigi's own Scheduler (the class luigid serves) with luigi.cfg's [scheduler] section, driven as the worker
    and luigid's 60 s prune pass drive it: a real luigid would need a night of more than a minute to show it."""
    import configparser

    from luigi.scheduler import DONE, FAILED, PENDING, RUNNING, Scheduler

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "luigi.cfg")
    settings = {k: float(v) for k, v in cfg["scheduler"].items()}

    def night(**overrides):
        s = Scheduler(**{**settings, **overrides}, record_task_history=False)
        s.add_task(worker="w", task_id="StageTable_x", status=DONE)
        s.add_task(worker="w", task_id="MergeOds_x", status=FAILED, deps=["StageTable_x"], expl="duplicate keys")
        return s

    def status(s, task_id):
        return next(st for st in (FAILED, PENDING, DONE, RUNNING) if task_id in s.task_list(st, ""))

    import luigi.scheduler
    import types

    def an_hour_later():  # luigid's prune pass an hour into the night, past any retry_delay
        monkeypatch.setattr(luigi.scheduler, "time", types.SimpleNamespace(time=lambda: time.time() + 3600))

    luigis_default = night(retry_delay=900)  # what luigid does without this luigi.cfg: the retry this test guards
    s = night()
    an_hour_later()
    luigis_default.prune()
    assert status(luigis_default, "MergeOds_x") == PENDING

    s.prune()
    assert status(s, "MergeOds_x") == FAILED
    assert s.get_work(worker="w")["task_id"] is None  # the night's worker is not handed the step again
    s.add_task(worker="rerun", task_id="MergeOds_x", status=PENDING)  # the operator's rerun asks for it again
    assert status(s, "MergeOds_x") == PENDING


def test_a_status_message_the_scheduler_cannot_take_does_not_fail_the_table(env, monkeypatch, caplog):
    """The extract reports the rows read so far to the scheduler; luigid unreachable (restarted during the night)
    raised Luigi's RPCError inside the extract, and the table failed as "source table PUB.produit: extract failed.
    Driver said: Errors (3 attempts) when connecting to remote scheduler": the operator was sent to the Progress
    server (found in review). The scheduler's refusal is injected (its method raises what RemoteScheduler raises
    after its retries); the message is sent at every batch here."""
    import luigi.rpc
    import luigi.scheduler

    from cbm_luigi import extract

    monkeypatch.setattr(extract, "PROGRESS_EVERY_S", 0.0)

    calls = []

    def unreachable(self, task_id, status_message):
        calls.append(status_message)
        raise luigi.rpc.RPCError("Errors (3 attempts) when connecting to remote scheduler 'http://etl-host:8082'")

    monkeypatch.setattr(luigi.scheduler.Scheduler, "set_task_status_message", unreachable)
    assert succeeded(build(LoadTable(table="produit", mode="full")))
    assert_ods_equals_source(env, "produit")
    said = [m for m in caplog.messages if "the scheduler did not take the status message" in m]
    assert said and "RPCError: Errors (3 attempts)" in said[0] and said[0].startswith("table produit:"), said
    # once refused, the step sends no more: each try waits out Luigi's retries, about a minute (found in review)
    assert [c for c in calls if c.startswith("extract")] == ["extracting produit"], calls


def test_a_slow_status_message_is_not_followed_by_another_at_once(env, monkeypatch):
    """The extract reports at most every PROGRESS_EVERY_S, counted from the end of the report before: counted from
    its start, a report slower than that (a busy luigid, Luigi's retries) was followed by one at every batch
    (found in review). Injected: the scheduler takes 0.6 s to take a message, each batch 0.1 s to read."""
    import luigi.scheduler

    from cbm_luigi import extract
    from cbm_luigi.source import conform

    from .conftest import make_env

    env = make_env(env.home / "big", monkeypatch, scale=10)  # lignecli: 12,000 rows
    monkeypatch.setenv("CBM_BATCH_ROWS", "1000")
    monkeypatch.setattr(extract, "PROGRESS_EVERY_S", 0.5)
    real_conform, real_message = conform.conform_batch, luigi.scheduler.Scheduler.set_task_status_message
    calls = []

    def slow_read(*a, **kw):
        time.sleep(0.1)
        return real_conform(*a, **kw)

    def busy(self, task_id, status_message):
        calls.append(status_message)
        time.sleep(0.6)
        return real_message(self, task_id, status_message)

    monkeypatch.setattr(conform, "conform_batch", slow_read)  # the extract imports it at its first batch
    monkeypatch.setattr(luigi.scheduler.Scheduler, "set_task_status_message", busy)
    assert succeeded(build(LoadTable(table="lignecli", mode="full", run_id="busy")))
    progress = [c for c in calls if c.startswith("extract lignecli:")]
    assert 1 <= len(progress) <= 4, progress  # 12 batches: one report at each of them before


def test_dependency_rows_with_blanks_or_typos_are_followed_or_said(env, caplog):
    """config.ETL_Dependencies rows pasted with a trailing blank ('famille ', 'hisprixa ') or with a TableName
    typo ('famile'): the blank made the row match nothing (famille loaded before hisprixa, with a warning to
    'add or activate' hisprixa, which was active), and a row for no configured table was ignored without a word
    (found in review). Blanks around a name are no part of it; a row for no table is said, naming it."""
    from .test_config_and_evolution import _fresh
    env.sql("INSERT INTO config.ETL_Dependencies (TableName, DependsOn) VALUES ('famille ', 'hisprixa '), "
            "('famile', 'hisprixa')")
    _fresh()
    assert succeeded(build(LoadAll(mode="full", batch_tag="n1", run_id="r1")))
    order = [r[0] for r in env.sql("SELECT TableName FROM etl.ETL_Log WHERE Step = 'validate' ORDER BY LogId")]
    assert order.index("hisprixa") < order.index("famille"), order
    assert not [m for m in caplog.messages if "not an active table" in m], caplog.messages
    assert any("'famile' is no table of config.ETL_Tables" in m for m in caplog.messages), caplog.messages


def test_a_dependency_cycle_names_the_tables_it_keeps_from_loading(env, caplog):
    """A cycle produit <-> client (both critical) added by hand: both are refused while scheduling, and lignecli
    and hisprixa, which wait for the critical tables, are not loaded that night. The line OPERATIONS' triage
    starts from ('table T failed (step): N table(s) that wait for it are not loaded in batch B: ...') was said for
    a step that failed running only, so no line named them (found in review)."""
    from .test_config_and_evolution import _fresh
    _fresh()
    assert succeeded(build(LoadAll(mode="full", batch_tag="n1", run_id="r1")))
    env.sql("INSERT INTO config.ETL_Dependencies (TableName, DependsOn) VALUES ('produit', 'client'), "
            "('client', 'produit')")
    caplog.clear()
    _fresh()
    assert not succeeded(build(LoadAll(mode="incremental", batch_tag="n2", run_id="r2")))
    loaded = {r[0] for r in env.sql("SELECT TableName FROM etl.ETL_Log WHERE Step = 'validate' AND "
                                    "Status = 'SUCCESS' AND BatchId LIKE '%-n2'")}
    assert loaded == {"famille", "fournis"}
    assert "cycle" in last_error(env, "produit")
    named = [m for m in caplog.messages if "not loaded in batch" in m]
    assert any("lignecli" in m and "hisprixa" in m for m in named), named


def test_dependency_row_for_no_table_is_logged_as_a_warning_the_nightly_log_can_be_grepped_for(env):
    """OPERATIONS' triage row reads '(WARNING) config.ETL_Dependencies row (...)': is no table of
    config.ETL_Tables', and OPERATIONS says nightly.log lines carry time, level and module (grep WARNING). Under
    the `luigi` command as the crontab runs it, LoadAll.requires said it before cbm_luigi's handler was set up:
    a bare line (found in review)."""
    with env.con() as c:
        c.execute("INSERT INTO config.ETL_Dependencies (TableName, DependsOn) VALUES ('produitt', 'famille')")
    out = subprocess.run(["luigi", "--module", "cbm_luigi", "LoadAll", "--mode", "incremental",
                          "--local-scheduler"], cwd=REPO, env=subprocess_env(env), capture_output=True,
                         text=True, timeout=300)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if "is no table of config.ETL_Tables" in ln]
    assert lines, out.stderr[-2000:]
    assert all(" WARNING cbm_luigi." in ln for ln in lines), lines
