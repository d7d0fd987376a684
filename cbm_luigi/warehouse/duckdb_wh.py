"""DuckDB, the embedded warehouse: one file, one connection per process.

Opening a DuckDB file reads its catalog and closing it checkpoints the WAL: with hundreds of tables that costs
tens of milliseconds each time, and a Luigi run asks thousands of `complete()` questions. So each process opens
the file once and every session is a cursor on that connection (its own transaction context). DuckDB admits
one writing process per file: a process that is done with the warehouse (the `cbm-etl` commands, the tests)
calls `release_connections()` so another process can open it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from decimal import Decimal
from pathlib import Path

import duckdb

from .base import Session, Warehouse
from .dialects import DuckDbDialect
from ..interrupts import ctrl_c_stops
from ..leftovers import drop_dead_spill_files
from ..types import parse_column_type

log = logging.getLogger(__name__)
LOCK_WAIT_S = 120.0
MULTI_ROW_VALUES = 500  # rows per INSERT statement in executemany (VALUES holding more than placeholders)
_SHARED: dict[tuple[str, int], duckdb.DuckDBPyConnection] = {}
MERGE_BASE, MERGE_ROW, MERGE_VALUE = 64e6, 500, 20  # bytes a MERGE needs: before_merge
MERGE_TEXT, MERGE_TEXT_JOINED = 2, 5  # times the long values' bytes a plain INSERT / a MERGE holds (before_merge)
ONE_THREAD_VALUES = 1_000_000  # a plain INSERT of one row group at most with this many values: one thread
MERGE_TEXT_REPLACED = 3  # times the bytes of the long values a MERGE overwrites (DuckDB keeps them until commit)
ROW_GROUP_ROWS = 122_880  # DuckDB's row group: an INSERT writes each one out when full
TECHNICAL_COLUMNS = 8  # the ods columns a type-1 MERGE updates besides the business ones
VALIDATE_MEMORY_SHARE = 0.75  # of CBM_DUCKDB_MEMORY_LIMIT, for the validation's joins (validation_memory)
VALIDATE_MEMORY_FLOOR = 128e6  # and never less than this (or the cap, if smaller)


def _bytes(text: str) -> float | None:
    """'320MB' (decimal, as set), '305.1 MiB' (binary, as DuckDB reports it), '2GB' -> bytes; None for what is
    not a size (a percentage, '-1' or 'none' for no limit), which the caller leaves alone."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTPE]?)(I?)B?(?:YTES?)?\s*", text.upper())
    if not m:
        return None
    num, prefix, binary = m.groups()
    return float(num) * (1024 if binary else 1000) ** " KMGTPE".index(prefix or " ")


class WarehouseBusyError(RuntimeError):
    """Another process holds the DuckDB file's lock for longer than LOCK_WAIT_S."""


class WarehouseLockError(RuntimeError):
    """The DuckDB file cannot be locked at all (its file system gives no locks): no wait helps."""


_DEFAULT_LIMIT: dict[str, float | None] = {}  # DuckDB's own default memory limit, once known in this process


def _default_limit(con: duckdb.DuckDBPyConnection) -> float | None:
    return _bytes(con.execute("SELECT current_setting('memory_limit')").fetchone()[0])


def machine_memory() -> float | None:
    """80 % of the memory this process may use, as DuckDB counts it for its own default limit: the machine's, or
    a container's (cgroup) limit where that is lower. Counted from the physical memory alone, a MERGE in a 2 GB
    container on a 24 GB host was raised to 19 GB, past what the kernel lets the process have: killed with no
    message and no etl.ETL_Log row. None if DuckDB cannot say. Read once a process: from the warehouse's first
    connection before it sets its own limit, else from a DuckDB of its own (17-20 ms, which the first merge of a
    process waited for)."""
    if "machine" not in _DEFAULT_LIMIT:
        try:
            with duckdb.connect(":memory:") as con:
                _DEFAULT_LIMIT["machine"] = _default_limit(con)
        except duckdb.Error:
            _DEFAULT_LIMIT["machine"] = None
    return _DEFAULT_LIMIT["machine"]


def release_connections() -> None:
    """Close this process's warehouse connections (checkpoints the WAL and frees the file lock)."""
    for key in [k for k in _SHARED if k[1] == os.getpid()]:
        _SHARED.pop(key).close()


def _lower_memory(s, value: str) -> None:
    """SET memory_limit to `value` where it may be lower than the limit in force: DuckDB refuses when it holds
    more than that and cannot free it ("could not free up enough memory for the new limit": the long values a
    merge just wrote, found in review, where the validation's lower limit then failed a loaded table). The
    higher limit stays, said in the log; the next step tries again."""
    try:
        s.execute(f"SET memory_limit = {value}")
    except duckdb.OutOfMemoryException:
        log.info("the warehouse's memory limit stays at %s, not %s: DuckDB holds more than that now",
                 s.scalar("SELECT current_setting('memory_limit')"), value)


def _text_memory(text_bytes: int, rows: int, written: int, replaced: int = 0) -> float:
    """What a merge's long values need (before_merge): a MERGE that joins `rows` MERGE_TEXT_JOINED times their
    bytes and MERGE_TEXT_REPLACED times those of the values it overwrites, a plain INSERT of `written` rows
    MERGE_TEXT times those of the row groups it has not written out (about two); 0 without long values."""
    if not text_bytes and not replaced:
        return 0
    if rows:
        held = MERGE_TEXT_JOINED * text_bytes + MERGE_TEXT_REPLACED * replaced
    elif written <= 2 * ROW_GROUP_ROWS:
        held = MERGE_TEXT * text_bytes
    else:
        held = MERGE_TEXT * text_bytes * 2 * ROW_GROUP_ROWS // written
    return MERGE_BASE + held


def _row_items(tup: str) -> list[str] | None:
    """The items of a VALUES row `(?, 'x', ?)`, each `?` or a constant without parameters; None when an item
    mixes a parameter into an expression (split at the commas outside parentheses and quotes)."""
    items, depth, quoted, start = [], 0, False, 1
    for i, ch in enumerate(tup):
        if ch == "'":
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if not quoted and (ch == "," and depth == 1 or ch == ")" and depth == 0):
            items.append(tup[start:i].strip())
            start = i + 1
    if depth or quoted or start != len(tup) or not all(items):
        return None
    if any(i.upper() == "DEFAULT" or "$" in i for i in items):  # no SELECT item; a dollar-quoted text (review)
        return None
    return items if all(i == "?" or "?" not in i for i in items) else None


def _one_kind(values: list) -> bool:
    """A column's values (None aside) all of one Python kind: DuckDB types a list parameter from all its values,
    where row-by-row binding takes each as it is (found in review: an int next to a float went through DOUBLE and
    lost its low bits, a Decimal next to a float too; as text, 1 next to 1.5 became '1.0', True next to 1 '1',
    Decimal('1.50') next to Decimal('2.123') '1.500'; a naive datetime next to an aware one was read as UTC)."""
    kinds = {(type(v), v.as_tuple().exponent if isinstance(v, Decimal) else getattr(v, "tzinfo", None) is not None)
             for v in values if v is not None}
    return len(kinds) <= 1


class DuckDbSession(Session):
    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def execute(self, sql, params=None):
        with ctrl_c_stops():
            self.con.execute(sql, params or [])

    def executemany(self, sql, rows):
        """An `INSERT ... VALUES (?, ..., ?)` goes as one statement, each column's values a list parameter
        unnested row by row (DuckDB runs executemany row by row: the 350 rows of a wide table's column sync cost
        0.2 s that way, 0.03 s as multi-row VALUES and 4 ms so). Other VALUES, rows of another length than the
        placeholders (which zip would cut short; multi-row VALUES refuses them), and a column of mixed Python kinds
        (_one_kind) go as multi-row VALUES; anything else through executemany."""
        head, sep, tup = sql.rpartition(" VALUES ")
        tup = tup.strip()
        if not sep or not head.lstrip().upper().startswith("INSERT") or not tup.startswith("("):
            if rows:
                with ctrl_c_stops():
                    self.con.executemany(sql, rows)
            return
        if not rows:
            return
        items = _row_items(tup)
        n = items.count("?") if items else 0
        columns = [list(c) for c in zip(*rows)] if n and all(len(r) == n for r in rows) else None
        if columns and all(_one_kind(c) for c in columns):  # each `?` a column of values, unnested; a constant
            with ctrl_c_stops():                              # repeated in each row
                self.con.execute(f"{head} SELECT {', '.join('unnest(?)' if i == '?' else i for i in items)}",
                                 columns)
            return
        for i in range(0, len(rows), MULTI_ROW_VALUES):
            chunk = rows[i:i + MULTI_ROW_VALUES]
            with ctrl_c_stops():
                self.con.execute(f"{head} VALUES {', '.join([tup] * len(chunk))}",
                                 [v for r in chunk for v in r])

    def query(self, sql, params=None):
        with ctrl_c_stops():
            return self.con.execute(sql, params or []).fetchall()

    def query_dicts(self, sql, params=None):
        with ctrl_c_stops():
            cur = self.con.execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


class DuckDbWarehouse(Warehouse):
    kind = "duckdb"

    def __init__(self, settings):
        super().__init__(settings)
        self.dialect = DuckDbDialect()
        self.path: Path = settings.duckdb_path

    def describe(self) -> str:
        return str(self.path)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """Open the file, waiting while another process holds DuckDB's write lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + LOCK_WAIT_S
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(str(self.path))
                break
            except duckdb.IOException as exc:
                text = str(exc).lower()
                if "could not set lock" in text and "conflicting lock" not in text:
                    # no other process holds it: the file system gives no locks (found in review: waited 2
                    # minutes, then sent the operator looking for a process that did not exist)
                    raise WarehouseLockError(
                        f"the DuckDB warehouse {self.path} could not be locked, and no other process holds it: the "
                        f"file system under it gives no file locks (a network mount?). Put CBM_DUCKDB_PATH on a "
                        f"local disk. DuckDB said: {exc}") from None
                if "conflicting lock" not in text:
                    raise
                if time.monotonic() > deadline:
                    raise WarehouseBusyError(
                        f"the DuckDB warehouse {self.path} is held by another process (a load still running?): "
                        f"DuckDB admits one process at a time, and this one waited {LOCK_WAIT_S:.0f} s. Run it "
                        f"when that process has ended (`ps aux | grep luigi`); on SQL Server this does not "
                        f"happen. DuckDB said: {exc}") from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        if "machine" not in _DEFAULT_LIMIT:  # DuckDB's default, what machine_memory is (RESET: a database this
            con.execute("RESET memory_limit")  # process opened before runs under the limit it was given then)
            _DEFAULT_LIMIT["machine"] = _default_limit(con)
        con.execute(f"SET memory_limit = {self.dialect.literal(self.settings.duckdb_memory_limit)}")
        con.execute(f"SET threads = {int(self.settings.duckdb_threads)}")
        con.execute("SET preserve_insertion_order = false")
        # no parquet_metadata_cache (each statement over stg reads the batch file's footer again, 3 ms for a wide
        # table): the cache keeps every footer for the life of the process, outside the memory limit (600 footers of
        # 350 columns x 9 row groups held 266 MB), and a LoadAll reads hundreds of batch files
        # a killed process's spill files (leftovers.py): this one holds the file's lock now. DuckDB's default
        # temporary directory, named, not asked for: `current_setting('temp_directory')` set DuckDB's temporary
        # file manager up for the connection, and every later statement ran slower and held more (measured: 300
        # small tables' incremental 26 -> 43 s, 352 -> 429 MB)
        drop_dead_spill_files(self.path.with_name(self.path.name + ".tmp"))
        return con

    def _shared(self) -> duckdb.DuckDBPyConnection:
        key = (str(self.path), os.getpid())  # a forked child never reuses its parent's connection
        if any(p == key[0] and pid != key[1] for p, pid in _SHARED):
            # a forked Luigi worker (--workers > 1): duckdb.connect would hand it the parent's database instance,
            # copied by the fork, with no lock error, and its writes would corrupt the file (and its WAL)
            raise WarehouseBusyError(
                f"the DuckDB warehouse {self.path} is open in this process's parent: Luigi runs tasks in forked "
                f"worker processes when --workers is above 1, and DuckDB admits one process per file. Run with "
                f"--workers 1 (on SQL Server more workers are fine).")
        con = _SHARED.get(key)
        if con is None:
            con = _SHARED[key] = self._connect()
        return con

    @contextlib.contextmanager
    def session(self):
        cur = self._shared().cursor()
        try:
            yield DuckDbSession(cur)
        finally:
            cur.close()

    def table_columns(self, s, schema, table):
        rows = s.query("SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                       "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position", [schema, table])
        out = {}
        for name, type_text, nullable in rows:
            try:  # DuckDB spells some types its own way (TIMESTAMP WITH TIME ZONE): compare as we write them
                type_text = parse_column_type(type_text).duckdb_type()
            except ValueError:
                pass
            out[name] = (type_text, nullable == "YES")
        return out

    def out_of_memory(self, error):
        return bool(re.search(r"Out of Memory|failed to (pin|allocate)", error, re.I))

    def missing_relation(self, error):
        return bool(re.search(r"Catalog Error: (Table|View) with name \S+ does not exist", error))

    def before_merge(self, s, n_columns, rows=0, *, written=0, text_bytes=0, replaced_bytes=0, new_table=False):
        """A MERGE joins stg and ods carrying every column, and DuckDB cannot spill all of it: give wide tables
        about 1.5 MB a column (350 columns: 525 MB), and a MERGE that joins `rows` rows MERGE_BASE plus, a row,
        MERGE_ROW bytes and MERGE_VALUE bytes a column it may update (the business columns and the 8 technical
        ones), never less than the configured cap nor more than 80 % of the machine's memory (DuckDB's own
        default). Measured (type 1, every row changed, the least limit that passed): 400,000 x 4 columns 205 MB,
        720,000 x 13 448 MB, 200,000 x 40 244 MB, 250,000 x 60 364 MB; this gives 360, 726, 356 and 529 MB. The
        earlier 8 bytes a value gave 13 to 120 MB for them, and 720,000 x 13 failed at the default 256MB (found
        in review). SCD2 needs less (it updates two columns): the same rule, with room to spare.

        Long values: DuckDB holds the text of the rows it writes until it commits: a plain INSERT MERGE_TEXT
        times the `text_bytes` of the long-value columns' values (only those of the row groups it has not yet
        written out of `written` rows, about two), a MERGE that joins (updates, SCD2's close and insert)
        MERGE_TEXT_JOINED times. Without it the first load of 800 CLOBs of 100 KB failed under 64MB, 2,000 under
        256MB, 600 of 1 MB again under the 511MB its message advised; 800 of them updated failed under 350MB and
        passed under 400MB (found in review)."""
        want = max(_bytes(self.settings.duckdb_memory_limit) or 0, 1.5e6 * n_columns,
                   MERGE_BASE + rows * (MERGE_ROW + MERGE_VALUE * (n_columns + TECHNICAL_COLUMNS)) if rows else 0,
                   _text_memory(text_bytes, rows, written, replaced_bytes))
        machine = self._machine_bytes()
        if machine:
            want = min(want, machine)
        if new_table and written <= ROW_GROUP_ROWS and written * n_columns >= ONE_THREAD_VALUES:
            # a first load of up to one row group, on one thread: two threads each fill a row group of their own,
            # which the commit then merges (the wide first load, 40,000 x 350: INSERT 370 -> 335 ms, COMMIT 650 ->
            # 625 ms). A first load only: an all-new batch into a loaded ods is followed by a validation that
            # reads all of ods. Only a large one: SET threads costs 2-14 ms. The validation that follows, the next
            # merge and a failed step put the configured threads back (_configured_threads)
            s.execute("SET threads = 1")
        have = _bytes(s.scalar("SELECT current_setting('memory_limit')"))
        if have is not None and want > have * 1.01:  # DuckDB reports the limit rounded to 0.1 MiB
            s.execute(f"SET memory_limit = '{int(want / 1e6)}MB'")

    def text_counts(self, text_bytes, *, rows=0, written=0, replaced=0):
        return _text_memory(text_bytes, rows, written, replaced) > (_bytes(self.settings.duckdb_memory_limit) or 0)

    @contextlib.contextmanager
    def measuring(self, s):
        """Sums of long values read under 80 % of the machine's memory (DuckDB's own default), then the limit
        in force before: DuckDB holds 2,048 of them at once, whatever the sum needs, and what it holds is the
        data's own size (a table without long values reads next to nothing)."""
        machine = self._machine_bytes()
        have = s.scalar("SELECT current_setting('memory_limit')")
        if not machine or (_bytes(have) or 0) >= machine:
            yield
            return
        s.execute(f"SET memory_limit = '{int(machine / 1e6)}MB'")
        try:
            yield
        finally:  # if DuckDB still holds the values it read, the merge runs under the measuring limit
            _lower_memory(s, self.dialect.literal(have))

    sets_memory = True  # before_merge and validation_memory SET memory_limit

    def _machine_bytes(self) -> float | None:
        """80 % of the memory this process may use: DuckDB's own default limit, and the most a MERGE is raised
        to (machine_memory)."""
        return machine_memory()

    def memory_in_force(self):
        """The limit DuckDB runs under now (a step's own raise included), as DuckDB says it, and what to do about
        an out-of-memory under it: twice it as a setting, or, when it is already the machine's 80 % (a MERGE's
        raise capped there, a setting of 80% or -1), what else can help. None if DuckDB cannot say."""
        try:
            with self.session() as s:
                now = s.scalar("SELECT current_setting('memory_limit')")
        except duckdb.Error:
            return None
        size, machine = _bytes(now), self._machine_bytes()
        if size is None or size >= 1e18:  # -1: DuckDB reports no limit as 16383.9 PiB
            now = now if size is None else "none (no limit)"
        elif machine is None or 2 * size <= machine:
            return now, f"Set CBM_DUCKDB_MEMORY_LIMIT to {int(2 * size / 1e6)}MB or more"
        elif size < 0.99 * machine:
            return now, f"Set CBM_DUCKDB_MEMORY_LIMIT to {int(machine / 1e6)}MB (80 % of this machine's memory)"
        return now, ("That is this machine's memory, or 80 % of it: exclude the columns the table does not need "
                     "(IsExcluded = 1 in config.ETL_Columns) or give the machine more memory")

    def _configured_threads(self, s) -> None:
        """The configured threads back, if a first load's merge left one (before_merge): whatever runs next in the
        process (another table's validation after a rerun, found in review) gets them all."""
        if int(s.scalar("SELECT current_setting('threads')")) != int(self.settings.duckdb_threads):
            s.execute(f"SET threads = {int(self.settings.duckdb_threads)}")

    def settle_resources(self, s):
        """The configured cap and threads back, if a step before left others in force (a merge's raise stays after
        it: the next merge puts it back; after a failed one, so does the step, as the SET outlives its
        transaction's rollback, found in review)."""
        self._configured_threads(s)
        cap = _bytes(self.settings.duckdb_memory_limit)
        have = _bytes(s.scalar("SELECT current_setting('memory_limit')"))
        if cap and have is not None and abs(cap - have) > have * 0.01:
            _lower_memory(s, self.dialect.literal(self.settings.duckdb_memory_limit))

    @contextlib.contextmanager
    def validation_memory(self, s):
        """Validation joins keys and hashes only, not every column as a MERGE does: it runs under a share of the
        configured cap (VALIDATE_MEMORY_SHARE) and spills beyond it, then the configured cap is put back (a
        MERGE raises it again for itself: before_merge). Its anti-join over ods's keys is the part of a load that
        grows with the rows, and it comes on top of what the merge's allocations left in the process: under the
        whole cap a 2 M-row table's validation peaked 40 MB above its merge (505 MB, 14 % above 1 M rows); under
        3/4 of it, below its merge (465 MB, +10 %), for 0.1 s more on 2 M keys."""
        self._configured_threads(s)  # a first load's merge just before may have left one (before_merge)
        configured = self.settings.duckdb_memory_limit
        cap = _bytes(configured)
        if not cap:  # a percentage or no limit: left as it is
            yield
            return
        # never below VALIDATE_MEMORY_FLOOR (or the cap, if smaller): a 200,000-row validation failed under 48 MB
        # (3/4 of 64MB) that passed under 64 (found in review); a small cap stays as it was
        want = max(VALIDATE_MEMORY_SHARE * cap, min(cap, VALIDATE_MEMORY_FLOOR))
        _lower_memory(s, f"'{int(want / 1e6)}MB'")
        try:
            yield
        finally:
            _lower_memory(s, self.dialect.literal(configured))

    def replace_stage(self, s, table, batch_path, columns, tech, keys=None):
        """stg.<table> becomes a view over the batch parquet: DuckDB reads parquet natively, so copying the
        batch into a table first would only cost time (a second full write of every row)."""
        d = self.dialect
        lit = d.literal(str(batch_path))
        kind = s.scalar("SELECT table_type FROM information_schema.tables WHERE table_schema = 'stg' "
                        "AND table_name = ?", [table])
        if kind == "BASE TABLE":
            s.execute(f"DROP TABLE {d.table('stg', table)}")
        names = ", ".join(d.quote(c.name) for c in columns)
        s.execute(f"CREATE OR REPLACE VIEW {d.table('stg', table)} AS SELECT {names}, _etl_hashdiff, "
                  f"{tech.sql_select(d)}, _etl_source_ts FROM read_parquet({lit})")
        # the view's rows are the file's; counted from the file, DuckDB reads its footer alone (binding the
        # view's columns again took twice as long: 7 ms for 350)
        return int(s.scalar(f"SELECT COUNT(*) FROM read_parquet({lit})"))
