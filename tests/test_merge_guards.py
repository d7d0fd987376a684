"""Guards found by a mutation-testing review (2026-11-29) of the data path (statements.py, steps.py, transform.py,
plan.py, and the window's SQL in source/dialect.py): 51 of 59 plausible bugs were caught by the suite; each test
here pins a behaviour that one of the others could change without a test failing. Its docstring names the bug."""
from __future__ import annotations

from cbm_luigi.tasks import LoadTable, MergeOds, ValidateTable

from .conftest import build, on_source, succeeded
from .test_window_rerun import add_mvt, clock, load, ods_mvt, source_mvt  # noqa: F401 (clock: the fixture)


def _tech(env, table: str, key: str, cols: str) -> dict:
    return {r[0]: r[1:] for r in env.sql(f'SELECT {key}, {cols} FROM ods."{table}"')}


def test_a_type1_merge_leaves_the_unchanged_rows_untouched(env):
    """Kills: the type-1 MERGE's `WHEN MATCHED AND (hashdiff <> ... OR deleted)` reduced to `WHEN MATCHED`
    (statements.merge_type1): every matched row would get the batch's _etl_updated_at, _etl_batch_id,
    _etl_run_id and _etl_loaded_at on every merge with any change, so a downstream read by _etl_updated_at would
    take the whole table every night. Kills too: its UPDATE stamping `_etl_inserted_at` instead of
    `_etl_updated_at` (no update would ever show). Neither the validation (hashes equal, no duplicate) nor the
    logged counts (merge_counts) can see either."""
    tech = "_etl_updated_at, _etl_inserted_at, _etl_batch_id, _etl_run_id, _etl_loaded_at"
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="a")))
    before = _tech(env, "produit", "cod_pro", tech)
    key = min(before)
    on_source(env, "UPDATE produit SET libelle = 'changé' WHERE cod_pro = ?", params=(key,))
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="b")))
    after = _tech(env, "produit", "cod_pro", tech)
    assert {k for k in before if after[k] != before[k]} == {key}
    # the changed row: updated now, by batch b; inserted when it was first loaded
    assert after[key][2].endswith("-b") and after[key][0] > before[key][0] and after[key][1] == before[key][1]
    assert env.sql("SELECT RowsUpdated FROM etl.ETL_Log WHERE Step = 'merge' AND BatchId LIKE '%-b'") == [(1,)]


def test_validation_refuses_a_full_batch_when_ods_keeps_more_live_rows_than_the_batch(env):
    """Kills: ValidateTable's full_row_count compared as `live >= stg_rows` (or any test that lets ods hold more
    live rows than the full batch: steps.validate). That check is what catches a full merge that failed to
    soft-delete the keys gone from the source (the soft-delete clause lost, the MERGE skipped when only deletions
    were due); without it LastSuccessTs advances over ods rows that no longer exist in Progress."""
    assert succeeded(build(MergeOds(table="famille", mode="full")))
    n = env.sql("SELECT COUNT(*) FROM stg.famille")[0][0]
    env.sql("INSERT INTO ods.famille SELECT * REPLACE ('ZZGONE' AS cod_fam) FROM ods.famille WHERE cod_fam = "
            "(SELECT MIN(cod_fam) FROM ods.famille)")  # a key a full merge should have soft-deleted
    assert not succeeded(build(ValidateTable(table="famille", mode="full")))
    checks = {r[0]: r[1:] for r in env.sql("SELECT CheckName, Passed, Expected, Actual FROM etl.ETL_Validation")}
    assert checks["full_row_count"] == (False, n, n + 1)
    assert env.sql("SELECT LastSuccessTs FROM config.ETL_Tables WHERE TableName = 'famille'")[0][0] is None


def test_validation_refuses_an_incremental_batch_whose_key_is_left_soft_deleted(env):
    """Kills: batch_keys_current_with_same_hash without `NOT _etl_is_deleted` (statements.validation_counts).
    A key the batch brings back must be live in ods after the merge; a revival bug (the MERGE leaving
    `_etl_is_deleted` set) is caught at run time only by this check in incremental mode, where no row count is
    compared."""
    assert succeeded(build(LoadTable(table="produit", mode="full", batch_tag="a")))
    key = env.sql("SELECT MIN(cod_pro) FROM ods.produit")[0][0]
    on_source(env, "UPDATE produit SET libelle = 'revenu', dat_mod = date('now', 'localtime'), heure = 86399 "
              "WHERE cod_pro = ?",
              params=(key,))
    assert succeeded(build(MergeOds(table="produit", mode="incremental", batch_tag="b")))
    assert env.sql("SELECT COUNT(*) FROM stg.produit WHERE cod_pro = ?", [key])[0][0] == 1
    last = env.sql("SELECT LastSuccessTs FROM config.ETL_Tables WHERE TableName = 'produit'")[0][0]
    env.sql("UPDATE ods.produit SET _etl_is_deleted = true, _etl_deleted_at = now() WHERE cod_pro = ?", [key])
    assert not succeeded(build(ValidateTable(table="produit", mode="incremental", batch_tag="b")))
    checks = {r[0]: r[1] for r in env.sql("SELECT CheckName, Passed FROM etl.ETL_Validation WHERE BatchId LIKE '%-b'")}
    assert checks == {"batch_keys_current_with_same_hash": False, "duplicate_current_keys": True}
    assert env.sql("SELECT LastSuccessTs FROM config.ETL_Tables WHERE TableName = 'produit'")[0][0] == last


def test_a_row_stamped_in_the_second_the_last_extract_started_is_read_by_the_next_window(env, clock):
    """Kills: `heure >= S` written `heure > S` in the window's first day (source/dialect.py window_predicate, the
    window's SQL; OPERATIONS.md documents `>=`). `heure` holds whole seconds: a row changed in the second the
    last extract started, after the read passed it, is stamped S; with `>` no later window reads it (with a
    LookbackInterval of 0, which the configuration accepts), and only the weekly full brings it."""
    add_mvt(env, [(1, "a", "2026-03-01", 3600), (2, "b", "2026-03-01", 3600)], lookback="0 minutes")
    clock.set("2026-03-10 12:00:00.400000")
    load(env, "full", "", "2026-03-10")
    # committed at 12:00:00.8, after the extract that started at 12:00:00.4 had read row 1
    on_source(env, "UPDATE mvt SET val = 'a2', dat_mod = '2026-03-10', heure = 43200 WHERE id = 1")
    clock.set("2026-03-11 02:00:00")
    load(env, "incremental", "", "2026-03-11")
    assert ods_mvt(env) == source_mvt(env) == {1: "a2", 2: "b"}


def test_a_datetime_window_reads_the_row_stamped_at_its_very_start_and_not_the_second_before(env):
    """Kills m44 of that review: the DATETIME window written `col > since` instead of `col >= since`
    (source/dialect.py, window_predicate). A row modified at exactly LastSuccessTs minus the lookback, to the
    second, would never be read again. The row one second earlier stays out: the window is a window."""
    from datetime import datetime

    env.sql("UPDATE config.ETL_Tables SET DateModifCol = 'dat-hr-saisie', DateModifPrecision = 'datetime', "
            "TimeOfDayCol = NULL, LookbackInterval = '1 hour' WHERE TableName = 'lignecli'")
    assert succeeded(build(LoadTable(table="lignecli", mode="full", batch_tag="a")))
    last = datetime(2026, 6, 1, 12, 0, 0)
    env.sql("UPDATE config.ETL_Tables SET LastSuccessTs = ? WHERE TableName = 'lignecli'", [last])
    keys = env.sql("SELECT num_cde, num_lig FROM ods.lignecli ORDER BY num_cde, num_lig LIMIT 2")
    # every other row: stamped before the window, so only these two can be read
    on_source(env, "UPDATE lignecli SET \"dat-hr-saisie\" = '2026-01-01 00:00:00.000'")
    # no fraction of a second: the demo source keeps timestamps as text, and '... 11:00:00.000' sorts after the
    # window's '... 11:00:00' (`>` would pass)
    for (cde, lig), (stamp, qte) in zip(keys, [("2026-06-01 11:00:00", 701.5), ("2026-06-01 10:59:59", 702.5)]):
        on_source(env, f"UPDATE lignecli SET qte = {qte}, \"dat-hr-saisie\" = '{stamp}' WHERE num_cde = ? AND "
                       "num_lig = ?", params=(cde, lig))
    assert succeeded(build(LoadTable(table="lignecli", mode="incremental", batch_tag="b")))
    assert env.sql("SELECT Rows FROM etl.ETL_Log WHERE Step = 'extract' AND BatchId LIKE '%-b'") == [(1,)]
    got = {(c, n): float(q) for c, n, q in env.sql("SELECT num_cde, num_lig, qte FROM ods.lignecli")}
    assert got[tuple(keys[0])] == 701.5 and got[tuple(keys[1])] != 702.5
