"""Transform: source batches -> the batch's parquet, shaped in DuckDB while the source is still being read.

Splits EXTENT arrays (or checks a kept-whole one), computes `_etl_hashdiff` and `_etl_source_ts`. It runs
inside the extract: DuckDB pulls the reader's Arrow batches through a RecordBatchReader, so one thread fetches
from the driver while another hashes and writes the previous batch (vectorised, bounded memory, no second pass
over the data). The hashdiff
is computed here, once, whatever the warehouse, so DuckDB and SQL Server hold the same hashes. The run's own
values (`_etl_run_id`, `_etl_batch_id`, `_etl_loaded_at`) are not in the file: staging adds them
(`TechnicalValues`), so a batch staged again by another run says so.

Canonical form hashed into `_etl_hashdiff` (md5, 32 hex chars):
- business columns only, sorted by SQL name (source column order does not matter);
- a NULL column contributes nothing, so a new column that is NULL everywhere changes no hash;
- a non-NULL string contributes `<sql name>=<length>:<text>` (the length keeps '' distinct from NULL and makes
  the form unambiguous whatever the text holds); any other value `<sql name>=<text>` (its text can hold
  neither `=` nor the separator, so it needs no length, which saves a fifth of the hashing time on wide
  tables); parts are joined with U+001F (SQL-safe names hold neither `=` nor U+001F);
- text forms: strings as is; integers in decimal; decimals without trailing fractional zeros (`12.50` -> `12.5`,
  so a scale change is not a change) and with their leading zero (`0.5`, whatever the precision); doubles in
  DuckDB's shortest round-trip form; dates `YYYY-MM-DD`; timestamps `YYYY-MM-DD HH:MM:SS.ffffff`; time-zone
  timestamps the same in UTC plus `Z`; logicals `1`/`0`; binary as upper-case hex.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa

from .interrupts import ctrl_c_stops
from .leftovers import HOST, drop_dead_spill_files, running
from .naming import shown_value
from .plan import PlanColumn, TablePlan
from .types import ColumnType
from .warehouse.dialects import DuckDbDialect


log = logging.getLogger(__name__)
_DUCKDB = DuckDbDialect()  # the transform engine is DuckDB: its quoting and literals, from the one helper
_q, _lit = _DUCKDB.quote, _DUCKDB.literal
ROW_GROUP_BYTES = "16MB"  # measured: 16 MB row groups keep the write in step with the read (wide and tall)
# Parquet 1 encodings. Tried PARQUET_VERSION V2 (delta encodings): 15 % less writing CPU, the wide benchmark's
# file a quarter of the size, 0.03 s (1 %) less extract; but the tall benchmark's peak went 392 -> 456 MB from 1 M
# to 2 M rows (+16 %, target 15 %) against 400 -> 454 MB (the 2 M peak is the validation's hash join either way).
# Not taken: a 1 % gain does not pay for the memory target.
PARQUET_OPTIONS = "FORMAT parquet, COMPRESSION snappy"


def canonical_text(expr: str, ctype: ColumnType) -> str:
    """DuckDB expression giving the canonical text of a non-NULL value (see the module docstring)."""
    k = ctype.kind
    if k == "string":
        return expr
    if k in ("int32", "int64", "float64"):
        return f"CAST({expr} AS VARCHAR)"
    if k == "decimal":
        return _decimal_text(expr, ctype.precision or 38, ctype.scale or 0)
    if k == "date":
        return f"CAST({expr} AS VARCHAR)"  # YYYY-MM-DD, years 1-9999 zero-padded (as strftime, at 2x the speed)
    if k == "timestamp":
        return f"strftime({expr}, '%Y-%m-%d %H:%M:%S.%f')"
    if k == "timestamptz":
        return f"(strftime(timezone('UTC', {expr}), '%Y-%m-%d %H:%M:%S.%f') || 'Z')"
    if k == "bool":  # NULL stays NULL (it contributes nothing): `ELSE '0'` made an unknown logical hash as false
        return f"(CASE WHEN {expr} THEN '1' WHEN NOT {expr} THEN '0' END)"
    if k == "binary":
        return f"hex({expr})"
    raise ValueError(k)


def _decimal_text(expr: str, precision: int, scale: int) -> str:
    """The decimal's text without trailing fractional zeros (and without the dot if none is left).

    DuckDB prints a DECIMAL(p, s) with exactly `s` fractional digits; how many of them are trailing zeros is
    told by exact decimal remainders (`x % 0.01 <> 0`: the last digit is not 0), so each value is cut with
    `left(text, -n)` instead of a regular expression (same text, 40 % less hashing time on decimal-heavy
    tables). DuckDB prints a DECIMAL(s, s) without the leading zero (`.5`): such a column is widened first, so
    its text is `0.5` as in any other precision (a precision change is not a change)."""
    if scale and precision <= scale < 38:
        expr = f"CAST({expr} AS DECIMAL(38, {scale}))"
    text = f"CAST({expr} AS VARCHAR)"
    if not scale:
        return text
    if scale == 38:  # DECIMAL(38,38): no wider decimal, and no exact literal for the remainders: by text
        trimmed = f"regexp_replace({text}, '\\.?0+$', '')"
        return f"(CASE WHEN {trimmed} IN ('', '-') THEN '0' ELSE regexp_replace({trimmed}, '^(-?)\\.', '\\10.') END)"
    whens = []
    for cut in range(scale):  # `cut` trailing zeros when the digit at 10^-(scale-cut) is the last non-zero one
        step = "1" if cut == scale - 1 else "0." + "0" * (scale - cut - 2) + "1"
        whens.append(f"WHEN {expr} % {step} <> 0 THEN {text if not cut else f'left({text}, -{cut})'}")
    # a whole number: its integer text (exact: the value has no fraction)
    return f"(CASE {' '.join(whens)} ELSE CAST(CAST({expr} AS HUGEINT) AS VARCHAR) END)"


def hashdiff_expr(columns: list[tuple[str, ColumnType]]) -> str:
    """md5 of the canonical text (module docstring), built by ONE `concat` a row: each column gives the
    arguments `<U+001F><name>=` (NULL when the value is NULL), [`<length>`, `:`,] `<text>`, which `concat`
    skips when NULL; the leading separator is cut at the end. The same text as
    `concat_ws(chr(31), '<name>=' || <text>, ...)`, without a string built per value for `'<name>=' || ...`:
    measured on 40,000 x 350, 12 % less hashing time, 0.04 s less extract on 2 cores.
    The separator is cut by `ltrim(..., chr(31))`, not `substr(..., 2)`: the text starts with exactly one
    (a name follows it, and SQL-safe names hold none). Measured on 40,000 x 350 (6 KB of text a row): substr
    took 13 % of the hashing time, ltrim a fifth of that."""
    args = []
    for name, ctype in sorted(columns, key=lambda c: c[0]):
        ref = _q(name)
        text = canonical_text(ref, ctype)
        args.append(f"CASE WHEN {ref} IS NULL THEN NULL ELSE {_lit(chr(31) + name + '=')} END")
        if ctype.kind in ("string", "binary"):
            args += [f"CAST(length({text}) AS VARCHAR)", f"CASE WHEN {ref} IS NULL THEN NULL ELSE ':' END"]
        args.append(text)  # NULL exactly when the value is (canonical_text keeps NULL as NULL)
    if not args:
        return "md5('')"
    return f"md5(ltrim(concat({', '.join(args)}), chr(31)))"


def _array_list(c: PlanColumn) -> str:
    """The EXTENT string as a list of elements: `~;` `~~` `~?` unescaped, a bare `?` is NULL (unknown)."""
    ref = _q(c.sql_name)
    esc = f"replace(replace(replace({ref}, '~~', chr(1)), '~;', chr(2)), '~?', chr(3))"
    return (f"list_transform(string_split({esc}, ';'), lambda e: CASE WHEN e = '?' THEN NULL ELSE "
            f"replace(replace(replace(e, chr(2), ';'), chr(3), '?'), chr(1), '~') END)")


SHAPED_TECH = ["_etl_hashdiff", "_etl_source_ts"]  # computed from the data, stored in the batch's parquet


@dataclass(frozen=True)
class TechnicalValues:
    """The run's values for the stage technical columns the batch file does not hold (added when staging)."""
    run_id: str
    batch_id: str
    loaded_at: datetime

    def arrays(self, rows: int) -> list[tuple[str, pa.Array]]:
        """The values as constant Arrow columns of `rows` rows (for loaders that send Arrow batches)."""
        return [("_etl_run_id", pa.array([self.run_id] * rows, pa.string())),
                ("_etl_batch_id", pa.array([self.batch_id] * rows, pa.string())),
                ("_etl_loaded_at", pa.array([self.loaded_at] * rows, pa.timestamp("us")))]

    def sql_select(self, d) -> str:
        """`<value> AS <column>, ...` for a SELECT list, in warehouse dialect `d`'s quoting and literals."""
        ts = f"CAST({d.literal(self.loaded_at.strftime('%Y-%m-%d %H:%M:%S.%f'))} AS {d.ts_type})"
        return (f"{d.literal(self.run_id)} AS {d.quote('_etl_run_id')}, "
                f"{d.literal(self.batch_id)} AS {d.quote('_etl_batch_id')}, {ts} AS {d.quote('_etl_loaded_at')}")


def transform_sql(plan: TablePlan, source_sql: str) -> str:
    """SELECT over `source_sql` (a relation with the extract columns) producing the business columns of
    stg/ods, then `_etl_hashdiff` and `_etl_source_ts`."""
    # the row's key as JSON between markers, shown by _transform_error as every message shows a key (its text
    # cast raw read `code=x, n=9, n=1` for the key ('x, n=9', 1), and 'NULL' as the unknown value: found in review)
    key_text = f"{_lit(KEY_OPEN)} || json_array({', '.join(_q(k) for k in plan.keys)}) || {_lit(KEY_CLOSE)}"
    inner, outer = [], []
    for c in plan.columns:
        if not c.extent:
            outer.append(_q(c.sql_name))
            continue
        lst = f"_etl_l_{len(inner)}"  # the reserved prefix: no business column can be named so
        what = f" array elements but the catalog says EXTENT {c.extent}; run cbm-etl sync-columns {plan.table}"
        too_many = (f"error({_lit(f'table {plan.table}, column {c.name}, key ')} || {key_text} || ': ' || "
                    f"CAST(len({lst}) AS VARCHAR) || {_lit(what)})")
        inner.append(f"{_array_list(c)} AS {lst}")
        if c.array_mode == "split":
            ref = _q(c.sql_name)
            # _array_list decodes the escapes through U+0001..U+0003: one of those in the data would come out as
            # `~`, `;` or `?`, so such a value is refused (kept whole, ArrayMode 'single', it is not decoded)
            ctl = " OR ".join(f"contains({ref}, chr({n}))" for n in (1, 2, 3))
            why = (": an element holds a control character U+0001..U+0003, which a split array cannot carry; set "
                   "ArrayMode = 'single' for the column in config.ETL_Columns")
            ctl_error = f"error({_lit(f'table {plan.table}, column {c.name}, key ')} || {key_text} || {_lit(why)})"
            for i, (name, _t, _n) in enumerate(c.output_columns(), 1):
                guard = (f"CASE WHEN len({lst}) > {c.extent} THEN {too_many} WHEN {ctl} THEN {ctl_error} "
                         f"ELSE {lst}[{i}] END") if i == 1 else f"{lst}[{i}]"
                outer.append(f"{guard} AS {_q(name)}")
        else:  # kept whole in Progress's own form (`;` between elements, `~;` `~~` `~?` escapes, `?` unknown):
            # joining decoded elements would make ['a;b','c'] and ['a','b;c'] the same value
            outer.append(f"CASE WHEN len({lst}) > {c.extent} THEN {too_many} ELSE {_q(c.sql_name)} END "
                         f"AS {_q(c.sql_name)}")
    business = plan.output_columns()
    first = f"SELECT *{''.join(', ' + x for x in inner)} FROM ({source_sql}) AS src"
    if plan.date_col:
        d = _q(plan.by_name(plan.date_col).sql_name)
        ts = f"CAST({d} AS TIMESTAMP)"
        if plan.time_of_day_col and plan.date_precision == "date":
            tod = _q(plan.by_name(plan.time_of_day_col).sql_name)
            ts = f"({ts} + to_seconds(CAST(coalesce({tod}, 0) AS BIGINT)))"
        source_ts = ts
    else:
        source_ts = "CAST(NULL AS TIMESTAMP)"
    shaped = f"SELECT {', '.join(outer)}, {source_ts} AS _etl_source_ts FROM ({first}) AS arr"
    return (f"SELECT * EXCLUDE (_etl_source_ts), "
            f"{hashdiff_expr([(n, t) for n, t, _ in business])} AS _etl_hashdiff, "
            f"_etl_source_ts FROM ({shaped}) AS shaped")


_ENGINE: dict[tuple, duckdb.DuckDBPyConnection] = {}
_ENGINE_LOCK = threading.Lock()


def compute_engine(memory_limit: str = "256MB", threads: int = 2, temp_dir: Path | None = None):
    """An in-memory DuckDB used as a vectorised compute engine, kept for the process (opening one costs ~10 ms,
    which adds up over 1,000 tables) while its settings stay the same. Returns a cursor: close it when done.

    `temp_dir` (where it spills past `memory_limit`) is set when the engine is opened: DuckDB refuses to switch a
    temporary directory it has used, so after one extract spilled, setting it again for each table failed every
    later extract of the process (found in review). Other settings open a new engine and close the old one."""
    key = (memory_limit, threads, str(temp_dir) if temp_dir else None, os.getpid())
    with _ENGINE_LOCK:  # open_engine_early's thread may be opening it
        con = _ENGINE.get(key)
        if con is None:
            for old in [k for k in _ENGINE if k[-1] == os.getpid()]:
                _ENGINE.pop(old).close()
            con = duckdb.connect()
            con.execute(f"SET memory_limit = {_lit(memory_limit)}")
            con.execute(f"SET threads = {int(threads)}")
            con.execute("SET preserve_insertion_order = false")
            if temp_dir:
                con.execute(f"SET temp_directory = {_lit(str(temp_dir))}")
            _ENGINE[key] = con
        return con.cursor()


def open_engine_early(out_path: Path, memory_limit: str = "256MB", threads: int = 2) -> threading.Thread:
    """Open the engine shape_batches will use for `out_path` on a thread of its own, while the source starts the
    statement: opening a DuckDB takes ~15 ms, none of it in Python, and the extract no longer waits for it between
    the statement's start and the first batch. A failure here is shape_batches' to raise: it opens the engine
    again, with the table named. Returns the thread: join it (a DuckDB still being opened when the interpreter
    exits aborts the process)."""
    def open_():
        try:
            compute_engine(memory_limit, threads, spill_dir(out_path)).close()
        except Exception as exc:  # noqa: BLE001 — raised again, named, by shape_batches' own opening
            log.debug("opening the extract's DuckDB early failed (%s): the extract opens it itself", exc)
    thread = threading.Thread(target=open_, name="cbm-open-engine")
    thread.start()
    return thread


def _scan_schema(schema: pa.Schema) -> pa.Schema:
    """Timestamps handed to DuckDB in microseconds: DuckDB scans an Arrow timestamp[ms] as TIMESTAMP_MS and
    refuses to convert years 1 and 9999 (Progress's own limits) to TIMESTAMP; from microseconds it takes them."""
    return pa.schema([f.with_type(pa.timestamp("us", f.type.tz))
                      if pa.types.is_timestamp(f.type) and f.type.unit != "us" else f for f in schema],
                     metadata=schema.metadata)


class TransformError(RuntimeError):
    """DuckDB could not shape or write a batch (its own error, with the table and what to do)."""


class _Batches:
    """The source batches as a RecordBatchReader for DuckDB. An exception raised while producing them (driver
    error, a value that does not fit) is kept, so the caller re-raises it as it was instead of DuckDB's text;
    `close()` ends the source's stream whatever DuckDB did with it (a failed COPY never finishes reading it)."""

    def __init__(self, schema: pa.Schema, batches: Iterable[pa.RecordBatch],
                 started: Callable[[], None] | None = None):
        self.error: BaseException | None = None
        self.rows = 0
        self.schema = _scan_schema(schema)
        self._source = batches
        self._gen = self._pull(batches, self.schema != schema, started)
        self.reader = pa.RecordBatchReader.from_batches(self.schema, self._gen)

    def _pull(self, batches, cast: bool, started: Callable[[], None] | None):
        try:
            if started:  # DuckDB asks for the first batch: its COPY has begun, the file is open
                started()
            for b in batches:
                self.rows += b.num_rows
                yield b.cast(self.schema) if cast else b
        except GeneratorExit:
            raise
        except BaseException as exc:  # kept for shape_batches, then re-raised
            self.error = exc
            raise

    def close(self) -> None:
        self._gen.close()
        close_source = getattr(self._source, "close", None)
        if close_source:
            close_source()  # a generator over the driver's cursor: closing it releases the cursor now


KEY_OPEN, KEY_CLOSE = "<<key ", " key>>"


def _shown_key(plan: TablePlan, text: str) -> str:
    """The key a DuckDB error() of transform_sql carries as JSON, written `name=value` by Progress names with the
    values as shown_value shows them (naming.py)."""
    start = text.find(KEY_OPEN)
    if start < 0:
        return text
    try:
        values, end = json.JSONDecoder(parse_float=Decimal).raw_decode(text, start + len(KEY_OPEN))
    except ValueError:
        return text
    if not text.startswith(KEY_CLOSE, end) or len(values) != len(plan.key_names):
        return text
    shown = ", ".join(f"{name}={shown_value(v)}" for name, v in zip(plan.key_names, values))
    return text[:start] + shown + text[end + len(KEY_CLOSE):]


def _transform_error(plan: TablePlan, exc: duckdb.Error) -> TransformError:
    text = _shown_key(plan, str(exc))
    if "out of memory" in text.lower():
        text += (". Raise CBM_TRANSFORM_MEMORY_LIMIT (or lower CBM_BATCH_ROWS for this wide table) and rerun "
                 "the table")
    elif "array elements" not in text and "ArrayMode" not in text:  # the array checks say what to do
        text += ". The batch file was not written; fix the cause (free space in CBM_CACHE_DIR?) and rerun the table"
    return TransformError(f"table {plan.table}: shaping the batch in DuckDB failed: {text}")


def _drop_orphans(out_path: Path) -> None:
    """Half-written files of `out_path` left by a killed process of this host (`<name>.<pid>-<id>-<host>.tmp`,
    the pid no longer runs): as large as the extract, and no later run would touch them; and the spill files of
    this host's engines killed there (leftovers.py). Best effort."""
    for p in out_path.parent.glob(f"{out_path.name}.*-*-{HOST}.tmp"):
        pid = p.name[len(out_path.name) + 1:].split("-", 1)[0]
        if pid.isdigit() and not running(int(pid)):
            with contextlib.suppress(OSError):
                p.unlink()
    drop_dead_spill_files(spill_dir(out_path))


def release_close_write_out(path: Path) -> None:
    """Spare the batch file's close a synchronous write-out. DuckDB opens its COPY target and truncates it to
    zero; ext4 (auto_da_alloc) takes a truncated file for one being rewritten in place and starts writing it
    all to disk at its close, and the extract waited for that: 40-50 ms for the wide benchmark's 60 MB
    (bench/README.md, "Tried"). Any close of the file clears that mark, so closing one of our own while the
    file is still empty leaves its write-out to the kernel's usual timing. Nothing else changes: the file
    appears whole only by its rename, and one cut short by a power loss is unreadable, so extracted again
    (BatchFileTarget). Best effort: a file DuckDB has not made yet, or that cannot be opened, is written out
    at its close as before."""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as exc:
        log.debug("batch file %s: not opened ahead of its close (%s): it is written out at its close", path, exc)


def spill_dir(out_path: Path) -> Path:
    """Where the extract's engine spills: a folder of this host in the batch's cache folder (DuckDB makes it and
    removes it on close; a cache shared by hosts keeps each host's pids apart)."""
    return out_path.parent / f"spill-{HOST}"


def shape_batches(plan: TablePlan, schema: pa.Schema, batches: Iterable[pa.RecordBatch], out_path: Path, *,
                  metadata: dict[str, str] | None = None, memory_limit: str = "256MB", threads: int = 2,
                  renamed: Callable[[os.stat_result], None] | None = None) -> int:
    """Shape `batches` (the extract schema) into `out_path`, atomically; returns the rows written. `renamed` is
    given the file's stat once it is in place (not when another process renamed its own over it meanwhile).

    Row groups are kept small (ROW_GROUP_BYTES) so they are written while the source is still read, and a
    later step can read them in parallel."""
    # a name of its own: two processes extracting the same batch never rename each other's half-written file
    tmp = out_path.with_name(f"{out_path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}-{HOST}.tmp")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _drop_orphans(out_path)
    con = compute_engine(memory_limit, threads, spill_dir(out_path))
    src = _Batches(schema, batches, started=lambda: release_close_write_out(tmp))
    view = f"_cbm_src_{uuid.uuid4().hex}"
    kv = ", ".join(f"{_lit(k)}: {_lit(v)}" for k, v in (metadata or {}).items())
    try:
        con.register(view, src.reader)
        with ctrl_c_stops():  # a Ctrl-C in the COPY stops the run (interrupts.py), not this table alone
            con.execute(f"COPY ({transform_sql(plan, f'SELECT * FROM {_q(view)}')}) TO {_lit(str(tmp))} "
                        f"({PARQUET_OPTIONS}, ROW_GROUP_SIZE 122880, "
                        f"ROW_GROUP_SIZE_BYTES {_lit(ROW_GROUP_BYTES)}{', KV_METADATA {' + kv + '}' if kv else ''})")
        ours = os.stat(tmp)
        tmp.replace(out_path)  # atomic: the file exists only when complete
        if renamed:
            st = os.stat(out_path)
            if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino):
                renamed(st)
        return src.rows
    except duckdb.Error as exc:
        if src.error is not None:
            raise src.error from None  # the source's own error, with its table/column/key message
        raise _transform_error(plan, exc) from exc
    finally:
        src.close()
        with contextlib.suppress(Exception):
            con.unregister(view)
        con.close()
        if tmp.exists():  # a failed COPY's half-written file; on a read-only cache there is none to remove
            try:
                tmp.unlink()
            except OSError as exc:  # the error being raised says what went wrong: this must not replace it
                log.warning("table %s: could not remove %s (%s); the table's next extract removes it",
                            plan.table, tmp, exc)


def shape_file(plan: TablePlan, extract_path: Path, out_path: Path, **kw) -> int:
    """`shape_batches` over a parquet file of the extract schema (the tests' way to feed it exact values)."""
    import pyarrow.parquet as pq  # the tests' path only: a load writes its parquet through DuckDB

    pf = pq.ParquetFile(extract_path)
    return shape_batches(plan, pf.schema_arrow, pf.iter_batches(batch_size=10_000), out_path, **kw)
