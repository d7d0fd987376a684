"""What the pipeline refuses so that a rerun, a stray batch or a bad key never damages ods: each test runs the
real tasks through Luigi on the demo source and DuckDB, and checks ods against the source row by row."""
from __future__ import annotations

import sqlite3
import time
from datetime import date, datetime

import luigi
import pytest

from cbm_luigi.cli import main as cbm_etl
from cbm_luigi.source.readers import release_readers
from cbm_luigi.warehouse.duckdb_wh import release_connections
from cbm_luigi.tasks import LoadAll, LoadTable, MergeOds, StageTable

from .conftest import assert_ods_equals_source, build, source_rows, succeeded

DAY = date.today().isoformat()


def live_rows(env, table: str) -> int:
    return env.sql(f"SELECT COUNT(*) FROM ods.{table} WHERE NOT _etl_is_deleted")[0][0]


def steps_run(env, batch: str, step: str) -> int:
    return env.sql("SELECT COUNT(*) FROM etl.ETL_Log WHERE BatchId = ? AND Step = ? AND Status = 'SUCCESS'",
                   [batch, step])[0][0]


def errors(env, step: str) -> list[str]:
    return [r[0] for r in env.sql("SELECT ErrorMessage FROM etl.ETL_Log WHERE Step = ? AND Status = 'FAILED' "
                                  "ORDER BY LogTs", [step])]


def touch_source(env, sql: str, params=()) -> None:
    con = sqlite3.connect(str(env.source))
    con.execute(sql, params)
    con.commit()
    con.close()
    release_readers()


def change_source_now(env, *statements: str) -> None:
    """Run statements whose last two parameters are `dat_mod`, `heure`, stamped with the current time."""
    now = datetime.now()
    stamp = [now.date().isoformat(), now.hour * 3600 + now.minute * 60 + now.second]
    for sql in statements:
        touch_source(env, sql, stamp)


def test_a_full_batch_staged_then_overtaken_by_an_incremental_loads_right_when_rerun(env):
    """The weekly full is killed after staging; the nightly incremental (nothing changed: 0 rows) replaces stg;
    rerunning the weekly must not merge the empty stage as a full batch (that soft-deleted every row)."""
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="init", run_id="run1")))
    assert succeeded(build(StageTable(table="produit", mode="full", batch_tag="weekly", run_id="run2")))
    time.sleep(0.01)
    assert succeeded(build(LoadTable(table="produit", mode="incremental", batch_tag="nightly", run_id="run3")))
    assert env.sql("SELECT BatchId, Mode, Rows FROM etl.ETL_TableState WHERE TableName = 'produit'") == [
        (f"{DAY}-nightly", "incremental", 0)]

    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="weekly", run_id="run4")))
    assert live_rows(env, "produit") == len(source_rows(env.source, "produit"))
    assert_ods_equals_source(env, "produit")
    # its extract predates the nightly's validated load: read again, then staged again
    assert steps_run(env, f"{DAY}-weekly", "extract") == 2 and steps_run(env, f"{DAY}-weekly", "stage") == 2


def test_same_day_full_and_incremental_share_a_batch_id_without_mixing_stages(env):
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="init", run_id="run1")))
    assert succeeded(build(StageTable(table="produit", mode="full", run_id="run2")))
    time.sleep(0.01)
    assert succeeded(build(LoadTable(table="produit", mode="incremental", run_id="run3")))
    assert succeeded(build(LoadTable(table="produit", mode="full", run_id="run4")))
    assert_ods_equals_source(env, "produit")


def test_a_batch_merged_but_not_validated_then_overtaken_is_staged_and_merged_again_when_rerun(env):
    """Killed between merge and validate; the same day's incremental restages the table; the rerun of the full
    must not validate against the incremental's stage (it failed forever) nor need a manual invalidate."""
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="init", run_id="run1")))
    assert succeeded(build(MergeOds(table="produit", mode="full", batch_tag="weekly", run_id="run2")))
    time.sleep(0.01)
    assert succeeded(build(LoadTable(table="produit", mode="incremental", batch_tag="nightly", run_id="run3")))
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="weekly", run_id="run4")))
    assert_ods_equals_source(env, "produit")
    assert steps_run(env, f"{DAY}-weekly", "merge") == 2 and steps_run(env, f"{DAY}-weekly", "validate") == 1


def test_merge_refuses_a_staged_batch_older_than_the_last_validated_load(env):
    """The safety net in steps.merge itself (the extract's completeness check normally re-reads first)."""
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="a")))
    assert succeeded(build(StageTable(table="produit", mode="full", batch_tag="b")))
    with env.con() as c:  # a newer load of the table was validated after b was extracted
        c.execute("UPDATE config.ETL_Tables SET LastSuccessTs = current_timestamp::TIMESTAMP + INTERVAL 1 HOUR "
                  "WHERE TableName = 'produit'")
    before = env.sql("SELECT * FROM ods.produit ORDER BY ALL")
    assert not succeeded(build(MergeOds(table="produit", mode="full", batch_tag="b")))
    [err] = errors(env, "merge")
    assert err.startswith("OutdatedBatchError: table produit: batch ") and f"--batch {DAY}-b --from extract" in err
    assert env.sql("SELECT * FROM ods.produit ORDER BY ALL") == before


def test_rerun_of_an_older_batch_reads_the_source_again_instead_of_undoing_newer_rows(env):
    with env.con() as c:
        c.execute("UPDATE config.ETL_Tables SET LookbackInterval = '0 minutes' WHERE TableName = 'produit'")
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="a")))
    change_source_now(env, "UPDATE produit SET libelle = 'NEW', dat_mod = ?, heure = ? WHERE cod_pro = 'P00001'",
                      "INSERT INTO produit (cod_pro, libelle, dat_mod, heure) VALUES ('PNEW', 'new', ?, ?)")
    time.sleep(1.1)
    assert succeeded(build(LoadTable(table="produit", mode="incremental", batch_tag="b", run_id="run2")))
    # the operator reloads batch a from its cached extract, in a later run
    assert cbm_etl(["invalidate", "produit", "--batch", f"{DAY}-a", "--from", "stage"]) == 0
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="a", run_id="run3")))
    assert env.sql("SELECT cod_pro, libelle, _etl_is_deleted FROM ods.produit WHERE cod_pro IN ('P00001', 'PNEW') "
                   "ORDER BY 1") == [("P00001", "NEW", False), ("PNEW", "new", False)]
    assert_ods_equals_source(env, "produit")


def test_a_batch_file_extracted_again_is_read_anew_by_the_same_process(env):
    """A batch extracted again at the same path, with other rows, right after the first one was staged, merged and
    validated by this process, is read from its new footer: the warehouse connection lives as long as the process,
    and a cached footer (DuckDB's parquet_metadata_cache, tried) would read the old row groups' offsets."""
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="x", run_id="run1")))
    first = live_rows(env, "produit")
    touch_source(env, "INSERT INTO produit (cod_pro, libelle) SELECT cod_pro || '-bis', libelle || ' bis' "
                      "FROM produit")
    # as `cbm-etl invalidate --from extract` does, but in this process (the CLI closes the warehouse, and its cache)
    [batch_file] = env.cache.glob(f"{DAY}-x/*/produit.*.parquet")
    batch_file.unlink()
    env.sql("DELETE FROM etl.ETL_Markers WHERE BatchId = ?", [f"{DAY}-x"])
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="x", run_id="run2")))
    assert live_rows(env, "produit") == 2 * first
    assert_ods_equals_source(env, "produit")
    assert steps_run(env, f"{DAY}-x", "extract") == 2


def test_an_empty_full_batch_over_a_loaded_table_is_refused_unless_allowed(env, monkeypatch):
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="a")))
    n = live_rows(env, "famille")
    with env.con() as c:  # a filter (or the wrong database) that reads nothing
        c.execute("UPDATE config.ETL_Tables SET FilterClause = '1 = 0' WHERE TableName = 'famille'")
    assert not succeeded(build(LoadTable(table="famille", mode="full", batch_tag="b")))
    [err] = errors(env, "merge")
    assert err.startswith(f"EmptyFullBatchError: table famille: the full batch {DAY}-b holds no rows, and "
                          f"ods.famille has {n} live rows") and "CBM_ALLOW_EMPTY_FULL=famille" in err
    assert live_rows(env, "famille") == n
    monkeypatch.setenv("CBM_ALLOW_EMPTY_FULL", "famille")
    luigi.task_register.Register.clear_instance_cache()  # task instances keep the settings they were made with
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="b")))
    assert live_rows(env, "famille") == 0


def test_a_null_key_part_is_refused_naming_the_rows(env):
    """Progress unique indexes admit `?` in a non-mandatory field; `=` never matches NULL, so such rows would be
    inserted again by every run."""
    with env.con() as c:
        c.execute("UPDATE config.ETL_Tables SET PrimaryKeyCols = 'cod_pro,gencod_v' WHERE TableName = 'produit'")
    nulls = sorted(k for (k,), r in source_rows(env.source, "produit").items() if r["gencod_v"] is None)
    assert nulls  # the demo has products without a barcode
    assert not succeeded(build(LoadTable(table="produit", mode="full", batch_tag="a")))
    [err] = errors(env, "merge")
    assert err.startswith(f"NullKeyError: table produit: {len(nulls)} row(s) of the batch have an unknown (NULL) "
                          f"value in the key (cod_pro, gencod_v); first: cod_pro={nulls[0]!r}, gencod_v=None")
    assert env.sql("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'ods' "
                   "AND table_name = 'produit'") == [(0,)]  # nothing merged: the transaction rolled back


def test_the_stage_state_names_the_batch_and_mode_staged(env):
    assert succeeded(build(StageTable(table="famille", mode="full", batch_tag="x")))
    [(batch, mode, rows, started)] = env.sql("SELECT BatchId, Mode, Rows, ExtractStartedAt FROM etl.ETL_TableState")
    assert (batch, mode, rows) == (f"{DAY}-x", "full", len(source_rows(env.source, "famille")))
    assert isinstance(started, datetime)


def test_a_new_source_column_never_takes_over_an_existing_columns_sql_name(env):
    """`prix-vte` is loaded as ods.prix_vte; the source then gains a column `prix_vte`: it gets a new name, and
    ods.prix_vte keeps being filled by `prix-vte`."""
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="a")))
    before = dict(env.sql("SELECT cod_pro, prix_vte FROM ods.produit"))
    touch_source(env, 'ALTER TABLE produit ADD COLUMN "prix_vte" NUMERIC(15,4)')
    touch_source(env, 'UPDATE produit SET "prix_vte" = 7')
    touch_source(env, "INSERT INTO SYSCOLUMNS_FULL (id, col, tbl, owner, coltype, width, scale, nullflag, "
                      "array_extent, label, col_label, description, format, display_order) VALUES ('99', "
                      "'prix_vte', 'produit', 'PUB', 'numeric', 15, 4, 'Y', 0, 'x', 'x', '', '', 99)")
    assert cbm_etl(["sync-columns", "produit"]) == 0
    assert dict(env.sql("SELECT ColumnName, SqlName FROM config.ETL_Columns WHERE TableName = 'produit' "
                        "AND ColumnName IN ('prix-vte', 'prix_vte')")) == {"prix-vte": "prix_vte",
                                                                          "prix_vte": "prix_vte_2"}
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="b")))
    assert dict(env.sql("SELECT cod_pro, prix_vte FROM ods.produit")) == before
    assert {v for (v,) in env.sql("SELECT DISTINCT prix_vte_2 FROM ods.produit")} == {7}


def test_batch_tags_are_used_as_given_and_other_spellings_are_refused(env):
    """`Rerun` and `rerun` used to share one batch (the tag was normalised), so the second run reused the first
    one's extract; now a tag is used as given, and what cannot be is refused before anything runs."""
    for bad in ("Rerun", "re run", "é", "-x"):
        with pytest.raises(ValueError, match="use lower-case letters, digits, '-' and '_'"):
            LoadTable(table="famille", mode="full", batch_tag=bad)
        with pytest.raises(ValueError, match="use lower-case letters"):
            LoadAll(mode="full", batch_tag=bad)
    assert LoadTable(table="famille", batch_tag="weekly-full").batch_id == f"{DAY}-weekly-full"
    assert LoadTable(table="famille", batch_tag="full").batch_id == f"{DAY}-full"


def test_a_warehouse_made_before_the_stage_state_is_told_to_run_init_db(env):
    env.sql("DROP TABLE etl.ETL_TableState")
    with pytest.raises(RuntimeError, match=r"^the warehouse lacks etl\.ETL_TableState: run `cbm-etl init-db "
                                           r"--no-tables` once "):
        StageTable(table="famille", mode="full").output().exists()
    release_connections()
    assert cbm_etl(["init-db", "--no-tables"]) == 0  # adds what is missing
    assert succeeded(build(LoadTable(table="famille", mode="full")))
    assert_ods_equals_source(env, "famille")


def test_an_older_batch_is_not_merged_over_a_newer_merged_but_unvalidated_one(env):
    """weekly full merged (not validated), the source changes, the nightly incremental merges (not validated),
    then the weekly is rerun: it must read the source again, not put its older rows back (SCD2 client)."""
    assert succeeded(build(LoadTable(table="client", mode="full", batch_tag="init", run_id="run1")))
    assert succeeded(build(MergeOds(table="client", mode="full", batch_tag="weekly", run_id="run2")))
    time.sleep(1.1)
    change_source_now(env, "UPDATE client SET nom = 'NEW', dat_mod = ?, heure = ? WHERE cod_cli = 1",
                      "INSERT INTO client (cod_cli, nom, dat_mod, heure) VALUES (99999, 'brand new', ?, ?)")
    assert succeeded(build(MergeOds(table="client", mode="incremental", batch_tag="nightly", run_id="run3")))
    current = "SELECT cod_cli, nom, _etl_is_deleted FROM ods.client WHERE _etl_is_current AND cod_cli IN (1, 99999) " \
              "ORDER BY 1"
    assert env.sql(current) == [(1, "NEW", False), (99999, "brand new", False)]
    assert succeeded(build(LoadTable(table="client", mode="full", batch_tag="weekly", run_id="run4")))
    assert env.sql(current) == [(1, "NEW", False), (99999, "brand new", False)]
    assert env.sql("SELECT COUNT(*) FROM ods.client WHERE cod_cli = 1") == [(2,)]  # no spurious version
    assert steps_run(env, f"{DAY}-weekly", "extract") == 2  # read again: its first read is older than ods
    assert_ods_equals_source(env, "client")


def test_a_restage_by_another_run_between_merge_and_validate_fails_the_run_cleanly(env):
    """Luigi recognises a dependency that keeps failing at run time by the target's text: with a stable one
    it gives up after one retry instead of handing the task out again and again."""
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="a", run_id="run1")))

    @MergeOds.event_handler(luigi.Event.SUCCESS)
    def other_run_restages(task):  # an overlapping run restages stg right after this merge, every time
        with task.warehouse.session() as s:
            s.execute("UPDATE etl.ETL_TableState SET BatchId = 'other' WHERE TableName = ?", [task.table])

    try:
        t0 = time.monotonic()
        assert not succeeded(build(LoadTable(table="famille", mode="full", batch_tag="b", run_id="run2")))
        failures = env.sql("SELECT COUNT(*) FROM etl.ETL_Log WHERE BatchId = ? AND Status = 'FAILED'",
                           [f"{DAY}-b"])[0][0]
        assert failures <= 3 and time.monotonic() - t0 < 60
    finally:
        MergeOds._event_callbacks[MergeOds][luigi.Event.SUCCESS].discard(other_run_restages)
    assert str(MergeOds(table="famille", mode="full", batch_tag="b").output()).startswith("marker MergeOds_")


def test_a_column_excluded_between_stage_and_merge_is_read_again_and_leaves_no_stale_value(env):
    """Batch b is staged, the run stops, the operator excludes a column (as several errors advise) and reruns the
    same command. Merging that stage would write hashes over the excluded column's new value without the value
    itself, and no later load would ever see the difference (found in review): the batch is read again."""
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="a")))
    touch_source(env, "UPDATE produit SET libelle = 'NEW LABEL' WHERE cod_pro = 'P00001'")
    assert succeeded(build(StageTable(table="produit", mode="full", batch_tag="b", run_id="run1")))
    env.sql("UPDATE config.ETL_Columns SET IsExcluded = TRUE WHERE TableName = 'produit' AND ColumnName = 'libelle'")
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="b", run_id="run2")))
    assert steps_run(env, f"{DAY}-b", "extract") == 2 and steps_run(env, f"{DAY}-b", "stage") == 2
    env.sql("UPDATE config.ETL_Columns SET IsExcluded = FALSE WHERE TableName = 'produit' AND ColumnName = 'libelle'")
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="c", run_id="run3")))
    assert env.sql("SELECT libelle FROM ods.produit WHERE cod_pro = 'P00001'") == [("NEW LABEL",)]
    assert_ods_equals_source(env, "produit")


def test_the_override_a_type_change_asks_for_then_the_same_command_opens_only_the_real_versions(env):
    """A source column changes type, the merge refuses it, the operator applies the advised override (the old
    type and a CAST) and reruns the same command: the stage made under the new type (text values, text hashes)
    must not be merged through a silent cast, which opened a new version of every member, twice."""
    env.sql("UPDATE config.ETL_Tables SET IsDimension = TRUE WHERE TableName = 'produit'")
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="a")))
    members = env.sql("SELECT COUNT(*) FROM ods.produit")[0][0]
    touch_source(env, "UPDATE SYSCOLUMNS_FULL SET coltype = 'varchar', width = 20 WHERE tbl = 'produit' "
                      "AND col = 'stock'")
    touch_source(env, "UPDATE produit SET stock = '0042' WHERE cod_pro = 'P00001'")
    assert cbm_etl(["sync-columns", "produit"]) == 0
    assert not succeeded(build(LoadTable(table="produit", mode="full", batch_tag="b", run_id="run1")))
    assert errors(env, "merge")[0].startswith("SchemaChangeError")
    env.sql("""UPDATE config.ETL_Columns SET IsOverride = TRUE, DataType = 'integer', Width = 4, Scale = 0,
               SourceExpression = 'CAST("stock" AS INTEGER) AS stock' WHERE TableName = 'produit'
               AND ColumnName = 'stock'""")
    # the same command again, as cron or the operator runs it: another process
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="b", run_id="run2")))
    assert env.sql("SELECT COUNT(*) FROM ods.produit")[0][0] == members + 1  # P00001's stock changed, only it
    assert env.sql("SELECT stock FROM ods.produit WHERE cod_pro = 'P00001' AND _etl_is_current") == [(42,)]
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="c")))  # nothing changed since
    assert env.sql("SELECT COUNT(*) FROM ods.produit")[0][0] == members + 1


def test_merge_refuses_stg_staged_under_another_configuration(env):
    """The safety net in steps.merge itself (the targets normally make the rerun extract and stage again)."""
    from cbm_luigi import steps

    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="a")))
    assert succeeded(build(StageTable(table="produit", mode="full", batch_tag="b")))
    env.sql("UPDATE config.ETL_Columns SET IsExcluded = TRUE WHERE TableName = 'produit' AND ColumnName = 'libelle'")
    task = MergeOds(table="produit", mode="full", batch_tag="b")
    before = env.sql("SELECT * FROM ods.produit ORDER BY ALL")
    with pytest.raises(steps.StaleStageError, match=rf"^table produit: stg\.produit holds batch {DAY}-b staged "
                                                     r"under another configuration than the table's now .* Nothing "
                                                     r"was merged\. Run the same command again"):
        steps.merge(task.warehouse, task.plan(fresh=True), mode="full", batch_id=task.batch_id,
                    marker=task.output(), run_id="r")
    assert env.sql("SELECT * FROM ods.produit ORDER BY ALL") == before


def test_a_warehouse_made_before_the_extract_shape_is_told_to_run_init_db(env):
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="a")))
    env.sql("ALTER TABLE etl.ETL_TableState DROP COLUMN ExtractShape")
    with pytest.raises(RuntimeError, match=r"^the warehouse lacks etl\.ETL_TableState\.ExtractShape, which this "
                                           r"version uses: run `cbm-etl init-db --no-tables` once"):
        StageTable(table="famille", mode="full", batch_tag="b").output().exists()
    release_connections()
    assert cbm_etl(["init-db", "--no-tables"]) == 0
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="b")))
    assert_ods_equals_source(env, "famille")


def test_a_stage_records_the_configuration_of_the_file_it_staged_not_the_one_asked_again(env, monkeypatch):
    """A configuration edited while a long stage runs (past the plan's cache) was recorded as the stage's, and
    the rerun merged the stale stage (found in review): the stage records its file's, and the rerun reads and
    stages the batch again."""
    from cbm_luigi import steps, tasks
    from cbm_luigi.extract import read_extract_meta
    from cbm_luigi.tasks import ExtractParquet
    from cbm_luigi.transform import TechnicalValues

    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="a")))
    assert succeeded(build(ExtractParquet(table="produit", mode="full", batch_tag="b", run_id="run1")))
    task = StageTable(table="produit", mode="full", batch_tag="b", run_id="run1")
    plan = task.plan(fresh=True)
    file_shape = read_extract_meta(task.cache_path("extract"))["shape"]

    def operator_edits_meanwhile(_where):
        env.sql("UPDATE config.ETL_Columns SET IsExcluded = TRUE WHERE TableName = 'produit' "
                "AND ColumnName = 'libelle'")
        monkeypatch.setattr(tasks, "CONFIG_TTL_S", 0.0)

    steps.stage(task.warehouse, plan, task.cache_path("extract"), TechnicalValues("run1", task.batch_id,
                datetime.now()), marker=task.output(), run_id="run1", checkpoint=operator_edits_meanwhile)
    assert env.sql("SELECT ExtractShape FROM etl.ETL_TableState WHERE TableName = 'produit'") == [(file_shape,)]
    monkeypatch.setattr(tasks, "CONFIG_TTL_S", 30.0)
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="b", run_id="run2")))
    # read again and staged again (the stage above was called directly: the task writes the log rows)
    assert steps_run(env, f"{DAY}-b", "extract") == 2 and steps_run(env, f"{DAY}-b", "stage") == 1
    assert_ods_equals_source(env, "produit")


@pytest.mark.parametrize("kept", [0, 0.5])
def test_a_batch_file_cut_short_after_its_stage_is_read_again_by_the_rerun(env, kept):
    """The batch file is not forced to disk before its rename (transform.release_close_write_out leaves the
    write-out to the kernel): a power loss soon after can leave it empty or cut short under its final name,
    behind a committed stage marker. The rerun must read the source again, not stop on the file or merge part
    of it."""
    from cbm_luigi.tasks import ExtractParquet

    assert succeeded(build(StageTable(table="produit", mode="full", batch_tag="night", run_id="run1")))
    path = ExtractParquet(table="produit", mode="full", batch_tag="night", run_id="run1").output().path
    with open(path, "r+b") as f:  # what the disk held of it after the power loss
        f.truncate(int(f.seek(0, 2) * kept))
    release_connections()
    release_readers()
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="night", run_id="run2")))
    assert steps_run(env, f"{DAY}-night", "extract") == 2 and steps_run(env, f"{DAY}-night", "merge") == 1
    assert_ods_equals_source(env, "produit")
