"""The warehouse steps as plain functions (stage, merge, validate), testable without Luigi.

Each runs in one warehouse transaction and touches its marker inside it.
"""
from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq

from . import config_store
from .plan import TablePlan
from .runlog import StepRecord
from .targets import MarkerTarget
from .transform import SHAPED_TECH, TechnicalValues
from .warehouse.base import Session, Warehouse
from .warehouse.statements import (Column, MergeSpec, create_table, duplicate_keys, evolve, merge_counts,
                                   merge_statements, validation_counts)

log = logging.getLogger(__name__)


class DuplicateKeyError(RuntimeError):
    pass


class ValidationError(RuntimeError):
    pass


class StaleStageError(RuntimeError):
    pass


def stage_columns(plan: TablePlan, max_lengths: dict[str, int] | None = None) -> list[Column]:
    lengths = max_lengths or {}
    return [Column(n, t, nullable, lengths.get(n) or None) for n, t, nullable in plan.output_columns()]


def check_batch_file(plan: TablePlan, path: Path, batch_id: str) -> None:
    """The batch file must hold the columns the plan stages now: a config change since the extract (a column
    excluded or added, an array mode switched) would otherwise stage a stale shape."""
    have = pq.read_schema(path).names
    want = [n for n, _t, _ in plan.output_columns()] + SHAPED_TECH
    if sorted(have) != sorted(want):
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        raise StaleStageError(
            f"table {plan.table}: the extract of batch {batch_id} ({path}) does not have the columns the "
            f"configuration stages now (missing: {', '.join(missing) or '-'}; not configured: "
            f"{', '.join(extra) or '-'}); the configuration changed after the extract. Extract again: "
            f"`cbm-etl invalidate {plan.table} --batch {batch_id} --from extract`.")


def stage(wh: Warehouse, plan: TablePlan, batch_path: Path, tech: TechnicalValues, *, marker: MarkerTarget,
          run_id: str) -> StepRecord:
    """stg.<table> := the batch file plus the run's technical values; marker in the same transaction."""
    check_batch_file(plan, batch_path, tech.batch_id)
    with wh.session() as s, s.transaction():
        rows = wh.replace_stage(s, plan.destination, batch_path, stage_columns(plan), tech)
        marker.touch(s, run_id=run_id, rows=rows)
    return StepRecord("stage", rows=rows)


def _spec(plan: TablePlan, full: bool) -> MergeSpec:
    return MergeSpec("stg", "ods", plan.destination, plan.keys, [n for n, _t, _ in plan.output_columns()],
                     scd2=plan.is_dimension, full=full)


def _check_stage_batch(s: Session, wh: Warehouse, plan: TablePlan, batch_id: str) -> None:
    d = wh.dialect
    batches = [r[0] for r in s.query(f"SELECT DISTINCT _etl_batch_id FROM {d.table('stg', plan.destination)}")]
    if batches and batches != [batch_id]:
        raise StaleStageError(
            f"table {plan.table}: stg.{plan.destination} holds batch {batches[0]}, not {batch_id} (another batch "
            f"was staged since). Rerun this table from staging: `cbm-etl invalidate {plan.table} "
            f"--batch {batch_id} --from stage`.")


def _ods_columns(wh: Warehouse, s: Session, plan: TablePlan) -> dict[str, tuple[str, bool]]:
    return wh.table_columns(s, "ods", plan.destination)


def stage_lengths(s: Session, wh: Warehouse, plan: TablePlan) -> dict[str, int]:
    """Longest value of each string column in stg (sizes NVARCHAR(n) on SQL Server; DuckDB needs none)."""
    if not wh.needs_string_lengths:
        return {}
    d = wh.dialect
    names = [n for n, t, _ in plan.output_columns() if t.kind == "string"]
    if not names:
        return {}
    row = s.query("SELECT " + ", ".join(f"MAX({d.length_fn}({d.quote(n)}))" for n in names) +
                  f" FROM {d.table('stg', plan.destination)}")[0]
    return {n: int(v or 0) for n, v in zip(names, row)}


def merge(wh: Warehouse, plan: TablePlan, *, mode: str, batch_id: str, marker: MarkerTarget, run_id: str,
          checkpoint=None) -> StepRecord:
    """MERGE stg.<t> into ods.<t> on the key; full mode soft-deletes absent keys. One transaction."""
    d = wh.dialect
    spec = _spec(plan, full=(mode == "full"))
    now = datetime.now()
    record = StepRecord("merge")
    with wh.session() as s, s.transaction():
        _check_stage_batch(s, wh, plan, batch_id)
        dups = s.query(duplicate_keys(d, spec.stg(d), plan.keys))
        if dups:
            shown = "; ".join(", ".join(f"{k}={v!r}" for k, v in zip(plan.keys, r[:-1])) + f" ({r[-1]} rows)"
                              for r in dups)
            raise DuplicateKeyError(
                f"table {plan.table}: the batch has duplicate keys ({', '.join(plan.keys)}); first: {shown}. "
                f"Nothing was merged. Check PrimaryKeyCols in config.ETL_Tables (`cbm-etl discover` proposes "
                f"the unique index) or fix the rows in Progress.")
        wanted = stage_columns(plan, stage_lengths(s, wh, plan))
        existing = _ods_columns(wh, s, plan)
        if not existing:
            s.execute(create_table(d, "ods", plan.destination, wanted, ods=True, scd2=plan.is_dimension))
        else:
            stmts, changes = evolve(d, "ods", plan.destination, wanted, existing)
            for stmt in stmts:
                s.execute(stmt)
            for c in changes:
                log.warning("schema change: %s", c)
            record.detail = "; ".join(changes) or None
        wh.before_merge(s, len(spec.columns))
        inserted, updated, unchanged, deleted = s.query(merge_counts(d, spec))[0]
        if inserted or updated or deleted:  # else the MERGE would change nothing: skip its join of every column
            all_new = not (updated or unchanged or deleted)
            for sql, n in merge_statements(d, spec, all_new=all_new):
                s.execute(sql, [now] * n)
                if checkpoint:
                    checkpoint("merge")  # a kill here leaves a written, uncommitted merge
        else:
            record.detail = "; ".join(filter(None, [record.detail, "no change: MERGE skipped"]))
        marker.touch(s, run_id=run_id, rows=int(inserted) + int(updated))
    record.rows = int(inserted) + int(updated) + int(unchanged)
    record.inserted, record.updated, record.unchanged, record.deleted = map(int, (inserted, updated, unchanged,
                                                                               deleted))
    return record


def validate(wh: Warehouse, plan: TablePlan, *, mode: str, batch_id: str, marker: MarkerTarget, run_id: str,
             extract_started_at: datetime) -> StepRecord:
    """Check the merge against the batch, record the checks, advance LastSuccessTs with the marker."""
    d = wh.dialect
    spec = _spec(plan, full=(mode == "full"))
    sql, names = validation_counts(d, spec)
    with wh.session() as s:
        with s.transaction():
            _check_stage_batch(s, wh, plan, batch_id)
            got = dict(zip(names, (int(v) for v in s.query(sql)[0])))
            missing, dup = got["batch_keys_current_with_same_hash"], got["duplicate_current_keys"]
            live, stg_rows = got["ods_live_rows"], got["stg_rows"]
            checks = [("batch_keys_current_with_same_hash", missing == 0, 0, missing),
                      ("duplicate_current_keys", dup == 0, 0, dup)]
            if mode == "full":
                checks.append(("full_row_count", live == stg_rows, stg_rows, live))
            failed = [c for c in checks if not c[1]]
            s.executemany("INSERT INTO etl.ETL_Validation (RunId, BatchId, TableName, CheckName, Passed, Expected, "
                          "Actual) VALUES (?, ?, ?, ?, ?, ?, ?)",
                          [[run_id, batch_id, plan.table, name, passed, expected, actual]
                           for name, passed, expected, actual in checks])
            if not failed:
                config_store.advance_last_success(s, plan.table, extract_started_at)
                marker.touch(s, run_id=run_id, rows=stg_rows)
        if failed:
            raise ValidationError(
                f"table {plan.table}, batch {batch_id}: validation failed: " +
                "; ".join(f"{n} expected {e} got {a}" for n, _p, e, a in failed) +
                f". ods.{plan.destination} does not match the extract; see etl.ETL_Validation. LastSuccessTs was "
                "not advanced. Rerun the table in full mode; if it persists, check the key (PrimaryKeyCols).")
    return StepRecord("validate", rows=stg_rows, detail=f"ods live rows {live}")
