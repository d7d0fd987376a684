"""The warehouse steps as plain functions (stage, merge, validate), testable without Luigi.

Each runs in one warehouse transaction and touches its marker inside it.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import uuid
from datetime import date, datetime
from pathlib import Path


from . import config_store
from .extract import read_extract_meta
from .naming import array_element_names, shown_column
from .plan import ConfigError, TablePlan
from .runlog import StepRecord
from .settings import mask_secrets
from .targets import UNKNOWN_SHAPE, MarkerTarget, StageTarget, record_merged, record_validated, staged_batch
from .transform import SHAPED_TECH, TechnicalValues
from .warehouse.base import Session, Warehouse
from .warehouse.statements import (Column, MergeSpec, add_column, create_table, duplicate_keys, forget_hashes,
                                   evolve, key_problems, live_rows, merge_counts, merge_statements, null_keys,
                                   ods_null_keys, tech_columns, text_bytes, unread_columns, validation_counts)

log = logging.getLogger(__name__)


class DuplicateKeyError(RuntimeError):
    pass


class NullOdsKeyError(RuntimeError):
    """ods rows with a NULL key part (PrimaryKeyCols changed after they were loaded): ods's fault, not the batch's."""


class ValidationError(RuntimeError):
    pass


class StaleStageError(RuntimeError):
    """stg.<table> does not hold the batch this step is for (another run staged the table since)."""


class OutdatedBatchError(StaleStageError):
    """The batch was extracted before the newest one merged or validated: merging it would undo newer data."""


class RefusedBatchError(RuntimeError):
    """The batch's own rows were refused (a NULL or duplicate key, an empty full read): merging the same extract
    again could never succeed, so the rerun must read the source again (MergeOds forgets the batch's stage and
    extract)."""


class NullKeyError(RefusedBatchError):
    pass


class DuplicateBatchKeyError(DuplicateKeyError, RefusedBatchError):
    """Two rows of the batch share a key (not ods holding several rows for one: that is DuplicateKeyError)."""


class EmptyFullBatchError(RefusedBatchError):
    pass


class OdsLostError(RefusedBatchError):
    """ods.<table> lost the table or columns the loads before wrote (dropped by hand), and the batch read a window
    only: merged, it would rebuild the table with those rows alone, or leave the columns empty in every other row,
    and validate (found in review). MergeOds drops the extract and makes the table's recorded configuration
    unknown, so the same command reads it in full."""


class OdsKeyLostError(RuntimeError):
    """ods.<table> lost a key column an earlier load wrote (dropped by hand): only a rebuild helps."""


class RelationGoneError(RuntimeError):
    """stg.<table> (or ods.<table>) was dropped between a batch's steps: every rerun failed on the database's own
    error (found in review). The task forgets the batch's stage so the same command stages it again; `ods_gone`:
    and makes the table's recorded configuration unknown, so it is read in full and ods rebuilt."""

    def __init__(self, fact: str, then: str, *, ods_gone: bool = False):
        super().__init__(f"{fact} {then}")
        self.fact, self.ods_gone = fact, ods_gone


def stage_columns(plan: TablePlan, max_lengths: dict[str, int] | None = None) -> list[Column]:
    """The batch's columns, sized by `max_lengths` (stage_lengths) where measured: 0 when no row has a value,
    which sizes a new column by its declared width and widens no existing one."""
    lengths = max_lengths or {}
    return [Column(n, t, nullable, lengths.get(n)) for n, t, nullable in plan.output_columns()]


def check_batch_file(plan: TablePlan, path: Path, batch_id: str) -> str:
    """The batch file must have been made under the table's configuration now (TablePlan.extract_shape): a
    change since the extract (a column excluded or added, a type overridden, an array mode switched) would
    otherwise stage a stale shape, or hashes over other columns than those written. Returns that shape."""
    shape = read_extract_meta(path).get("shape")
    if shape == plan.extract_shape():
        return shape
    import pyarrow.parquet as pq  # a stale stage only (extract.read_extract_meta imports it where it reads)
    have = pq.read_schema(path).names
    want = [n for n, _t, _ in plan.output_columns()] + SHAPED_TECH
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    what = (f"missing: {', '.join(missing) or '-'}; not configured: {', '.join(extra) or '-'}" if missing or extra
            else "the same columns, but a type, an expression, an array mode, the filter or the modification "
                 "columns differ")
    raise StaleStageError(
        f"table {plan.table}: the extract of batch {batch_id} ({path}) was made under another configuration than "
        f"the table's now ({what}): the configuration changed after the extract. Nothing was staged. Run the "
        f"same command again: it reads the source again.")


def check_column_count(wh: Warehouse, plan: TablePlan) -> None:
    """Split EXTENT arrays can take a table past what the warehouse admits (SQL Server: 1,024 columns, and 8,060
    bytes of fixed-length data a row): say so before anything is written, with the way out."""
    d = wh.dialect
    tech = tech_columns(d, ods=True, scd2=plan.is_dimension)
    n = len(plan.output_columns()) + len(tech)
    too_many = bool(wh.max_columns and n > wh.max_columns)
    size = 0
    if d.max_row_bytes:  # fixed-length data, the NULL bitmap and 7 bytes of row overhead (SQL Server's minimum)
        bits = sum(d.fixed_bits(d.column_type(t)) for _n, t, _null in plan.output_columns())
        bits += sum(d.fixed_bits(t) for _n, t, _null in tech)
        size = -(-bits // 8) + -(-n // 8) + 7
    if too_many or (d.max_row_bytes and size > d.max_row_bytes):
        what = (f"{n} columns, more than the {wh.max_columns} the warehouse admits" if too_many
                else f"rows of at least {size:,} bytes of fixed-length data, more than the {d.max_row_bytes:,} "
                     f"the warehouse admits")
        raise ConfigError(f"table {plan.table}: ods.{plan.destination} would have {what}. Nothing was staged: "
                          f"{_narrower(plan)}, then rerun the table.")


def _narrower(plan: TablePlan) -> str:
    """How to make a table's rows narrower: keep its largest split arrays whole, else exclude columns."""
    arrays = sorted(((c.extent, c.name) for c in plan.columns if c.extent and c.array_mode == "split"),
                    reverse=True)[:5]
    return (f"keep the largest arrays whole (ArrayMode = 'single' in config.ETL_Columns: "
            f"{', '.join(f'{name} ({extent})' for extent, name in arrays)})" if arrays else
            "exclude columns (IsExcluded = 1 in config.ETL_Columns)")


def _settle_resources(wh: Warehouse, plan: TablePlan) -> None:
    """After a failed step, the warehouse's configured resources back: a MERGE's raise outlives its transaction's
    rollback and was left to the next tables of the night (found in review). Failing to is said, not raised: the
    step's own error is the one to report. A warehouse that sets no memory limit (SQL Server) is left alone: a
    session opened for nothing ran the connection retries again when SQL Server was what failed, then said the
    memory limit could not be put back (found in review)."""
    if not wh.sets_memory:
        return
    try:
        with wh.session() as s:
            wh.settle_resources(s)
    except Exception as exc:  # noqa: BLE001 — the step's error follows; this one is logged
        log.warning("table %s: could not put the warehouse's memory limit and threads back after the failure: %s",
                    plan.table, exc)


@contextlib.contextmanager
def _limits_named(wh: Warehouse, plan: TablePlan, step: str):
    """A warehouse limit hit while a step writes, said with the table and the way out (the step's transaction
    has rolled back: nothing was written): a row wider than the warehouse admits (SQL Server), or the memory it
    is given spent (DuckDB: a MERGE carries every column of stg and ods; long texts)."""
    try:
        yield
    except Exception as exc:
        text = str(exc)
        in_force = wh.memory_in_force() if wh.out_of_memory(text) else None  # before the cap is put back
        _settle_resources(wh, plan)
        if wh.row_too_wide(text):
            raise ConfigError(f"table {plan.table}: a row is too wide for SQL Server (its in-row part passes 8,060 "
                              f"bytes). Nothing was {step}d: {_narrower(plan)}, then rerun the table. SQL Server "
                              f"said: {mask_secrets(text)[:500]}") from None
        if wh.out_of_memory(text):
            configured = wh.settings.duckdb_memory_limit
            in_force, todo = in_force or (configured, "Raise CBM_DUCKDB_MEMORY_LIMIT")
            raise MemoryError(f"table {plan.table}: the DuckDB warehouse ran out of memory in the {step}, under a "
                              f"limit of {in_force} (CBM_DUCKDB_MEMORY_LIMIT={configured}; a merge raises it to "
                              f"what it estimates it needs, a validation runs under 3/4 of it). Nothing was "
                              f"{step}d. {todo}, and rerun the table. DuckDB said: {text[:300]}") from None
        raise


@contextlib.contextmanager
def _relations_named(wh: Warehouse, plan: TablePlan, step: str, batch_id: str):
    """A step that failed because stg.<table> or ods.<table> is gone (dropped by hand between the batch's steps)
    says so and what the rerun does; the catalog is asked only once the step failed on a missing relation (a
    look costs milliseconds a table), after its transaction rolled back. ods gone matters to validation only (a
    merge creates it)."""
    try:
        yield
    except (RefusedBatchError, StaleStageError, RelationGoneError, ValidationError):
        raise
    except Exception as exc:
        if not wh.missing_relation(str(exc)):  # any other failure (an outage, say) is not worth a reconnection
            raise
        try:
            with wh.session() as s:
                stg_gone = not wh.table_columns(s, "stg", plan.destination)
                ods_gone = step == "validate" and not wh.table_columns(s, "ods", plan.destination)
        except Exception:  # noqa: BLE001 — the step's own error stands when the catalog cannot be read
            raise exc from None
        if ods_gone:
            raise RelationGoneError(
                f"table {plan.table}: ods.{plan.destination} no longer exists (dropped since batch {batch_id} was "
                f"merged?): nothing was validated.",
                f"Run the same command again: it reads the table in full and rebuilds ods.{plan.destination}"
                f"{_NO_HISTORY.format(t=plan.destination) if plan.is_dimension else ''}", ods_gone=True) from exc
        if stg_gone:
            raise RelationGoneError(
                f"table {plan.table}: stg.{plan.destination} no longer exists (dropped since batch {batch_id} was "
                f"staged?): nothing was {step}d.",
                f"Run the same command again: it stages batch {batch_id} again first") from exc
        raise


def rebuild_command(table: str) -> str:
    """The full load that reads `table` again whatever its markers say: a batch of its own, new each time it is
    said (today's untagged full batch, or an earlier rebuild, may be loaded already, and a loaded batch reads
    nothing: found in review)."""
    return f"luigi --module cbm_luigi LoadTable --table {table} --mode full --batch-tag rebuild-{uuid.uuid4().hex[:8]}"


# after each `luigi` command a message advises: copied as given where no luigid runs (README's commands all have
# --local-scheduler), it waited a minute for the central scheduler and ended in an RPCError (found in review)
NO_LUIGID = " (add --local-scheduler when no luigid runs)"


_NO_HISTORY = " (its history is not in Progress: restore ods.{t} from a backup first to keep it)"
_NO_OLD_VALUES = " (the closed versions keep them empty: their values are not in Progress, only in a backup)"


def stage(wh: Warehouse, plan: TablePlan, batch_path: Path, tech: TechnicalValues, *, marker: StageTarget,
          run_id: str, extract_started_at: datetime | None = None, checkpoint=None) -> StepRecord:
    """stg.<table> := the batch file plus the run's technical values; the marker and etl.ETL_TableState (what
    stg holds now) in the same transaction."""
    shape = check_batch_file(plan, batch_path, tech.batch_id)
    check_column_count(wh, plan)
    with _limits_named(wh, plan, "stage"), wh.session() as s, s.transaction():
        marker.forget_staged(s)
        rows = wh.replace_stage(s, plan.destination, batch_path, stage_columns(plan), tech,
                                keys=dict(zip(plan.keys, plan.key_names)))
        if checkpoint:
            checkpoint("stage")  # a kill here leaves stg replaced but uncommitted, its record not yet written
        # the file's own shape, not the configuration asked again now: an edit during a long stage must leave
        # the stage stale (found in review)
        marker.touch(s, run_id=run_id, rows=rows, extract_started_at=extract_started_at, shape=shape)
    return StepRecord("stage", rows=rows)


def _spec(plan: TablePlan, full: bool) -> MergeSpec:
    return MergeSpec("stg", "ods", plan.destination, plan.keys, [n for n, _t, _ in plan.output_columns()],
                     scd2=plan.is_dimension, full=full)


def _check_staged(s: Session, d, plan: TablePlan, marker: MarkerTarget, step: str) -> dict:
    """stg.<table> must hold this step's batch and mode (etl.ETL_TableState, written with the stage), and keeps
    it until the step commits: the state row stays locked (dialect `d`), so another run's stage waits."""
    st = staged_batch(s, plan.table, d)
    if st is None or st["BatchId"] != marker.batch_id or st["Mode"] != marker.mode:
        held = f"batch {st['BatchId']} ({st['Mode']})" if st else "no staged batch"
        raise StaleStageError(
            f"table {plan.table}: stg.{plan.destination} holds {held}, not batch {marker.batch_id} "
            f"({marker.mode}): another run staged the table since. Nothing was {step}d. Run the same command "
            f"again: it stages (and merges) batch {marker.batch_id} again first.")
    if st.get("ExtractShape") != plan.extract_shape():
        raise StaleStageError(
            f"table {plan.table}: stg.{plan.destination} holds batch {marker.batch_id} staged under another "
            f"configuration than the table's now (a column excluded or added, a type or expression changed since "
            f"in config.ETL_Columns or config.ETL_Tables). Nothing was {step}d. Run the same command again: it "
            f"extracts and stages batch {marker.batch_id} again under the configuration now.")
    return st


def _check_not_outdated(s: Session, plan: TablePlan, marker: MarkerTarget, staged: dict) -> None:
    """Refuse a batch extracted before the newest one merged or validated for the table (a rerun of an older
    batch would put older rows over newer ones, and in full mode soft-delete rows created since)."""
    started = staged.get("ExtractStartedAt")
    last = config_store.newer_load_than(s, plan.table, started)
    if last is not None:
        def ms(ts: datetime) -> str:
            return ts.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]

        raise OutdatedBatchError(
            f"table {plan.table}: batch {marker.batch_id} was extracted at {ms(started)}, before the newest load "
            f"of the table (extracted at {ms(last)}): merging it would put older rows over newer ones. Nothing "
            f"was merged. Extract it again: `cbm-etl invalidate {plan.table} --batch {marker.batch_id} --from "
            f"extract`, then run the same command.")


def _shown_keys(plan: TablePlan, rows: list[tuple], counted: bool = False) -> str:
    """Rows of key values then a count (null_keys, duplicate_keys), as messages show them: by Progress names."""
    return "; ".join(", ".join(f"{k}={v!r}" for k, v in zip(plan.key_names, r[:-1])) +
                     (f" ({r[-1]} rows)" if counted else "") for r in rows)


def _check_keys(s: Session, wh: Warehouse, plan: TablePlan, spec: MergeSpec) -> None:
    """Every key complete (no NULL part) and unique in the batch, or nothing is merged."""
    d = wh.dialect
    with_null, duplicated = s.query(key_problems(d, spec.stg(d), plan.keys))[0]
    nulls = s.query(null_keys(d, spec.stg(d), plan.keys)) if with_null else []
    if nulls:
        raise NullKeyError(
            f"table {plan.table}: {nulls[0][-1]} row(s) of the batch have an unknown (NULL) value in the key "
            f"({', '.join(plan.key_names)}); first: {_shown_keys(plan, nulls)}. Nothing was merged (such a row "
            f"could never be matched again). Progress unique indexes admit `?` in non-mandatory fields: set "
            f"PrimaryKeyCols in config.ETL_Tables to columns that are always known (`cbm-etl discover` lists the "
            f"unique indexes), or fix the rows in Progress.")
    dups = s.query(duplicate_keys(d, spec.stg(d), plan.keys)) if duplicated else []
    if dups:
        raise DuplicateBatchKeyError(
            f"table {plan.table}: the batch has duplicate keys ({', '.join(plan.key_names)}); first: "
            f"{_shown_keys(plan, dups, counted=True)}. "
            f"Nothing was merged. Check PrimaryKeyCols in config.ETL_Tables (`cbm-etl discover` proposes "
            f"the unique index) or fix the rows in Progress. If the key is right, a row updated in Progress "
            f"while it was read can come twice (READ UNCOMMITTED reads follow a row that moves in the index).")


def _refuse_empty_read(s: Session, wh: Warehouse, plan: TablePlan, spec: MergeSpec, batch_id: str) -> None:
    """A read of every row that found none, over a table with live rows: more likely the wrong database, a
    FilterClause, or the ERP rebuilding the table than a table emptied. A full merge would soft-delete them all;
    a read made full by a configuration change (merged as incremental) would record the new configuration as
    loaded while no row got it (found in review)."""
    live = int(s.scalar(live_rows(wh.dialect, spec)) or 0)
    if not live:
        return
    what = (f"the full batch {batch_id} holds no rows, and ods.{plan.destination} has {live} live rows that a full "
            f"merge would soft-delete" if spec.full else
            f"batch {batch_id} read every row (the table's configuration changed since its last load) and holds "
            f"none, and ods.{plan.destination} has {live} live rows: merged, none would get the new configuration")
    raise EmptyFullBatchError(
        f"table {plan.table}: {what}. "
        f"Nothing was merged. Check the source (the DSN's database, FilterClause in config.ETL_Tables). If "
        f"PUB.{plan.table} really is empty now, rerun with CBM_ALLOW_EMPTY_FULL={plan.table} in the environment "
        f"(the rerun reads it again: the allowance never applies to this read).")


def _refuse_ods_duplicates(s: Session, wh: Warehouse, plan: TablePlan, spec: MergeSpec) -> None:
    """ods holds several live rows (type 1: rows, soft-deleted ones included; SCD2: current versions) for keys
    of the batch: one batch row would be written over all of them. It happens when PrimaryKeyCols was narrowed
    after ods was built (two rows of the old key are one key now)."""
    d = wh.dialect
    dups = s.query(duplicate_keys(d, spec.ods(d), plan.keys, "" if not spec.scd2 else
                                  d.is_true("_etl_is_current")))
    first = _shown_keys(plan, dups, counted=True)
    raise DuplicateKeyError(
        f"table {plan.table}: ods.{plan.destination} holds several {'current versions' if spec.scd2 else 'rows'} "
        f"for one key ({', '.join(plan.key_names)}){'; first: ' + first if first else ''}. Nothing was merged: the "
        f"MERGE would write one batch row over all of them. Was PrimaryKeyCols in config.ETL_Tables changed "
        f"since ods was built? Set it back, or rebuild the table under the new key: keep a copy of "
        f"ods.{plan.destination} if its history matters, drop it, and run `{rebuild_command(plan.table)}`{NO_LUIGID}.")


def _refuse_ods_null_keys(s: Session, wh: Warehouse, plan: TablePlan, spec: MergeSpec,
                          existing: dict[str, tuple[str, bool]], wanted: list[Column], keyed: bool) -> None:
    """ods rows the MERGE matches by key with a NULL key part: a column made part of PrimaryKeyCols after they
    were loaded (a field added to the ERP's unique index, a key field renamed). `=` never matches NULL, so the
    MERGE would insert every batch row beside them, each row live twice (found in review). Only key columns ods
    lets hold NULL are looked at (one added since, or optional at the source), and not when the warehouse knew,
    before this merge's DDL, that ods was loaded under this key all along (`keyed`, Warehouse.keyed_as): the check
    reads the whole table."""
    checked = _nullable_keys(plan, existing)
    if not checked or keyed:
        return
    d = wh.dialect
    rows = s.query(ods_null_keys(d, spec, checked))
    if not rows:
        return
    lower = {n.lower() for n in existing}
    empty = [k for i, k in enumerate(plan.keys) if k in checked and any(r[i] is None for r in rows)] or checked
    shown = ", ".join(shown_column(plan.by_sql_name(k).name, k) for k in empty)
    ods = d.table("ods", plan.destination)
    # the merge's transaction is rolled back, so a column it added is not there: the statement that adds it
    add = [add_column(d, "ods", plan.destination, c) for c in wanted for k in empty
           if c.name.lower() == k.lower() and k.lower() not in lower]
    fill = [f"UPDATE {ods} SET {d.quote(k)} = <value> WHERE {d.quote(k)} IS NULL" for k in empty]
    # one at a time: SQL Server compiles a batch whole, and an UPDATE of a column the batch adds fails (Msg 207)
    raise NullOdsKeyError(
        f"table {plan.table}: ods.{plan.destination} has {rows[0][-1]} "
        f"{'current versions' if spec.scd2 else 'rows'} whose key ({', '.join(plan.key_names)}) has an unknown "
        f"(NULL) part, in {shown}; first: {_shown_keys(plan, rows)}. They were loaded before {shown} became part "
        f"of PrimaryKeyCols (a field added to the unique index, or a key field renamed at the source), and the "
        f"MERGE cannot match them: it would load every batch row beside them. Nothing was merged. Give every row "
        f"(history included) what Progress holds for it, one statement at a time: "
        f"{', then '.join(f'`{x}`' for x in add + fill)} (<value>: a renamed field's old column, a new field's "
        f"initial value); then rerun. Or rebuild the table under the new key: keep "
        f"a copy of ods.{plan.destination} if its history matters, drop it, and run "
        f"`{rebuild_command(plan.table)}`{NO_LUIGID}.")


def _lost_from_ods(plan: TablePlan, existing: dict, wanted: list[Column]) -> tuple[str | None, list[str]]:
    """What ods.<table> no longer holds of what the loads before it wrote (dropped by hand): said, and the lost
    columns still loaded (None, [] when nothing is lost). Asked only while the configuration is the one the last
    merge wrote under (or unknown): after a change, a DestinationTable among others, ods may rightly lack them,
    and the read is in full anyway (found in review: a new DestinationTable was said as a table dropped)."""
    if plan.merged_shape not in (plan.extract_shape(), UNKNOWN_SHAPE):
        return None, []
    if not existing:
        if plan.last_success_ts is None:
            return None, []
        return f"ods.{plan.destination} does not exist, though the table was loaded before", []
    have, now = {n.lower() for n in existing}, {c.name.lower() for c in wanted}
    lost = [n for n in plan.merged_columns or [] if n.lower() not in have and n.lower() in now]
    if not lost:
        return None, []
    return (f"ods.{plan.destination} no longer has column(s) {', '.join(lost)}, which the table's last load "
            f"wrote"), lost


def _nullable_keys(plan: TablePlan, existing: dict[str, tuple[str, bool]]) -> list[str]:
    """The key columns an existing ods table lets hold NULL, or does not have yet (added now, NULL in every row)."""
    if not existing:
        return []
    nullable = {n.lower(): null for n, (_t, null) in existing.items()}
    return [k for k in plan.keys if nullable.get(k.lower(), True)]


def _ods_columns(wh: Warehouse, s: Session, plan: TablePlan) -> dict[str, tuple[str, bool]]:
    return wh.table_columns(s, "ods", plan.destination)


def _check_history_kind(plan: TablePlan, existing: dict[str, tuple[str, bool]]) -> None:
    """ods.<t> must be of the kind the plan merges (SCD2 history or type 1): IsDimension switched after ods was
    built failed inside the MERGE (a missing column), or as a duplicate key for history that became type 1."""
    if not existing:
        return
    built_scd2 = "_etl_is_current" in existing
    if built_scd2 == plan.is_dimension:
        return
    was, now = ("an SCD2 dimension (history)", "type 1") if built_scd2 else ("type 1", "an SCD2 dimension")
    raise ConfigError(
        f"table {plan.table}: ods.{plan.destination} was built as {was}, and config.ETL_Tables now says "
        f"IsDimension = {int(plan.is_dimension)} ({now}). Nothing was merged. Set IsDimension back to "
        f"{int(built_scd2)}; or, to change the kind, keep a copy of ods.{plan.destination} (its history or "
        f"soft deletes), drop it and run `{rebuild_command(plan.table)}`{NO_LUIGID}.")


def stage_lengths(s: Session, wh: Warehouse, plan: TablePlan) -> dict[str, int]:
    """Longest value of each string and binary column in stg (sizes NVARCHAR(n) / VARBINARY(n) on SQL Server,
    where a value longer than the ods column fails the MERGE; DuckDB needs none)."""
    if not wh.needs_string_lengths:
        return {}
    d = wh.dialect
    cols = [(n, d.length_fn if t.kind == "string" else d.binary_length_fn)
            for n, t, _ in plan.output_columns() if t.kind in ("string", "binary")]
    if not cols:
        return {}
    row = s.query("SELECT " + ", ".join(f"MAX({fn}({d.quote(n)}))" for n, fn in cols) +
                  f" FROM {d.table('stg', plan.destination)}")[0]
    return {n: int(v or 0) for (n, _fn), v in zip(cols, row)}


LONG_VALUE_WIDTH = 1000  # characters (bytes for binary): a column declared wider, or unbounded, may hold long values


def _long_value_columns(plan: TablePlan) -> list[tuple[str, bool]]:
    """The text and binary columns that may hold long values (CLOB, BLOB, LVARCHAR, or declared wider than
    LONG_VALUE_WIDTH; an EXTENT array kept whole by its elements joined), as (SQL name, is binary): the bytes of
    their values in the rows a merge writes are measured (statements.text_bytes) to size its memory; narrow ones
    are covered by the estimate a row. An array kept whole was judged by its element's width (100 x VARCHAR(1000)
    was not long: found in review)."""
    def width(c, t):
        return (t.width + 1) * c.extent if t.width and c.extent and not c.is_split_array else t.width
    return [(n, t.kind == "binary") for c in plan.columns for n, t, _ in c.output_columns()
            if t.kind in ("string", "binary") and (not t.width or width(c, t) > LONG_VALUE_WIDTH)]


def _long_value_bytes(s: Session, wh: Warehouse, plan: TablePlan, spec: MergeSpec, all_new: bool,
                      written: int, updated: int) -> tuple[int, int]:
    """The bytes of the long values (_long_value_columns) a merge writes, and (type 1) of those it overwrites in
    ods, which DuckDB also holds until it commits (found in review: a weekly full that shortened 800 CLOBs of 100
    KB ran out of memory under 64MB); (0, 0) for a warehouse that does not size its memory by them. Read under the
    warehouse's measuring limit: DuckDB reads 2,048 long values at once (summing 800 CLOBs of 100 KB in ods ran
    out of memory under 64MB). The batch's total first (stg's columns alone): all new, it is the answer; else it
    bounds the rows written, and only when that bound would raise the limit are the changed rows found (a join of
    keys and hashes: 175 ms on 1 M rows whose CLOB was mostly NULL, found in review)."""
    long = _long_value_columns(plan) if wh.sets_memory else []
    if not long:
        return 0, 0

    def measured(**kw) -> int:
        return sum(int(v or 0) for v in s.query(text_bytes(wh.dialect, spec, long, **kw))[0])
    with wh.measuring(s):
        batch = measured(all_new=True)
        if all_new:
            return batch, 0
        overwritten = measured(all_new=False, replaced=True) if updated and not spec.scd2 else 0  # SCD2 closes
        if not wh.text_counts(batch, rows=written, written=written, replaced=overwritten):
            return batch, overwritten
        return measured(all_new=False), overwritten


def _refresh_compared(plan: TablePlan, wanted: list[Column], existing: dict) -> list[Column]:
    """The columns an SCD2 refresh compares after a configuration change: those the last merge wrote (a column
    ods has but did not load then, excluded or new, holds no value to compare), else those ods had before this
    merge; and an array whose ArrayMode switched since, in its new form: the old form cannot be compared with
    it, and a real change of the array must open its version, not be absorbed in place (found in review). So a
    switch versions each member whose array holds a value."""
    before = {n.lower() for n in (plan.merged_columns or existing)} & {n.lower() for n in existing}
    names = set(before)
    for c in plan.columns:
        if not c.extent:
            continue
        now = {n.lower() for n, _t, _ in c.output_columns()}
        other = ({c.sql_name.lower()} if c.array_mode == "split" else
                 {n.lower() for n in array_element_names(c.sql_name, c.extent)})
        if not now & before and other & before:
            names |= now
    return [col for col in wanted if col.name.lower() in names]


def merge(wh: Warehouse, plan: TablePlan, *, mode: str, batch_id: str, marker: MarkerTarget, run_id: str,
          checkpoint=None, allow_empty_full: bool = False, read_all: bool = False) -> StepRecord:
    """MERGE stg.<t> into ods.<t> on the key; full mode soft-deletes absent keys. One transaction.

    `mode` is the batch's effective mode (a first incremental is a full extract); `marker` carries the task's
    own batch and mode, which stg must hold. `read_all`: the extract read every row (no window; so does every full
    batch): empty, it is refused over a table with live rows unless `allow_empty_full`."""
    d = wh.dialect
    spec = _spec(plan, full=(mode == "full"))
    now = datetime.now()
    record = StepRecord("merge")
    with _limits_named(wh, plan, "merge"), _relations_named(wh, plan, "merge", batch_id), wh.session() as s, \
            s.transaction():
        wh.settle_resources(s)
        staged = _check_staged(s, d, plan, marker, "merge")
        _check_not_outdated(s, plan, marker, staged)
        _check_keys(s, wh, plan, spec)
        wanted = stage_columns(plan, stage_lengths(s, wh, plan))
        existing = _ods_columns(wh, s, plan)
        _check_history_kind(plan, existing)
        lost_what, lost = _lost_from_ods(plan, existing, wanted)
        keys_lost = [k for k in plan.keys if k.lower() in {n.lower() for n in lost}]
        if keys_lost:  # its rows can no longer be told apart: no read refills a key (found in review)
            raise OdsKeyLostError(
                f"table {plan.table}: ods.{plan.destination} no longer has its key column(s) "
                f"{', '.join(shown_column(plan.by_sql_name(k).name, k) for k in keys_lost)} "
                f"(dropped by hand?), which the table's last load wrote: its rows can no longer be matched with "
                f"Progress's, and no read can fill a key back. Nothing was merged. Rebuild the table: keep a copy "
                f"of ods.{plan.destination} if you need it{' (its history is not in Progress)' * plan.is_dimension}, "
                f"drop it, then run `{rebuild_command(plan.table)}`{NO_LUIGID}.")
        if lost_what and not (read_all or spec.full):
            raise OdsLostError(
                f"table {plan.table}: {lost_what} (dropped by hand?). This batch read only the rows changed in its "
                f"window: merged, it would "
                f"{'leave those columns empty in every other row' if lost else 'rebuild the table with them alone'}"
                f", and validate. Nothing was merged; a read in full "
                f"{'fills them in every current row' if lost else 'rebuilds it'}"
                f"{((_NO_OLD_VALUES if lost else _NO_HISTORY).format(t=plan.destination)) * plan.is_dimension}.")
        if not existing:
            stmts, changes = [create_table(d, "ods", plan.destination, wanted, ods=True, scd2=plan.is_dimension)], []
        else:
            stmts, changes = evolve(d, "ods", plan.destination, wanted, existing,
                                    names={q: shown_column(n, q) for q, n in plan.source_names().items()},
                                    overridden=frozenset(n for c in plan.columns if c.override
                                                         for n, _t, _n in c.output_columns()))
        # asked before the DDL, which may remake the key index
        keyed = bool(_nullable_keys(plan, existing)) and wh.keyed_as(s, plan.destination, plan.keys)
        before, after = wh.key_index_ddl(s, plan.destination, plan.keys, stmts)
        for stmt in before + stmts:
            s.execute(stmt)
        for stmt in after(_ods_columns(wh, s, plan)) if after else []:
            s.execute(stmt)
        _refuse_ods_null_keys(s, wh, plan, spec, existing, wanted, keyed)
        if lost_what:  # a full read: said (a schema change below), each current row rewritten to fill the columns
            changes.append(f"{lost_what}: {'every current row rewritten' if lost else 'rebuilt'} from this full read")
            if lost:
                s.execute(forget_hashes(d, spec), [""])
        for c in changes:
            log.warning("schema change: %s", c)
        unread = unread_columns(existing, wanted)
        if unread:
            kept = ("new versions get NULL, older ones keep their values" if plan.is_dimension else
                    "rows keep the values loaded before, new rows get NULL")
            note = (f"ods.{plan.destination} columns no longer loaded (excluded, gone from the source, or an array "
                    f"now kept whole): {', '.join(unread)}; they are no longer written ({kept}). Drop them from ods "
                    f"if they are not wanted")
            log.warning("table %s: %s", plan.table, note)
            changes.append(note)
        record.detail = "; ".join(changes) or None
        batch_rows = staged.get("Rows")  # as the stage counted them, in the transaction that replaced stg
        if batch_rows is None:  # a stage that recorded no count
            batch_rows = s.scalar(f"SELECT {d.count}(*) FROM {spec.stg(d)}")
        if not existing:  # ods made just now: every row of the batch (its keys unique, checked) is new (the wide
            inserted, updated, unchanged, deleted = batch_rows, 0, 0, 0  # first load's count took 30 ms)
        else:
            inserted, updated, unchanged, deleted = s.query(merge_counts(d, spec))[0]
        if inserted + updated + unchanged != batch_rows:
            _refuse_ods_duplicates(s, wh, plan, spec)
        if not batch_rows and not allow_empty_full and (read_all or spec.full):
            _refuse_empty_read(s, wh, plan, spec, batch_id)
        if inserted or updated or deleted:  # else the MERGE would change nothing: skip its join of every column
            all_new = not (updated or unchanged or deleted)
            # only the MERGE carries every column (the counts join keys and hashes): raising DuckDB's memory
            # limit cost 15 ms, which a batch with no change does not pay. The MERGE's source (SCD2: the close's
            # and the insert's) is the rows it writes (statements._changed_rows)
            carried = int(inserted) + int(updated)
            text, overwritten = _long_value_bytes(s, wh, plan, spec, all_new, carried, int(updated))
            wh.before_merge(s, len(spec.columns), rows=0 if all_new else carried, written=carried, text_bytes=text,
                            replaced_bytes=overwritten, new_table=not existing)
            refresh = None
            changed = "columns ods lost refilled" if lost else "configuration changed since the last load"
            if existing and (lost or plan.merged_shape not in (None, plan.extract_shape())):
                refresh = _refresh_compared(plan, wanted, existing)
            whole = frozenset(c.sql_name.lower() for c in plan.columns if c.extent and c.array_mode != "split")
            for i, (sql, n) in enumerate(merge_statements(d, spec, all_new=all_new, refresh=refresh,
                                                          whole_arrays=whole)):
                s.execute(sql, [now] * n)
                if checkpoint:
                    checkpoint("merge")  # a kill here leaves a written, uncommitted merge
                if refresh is not None and spec.scd2 and i == 0:  # how many the refresh took, as the log says
                    versioned = int(s.query(merge_counts(d, spec))[0][1])
                    changed += (f": {int(updated) - versioned} current versions refreshed in place (their values "
                                f"had not changed), {versioned} versioned")
            if refresh is not None:
                record.detail = "; ".join(filter(None, [record.detail, changed]))
        else:
            record.detail = "; ".join(filter(None, [record.detail, "no change: MERGE skipped"]))
        record_merged(s, plan.table, staged.get("ExtractStartedAt"), shape=staged["ExtractShape"],
                      columns=[n for n, _t, _ in plan.output_columns()])
        marker.touch(s, run_id=run_id, rows=int(inserted) + int(updated))
    record.rows = int(inserted) + int(updated) + int(unchanged)
    record.inserted, record.updated, record.unchanged, record.deleted = map(int, (inserted, updated, unchanged,
                                                                               deleted))
    return record


def _unused_tag(s: Session, table: str, day: str, stem: str) -> str:
    """`<stem>1`, `<stem>2`, ...: the first tag with no step of the table done in that day's batch (a fixed
    `reload1` advised after a second failed validation the same day named a batch already loaded: the command
    read nothing and exited 0, found in review)."""
    used = {r[0] for r in s.query("SELECT DISTINCT BatchId FROM etl.ETL_Markers WHERE TableName = ? AND BatchId "
                                  "LIKE ?", [table, f"{day}-{stem}%"])}
    return next(f"{stem}{n}" for n in itertools.count(1) if f"{day}-{stem}{n}" not in used)


def validate(wh: Warehouse, plan: TablePlan, *, mode: str, batch_id: str, marker: MarkerTarget, run_id: str,
             extract_started_at: datetime, extract_started_utc: datetime | None = None) -> StepRecord:
    """Check the merge against the batch, record the checks, advance LastSuccessTs with the marker."""
    d = wh.dialect
    spec = _spec(plan, full=(mode == "full"))
    sql, names = validation_counts(d, spec)
    with _relations_named(wh, plan, "validate", batch_id), wh.session() as s:
        # the limit of a validation that runs out of memory is said before validation_memory puts the cap back
        with wh.validation_memory(s), _limits_named(wh, plan, "validate"), s.transaction():
            _check_staged(s, d, plan, marker, "validate")
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
                config_store.advance_last_success(s, plan.table, extract_started_at, extract_started_utc,
                                                  warehouse=wh.describe())
                record_validated(s, plan.table, started_at=extract_started_at, started_utc=extract_started_utc)
                marker.touch(s, run_id=run_id, rows=stg_rows)
            else:
                # the advised command has no --batch-date: today's batch (a night rerun with --batch-date is
                # another day's: its unused tag could be today's used one, found in review)
                tag = _unused_tag(s, plan.table, date.today().isoformat(), "reload")
        if failed:
            raise ValidationError(
                f"table {plan.table}, batch {batch_id}: validation failed: " +
                "; ".join(f"{n} expected {e} got {a}" for n, _p, e, a in failed) +
                f". ods.{plan.destination} does not match the extract; see etl.ETL_Validation. LastSuccessTs was "
                f"not advanced. Reload the table in full as a new batch (the same command would validate this one "
                f"again): `luigi --module cbm_luigi LoadTable --table {plan.table} --mode full --batch-tag {tag}`"
                f"{NO_LUIGID}; "
                f"if it persists, check the key (PrimaryKeyCols).")
    return StepRecord("validate", rows=stg_rows, detail=f"ods live rows {live}")
