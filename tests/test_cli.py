"""The operator's commands (cbm-etl), on the demo source and a real DuckDB file."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import pytest

from cbm_luigi.cli import main as cbm_etl
from cbm_luigi.tasks import LoadAll, LoadTable

from .conftest import REPO, assert_ods_equals_source, build, make_env, on_source, subprocess_env, succeeded


def test_init_db_is_idempotent_and_loads_tables_once(env, capsys):
    assert cbm_etl(["init-db"]) == 0  # second time (the fixture ran the first)
    assert "0 table(s) added" in capsys.readouterr().out
    assert env.sql("SELECT COUNT(*) FROM config.ETL_Tables")[0][0] == 6
    views = {r[0] for r in env.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'etl' "
                                   "AND table_type = 'VIEW'")}
    assert views == {"vw_LastRuns", "vw_TablePerformance", "vw_SLABreach"}


def test_discover_proposes_keys_and_modification_columns(env, capsys):
    assert cbm_etl(["discover", "--count"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["lignecli"][1:5] == ["1200", "num_cde,num_lig", "dat_mod", "heure"]
    assert lines["famille"][1:5] == ["12", "cod_fam", "-", "-"]
    assert lines["hisprixa"][2] == "cod_pro,cod_fou,dat_eff"


def test_summary_after_a_load(env, capsys):
    assert succeeded(build(LoadAll(mode="full")))
    capsys.readouterr()
    assert cbm_etl(["summary"]) == 0
    out = capsys.readouterr().out
    assert str(env.warehouse) in out
    produit = next(line for line in out.splitlines() if line.startswith("produit"))
    assert produit.split()[1:4] == ["SUCCESS", "200", "200"]


def test_summary_shows_each_tables_latest_batch_only(env, capsys):
    """A table failing in a new batch shows that batch and its error, not an older batch's counts."""
    assert succeeded(build(LoadAll(mode="full", batch_tag="good")))
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_column = 1' WHERE TableName = 'lignecli'")
    env.sql("INSERT INTO config.ETL_Tables (TableName, DestinationTable, PrimaryKeyCols, IsActive) "
            "VALUES ('neuf', 'neuf', 'id', TRUE)")
    assert not succeeded(build(LoadTable(table="lignecli", mode="incremental", batch_tag="bad")))
    capsys.readouterr()
    assert cbm_etl(["summary"]) == 0
    out = capsys.readouterr().out.splitlines()
    lignecli = next(i for i, line in enumerate(out) if line.startswith("lignecli"))
    fields = out[lignecli].split()
    assert fields[1:3] == ["FAILED", "-"] and fields[-1].endswith("-bad/incremental")
    assert out[lignecli + 1].lstrip().startswith("extract: ") and "no_such_column" in out[lignecli + 1]
    assert next(line for line in out if line.startswith("produit")).split()[-1].endswith("-good/full")
    assert next(line for line in out if line.startswith("neuf")).split()[1:4] == ["-", "never", "run"]


def test_errors_are_one_readable_line(env, capsys, monkeypatch):
    monkeypatch.setenv("CBM_SOURCE_KIND", "odbc")
    monkeypatch.setenv("CBM_SOURCE_ODBC", "DRIVER={Nope};UID=u;PWD=hunter2")
    assert cbm_etl(["discover"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cbm-etl discover: SourceError") and "hunter2" not in err


def _sla_lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_check_sla_names_the_tables_to_page_on_and_exits_2_only_then(env, capsys):
    """The nightly pages only when it runs and fails; `check-sla`, on a cron line of its own, pages for a table
    that is late however that came about (a night that never started, a table failing, a table never loaded)."""
    assert cbm_etl(["check-sla"]) == 2  # nothing loaded yet
    lines = _sla_lines(capsys)
    assert sum("NEVER_LOADED" in line and "no load has validated yet" in line for line in lines) == 6, lines
    assert lines[-1].startswith("check-sla: 6 of 6 active table(s) not OK")
    assert succeeded(build(LoadAll(mode="full")))
    capsys.readouterr()
    assert cbm_etl(["check-sla"]) == 0
    assert _sla_lines(capsys) == ["check-sla: 0 of 6 active table(s) not OK"]
    # produit's last validated load started 30 h ago (SLA 26 h); famille's next load fails
    env.sql("UPDATE config.ETL_Tables SET LastSuccessUtc = LastSuccessUtc - INTERVAL 30 HOUR, "
            "LastSuccessTs = LastSuccessTs - INTERVAL 30 HOUR WHERE TableName = 'produit'")
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_column = 1' WHERE TableName = 'famille'")
    assert not succeeded(build(LoadTable(table="famille", mode="full", batch_tag="b")))
    capsys.readouterr()
    assert cbm_etl(["check-sla"]) == 2
    lines = _sla_lines(capsys)
    late = [line for line in lines if line.startswith("produit: ")]
    assert len(late) == 1 and late[0].startswith("produit: LATE: last validated load started "), lines
    assert 29.9 <= float(late[0].split("started ")[1].split(" h")[0]) <= 30.2 and "(SLA 26.0 h)" in late[0]
    failing = [line for line in lines if line.startswith("famille: ")]
    assert len(failing) == 1 and failing[0].startswith("famille: FAILING (not critical): its last step failed at ")
    assert "no_such_column" in failing[0] and "last validated load started 0." in failing[0]
    assert lines[-1].startswith("check-sla: 2 of 6 active table(s) not OK")
    # --critical: client and produit are; famille is not
    assert cbm_etl(["check-sla", "--critical"]) == 2
    lines = _sla_lines(capsys)
    assert [line.split(":")[0] for line in lines[:-1]] == ["produit"]
    assert lines[-1].startswith("check-sla: 1 of 2 critical table(s) not OK")


def test_check_sla_cannot_tell_without_critical_tables_and_keeps_a_long_errors_advice(env, capsys):
    env.sql("UPDATE config.ETL_Tables SET IsCritical = FALSE")
    assert cbm_etl(["check-sla", "--critical"]) == 1  # a monitor that checks nothing must not stay quiet
    err = capsys.readouterr().err
    assert "no active table has IsCritical = 1, so nothing was checked" in err and "drop --critical" in err
    # nor with no active table at all (every table switched off by mistake, the wrong warehouse): it said "0 of 0
    # active table(s) not OK" and exited 0 (found in review)
    env.sql("UPDATE config.ETL_Tables SET IsActive = FALSE")
    assert cbm_etl(["check-sla"]) == 1
    err = capsys.readouterr().err
    assert "config.ETL_Tables has no active table, so nothing was checked: is this the warehouse meant" in err
    assert str(env.warehouse) in err
    env.sql("UPDATE config.ETL_Tables SET IsActive = TRUE")
    # a failure whose message is long: the page line keeps its start and its end, where the way out is
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_column = 1' WHERE TableName = 'famille'")
    assert not succeeded(build(LoadTable(table="famille", mode="full", batch_tag="b")))
    env.sql("UPDATE etl.ETL_Log SET ErrorMessage = 'table famille: ' || repeat('x', 3000) || ' Fix it, then rerun.' "
            "WHERE TableName = 'famille' AND Status = 'FAILED'")
    capsys.readouterr()
    assert cbm_etl(["check-sla"]) == 2
    line = next(line for line in _sla_lines(capsys) if line.startswith("famille: "))
    assert "table famille: xxx" in line and "Fix it, then rerun." in line and "characters left out" in line
    assert len(line) < 600, len(line)


def test_clean_cache_keeps_the_newest_and_any_batch_not_validated_yet(env, capsys):
    import time

    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="zz-old")))
    time.sleep(0.02)
    # refused at merge, its extract kept (ods holds two current versions of a key; a batch whose own rows are
    # refused drops its extract instead, see test_refused_batches.py)
    env.sql("INSERT INTO ods.famille SELECT * FROM ods.famille WHERE cod_fam = 'F001'")
    assert not succeeded(build(LoadTable(table="famille", mode="full", batch_tag="mid")))
    time.sleep(0.02)
    assert succeeded(build(LoadTable(table="fournis", mode="full", batch_tag="aa-new")))  # another table
    capsys.readouterr()
    assert cbm_etl(["clean-cache", "--keep", "1"]) == 0  # by write time: "aa-new" is the newest, not "zz-old"
    out = capsys.readouterr().out
    left = sorted(p.name.split("-", 3)[-1] for p in env.cache.iterdir())
    assert left == ["aa-new", "mid"], out
    assert "not validated yet: famille (full)" in out


def test_clean_cache_is_not_stopped_by_a_file_that_vanishes_while_it_looks(env, capsys, monkeypatch):
    """An extract running now renames its temp file, `invalidate` removes a batch file: between two looks of
    clean-cache at one file (is it a file, then its time: a race of microseconds, so the vanishing is injected
    at the second look). It crashed with FileNotFoundError and removed nothing; it looks once now, and a file
    gone by then is passed over."""
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="old")))
    time.sleep(0.02)
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="new")))
    old = next(p for p in env.cache.iterdir() if p.name.endswith("-old"))
    tmp = old / "full" / "famille.extract.parquet.4242-abcdef01-host.tmp"  # a temp file, as shape_batches names
    tmp.write_bytes(b"half-written")
    os.utime(tmp, (time.time() - 3600, time.time() - 3600))  # not what makes "old" the newest batch
    real_stat, looks = Path.stat, []

    def vanishing(self, *a, **kw):
        if str(self) == str(tmp):
            looks.append(1)
            if len(looks) == 2:  # gone after a first look found it (is_file), before the next (its time)
                os.unlink(tmp)
        return real_stat(self, *a, **kw)

    monkeypatch.setattr(Path, "stat", vanishing)
    capsys.readouterr()
    assert cbm_etl(["clean-cache", "--keep", "1"]) == 0
    monkeypatch.undo()
    assert [p.name.split("-", 3)[-1] for p in env.cache.iterdir()] == ["new"], capsys.readouterr()


def test_clean_cache_drops_a_failed_batch_once_a_later_load_makes_its_file_useless(env, capsys):
    """`mid` failed; a later batch loaded the table: a rerun of `mid` would read the source again (its file is
    older than ods), so the file is not worth keeping."""
    import time

    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="first")))
    env.sql("UPDATE config.ETL_Tables SET FilterClause = '1 = 0' WHERE TableName = 'famille'")
    assert succeeded(build(LoadTable(table="fournis", mode="full", batch_tag="mid")))  # so "mid" is not empty
    assert not succeeded(build(LoadTable(table="famille", mode="full", batch_tag="mid")))
    env.sql("UPDATE config.ETL_Tables SET FilterClause = NULL WHERE TableName = 'famille'")
    time.sleep(0.02)
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="new")))
    capsys.readouterr()
    assert cbm_etl(["clean-cache", "--keep", "1"]) == 0
    assert sorted(p.name.split("-", 3)[-1] for p in env.cache.iterdir()) == ["new"], capsys.readouterr().out


def test_two_tables_with_one_sql_safe_name_keep_their_own_batch_files(env, capsys):
    """`art-ext` and `art_ext` share a SQL-safe name: their extracts used to share one cache file, so a rerun
    from stage loaded the other table's rows (and soft-deleted this one's)."""
    from cbm_luigi import demo_source
    from cbm_luigi.demo_source import Col, TableDef

    for name, dest, rows in (("art-ext", "art_dash", [(1, "dash", None), (2, "dash", None)]),
                             ("art_ext", "art_under", [(1, "under", None), (3, "under", None)])):
        demo_source.add_table(env.source, TableDef(name, [Col("id", "integer", nullable=False),
                                                          Col("v", "varchar", 8), Col("dat_mod", "date")],
                                                   ("id",), rows))
        env.sql("INSERT INTO config.ETL_Tables (TableName, DestinationTable, PrimaryKeyCols, DateModifCol) "
                "VALUES (?, ?, 'id', 'dat_mod')", [name, dest])
    assert succeeded(build(LoadTable(table="art-ext", mode="full")))
    assert succeeded(build(LoadTable(table="art_ext", mode="full")))
    assert len(list(env.cache.glob("*/full/art*.extract.parquet"))) == 2
    batch = env.sql("SELECT DISTINCT BatchId FROM etl.ETL_Log WHERE TableName = 'art-ext'")[0][0]
    assert cbm_etl(["invalidate", "art-ext", "--batch", batch, "--from", "stage"]) == 0
    assert succeeded(build(LoadTable(table="art-ext", mode="full")))
    assert env.sql("SELECT id, v, _etl_is_deleted FROM ods.art_dash ORDER BY id") == [(1, "dash", False),
                                                                                    (2, "dash", False)]
    assert env.sql("SELECT id, v FROM ods.art_under ORDER BY id") == [(1, "under"), (3, "under")]


def test_invalidate_refuses_what_names_no_table_or_no_batch(env, capsys):
    assert succeeded(build(LoadTable(table="famille", mode="full")))
    assert cbm_etl(["invalidate", "nosuch"]) == 1
    assert "no table 'nosuch' in config.ETL_Tables" in capsys.readouterr().err
    for bad in ("*", "2026-13-01", "2026-11-27-Bad Tag!", "2026-11-27-"):
        assert cbm_etl(["invalidate", "famille", "--batch", bad]) == 2
        assert "is not a batch id" in capsys.readouterr().err
    # a batch the table never had (the run was tagged): said, with the table's batches, instead of "0 markers"
    assert cbm_etl(["invalidate", "famille", "--batch", "2001-01-01"]) == 1
    err = capsys.readouterr().err
    assert "nothing to forget in batch 2001-01-01" in err and f"Its batches: {date.today().isoformat()}" in err
    assert len(list(env.cache.glob("*/*/famille.extract.parquet"))) == 1  # nothing was removed
    assert env.sql("SELECT COUNT(*) FROM etl.ETL_Markers WHERE TableName = 'famille'")[0][0] > 0


def test_summary_lists_active_tables_only_and_a_failed_first_run_is_failing(env, capsys):
    assert succeeded(build(LoadTable(table="famille", mode="full")))
    env.sql("UPDATE config.ETL_Tables SET IsActive = FALSE WHERE TableName = 'famille'")
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_col = 1' WHERE TableName = 'fournis'")
    assert not succeeded(build(LoadTable(table="fournis", mode="full")))
    capsys.readouterr()
    assert cbm_etl(["summary"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    assert "famille" not in lines  # deactivated: its history stays in etl.ETL_Log only
    assert "FAILED" in lines["fournis"] and "FAILING" in lines["fournis"]
    assert lines["fournis"].split()[2] == "-"  # the failed extract read nothing: not "0 rows"
    [(err,)] = env.sql("SELECT ErrorMessage FROM etl.ETL_Log WHERE TableName = 'fournis' AND Status = 'FAILED'")
    assert f"    extract: {err}" in out
    assert env.sql("SELECT SLAStatus FROM etl.vw_SLABreach WHERE TableName = 'fournis'") == [("FAILING",)]


def test_summary_shows_an_error_whole_for_its_way_out_is_at_its_end(env, capsys):
    """It was cut at 300 characters, before the advice (found in review)."""
    import sqlite3

    from cbm_luigi.source.readers import release_readers

    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="a")))
    with sqlite3.connect(env.source) as con:
        con.execute("UPDATE SYSCOLUMNS_FULL SET coltype = 'varchar', width = 20 WHERE tbl = 'produit' "
                    "AND col = 'stock'")
    release_readers()
    assert cbm_etl(["sync-columns", "produit"]) == 0
    assert not succeeded(build(LoadTable(table="produit", mode="full", batch_tag="b")))
    capsys.readouterr()
    assert cbm_etl(["summary"]) == 0
    [(err,)] = env.sql("SELECT ErrorMessage FROM etl.ETL_Log WHERE TableName = 'produit' AND Status = 'FAILED'")
    assert len(err) > 300 and err.endswith("and rerun the table.")
    assert f"    merge: {err}" in capsys.readouterr().out


def test_the_monitoring_views_take_the_last_row_written_and_a_validated_batch_ends_its_failure(env, capsys):
    """Found in review: rows ordered by LogTs, local wall-clock time, which repeats an hour in autumn (a failure
    at the second 02:10 sorted before a success at the first 02:40); a failed batch rerun to validation, killed
    before its log rows, paged forever; failed runs pulled vw_TablePerformance's median down."""
    assert succeeded(build(LoadTable(table="famille", mode="full")))
    # the clocks went back: another batch's failure, written after the success, carries an earlier local time
    env.sql("INSERT INTO etl.ETL_Log (RunId, BatchId, TableName, Step, Status, Mode, DurationMs, ErrorMessage, LogTs) "
            "SELECT 'r2', BatchId || '-later', TableName, 'extract', 'FAILED', Mode, 1, 'the source went away', "
            "LogTs - INTERVAL 50 MINUTE FROM etl.ETL_Log WHERE TableName = 'famille' ORDER BY LogId DESC LIMIT 1")
    assert env.sql("SELECT SLAStatus, LastError FROM etl.vw_SLABreach WHERE TableName = 'famille'") == [
        ("FAILING", "the source went away")]
    assert env.sql("SELECT Status FROM etl.vw_LastRuns WHERE TableName = 'famille' AND Step = 'extract'") == [
        ("FAILED",)]
    capsys.readouterr()
    assert cbm_etl(["summary"]) == 0
    assert "FAILING" in next(x for x in capsys.readouterr().out.splitlines() if x.startswith("famille"))
    # the failure's duration is not a run's: median and rows of the successful extract only
    ok_ms, ok_rows = env.sql("SELECT DurationMs, Rows FROM etl.ETL_Log WHERE TableName = 'famille' "
                             "AND Step = 'extract' AND Status = 'SUCCESS'")[0]
    perf = env.sql("SELECT Runs, Failures, MedianDurationMs, TotalRows FROM etl.vw_TablePerformance "
                   "WHERE TableName = 'famille' AND Step = 'extract'")
    assert perf == [(2, 1, float(ok_ms), ok_rows)]
    # a batch fails, is rerun to validation, and each of the rerun's log rows is lost to a kill: it is over
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_col = 1' WHERE TableName = 'famille'")
    assert not succeeded(build(LoadTable(table="famille", mode="full", batch_tag="bad")))
    env.sql("UPDATE config.ETL_Tables SET FilterClause = NULL WHERE TableName = 'famille'")
    assert env.sql("SELECT SLAStatus FROM etl.vw_SLABreach WHERE TableName = 'famille'") == [("FAILING",)]
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="bad")))
    env.sql("DELETE FROM etl.ETL_Log WHERE TableName = 'famille' AND BatchId LIKE '%-bad' AND Status = 'SUCCESS'")
    assert env.sql("SELECT SLAStatus FROM etl.vw_SLABreach WHERE TableName = 'famille'") == [("OK",)]


def test_a_command_on_a_held_or_uninitialised_warehouse_says_what_to_do(env, capsys, monkeypatch, tmp_path):
    import subprocess
    import sys

    from cbm_luigi.warehouse import duckdb_wh

    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(30)", str(env.warehouse)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(duckdb_wh, "LOCK_WAIT_S", 0.3)
        assert cbm_etl(["summary"]) == 1
        err = capsys.readouterr().err
        assert "WarehouseBusyError" in err and "held by another process" in err and str(env.warehouse) in err
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.setenv("CBM_DUCKDB_PATH", str(tmp_path / "empty.duckdb"))
    assert cbm_etl(["summary"]) == 1
    err = capsys.readouterr().err
    assert "run `cbm-etl init-db`" in err and len(err.strip().splitlines()) == 1
    # the warehouse opened is named: a settings mistake opens the embedded default instead of SQL Server
    assert f"the warehouse opened is duckdb:{tmp_path / 'empty.duckdb'}" in err and "CBM_WAREHOUSE_KIND" in err


def test_init_db_with_a_tables_csv_that_is_not_there_says_so(env, capsys, tmp_path):
    assert cbm_etl(["init-db", "--tables-csv", str(tmp_path / "tabels.csv")]) == 2
    assert "tabels.csv: no such file" in capsys.readouterr().err


def test_clean_cache_refuses_a_negative_keep(env, capsys):
    assert succeeded(build(LoadTable(table="famille", mode="full")))
    with pytest.raises(SystemExit):
        cbm_etl(["clean-cache", "--keep", "-1"])
    assert "0 or more" in capsys.readouterr().err
    assert len(list(env.cache.glob("*/*/famille.extract.parquet"))) == 1


def test_sync_all_goes_on_past_a_table_that_fails_and_says_which(env, capsys):
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols, Priority) VALUES ('ancienne', 'id', 15)")
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols, Priority, IsActive) "
            "VALUES ('retiree', 'id', 16, FALSE)")
    assert cbm_etl(["sync-columns", "--all"]) == 1
    out, err = capsys.readouterr()
    assert "sync-columns ancienne: FAILED" in err and "1 of 7 table(s) failed: ancienne" in err
    assert "retiree" not in out + err  # --all: the active tables
    synced = {r[0] for r in env.sql("SELECT DISTINCT TableName FROM config.ETL_Columns")}
    assert synced == {"famille", "fournis", "client", "produit", "lignecli", "hisprixa"}


def test_sync_columns_counts_the_columns_that_changed_not_those_it_refreshed(env, capsys):
    """sync-columns said `'updated': 15` for a table whose catalog had not changed (every row refreshed was counted):
    an operator checking what a Data Dictionary change did could not tell (found in review)."""
    import sqlite3

    assert cbm_etl(["sync-columns", "client"]) == 0
    n = env.sql("SELECT COUNT(*) FROM config.ETL_Columns WHERE TableName = 'client'")[0][0]
    capsys.readouterr()
    assert cbm_etl(["sync-columns", "client"]) == 0
    assert f"sync-columns client: {{'added': 0, 'changed': 0, 'unchanged': {n}, 'missing': 0}}" in \
        capsys.readouterr().out
    with sqlite3.connect(env.source) as con:  # a dbtool SQL-width fix on one field, in the Progress catalog
        con.execute("UPDATE SYSCOLUMNS_FULL SET width = 120 WHERE tbl = 'client' AND col = 'ville'")
    con.close()
    assert cbm_etl(["sync-columns", "client"]) == 0
    assert f"{{'added': 0, 'changed': 1, 'unchanged': {n - 1}, 'missing': 0}}" in capsys.readouterr().out


def test_summary_says_incomplete_for_a_batch_killed_before_validation_and_logs_a_failed_steps_time(env, capsys):
    from cbm_luigi.tasks import MergeOds

    assert succeeded(build(MergeOds(table="famille", mode="full")))  # as a run killed after its merge leaves it
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_col = 1' WHERE TableName = 'fournis'")
    assert not succeeded(build(LoadTable(table="fournis", mode="full")))
    capsys.readouterr()
    assert cbm_etl(["summary"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:] if line.strip()}
    assert lines["famille"].split()[1] == "INCOMPLETE" and lines["fournis"].split()[1] == "FAILED"
    [(ms,)] = env.sql("SELECT DurationMs FROM etl.ETL_Log WHERE Status = 'FAILED'")
    assert ms is not None and ms >= 0


def test_invalidate_from_extract_drops_the_file_of_a_batch_that_has_no_marker(env, capsys):
    """An extract is a file, not a marker: `cbm-etl invalidate T --batch B --from extract` must still drop it, so
    the rerun reads the source again."""
    from cbm_luigi.extract import read_extract_meta
    from cbm_luigi.tasks import ExtractParquet

    assert succeeded(build(ExtractParquet(table="client", mode="full", batch_tag="x")))
    [path] = env.cache.glob("*/full/client.extract.parquet")
    first = read_extract_meta(path)["started_at"]
    assert cbm_etl(["invalidate", "client", "--batch", f"{date.today().isoformat()}-x", "--from", "extract"]) == 0
    assert "0 marker(s) and 1 cached file(s) removed" in capsys.readouterr().out
    assert not path.exists()
    assert succeeded(build(LoadTable(table="client", mode="full", batch_tag="x")))
    assert read_extract_meta(path)["started_at"] > first
    assert_ods_equals_source(env, "client")


def test_summary_goes_by_the_markers_when_a_kill_fell_between_a_commit_and_its_log_row(env, capsys):
    """A step's marker commits with its data and its etl.ETL_Log row just after: a kill in between (the state is
    made here by deleting the rows) leaves a loaded table that the rerun rightly skips. The summary must not
    call it INCOMPLETE, nor show 0 inserted."""
    assert succeeded(build(LoadTable(table="famille", mode="full")))
    env.sql("DELETE FROM etl.ETL_Log WHERE TableName = 'famille' AND Step IN ('merge', 'validate')")
    capsys.readouterr()
    assert cbm_etl(["summary"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("famille"))
    assert line.split()[1:7] == ["SUCCESS", str(env.sql("SELECT COUNT(*) FROM ods.famille")[0][0]), "?", "?", "?",
                                 "?"]
    assert "merge, validate: done (marker committed) but not in etl.ETL_Log" in out


def test_summary_prefers_a_committed_step_over_its_earlier_failed_attempt_and_a_lost_extract_row(env, capsys):
    """merge fails (IsDimension switched), is fixed and rerun, and the run is killed between the merge's commit
    and its log row (made here by deleting that row): the step is done, and its earlier failure is history."""
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="a")))
    env.sql("UPDATE config.ETL_Tables SET IsDimension = NOT IsDimension WHERE TableName = 'famille'")
    assert not succeeded(build(LoadTable(table="famille", mode="full", batch_tag="b")))
    env.sql("UPDATE config.ETL_Tables SET IsDimension = NOT IsDimension WHERE TableName = 'famille'")
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="b")))
    env.sql("DELETE FROM etl.ETL_Log WHERE TableName = 'famille' AND BatchId LIKE '%-b' AND Status = 'SUCCESS' "
            "AND Step IN ('merge', 'extract')")
    capsys.readouterr()
    assert cbm_etl(["summary"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("famille"))
    assert line.split()[1:7] == ["SUCCESS", "?", "?", "?", "?", "?"], line
    assert "merge: done (marker committed) but not in etl.ETL_Log" in out and "ConfigError" not in out


def test_the_utc_column_is_looked_up_once_a_process(env, monkeypatch):
    """Validation asked INFORMATION_SCHEMA for LastSuccessUtc every time: on DuckDB that view is built from the
    whole catalog (1-3 ms a table at 1,000 tables). A yes is remembered for the process and warehouse."""
    from cbm_luigi import config_store
    from cbm_luigi.warehouse.duckdb_wh import DuckDbSession

    monkeypatch.setattr(config_store, "_HAS_UTC", set())
    asked = []
    real = DuckDbSession.scalar

    def spy(self, sql, params=None):
        if "LastSuccessUtc" in sql:
            asked.append(sql)
        return real(self, sql, params)

    monkeypatch.setattr(DuckDbSession, "scalar", spy)
    assert succeeded(build(LoadTable(table="famille", mode="full"), LoadTable(table="client", mode="full")))
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="again")))
    assert len(asked) == 1
    rows = env.sql("SELECT TableName, LastSuccessUtc IS NOT NULL FROM config.ETL_Tables "
                   "WHERE TableName IN ('famille', 'client') ORDER BY 1")
    assert rows == [("client", True), ("famille", True)]


def test_sla_hours_are_counted_in_utc_and_an_older_warehouse_keeps_loading(env, caplog, monkeypatch):
    """Found in review: the hours since success were local wall-clock times, an hour off for a day after each
    daylight-saving change (a late table paged an hour late in spring). LastSuccessUtc, written with
    LastSuccessTs, is what the view counts from; a warehouse without it (not upgraded yet) still loads."""
    from datetime import datetime, timezone

    from cbm_luigi.extract import read_extract_meta

    assert succeeded(build(LoadTable(table="famille", mode="full")))
    local, utc = env.sql("SELECT LastSuccessTs, LastSuccessUtc FROM config.ETL_Tables WHERE TableName = 'famille'")[0]
    # the instant the extract recorded (its own clock, right even in the hour repeated in autumn)
    meta = read_extract_meta(next(env.cache.glob("*/*/famille.extract.parquet")))
    assert utc == datetime.fromisoformat(meta["started_at_utc"])
    assert utc == local.astimezone(timezone.utc).replace(tzinfo=None)
    # spring forward: 25 h on the local clocks, 27 h in fact, for a 26 h SLA
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    env.sql("UPDATE config.ETL_Tables SET SLAHours = 26, LastSuccessTs = CAST(current_timestamp AS TIMESTAMP) - "
            "INTERVAL 25 HOUR, LastSuccessUtc = ? WHERE TableName = 'famille'", [now.replace(microsecond=0)])
    env.sql("UPDATE config.ETL_Tables SET LastSuccessUtc = LastSuccessUtc - INTERVAL 27 HOUR "
            "WHERE TableName = 'famille'")
    status, hours = env.sql("SELECT SLAStatus, HoursSinceSuccess FROM etl.vw_SLABreach WHERE TableName = 'famille'")[0]
    assert status == "LATE" and 26.9 < hours < 27.2
    # a load validated before the column existed, or by an older version after the upgrade (LastSuccessUtc lags
    # by more than any UTC offset): the local times, as before
    for stale in ("NULL", "LastSuccessTs - INTERVAL 20 HOUR"):
        env.sql(f"UPDATE config.ETL_Tables SET LastSuccessUtc = {stale} WHERE TableName = 'famille'")
        status, hours = env.sql("SELECT SLAStatus, HoursSinceSuccess FROM etl.vw_SLABreach "
                                "WHERE TableName = 'famille'")[0]
        assert status == "OK" and 24.9 < hours < 25.2
    # a warehouse not upgraded yet: the load still validates (and says what to run), init-db adds the column
    from cbm_luigi import config_store, settings

    monkeypatch.setattr(settings, "_WARNED", set())  # said once a process
    monkeypatch.setattr(config_store, "_HAS_UTC", set())  # a column found is remembered: no step drops it
    env.sql("DROP VIEW etl.vw_SLABreach")
    env.sql("ALTER TABLE config.ETL_Tables DROP COLUMN LastSuccessUtc")
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="older")))
    assert any("has no LastSuccessUtc column" in m for m in caplog.messages)
    assert cbm_etl(["init-db", "--no-tables"]) == 0
    assert env.sql("SELECT LastSuccessUtc FROM config.ETL_Tables WHERE TableName = 'famille'") == [(None,)]
    assert env.sql("SELECT SLAStatus FROM etl.vw_SLABreach WHERE TableName = 'famille'") == [("OK",)]


def test_moving_last_success_back_or_clearing_it_to_read_rows_again_does_not_page(env):
    """OPERATIONS: to read a window again, move LastSuccessTs back or clear it. A critical table validated
    minutes ago was then paged as LATE (moved back more than 15 h: the view took it for an older version's
    write) or NEVER_LOADED (cleared) until the next load (found in review)."""
    def sla():
        return env.sql("SELECT IsCritical, SLAStatus, HoursSinceSuccess FROM etl.vw_SLABreach "
                       "WHERE TableName = 'produit'")[0]

    assert succeeded(build(LoadTable(table="produit", mode="incremental")))
    for back in (12, 48):
        env.sql(f"UPDATE config.ETL_Tables SET LastSuccessTs = LastSuccessUtc - INTERVAL {back} HOUR "
                f"WHERE TableName = 'produit'")
        critical, status, hours = sla()
        assert (critical, status) == (True, "OK") and hours < 1, (back, status, hours)
    env.sql("UPDATE config.ETL_Tables SET LastSuccessTs = NULL WHERE TableName = 'produit'")
    critical, status, hours = sla()
    assert (critical, status) == (True, "OK") and hours < 1, (status, hours)
    # the load that reads in full moves both again; a table no load ever validated is NEVER_LOADED
    assert succeeded(build(LoadTable(table="produit", mode="incremental", batch_tag="reread")))
    assert env.sql("SELECT LastSuccessTs IS NOT NULL FROM config.ETL_Tables WHERE TableName = 'produit'") == [(True,)]
    assert env.sql("SELECT SLAStatus FROM etl.vw_SLABreach WHERE TableName = 'client'") == [("NEVER_LOADED",)]


def test_clean_cache_drops_a_batch_whose_file_a_rerun_would_read_again_for_its_configuration(env, capsys):
    """A rerun reads again an extract made under another configuration, so clean-cache need not keep it (found
    in review: it kept it, 'not validated yet')."""
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="a", run_id="run1")))
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'cod_fam IS NOT NULL' WHERE TableName = 'famille'")
    env.sql("INSERT INTO ods.famille SELECT * FROM ods.famille WHERE cod_fam = 'F001'")  # refused at merge
    assert not succeeded(build(LoadTable(table="famille", mode="full", batch_tag="b", run_id="run2")))
    [kept] = env.cache.glob("*-b")
    capsys.readouterr()
    assert cbm_etl(["clean-cache", "--keep", "0"]) == 0
    assert f"kept {kept}: not validated yet: famille (full)" in capsys.readouterr().out  # a rerun would use it
    env.sql("UPDATE config.ETL_Tables SET FilterClause = NULL WHERE TableName = 'famille'")  # reverted
    assert cbm_etl(["clean-cache", "--keep", "0"]) == 0
    assert f"removed {kept}" in capsys.readouterr().out and not kept.exists()


def test_clean_cache_does_not_keep_a_batch_whose_window_was_widened_since(env, capsys):
    """A batch that failed (ods held two rows for a key), then the operator clears LastSuccessTs to read the table's
    rows again (OPERATIONS). A rerun of that batch reads the table again (TablePlan.window_widened), so its cached
    file is of no use: clean-cache removes it (it kept it, saying a rerun would use it: found in review)."""
    assert succeeded(build(LoadTable(table="lignecli", mode="incremental", batch_tag="a", run_id="r1")))
    env.sql("INSERT INTO ods.lignecli SELECT * FROM ods.lignecli WHERE num_lig = 1 LIMIT 1")
    assert not succeeded(build(LoadTable(table="lignecli", mode="incremental", batch_tag="b", run_id="r2")))
    [b] = env.cache.glob("*-b")
    assert list(b.glob("incremental/lignecli.extract.parquet"))
    env.sql("UPDATE config.ETL_Tables SET LastSuccessTs = NULL WHERE TableName = 'lignecli'")  # read it all again
    env.sql("DELETE FROM ods.lignecli WHERE rowid IN (SELECT max(rowid) FROM ods.lignecli "
            "GROUP BY num_cde, num_lig HAVING COUNT(*) > 1)")  # the duplicate fixed too
    capsys.readouterr()
    assert cbm_etl(["clean-cache", "--keep", "0"]) == 0
    out = capsys.readouterr().out
    assert f"removed {b}" in out and not b.exists(), out
    assert succeeded(build(LoadTable(table="lignecli", mode="incremental", batch_tag="b", run_id="r3")))
    assert_ods_equals_source(env, "lignecli")


def test_init_db_no_tables_twice_in_a_row(env, capsys):
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="a")))
    env.sql("DELETE FROM etl.ETL_TableState")
    assert cbm_etl(["init-db", "--no-tables"]) == 0
    first = env.sql("SELECT TableName, MergedShape, MergedColumns FROM etl.ETL_TableState ORDER BY 1")
    assert cbm_etl(["init-db", "--no-tables"]) == 0
    assert env.sql("SELECT TableName, MergedShape, MergedColumns FROM etl.ETL_TableState ORDER BY 1") == first
    assert first and first[0][1] not in (None, "unknown")
    assert env.sql("SELECT COUNT(*) FROM config.ETL_Tables")[0][0] == 6


def _nights(first: date, n: int) -> list[str]:
    """n nightly incremental LoadAll runs from `first`; their batch ids."""
    batches = []
    for i in range(n):
        day = first + timedelta(days=i)
        assert succeeded(build(LoadAll(mode="incremental", batch_date=day)))
        batches.append(day.isoformat())
        time.sleep(0.02)  # clean-cache orders batches by the time their files were written
    return batches


def _volume_root_dir(cache: Path) -> Path:
    """What mkfs leaves at the root of a file system: root's `lost+found`, mode 700, older than any batch (a cache
    on a volume of its own, CBM_CACHE_DIR its mount point, has one)."""
    cache.mkdir(parents=True, exist_ok=True)
    lf = cache / "lost+found"
    lf.mkdir(mode=0o700)
    os.chown(lf, 0, 0)
    old = time.time() - 30 * 86400
    os.utime(lf, (old, old))
    return lf


def test_clean_cache_removes_only_batches_not_every_folder_of_the_cache(env, capsys):
    """clean-cache took every folder of CBM_CACHE_DIR for a batch and deleted the volume's lost+found with the old
    batches (found in review, over a leap day). A batch folder is named by its batch id; nothing else is the
    cache's to remove."""
    lf = _volume_root_dir(env.cache)
    batches = _nights(date(2028, 2, 28), 3)  # over a leap day: 02-28, 02-29, 03-01
    capsys.readouterr()
    assert cbm_etl(["clean-cache", "--keep", "1"]) == 0
    out = capsys.readouterr().out
    assert lf.exists(), f"clean-cache removed {lf}: {out}"
    assert sorted(p.name for p in env.cache.iterdir()) == [batches[-1], "lost+found"], out


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="makes root-owned folders and runs clean-cache as another user (setpriv)")
def test_clean_cache_run_by_the_etl_user_skips_what_it_cannot_remove_and_removes_the_rest(monkeypatch):
    """The cache on a volume of its own (root's lost+found at its root), the nightly and clean-cache run as the ETL
    service user: lost+found came first, rmtree could not remove it, and the command stopped there (exit 1, a
    bare PermissionError) without removing a batch, every night: the cache filled the disk (found in review). A
    batch holding a folder of a load run by hand as root cannot be removed either: it is named and skipped, the
    other old batches are removed, and the exit status says something was left."""
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="cbm-year-"))  # a path the service user can reach
    try:
        env = make_env(root, monkeypatch)
        lf = _volume_root_dir(env.cache)
        batches = _nights(date(2026, 12, 30), 4)  # over a year's end: 12-30 .. 01-02
        by_root = env.cache / batches[1] / "by-root"  # a load run by hand with sudo left a folder of root's
        by_root.mkdir()
        (by_root / "x.parquet").write_bytes(b"x")
        for p in (by_root / "x.parquet", by_root):  # as old as its batch: clean-cache orders batches by their files
            os.utime(p, (time.time() - 86400,) * 2)
        for p in [root, *root.rglob("*")]:  # the ETL user's files (the nightly ran as that user)
            if p != lf and by_root not in (p, p.parent):
                os.chown(p, 65534, 65534)
        os.chmod(root, 0o755)
        run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                              "cbm_luigi.cli", "clean-cache", "--keep", "1"],
                             env=subprocess_env(env, PYTHONPATH=str(REPO), HOME=str(root)), cwd=root,
                             capture_output=True, text=True, timeout=300)
        left = sorted(p.name for p in env.cache.iterdir())
        assert run.returncode == 1 and left == [batches[1], batches[-1], "lost+found"], (
            f"exit {run.returncode}; cache left with {left}; stdout {run.stdout!r}; stderr {run.stderr[-600:]!r}")
        assert f"could not remove {env.cache / batches[1]}: Permission denied" in run.stderr, run.stderr
        assert f"removed {env.cache / batches[0]}" in run.stdout and f"removed {env.cache / batches[2]}" in run.stdout
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_prune_history_deletes_old_records_and_keeps_each_tables_latest_batch(env, capsys):
    """The pipeline's own records grow by about 150 MB a year for 1,000 tables and nothing pruned them (found in
    review). `prune-history --keep-days N` deletes what was written before, each table's latest batch kept whole
    (the views, `summary` and check-sla read it), and the next night runs as before."""
    assert succeeded(build(LoadAll(mode="full", batch_tag="old", run_id="r1")))
    assert succeeded(build(LoadAll(mode="full", batch_tag="mid", run_id="r2")))
    mid = next(b for (b,) in env.sql("SELECT DISTINCT BatchId FROM etl.ETL_Log") if b.endswith("-mid"))
    history = (("etl.ETL_Log", "LogTs"), ("etl.ETL_Validation", "CheckedAt"), ("etl.ETL_Markers", "CreatedAt"))
    counts = {t: env.sql(f"SELECT COUNT(*) FROM {t}")[0][0] for t, _c in history}
    for table, col in history:  # both batches written 400 days ago: 'mid' is every table's latest, so it stays
        env.sql(f"UPDATE {table} SET {col} = {col} - INTERVAL 400 DAY")
    assert cbm_etl(["prune-history", "--keep-days", "7"]) == 2  # below the floor: refused, nothing deleted
    assert env.sql("SELECT COUNT(*) FROM etl.ETL_Log")[0][0] == counts["etl.ETL_Log"]
    capsys.readouterr()
    assert cbm_etl(["prune-history", "--keep-days", "365"]) == 0
    out = capsys.readouterr().out
    for table, _col in history:
        assert f"{table}: " in out, out
        assert {b for (b,) in env.sql(f"SELECT DISTINCT BatchId FROM {table}")} == {mid}, table
        assert 0 < env.sql(f"SELECT COUNT(*) FROM {table}")[0][0] < counts[table]
    assert cbm_etl(["summary"]) == 0 and "INCOMPLETE" not in capsys.readouterr().out
    assert {r[0] for r in env.sql("SELECT SLAStatus FROM etl.vw_SLABreach")} == {"OK"}
    assert cbm_etl(["demo-change"]) == 0
    assert succeeded(build(LoadAll(mode="full", batch_tag="next", run_id="r3")))  # a full: deletions too
    for t in ("client", "produit", "lignecli"):
        assert_ods_equals_source(env, t)


_HISTORY = (("etl.ETL_Log", "LogTs"), ("etl.ETL_Validation", "CheckedAt"), ("etl.ETL_Markers", "CreatedAt"))
D1, D2 = date(2026, 10, 1), date(2026, 10, 2)


def _age(env, batch_id: str, days: int = 400) -> None:
    """As if the batch had been written `days` ago (its log, validation and marker rows)."""
    for table, col in _HISTORY:
        env.sql(f"UPDATE {table} SET {col} = {col} - INTERVAL {days} DAY WHERE BatchId = ?", [batch_id])


def _one_table_failing_since_d1(env) -> None:
    """D1 loads every table; from D2 on, hisprixa fails at its extract (the ERP dropped the table), the others
    load. D1 is then no table's latest batch: prune-history may delete it once it is old."""
    assert succeeded(build(LoadAll(mode="incremental", batch_date=D1, run_id="r1")))
    on_source(env, "ALTER TABLE hisprixa RENAME TO hisprixa_gone")
    assert not succeeded(build(LoadAll(mode="incremental", batch_date=D2, run_id="r2")))
    assert env.sql("SELECT Step, Status FROM etl.ETL_Log WHERE TableName = 'hisprixa' AND BatchId = ?",
                   [D2.isoformat()]) == [("extract", "FAILED")]
    _age(env, D1.isoformat())


def test_prune_keeps_what_vw_lastruns_shows_for_a_table_failing_since_before_the_cut(env, capsys):
    """etl.vw_LastRuns is 'the last row per table and step'. For a table whose latest batch failed at its extract,
    the last stage, merge and validate rows are in an older batch: prune-history deletes them (it keeps only the
    batches that were some table's latest), so the view no longer said when the failing table last merged and
    validated -- the rows the operator needs to triage it (found in review)."""
    _one_table_failing_since_d1(env)
    before = env.sql("SELECT TableName, Step, BatchId, Status FROM etl.vw_LastRuns ORDER BY TableName, Step")
    assert ("hisprixa", "validate", D1.isoformat(), "SUCCESS") in before
    assert cbm_etl(["prune-history", "--keep-days", "365"]) == 0
    capsys.readouterr()
    after = env.sql("SELECT TableName, Step, BatchId, Status FROM etl.vw_LastRuns ORDER BY TableName, Step")
    assert after == before, f"vw_LastRuns lost {sorted(set(before) - set(after))}"


def test_clean_cache_after_prune_does_not_call_a_validated_batch_not_validated(env, capsys):
    """clean-cache asks the batch's validate markers which tables it validated. Once prune-history deleted them, a
    cached batch that validated every table was 'kept ...: not validated yet: hisprixa' (the table whose later
    loads all failed before merging), every week, with advice to rerun it or give it up (found in review). Before
    the prune the same command removed it; now too."""
    _one_table_failing_since_d1(env)
    assert cbm_etl(["prune-history", "--keep-days", "30"]) == 0
    capsys.readouterr()
    assert cbm_etl(["clean-cache", "--keep", "1"]) == 0
    out = capsys.readouterr().out
    assert "not validated yet" not in out, out
    assert not (env.cache / D1.isoformat()).exists(), out
