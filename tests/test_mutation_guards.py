"""Guards from a mutation review of the code changed on 2026-11-28/29 (steps, tasks, duckdb_wh memory, transform,
cli, config_store, plan): each kills a mutant (a plausible small bug) that no earlier test killed, one a user
would notice. Each docstring names its mutant."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time

import duckdb
import pytest

from cbm_luigi import config_store
from cbm_luigi import settings as settings_mod
from cbm_luigi.demo_source import Col, encode_extent
from cbm_luigi.naming import MAX_NAME_LENGTH
from cbm_luigi.plan import ConfigError, build_plan
from cbm_luigi.settings import load_settings, mask_secrets

from .conftest import build, cbm_etl, last_error, subprocess_env, succeeded  # noqa: F401
from .test_progress_quirks import configure, failure, raw_table, run


def test_a_sql_name_of_exactly_128_characters_is_accepted():
    """Mutant P2 (cbm_luigi/plan.py, build_plan): `if len(c.sql_name) > MAX_NAME_LENGTH:` made
    `>= MAX_NAME_LENGTH`. SQL Server admits names of up to 128 characters, and sql_safe_name keeps one of 128
    as it is (tests/test_naming.py): a SqlName of exactly 128 characters is legal and must load; the only test of
    the refusal (tests/test_config_names_and_reads.py) uses 133 characters, so refusing a legal 128 went
    unnoticed. One over is still refused."""
    def col(sql):
        return {"ColumnName": "libelle", "SqlName": sql, "DataType": "character", "OrdinalPosition": 2}

    key = {"ColumnName": "id", "SqlName": "id", "DataType": "integer", "OrdinalPosition": 1}
    exact = "l" * MAX_NAME_LENGTH
    plan = build_plan({"TableName": "famille", "PrimaryKeyCols": "id"}, [key, col(exact)])
    assert exact in [n for n, _t, _ in plan.output_columns()]
    with pytest.raises(ConfigError, match="longer than 128 characters"):
        build_plan({"TableName": "famille", "PrimaryKeyCols": "id"}, [key, col(exact + "l")])


def test_an_out_of_memory_between_half_and_all_of_the_machine_advises_the_machines_80_percent(env, monkeypatch):
    """Mutant W6 (cbm_luigi/warehouse/duckdb_wh.py, memory_in_force): the branch for a limit above half of 80 % of
    the machine (twice it would pass what the machine has) returns the generic advice
    `Set CBM_DUCKDB_MEMORY_LIMIT to {int(2 * size / 1e6)}MB or more` in place of `... to {int(machine / 1e6)}MB (80 %
    of this machine's memory)`. The tests of the message cover below half (twice it) and at 80 % (exclude columns),
    not between: on a 200 MB machine (80 %: 160 MB) with CBM_DUCKDB_MEMORY_LIMIT=100MB the advice must be 80 % of it
    (160MB), not 199MB, a size the machine cannot give. The out-of-memory is injected (DuckDB's own text) after the MERGE's
    memory is set, as in tests/test_memory_messages.py."""
    from cbm_luigi.tasks import LoadTable
    from cbm_luigi.warehouse import duckdb_wh

    from .test_memory_messages import out_of_memory_after_the_raise

    monkeypatch.setattr(duckdb_wh, "machine_memory", lambda: 0.8 * 200e6)  # a machine of 200 MB
    monkeypatch.setenv("CBM_DUCKDB_MEMORY_LIMIT", "100MB")
    out_of_memory_after_the_raise(monkeypatch)
    assert not succeeded(build(LoadTable(table="client", mode="full")))
    err = last_error(env, "client")
    assert "ran out of memory in the merge" in err, err[:800]
    assert "Set CBM_DUCKDB_MEMORY_LIMIT to 160MB (80 % of this machine's memory)" in err, err[:600]
    assert "or more" not in err, err[:600]


def test_a_filtered_run_with_continue_on_error_names_no_critical_table_it_did_not_pull_in(env, caplog):
    """Mutant T9 (cbm_luigi/tasks.py, LoadAll.requires): `config_store.in_run(..., critical_stops=not
    self.continue_on_error)` made `critical_stops=True`. The set of tables the run loads (for the failure line of
    _say_held_back) then counts the critical tables before a --filter table in Priority, which --continue-on-error
    does not pull in. `LoadAll --filter client,hisprixa --continue-on-error`, with produit (critical, Priority 40)
    depending on client (config.ETL_Dependencies): client fails; produit was never part of the run (hisprixa
    does not wait for it under --continue-on-error), yet the mutant's line said 'table client failed (extract):
    1 table(s) that wait for it are not loaded in batch ...: produit', a table the same command never loads.
    The run loads hisprixa and only logs client and hisprixa."""
    import logging

    from cbm_luigi.tasks import LoadAll

    env.sql("INSERT INTO config.ETL_Dependencies (TableName, DependsOn) VALUES ('produit', 'client')")
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_column = 1' WHERE TableName = 'client'")
    with caplog.at_level(logging.ERROR, logger="luigi-interface"):
        assert not succeeded(build(LoadAll(mode="full", batch_tag="f", filter="client,hisprixa",
                                           continue_on_error=True)))
    ran = {r[0] for r in env.sql("SELECT DISTINCT TableName FROM etl.ETL_Log")}
    assert ran == {"client", "hisprixa"}, ran
    held = [r.getMessage() for r in caplog.records if "that wait for it are not loaded" in r.getMessage()]
    assert held == [], held


def test_a_half_written_extract_that_cannot_be_removed_does_not_replace_the_extracts_error(tmp_path, monkeypatch,
                                                                                          caplog):
    """Mutant X3 (cbm_luigi/transform.py, shape_batches): the `finally`'s `except OSError` around `tmp.unlink()`
    narrowed to `except FileNotFoundError`. The cache's filesystem remounted read-only in the middle of a COPY
    (an ext4 error does so) leaves a half-written temporary file that unlink cannot remove (EROFS): the OSError
    then replaced the error being raised, and etl.ETL_Log said 'OSError: [Errno 30] Read-only file system: <.tmp>'
    with neither the table nor the cause. tests/test_filesystem_failures.py covers a cache read-only from the
    start, where no temporary file exists and unlink is never called. Here the source fails at its fourth batch
    and unlink answers EROFS: the source's own error must come through, the file named in a warning."""
    import errno
    import logging
    import pathlib

    import pyarrow as pa

    from cbm_luigi.plan import PlanColumn, TablePlan
    from cbm_luigi.transform import shape_batches
    from cbm_luigi.types import ColumnType

    plan = TablePlan("t", "t", ["id"], [PlanColumn("id", "id", ColumnType("int32"), False),
                                        PlanColumn("nom", "nom", ColumnType("string"))])
    schema = plan.extract_schema()

    def batches():
        for i in range(5):
            if i == 3:
                raise ValueError("table t, column nom, key id=30: the driver's own words")
            yield pa.record_batch([pa.array(range(i * 10, i * 10 + 10), pa.int32()),
                                   pa.array([f"n{j}" for j in range(10)])], schema=schema)

    real_unlink, real_exists, tried = pathlib.Path.unlink, pathlib.Path.exists, []

    def exists(self, *a, **kw):  # the COPY's half-written file (DuckDB may not have flushed 30 rows yet)
        return True if self.name.endswith(".tmp") else real_exists(self, *a, **kw)

    def unlink(self, *a, **kw):
        if self.name.endswith(".tmp"):
            tried.append(self)
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_unlink(self, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "exists", exists)
    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    with caplog.at_level(logging.WARNING), \
            pytest.raises(ValueError, match=r"^table t, column nom, key id=30: the driver's own words$"):
        shape_batches(plan, schema, batches(), tmp_path / "t.parquet")
    assert tried, "the temporary file's removal was not tried"
    assert any("could not remove" in r.getMessage() for r in caplog.records)


def _merge_of_famille_fails(monkeypatch, batch_tag: str) -> None:
    """famille's full load of batch `batch_tag` fails in its merge for a passing reason (a lost connection), once:
    its extract is kept."""
    from cbm_luigi import tasks
    from cbm_luigi.tasks import LoadTable

    def lost(name):
        if name == "merge":
            raise RuntimeError("connection lost")

    with monkeypatch.context() as m:
        m.setattr(tasks, "checkpoint", lost)
        assert not succeeded(build(LoadTable(table="famille", mode="full", batch_tag=batch_tag)))


def test_clean_cache_drops_a_failed_batch_older_than_the_tables_newest_load_under_the_same_configuration(
        env, capsys, monkeypatch):
    """Mutant C5 (cbm_luigi/cli.py, cmd_clean_cache): the condition `config_store.newer_load_than(s, table, started)
    is None and` dropped. A batch whose merge failed for a passing reason (here a lost connection) keeps its
    extract; a later batch then loads the table under the same configuration. The old extract is of no use (a
    rerun of that batch would be refused as older than ods, and reads the source again), but clean-cache kept it
    every night, saying 'kept ...: not validated yet: famille (full) (rerun the batch ...)': the folder is never
    removed and the advice is wrong. tests/test_cli.py's test of this case changes FilterClause in between, so the
    configuration check alone removed the file there."""
    import time

    from cbm_luigi.tasks import LoadTable

    _merge_of_famille_fails(monkeypatch, "mid")
    assert "connection lost" in last_error(env, "famille")
    assert list(env.cache.glob("*-mid/full/*.extract.parquet"))  # kept: a failed merge keeps its extract
    time.sleep(0.05)
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="new")))
    capsys.readouterr()
    assert cbm_etl(["clean-cache", "--keep", "1"]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name.split("-", 3)[-1] for p in env.cache.iterdir()) == ["new"], out
    assert "not validated yet" not in out, out


def test_a_failed_step_whose_cap_cannot_be_put_back_still_reports_its_own_error(env, monkeypatch):
    """Mutant S8 (cbm_luigi/steps.py, _settle_resources): the `try: ... except Exception: log.warning(...)` around
    `wh.settle_resources(s)` removed. After a failed step the configured cap is put back on the same connection; when
    the failure also broke the connection (DuckDB invalidates the database after a fatal write error, such as a
    full disk under its WAL), putting the cap back fails too, and that second error replaced the step's own in
    etl.ETL_Log and the run's output: the operator read 'database has been invalidated', not the full disk. The
    step's error must be the one reported, the cap's failure a warning."""
    import duckdb

    from cbm_luigi import tasks
    from cbm_luigi.tasks import LoadTable
    from cbm_luigi.warehouse.duckdb_wh import DuckDbWarehouse

    broken = []
    real_settle = DuckDbWarehouse.settle_resources

    def settle_resources(self, s):
        if broken:
            raise duckdb.FatalException("FATAL Error: database has been invalidated because of a previous fatal "
                                        "error")
        return real_settle(self, s)

    def disk_full(name):
        if name == "merge":
            broken.append(name)
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(DuckDbWarehouse, "settle_resources", settle_resources)
    monkeypatch.setattr(tasks, "checkpoint", disk_full)
    assert not succeeded(build(LoadTable(table="famille", mode="full")))
    err = last_error(env, "famille")
    assert "No space left on device" in err and "invalidated" not in err, err[:500]


def test_a_single_table_run_names_no_table_held_back(env, caplog):
    """Mutant L1 (cbm_luigi/tasks.py, _say_held_back): the guard `if not task.in_batch: return` removed. A
    `LoadTable --table client` run (an operator's rerun of one table) loads that table alone; when it fails the
    mutant logged 'table client failed (extract): 3 table(s) that wait for it are not loaded in batch ...:
    produit, lignecli, hisprixa (--continue-on-error loads ... anyway)': tables this command never loads, and a
    flag LoadTable does not take. The line belongs to LoadAll runs only."""
    import logging

    from cbm_luigi.tasks import LoadTable

    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_column = 1' WHERE TableName = 'client'")
    with caplog.at_level(logging.ERROR, logger="luigi-interface"):
        assert not succeeded(build(LoadTable(table="client", mode="full")))
    assert "no_such_column" in last_error(env, "client")
    held = [r.getMessage() for r in caplog.records if "that wait for it are not loaded" in r.getMessage()]
    assert held == [], held


def test_a_failed_steps_duration_is_logged_in_milliseconds(env, monkeypatch, capsys):
    """Mutant L3 (cbm_luigi/tasks.py, _log_failure): `int((time.monotonic() - started) * 1000)` made
    `int(time.monotonic() - started)`: a failed step's DurationMs in seconds, so `cbm-etl summary` and the
    monitoring views showed a merge that failed after 1.5 s as 0.001 s. tests/test_cli.py only asks for a
    DurationMs >= 0."""
    import time

    from cbm_luigi import tasks
    from cbm_luigi.tasks import LoadTable

    def slow_then_lost(name):
        if name == "merge":
            time.sleep(1.5)
            raise RuntimeError("connection lost")

    monkeypatch.setattr(tasks, "checkpoint", slow_then_lost)
    assert not succeeded(build(LoadTable(table="famille", mode="full")))
    [(step, ms)] = env.sql("SELECT Step, DurationMs FROM etl.ETL_Log WHERE Status = 'FAILED'")
    assert step == "merge" and 1500 <= ms < 60_000, ms
    capsys.readouterr()
    assert cbm_etl(["summary"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("famille"))
    assert line.split()[1] == "FAILED" and float(line.split()[7]) >= 1.5, line


def test_clean_cache_drops_a_failed_batch_of_a_table_no_longer_configured(env, capsys, monkeypatch):
    """Mutant C16 (cbm_luigi/cli.py, cmd_clean_cache): `if table in tables and ...` lost its `table in tables`.
    A batch whose merge failed keeps its extract; the table is then removed from config.ETL_Tables (no longer
    wanted). No run will use that file again, but the mutant kept the batch every night ('kept ...: not validated
    yet: famille (full) (rerun the batch ...)'): its configuration makes no plan, which keeps a file 'a rerun might
    use'. The folder must go, with the other old batches."""
    import time

    from cbm_luigi.tasks import LoadTable

    _merge_of_famille_fails(monkeypatch, "old")
    assert list(env.cache.glob("*-old/full/*.extract.parquet"))
    env.sql("DELETE FROM config.ETL_Columns WHERE TableName = 'famille'")
    env.sql("DELETE FROM config.ETL_Tables WHERE TableName = 'famille'")
    time.sleep(0.05)
    assert succeeded(build(LoadTable(table="fournis", mode="full", batch_tag="new")))
    capsys.readouterr()
    assert cbm_etl(["clean-cache", "--keep", "1"]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name.split("-", 3)[-1] for p in env.cache.iterdir()) == ["new"], out


def test_the_extract_engine_spills_into_the_cache_not_the_working_directory(env, monkeypatch, tmp_path):
    """Mutant X4 (cbm_luigi/transform.py, compute_engine): the `SET temp_directory` to the batch's cache folder
    removed when the engine opens. An in-memory DuckDB then spills into `.tmp` under the process's working
    directory: a cron's (the service user's home, or /) may be unwritable or on a small disk, and a wide table's
    extract that OPERATIONS says 'spills to disk' failed there. Here the working directory has a file named `.tmp`
    (DuckDB cannot make its spill folder there); the extract spills under CBM_CACHE_DIR and loads. The wide table
    and the 48MB limit are tests/test_filesystem_failures.py's."""
    from cbm_luigi import demo_source
    from cbm_luigi.tasks import LoadTable

    cwd = tmp_path / "cron-cwd"
    cwd.mkdir()
    (cwd / ".tmp").write_text("not a folder")
    monkeypatch.chdir(cwd)
    demo_source.add_synthetic_table(env.source, "stock_large", 20_000, 200)
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols, DateModifCol) VALUES ('stock_large', 'id', "
            "'dat_mod')")
    monkeypatch.setenv("CBM_TRANSFORM_MEMORY_LIMIT", "48MB")
    assert succeeded(build(LoadTable(table="stock_large", mode="full"))), last_error(env, "stock_large")
    assert env.sql("SELECT COUNT(*) FROM ods.stock_large")[0][0] == 20_000


# == mutation testing of the review fixes of 2026-11-29 (evening): each test kills a mutant no other test killed ==

# -- cli.cmd_check_sla: release_connections() before printing -----------------------------------------------------

def test_check_sla_read_through_a_pipe_does_not_hold_the_embedded_warehouse(env):
    """Mutant: cmd_check_sla without its new `release_connections()` (cli.py). The commit says 'summary and
    check-sla let go of the embedded warehouse before printing', but only summary's is tested. check-sla runs from
    the monitor's own cron line, its output piped (to mail, a pager): with the pipe full, the command blocked in
    print while still holding the DuckDB file, and a nightly started meanwhile could not open the warehouse."""
    for i in range(150):  # never loaded: each is a NEVER_LOADED line, ~60 bytes, well past one 4 KB pipe
        env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols, DateModifCol) VALUES (?, 'id', 'dat_mod')",
                [f"sla_table_{i:03d}"])
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    code = "import sys; from cbm_luigi.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "check-sla"], cwd=env.home, env=subprocess_env(env),
                            stdout=w, stderr=subprocess.PIPE, text=True)
    os.close(w)
    try:
        time.sleep(4)  # read its rows, printed the first page; nobody reads the pipe
        assert proc.poll() is None, "check-sla did not fill the pipe"
        try:
            duckdb.connect(str(env.warehouse)).close()  # what the nightly does first
        except duckdb.Error as exc:
            pytest.fail(f"check-sla blocked on its output holds the warehouse: {exc}")
    finally:
        with os.fdopen(r, "rb") as f:
            f.read()
        proc.wait(30)
    assert proc.returncode == 2


# -- plan.build_plan: an EXTENT field as TimeOfDayCol -----------------------------------------------------------------

def test_a_time_of_day_that_is_an_extent_field_is_refused_as_configuration(env, monkeypatch):
    """Mutant: build_plan's new loop over ("DateModifCol", "TimeOfDayCol") reduced to DateModifCol. The commit
    says an EXTENT field as DateModifCol *or TimeOfDayCol* is a configuration error; only DateModifCol is tested.
    An integer EXTENT field (`heures`, EXTENT 2) as TimeOfDayCol passes the INTEGER check (its element type)."""
    raw_table(env.source, "arrtod", [(Col("id", "integer", nullable=False), "INTEGER"),
                                     (Col("dat_mod", "date"), "DATE"),
                                     (Col("heures", "integer", extent=2), "VARCHAR(40)")], ("id",),
              [(1, "2024-01-01", encode_extent(["3600", "7200"])), (2, "2024-01-02", encode_extent([None, "60"]))])
    configure(env, monkeypatch, "embedded", "arrtod", date_col="dat_mod", TimeOfDayCol="heures", HasTimestamps=True)
    assert not run("arrtod")
    err = failure(env, "arrtod")
    assert "TimeOfDayCol" in err and ("EXTENT" in err or "array" in err), err


# -- config_store.uninitialised_hint: both conditions ------------------------------------------------------------------

def test_a_missing_ods_or_source_table_is_not_told_to_run_init_db():
    """Mutant: uninitialised_hint's `and` between its two searches made `or` (the line 9007348 rewrote). Its
    advice ('run `cbm-etl init-db`') is for the pipeline's own config/etl tables only; a missing ods table, or a
    source table, on SQL Server is no reason to initialise the warehouse."""
    for text in ["('42S02', \"[42S02] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Invalid object name "
                 "'ods.client'. (208) (SQLExecDirectW)\")",
                 "Catalog Error: Table with name produit does not exist!"]:
        assert config_store.uninitialised_hint(text, "mssql:Server=db") is None, text


# -- settings: the plain keywords after a quote or a brace; known secrets ----------------------------------------------

@pytest.mark.parametrize("text", ["connect('KEY=hunter2;DSN=x') failed", "Options={TOKEN=hunter2};DSN=x"])
def test_plain_secret_keywords_after_a_quote_or_a_brace_are_masked(text):
    """Mutants: `'` or `{` dropped from the plain keywords' look-behind `(?<=[;{"'])` in _SECRET_KEYS. The comment
    (and the test's docstring) says KEY/PASS/TOKEN/KP/KSP/TSP count 'right after `;`, `{`, `"` or `'`', but only
    `;`, `"` and a line start are tested: a connection string repr'd in a message leaked its secret."""
    assert "hunter2" not in mask_secrets(text), mask_secrets(text)


def _settings_read_with(monkeypatch, **odbc: str) -> None:
    """load_settings() with no known secret yet and these connection strings (CBM_SOURCE_ODBC=..., ...)."""
    monkeypatch.setattr(settings_mod, "_KNOWN_SECRETS", set())
    monkeypatch.setenv("CBM_ENV_FILE", "")
    for name, value in odbc.items():
        monkeypatch.setenv(name, value)
    load_settings()


def test_a_known_secret_that_holds_another_is_masked_whole(monkeypatch):
    """Mutant: mask_secrets replaces the known secrets shortest first (`reverse=True` dropped). Two connection
    strings whose passwords share a start (the source's and the warehouse's): the shorter one replaced first left
    the longer one's tail in the message."""
    _settings_read_with(monkeypatch, CBM_SOURCE_ODBC="DSN=progress;UID=etl;PWD=Winter24",
                        CBM_MSSQL_ODBC="DRIVER={ODBC Driver 18 for SQL Server};SERVER=db;UID=etl;PWD=Winter24-dwh!")
    said = mask_secrets("login with Winter24-dwh! refused")
    assert "-dwh!" not in said and "Winter24" not in said, said


def test_the_warehouse_connection_strings_secret_is_masked_wherever_it_appears(monkeypatch):
    """Mutant: load_settings without `register_secrets(_env("CBM_MSSQL_ODBC"))`. The commit says 'the configured
    connection strings' secret values are masked wherever they appear'; only CBM_SOURCE_ODBC's is tested."""
    _settings_read_with(monkeypatch,
                        CBM_MSSQL_ODBC="DRIVER={ODBC Driver 18 for SQL Server};SERVER=db;UID=etl;PWD=Dwh-S3cret")
    said = mask_secrets("Login failed for user 'etl' (password Dwh-S3cret)")
    assert "Dwh-S3cret" not in said, said


def test_a_braced_password_with_an_escaped_brace_is_masked_as_the_driver_reads_it(monkeypatch):
    """Mutant: register_secrets keeps a braced value's `}}` (the ODBC escape of `}`) instead of the password the
    driver reads, `}`. A driver quoting the password quotes `Pa}ss-w0rd`, which then went unmasked."""
    _settings_read_with(monkeypatch, CBM_SOURCE_ODBC="DSN=progress;UID=etl;PWD={Pa}}ss-w0rd}")
    said = mask_secrets("password Pa}ss-w0rd refused")
    assert "ss-w0rd" not in said, said


# -- source/errors.py: SQLSTATEs as drivers write them, and nowhere else ------------------------------------------------

@pytest.mark.parametrize("text", [
    # pyodbc: (sqlstate, '[sqlstate] ...'), and the driver names the identifier it could not find
    "42S22 [42S22] [SQLite]no such column: 28000 (1) (SQLExecDirectW)",
    "HY000 [HY000] [DataDirect][ODBC Progress OpenEdge Wire Protocol driver][OPENEDGE]Column not found: \"08001\" "
    "(7518) (SQLExecDirectW)",
    # arrow-odbc
    "ODBC emitted an error calling 'SQLExecDirect':\nState: HY000, Native error: 1, Message: [SQLite]no such "
    "column: 28000 (1)",
])
def test_a_sqlstate_like_number_in_the_statement_does_not_choose_the_driver_advice(text):
    """Mutant: `_state` back to the bare code anywhere (`(?:28000)` without `[`, `State: ` or the text's start):
    the class of bug the commit fixed for '193'. A French ERP filters by postal code (Chartres is 28000,
    Barcelona 08001): a FilterClause with the code in double quotes (`cp = "28000"`, an identifier in OpenEdge)
    is refused by the driver naming `28000`, and the rules for SQLSTATE 28000 (a failed login) or 08001 (no
    connection), checked before the no-such-column rule, told the operator to check UID/PWD or HOST/PORT."""
    from cbm_luigi.source.errors import translate

    err = translate(RuntimeError(text), table="adr")
    assert "UID/PWD" not in str(err) and "HOST/PORT" not in str(err), str(err)
    assert "sync-columns" in str(err) and not err.transient, str(err)


@pytest.mark.parametrize("text", [
    # arrow-odbc (the default reader) writes `State: <sqlstate>, Native error: <n>, Message: ...`
    "ODBC emitted an error calling 'SQLFetch':\nState: 08S01, Native error: 0, Message: [DataDirect][ODBC Progress "
    "OpenEdge Wire Protocol driver]Socket closed.",
    # pyodbc: (sqlstate, '[sqlstate] ...'): a connect to a host that does not answer
    "08001 [08001] [DataDirect][ODBC Progress OpenEdge Wire Protocol driver]Unable to establish a session with srv "
    "(0) (SQLDriverConnect)",
    "08004 [08004] [DataDirect][ODBC Progress OpenEdge Wire Protocol driver]Server rejected the session (0) "
    "(SQLDriverConnect)",
])
def test_a_connection_failure_known_by_its_sqlstate_alone_is_said_and_retried(text):
    """Mutants: `\\bState: ` dropped from `_state`, or 08001/08004 dropped from the connection rule's states. A
    driver text holding none of the rule's phrases is known by its SQLSTATE only; without it the error lost its
    HOST/PORT advice and its `transient` mark (the retry of a dropped connection)."""
    from cbm_luigi.source.errors import translate

    err = translate(RuntimeError(text), table="client")
    assert "HOST/PORT" in str(err) and err.transient, str(err)


def test_a_32_bit_driver_on_linux_is_said_as_a_32_64_bit_mismatch():
    """Mutant: `wrong ELF class` dropped from the IM003 rule. The commit says "'wrong ELF class' does" give the
    32/64-bit advice; nothing tested it. unixODBC's text for a 32-bit driver library also holds "Can't open lib",
    the next rule's phrase: the operator was told to check `odbcinst -q -d` for a driver that is installed."""
    from cbm_luigi.source.errors import translate

    text = ("01000 [01000] [unixODBC][Driver Manager]Can't open lib '/usr/dlc/odbc/lib/pgoe27.so' : "
            "/usr/dlc/odbc/lib/pgoe27.so: wrong ELF class: ELFCLASS32 (0) (SQLDriverConnect)")
    err = str(translate(RuntimeError(text), action="connect"))
    assert "32/64-bit" in err, err


# -- source/readers.py: arrow-odbc's isolation statement under the query timeout -----------------------------------

def test_the_arrow_odbc_isolation_statement_runs_under_the_query_timeout(env, monkeypatch):
    """Mutant: ArrowOdbcReader's `SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED` step sent through
    `self.con.execute` (no `query_timeout_sec`) again. 9007348 routed it through the timed `execute`, the
    statement its docstring names ('on Progress `SET TRANSACTION ...`, run on every new connection (the default
    reader, default isolation)'), but its test runs the SQLite stand-in dialect, where that step is not taken."""
    import importlib

    from cbm_luigi.source.dialect import dialect_for
    from cbm_luigi.source.readers import ArrowOdbcReader
    from .test_source_odbc import odbc_vars

    ao = importlib.import_module("arrow_odbc.connect")
    for k, v in odbc_vars(env, "arrow-odbc").items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CBM_QUERY_TIMEOUT_S", "7")
    monkeypatch.setenv("CBM_SOURCE_ISOLATION", "READ_UNCOMMITTED")
    seen = []
    real = ao.Connection.execute

    def spy(self, query, *a, **kw):
        seen.append((query[:40], kw.get("query_timeout_sec")))
        if query.startswith("SET TRANSACTION"):
            return None  # OpenEdge's statement: the SQLite stand-in does not know it
        return real(self, query, *a, **kw)
    monkeypatch.setattr(ao.Connection, "execute", spy)
    reader = ArrowOdbcReader(load_settings(), dialect_for("openedge"))
    reader.close()
    iso = [t for q, t in seen if q.startswith("SET TRANSACTION")]
    assert iso == [7], seen


# -- regressions of the two commits ------------------------------------------------------------------------------------

@pytest.mark.parametrize("reader", ["pyodbc", "arrow-odbc"])
def test_a_syntax_error_in_the_init_sql_is_not_blamed_on_filterclause(env, monkeypatch, reader):
    """Regression of 9007348 ('a syntax error is said first'): the new first rule of errors._RULES gives every
    syntax error the advice 'check the table's FilterClause in config.ETL_Tables and its SourceExpression
    overrides in config.ETL_Columns'. A typo in CBM_SOURCE_INIT_SQL (a set-up step of every new connection,
    translated by readers._set_up with action 'statement N of CBM_SOURCE_INIT_SQL') now sends the operator to
    config tables that have nothing to do with it; before, the message named the statement and the driver's
    words only."""
    from .test_source_odbc import odbc_vars

    for k, v in odbc_vars(env, reader).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CBM_SOURCE_INIT_SQL", odbc_vars(env, reader)["CBM_SOURCE_INIT_SQL"] +
                       ";;PRAGMA cache_size = = 2000")  # a typo in the third statement
    assert not run("famille")
    err = failure(env, "famille")
    assert "statement 3 of CBM_SOURCE_INIT_SQL" in err and "syntax error" in err, err
    assert "FilterClause" not in err and "SourceExpression" not in err, err
