"""Extract: one SELECT streamed in record batches into a snappy parquet file, written atomically.

Memory is bounded by the batch size: each batch is conformed to the catalog schema, shaped and hashed in
DuckDB (transform.py) and written as it comes, while the next one is fetched. The file's key-value metadata
records its format, when the extract started and which window it read; ValidateTable advances LastSuccessTs
to that start time.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone, tzinfo
from pathlib import Path

import pyarrow as pa

from .ahead import import_ahead
from .plan import TablePlan
from .types import UnsupportedTypeError, map_openedge_type
from .naming import shown_column
from .source.errors import InvalidTextError, SourceError, SourceValueError, translate
from .source import catalog, readers
from .source.readers import Reader
from .transform import open_engine_early, shape_batches

log = logging.getLogger(__name__)
# conform.py (with pyarrow.compute and numpy, 40-50 ms to import) is imported where it is used, not with this
# module: each extract imports it ahead on a thread, while the source starts the statement and DuckDB plans
CONFORM = "cbm_luigi.source.conform"
META_KEY = "cbm_luigi.extract"
# 5: the window's start (`since`, None: the read had no window) recorded: a file without it could be reused after
# the window was widened, or merged empty as an incremental (found in review);
# 4: an unknown (NULL) logical contributes nothing to the hashdiff (it hashed as false);
# 3: kept-whole arrays in Progress's own form, DECIMAL(s,s) hashed with its leading zero; 2: shaped and hashed
# while extracting; 1: the source columns as read. A cached file of another format is extracted again.
FORMAT = 5
# aim for record batches of about this size whatever the width (measured on 40,000 x 350: 8 MB batches keep the
# fetch and the hashing in step and use 200 MB less than 32 MB ones)
BATCH_BYTES = readers.BATCH_BYTES
PROGRESS_EVERY_S = 2.0  # a status message is an RPC to the central scheduler: not one per batch


def estimated_row_bytes(plan: TablePlan) -> int:
    """An estimate of one row in the driver's buffers: strings at their declared width (UTF-8, 2 bytes a
    character on average; 128 characters when unbounded; an EXTENT array is read whole, its width an element's
    or the whole array's, so counted as a whole array of elements of that width), decimals as text, the rest at
    their width. The readers also bound a batch by its real bytes (BATCH_BYTES)."""
    total = 0
    for c in plan.columns:
        t = c.extract_type()
        if pa.types.is_string(t) or pa.types.is_binary(t):
            total += (2 * (c.ctype.width or 128) + 1) * max(1, c.extent or 0) + 8
        elif pa.types.is_decimal(t):
            total += t.precision + 3
        else:
            total += max(1, t.bit_width // 8) + 1
    return max(total, 1)


MIN_BATCH_ROWS = 300  # rows a batch holds whatever its width


def batch_rows_for(plan: TablePlan, ceiling: int) -> int:
    """Rows per batch so a batch stays near BATCH_BYTES: wide tables get short batches, tall ones long. The floor
    was 1,000 rows: 50 MB batches at 1,990 columns, whose full load of 3,000 rows peaked at 895-899 MB (found in
    review); with 300, 616-623 MB in the same time (5.8-6.0 s; with 100, 561-583 MB but 6.7-6.8 s: each batch is
    a row group of the batch file, and DuckDB reads 1,990 column chunks a row group)."""
    return max(MIN_BATCH_ROWS, min(ceiling, BATCH_BYTES // estimated_row_bytes(plan)))


def extract_to_parquet(reader: Reader, plan: TablePlan, mode: str, out_path: Path, *, batch_rows: int = 50_000,
                       progress: Callable[[int], None] | None = None, memory_limit: str = "256MB",
                       threads: int = 2, run_id: str | None = None, zone: tzinfo | None = None) -> dict:
    """Read `plan.table` and write the batch's parquet at `out_path` (shaped and hashed on the way, see
    transform.py); returns the metadata written into the file. `zone`: the source's clock (None: this
    process's local time)."""
    started_utc = datetime.now(timezone.utc)  # the instant, then its local time: the same even in the repeated hour
    started = started_utc.astimezone(zone).replace(tzinfo=None)
    window, why = plan.window(mode, zone)
    sql, params = reader.dialect.extract_sql(plan.table, plan.source_columns(), window, plan.filter_clause)
    log.info("extract %s (%s): %s", plan.table, why, sql)
    schema = plan.extract_schema()
    meta = {"format": FORMAT, "table": plan.table, "mode": mode,
            "effective_mode": plan.merge_mode(mode, window), "since": window.since.isoformat() if window else None,
            "window": why, "started_at": started.isoformat(),
            "started_at_utc": started_utc.replace(tzinfo=None).isoformat(),
            "sql": sql, "params": params, "reader": reader.name, "run_id": run_id, "shape": plan.extract_shape()}
    batch_rows = batch_rows_for(plan, batch_rows)
    t0 = time.monotonic()
    said = [t0]

    import_ahead(CONFORM)  # conform.py: imported while the statement starts and DuckDB plans (ahead.py)
    opening = open_engine_early(out_path, memory_limit, threads)  # meanwhile, the source starts the statement
    try:
        with _source_errors(plan.table):  # (it works while DuckDB plans)
            stream = reader.stream(sql, params, schema, batch_rows)
    finally:  # no thread opening a DuckDB outlives the statement's start, failed or not: one still at it when
        opening.join()  # the process exited aborted it ("terminate called ...", found by the tests)

    names = plan.source_names()

    def conformed():
        from .source.conform import conform_batch  # imported ahead: see CONFORM
        rows = 0
        with _source_errors(plan.table), _text_named(plan, names):
            for batch in stream:
                batch = conform_batch(batch, schema, table=plan.table, keys=plan.keys, names=names)
                rows += batch.num_rows
                if progress and time.monotonic() - said[0] >= PROGRESS_EVERY_S:
                    progress(rows)
                    said[0] = time.monotonic()  # from its end: a slow report is not followed by another at once
                yield batch

    written, renamed = json.dumps(meta), []
    try:
        rows = shape_batches(plan, schema, conformed(), out_path, metadata={META_KEY: written},
                             memory_limit=memory_limit, threads=threads, renamed=renamed.append)
    except SourceValueError as exc:
        stream.close()  # before the catalog is read on the same connection
        raise _changed_at_source(reader, plan, exc) or exc
    finally:
        stream.close()  # the driver's cursor, also when DuckDB stopped before reading it all
    if renamed:  # what the next steps ask first, for the file as renamed in
        _keep_meta(_identity(renamed[0]), written.encode(), rows)
    meta.update(rows=rows, seconds=round(time.monotonic() - t0, 3))
    if progress:
        progress(rows)
    log.info("extract %s: %d rows in %.2fs", plan.table, rows, meta["seconds"])
    return meta


def _changed_at_source(reader: Reader, plan: TablePlan, exc: SourceValueError) -> SourceValueError | None:
    """A refused value whose field the Data Dictionary changed since `sync-columns` last read it (more decimals,
    INTEGER made INT64, MANDATORY unticked): the refusal says so and gives the fix, sync-columns and the same
    command, instead of its advice to fix the row, override or exclude the column, none of which is right then
    (found in review). None when the catalog says what config.ETL_Columns says, or the column is an override
    with an expression, or a type refused under an override (its type is the operator's, and sync-columns keeps
    it; it does refresh an override's NullFlag, so a field made optional is still said)."""
    col = next((c for c in plan.columns if c.sql_name == exc.column), None)
    if col is None or exc.reason not in ("type", "null") or col.expression is not None or \
            col.override and exc.reason == "type":
        return None
    try:
        found = {c.name.lower(): c for c in catalog.read_columns(reader, plan.table)}
    except SourceError as err:  # the refusal stands as it is; why it could not be checked is said
        log.warning("table %s: the catalog could not be read to check whether column %s changed at the source: "
                    "%s", plan.table, col.name, err)
        return None
    now = found.get(col.name.lower())
    if now is None:
        change = "is no longer in the source catalog"
    else:
        try:
            ctype = map_openedge_type(now.coltype, now.width, now.scale, table=plan.table, column=col.name)
        except UnsupportedTypeError:
            ctype = None
        # only a change that explains the refusal (a width fixed by dbtool, the routine fix, explains none; found
        # in review): a NULL by the field made optional, but not in a key, which can never be unknown; a value
        # that does not fit by another type, one the value fits
        from .source.conform import fits  # imported ahead: see CONFORM
        if exc.reason == "null" and not (now.nullable and not col.nullable and col.sql_name not in plan.keys):
            return None
        if exc.reason == "type" and (_unsized(ctype) == _unsized(col.ctype) and now.array_extent == col.extent or
                                     ctype is not None and exc.value is not None and not now.array_extent and
                                     not fits(exc.value, ctype.arrow_type())):
            return None

        def said(t, nullable, extent):
            return f"{t.duckdb_type() if t else 'an unmapped type'}{f' EXTENT {extent}' if extent else ''}, " \
                   f"{'optional' if nullable else 'mandatory'}"
        change = (f"is {said(ctype, now.nullable, now.array_extent)}, in the source catalog now, and "
                  f"{said(col.ctype, col.nullable, col.extent)}, in config.ETL_Columns")
    return SourceValueError(f"{exc.fact}. The field {change}: it changed in Progress since `cbm-etl sync-columns` "
                            f"last read it. Run `cbm-etl sync-columns {plan.table}`, then the same command again "
                            f"(ods follows the change)", column=exc.column, fact=exc.fact)


def _unsized(t):
    """A column type without its text or binary width (which the conform step does not check)."""
    return dataclasses.replace(t, width=None) if t is not None else None


@contextlib.contextmanager
def _text_named(plan: TablePlan, names: dict[str, str]):
    """The reader's InvalidTextError named by the table's column and key (the reader knows neither)."""
    try:
        yield
    except InvalidTextError as exc:
        key = ", ".join(f"{names.get(k, k)}={exc.row.get(k)!r}" for k in plan.keys)
        raise exc.named(plan.table, shown_column(names.get(exc.column, exc.column), exc.column),
                        key or "?") from None


@contextlib.contextmanager
def _source_errors(table: str):
    """A driver's error as a SourceError with the table and the fix (ours pass as they are)."""
    try:
        yield
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 — driver errors get the table and the fix
        raise translate(exc, table=table, action="extract") from None


_META_READ: dict[tuple, tuple[bytes | None, int]] = {}  # file identity -> (its metadata's JSON, its rows)
META_READ_KEPT = 64  # files whose metadata a process keeps (a LoadAll reads hundreds; the SELECT is most of each)


def _identity(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _keep_meta(ident: tuple, text: bytes | None, rows: int) -> tuple[bytes | None, int]:
    """Keep a file's metadata text and row count for read_extract_meta, under the file's identity. The extract
    keeps what it has just written and renamed in (the text DuckDB put in the footer): the steps after it then
    read no footer, and a load on DuckDB none at all (pyarrow's first footer read in a process: ~15 ms)."""
    if len(_META_READ) >= META_READ_KEPT:
        _META_READ.pop(next(iter(_META_READ)))
    read = _META_READ[ident] = (text, rows)
    return read


def read_extract_meta(path: Path) -> dict:
    """The metadata the extract wrote into the file, plus its row count; {'format': 0, ...} for a file this
    version did not write.

    A wide file's footer costs 3-17 ms to read, and a load asks 6-8 times (each step's `complete()`, the stage,
    the merge, the validation): read once a process while the file is the same one, known by its device, inode,
    size, modification and change times (a new extract is renamed in: another inode). Each call gets its own
    dict."""
    ident = _identity(path.stat())
    read = _META_READ.get(ident)
    if read is None:
        import pyarrow.parquet as pq  # here: a run that reads no footer (the extract keeps what it wrote) spares it
        pf = pq.ParquetFile(path)
        read = _keep_meta(ident, (pf.schema_arrow.metadata or {}).get(META_KEY.encode()), pf.metadata.num_rows)
    text, rows = read
    meta = json.loads(text.decode()) if text is not None else {}
    meta.setdefault("format", 0)
    meta["rows"] = rows
    return meta


def current_meta(path: Path) -> dict | None:
    """The metadata of `path` when it is a complete extract in this version's format, else None (missing,
    unreadable, or written by an older version: such a file is extracted again)."""
    try:
        meta = read_extract_meta(path)
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return None
    return meta if meta["format"] == FORMAT else None


def is_current(path: Path) -> bool:
    return current_meta(path) is not None
