"""Readers: one connection to the source, small catalog queries and a streamed SELECT as Arrow batches.

- `EmbeddedReader`: Python's sqlite3 on the demo file (the embedded default).
- `PyodbcReader`: pyodbc over any ODBC driver (always available).
- `ArrowOdbcReader`: arrow-odbc, which fills Arrow buffers in the driver's own fetch loop (the fast path).
Every reader attaches the same session setup (isolation READ UNCOMMITTED, init statements) and yields
batches of at most `batch_rows` rows, so memory is bounded by the batch, never the table.
"""
from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterator

import pyarrow as pa

from ..pooling import close_idle, pooled
from ..settings import Settings, mask_secrets
from .dialect import OpenEdgeDialect, SqliteStandInDialect, dialect_for, result_names
from .errors import InvalidTextError, SourceError, translate

log = logging.getLogger(__name__)
# arrow-odbc sizes text and binary buffers from the driver's column size; an unbounded column (CLOB, LVARCHAR,
# BLOB, LVARBINARY) would get a huge buffer per row, or none at all. OpenEdge VARCHAR holds at most 31,995
# characters (4 bytes each in UTF-8); binary values are bounded at 4 MiB (a BLOB column then reads 16 rows a
# fetch within max_bytes_per_batch). A longer value is an error naming its column (`_too_long`), never cut.
MAX_TEXT_BYTES = 31_995 * 4
MAX_BINARY_BYTES = 4 * 1024 * 1024
ARROW_ODBC_BATCH_BYTES = 64 * 1024 * 1024  # arrow-odbc's buffers for one fetch: a row must fit in them


BATCH_BYTES = 8 * 1024 * 1024  # a batch's size the extract aims at, from the declared widths
MAX_BATCH_BYTES = 4 * BATCH_BYTES  # the most a batch may hold as measured: past it the values outgrew their widths
_PROBE_ROWS = 10  # the first fetch of a statement: a few rows to learn their real size


def _rows_to_batch(rows: list[tuple], names: list[str]) -> pa.RecordBatch:
    """Arrays of the driver's own types: building them in the catalog type would convert silently (microseconds
    cut to milliseconds, a datetime to its date, 12 to True, True to 1); conform.py casts them exactly."""
    cols = list(zip(*rows)) if rows else [[] for _ in names]
    arrays = []
    for name, values in zip(names, cols):
        try:
            arrays.append(pa.array(values, from_pandas=False))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise ValueError(f"column {name}: the driver's values do not make one typed column (values of "
                             f"different types in one batch?): {exc}") from None
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _no_batches() -> Iterator[pa.RecordBatch]:
    yield from ()


class Stream:
    """The batches of a statement that is already running. `close()` releases its cursor, also when no batch
    was read (the extract can fail while DuckDB plans, before the first one); reading to the end releases it
    too."""

    def __init__(self, batches: Iterator[pa.RecordBatch], release: Callable[[], None] = lambda: None):
        self._batches, self._release = batches, release

    def __iter__(self):
        return self

    def __next__(self) -> pa.RecordBatch:
        try:
            return next(self._batches)
        except StopIteration:
            self.close()
            raise

    def close(self) -> None:
        """Idempotent. Drops the generator too: from Python 3.12 closing one that never started keeps its frame,
        and with it arrow-odbc's running statement, for as long as the generator lives."""
        release, self._release = self._release, None
        batches, self._batches = self._batches, _no_batches()
        try:
            batches.close()
        finally:
            if release is not None:
                try:
                    release()
                except Exception as exc:  # noqa: BLE001 — must not hide the error the caller is raising
                    log.warning("closing a source cursor failed (its connection is already closed?): %s",
                                mask_secrets(str(exc))[:300])


class Reader:
    dialect: OpenEdgeDialect
    name = "reader"

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        raise NotImplementedError

    def stream(self, sql: str, params: list, schema: pa.Schema | None, batch_rows: int) -> Stream:
        """Run `sql` now and return its batches (named as `schema`). The statement runs at the call, not at the
        first batch: the source works on it while the caller gets ready (the extract plans its DuckDB query
        meanwhile). Read it to the end or close it to release the cursor."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _DbApiReader(Reader):
    con = None

    def query(self, sql, params=None):
        cur = self.con.cursor()
        cur.execute(sql, params or [])
        return [tuple(r) for r in cur.fetchall()]

    def stream(self, sql, params, schema, batch_rows):
        cur = self.con.cursor()
        if hasattr(cur, "arraysize"):
            cur.arraysize = batch_rows
        cur.execute(sql, params or [])
        names = [d[0] for d in cur.description]
        if schema is not None:
            names = result_names(names, schema.names)
        return Stream(self._batches(cur, names, batch_rows), cur.close)

    @staticmethod
    def _batches(cur, names: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Batches of at most `batch_rows` rows (sized by the caller from the declared widths) and MAX_BATCH_BYTES
        at the size of the rows just read: the first fetch takes a few rows to learn their size, and each
        fetch is sized from the bytes of the one before and takes at most twice its rows. Values that grow
        (CLOBs of 1 MB in a column declared narrow, after short ones) overshoot by one fetch, which is small
        at the start of a read and after long values. Each fetch is its own batch: the driver's types of two
        fetches may differ (a NUMERIC column read as integers, then as doubles), conform.py casts each.
        Without the doubling, the second fetch took `batch_rows` rows whatever they held (80 MB batches after
        a 10-row probe of short values; 2,000 x 200 KB peaked at 2.35 GB: found in review)."""
        step = min(batch_rows, _PROBE_ROWS)
        while True:
            rows = cur.fetchmany(step)
            if not rows:
                break
            batch = _rows_to_batch([tuple(r) for r in rows], names)
            yield batch
            per_row = max(1, batch.nbytes // batch.num_rows)
            step = max(1, min(batch_rows, 2 * len(rows), MAX_BATCH_BYTES // per_row))

    def close(self):
        if self.con is not None:
            self.con.close()
            self.con = None


class EmbeddedReader(_DbApiReader):
    """The demo source read in-process; dates arrive as ISO text and are typed by conform.py."""

    name = "embedded"

    def __init__(self, path):
        self.dialect = SqliteStandInDialect()
        if not path.exists():
            raise SourceError(f"demo source {path} does not exist: run `cbm-etl demo-source` (`make demo` keeps its "
                              f"own source and warehouse under var/demo), or set CBM_DEMO_SOURCE")
        self.con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        for alias in ("PUB", "SYSPROGRESS"):
            self.con.execute(f"ATTACH DATABASE ? AS {alias}", (f"file:{path}?mode=ro",))


def _odbc_retry(fn, retries: int, what: str):
    """Retry transient failures (network, timeout) with backoff; SQL errors fail at once."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 — classified right below
            err = translate(exc, action=what)
            if not err.transient or attempt == retries:
                raise err from None
            wait = min(30.0, 2.0 ** attempt)
            log.warning("transient source error (%s), retry %d/%d in %.0fs", err, attempt + 1, retries, wait)
            time.sleep(wait)


def _quoted_values(stmt: str) -> set[str]:
    """Every value between quotes in a statement, '...' and "...": as written and as a driver says it back (a
    doubled quote single), one left open running to the end (a forgotten closing quote is what makes such a
    statement fail); values under 4 characters are no secret (found in review: an empty literal paired with the
    next one's quote, and a key left open was shown whole)."""
    found, i = set(), 0
    while i < len(stmt):
        quote = stmt[i]
        if quote not in "'\"":
            i += 1
            continue
        j, said = i + 1, []
        while j < len(stmt):
            if stmt[j] == quote:
                if stmt[j + 1:j + 2] != quote:
                    break
                j += 1  # a doubled quote: one quote of the value
            said.append(stmt[j])
            j += 1
        found |= {stmt[i + 1:j], "".join(said)}
        i = j + 1
    return {v for v in found if len(v) >= 4}


def _init_sql(execute: Callable[[str], object], settings: Settings) -> list[tuple[str, Callable[[], object]]]:
    """CBM_SOURCE_INIT_SQL's statements as set-up steps, named by their number alone: a statement may carry a key
    (ATTACH ... KEY '...', PRAGMA key), and a failed one was shown whole in the log, etl.ETL_Log and the web
    view (found in review)."""
    return [(f"statement {i} of CBM_SOURCE_INIT_SQL (not shown: it may carry a key)",
             lambda stmt=stmt: execute(stmt)) for i, stmt in enumerate(settings.source_init_sql, 1)]


def _set_up(reader: Reader, steps: list[tuple[str, Callable[[], object]]], settings: Settings) -> None:
    """A new connection's set-up (the isolation level, CBM_SOURCE_INIT_SQL), the step that fails named: the
    connection itself was made, and "connect failed" sent the operator to the DSN and the broker (found in
    review). The connection is closed then. The driver's words are said without the quoted values of the
    statements (a driver may quote the statement back)."""
    for what, step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 — translated and named, never swallowed
            with contextlib.suppress(Exception):  # the set-up's error is the one to report
                reader.close()
            err = translate(exc, action=what)
            text = str(err)
            hidden = set().union(*map(_quoted_values, settings.source_init_sql))
            for literal in sorted(hidden, key=len, reverse=True):  # a longer one may hold a shorter one
                text = text.replace(literal, "***")
            then = ("The connection was made, then its link failed during the set-up: run the command again once "
                    "the server answers (the setting is not at fault)." if err.transient else
                    "The connection itself was made: fix or remove that setting in .env.")
            raise SourceError(f"{text} {then}", transient=err.transient) from None


class PyodbcReader(_DbApiReader):
    name = "pyodbc"

    def __init__(self, settings: Settings, dialect: OpenEdgeDialect):
        import pyodbc

        self.dialect = dialect
        # no `timeout=` here: pyodbc sets it as SQL_ATTR_LOGIN_TIMEOUT, which overrides the DSN's LoginTimeout, so a
        # one-hour query cap made each connect to a dead server wait an hour (found in review)
        self.con = _odbc_retry(lambda: pyodbc.connect(settings.source_odbc, autocommit=True),
                               settings.connect_retries, "connect")
        steps = _init_sql(self.con.execute, settings)
        if settings.source_isolation == "READ_UNCOMMITTED":
            # no record locks on big reads (no lock-table overflow); set per connection
            steps.insert(0, ("CBM_SOURCE_ISOLATION=READ_UNCOMMITTED (the ODBC attribute SQL_ATTR_TXN_ISOLATION)",
                             lambda: self.con.set_attr(pyodbc.SQL_ATTR_TXN_ISOLATION,
                                                       pyodbc.SQL_TXN_READ_UNCOMMITTED)))
        if settings.query_timeout_s:
            self.con.timeout = settings.query_timeout_s
        _set_up(self, steps, settings)


class ArrowOdbcReader(Reader):
    """Reads straight into Arrow: each column in the driver's own type (decimals are parsed exactly from the
    driver's text), then conform.py casts it exactly to the catalog type."""

    name = "arrow-odbc"

    def __init__(self, settings: Settings, dialect: OpenEdgeDialect):
        import arrow_odbc

        self.dialect = dialect
        self.settings = settings
        self.con = _odbc_retry(lambda: arrow_odbc.connect(settings.source_odbc, autocommit=True),
                               settings.connect_retries, "connect")

        def execute(sql: str):  # every statement under the query timeout, as pyodbc's `con.timeout` does
            return self.con.execute(sql, query_timeout_sec=settings.query_timeout_s or None)
        steps = _init_sql(execute, settings)
        if settings.source_isolation == "READ_UNCOMMITTED" and dialect.name == "openedge":
            steps.insert(0, ("CBM_SOURCE_ISOLATION=READ_UNCOMMITTED (SET TRANSACTION ISOLATION LEVEL READ "
                             "UNCOMMITTED)",
                             lambda: execute("SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED")))
            _warn_without_dil(settings.source_odbc)
        _set_up(self, steps, settings)

    def query(self, sql, params=None):
        # catalog-sized answers: small buffers (the default 65,535 rows x column size costs ~250 MB); under the
        # query timeout as every statement (without it the catalog reads and the kept connection's check hung on a
        # server that stopped answering: found in review)
        reader = self.con.read_arrow_batches(sql, parameters=[None if p is None else str(p) for p in params or []],
                                             batch_size=1000, max_bytes_per_batch=8 * 1024 * 1024,
                                             max_text_size=MAX_TEXT_BYTES, max_binary_size=MAX_BINARY_BYTES,
                                             query_timeout_sec=self.settings.query_timeout_s or None)
        return [tuple(r.values()) for b in reader for r in b.to_pylist()]

    def stream(self, sql, params, schema, batch_rows):
        """arrow-odbc fetches on a thread of its own (fetch_concurrently, asked for explicitly): from this call on, the
        first batch is on its way."""
        with self._driver_errors_named(sql, params, schema):
            reader = self.con.read_arrow_batches(
                sql, batch_size=batch_rows, parameters=[str(p) for p in params or []],
                max_bytes_per_batch=ARROW_ODBC_BATCH_BYTES, max_text_size=MAX_TEXT_BYTES,
                max_binary_size=MAX_BINARY_BYTES, query_timeout_sec=self.settings.query_timeout_s or None,
                fetch_concurrently=True,  # its default today; the extract overlaps fetch and shaping on it
                map_schema=(lambda s: _prefer(s, schema)) if schema is not None else None)
        # arrow-odbc's reader has no close: the statement ends when the generator holding it is closed
        return Stream(self._batches(reader, schema, sql, params))

    def _batches(self, reader, schema, sql, params) -> Iterator[pa.RecordBatch]:
        read = reader.schema.names
        names = result_names(read, schema.names) if schema is not None else read
        with self._driver_errors_named(sql, params, schema):
            for batch in reader:
                yield pa.RecordBatch.from_arrays(batch.columns, names=names) if names != read else batch

    @contextlib.contextmanager
    def _driver_errors_named(self, sql, params, schema):
        """arrow-odbc's errors that name no column rewritten to name it: a buffer overflow, text that is not UTF-8
        (any other error passes as it is)."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 — only those two are rewritten
            if _INVALID_UTF8 in str(exc) and schema is not None:
                try:
                    found = self._invalid_text(sql, params, schema)
                except Exception:  # noqa: BLE001 — the search failed: the driver's own error is the one to show
                    found = None
                raise found or exc
            if _ROW_TOO_WIDE in str(exc):
                raise ValueError(self._row_too_wide(str(exc), sql, params, schema)) from None
            if _TOO_LONG not in str(exc):
                raise
            raise ValueError(self._too_long(str(exc), sql, params, schema)) from None

    def _invalid_text(self, sql: str, params: list, schema: pa.Schema) -> InvalidTextError | None:
        """arrow-odbc refuses text that is not UTF-8 without saying where: the same SELECT read again through pyodbc,
        asking the driver for narrow text decoded as latin-1 (every byte one character: each value's bytes come
        back exactly, and whole), finds the first such value, its column and its row. One more read, on the failure
        path only (arrow-odbc's own buffers cannot do it: as bytes, a text buffer is the declared width, which an
        accented value at its width passes: found in review). None when it finds none."""
        import pyodbc

        with PyodbcReader(self.settings, self.dialect) as r:
            for sqltype in (pyodbc.SQL_CHAR, pyodbc.SQL_WCHAR):
                r.con.setdecoding(sqltype, encoding="latin-1", ctype=pyodbc.SQL_CHAR)
            cur = r.con.cursor()
            cur.execute(sql, params or [])
            names = result_names([d[0] for d in cur.description], schema.names)
            text = [i for i, n in enumerate(names) if n in schema.names and pa.types.is_string(schema.field(n).type)]
            while rows := cur.fetchmany(1000):
                for row in rows:
                    for i in text:
                        if not isinstance(row[i], str):
                            continue
                        raw = row[i].encode("latin-1")
                        try:
                            raw.decode("utf-8")
                        except UnicodeDecodeError:
                            return InvalidTextError(names[i], {n: _text(v) for n, v in zip(names, row)}, raw)
        return None

    def _described(self, sql: str, params: list, what: str) -> list:
        """The driver's description of the statement's columns (their sizes), read through pyodbc without
        fetching; [] (said in the log) when it cannot be read: only a better message is at stake."""
        try:
            with PyodbcReader(self.settings, self.dialect) as r:
                return r.con.cursor().execute(sql, params or []).description
        except Exception as exc:  # noqa: BLE001 — only a better message was at stake
            log.warning("could not tell %s: %s", what, mask_secrets(str(exc))[:300])
            return []

    def _row_too_wide(self, message: str, sql: str, params: list, schema: pa.Schema | None) -> str:
        """arrow-odbc refuses a table whose one row needs more than its buffers for a fetch (it sizes a row from
        the driver's column sizes, not from the values) in its own words, which name no column and a bound no
        setting of ours raised (found in review: 600 VARCHAR(31995) columns). Names the widest columns and the
        ways out; pyodbc reads the same rows."""
        described = self._described(sql, params, "which columns are the widest")
        widths = sorted(((n, b) for n, b, *_ in _buffers(described)), key=lambda c: -c[1])
        names = [n for n, _b in widths]
        if schema is not None and names:
            names = result_names(names, schema.names)
        widest = ", ".join(f"{n} ({b:,} bytes)" for n, (_n, b) in list(zip(names, widths))[:5])
        return (f"a row needs more than arrow-odbc's {ARROW_ODBC_BATCH_BYTES:,} bytes of buffers for a fetch (it "
                f"sizes each column from the size the driver reports, not from the values)"
                f"{': widest ' + widest if widest else ''}."
                f" Exclude the columns the warehouse does not need (IsExcluded = 1 in config.ETL_Columns), read a "
                f"long one in part (SourceExpression 'SUBSTRING(...)' with IsOverride = 1), or set "
                f"CBM_ODBC_READER=pyodbc, which reads the same rows with buffers of their own size — {message}")

    def _too_long(self, message: str, sql: str, params: list, schema: pa.Schema | None) -> str:
        """arrow-odbc refuses a value longer than its buffer (nothing is cut) but does not say in which column:
        the driver's column sizes, read through pyodbc without fetching, tell whose buffer was shorter."""
        m = re.search(r"Some\((\d+)\)", message)
        size = int(m.group(1)) if m else None
        found = _shorter_buffers(self._described(sql, params, "which column overflowed"), size)
        names = [n for n, _b, _w in found]
        if schema is not None:
            names = result_names(names, schema.names)
        length = f" of {size:,} bytes" if size is not None else ""
        if not found:
            return (f"a text or binary column: a value{length} is longer than arrow-odbc's buffer for it (the "
                    f"column's size as the driver reports it, at most {MAX_TEXT_BYTES:,} bytes of text and "
                    f"{MAX_BINARY_BYTES:,} bytes of binary) — {message}")
        buffers = "; ".join(f"{n}: {b:,} bytes, {why}" for n, (_n, b, why) in zip(names, found))
        return (f"column {' or '.join(names)}: a value{length} is longer than arrow-odbc's buffer for it "
                f"({buffers}) — {message}")

    def close(self):
        self.con = None


def _text(v):
    """A value read as latin-1 (_invalid_text) as it is: its text when its bytes are UTF-8, else the bytes (a key
    in another code page shown as text with replacement marks could not be found in Progress: found in review)."""
    if not isinstance(v, str):
        return v
    raw = v.encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


_TOO_LONG = "too large to be written into the allocated buffer"
_ROW_TOO_WIDE = "buffer is not large enough to hold a single row"
_INVALID_UTF8 = "invalid UTF-8"


def _buffers(description) -> list[tuple[str, int, bool, str, int | None]]:
    """Each text or binary column's arrow-odbc buffer for one value, as (name, bytes, bounded by our maximum,
    unit, the driver's size): text 4 bytes a character of the driver's column size, binary its size, each bounded
    by our maximum (an unbounded column, size 0 or none, gets it)."""
    out = []
    for name, kind, _display, width, *_ in description:
        if kind is str:
            need, cap, unit = (width or 0) * 4, MAX_TEXT_BYTES, "text"
        elif kind in (bytes, bytearray):
            need, cap, unit = width or 0, MAX_BINARY_BYTES, "binary"
        else:
            continue
        bounded = not need or need > cap
        out.append((name, cap if bounded else need, bounded, unit, width))
    return out


def _shorter_buffers(description, size: int | None) -> list[tuple[str, int, str]]:
    """Columns whose arrow-odbc buffer holds fewer than `size` bytes, as (name, buffer bytes, why that size).
    Columns bounded by our maximum come first: OpenEdge itself refuses a value longer than the declared width
    (error 7864)."""
    bounded, declared = [], []
    for name, held, by_us, unit, width in _buffers(description):
        if size is not None and held >= size:
            continue
        if by_us:
            bounded.append((name, held, f"cbm_luigi's bound for {unit}"))
        else:
            declared.append((name, held, f"the driver reports the column {width:,} "
                                         f"{'characters' if unit == 'text' else 'bytes'} wide"))
    return bounded or declared


_DIL = re.compile(r"(?:^|;)\s*(?:DefaultIsolationLevel|DIL)\s*=\s*\{?\s*(READ[ _]?UNCOMMITTED|0)\s*\}?\s*(?:;|$)",
                  re.I)
_warned_dil = False


def _warn_without_dil(connection_string: str) -> None:
    """OpenEdge documents SET TRANSACTION ISOLATION LEVEL as setting the level of a transaction, and with
    autocommit every statement is one: the connection attribute is what holds for the whole connection (pyodbc
    sets it through SQL_ATTR_TXN_ISOLATION; arrow-odbc cannot). Said once per process."""
    global _warned_dil
    if _warned_dil or _DIL.search(connection_string or ""):
        return
    _warned_dil = True
    log.warning("CBM_SOURCE_ISOLATION=READ_UNCOMMITTED but CBM_SOURCE_ODBC has no DefaultIsolationLevel=READ "
                "UNCOMMITTED (DIL): the arrow-odbc reader can only run SET TRANSACTION ISOLATION LEVEL READ "
                "UNCOMMITTED, which OpenEdge may apply to one transaction only; big reads may then take record "
                "locks (lock table overflow, lock waits). Add DefaultIsolationLevel=READ UNCOMMITTED (Linux) or "
                "DIL=READ UNCOMMITTED (Windows) to the connection string.")


def _prefer(driver_schema: pa.Schema, wanted: pa.Schema) -> pa.Schema:
    """Ask arrow-odbc for timestamps in microseconds, without a time zone, and for variable-length binary.

    arrow-odbc sizes its buffers from what the driver reports: a TIMESTAMP with 0 fractional digits (the SQLite
    ODBC driver reports that) would lose the milliseconds, and a timestamp[ms] would cut microseconds silently.
    Read in microseconds, conform.py keeps the milliseconds and refuses a value with sub-millisecond digits.
    arrow-odbc fills only zone-less timestamps: asked for one with a zone (a DATETIME-TZ column the driver
    reports as TIMESTAMP) it panics and aborts the whole process, so a DATETIME-TZ comes as the driver's
    zone-less value, which conform.py takes as UTC (and says so). Every other column keeps the driver's type (a
    NUMERIC reported as double is checked by conform.py too), and so does a timestamp column the driver reports
    as text: OpenEdge's driver may hand a DATETIME-TZ over as text with its offset, which conform.py parses;
    asking for a timestamp would have the driver drop the offset.

    A binary column the driver reports as fixed-length (SQL_BINARY(n): the SQLite stand-in so reports a BLOB, a
    driver may so report BINARY(n)) would be read into a fixed-size buffer, and arrow-odbc panics on a value of
    another length (0x00, empty), aborting the whole night without a word (found in review). Read as variable
    binary, a value longer than the buffer gets arrow-odbc's error, which names the column (_too_long).
    """
    names = result_names(driver_schema.names, wanted.names)
    fields = []
    for f, name in zip(driver_schema, names):
        w = wanted.field(name).type if name in wanted.names else None
        if w is not None and pa.types.is_timestamp(w) and pa.types.is_timestamp(f.type):
            f = f.with_type(pa.timestamp("us"))
        elif pa.types.is_fixed_size_binary(f.type):
            f = f.with_type(pa.binary())
        fields.append(f)
    return pa.schema(fields)


def driver_modules(settings: Settings) -> list[str]:
    """The modules open_reader imports for `settings` (the embedded reader's sqlite3 is imported already)."""
    if settings.source_kind != "odbc":
        return []
    return ["pyodbc"] if settings.odbc_reader == "pyodbc" else ["arrow_odbc"]


def open_reader(settings: Settings) -> Reader:
    """The reader for the configured source. Errors are SourceErrors with the connection string masked."""
    try:
        if settings.source_kind == "demo":
            return EmbeddedReader(settings.source_path)
        if settings.source_kind != "odbc":
            raise SourceError(f"CBM_SOURCE_KIND={settings.source_kind!r}: expected 'demo' or 'odbc'")
        if not settings.source_odbc:
            raise SourceError("CBM_SOURCE_KIND=odbc but CBM_SOURCE_ODBC is empty: set it in .env")
        dialect = dialect_for(settings.source_dialect)
        want = settings.odbc_reader
        if want in ("auto", "arrow-odbc"):
            try:
                import arrow_odbc  # noqa: F401
            except ImportError:
                if want == "arrow-odbc":
                    raise SourceError("CBM_ODBC_READER=arrow-odbc but arrow-odbc is not installed "
                                      "(pip install 'cbm_luigi[fast]')") from None
            else:
                return ArrowOdbcReader(settings, dialect)
        return PyodbcReader(settings, dialect)
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 — translated, never swallowed
        raise translate(exc, action="connect") from None


def _pool_key(settings: Settings) -> tuple:
    return ("source", settings.source_kind, str(settings.source_path), settings.source_odbc,
            settings.source_init_sql, settings.source_isolation, settings.source_dialect, settings.odbc_reader,
            settings.query_timeout_s)


def pooled_reader(settings: Settings) -> contextlib.AbstractContextManager[Reader]:
    """This process's reader for `settings`, opened on first use and kept for the next table (pooling.py): a kept
    one is checked with a trivial query before it is lent again, and an error while it is in use closes it, so
    the next table starts from a fresh connection (connecting retries transient errors)."""
    return pooled(_pool_key(settings), lambda: open_reader(settings), _alive, keep=1).connection()


def _alive(reader: Reader) -> bool:
    """A kept connection may have died since the last table (server restart, idle timeout, firewall): one
    trivial query tells, and a dead one is replaced instead of failing the next table."""
    try:
        reader.query(reader.dialect.ping_sql)
        return True
    except Exception as exc:  # noqa: BLE001 — the answer is "reconnect", and it is logged
        log.warning("the kept source connection is gone (%s): reconnecting", mask_secrets(str(exc))[:300])
        return False


def release_readers() -> None:
    """Close this process's pooled readers (tests, and before a source file is replaced)."""
    close_idle("source")


__all__ = ["Reader", "driver_modules", "open_reader", "pooled_reader", "release_readers", "EmbeddedReader",
           "PyodbcReader", "ArrowOdbcReader", "mask_secrets"]
