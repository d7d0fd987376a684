"""What people do to the warehouse between nights (found in a review of recovery drills): a table or column of
ods dropped by hand, stg dropped between a batch's steps. The next night, or the same command run again, either
loads what the source holds or stops naming the table and saying what the rerun does; it never validates a table
rebuilt from one night's window. Real tasks through Luigi, demo source, DuckDB."""
from __future__ import annotations

import re
import uuid
from datetime import datetime

import pytest

from cbm_luigi.tasks import LoadTable, MergeOds

from .conftest import (advised_rebuild, assert_ods_equals_source, build, last_error, on_source, source_rows,
                       succeeded)

MERGE_DETAIL = "SELECT Detail FROM etl.ETL_Log WHERE TableName = ? AND Step = 'merge' AND Status = 'SUCCESS' " \
               "ORDER BY LogId DESC LIMIT 1"


def load(table: str, tag: str, mode: str = "incremental") -> bool:
    """One `luigi ... LoadTable` command: a run id of its own, as each command is its own process."""
    return succeeded(build(LoadTable(table=table, mode=mode, batch_tag=tag, run_id=uuid.uuid4().hex[:12])))


def change_now(env, table: str, column: str, key, value: str) -> None:
    """A change in the ERP now (its modification date and time), so tonight's window holds that row."""
    now = datetime.now()
    key_col = {"produit": "cod_pro", "client": "cod_cli"}[table]
    on_source(env, f'UPDATE {table} SET "{column}" = ?, dat_mod = ?, heure = ? WHERE {key_col} = ?',
              params=(value, now.date().isoformat(), now.hour * 3600 + now.minute * 60 + now.second, key))


def live(env, table: str) -> int:
    return env.sql(f'SELECT COUNT(*) FROM ods."{table}" WHERE NOT _etl_is_deleted'
                   f'{" AND _etl_is_current" if table == "client" else ""}')[0][0]


@pytest.mark.parametrize("table,key", [("produit", "P00001"), ("client", 1)])
def test_an_ods_table_dropped_between_nights_is_read_in_full_not_rebuilt_from_one_window(env, table, key):
    """ods.T dropped (by mistake, or to rebuild it as some messages advise, with the nightly running before the
    operator's full rerun). The night's incremental created it with the window's rows alone (1 of 200),
    validated, and said nothing; the rest was missing until the weekly full. It is refused now, and the same
    command reads the table in full."""
    assert load(table, "n1", mode="full")
    env.sql(f"DROP TABLE ods.{table}")
    change_now(env, table, "ville" if table == "client" else "libelle", key, "changed tonight")
    assert not load(table, "n2")
    err = last_error(env, table)
    assert err.startswith(f"OdsLostError: table {table}: ods.{table} does not exist, though the table was loaded "
                          f"before (dropped by hand?). This batch read only the rows changed in its window: merged, "
                          f"it would rebuild the table with them alone, and validate. Nothing was merged; a read in full "
                          f"rebuilds it"), err
    assert err.endswith("The batch's extract was dropped: the same command reads the table from Progress again, in "
                        "full.")
    assert ("its history is not in Progress: restore ods.client from a backup" in err) == (table == "client")
    assert not env.sql("SELECT 1 FROM information_schema.tables WHERE table_schema = 'ods' AND table_name = ?",
                       [table])
    assert load(table, "n2")
    assert live(env, table) == len(source_rows(env.source, table))
    assert_ods_equals_source(env, table)
    assert "rebuilt from this full read" in env.sql(MERGE_DETAIL, [table])[0][0]


def test_an_ods_table_dropped_then_loaded_in_full_is_rebuilt_with_a_word(env):
    """What the messages advise (keep a copy, drop it, load it in full): a full read rebuilds it at once."""
    assert load("produit", "n1", mode="full")
    env.sql("DROP TABLE ods.produit")
    assert load("produit", "rebuild", mode="full")
    assert_ods_equals_source(env, "produit")
    assert env.sql(MERGE_DETAIL, ["produit"])[0][0].startswith(
        "ods.produit does not exist, though the table was loaded before: rebuilt from this full read")


@pytest.mark.parametrize("table,column,key", [("produit", "libelle", "P00001"), ("client", "ville", 1)])
def test_an_ods_column_dropped_by_hand_is_filled_in_every_row_by_the_rerun(env, table, column, key):
    """A column of ods dropped by hand while still configured: the night added it back empty and filled it in
    its window's rows only; the weekly full found every hash unchanged and left it NULL everywhere else, for good
    (found in review). The night is refused now, and the same command reads in full and rewrites every current
    row: an SCD2 member whose other values did not change keeps its version (refreshed in place)."""
    assert load(table, "n1", mode="full")
    versions = env.sql(f'SELECT COUNT(*) FROM ods."{table}"')[0][0]
    env.sql(f"ALTER TABLE ods.{table} DROP COLUMN {column}")
    change_now(env, table, "nom" if table == "client" else "gencod-v", key, "changed tonight")
    assert not load(table, "n2")
    err = last_error(env, table)
    assert err.startswith(f"OdsLostError: table {table}: ods.{table} no longer has column(s) {column}, which the "
                          f"table's last load wrote (dropped by hand?)"), err
    assert "it would leave those columns empty in every other row" in err and "fills them in every current row" in err
    assert ("the closed versions keep them empty" in err) == (table == "client")
    assert load(table, "n2")
    assert_ods_equals_source(env, table)
    want = sum(1 for r in source_rows(env.source, table).values() if r[column] is not None)
    cur = " AND _etl_is_current" if table == "client" else ""
    assert env.sql(f'SELECT COUNT({column}) FROM ods."{table}" WHERE NOT _etl_is_deleted{cur}')[0][0] == want
    # one member changed at the source: one more version for SCD2, none for the others
    assert env.sql(f'SELECT COUNT(*) FROM ods."{table}"')[0][0] == versions + (table == "client")
    assert "every current row rewritten from this full read" in env.sql(MERGE_DETAIL, [table])[0][0]
    assert load(table, "n3")  # and the next night is an ordinary one
    assert "rewritten" not in (env.sql(MERGE_DETAIL, [table])[0][0] or "")


@pytest.mark.parametrize("between", ["stage and merge", "merge and validate"])
def test_stg_dropped_between_a_batchs_steps_is_named_and_the_same_command_stages_again(env, between):
    """A night stopped between two steps; stg.produit dropped before the rerun (a DBA cleaning the staging
    schema). Every rerun failed on the database's "Table with name produit does not exist" (found in review)."""
    from cbm_luigi.tasks import StageTable

    assert load("produit", "n1", mode="full")
    change_now(env, "produit", "libelle", "P00001", "changed tonight")
    stopped_after = StageTable if between == "stage and merge" else MergeOds
    assert succeeded(build(stopped_after(table="produit", mode="incremental", batch_tag="n2", run_id="stopped")))
    env.sql("DROP VIEW stg.produit")
    assert not load("produit", "n2")
    step = "merge" if between == "stage and merge" else "validate"
    err = last_error(env, "produit")
    assert err.startswith(f"RelationGoneError: table produit: stg.produit no longer exists (dropped since batch "), err
    assert err.endswith(f"staged?): nothing was {step}d. Run the same command again: it stages batch "
                        f"{datetime.now().date()}-n2 again first"), err
    assert load("produit", "n2")
    assert_ods_equals_source(env, "produit")


def test_ods_dropped_between_merge_and_validate_is_read_in_full_by_the_same_command(env):
    assert load("client", "n1", mode="full")
    assert succeeded(build(MergeOds(table="client", mode="incremental", batch_tag="n2", run_id="stopped")))
    env.sql("DROP TABLE ods.client")
    assert not load("client", "n2")
    err = last_error(env, "client")
    assert err.startswith("RelationGoneError: table client: ods.client no longer exists (dropped since batch "), err
    assert err.endswith("merged?): nothing was validated. Run the same command again: it reads the table in full "
                        "and rebuilds ods.client (its history is not in Progress: restore ods.client from a backup "
                        "first to keep it)"), err
    assert load("client", "n2")
    assert live(env, "client") == len(source_rows(env.source, "client"))
    assert_ods_equals_source(env, "client")


def _forget_fails_after(monkeypatch, exc_type):
    """MarkerTarget.forget raises (a dropped SQL Server connection) once steps.merge or steps.validate raised
    `exc_type`: injected, as DuckDB cannot be made to fail there."""
    from cbm_luigi import steps, targets

    seen, real_forget = [], targets.MarkerTarget.forget

    def watch(real):
        def step(*a, **kw):
            try:
                return real(*a, **kw)
            except exc_type:
                seen.append(1)
                raise
        return step

    def forget(self, s):
        if seen:
            raise RuntimeError("[08S01] Communication link failure (injected)")
        return real_forget(self, s)

    monkeypatch.setattr(steps, "merge", watch(steps.merge))
    monkeypatch.setattr(steps, "validate", watch(steps.validate))
    monkeypatch.setattr(targets.MarkerTarget, "forget", forget)


FULL_ADVICE = re.compile(r"Forgetting its stage failed \(RuntimeError: \[08S01\] Communication link failure "
                         r"\(injected\)\): run `luigi --module cbm_luigi LoadTable --table (\w+) --mode full "
                         r"--batch-tag (rebuild-[a-z0-9]+)` \(add --local-scheduler when no luigid runs\): a full "
                         r"read rebuilds what ods lost; then the same command loads this batch\.$")


@pytest.mark.parametrize("when", ["refused at the merge", "found at the validation",
                                  "found at the validation of the weekly full"])
def test_ods_lost_whose_clean_up_failed_loads_with_the_commands_the_message_gives(env, monkeypatch, when):
    """The record that makes the next read full is written with the clean-up: when that fails (a dropped
    connection), the advised `invalidate` read a window again and was refused once more (found in review). The
    message gives a full load of the table in a batch of its own (the failing batch may be today's untagged
    full one, whose markers would skip the read: found in review), then the same command."""
    from cbm_luigi import steps

    table = "produit" if when == "refused at the merge" else "client"
    tag, mode = ("", "full") if when.endswith("weekly full") else ("n2", "incremental")
    assert load(table, "n1", mode="full")
    if when.startswith("found at the validation"):
        assert succeeded(build(MergeOds(table=table, mode=mode, batch_tag=tag, run_id="stopped")))
    env.sql(f"DROP TABLE ods.{table}")
    with monkeypatch.context() as m:
        _forget_fails_after(m, steps.OdsLostError if when == "refused at the merge" else steps.RelationGoneError)
        assert not load(table, tag, mode=mode)
    err = last_error(env, table)
    advice = FULL_ADVICE.search(err)
    assert advice and advice.group(1) == table, err
    assert "Run the same command again" not in err and "the same command reads the table" not in err, err
    assert load(table, advice.group(2), mode="full")  # what the message says, then the same command
    assert load(table, tag, mode=mode)
    assert live(env, table) == len(source_rows(env.source, table))
    assert_ods_equals_source(env, table)


def test_a_key_column_dropped_from_ods_asks_for_the_rebuild_that_works(env):
    """The key dropped by hand: the refusal promised a refill, and the read in full was then refused for NULL
    keys with advice about PrimaryKeyCols that no one could follow: the rows had lost their identity (found in
    review). It says to rebuild the table, and that works."""
    assert load("produit", "n1", mode="full")
    env.sql("ALTER TABLE ods.produit DROP COLUMN cod_pro")
    for mode in ("incremental", "full"):  # no read can refill a key
        assert not load("produit", f"n2-{mode}", mode=mode)
        err = last_error(env, "produit")
        assert err.startswith("OdsKeyLostError: table produit: ods.produit no longer has its key column(s) cod_pro "
                              "(dropped by hand?)"), err
        assert "Rebuild the table: keep a copy of ods.produit if you need it, drop it, then run `luigi" in err, err
        assert err.endswith("` (add --local-scheduler when no luigid runs)."), err
    env.sql("DROP TABLE ods.produit")
    assert load("produit", advised_rebuild(err, "produit"), mode="full")  # the command the message gives
    assert_ods_equals_source(env, "produit")


def test_the_rebuild_the_messages_give_reads_on_a_day_the_table_was_loaded_in_full(env):
    """README's own first load (`LoadTable --table produit --mode full`, no tag) makes today's untagged full batch:
    a rebuild advised as that same command read nothing and exited 0, and ods stayed dropped (found in review of
    the docs). The messages give a batch of its own."""
    assert succeeded(build(LoadTable(table="produit", mode="full")))  # today's untagged full batch
    env.sql("ALTER TABLE ods.produit DROP COLUMN cod_pro")
    assert not load("produit", "n2")
    err = last_error(env, "produit")
    env.sql("DROP TABLE ods.produit")
    assert load("produit", advised_rebuild(err, "produit"), mode="full")
    assert_ods_equals_source(env, "produit")


def test_the_rebuild_advised_twice_in_a_day_reads_the_table_each_time(env, monkeypatch):
    """The advised full load's tag was made from the run id (a Luigi parameter a caller can pass, a cron wrapper
    naming its runs `cron-<day>-<time>`): two runs of a day whose ods lost the table, each with its clean-up
    failing, were given the same tag, and the second advised load found its batch loaded and read nothing (found
    in review). Each message gives a new tag."""
    from cbm_luigi import steps

    assert load("produit", "n1", mode="full")
    advised = []
    for tag, run_id in (("n2", "cron-20261129-0200"), ("n3", "cron-20261129-1400")):
        env.sql("DROP TABLE ods.produit")
        with monkeypatch.context() as m:
            _forget_fails_after(m, steps.OdsLostError)
            assert not succeeded(build(LoadTable(table="produit", mode="incremental", batch_tag=tag, run_id=run_id)))
        advice = FULL_ADVICE.search(last_error(env, "produit"))
        assert advice, last_error(env, "produit")
        advised.append(advice.group(2))
        assert load("produit", advice.group(2), mode="full")  # what the message says
        assert env.sql("SELECT 1 FROM information_schema.tables WHERE table_schema = 'ods' AND "
                       "table_name = 'produit'"), f"{advised}: the advised full load read nothing"
        assert load("produit", tag), last_error(env, "produit")  # then the same command
    assert advised[0] != advised[1]
    assert live(env, "produit") == len(source_rows(env.source, "produit"))
    assert_ods_equals_source(env, "produit")


def test_a_new_destination_table_is_not_said_as_an_ods_table_dropped_by_hand(env, caplog):
    """A new DestinationTable makes the next load read in full into the new table (its configuration changed):
    the merge said the new table's absence as "ods.client_v2 does not exist, though the table was loaded before
    (dropped by hand?)", in a WARNING and in etl.ETL_Log, and the operator went looking for who dropped it (found
    in review of the upgrade)."""
    assert load("client", "n1", mode="full")
    env.sql("UPDATE config.ETL_Tables SET DestinationTable = 'client_v2' WHERE TableName = 'client'")
    with caplog.at_level("WARNING"):
        assert load("client", "n2")
    assert live(env, "client_v2") == len(source_rows(env.source, "client"))
    detail = env.sql(MERGE_DETAIL, ["client"])[0][0] or ""
    assert "loaded before" not in detail and not any("dropped by hand" in m for m in caplog.messages), detail


@pytest.mark.parametrize("where", ["warehouse", "extract"])
def test_spill_files_of_a_killed_run_do_not_outlive_its_rerun(env, monkeypatch, where):
    """A step past its memory cap spills: the warehouse into `<warehouse>.tmp/`, the extract's engine into a folder
    of this host in the batch's cache folder. DuckDB removes its files when the connection closes; a killed
    process never closes it, and the rerun, which completed, removed none (found in review: random kills; the
    warehouse's are outside the cache, where clean-cache never looks). Each is now removed by the next process
    that opens the warehouse, or extracts into that folder, once the process that made them no longer runs."""
    import signal
    import subprocess
    import time

    from cbm_luigi import demo_source

    from .conftest import BIN, subprocess_env

    demo_source.add_synthetic_table(env.source, "big", 100_000, 30)
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols, DateModifCol, IsDimension) VALUES ('big', 'id', "
            f"'dat_mod', {str(where == 'warehouse').upper()})")
    cmd = [str(BIN / "luigi"), "--module", "cbm_luigi", "LoadTable", "--table", "big", "--mode", "full",
           "--local-scheduler"]
    if where == "warehouse":  # the SCD2 merge of a full batch with a fifth of the members changed spills
        first = subprocess.run(cmd + ["--batch-tag", "first"], cwd=env.home, env=subprocess_env(env),
                               capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
        time.sleep(1.1)  # the changes come after the first load's extract started
        demo_source.touch_synthetic_rows(env.source, "big", 0.2)
        on_source(env, "DELETE FROM big WHERE id % 100 = 3")
        extra, spills = {"CBM_DUCKDB_MEMORY_LIMIT": "30MB"}, env.warehouse.with_name(env.warehouse.name + ".tmp")
        found = lambda: list(spills.glob("duckdb_temp_*storage*"))  # noqa: E731
    else:
        extra, spills = {"CBM_TRANSFORM_MEMORY_LIMIT": "32MB"}, env.cache
        found = lambda: list(spills.rglob("duckdb_temp_*storage*"))  # noqa: E731
    p = subprocess.Popen(cmd, cwd=env.home, env=subprocess_env(env, **extra), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline and not found():
            time.sleep(0.005)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    left = [q for q in (spills.rglob(f"duckdb_temp_{p.pid}_*"))]
    assert left, f"the run did not spill before it ended (exit {p.returncode}): the test proves nothing"
    rerun = subprocess.run(cmd, cwd=env.home, env=subprocess_env(env), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    still = sorted(q.name for q in spills.rglob(f"duckdb_temp_{p.pid}_*"))
    assert not still, f"after the rerun, the killed process's spill files are still in {spills}: {still}"
    assert env.sql("SELECT COUNT(*) FROM ods.big WHERE NOT _etl_is_deleted AND "
                   f"{'_etl_is_current' if where == 'warehouse' else 'TRUE'}") == [(99_000 if where == 'warehouse' else 100_000,)]
