"""The core pipeline end to end on the embedded default, through Luigi, compared with the source row for row."""
from __future__ import annotations

import sqlite3
from datetime import date

from cbm_luigi import demo_source
from cbm_luigi.tasks import LoadAll, LoadTable

from .conftest import DEMO_TABLES, TABLE_KEYS, assert_ods_equals_source, build, ods_rows, source_rows, succeeded

DAY = date.today()


def _key(k) -> tuple:
    """A key as demo_source reports it (dates as ISO text) -> as Python values."""
    return tuple(date.fromisoformat(v) if isinstance(v, str) and len(v) == 10 and v[4] == "-" else v for v in k)


def test_full_incremental_full_matches_source(env):
    assert succeeded(build(LoadAll(mode="full")))
    for t in DEMO_TABLES:
        assert_ods_equals_source(env, t)

    touched = {t: {kind: [_key(k) for k in keys] for kind, keys in v.items()}
               for t, v in demo_source.mutate(env.source).items()}
    assert succeeded(build(LoadAll(mode="incremental")))
    # every update and insert arrived; the deletes are invisible to a date filter
    for t in DEMO_TABLES:
        src = source_rows(env.source, t)
        ods = ods_rows(env, t, TABLE_KEYS[t])
        for k in touched[t]["updated"] + touched[t]["inserted"]:
            assert ods[tuple(k)] == src[tuple(k)], (t, k)
        for k in touched[t]["deleted"]:
            assert tuple(k) not in src
            if t == "famille":  # no modification date: read in full, so the delete is seen (and soft)
                assert tuple(k) in ods_rows(env, t, TABLE_KEYS[t], deleted=True)
            else:
                assert tuple(k) in ods
    inc = dict(env.sql("SELECT TableName, Rows FROM etl.ETL_Log WHERE Step = 'extract' AND Mode = 'incremental'"))
    assert inc["client"] < len(source_rows(env.source, "client"))  # a window, not a full read
    assert inc["famille"] == len(source_rows(env.source, "famille"))  # no timestamps: read in full
    fallback = env.sql("SELECT Detail FROM etl.ETL_Log WHERE TableName = 'famille' AND Step = 'extract' "
                       "AND Mode = 'incremental'")[0][0]
    assert "falls back to full" in fallback

    assert succeeded(build(LoadAll(mode="full", batch_tag="final")))
    for t in DEMO_TABLES:
        assert_ods_equals_source(env, t)
        deleted = ods_rows(env, t, TABLE_KEYS[t], deleted=True)
        assert set(deleted) == {tuple(k) for k in touched[t]["deleted"]}, t
    # SCD2 (client is a dimension): an updated key has its old version closed and one current version
    k = touched["client"]["updated"][0][0]
    versions = env.sql("SELECT _etl_is_current, _etl_valid_to IS NULL FROM ods.client WHERE cod_cli = ? "
                       "ORDER BY _etl_valid_from", [k])
    assert versions == [(False, False), (True, True)]
    # type 1 (produit): one row per key, ever
    assert env.sql("SELECT COUNT(*) - COUNT(DISTINCT cod_pro) FROM ods.produit")[0][0] == 0
    merge = dict(((r[0], r[1]), r[2:]) for r in env.sql(
        "SELECT TableName, BatchId, RowsInserted, RowsUpdated, RowsDeleted FROM etl.ETL_Log WHERE Step = 'merge'"))
    assert merge[("client", f"{DAY}-final")] == (0, 0, len(touched["client"]["deleted"]))
    assert env.sql("SELECT COUNT(*) FROM etl.ETL_Validation WHERE NOT Passed")[0][0] == 0


def test_rerun_of_same_batch_does_no_work(env):
    assert succeeded(build(LoadAll(mode="full")))
    logged = env.sql("SELECT COUNT(*) FROM etl.ETL_Log")[0][0]
    result = build(LoadAll(mode="full"))
    assert succeeded(result)
    assert result.scheduling_succeeded
    assert env.sql("SELECT COUNT(*) FROM etl.ETL_Log")[0][0] == logged  # nothing ran
    assert "already" in result.summary_text.lower() or "complete" in result.summary_text.lower()


def test_load_table_alone_and_run_log(env):
    assert succeeded(build(LoadTable(table="produit", mode="full")))
    assert_ods_equals_source(env, "produit")
    steps = env.sql("SELECT Step, Status, Rows FROM etl.ETL_Log WHERE TableName = 'produit' ORDER BY LogId")
    assert [s[0] for s in steps] == ["extract", "stage", "merge", "validate"]
    assert all(s[1] == "SUCCESS" and s[2] == 200 for s in steps)
    assert env.sql("SELECT COUNT(*) FROM etl.ETL_Markers WHERE TableName = 'produit'")[0][0] == 3
    last = env.sql("SELECT LastSuccessTs FROM config.ETL_Tables WHERE TableName = 'produit'")[0][0]
    assert last is not None and last.date() == DAY
    # only produit was loaded
    assert env.sql("SELECT COUNT(DISTINCT TableName) FROM etl.ETL_Log")[0][0] == 1
    views = {r[0]: r for r in env.sql("SELECT TableName, SLAStatus FROM etl.vw_SLABreach")}
    assert views["produit"][1] == "OK" and views["client"][1] == "NEVER_LOADED"
    perf = env.sql("SELECT Step, Runs, RowsPerSecond FROM etl.vw_TablePerformance WHERE TableName = 'produit'")
    assert {p[0] for p in perf} == {"extract", "stage", "merge", "validate"}
    assert all(p[1] == 1 and p[2] > 0 for p in perf)


def _copy_rows_as_new(path, table: str, key: str, n: int) -> list:
    """Insert `n` copies of existing rows under new keys, modified today (a batch of new keys only)."""
    con = sqlite3.connect(str(path))
    names = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]
    rows = con.execute(f'SELECT * FROM "{table}" ORDER BY "{key}" LIMIT ?', (n,)).fetchall()
    top = con.execute(f'SELECT MAX("{key}") FROM "{table}"').fetchone()[0]
    new_keys = []
    for row in rows:
        rec = dict(zip(names, row))
        rec[key] = top + 1 + len(new_keys) if isinstance(top, int) else f"{top}-new{len(new_keys)}"
        rec["dat_mod"] = DAY.isoformat()
        new_keys.append(rec[key])
        con.execute(f'INSERT INTO "{table}" VALUES ({", ".join("?" * len(names))})', [rec[c] for c in names])
    con.commit()
    con.close()
    return new_keys


def test_a_batch_of_new_keys_only_is_inserted_without_touching_the_rest(env):
    """New keys only (no update, no delete): the merge is a plain INSERT; existing rows stay as they were."""
    assert succeeded(build(LoadAll(mode="full")))
    before = {t: env.sql(f'SELECT * FROM ods."{t}" ORDER BY ALL') for t in ("produit", "client")}
    added = {t: _copy_rows_as_new(env.source, t, TABLE_KEYS[t][0], 3) for t in ("produit", "client")}
    assert succeeded(build(LoadAll(mode="incremental")))
    for t in ("produit", "client"):  # type 1 and SCD2
        assert_ods_equals_source(env, t)
        merged = env.sql("SELECT RowsInserted, RowsUpdated, RowsDeleted FROM etl.ETL_Log WHERE Step = 'merge' "
                         "AND TableName = ? AND Mode = 'incremental'", [t])
        assert merged == [(3, 0, 0)], t
        # the window held exactly the new rows: merge_counts saw no match, so the merge took the INSERT path
        assert env.sql("SELECT Rows FROM etl.ETL_Log WHERE Step = 'extract' AND TableName = ? "
                       "AND Mode = 'incremental'", [t]) == [(3,)], t
        marks = ", ".join("?" * len(added[t]))
        assert env.sql(f'SELECT * FROM ods."{t}" WHERE {TABLE_KEYS[t][0]} NOT IN ({marks}) ORDER BY ALL',
                       added[t]) == before[t]
    versions = env.sql("SELECT _etl_is_current, _etl_valid_to IS NULL, _etl_valid_from IS NOT NULL FROM ods.client "
                       "WHERE cod_cli = ?", [added["client"][0]])
    assert versions == [(True, True, True)]


def test_a_dimension_member_deleted_then_back_unchanged_keeps_its_deletion_in_the_history(env):
    """famille is SCD2 without a modification date (read in full): a key deleted at the source is flagged on its
    current version; when it comes back as it was, that version is closed with its deletion kept and a new one
    opens (reviving it in place erased the period the member did not exist)."""
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="a")))
    with sqlite3.connect(env.source) as con:
        row = con.execute("SELECT * FROM famille ORDER BY cod_fam LIMIT 1").fetchone()
        key = row[0]
        con.execute("DELETE FROM famille WHERE cod_fam = ?", [key])
    con.close()
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="b")))
    with sqlite3.connect(env.source) as con:
        con.execute(f"INSERT INTO famille VALUES ({', '.join('?' * len(row))})", row)
    con.close()
    assert succeeded(build(LoadTable(table="famille", mode="full", batch_tag="c")))
    versions = env.sql("SELECT _etl_is_current, _etl_is_deleted, _etl_deleted_at IS NOT NULL, "
                       "_etl_valid_to IS NOT NULL, _etl_batch_id FROM ods.famille WHERE cod_fam = ? "
                       "ORDER BY _etl_valid_from", [key])
    assert versions == [(False, True, True, True, f"{DAY}-a"), (True, False, False, False, f"{DAY}-c")]
    assert_ods_equals_source(env, "famille")
    merge = env.sql("SELECT RowsInserted, RowsUpdated, RowsDeleted FROM etl.ETL_Log WHERE Step = 'merge' "
                    "AND BatchId = ?", [f"{DAY}-c"])
    assert merge == [(0, 1, 0)]
    assert env.sql("SELECT COUNT(*) FROM etl.ETL_Validation WHERE NOT Passed")[0][0] == 0
