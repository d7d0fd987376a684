"""Upgrading a running installation (OPERATIONS.md, "Upgrading"), from the code of earlier commits (found in review).

Each test builds real state with an OLDER cbm_luigi (the code of an earlier commit of this repository, exported
with `git archive` and run in a subprocess with PYTHONPATH pointing at it): a warehouse, a cache of extracts,
markers and etl.ETL_TableState rows, on the same demo source and DuckDB file. Then it does what the upgrade
section says with this version (`cbm-etl init-db --no-tables`, then the nightly LoadAll) and checks ods against
the source."""
from __future__ import annotations

import subprocess
import sys
import tarfile
from datetime import date, timedelta
from io import BytesIO
from pathlib import Path

import pytest

from cbm_luigi.cli import main as cbm_etl
from cbm_luigi.source.readers import release_readers
from cbm_luigi.tasks import LoadAll
from cbm_luigi.warehouse.duckdb_wh import release_connections

from .conftest import (REPO, assert_ods_equals_source, build, make_env, ods_rows, on_source, source_rows,
                       subprocess_env, succeeded)

# 1acba98: this session's starting point (extract format 4, meta without 'since'/'read_all')
START_OF_DAY = "1acba98"
# e748093: the code `make bench` measured this session; etl.ETL_TableState recorded ValidatedShape/ValidatedColumns
# (renamed MergedShape/MergedColumns by 8cd3d18)
BENCHED = "e748093"

D1, D2 = date(2026, 11, 20), date(2026, 11, 21)
# one order line changed with a modification date 10 days back (no 2-day window holds it)
STALE_ROW = ("UPDATE lignecli SET qte = 777, dat_mod = ? WHERE num_cde = (SELECT MIN(num_cde) FROM lignecli) "
             "AND num_lig = (SELECT MIN(num_lig) FROM lignecli WHERE num_cde = (SELECT MIN(num_cde) FROM lignecli))")


def _has_commit(commit: str) -> bool:
    return subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                          capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def old_trees(tmp_path_factory):
    """commit -> a directory holding that commit's code (git archive: no worktree left behind)."""
    made: dict[str, Path] = {}

    def tree(commit: str) -> Path:
        if not _has_commit(commit):
            pytest.skip(f"commit {commit} not in this clone")
        if commit not in made:
            out = tmp_path_factory.mktemp(f"old-{commit}")
            data = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True,
                                  check=True).stdout
            with tarfile.open(fileobj=BytesIO(data)) as tar:
                tar.extractall(out)
            made[commit] = out
        return made[commit]
    return tree


def run_old(tree: Path, env, *args: str) -> str:
    """Run the old version's code (python -m ...) on the test's warehouse, cache and source."""
    release_connections()
    release_readers()
    e = subprocess_env(env, PYTHONPATH=str(tree), LUIGI_CONFIG_PATH=str(tree / "luigi.cfg"))
    p = subprocess.run([sys.executable, "-m", *args],
                       cwd=tree, env=e, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"old version failed: {args}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


def old_luigi(tree: Path, env, task: str, *params: str) -> str:
    return run_old(tree, env, "luigi", "--module", "cbm_luigi", task, "--local-scheduler", *params)


def upgrade(env) -> None:
    """OPERATIONS.md, Upgrading: run `cbm-etl init-db --no-tables` once."""
    release_connections()
    assert cbm_etl(["init-db", "--no-tables"]) == 0
    release_connections()




def _filter_removed_after_an_old_load(old: Path, tmp_path, monkeypatch):
    """Under e748093 produit is loaded with a FilterClause, which the team then removes (a change pending at the
    upgrade): the env, and the keys the filter kept out of ods."""
    env = make_env(tmp_path, monkeypatch, init=False)
    run_old(old, env, "cbm_luigi.cli", "init-db")
    env.sql("UPDATE config.ETL_Tables SET FilterClause = '\"stock\" > 50' WHERE TableName = 'produit'")
    old_luigi(old, env, "LoadAll", "--mode", "full", "--batch-date", str(D1))
    filtered = set(source_rows(env.source, "produit")) - set(ods_rows(env, "produit", ["cod_pro"]))
    assert filtered, "the filter kept no row out: the test proves nothing"
    env.sql("UPDATE config.ETL_Tables SET FilterClause = NULL WHERE TableName = 'produit'")  # the pending change
    return env, filtered


def test_a_configuration_change_not_loaded_yet_at_the_upgrade_still_reads_in_full(tmp_path, monkeypatch, old_trees):
    """OPERATIONS.md: "Any change to what a table reads ... (FilterClause ...) makes the first load after it read
    in full", and the upgrade step "records the configuration of each table already loaded".

    Under e748093 (which already tracked this: etl.ETL_TableState.ValidatedShape) produit was loaded with a
    FilterClause, and the team then removed the filter: that version's next load reads produit in full (checked
    below on a copy). They upgrade first. init-db --no-tables saw ods with the configuration's columns and recorded
    the configuration NOW (without the filter) as the one ods was loaded under, ignoring ValidatedShape: the rows
    the filter kept out never reached ods. A table that version tracked now reads in full once."""
    old = old_trees(BENCHED)
    env, filtered = _filter_removed_after_an_old_load(old, tmp_path, monkeypatch)

    # control: staying on the old version, its next incremental reads produit in full and loads those rows
    control = tmp_path / "control"
    control.mkdir()
    for name in ("wh.duckdb", "source.sqlite"):
        (control / name).write_bytes((tmp_path / name).read_bytes())
    cenv = type(env)(control, control / "source.sqlite", control / "wh.duckdb", control / "cache")
    old_luigi(old, cenv, "LoadAll", "--mode", "incremental", "--batch-date", str(D2))
    assert filtered <= set(ods_rows(cenv, "produit", ["cod_pro"]))

    upgrade(env)
    assert succeeded(build(LoadAll(mode="incremental", batch_date=D2)))
    detail = env.sql("SELECT Rows, Detail FROM etl.ETL_Log WHERE TableName = 'produit' AND Step = 'extract' "
                     "AND BatchId = ?", [str(D2)])
    assert filtered <= set(ods_rows(env, "produit", ["cod_pro"])), \
        f"rows kept out by the removed FilterClause never loaded after the upgrade; produit's extract: {detail}"
    assert_ods_equals_source(env, "produit")



def test_an_upgrade_killed_after_its_ddl_still_reads_a_pending_change_in_full(tmp_path, monkeypatch, old_trees):
    """init-db runs its DDL, then records each loaded table's configuration. Killed in between, the warehouse had
    every column this version asks for, so the nightly ran: MergedShape NULL read as "nothing to compare", produit
    was read in its window only, and its merge recorded the configuration, so the rows the removed FilterClause
    had kept out waited for the next full (found in review, by SIGKILL). A table loaded whose configuration was
    never recorded reads in full once."""
    from cbm_luigi import config_store

    old = old_trees(BENCHED)
    env, filtered = _filter_removed_after_an_old_load(old, tmp_path, monkeypatch)

    def killed(*_a, **_k):
        raise KeyboardInterrupt  # the kill: the recording's transaction never commits
    release_connections()
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(config_store, "record_loaded_configurations", killed)
        cbm_etl(["init-db", "--no-tables"])
    assert env.sql("SELECT COUNT(*) FROM etl.ETL_TableState WHERE MergedShape IS NOT NULL") == [(0,)]
    assert succeeded(build(LoadAll(mode="incremental", batch_date=D2)))  # the night's cron
    assert filtered <= set(ods_rows(env, "produit", ["cod_pro"]))
    assert_ods_equals_source(env, "produit")
    upgrade(env)  # the operator finishes the upgrade: nothing left to record, the next night is incremental
    assert succeeded(build(LoadAll(mode="incremental", batch_date=D2 + timedelta(days=1))))
    reads = env.sql("SELECT Detail FROM etl.ETL_Log WHERE TableName = 'produit' AND Step = 'extract' "
                    "AND BatchId = ?", [str(D2 + timedelta(days=1))])
    assert reads and "rows with dat_mod >=" in (reads[0][0] or ""), reads
    assert_ods_equals_source(env, "produit")


def _night_stopped_under_old_version(tmp_path, monkeypatch, old_trees, stopped_after):
    old = old_trees(START_OF_DAY)
    env = make_env(tmp_path, monkeypatch, init=False)
    run_old(old, env, "cbm_luigi.cli", "init-db")
    old_luigi(old, env, "LoadAll", "--mode", "full", "--batch-date", str(D1))
    # the night of D2, under the old version: killed after lignecli's stage or merge (validation not done)
    old_luigi(old, env, stopped_after, "--table", "lignecli", "--mode", "incremental", "--batch-date", str(D2))
    upgrade(env)
    return env


@pytest.mark.parametrize("stopped_after", ["ExtractParquet", "StageTable", "MergeOds"])
def test_a_batch_of_the_previous_version_is_read_again_when_the_window_was_widened(
        tmp_path, monkeypatch, old_trees, stopped_after):
    """OPERATIONS.md: cached extracts of an older version are read again, and a window widened by hand is read
    by a rerun of a batch not validated yet, whatever step it stopped at.

    The nightly of D2 ran under 1acba98 and was killed after lignecli's extract, stage or merge. The team
    upgrades, and (a row stamped by a client whose clock lags, which only a wider window sees) clears lignecli's
    LastSuccessTs so the rerun reads it in full. The old file had the same format number (4) and shape as this
    version's but no 'since' key: the narrow batch was merged, the validation moved LastSuccessTs past the row,
    and no later incremental read it (found in review). The format now records the window (5), and the stage and
    merge of a batch whose file is of an older format are incomplete: the table is read again."""
    env = _night_stopped_under_old_version(tmp_path, monkeypatch, old_trees, stopped_after)
    stale = (date.today() - timedelta(days=10)).isoformat()
    on_source(env, STALE_ROW, params=(stale,))
    env.sql("UPDATE config.ETL_Tables SET LastSuccessTs = NULL WHERE TableName = 'lignecli'")  # read in full

    assert succeeded(build(LoadAll(mode="incremental", batch_date=D2)))
    extracts = env.sql("SELECT Rows, Detail FROM etl.ETL_Log WHERE TableName = 'lignecli' AND Step = 'extract' "
                       "AND BatchId = ? ORDER BY LogId", [str(D2)])
    assert len(extracts) == 2, f"the old version's narrow batch was merged as it was: {extracts}"
    assert_ods_equals_source(env, "lignecli")


@pytest.mark.parametrize("stopped_after", ["StageTable", "MergeOds"])
def test_clean_cache_after_the_upgrade_leaves_a_batch_stopped_after_its_stage_that_reruns_to_completion(
        tmp_path, monkeypatch, old_trees, stopped_after):
    """clean-cache removes a cached extract of an older format as one that is read again anyway; the batch's
    stage and merge are then incomplete, and the rerun reads, stages and merges it again (it failed every time
    with FileNotFoundError: DuckDB's stg is a view over the file; found in review)."""
    env = _night_stopped_under_old_version(tmp_path, monkeypatch, old_trees, stopped_after)
    assert cbm_etl(["clean-cache", "--keep", "0"]) == 0
    assert not list(env.cache.glob(f"{D2}/*/lignecli.extract.parquet")), "clean-cache kept the old file"

    rerun = build(LoadAll(mode="incremental", batch_date=D2))
    errors = env.sql("SELECT Step, ErrorMessage FROM etl.ETL_Log WHERE TableName = 'lignecli' AND BatchId = ? "
                     "AND Status = 'FAILED' ORDER BY LogId", [str(D2)])
    assert succeeded(rerun), f"the rerun failed: {errors}"
    assert_ods_equals_source(env, "lignecli")
