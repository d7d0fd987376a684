"""A window moved back (or cleared) by hand to read rows again is read, even when the batch being rerun has its
extract cached from the old window (found in review). The real tasks run through Luigi on the demo source and
DuckDB, with the extract's clock set by the test; ods is compared with the source."""
from __future__ import annotations

import sqlite3
from datetime import date, datetime, timezone

import pytest

from cbm_luigi import demo_source, extract
from cbm_luigi.demo_source import Col, TableDef
from cbm_luigi.tasks import LoadTable, MergeOds, StageTable

from .conftest import build, on_source, succeeded


class Clock:
    """The extract's clock (cbm_luigi.extract reads `datetime.now(timezone.utc)` once per extract)."""

    def __init__(self, monkeypatch):
        self.local: datetime | None = None
        clock = self

        class FakeDatetime(datetime):
            @classmethod
            def now(cls, tz=None):
                t = clock.local.astimezone(timezone.utc) if clock.local else datetime.now(timezone.utc)
                return t if tz is not None else t.astimezone().replace(tzinfo=None)

        monkeypatch.setattr(extract, "datetime", FakeDatetime)

    def set(self, text: str) -> None:
        self.local = datetime.fromisoformat(text)  # naive: this process's local time


@pytest.fixture
def clock(monkeypatch):
    return Clock(monkeypatch)




def add_mvt(env, rows, *, lookback="0 minutes", tod="heure", dim=False, precision="date", datecol="dat_mod",
            extra_cols=()):
    cols = [Col("id", "integer", nullable=False), Col("val", "varchar", 20), Col("dat_mod", "date"),
            Col("heure", "integer"), *extra_cols]
    demo_source.add_table(env.source, TableDef("mvt", cols, ("id",), rows))
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols, DateModifCol, DateModifPrecision, "
            "TimeOfDayCol, LookbackInterval, IsDimension) VALUES ('mvt', 'id', ?, ?, ?, ?, ?)",
            [datecol, precision, tod, lookback, dim])


def source_mvt(env) -> dict:
    con = sqlite3.connect(str(env.source))
    out = {r[0]: r[1] for r in con.execute('SELECT id, val FROM "mvt"')}
    con.close()
    return out


def ods_mvt(env) -> dict:
    return dict(env.sql("SELECT id, val FROM ods.mvt WHERE NOT _etl_is_deleted"
                        + (" AND _etl_is_current" if env.sql(
                            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = 'ods' AND "
                            "table_name = 'mvt' AND column_name = '_etl_is_current'")[0][0] else "")))


def load(env, mode: str, tag: str, day: str | None = None) -> None:
    kw = {"batch_date": date.fromisoformat(day), "run_id": f"run-{day}-{mode}"} if day else {}
    assert succeeded(build(LoadTable(table="mvt", mode=mode, batch_tag=tag, **kw)))


@pytest.mark.parametrize("moved_to", ["2026-03-05 00:00:00", None])
def test_a_window_moved_back_by_hand_is_read_even_when_the_batch_has_a_cached_extract(env, clock, moved_to):
    """OPERATIONS.md: rows stamped by a client whose clock is behind by more than the lookback are missed by the
    window, and `LastSuccessTs` moved back by hand (or cleared: "its next incremental reads in full") reads a
    window again. When the batch being rerun already has its extract cached (the night stopped after it), that
    extract, read under the old window, was staged as it was, and the validation moved LastSuccessTs past the
    window the operator asked for: the rows were never read, and no later window reached them."""
    from cbm_luigi.tasks import ExtractParquet
    add_mvt(env, [(1, "a", "2026-03-01", 3600), (2, "b", "2026-03-01", 3600)], lookback="1 day")
    clock.set("2026-03-10 02:00:00")
    load(env, "full", "", "2026-03-10")
    # a client whose clock is three days behind changes row 1 after the full (outside the 1-day lookback)
    on_source(env, "UPDATE mvt SET val = 'a2', dat_mod = '2026-03-07', heure = 50000 WHERE id = 1")
    clock.set("2026-03-11 02:00:00")  # the night's run extracts the table, then stops (warehouse held, killed)
    assert succeeded(build(ExtractParquet(table="mvt", mode="incremental", batch_date=date(2026, 3, 11),
                                               run_id="the-night")))
    # the operator, who found row 1 stale, moves the window back by hand and reruns the same command
    env.sql("UPDATE config.ETL_Tables SET LastSuccessTs = CAST(? AS TIMESTAMP) WHERE TableName = 'mvt'", [moved_to])
    clock.set("2026-03-11 09:00:00")
    load(env, "incremental", "", "2026-03-11")
    clock.set("2026-03-12 02:00:00")  # and the next nights do not reach it either
    load(env, "incremental", "", "2026-03-12")
    reads = env.sql("SELECT BatchId, Detail FROM etl.ETL_Log WHERE TableName = 'mvt' AND Step = 'extract' "
                    "ORDER BY LogId")
    assert ods_mvt(env) == source_mvt(env), f"row 1 never read; extracts: {reads}"


@pytest.mark.parametrize("stopped_after", [StageTable, MergeOds])
@pytest.mark.parametrize("moved_to", ["2026-03-05 00:00:00", None])
def test_a_window_moved_back_is_read_when_the_night_stopped_after_its_stage_or_merge(env, clock, stopped_after,
                                                                                     moved_to):
    """The same when the night got further (merge killed, validation failed): the stage and merge markers are
    complete, so Luigi did not ask the extract, and the narrow batch was merged and validated (found in review).
    Stage and merge are incomplete too when the window asked for now is wider than their batch's."""
    add_mvt(env, [(1, "a", "2026-03-01", 3600), (2, "b", "2026-03-01", 3600)], lookback="1 day")
    clock.set("2026-03-10 02:00:00")
    load(env, "full", "", "2026-03-10")
    on_source(env, "UPDATE mvt SET val = 'a2', dat_mod = '2026-03-07', heure = 50000 WHERE id = 1")
    clock.set("2026-03-11 02:00:00")  # the night's run gets through this step, then stops
    assert succeeded(build(stopped_after(table="mvt", mode="incremental", batch_date=date(2026, 3, 11),
                                         run_id="the-night")))
    env.sql("UPDATE config.ETL_Tables SET LastSuccessTs = CAST(? AS TIMESTAMP) WHERE TableName = 'mvt'", [moved_to])
    clock.set("2026-03-11 09:00:00")
    load(env, "incremental", "", "2026-03-11")
    reads = env.sql("SELECT BatchId, Detail FROM etl.ETL_Log WHERE TableName = 'mvt' AND Step = 'extract' "
                    "ORDER BY LogId")
    assert ods_mvt(env) == source_mvt(env), f"row 1 never read; extracts: {reads}"
    assert len(reads) == 3  # the full, the night's narrow read, the morning's read of the wider window
    clock.set("2026-03-12 02:00:00")
    load(env, "incremental", "", "2026-03-12")
    assert ods_mvt(env) == source_mvt(env)


def test_a_batch_rerun_the_same_day_with_the_window_unchanged_reuses_its_extract(env, clock):
    """The usual crash-and-rerun: nothing moved, so the cached extract and the stage are used as they are."""
    add_mvt(env, [(1, "a", "2026-03-01", 3600), (2, "b", "2026-03-01", 3600)], lookback="1 day")
    clock.set("2026-03-10 02:00:00")
    load(env, "full", "", "2026-03-10")
    clock.set("2026-03-11 02:00:00")
    assert succeeded(build(MergeOds(table="mvt", mode="incremental", batch_date=date(2026, 3, 11),
                                    run_id="the-night")))
    clock.set("2026-03-11 09:00:00")
    load(env, "incremental", "", "2026-03-11")
    steps = env.sql("SELECT Step FROM etl.ETL_Log WHERE TableName = 'mvt' AND BatchId = '2026-03-11' ORDER BY LogId")
    assert steps == [("extract",), ("stage",), ("merge",), ("validate",)]  # the rerun validated only

