"""OPERATIONS.md's "When something fails" table (and "Batches and reruns", "Housekeeping") followed literally on
the embedded demo (a review): make the failure happen as in production, check the operator can find the row from
the message, do exactly what the row's "likely fix" says, and check the table then loads the right data."""
from __future__ import annotations

import re
import sqlite3
import subprocess
from decimal import Decimal

import pytest

from cbm_luigi import demo_source
from cbm_luigi.cli import main as cbm_etl
from cbm_luigi.demo_source import Col, TableDef
from cbm_luigi.tasks import LoadAll, LoadTable

from .conftest import (BIN, advised_rebuild, assert_ods_equals_source, build, last_error, on_source, subprocess_env,
                       succeeded)
from .test_progress_quirks import configure, raw_table
from .test_source_odbc import odbc_vars


def load(table, mode="full", run_id="r1", **kw) -> bool:
    """One `luigi ... LoadTable` command: its own run id, as each command is its own process."""
    return succeeded(build(LoadTable(table=table, mode=mode, run_id=run_id, **kw)))


def cols(env, table):
    return [r[0] for r in env.sql("SELECT column_name FROM information_schema.columns WHERE table_schema = 'ods' "
                                  "AND table_name = ? ORDER BY ordinal_position", [table])]


# -- NULL (Progress unknown value ?) in a mandatory column -------------------------------------------------------

def _mandatory(env, monkeypatch):
    raw_table(env.source, "mand", [(Col("id", "integer", nullable=False), "INTEGER"),
                                   (Col("code", "varchar", 10, nullable=False), "VARCHAR(10)"),
                                   (Col("dat_mod", "date"), "DATE")], ("id",),
              [(1, "a", None), (2, None, None), (3, "c", None)])
    configure(env, monkeypatch, "embedded", "mand", date_col="dat_mod")
    assert not load("mand", run_id="r1")
    err = last_error(env, "mand")
    assert "NULL (Progress unknown value ?) in a mandatory column" in err, err


def test_null_in_a_mandatory_column_fixed_with_a_coalesce_source_expression(env, monkeypatch):
    _mandatory(env, monkeypatch)
    env.sql("""UPDATE config.ETL_Columns SET SourceExpression = 'COALESCE("code", ''?'') AS code', IsOverride = 1
               WHERE TableName = 'mand' AND ColumnName = 'code'""")
    assert load("mand", run_id="r2"), last_error(env, "mand")
    assert env.sql("SELECT id, code FROM ods.mand ORDER BY id") == [(1, "a"), (2, "?"), (3, "c")]


def test_null_in_a_mandatory_column_fixed_by_excluding_it(env, monkeypatch):
    _mandatory(env, monkeypatch)
    env.sql("UPDATE config.ETL_Columns SET IsExcluded = 1 WHERE TableName = 'mand' AND ColumnName = 'code'")
    assert load("mand", run_id="r2"), last_error(env, "mand")
    assert env.sql("SELECT id FROM ods.mand ORDER BY id") == [(1,), (2,), (3,)]


def test_null_in_a_mandatory_column_fixed_in_the_row(env, monkeypatch):
    _mandatory(env, monkeypatch)
    on_source(env, "UPDATE mand SET code = 'b' WHERE id = 2")
    assert load("mand", run_id="r2"), last_error(env, "mand")
    assert env.sql("SELECT id, code FROM ods.mand ORDER BY id") == [(1, "a"), (2, "b"), (3, "c")]


# -- outside years 1 to 9999 --------------------------------------------------------------------------------------

def test_a_date_outside_years_fixed_with_a_case_source_expression(env, monkeypatch):
    raw_table(env.source, "annee", [(Col("id", "integer", nullable=False), "INTEGER"), (Col("d", "date"), "DATE"),
                                    (Col("dat_mod", "date"), "DATE")], ("id",),
              [(1, "2020-01-01", None), (2, "0000-02-29", None)])
    configure(env, monkeypatch, "embedded", "annee", date_col="dat_mod")
    assert not load("annee", run_id="r1")
    assert "outside years 1 to 9999" in last_error(env, "annee"), last_error(env, "annee")
    env.sql("""UPDATE config.ETL_Columns SET IsOverride = 1,
               SourceExpression = 'CASE WHEN "d" < ''0001-01-01'' THEN NULL ELSE "d" END AS d'
               WHERE TableName = 'annee' AND ColumnName = 'd'""")
    assert load("annee", run_id="r2"), last_error(env, "annee")
    from datetime import date
    assert env.sql("SELECT id, d FROM ods.annee ORDER BY id") == [(1, date(2020, 1, 1)), (2, None)]


# -- does not fit ... without loss ---------------------------------------------------------------------------------

def test_a_value_that_does_not_fit_a_float_fixed_with_a_decimal_override(env, monkeypatch):
    raw_table(env.source, "flt", [(Col("id", "integer", nullable=False), "INTEGER"), (Col("f", "float"), "TEXT"),
                                  (Col("dat_mod", "date"), "DATE")], ("id",),
              [(1, "1.5", None), (2, "12345678901234567.1", None)])
    configure(env, monkeypatch, "embedded", "flt", date_col="dat_mod")
    assert not load("flt", run_id="r1")
    err = last_error(env, "flt")
    assert "without loss" in err, err
    env.sql("UPDATE config.ETL_Columns SET IsOverride = 1, DataType = 'numeric', Width = 20, Scale = 1 "
            "WHERE TableName = 'flt' AND ColumnName = 'f'")
    assert load("flt", run_id="r2"), last_error(env, "flt")
    assert env.sql("SELECT id, f FROM ods.flt ORDER BY id") == [(1, Decimal("1.5")), (2, Decimal("12345678901234567.1"))]


# -- ods.T was built as type 1 / SCD2, and IsDimension now says ... ------------------------------------------------

@pytest.mark.parametrize("night", ["full", "incremental"])
@pytest.mark.parametrize("table", ["produit", "client"])
def test_is_dimension_switched_rebuild_as_the_row_says(env, table, night):
    assert load(table, "full", run_id="r1", batch_tag="a")
    env.sql("UPDATE config.ETL_Tables SET IsDimension = NOT IsDimension WHERE TableName = ?", [table])
    assert not load(table, night, run_id="r2")
    err = last_error(env, table)
    assert "IsDimension" in err and "drop it and run `luigi --module cbm_luigi LoadTable" in err, err
    # keep a copy of ods.T, drop it and run the full load the message gives
    env.sql(f"CREATE TABLE ods.{table}_copy AS SELECT * FROM ods.{table}")
    env.sql(f"DROP TABLE ods.{table}")
    assert load(table, "full", run_id="r3", batch_tag=advised_rebuild(err, table)), last_error(env, table)
    assert_ods_equals_source(env, table)
    assert ("_etl_is_current" in cols(env, table)) == (table == "produit")
    # and the next nights load
    on_source(env, f"UPDATE {table} SET dat_mod = date('now') WHERE rowid IN (SELECT rowid FROM {table} LIMIT 3)")
    assert load(table, "incremental", run_id="r4", batch_tag="next"), last_error(env, table)
    assert_ods_equals_source(env, table)


@pytest.mark.parametrize("table", ["produit", "client"])
def test_is_dimension_switched_set_back_as_the_row_says(env, table):
    assert load(table, "full", run_id="r1", batch_tag="a")
    env.sql("UPDATE config.ETL_Tables SET IsDimension = NOT IsDimension WHERE TableName = ?", [table])
    assert not load(table, "incremental", run_id="r2")
    env.sql("UPDATE config.ETL_Tables SET IsDimension = NOT IsDimension WHERE TableName = ?", [table])
    assert load(table, "incremental", run_id="r3"), last_error(env, table)
    assert_ods_equals_source(env, table)


# -- ods.T holds several rows for one key ---------------------------------------------------------------------------

def _narrowed(env, dimension):
    demo_source.add_table(env.source, TableDef(
        "k2", [Col("a", "integer", nullable=False), Col("b", "integer", nullable=False), Col("v", "varchar", 5),
               Col("dat_mod", "date")], ("a", "b"), [(1, 1, "x", None), (1, 2, "y", None), (2, 1, "z", None)]))
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols, DateModifCol, IsDimension) "
            "VALUES ('k2', 'a,b', 'dat_mod', ?)", [dimension])
    assert load("k2", "full", run_id="r1", batch_tag="a")
    on_source(env, "DELETE FROM k2 WHERE a = 1 AND b = 2", "UPDATE k2 SET v = 'x2' WHERE a = 1")
    assert load("k2", "full", run_id="r2", batch_tag="b")
    env.sql("UPDATE config.ETL_Tables SET PrimaryKeyCols = 'a' WHERE TableName = 'k2'")
    assert not load("k2", "full", run_id="r3")
    err = last_error(env, "k2")
    assert "holds several" in err and "drop it, and run `luigi --module cbm_luigi LoadTable" in err, err
    return err


def _live_k2(env, dimension):
    live = "_etl_is_current AND NOT _etl_is_deleted" if dimension else "NOT _etl_is_deleted"
    return env.sql(f"SELECT a, b, v FROM ods.k2 WHERE {live} ORDER BY a, b")


@pytest.mark.parametrize("dimension", [False, True])
def test_a_narrowed_key_rebuilt_as_the_row_says(env, dimension):
    err = _narrowed(env, dimension)
    env.sql("CREATE TABLE ods.k2_copy AS SELECT * FROM ods.k2")
    env.sql("DROP TABLE ods.k2")
    assert load("k2", "full", run_id="r4", batch_tag=advised_rebuild(err, "k2")), last_error(env, "k2")
    assert _live_k2(env, dimension) == [(1, 1, "x2"), (2, 1, "z")]
    assert env.sql("SELECT COUNT(*) FROM ods.k2")[0][0] == 2


@pytest.mark.parametrize("dimension", [False, True])
def test_a_narrowed_key_set_back_as_the_row_says(env, dimension):
    _narrowed(env, dimension)
    env.sql("UPDATE config.ETL_Tables SET PrimaryKeyCols = 'a,b' WHERE TableName = 'k2'")
    assert load("k2", "full", run_id="r4"), last_error(env, "k2")
    assert _live_k2(env, dimension) == [(1, 1, "x2"), (2, 1, "z")]


# -- longer than arrow-odbc's buffer ----------------------------------------------------------------------------

LONG = "x" * 200_000


def _long_clob(env, monkeypatch):
    raw_table(env.source, "memo", [(Col("id", "integer", nullable=False), "INTEGER"), (Col("notes", "clob"), "TEXT"),
                                   (Col("dat_mod", "date"), "DATE")], ("id",),
              [(1, "short", None), (2, LONG, None)])
    configure(env, monkeypatch, "arrow-odbc", "memo", date_col="dat_mod")
    assert not load("memo", run_id="r1")
    err = last_error(env, "memo")
    assert "longer than arrow-odbc's buffer" in err, err


@pytest.mark.parametrize("fix", ["pyodbc", "exclude"])
def test_a_clob_longer_than_arrow_odbcs_buffer_fixed_as_the_row_says(env, monkeypatch, fix):
    _long_clob(env, monkeypatch)
    if fix == "pyodbc":
        monkeypatch.setenv("CBM_ODBC_READER", "pyodbc")
    elif fix == "exclude":
        env.sql("UPDATE config.ETL_Columns SET IsExcluded = 1 WHERE TableName = 'memo' AND ColumnName = 'notes'")
    else:
        env.sql("""UPDATE config.ETL_Columns SET IsOverride = 1, DataType = 'varchar', Width = 2000,
                   SourceExpression = 'SUBSTRING("notes", 1, 2000) AS notes'
                   WHERE TableName = 'memo' AND ColumnName = 'notes'""")
    assert load("memo", run_id="r2"), last_error(env, "memo")
    if fix == "pyodbc":
        assert env.sql("SELECT id, notes FROM ods.memo ORDER BY id") == [(1, "short"), (2, LONG)]
    elif fix == "exclude":
        assert env.sql("SELECT id FROM ods.memo ORDER BY id") == [(1,), (2,)]
    else:
        assert env.sql("SELECT id, notes FROM ods.memo ORDER BY id") == [(1, "short"), (2, LONG[:2000])]


# -- is not UTF-8 text --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reader", ["arrow-odbc"])
def test_text_not_utf8_fixed_in_the_row(env, monkeypatch, reader):
    raw_table(env.source, "cp", [(Col("id", "integer", nullable=False), "INTEGER"), (Col("nom", "varchar", 20), "VARCHAR(20)"),
                                 (Col("dat_mod", "date"), "DATE")], ("id",), [(1, "ok", None), (2, "x", None)])
    con = sqlite3.connect(env.source)
    con.execute("UPDATE cp SET nom = CAST(X'436166E9' AS TEXT) WHERE id = 2")
    con.commit()
    con.close()
    configure(env, monkeypatch, reader, "cp", date_col="dat_mod")
    assert not load("cp", run_id="r1")
    err = last_error(env, "cp")
    assert "not UTF-8" in err and "id=2" in err, err
    on_source(env, "UPDATE cp SET nom = 'Café' WHERE id = 2")
    assert load("cp", run_id="r2"), last_error(env, "cp")
    assert env.sql("SELECT id, nom FROM ods.cp ORDER BY id") == [(1, "ok"), (2, "Café")]


# -- validation failed, on a critical table of the night --------------------------------------------------------

def test_a_critical_tables_validation_failure_followed_by_both_rows_loads_the_night(env):
    from datetime import date
    from cbm_luigi.tasks import MergeOds
    night = date(2026, 11, 28)
    assert succeeded(build(MergeOds(table="client", mode="full", batch_date=night, in_batch=True, run_id="r1")))
    env.sql("UPDATE ods.client SET _etl_hashdiff = 'tampered' WHERE cod_cli = (SELECT MIN(cod_cli) FROM ods.client)")
    assert not succeeded(build(LoadAll(mode="full", batch_date=night, run_id="r2")))
    err = last_error(env, "client")
    assert "validation failed" in err, err
    reload = re.search(r"`luigi --module cbm_luigi LoadTable --table client --mode full --batch-tag (\w+)`", err)
    assert reload, err
    # as written it asks a central scheduler: where none runs it waited a minute, then an RPCError (found in review)
    assert err[reload.end():].startswith(" (add --local-scheduler when no luigid runs); "), err
    assert load("client", "full", run_id="r3", batch_tag=reload.group(1)), last_error(env, "client")
    # the held-back tables: "fix T (its own error is above), then rerun the same command"
    assert succeeded(build(LoadAll(mode="full", batch_date=night, run_id="r4"))), last_error(env, "client")
    for t in ("client", "produit", "lignecli", "hisprixa"):
        assert_ods_equals_source(env, t)


# -- extracted ... before the newest load of the table ----------------------------------------------------------

def test_an_outdated_batch_extracted_again_as_the_message_says(env):
    from datetime import date
    from cbm_luigi.tasks import StageTable
    night = date(2026, 11, 28)
    assert succeeded(build(StageTable(table="produit", mode="full", batch_date=night, run_id="r1")))
    on_source(env, "UPDATE produit SET libelle = 'newer' WHERE cod_pro = (SELECT MIN(cod_pro) FROM produit)")
    assert load("produit", "full", run_id="r2", batch_tag="other")  # another run loads the table meanwhile
    assert not succeeded(build(LoadTable(table="produit", mode="full", batch_date=night, run_id="r1")))
    err = last_error(env, "produit")
    cmd = re.search(r"`cbm-etl (invalidate produit --batch \S+ --from extract)`", err)
    assert cmd and "before the newest load" in err, err
    assert cbm_etl(cmd.group(1).split()) == 0
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_date=night, run_id="r3"))), \
        last_error(env, "produit")
    assert_ods_equals_source(env, "produit")


# -- Batches and reruns ----------------------------------------------------------------------------------------

def test_rerun_a_failed_night_after_midnight_with_its_batch_date(env):
    from datetime import date, timedelta
    yesterday = date.today() - timedelta(days=1)
    assert succeeded(build(LoadAll(mode="full", batch_date=yesterday - timedelta(days=1), run_id="r0")))
    env.sql("UPDATE config.ETL_Tables SET FilterClause = 'no_such_column = 1' WHERE TableName = 'lignecli'")
    assert not succeeded(build(LoadAll(mode="incremental", batch_date=yesterday, run_id="r1")))
    env.sql("UPDATE config.ETL_Tables SET FilterClause = NULL WHERE TableName = 'lignecli'")
    assert succeeded(build(LoadAll(mode="incremental", batch_date=yesterday, run_id="r2")))
    on_source(env, "UPDATE lignecli SET qte = qte + 1, dat_mod = date('now') WHERE rowid IN "
                   "(SELECT rowid FROM lignecli LIMIT 5)")
    assert succeeded(build(LoadAll(mode="incremental", run_id="r3")))  # tonight's cron
    n = env.sql("SELECT COUNT(*) FROM etl.ETL_Markers WHERE Step = 'validate' AND BatchId = ?",
                [date.today().isoformat()])[0][0]
    assert n == 6
    assert_ods_equals_source(env, "lignecli")


def test_invalidate_from_stage_keeps_the_extract_unless_a_later_batch_loaded_the_table(env):
    from datetime import date
    d = date(2026, 11, 27)
    assert load("produit", "full", run_id="r1", batch_date=d)
    on_source(env, "UPDATE produit SET libelle = 'changed' WHERE cod_pro = (SELECT MIN(cod_pro) FROM produit)")
    assert cbm_etl(["invalidate", "produit", "--batch", d.isoformat(), "--from", "stage"]) == 0
    assert load("produit", "full", run_id="r2", batch_date=d)
    assert env.sql("SELECT COUNT(*) FROM ods.produit WHERE libelle = 'changed'")[0][0] == 0  # the cached extract
    assert load("produit", "full", run_id="r3", batch_date=d, batch_tag="later")
    assert_ods_equals_source(env, "produit")
    on_source(env, "UPDATE produit SET libelle = 'changed2' WHERE cod_pro = (SELECT MIN(cod_pro) FROM produit)")
    assert cbm_etl(["invalidate", "produit", "--batch", d.isoformat(), "--from", "stage"]) == 0
    assert load("produit", "full", run_id="r4", batch_date=d), last_error(env, "produit")
    assert_ods_equals_source(env, "produit")  # read again: a later batch loaded the table since


# -- Housekeeping: clean-cache keeps a batch not validated yet, and says how to give it up -----------------------

def test_clean_cache_advice_to_give_up_a_kept_batch_works(env, capsys):
    """clean-cache keeps `mid` (famille not validated) and says `cbm-etl invalidate <table> --batch B` gives it
    up. Done as written, the next clean-cache --keep 1 keeps `mid` (nothing left in it but folders, whose mtime
    the removal of its file just moved) and removes `new`, the batch written last."""
    import time
    assert load("famille", "full", run_id="r1", batch_tag="old")
    env.sql("INSERT INTO ods.famille SELECT * FROM ods.famille WHERE cod_fam = 'F001'")
    assert not load("famille", "full", run_id="r2", batch_tag="mid")
    time.sleep(0.02)
    assert load("fournis", "full", run_id="r3", batch_tag="new")
    capsys.readouterr()
    assert cbm_etl(["clean-cache", "--keep", "1"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"`cbm-etl invalidate <table> --batch (\S+)` to give it up", out)
    assert m and "not validated yet: famille" in out, out
    assert cbm_etl(["invalidate", "famille", "--batch", m.group(1)]) == 0
    assert cbm_etl(["clean-cache", "--keep", "1"]) == 0
    assert sorted(p.name.split("-", 3)[-1] for p in env.cache.iterdir()) == ["new"], capsys.readouterr().out
    env.sql("DELETE FROM ods.famille WHERE rowid IN (SELECT MAX(rowid) FROM ods.famille WHERE cod_fam = 'F001')")
    assert load("famille", "full", run_id="r4", batch_tag="next"), last_error(env, "famille")
    assert_ods_equals_source(env, "famille")


# -- made under another configuration ------------------------------------------------------------------------------

def test_a_configuration_edited_during_the_night_then_the_same_command(env):
    from datetime import date
    from cbm_luigi.tasks import ExtractParquet
    d = date(2026, 11, 28)
    assert load("produit", "full", run_id="r0", batch_tag="first")
    assert succeeded(build(ExtractParquet(table="produit", mode="incremental", batch_date=d, run_id="r1")))
    on_source(env, "UPDATE produit SET libelle = 'late', dat_mod = date('now') "
                   "WHERE cod_pro = (SELECT MIN(cod_pro) FROM produit)")
    env.sql("UPDATE config.ETL_Columns SET IsExcluded = 1 WHERE TableName = 'produit' AND ColumnName = 'poids'")
    assert not succeeded(build(LoadTable(table="produit", mode="incremental", batch_date=d, run_id="r1")))
    err = last_error(env, "produit")
    assert "under another configuration" in err and "Run the same command again" in err, err
    assert succeeded(build(LoadTable(table="produit", mode="incremental", batch_date=d, run_id="r2"))), \
        last_error(env, "produit")
    src = __import__("tests.conftest", fromlist=["source_rows"]).source_rows(env.source, "produit")
    ods = {r[0]: r[1] for r in env.sql("SELECT cod_pro, libelle FROM ods.produit WHERE NOT _etl_is_deleted")}
    assert ods == {k[0]: v["libelle"] for k, v in src.items()}


# -- settings rows ---------------------------------------------------------------------------------------------------

def test_cbm_home_written_in_env_then_moved_to_the_environment(env, monkeypatch, capsys):
    assert load("famille", "full", run_id="r1")
    dotenv = env.home / ".env"
    dotenv.write_text(f"CBM_HOME={env.home}\nCBM_DUCKDB_PATH={env.warehouse}\n")
    monkeypatch.delenv("CBM_ENV_FILE")
    monkeypatch.delenv("CBM_HOME")
    monkeypatch.delenv("CBM_DUCKDB_PATH")
    monkeypatch.chdir(env.home)
    capsys.readouterr()
    assert cbm_etl(["summary"]) == 1
    said = capsys.readouterr().err
    assert "CBM_HOME in" in said and "they say where the settings file is read from" in said, said
    dotenv.write_text(f"CBM_DUCKDB_PATH={env.warehouse}\n")  # removed from the file, set where the command starts
    monkeypatch.setenv("CBM_HOME", str(env.home))
    assert cbm_etl(["summary"]) == 0
    assert "famille" in capsys.readouterr().out


def test_cbm_env_file_naming_no_file(env, monkeypatch, capsys):
    monkeypatch.setenv("CBM_ENV_FILE", str(env.home / "nope.env"))
    assert cbm_etl(["summary"]) == 1
    said = capsys.readouterr().err
    assert "CBM_ENV_FILE=" in said and "no such file" in said, said
    monkeypatch.setenv("CBM_ENV_FILE", "")
    assert cbm_etl(["summary"]) == 0


def test_null_in_a_mandatory_column_of_a_dimension_fixed_with_coalesce_versions_only_that_member(env):
    assert load("client", "full", run_id="r1", batch_tag="a")
    n = env.sql("SELECT COUNT(*) FROM ods.client")[0][0]
    key = env.sql("SELECT MIN(cod_cli) FROM ods.client")[0][0]
    on_source(env, "UPDATE SYSCOLUMNS_FULL SET nullflag = 'N' WHERE tbl = 'client' AND col = 'ville'",
              "UPDATE client SET ville = NULL WHERE ville IS NULL")
    assert cbm_etl(["sync-columns", "client"]) == 0
    on_source(env, "UPDATE client SET ville = NULL, dat_mod = date('now') WHERE cod_cli = ?", params=(key,))
    assert not load("client", "incremental", run_id="r2")
    err = last_error(env, "client")
    assert "mandatory column" in err, err
    env.sql("""UPDATE config.ETL_Columns SET SourceExpression = 'COALESCE("ville", ''?'') AS ville', IsOverride = 1
               WHERE TableName = 'client' AND ColumnName = 'ville'""")
    assert load("client", "incremental", run_id="r3"), last_error(env, "client")
    assert env.sql("SELECT ville FROM ods.client WHERE _etl_is_current AND cod_cli = ?", [key]) == [("?",)]
    assert env.sql("SELECT COUNT(*) FROM ods.client")[0][0] == n + 1  # one new version, the member that changed


def test_the_advised_reload_works_for_a_second_validation_failure_the_same_day(env):
    from cbm_luigi.tasks import MergeOds, ValidateTable

    def fail_validation(tag, run):
        assert succeeded(build(MergeOds(table="famille", mode="full", batch_tag=tag, run_id=run)))
        env.sql("UPDATE ods.famille SET libelle = 'tampered', _etl_hashdiff = 'tampered' WHERE cod_fam = 'F003'")
        assert not succeeded(build(ValidateTable(table="famille", mode="full", batch_tag=tag, run_id=run)))
        err = last_error(env, "famille")
        return re.search(r"`luigi --module cbm_luigi LoadTable --table famille --mode full --batch-tag (\w+)`",
                         err).group(1)

    tag = fail_validation("", "r1")
    assert load("famille", "full", run_id="r2", batch_tag=tag)
    assert_ods_equals_source(env, "famille")
    tag = fail_validation("afternoon", "r3")  # the same day, another batch
    run = subprocess.run([str(BIN / "luigi"), "--module", "cbm_luigi", "LoadTable", "--table", "famille", "--mode",
                          "full", "--batch-tag", tag, "--local-scheduler"], env=subprocess_env(env),
                         capture_output=True, text=True, cwd=env.home)  # the command the message gives, as written
    assert run.returncode == 0, run.stderr[-2000:]  # it says nothing is wrong ...
    assert_ods_equals_source(env, "famille")  # ... but it reloaded nothing: ods keeps the wrong value
