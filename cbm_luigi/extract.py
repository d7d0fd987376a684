"""Extract: one SELECT streamed in record batches into a snappy parquet file, written atomically.

Memory is bounded by the batch size: each batch is conformed to the catalog schema and written as it comes.
The file's key-value metadata records when the extract started and which window it read; ValidateTable
advances LastSuccessTs to that start time.
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from .plan import TablePlan
from .source.conform import conform_batch
from .source.errors import SourceError, translate
from .source.readers import Reader

log = logging.getLogger(__name__)
META_KEY = b"cbm_luigi.extract"
BATCH_BYTES = 32 * 1024 * 1024  # aim for record batches of about this size, whatever the table's width
ROW_GROUP_BYTES = 64 * 1024 * 1024  # batches are gathered into row groups of about this size before writing


def estimated_row_bytes(plan: TablePlan) -> int:
    """An estimate of one row in the driver's buffers: strings at their declared width (UTF-8, 2 bytes a
    character on average; 128 characters when unbounded), decimals as text, the rest at their width."""
    total = 0
    for c in plan.columns:
        t = c.extract_type()
        if pa.types.is_string(t) or pa.types.is_binary(t):
            total += 2 * (c.ctype.width or 128) + 8
        elif pa.types.is_decimal(t):
            total += t.precision + 3
        else:
            total += max(1, t.bit_width // 8) + 1
    return max(total, 1)


def batch_rows_for(plan: TablePlan, ceiling: int) -> int:
    """Rows per batch so a batch stays near BATCH_BYTES: wide tables get short batches, tall ones long."""
    return max(1000, min(ceiling, BATCH_BYTES // estimated_row_bytes(plan)))


def extract_to_parquet(reader: Reader, plan: TablePlan, mode: str, out_path: Path, *, batch_rows: int = 50_000,
                       progress: Callable[[int], None] | None = None) -> dict:
    """Read `plan.table` and write `out_path`; returns the metadata written into the file."""
    started = datetime.now()
    window, why = plan.window(mode)
    sql, params = reader.dialect.extract_sql(plan.table, plan.source_columns(), window, plan.filter_clause)
    log.info("extract %s (%s): %s", plan.table, why, sql)
    schema = plan.extract_schema()
    meta = {"table": plan.table, "mode": mode, "effective_mode": "incremental" if window else "full",
            "window": why, "started_at": started.isoformat(), "sql": sql, "params": params,
            "reader": reader.name}
    schema = schema.with_metadata({META_KEY: json.dumps(meta).encode()})
    batch_rows = batch_rows_for(plan, batch_rows)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    rows = 0
    t0 = time.monotonic()
    try:
        with pq.ParquetWriter(tmp, schema, compression="snappy") as writer:
            pending: list[pa.RecordBatch] = []  # a row group in the making: bounded by ROW_GROUP_BYTES
            pending_bytes = 0

            def flush():
                nonlocal pending_bytes
                if pending:
                    writer.write_table(pa.Table.from_batches(pending, schema=schema))
                    pending.clear()
                    pending_bytes = 0
            try:
                for batch in reader.stream(sql, params, schema, batch_rows):
                    batch = conform_batch(batch, schema, table=plan.table, keys=plan.keys)
                    pending.append(batch)
                    pending_bytes += batch.nbytes
                    rows += batch.num_rows
                    if pending_bytes >= ROW_GROUP_BYTES:
                        flush()
                    if progress:
                        progress(rows)
                flush()
            except SourceError:
                raise
            except Exception as exc:  # noqa: BLE001 — driver errors get the table and the fix
                raise translate(exc, table=plan.table, action="extract") from None
        tmp.replace(out_path)  # atomic: the target exists only when complete
    finally:
        tmp.unlink(missing_ok=True)
    meta.update(rows=rows, seconds=round(time.monotonic() - t0, 3))
    log.info("extract %s: %d rows in %.2fs", plan.table, rows, meta["seconds"])
    return meta


def read_extract_meta(path: Path) -> dict:
    md = pq.read_schema(path).metadata or {}
    meta = json.loads(md[META_KEY].decode()) if META_KEY in md else {}
    meta["rows"] = pq.ParquetFile(path).metadata.num_rows
    return meta
