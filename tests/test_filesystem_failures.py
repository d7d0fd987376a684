"""The filesystem fails under the pipeline: a spill of the extract's engine, a cache that turns read-only (found in
a review of full disks, read-only and removed directories). Real pipeline, demo source, DuckDB; the read-only
cache is a real tmpfs of the test's own, which needs root (the tests that need one are skipped without)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cbm_luigi import demo_source
from cbm_luigi.tasks import ExtractParquet, LoadAll, LoadTable

from .conftest import DEMO_TABLES, assert_ods_equals_source, build, last_error, on_source, succeeded, tmpfs


def remount(path: Path, how: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{how}", str(path)], check=True)


def failed_while_read_only(env, cache: Path, task) -> str:
    """Run `task` with the cache remounted read-only; it must fail: its table's error (writable again after)."""
    remount(cache, "ro")
    try:
        assert not succeeded(build(task))
        return last_error(env, task.table)
    finally:
        remount(cache, "rw")


def validated(env, table: str) -> bool:
    return bool(env.sql("SELECT COUNT(*) FROM etl.ETL_Markers WHERE TableName = ? AND Step = 'validate'",
                        [table])[0][0])


# -- 1. a spill of the transform engine breaks every later extract of the process ----------------------------

def test_a_table_whose_extract_spills_to_disk_does_not_fail_every_later_table_of_the_night(env, monkeypatch):
    """OPERATIONS (Tuning, Memory): past CBM_TRANSFORM_MEMORY_LIMIT 'DuckDB spills to disk'. It does, once: the
    extract's engine is one DuckDB per process, and each extract sets its temp_directory again
    (transform.compute_engine); DuckDB refuses to switch its temporary directory once it has been used, even to
    the same path. So after one wide table spills, every later extract of the nightly LoadAll fails with
    'Not implemented Error: Cannot switch temporary directory after the current one has been used' (no table,
    no way out), and the critical tables' failures hold back the rest."""
    demo_source.add_synthetic_table(env.source, "stock_large", 20_000, 200)
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols, DateModifCol, Priority) "
            "VALUES ('stock_large', 'id', 'dat_mod', 5)")  # loaded first
    monkeypatch.setenv("CBM_TRANSFORM_MEMORY_LIMIT", "48MB")  # the wide extract spills, and completes
    build(LoadAll(mode="full"))
    assert validated(env, "stock_large"), last_error(env, "stock_large")  # it spilled and loaded
    errors = {t: last_error(env, t) for t in DEMO_TABLES if last_error(env, t)}
    assert not errors, errors
    for t in DEMO_TABLES:
        assert_ods_equals_source(env, t)


# -- 2. a read-only cache: the extract's own message is replaced by its cleanup's --------------------------

def test_an_extract_into_a_read_only_cache_says_which_table_and_what_to_do(env, tmp_path, monkeypatch):
    """The cache's filesystem went read-only (an ext4 error remounts it so) after the batch's folder was made.
    shape_batches turns DuckDB's 'Cannot open file ...: Read-only file system' into a TransformError naming the
    table and the way out, then its `finally` unlinks the temporary file that was never created:
    Path.unlink(missing_ok=True) only ignores ENOENT, and a read-only filesystem answers EROFS, so that OSError
    replaces the TransformError. etl.ETL_Log and `cbm-etl summary` show a bare 'OSError: [Errno 30] Read-only
    file system: <a .tmp file that does not exist>' with neither the table nor what to do."""
    with tmpfs(tmp_path / "cachefs", "16m") as cache:
        monkeypatch.setenv("CBM_CACHE_DIR", str(cache))
        assert succeeded(build(LoadTable(table="famille", mode="full")))  # the batch's folder exists
        err = failed_while_read_only(env, cache, LoadTable(table="produit", mode="full"))
        assert "table produit" in err and "CBM_CACHE_DIR" in err, err
        # once the filesystem is writable again the same command loads the table
        assert succeeded(build(LoadTable(table="produit", mode="full")))
        assert_ods_equals_source(env, "produit")


def test_a_refused_batch_on_a_read_only_cache_still_says_why_it_was_refused(env, tmp_path, monkeypatch):
    """A batch with an unknown (NULL) key part is refused by the merge; MergeOds._read_again then forgets the
    stage (committed) and unlinks the extract. On a read-only cache the unlink raises, and that OSError replaces
    the NullKeyError: the operator reads 'Read-only file system' and never learns that a row must be fixed in
    Progress; and the rerun restaged the kept file and was refused again. Now the refusal is what it says, with
    the file to delete; done, with the row fixed, one rerun loads."""
    env.sql("UPDATE config.ETL_Tables SET PrimaryKeyCols = 'cod_pro,gencod_v' WHERE TableName = 'produit'")
    on_source(env, "UPDATE produit SET gencod_v = 'G' || cod_pro WHERE gencod_v IS NULL")
    on_source(env, "UPDATE produit SET gencod_v = NULL WHERE cod_pro = 'P00001'")
    with tmpfs(tmp_path / "cachefs", "16m") as cache:
        monkeypatch.setenv("CBM_CACHE_DIR", str(cache))
        assert succeeded(build(ExtractParquet(table="produit", mode="full")))
        err = failed_while_read_only(env, cache, LoadTable(table="produit", mode="full"))
        assert err.startswith("NullKeyError") and "P00001" in err, err
        # the way out it gives, followed: the row fixed in Progress, the kept file deleted, one rerun loads
        extract = next(cache.rglob("produit.extract.parquet"))
        assert "could not be dropped" in err and f"delete {extract}" in err, err
        on_source(env, "UPDATE produit SET gencod_v = 'GP00001' WHERE cod_pro = 'P00001'")
        extract.unlink()
        assert succeeded(build(LoadTable(table="produit", mode="full")))
        assert_ods_equals_source(env, "produit")


def test_invalidate_on_a_read_only_cache_changes_nothing_and_says_so(env, tmp_path, monkeypatch, capsys):
    """`cbm-etl invalidate produit --batch B` removed the table's markers, then failed on the cached extract of a
    read-only cache with a bare "OSError: Read-only file system": the markers were gone, the file was not, and
    the rerun merged the cached rows again instead of reading Progress (found in review). The file goes first
    now: a failure leaves the table as it was, says so, and the same command works once the cache is writable."""
    from datetime import date

    from cbm_luigi.cli import main as cbm_etl

    day = date(2026, 11, 24)
    with tmpfs(tmp_path / "cachefs", "16m") as cache:
        monkeypatch.setenv("CBM_CACHE_DIR", str(cache))
        assert succeeded(build(LoadTable(table="produit", mode="full", batch_date=day)))
        markers = env.sql("SELECT COUNT(*) FROM etl.ETL_Markers WHERE TableName = 'produit'")[0][0]
        extract = next(cache.rglob("produit.extract.parquet"))
        remount(cache, "ro")
        try:
            capsys.readouterr()
            assert cbm_etl(["invalidate", "produit", "--batch", day.isoformat()]) == 1
        finally:
            remount(cache, "rw")
        err = capsys.readouterr().err
        assert f"could not remove {extract}: Read-only file system. No marker was removed" in err, err
        assert "then run the same command again" in err
        assert env.sql("SELECT COUNT(*) FROM etl.ETL_Markers WHERE TableName = 'produit'")[0][0] == markers
        assert cbm_etl(["invalidate", "produit", "--batch", day.isoformat()]) == 0
        assert not extract.exists()
        assert env.sql("SELECT COUNT(*) FROM etl.ETL_Markers WHERE TableName = 'produit'")[0][0] == 0
        on_source(env, "UPDATE produit SET libelle = 'read again' WHERE rowid = 1")
        assert succeeded(build(LoadTable(table="produit", mode="full", batch_date=day)))
        assert_ods_equals_source(env, "produit")  # read from Progress again, not the cached rows


def test_a_warehouse_file_system_without_locks_is_said_at_once_not_waited_for_as_busy(env, monkeypatch, capsys):
    """DuckDB says "Could not set lock on file" for any lock failure, and the wait for a busy warehouse took every
    one for another process: on a file system without locks (an NFS or SMB mount without lock support) a run
    waited 2 minutes, then sent the operator looking for a process that did not exist (found in review). The
    file system's answer is injected (DuckDB's own message for ENOLCK): no such mount can be made here."""
    import time

    import duckdb

    from cbm_luigi.cli import main as cbm_etl
    from cbm_luigi.warehouse import duckdb_wh

    duckdb_wh.release_connections()
    real = duckdb.connect

    def no_locks(database=":memory:", *a, **kw):
        if str(database) == str(env.warehouse):
            raise duckdb.IOException(f'IO Error: Could not set lock on file "{database}": No locks available')
        return real(database, *a, **kw)

    monkeypatch.setattr(duckdb_wh, "LOCK_WAIT_S", 3.0)  # the wait, had it waited (120 s in a run)
    monkeypatch.setattr(duckdb_wh.duckdb, "connect", no_locks)
    t0 = time.monotonic()
    assert cbm_etl(["summary"]) == 1
    err = capsys.readouterr().err
    assert time.monotonic() - t0 < 2.5, "it waited for a lock no process holds"
    assert "could not be locked, and no other process holds it" in err and "network mount" in err, err
    assert "Put CBM_DUCKDB_PATH on a local disk" in err and "held by another process" not in err
