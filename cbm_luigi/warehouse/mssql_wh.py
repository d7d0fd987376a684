"""SQL Server, the production warehouse: pyodbc sessions, INFORMATION_SCHEMA introspection, bulk staging.

Sessions run in autocommit mode; `transaction()` sends `SET XACT_ABORT ON` then BEGIN TRANSACTION / COMMIT
(any run-time error then dooms the whole transaction instead of leaving half of it applied). Batches are sent
one by one: `GO` never goes over ODBC (base.split_script cuts the scripts on it).

Staging (`replace_stage`) drops and recreates stg.<table>, then loads the stage parquet in bounded batches
(file_batches: about 8 MB and at most CHUNK_ROWS rows each), one of two ways:

- `mssql_python` installed (Microsoft's driver, >= 1.13: `cursor.bulkcopy_arrow`): TDS bulk copy straight from
  Arrow. It opens its OWN connection, so it cannot see the caller's open transaction: the DROP/CREATE is
  committed first, the copy runs on the other connection, then a new transaction is opened for the rest of
  the step (the marker). A failure in between leaves stg.<table> without its marker row, so the step reruns
  from the start (the stage is always rebuilt from the parquet): nothing is lost, nothing is counted twice.
- otherwise pyodbc `fast_executemany`, inside the caller's transaction, with `setinputsizes` from the column
  types (`input_sizes`): without it the driver guesses a buffer per parameter (NVARCHAR(MAX) guesses allocate
  gigabytes, string guesses may truncate). Values are converted per column (`rows_for_executemany`): one
  Python type per column, decimals quantized to the column scale, timestamps cut to the column precision.

Either way every string/binary value is checked against its NVARCHAR(n)/VARBINARY(n) before it is sent: the
ODBC driver silently truncates a longer value, so a value that does not fit raises `StageValueError` naming
the table, column, key and value. Before creating stg.<table>, bounded string columns are sized from the
file in UTF-16 code units (SQL Server's unit for NVARCHAR(n); a character outside the BMP takes two), so the
check only fires on a real inconsistency.

`CBM_MSSQL_BULK` = auto (default: mssql_python when importable) | bulkcopy | executemany.
"""
from __future__ import annotations

import contextlib
import hashlib
import decimal
import logging
import os
import re
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..naming import shown_value
from ..settings import connection_summary, mask_secrets
from ..types import check_decimal_fits
from ..pooling import pooled
from .base import Session, Warehouse
from .dialects import TsqlDialect
from .statements import Column, _width, alters_column, create_table, tech_columns

log = logging.getLogger(__name__)

CHUNK_ROWS = 10_000
_SUPPLEMENTARY = r"[\x{10000}-\x{10FFFF}]"  # RE2: characters that take two UTF-16 code units
# staging reads the batch file in batches of about this many bytes (as the extract's readers aim for), at most
# CHUNK_ROWS rows: a fixed row count read 80 MB of comment text at once, and grew with the width without bound
# (found in review)
STAGE_BATCH_BYTES = 8 * 1024 * 1024
PROBE_ROWS = 1_000


def file_batches(pf: pq.ParquetFile, columns: list[str], most_rows: int | None = None) -> Iterator[pa.RecordBatch]:
    """`columns` of the parquet file in record batches of about STAGE_BATCH_BYTES, sized from the width of its
    first rows as Arrow holds them (parquet's own sizes are encoded: a dictionary-encoded text looks small there),
    at least 1 and at most `most_rows` (default CHUNK_ROWS) rows each. The first rows are as many as parquet's sizes say fit (at most
    PROBE_ROWS): 1,000 rows of 20 comment fields are 40 MB."""
    md = pf.metadata
    probe = PROBE_ROWS
    if md.num_row_groups and md.row_group(0).num_rows:
        group = md.row_group(0)
        wanted = set(columns)
        encoded = sum(group.column(i).total_uncompressed_size for i in range(group.num_columns)
                      if group.column(i).path_in_schema in wanted)
        probe = max(1, min(PROBE_ROWS, STAGE_BATCH_BYTES * group.num_rows // max(1, encoded)))
    first = next(pf.iter_batches(batch_size=probe, columns=columns), None)
    if first is None:
        return
    per_row = max(1, first.nbytes // max(1, first.num_rows))
    most_rows = most_rows or CHUNK_ROWS
    yield from pf.iter_batches(batch_size=max(1, min(most_rows, STAGE_BATCH_BYTES // per_row)), columns=columns)


class StageValueError(ValueError):
    """A stage value that SQL Server would truncate or reject; the message says where and what to do."""

    def __init__(self, *, table: str, column: str, type_text: str, problem: str, value, row_number: int,
                 row: dict, keys: list[str] | tuple = ()):
        self.table, self.column, self.type_text, self.problem = table, column, type_text, problem
        self.value, self.row_number, self.row, self.keys = value, row_number, row, list(keys)
        self.key_names: dict[str, str] = {}  # SQL name -> Progress name, set by replace_stage
        super().__init__(str(self))

    def __str__(self) -> str:
        shown = shown_value(self.value)
        keys = [k for k in self.keys if k in self.row]
        where = (", ".join(f"{self.key_names.get(k, k)}={self.row[k]!r}" for k in keys) +
                 f"; row {self.row_number} of the stage file"
                 if keys else f"row {self.row_number} of the stage file")
        return (f"stg.{self.table}.{self.column} {self.type_text}: {self.problem} ({where}): {shown}. Nothing "
                f"was staged (the ODBC driver would have truncated or mangled it silently). Check the source "
                f"value, or widen the column: Width in config.ETL_Columns, or a SourceExpression that casts it.")


# -- column layout ---------------------------------------------------------------------------------------------

_TYPE_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*(?:\(\s*(MAX|\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*$", re.I)


@dataclass(frozen=True)
class StageColumn:
    """One column of stg.<table>, its type written as the dialect writes it (NVARCHAR(40), DECIMAL(15,4) ...)."""
    name: str
    type_text: str
    nullable: bool = True

    def _parts(self) -> tuple[str, str | None, str | None]:
        m = _TYPE_RE.match(self.type_text)
        if not m:
            raise ValueError(f"column {self.name}: cannot read the type {self.type_text!r}")
        return m.group(1).upper(), (m.group(2) or None) and m.group(2).upper(), m.group(3)

    @property
    def base(self) -> str:
        return self._parts()[0]

    @property
    def width(self) -> int | None:
        """n of NVARCHAR(n)/VARBINARY(n)/CHAR(n); None for MAX and for types without a length."""
        b, a, _s = self._parts()
        if b not in STRING_TYPES | BINARY_TYPES or a in (None, "MAX"):
            return None
        return int(a)

    @property
    def precision_scale(self) -> tuple[int, int]:
        """(p, s) of DECIMAL(p,s); (fractional digits, 0) of DATETIME2(n)/DATETIMEOFFSET(n) (default 7)."""
        b, a, s = self._parts()
        if b in ("DECIMAL", "NUMERIC"):
            return int(a or 18), int(s or 0)
        return int(a) if a is not None else 7, 0


STRING_TYPES = {"NVARCHAR", "NCHAR", "VARCHAR", "CHAR"}
BINARY_TYPES = {"VARBINARY", "BINARY"}


def stage_layout(d: TsqlDialect, columns: list[Column]) -> list[StageColumn]:
    """The columns of stg.<table> in table order: the business columns, then the stage technical columns."""
    out = [StageColumn(c.name, d.column_type(c.ctype, c.max_len), c.nullable) for c in columns]
    out += [StageColumn(n, t, nullable) for n, t, nullable in tech_columns(d, ods=False, scd2=False)]
    return out


def input_sizes(layout: list[StageColumn]) -> list[tuple[int, int, int]]:
    """pyodbc `setinputsizes` entries (sql type, column size, decimal digits), one per column, in order.

    NVARCHAR(n) binds as (SQL_WVARCHAR, n, 0), MAX as (SQL_WLONGVARCHAR, 0, 0) — size 0 makes pyodbc stream the
    value (data at execution) instead of allocating a 2 GB buffer per row; DECIMAL(p,s) as (SQL_DECIMAL, p, s);
    DATETIME2(n) as (SQL_TYPE_TIMESTAMP, 20 + n, n); DATETIMEOFFSET goes as text (pyodbc has no binding for it),
    which SQL Server converts exactly.
    """
    import pyodbc

    sizes = []
    for c in layout:
        b = c.base
        if b in STRING_TYPES:
            sizes.append((pyodbc.SQL_WVARCHAR, c.width, 0) if c.width else (pyodbc.SQL_WLONGVARCHAR, 0, 0))
        elif b in BINARY_TYPES:
            sizes.append((pyodbc.SQL_VARBINARY, c.width, 0) if c.width else (pyodbc.SQL_LONGVARBINARY, 0, 0))
        elif b in ("DECIMAL", "NUMERIC"):
            p, s = c.precision_scale
            sizes.append((pyodbc.SQL_DECIMAL, p, s))
        elif b in ("INT", "SMALLINT", "TINYINT"):
            sizes.append((pyodbc.SQL_INTEGER, 10, 0))
        elif b == "BIGINT":
            sizes.append((pyodbc.SQL_BIGINT, 19, 0))
        elif b in ("FLOAT", "REAL"):
            sizes.append((pyodbc.SQL_DOUBLE, 53, 0))
        elif b == "BIT":
            sizes.append((pyodbc.SQL_BIT, 1, 0))
        elif b == "DATE":
            sizes.append((pyodbc.SQL_TYPE_DATE, 10, 0))
        elif b in ("DATETIME2", "DATETIME"):
            n = c.precision_scale[0] if b == "DATETIME2" else 3
            sizes.append((pyodbc.SQL_TYPE_TIMESTAMP, 20 + n if n else 19, n))
        elif b == "DATETIMEOFFSET":
            sizes.append((pyodbc.SQL_WVARCHAR, 34, 0))
        else:
            raise ValueError(f"column {c.name}: no parameter binding for SQL Server type {c.type_text}")
    return sizes


def bound_row_bytes(sizes: list[tuple[int, int, int]]) -> int:
    """What pyodbc's fast_executemany allocates for one row of parameters bound at `sizes` (input_sizes): each
    parameter's buffer at its bound size, not its value's (2 bytes a character for NVARCHAR(n), n for
    VARBINARY(n), a streamed-value record for (MAX), at most 40 for the fixed types), plus its length
    indicator."""
    import pyodbc

    total = 0
    for sql_type, size, _digits in sizes:
        if sql_type == pyodbc.SQL_WVARCHAR:
            buf = 2 * (size + 1)
        elif sql_type == pyodbc.SQL_VARBINARY:
            buf = size
        else:
            buf = 40
        total += buf + 8
    return total


def executemany_slices(rows: list, sizes: list[tuple[int, int, int]]) -> Iterator[list]:
    """`rows` in slices whose parameter array stays within STAGE_BATCH_BYTES: pyodbc allocates it for every row of
    an executemany call at once, from the declared widths (10,000 rows of 30 NVARCHAR(4000) comments holding a few
    characters each asked for 2.4 GB: the batch is sized from the values, found in review)."""
    step = max(1, STAGE_BATCH_BYTES // bound_row_bytes(sizes))
    for i in range(0, len(rows), step):
        yield rows[i:i + step]


# -- value conversion ------------------------------------------------------------------------------------------

def utf16_len(text: str) -> int:
    """Length in UTF-16 code units: what NVARCHAR(n) counts."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


_DEC_CTX = decimal.Context(prec=80, rounding=decimal.ROUND_HALF_EVEN)


def _naive_utc(v: datetime) -> datetime:
    return v.astimezone(timezone.utc).replace(tzinfo=None) if v.tzinfo is not None else v


def _cut(v: datetime, digits: int) -> datetime:
    """Drop fractional seconds beyond `digits` (the driver refuses a value finer than the bound scale)."""
    if digits >= 6:
        return v
    step = 10 ** (6 - digits)
    return v.replace(microsecond=v.microsecond - v.microsecond % step)


def _offset_text(v: datetime, digits: int) -> str:
    if v.tzinfo is None:
        v = v.replace(tzinfo=timezone.utc)
    v = _cut(v, digits)
    off = v.utcoffset() or (v - v)
    sign = "-" if off.total_seconds() < 0 else "+"
    mins = abs(int(off.total_seconds())) // 60
    frac = f".{v.microsecond:06d}"[:digits + 1] if digits else ""
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v.hour:02d}:{v.minute:02d}:{v.second:02d}{frac} "
            f"{sign}{mins // 60:02d}:{mins % 60:02d}")


def _converter(c: StageColumn) -> tuple[Callable, Callable | None]:
    """(convert one non-null value, check it -> problem text or None) for a column."""
    b = c.base
    if b in STRING_TYPES:
        w = c.width
        return str, (None if w is None else
                     lambda v: f"{utf16_len(v)} characters (UTF-16 code units) > {w}" if len(v) > w // 2 and
                     utf16_len(v) > w else None)
    if b in BINARY_TYPES:
        w = c.width
        return bytes, (None if w is None else lambda v: f"{len(v)} bytes > {w}" if len(v) > w else None)
    if b in ("DECIMAL", "NUMERIC"):
        p, s = c.precision_scale
        exp = decimal.Decimal(1).scaleb(-s)

        def dec(v):
            v = v if isinstance(v, decimal.Decimal) else decimal.Decimal(str(v))
            return _DEC_CTX.quantize(v, exp) if v.is_finite() else v
        return dec, lambda v: None if check_decimal_fits(v, p, s) else f"does not fit DECIMAL({p},{s})"
    if b in ("INT", "SMALLINT", "TINYINT", "BIGINT"):
        return int, None
    if b in ("FLOAT", "REAL"):
        return float, None
    if b == "BIT":
        return bool, None
    if b == "DATE":
        return (lambda v: v.date() if isinstance(v, datetime) else v), None
    if b in ("DATETIME2", "DATETIME"):
        n = c.precision_scale[0] if b == "DATETIME2" else 3

        def ts(v):
            if not isinstance(v, datetime):  # a date
                v = datetime(v.year, v.month, v.day)
            return _cut(_naive_utc(v), n)
        return ts, None
    if b == "DATETIMEOFFSET":
        n = c.precision_scale[0]
        return (lambda v: _offset_text(v if isinstance(v, datetime) else datetime(v.year, v.month, v.day), n)), None
    raise ValueError(f"column {c.name}: no conversion for SQL Server type {c.type_text}")


def _columns_of(batch: pa.RecordBatch, layout: list[StageColumn], table: str) -> list[pa.Array]:
    names = batch.schema.names
    missing = [c.name for c in layout if c.name not in names]
    if missing:
        raise ValueError(f"stg.{table}: the stage file has no column {', '.join(missing)} (columns: "
                         f"{', '.join(names)}); rerun the table from the transform step")
    return [batch.column(names.index(c.name)) for c in layout]


def _row_dict(arrays: list[pa.Array], layout: list[StageColumn], i: int) -> dict:
    return {c.name: a[i].as_py() for c, a in zip(layout, arrays)}


def rows_for_executemany(batch: pa.RecordBatch, layout: list[StageColumn], *, table: str = "?",
                         keys: list[str] | tuple = (), row_offset: int = 0) -> list[tuple]:
    """The rows of one Arrow batch as parameter tuples in layout order, each value converted for its column.

    Raises StageValueError for a value that would not fit its column (too long, decimal overflow) or a NULL in
    a NOT NULL column. `row_offset` is the number of rows of the file before this batch (for messages)."""
    arrays = _columns_of(batch, layout, table)
    out_cols = []
    for c, arr in zip(layout, arrays):
        conv, check = _converter(c)
        values = arr.to_pylist()
        out = []
        for i, v in enumerate(values):
            if v is None:
                if not c.nullable:
                    raise StageValueError(table=table, column=c.name, type_text=c.type_text, problem="NULL in a "
                                          "NOT NULL column", value=None, row_number=row_offset + i + 1,
                                          row=_row_dict(arrays, layout, i), keys=keys)
                out.append(None)
                continue
            v = conv(v)
            if check is not None and (problem := check(v)):
                raise StageValueError(table=table, column=c.name, type_text=c.type_text, problem=problem, value=v,
                                      row_number=row_offset + i + 1, row=_row_dict(arrays, layout, i), keys=keys)
            out.append(v)
        out_cols.append(out)
    return list(zip(*out_cols))


def _utf16_lengths(arr: pa.Array) -> pa.Array:
    return pc.add(pc.utf8_length(arr), pc.count_substring_regex(arr, _SUPPLEMENTARY))


def arrow_batch_for_bulkcopy(batch: pa.RecordBatch, layout: list[StageColumn], *, table: str = "?",
                             keys: list[str] | tuple = (), row_offset: int = 0) -> pa.RecordBatch:
    """One Arrow batch in layout order, checked like `rows_for_executemany` (vectorised) and with timestamps
    cut to the column precision and decimals cast to the column type."""
    arrays = _columns_of(batch, layout, table)
    out = []
    for c, arr in zip(layout, arrays):
        b = c.base
        bad = None
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if not c.nullable and arr.null_count:
            bad = (pc.index(pc.is_null(arr), True).as_py(), "NULL in a NOT NULL column")
        elif b in STRING_TYPES and c.width is not None and len(arr):
            lengths = _utf16_lengths(arr.cast(pa.string()))
            over = pc.greater(lengths, c.width)
            if pc.any(over).as_py():
                i = pc.index(over, True).as_py()
                bad = (i, f"{lengths[i].as_py()} characters (UTF-16 code units) > {c.width}")
        elif b in BINARY_TYPES and c.width is not None and len(arr):
            lengths = pc.binary_length(arr)
            over = pc.greater(lengths, c.width)
            if pc.any(over).as_py():
                i = pc.index(over, True).as_py()
                bad = (i, f"{lengths[i].as_py()} bytes > {c.width}")
        elif b in ("DECIMAL", "NUMERIC"):
            p, s = c.precision_scale
            try:
                arr = arr.cast(pa.decimal128(p, s))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                conv, check = _converter(c)
                for i, v in enumerate(arr.to_pylist()):
                    if v is not None and (problem := check(conv(v))):
                        bad = (i, problem)
                        break
                else:
                    raise
        elif b in ("DATETIME2", "DATETIME", "DATETIMEOFFSET") and pa.types.is_timestamp(arr.type):
            n = c.precision_scale[0] if b != "DATETIME" else 3
            if b != "DATETIMEOFFSET" and arr.type.tz is not None:  # the UTC wall time, as rows_for_executemany
                arr = pc.local_timestamp(arr.cast(pa.timestamp(arr.type.unit, tz="UTC")))
            if n < 6 and arr.type.unit in ("us", "ns"):  # cut to the column precision (never rounded up)
                arr = pc.floor_temporal(arr, unit="second" if n == 0 else "millisecond")
        if bad is not None:
            i, problem = bad
            raise StageValueError(table=table, column=c.name, type_text=c.type_text, problem=problem,
                                  value=arr[i].as_py(), row_number=row_offset + i + 1,
                                  row=_row_dict(arrays, layout, i), keys=keys)
        out.append(arr)
    return pa.RecordBatch.from_arrays(out, names=[c.name for c in layout])


def sized_for_file(columns: list[Column], stage_path: Path, d: TsqlDialect) -> list[Column]:
    """`columns` with every bounded string/binary column widened to the longest value of the stage file, in
    UTF-16 code units for strings (the transform measures code points; NVARCHAR(n) counts code units)."""
    bounded = [c for c in columns if c.ctype.kind in ("string", "binary")
               and _width(d.column_type(c.ctype, c.max_len)) is not None]
    if not bounded or not stage_path.exists():
        return columns
    pf = pq.ParquetFile(stage_path)
    present = set(pf.schema_arrow.names)
    names = [c.name for c in bounded if c.name in present]
    if not names:
        return columns
    longest = dict.fromkeys(names, 0)
    for batch in file_batches(pf, names, most_rows=CHUNK_ROWS * 10):
        for n in names:
            arr = batch.column(batch.schema.names.index(n))
            if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
                m = pc.max(pc.binary_length(arr)).as_py()
            else:
                m = pc.max(_utf16_lengths(arr.cast(pa.string()))).as_py()
            longest[n] = max(longest[n], m or 0)
    out = []
    for c in columns:
        have = _width(d.column_type(c.ctype, c.max_len)) if c.name in longest else None
        if have is not None and longest[c.name] > have:
            log.info("stg column %s sized %d (longest value in UTF-16 code units) instead of %d", c.name,
                     longest[c.name], have)
            c = replace(c, max_len=longest[c.name])
        out.append(c)
    return out


# -- introspection ---------------------------------------------------------------------------------------------

MAX_CLUSTERED_KEY_BYTES = 900


def key_index_name(table: str) -> str:
    """`CX_ods_<table>`, kept within SQL Server's 128 characters (a hash of the table name past that)."""
    name = f"CX_ods_{table}"
    return name if len(name) <= 128 else f"CX_ods_{table[:100]}_{hashlib.sha1(table.encode()).hexdigest()[:12]}"


_LENGTHENED = re.compile(r" ALTER COLUMN (\[(?:[^\]]|\]\])*\]) (NVARCHAR|VARCHAR|VARBINARY)\((\d+)\) (NOT NULL|NULL)$")


def _lengthened_in_place(d, touched: list[tuple[str, str]], have: dict[str, tuple[str, bool]],
                         keys: list[str]) -> bool:
    """Whether every ALTER of an indexed column in `touched` (statement, column) only lengthens it, as SQL Server
    does in place under its index: the same NVARCHAR/VARCHAR/VARBINARY type, a size no smaller and not (MAX), the
    same nullability (ALTER TABLE: an indexed column may change when "the data type isn't changed, the new size
    is equal to or larger than the old size, and the index isn't the result of a PRIMARY KEY constraint"), with
    the key still within the index's 900 bytes. Our index was dropped and made again for it: ods rewritten twice
    under a schema lock that blocks every reader until the merge commits (found in review). `have`: ods's columns
    now (name -> (type text, nullable))."""
    current = {n.lower(): v for n, v in have.items()}
    after = {k.lower(): current.get(k.lower(), ("NVARCHAR(MAX)", True))[0] for k in keys}
    for stmt, column in touched:
        m = _LENGTHENED.search(stmt)
        old = current.get(column.lower())
        if m is None or old is None or m.group(1) != d.quote(column):
            return False
        old_type, old_nullable = old
        o = re.fullmatch(r"(NVARCHAR|VARCHAR|VARBINARY)\((\d+)\)", old_type.upper().replace(" ", ""))
        if o is None or o.group(1) != m.group(2) or int(m.group(3)) < int(o.group(2)) or \
                (m.group(4) == "NULL") != old_nullable:
            return False
        after[column.lower()] = f"{m.group(2)}({m.group(3)})"
    return sum(_index_key_bytes(t) for t in after.values()) <= MAX_CLUSTERED_KEY_BYTES


def _index_key_bytes(type_text: str) -> float:
    """Bytes a value of this column type can take in an index key (inf for (MAX) types)."""
    t = type_text.upper().replace(" ", "")
    if "(MAX)" in t:
        return float("inf")
    n = int(t[t.index("(") + 1:t.index(")")].split(",")[0]) if "(" in t else None
    if t.startswith(("NVARCHAR", "NCHAR")):
        return 2 * (n or 1)
    if t.startswith(("VARCHAR", "CHAR", "VARBINARY", "BINARY")):
        return n or 1
    if t.startswith(("DECIMAL", "NUMERIC")):
        return 5 if n <= 9 else 9 if n <= 19 else 13 if n <= 28 else 17
    return {"BIT": 1, "TINYINT": 1, "SMALLINT": 2, "INT": 4, "BIGINT": 8, "REAL": 4, "FLOAT": 8, "DATE": 3,
            "UNIQUEIDENTIFIER": 16}.get(t.split("(")[0], 10)  # DATETIME2/DATETIMEOFFSET/TIME: 10 at most


def render_type(data_type: str, char_len: int | None, precision: int | None, scale: int | None,
                dt_precision: int | None) -> str:
    """An INFORMATION_SCHEMA.COLUMNS row's type, written the way TsqlDialect writes types."""
    t = data_type.upper()
    if t in ("NVARCHAR", "VARCHAR", "NCHAR", "CHAR", "VARBINARY", "BINARY"):
        return f"{t}(MAX)" if char_len in (None, -1) else f"{t}({int(char_len)})"
    if t in ("DECIMAL", "NUMERIC"):
        return f"DECIMAL({int(precision)},{int(scale or 0)})"
    if t in ("DATETIME2", "DATETIMEOFFSET", "TIME"):
        return f"{t}({int(dt_precision if dt_precision is not None else 7)})"
    if t == "FLOAT":
        return "FLOAT" if precision in (None, 53) else "REAL"
    return t


TABLE_COLUMNS_SQL = ("SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH, NUMERIC_PRECISION, NUMERIC_SCALE, "
                     "DATETIME_PRECISION, IS_NULLABLE FROM INFORMATION_SCHEMA.COLUMNS "
                     "WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION")


# -- sessions --------------------------------------------------------------------------------------------------

class MssqlSession(Session):
    def __init__(self, con):
        self.con = con

    def _run(self, sql, params):
        cur = self.con.cursor()
        if params:
            cur.execute(sql, list(params))
        else:
            cur.execute(sql)
        return cur

    @staticmethod
    def _drain(cur) -> None:
        # errors of later statements of a batch only surface when their results are reached
        while cur.nextset():
            pass

    def execute(self, sql, params=None):
        cur = self._run(sql, params)
        try:
            self._drain(cur)
        finally:
            cur.close()

    def _first_rows(self, sql, params):
        cur = self._run(sql, params)
        try:
            while cur.description is None:
                if not cur.nextset():
                    return [], []
            names = [c[0] for c in cur.description]
            rows = [tuple(r) for r in cur.fetchall()]
            self._drain(cur)
            return names, rows
        finally:
            cur.close()

    def query(self, sql, params=None):
        return self._first_rows(sql, params)[1]

    def query_dicts(self, sql, params=None):
        names, rows = self._first_rows(sql, params)
        return [dict(zip(names, r)) for r in rows]

    @contextlib.contextmanager
    def transaction(self) -> Iterator["MssqlSession"]:
        # XACT_ABORT ON: a run-time error rolls the whole transaction back (no half-applied step)
        self.execute("SET XACT_ABORT ON")
        self.execute("BEGIN TRANSACTION")
        try:
            yield self
        except BaseException:
            with contextlib.suppress(Exception):  # XACT_ABORT may already have rolled it back
                self.execute("IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION")
            raise
        self.execute("COMMIT TRANSACTION")


def _outside_transaction(con) -> bool:
    """A kept connection is lent again only when it answers and holds no open transaction."""
    cur = con.cursor()
    try:
        return cur.execute("SELECT @@TRANCOUNT").fetchone()[0] == 0
    finally:
        cur.close()


def _without_driver(odbc: str) -> str:
    """The connection string for mssql_python, which brings its own driver (no Driver= key)."""
    parts = [p for p in re.split(r";(?![^{]*\})", odbc) if p.strip()]
    return ";".join(p for p in parts if p.split("=", 1)[0].strip().lower() != "driver")


class MssqlWarehouse(Warehouse):
    kind = "mssql"
    needs_string_lengths = True
    max_columns = 1024  # per non-wide table (Msg 1702 at CREATE TABLE otherwise)

    def __init__(self, settings):
        super().__init__(settings)
        self.dialect = TsqlDialect()
        self.odbc: str = settings.mssql_odbc
        self.bulk_mode = os.environ.get("CBM_MSSQL_BULK", "auto").strip().lower() or "auto"
        if self.bulk_mode not in ("auto", "bulkcopy", "executemany"):
            raise ValueError(f"CBM_MSSQL_BULK={self.bulk_mode!r}: expected auto, bulkcopy or executemany")

    def describe(self) -> str:
        return "mssql:" + connection_summary(self.odbc)

    def row_too_wide(self, error):
        """Msg 511: a row's in-row part passes 8,060 bytes. Variable-length values of 24 bytes or less cannot move
        off the row, so it depends on the data (split array elements, short texts), not on CREATE TABLE. Known by
        its number too: the text is in the session's language (found in review)."""
        return "allowable maximum row size" in error or bool(re.search(r"\(511\)", error))

    def _connect(self):
        import pyodbc

        if not self.odbc:
            raise RuntimeError("CBM_WAREHOUSE_KIND=mssql needs CBM_MSSQL_ODBC, e.g. 'Driver={ODBC Driver 18 for "
                               "SQL Server};Server=host,1433;Database=cbm;UID=cbm_etl;PWD=...;Encrypt=yes'")
        attempts = 1 + max(0, int(self.settings.connect_retries))  # CBM_CONNECT_RETRIES retries, as for Progress
        for attempt in range(1, attempts + 1):
            try:
                con = pyodbc.connect(self.odbc, autocommit=True)
                break
            except pyodbc.Error as exc:
                # OperationalError: network / timeout / server starting, worth a retry; anything else
                # (driver not found, login failed) is a configuration error
                if attempt >= attempts or not isinstance(exc, pyodbc.OperationalError):
                    text = mask_secrets(str(exc))
                    hint = ("; no such ODBC driver: check `odbcinst -q -d` and DRIVER= in CBM_MSSQL_ODBC (Microsoft's "
                            "ODBC Driver 18 for SQL Server, see docs/mssql.md)"
                            if re.search(r"IM002|can't open lib|data source name not found", text, re.I) else "")
                    raise RuntimeError(f"cannot connect to SQL Server ({self.describe()}): {text}{hint}") from None
                time.sleep(min(2 ** attempt, 30))
        # no statement timeout: CBM_QUERY_TIMEOUT_S bounds the source's query, and a MERGE, a key index or an ALTER
        # of a big ods table cancelled at it would fail every night (found in review)
        con.cursor().execute("SET NOCOUNT ON").close()
        return con

    @contextlib.contextmanager
    def session(self):
        """A session on one of this process's kept connections (pooling.ConnectionPool): a login per session cost
        15,000 logins a night over 1,000 tables."""
        with pooled(("mssql", self.odbc), self._connect, _outside_transaction).connection() as con:
            yield MssqlSession(con)

    def key_index_ddl(self, s, table, keys, stmts):
        """A clustered index on ods's keys: without it every MERGE, count and validation reads the whole heap,
        and under HOLDLOCK locks it whole. Created when the table has no clustered index (a new table, one made
        by an older version); a DBA's own clustered index (a rowstore or a columnstore one) is left alone. Ours
        (`CX_ods_<table>`) follows the key: SQL Server cannot alter an indexed column, so when `stmts` alter one
        of its columns, or PrimaryKeyCols changed since it was made (a key field renamed: its old column, no
        longer read, is made optional), it is dropped first and the `after` part makes it again on the keys
        (found in review)."""
        d = self.dialect
        name = key_index_name(table)
        index, columns = self._clustered_index(s, table)
        if index is not None and index != name:
            return [], None  # a DBA's own
        if index is not None:
            touched = [(st, c) for st in stmts for c in {*keys, *columns} if alters_column(d, st, c)]
            have = self.table_columns(s, "ods", table) if touched else {}
            altering = bool(touched) and not _lengthened_in_place(d, touched, have, keys)
            if not altering and [c.lower() for c in columns] == [k.lower() for k in keys]:
                return [], None
        drop = [f"DROP INDEX IF EXISTS {d.quote(name)} ON {d.table('ods', table)}"] if index else []
        ods = "N" + d.literal(d.table("ods", table))

        def after(types: dict[str, tuple[str, bool]]) -> list[str]:
            size = sum(_index_key_bytes(types.get(k, ("NVARCHAR(MAX)", True))[0]) for k in keys)
            if size > MAX_CLUSTERED_KEY_BYTES:
                log.warning("ods.%s: no clustered index on the key (%s): its columns can hold %s bytes, more than "
                            "SQL Server's %d; merges will scan the table", table, ", ".join(keys),
                            "unbounded" if size == float("inf") else f"{size:,}", MAX_CLUSTERED_KEY_BYTES)
                return []
            return [f"IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE object_id = OBJECT_ID({ods}) AND type IN (1, 5)) "
                    f"CREATE CLUSTERED INDEX {d.quote(name)} ON {d.table('ods', table)} "
                    f"({', '.join(d.quote(k) for k in keys)})"]
        return drop, after

    def _clustered_index(self, s, table: str) -> tuple[str | None, list[str]]:
        """ods.<table>'s clustered index: its name and key columns in order ((None, []) when it has none)."""
        # type 5: a clustered columnstore index, always a DBA's (made from ours WITH DROP_EXISTING it keeps our
        # name: found in review), whose columns have no key_ordinal
        rows = s.query("SELECT CASE WHEN i.type = 5 THEN CONCAT('columnstore ', i.name) ELSE i.name END, c.name "
                       "FROM sys.indexes AS i LEFT JOIN sys.index_columns AS ic ON "
                       "ic.object_id = i.object_id AND ic.index_id = i.index_id AND ic.key_ordinal > 0 "
                       "LEFT JOIN sys.columns AS c ON c.object_id = ic.object_id AND c.column_id = ic.column_id "
                       "WHERE i.object_id = OBJECT_ID(?) AND i.type IN (1, 5) ORDER BY ic.key_ordinal",
                       [self.dialect.table("ods", table)])
        return (rows[0][0], [r[1] for r in rows if r[1] is not None]) if rows else (None, [])

    def keyed_as(self, s, table, keys):
        """Our key index is made in the merge that changes the key, whose NULL-key check refuses it (rolling the
        index back): on exactly `keys`, it vouches that no row was loaded under another key, and the check's scan
        of the whole table is spared."""
        index, columns = self._clustered_index(s, table)
        return index == key_index_name(table) and [c.lower() for c in columns] == [k.lower() for k in keys]

    def missing_relation(self, error):
        # SQL Server error 208, by its SQLSTATE or number whatever the session's language
        return "Invalid object name" in error or "42S02" in error or bool(re.search(r"\(208\)", error))

    def table_columns(self, s, schema, table):
        out = {}
        for name, data_type, char_len, prec, scale, dt_prec, nullable in s.query(TABLE_COLUMNS_SQL,
                                                                                  [schema, table]):
            out[name] = (render_type(data_type, char_len, prec, scale, dt_prec), nullable == "YES")
        return out

    # -- staging -----------------------------------------------------------------------------------------------

    def stage_ddl(self, table: str, columns: list[Column]) -> list[str]:
        d = self.dialect
        return [f"DROP TABLE IF EXISTS {d.table('stg', table)}", create_table(d, "stg", table, columns, ods=False)]

    def insert_sql(self, table: str, layout: list[StageColumn]) -> str:
        d = self.dialect
        return (f"INSERT INTO {d.table('stg', table)} ({', '.join(d.quote(c.name) for c in layout)}) "
                f"VALUES ({', '.join('?' for _ in layout)})")

    def count_sql(self, table: str) -> str:
        return f"SELECT COUNT_BIG(*) FROM {self.dialect.table('stg', table)}"

    def _bulkcopy_module(self):
        """mssql_python when it can bulk copy Arrow (`Cursor.bulkcopy_arrow`, from 1.13.0), else None (auto mode:
        the executemany path) or an error (CBM_MSSQL_BULK=bulkcopy). Versions 1.4-1.12 import fine but have only
        the row-based `bulkcopy`."""
        if self.bulk_mode == "executemany":
            return None
        try:
            import mssql_python  # noqa: F401
        except ImportError:
            if self.bulk_mode == "bulkcopy":
                raise RuntimeError("CBM_MSSQL_BULK=bulkcopy but mssql_python is not installed "
                                   "(pip install 'mssql-python>=1.13')") from None
            return None
        if not hasattr(getattr(mssql_python, "Cursor", None), "bulkcopy_arrow"):
            version = getattr(mssql_python, "__version__", "?")
            if self.bulk_mode == "bulkcopy":
                raise RuntimeError(f"CBM_MSSQL_BULK=bulkcopy but mssql_python {version} has no "
                                   f"Cursor.bulkcopy_arrow (1.13.0 and later): pip install -U 'mssql-python>=1.13'")
            log.warning("mssql_python %s has no Cursor.bulkcopy_arrow (1.13.0 and later): staging with "
                        "executemany, much slower; pip install -U 'mssql-python>=1.13'", version)
            return None
        return mssql_python

    def replace_stage(self, s, table, stage_path, columns, tech, keys=None):
        d = self.dialect
        d.check_identifier(table)
        stage_path = Path(stage_path)
        columns = sized_for_file(columns, stage_path, d)
        layout = stage_layout(d, columns)
        for stmt in self.stage_ddl(table, columns):
            s.execute(stmt)
        try:
            mod = self._bulkcopy_module()
            if mod is not None:
                self._load_bulkcopy(mod, s, table, stage_path, layout, tech)
            else:
                self._load_executemany(s, table, stage_path, layout, tech)
        except StageValueError as exc:
            exc.keys, exc.key_names = list(keys or {}), dict(keys or {})
            raise
        return int(s.scalar(self.count_sql(table)))

    def _batches(self, stage_path: Path, layout: list[StageColumn], tech) -> Iterator[pa.RecordBatch]:
        """The batch file's rows in `layout` order, with the run's technical values (not in the file) added."""
        pf = pq.ParquetFile(stage_path)
        names = pf.schema_arrow.names
        added = {n for n, _a in tech.arrays(0)}
        missing = [c.name for c in layout if c.name not in names and c.name not in added]
        if missing:
            raise ValueError(f"{stage_path}: no column {', '.join(missing)} in the batch file; extract the table "
                             "again (`cbm-etl invalidate <table> --from extract`)")
        from_file = [c.name for c in layout if c.name not in added]
        for b in file_batches(pf, from_file):
            cols = dict(zip(b.schema.names, b.columns))
            cols.update(tech.arrays(b.num_rows))
            yield pa.RecordBatch.from_arrays([cols[c.name] for c in layout], names=[c.name for c in layout])

    def _load_executemany(self, s: MssqlSession, table: str, stage_path: Path, layout: list[StageColumn],
                          tech) -> None:
        sql = self.insert_sql(table, layout)
        sizes = input_sizes(layout)
        cur = s.con.cursor()
        cur.fast_executemany = True
        try:
            offset = 0
            for batch in self._batches(stage_path, layout, tech):
                rows = rows_for_executemany(batch, layout, table=table, row_offset=offset)
                for part in executemany_slices(rows, sizes):
                    cur.setinputsizes(sizes)
                    cur.executemany(sql, part)
                offset += batch.num_rows
        finally:
            cur.close()

    def _load_bulkcopy(self, mod, s: MssqlSession, table: str, stage_path: Path, layout: list[StageColumn],
                       tech) -> None:
        """TDS bulk copy on mssql_python's own connection: the DDL is committed first (that connection cannot
        see, and would block on, our uncommitted CREATE TABLE), then a new transaction is opened for the rest
        of the caller's step."""
        in_tx = int(s.scalar("SELECT @@TRANCOUNT") or 0) > 0
        if in_tx:
            s.execute("COMMIT TRANSACTION")
        try:
            schema = pa.schema([pa.field(c.name, _arrow_type_for(c)) for c in layout])
            offsets = [0]

            def batches():
                for b in self._batches(stage_path, layout, tech):
                    out = arrow_batch_for_bulkcopy(b, layout, table=table, row_offset=offsets[0])
                    offsets[0] += b.num_rows
                    yield out.cast(schema) if out.schema != schema else out

            reader = pa.RecordBatchReader.from_batches(schema, batches())
            con = mod.connect(_without_driver(self.odbc))
            try:
                cur = con.cursor()
                result = cur.bulkcopy_arrow(self.dialect.table("stg", table), reader, batch_size=CHUNK_ROWS,
                                            column_mappings=[c.name for c in layout], table_lock=True,
                                            keep_nulls=True,
                                            # the whole copy's limit: mssql-python's default (30 s) fails big tables
                                            timeout=max(1, int(self.settings.mssql_bulk_timeout_s)))
                con.commit()
                log.info("stg.%s: bulk copy of %s rows", table, (result or {}).get("rows_copied"))
            finally:
                con.close()
        finally:
            if in_tx:
                s.execute("BEGIN TRANSACTION")


def _arrow_type_for(c: StageColumn) -> pa.DataType:
    b = c.base
    if b in STRING_TYPES:
        return pa.string()
    if b in BINARY_TYPES:
        return pa.binary()
    if b in ("DECIMAL", "NUMERIC"):
        return pa.decimal128(*c.precision_scale)
    if b in ("INT", "SMALLINT", "TINYINT"):
        return pa.int32()
    if b == "BIGINT":
        return pa.int64()
    if b in ("FLOAT", "REAL"):
        return pa.float64()
    if b == "BIT":
        return pa.bool_()
    if b == "DATE":
        return pa.date32()
    if b in ("DATETIME2", "DATETIME"):
        n = c.precision_scale[0] if b == "DATETIME2" else 3
        return pa.timestamp("s" if n == 0 else "ms" if n <= 3 else "us")
    if b == "DATETIMEOFFSET":
        return pa.timestamp("ms" if c.precision_scale[0] <= 3 else "us", tz="UTC")
    raise ValueError(f"column {c.name}: no Arrow type for SQL Server type {c.type_text}")
