"""A batch whose own rows the merge refuses (a NULL or duplicate key, an empty full read) is read again by the
same command, once the source is right: merging the same cached extract again could never succeed (found in
review: each rerun was refused the same way, and CBM_ALLOW_EMPTY_FULL applied to the empty read made before the
operator looked at the source)."""
from __future__ import annotations

import sqlite3
from datetime import date

from cbm_luigi import demo_source
from cbm_luigi.source.readers import release_readers
from cbm_luigi.tasks import ExtractParquet, LoadAll, LoadTable

from .conftest import (assert_ods_equals_source, build, last_error, on_source, put_rows, source_rows, succeeded,
                       take_rows)

DAY = date(2026, 11, 24)
DROPPED = "The batch's extract was dropped: the same command reads the table from Progress again."






def sla(env, table: str) -> str:
    return env.sql("SELECT SLAStatus FROM etl.vw_SLABreach WHERE TableName = ?", [table])[0][0]


def test_a_null_key_fixed_in_progress_loads_with_the_same_command(env):
    env.sql("UPDATE config.ETL_Tables SET PrimaryKeyCols = 'cod_pro,gencod_v' WHERE TableName = 'produit'")
    today = date.today().isoformat()
    on_source(env, "UPDATE produit SET gencod_v = 'G' || cod_pro, dat_mod = ? WHERE gencod_v IS NULL AND cod_pro <> "
               "'P00001'", params=[today])
    on_source(env, "UPDATE produit SET gencod_v = NULL WHERE cod_pro = 'P00001'")
    assert not succeeded(build(LoadTable(table="produit", mode="incremental", batch_date=DAY)))
    err = last_error(env, "produit")
    assert err.startswith("NullKeyError") and "fix the rows in Progress" in err and err.endswith(DROPPED), err
    extract = ExtractParquet(table="produit", mode="incremental", batch_date=DAY)
    assert not extract.complete()  # the file is gone: the rerun reads Progress
    on_source(env, "UPDATE produit SET gencod_v = 'G1', dat_mod = ? WHERE cod_pro = 'P00001'", params=[today])  # the ERP fix
    assert succeeded(build(LoadTable(table="produit", mode="incremental", batch_date=DAY)))
    assert_ods_equals_source(env, "produit")
    assert sla(env, "produit") == "OK"


def test_a_key_read_twice_loads_when_the_same_command_reads_it_once(env):
    """A row that moved in the index while it was read (READ UNCOMMITTED) comes twice; the next read sees it once.
    Made here by a second row of the key at the source, gone before the rerun."""
    famille = next(t for t in demo_source._schema() if t.name == "famille")
    rows = sqlite3.connect(str(env.source)).execute("SELECT * FROM famille").fetchall()
    demo_source.add_table(env.source, demo_source.TableDef("famille", famille.cols, ("cod_fam", "libelle"),
                                                           rows + [(rows[0][0], "moved in the index", rows[0][2])]))
    release_readers()
    assert not succeeded(build(LoadAll(mode="incremental", batch_date=DAY)))
    err = last_error(env, "famille")
    assert err.startswith("DuplicateBatchKeyError") and f"cod_fam={rows[0][0]!r} (2 rows)" in err, err
    assert err.endswith(DROPPED), err
    demo_source.add_table(env.source, famille)  # the next read sees the row once
    release_readers()
    assert succeeded(build(LoadAll(mode="incremental", batch_date=DAY)))
    assert_ods_equals_source(env, "famille")


def test_a_refused_batch_keeps_its_refusal_when_forgetting_its_stage_fails_and_says_what_to_run(env, monkeypatch):
    """After a refusal, forgetting the batch's stage failed (on SQL Server: a dropped connection, a lock timeout)
    and that error replaced the refusal: etl.ETL_Log kept a link failure, not the duplicate keys, and the rerun
    merged the same extract again (found in review). The failure is injected: MarkerTarget.forget raises once the
    merge has refused (DuckDB cannot be made to fail there)."""
    from cbm_luigi import steps, targets

    famille = next(t for t in demo_source._schema() if t.name == "famille")
    rows = sqlite3.connect(str(env.source)).execute("SELECT * FROM famille").fetchall()
    demo_source.add_table(env.source, demo_source.TableDef("famille", famille.cols, ("cod_fam", "libelle"),
                                                           rows + [(rows[0][0], "twice", rows[0][2])]))
    release_readers()
    refused, real_merge, real_forget = [], steps.merge, targets.MarkerTarget.forget

    def merge(*a, **kw):
        try:
            return real_merge(*a, **kw)
        except steps.RefusedBatchError:
            refused.append(1)
            raise

    def forget(self, s):
        if refused:
            raise RuntimeError("[08S01] Communication link failure (injected)")
        return real_forget(self, s)

    monkeypatch.setattr(steps, "merge", merge)
    monkeypatch.setattr(targets.MarkerTarget, "forget", forget)
    assert not succeeded(build(LoadTable(table="famille", mode="full", batch_date=DAY)))
    err = last_error(env, "famille")
    assert err.startswith("DuplicateBatchKeyError") and f"cod_fam={rows[0][0]!r} (2 rows)" in err, err
    assert "forgetting its stage failed: RuntimeError: [08S01] Communication link failure" in err, err
    assert err.endswith(f"run `cbm-etl invalidate famille --batch {DAY}`, then the same command reads the table "
                        f"from Progress again (as it is, it would merge the same rows and be refused again)."), err
    refused.clear()  # the warehouse is reachable again
    demo_source.add_table(env.source, famille)  # fixed at the source; the operator runs what the message says
    release_readers()
    from cbm_luigi.cli import main as cbm_etl

    assert cbm_etl(["invalidate", "famille", "--batch", DAY.isoformat()]) == 0
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_date=DAY)))
    assert_ods_equals_source(env, "famille")


def test_an_empty_full_read_loads_once_the_source_is_back_and_the_allowance_never_applies_to_it(env, monkeypatch):
    """famille (no modification date: read in full) was read while the ERP rebuilt it. The operator, following the
    message, checks the source (its rows are back) and reruns with CBM_ALLOW_EMPTY_FULL: the rerun reads the table
    again, so nothing is soft-deleted."""
    assert succeeded(build(LoadAll(mode="incremental", batch_date=DAY)))
    live = env.sql("SELECT COUNT(*) FROM ods.famille WHERE NOT _etl_is_deleted")[0][0]
    saved = take_rows(env, "famille")
    day2 = date.fromordinal(DAY.toordinal() + 1)
    assert not succeeded(build(LoadAll(mode="incremental", batch_date=day2)))
    err = last_error(env, "famille")
    assert err.startswith("EmptyFullBatchError") and err.endswith(DROPPED), err
    put_rows(env, "famille", saved)
    monkeypatch.setenv("CBM_ALLOW_EMPTY_FULL", "famille")
    assert succeeded(build(LoadAll(mode="incremental", batch_date=day2)))
    assert env.sql("SELECT COUNT(*) FROM ods.famille WHERE NOT _etl_is_deleted")[0][0] == live == len(saved)
    assert len(source_rows(env.source, "famille")) == live
    assert_ods_equals_source(env, "famille")


def test_an_empty_read_whose_file_survived_a_kill_is_not_merged_by_the_allowed_rerun(env, monkeypatch):
    """Killed between the refusal and the removal of its file, the empty read stayed cached and complete: the rerun
    with CBM_ALLOW_EMPTY_FULL merged it, soft-deleting every famille row while the source held them all again
    (found in review, by SIGKILL). The allowance applies to a read made by the run that has it: the rerun refuses
    the earlier read, drops it, and the same command reads the source again."""
    from cbm_luigi.tasks import MergeOds

    assert succeeded(build(LoadAll(mode="incremental", batch_date=DAY, run_id="run1")))
    saved = take_rows(env, "famille")
    day2 = date.fromordinal(DAY.toordinal() + 1)

    def killed_before_the_file_went(self):  # _read_again's first half: the stage marker forgotten, then the kill
        stage = self.requires()
        with self.warehouse.session() as s, s.transaction():
            stage.output().forget(s)

    with monkeypatch.context() as m:
        m.setattr(MergeOds, "_read_again", killed_before_the_file_went)
        assert not succeeded(build(LoadAll(mode="incremental", batch_date=day2, run_id="run2")))
    assert ExtractParquet(table="famille", mode="incremental", batch_date=day2).complete()  # the empty read stayed
    put_rows(env, "famille", saved)
    monkeypatch.setenv("CBM_ALLOW_EMPTY_FULL", "famille")
    assert not succeeded(build(LoadAll(mode="incremental", batch_date=day2, run_id="run3")))
    err = last_error(env, "famille")
    assert err.startswith("EmptyFullBatchError") and "made by an earlier run" in err, err
    assert env.sql("SELECT COUNT(*) FROM ods.famille WHERE _etl_is_deleted")[0][0] == 0
    assert succeeded(build(LoadAll(mode="incremental", batch_date=day2, run_id="run4")))
    assert env.sql("SELECT COUNT(*) FROM ods.famille WHERE NOT _etl_is_deleted")[0][0] == len(saved)
    assert_ods_equals_source(env, "famille")


def test_a_duplicate_in_ods_does_not_drop_the_extract(env):
    """ods holding several current versions for one key (PrimaryKeyCols narrowed after ods was built) is not the batch's
    fault: reading Progress again would not help, so the extract stays."""
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_date=DAY)))
    first = env.sql("SELECT cod_fam FROM ods.famille ORDER BY cod_fam LIMIT 1")[0][0]
    env.sql("INSERT INTO ods.famille SELECT * FROM ods.famille WHERE cod_fam = ?", [first])
    day2 = date.fromordinal(DAY.toordinal() + 1)
    assert not succeeded(build(LoadTable(table="famille", mode="full", batch_date=day2)))
    err = last_error(env, "famille")
    assert err.startswith("DuplicateKeyError") and "holds several current versions for one key" in err, err
    assert DROPPED not in err
    assert ExtractParquet(table="famille", mode="full", batch_date=day2).complete()
