"""Guards from a mutation review of the code changed on 2026-11-28/29 (steps, tasks, duckdb_wh memory, transform,
cli, config_store, plan): each kills a mutant (a plausible small bug) that no earlier test killed, one a user
would notice. Each docstring names its mutant."""
from __future__ import annotations

import pytest

from cbm_luigi.naming import MAX_NAME_LENGTH
from cbm_luigi.plan import ConfigError, build_plan

from .conftest import build, cbm_etl, last_error, succeeded  # noqa: F401


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
    """Mutant S8 (cbm_luigi/steps.py, _settle_memory): the `try: ... except Exception: log.warning(...)` around
    `wh.settle_memory(s)` removed. After a failed step the configured cap is put back on the same connection; when
    the failure also broke the connection (DuckDB invalidates the database after a fatal write error, such as a
    full disk under its WAL), putting the cap back fails too, and that second error replaced the step's own in
    etl.ETL_Log and the run's output: the operator read 'database has been invalidated', not the full disk. The
    step's error must be the one reported, the cap's failure a warning."""
    import duckdb

    from cbm_luigi import tasks
    from cbm_luigi.tasks import LoadTable
    from cbm_luigi.warehouse.duckdb_wh import DuckDbWarehouse

    broken = []
    real_settle = DuckDbWarehouse.settle_memory

    def settle_memory(self, s):
        if broken:
            raise duckdb.FatalException("FATAL Error: database has been invalidated because of a previous fatal "
                                        "error")
        return real_settle(self, s)

    def disk_full(name):
        if name == "merge":
            broken.append(name)
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(DuckDbWarehouse, "settle_memory", settle_memory)
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
