"""The one documented type map: OpenEdge SQL catalog type -> ColumnType -> Arrow / DuckDB / SQL Server.

`coltype` is `SYSPROGRESS.SYSCOLUMNS_FULL.coltype` (matched case-insensitively, blanks collapsed).

| OpenEdge coltype                                          | kind        | Arrow                 | DuckDB       | SQL Server                                 |
|-----------------------------------------------------------|-------------|-----------------------|--------------|--------------------------------------------|
| varchar, character, char                                  | string      | string                | VARCHAR      | NVARCHAR(width), NVARCHAR(MAX) past 4000   |
| lvarchar, clob                                            | string      | string                | VARCHAR      | NVARCHAR(MAX)                              |
| integer, int, smallint, tinyint                           | int32       | int32                 | INTEGER      | INT                                        |
| bigint, recid                                             | int64       | int64                 | BIGINT       | BIGINT                                     |
| numeric, decimal                                          | decimal     | decimal128(p, s)      | DECIMAL(p,s) | DECIMAL(p,s)                               |
| real, float, double precision                             | float64     | double                | DOUBLE       | FLOAT                                      |
| date                                                      | date        | date32[day]           | DATE         | DATE                                       |
| timestamp                                                 | timestamp   | timestamp[ms]         | TIMESTAMP    | DATETIME2(3)                               |
| timestamp_timezone, timestamp with time zone, datetime-tz | timestamptz | timestamp[ms, tz=UTC] | TIMESTAMPTZ  | DATETIMEOFFSET(3)                          |
| bit, logical                                              | bool        | bool                  | BOOLEAN      | BIT                                        |
| varbinary, binary                                         | binary      | binary                | BLOB         | VARBINARY(width), VARBINARY(MAX) past 8000 |
| lvarbinary, blob                                          | binary      | binary                | BLOB         | VARBINARY(MAX)                             |

Decisions:
- numeric: the catalog's `width` holds the precision (missing/0 -> 38), `scale` missing -> 0. OpenEdge allows
  precision up to 50, DECIMAL stops at 38 everywhere downstream: precision is clamped to 38 and the scale kept
  (capped at 38; a scale above the precision also widens to 38). Values that no longer fit are not rounded
  here: the reader checks them with `check_decimal_fits` and reports the row.
- recid is INTEGER in OpenEdge SQL but record ids of large databases exceed 2**31: int64 costs nothing.
- real (4 bytes) widens to float64 losslessly; one float kind keeps comparisons simple.
- A string or binary of unknown width (lvarchar, clob, blob, width missing/0) is unbounded: NVARCHAR(MAX) /
  VARBINARY(MAX), never a silently truncating NVARCHAR(1).
- Timestamps keep OpenEdge's millisecond precision; time-zone values are normalised to UTC in Arrow.
- Anything else raises `UnsupportedTypeError`: give the column a SourceExpression (e.g. CAST to VARCHAR) or
  exclude it (IsExcluded=1).
"""
from __future__ import annotations

import decimal
import re
from dataclasses import dataclass
from datetime import date

import pyarrow as pa

MIN_DATE = date(1, 1, 1)  # SQL DATE range of OpenEdge, DuckDB, SQL Server and Arrow date32 alike
MAX_DATE = date(9999, 12, 31)
MAX_DECIMAL_PRECISION = 38  # DECIMAL limit of SQL Server, DuckDB and Arrow decimal128
MSSQL_NVARCHAR_LIMIT = 4000
MSSQL_VARBINARY_LIMIT = 8000
OPENEDGE_MAX_VARCHAR = 31995

KINDS = ("string", "int32", "int64", "decimal", "float64", "date", "timestamp", "timestamptz", "bool", "binary")

# (OpenEdge coltypes, kind, Arrow, DuckDB, SQL Server): the documented mapping, rendered in the docstring above.
TYPE_TABLE: list[tuple[tuple[str, ...], str, str, str, str]] = [
    (("varchar", "character", "char"), "string", "string", "VARCHAR",
     "NVARCHAR(width), NVARCHAR(MAX) past 4000"),
    (("lvarchar", "clob"), "string", "string", "VARCHAR", "NVARCHAR(MAX)"),
    (("integer", "int", "smallint", "tinyint"), "int32", "int32", "INTEGER", "INT"),
    (("bigint", "recid"), "int64", "int64", "BIGINT", "BIGINT"),
    (("numeric", "decimal"), "decimal", "decimal128(p, s)", "DECIMAL(p,s)", "DECIMAL(p,s)"),
    (("real", "float", "double precision"), "float64", "double", "DOUBLE", "FLOAT"),
    (("date",), "date", "date32[day]", "DATE", "DATE"),
    (("timestamp",), "timestamp", "timestamp[ms]", "TIMESTAMP", "DATETIME2(3)"),
    (("timestamp_timezone", "timestamp with time zone", "datetime-tz"), "timestamptz", "timestamp[ms, tz=UTC]",
     "TIMESTAMPTZ", "DATETIMEOFFSET(3)"),
    (("bit", "logical"), "bool", "bool", "BOOLEAN", "BIT"),
    (("varbinary", "binary"), "binary", "binary", "BLOB", "VARBINARY(width), VARBINARY(MAX) past 8000"),
    (("lvarbinary", "blob"), "binary", "binary", "BLOB", "VARBINARY(MAX)"),
]
_KIND_OF = {name: kind for names, kind, *_ in TYPE_TABLE for name in names}
_UNBOUNDED = {"lvarchar", "clob", "lvarbinary", "blob"}


class UnsupportedTypeError(ValueError):
    """A catalog type with no mapping; the message says how to get past it."""


@dataclass(frozen=True)
class ColumnType:
    kind: str  # one of KINDS
    precision: int | None = None  # decimal only
    scale: int | None = None  # decimal only
    width: int | None = None  # string/binary: declared max length; None = unbounded

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown column kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.kind == "decimal" and (self.precision is None or self.scale is None
                                       or not 0 <= self.scale <= self.precision <= MAX_DECIMAL_PRECISION):
            raise ValueError(f"invalid decimal({self.precision}, {self.scale})")

    def arrow_type(self) -> pa.DataType:
        if self.kind == "decimal":
            return pa.decimal128(self.precision, self.scale)
        return _ARROW[self.kind]()

    def duckdb_type(self) -> str:
        if self.kind == "decimal":
            return f"DECIMAL({self.precision},{self.scale})"
        return _DUCKDB[self.kind]

    def mssql_type(self, max_len: int | None = None) -> str:
        """SQL Server type; `max_len` (e.g. a measured or configured length) overrides the declared width."""
        if self.kind in ("string", "binary"):
            name, limit = ("NVARCHAR", MSSQL_NVARCHAR_LIMIT) if self.kind == "string" else (
                "VARBINARY", MSSQL_VARBINARY_LIMIT)
            n = max_len or self.width or None  # 0 / None: unknown, so unbounded
            return f"{name}(MAX)" if n is None or n > limit else f"{name}({max(1, n)})"
        if self.kind == "decimal":
            return f"DECIMAL({self.precision},{self.scale})"
        return _MSSQL[self.kind]


_ARROW = {"string": pa.string, "int32": pa.int32, "int64": pa.int64, "float64": pa.float64, "date": pa.date32,
          "timestamp": lambda: pa.timestamp("ms"), "timestamptz": lambda: pa.timestamp("ms", tz="UTC"),
          "bool": pa.bool_, "binary": pa.binary}
_DUCKDB = {"string": "VARCHAR", "int32": "INTEGER", "int64": "BIGINT", "float64": "DOUBLE", "date": "DATE",
           "timestamp": "TIMESTAMP", "timestamptz": "TIMESTAMPTZ", "bool": "BOOLEAN", "binary": "BLOB"}
_MSSQL = {"int32": "INT", "int64": "BIGINT", "float64": "FLOAT", "date": "DATE", "timestamp": "DATETIME2(3)",
          "timestamptz": "DATETIMEOFFSET(3)", "bool": "BIT"}


def map_openedge_type(coltype: str, width: int | None, scale: int | None, *,
                      table: str = "?", column: str = "?") -> ColumnType:
    """ColumnType for one SYSCOLUMNS_FULL row (see the table and decisions in the module docstring)."""
    name = " ".join((coltype or "").lower().split())
    kind = _KIND_OF.get(name)
    if kind is None:
        raise UnsupportedTypeError(
            f"PUB.{table}.{column}: unsupported OpenEdge type {coltype!r}. On its row in config.ETL_Columns "
            f"set IsOverride = 1, a SourceExpression that returns a supported type (e.g. CAST(\"{column}\" AS "
            f"VARCHAR(n))) and DataType/Width/Scale to that type (e.g. 'varchar', n); sync-columns keeps them. "
            f"Or exclude the column (IsExcluded = 1)")
    if kind == "decimal":
        p, s = width or MAX_DECIMAL_PRECISION, max(0, scale or 0)
        if p > MAX_DECIMAL_PRECISION or s > p:
            p, s = MAX_DECIMAL_PRECISION, min(s, MAX_DECIMAL_PRECISION)
        return ColumnType("decimal", p, s)
    if kind in ("string", "binary"):
        return ColumnType(kind, width=None if name in _UNBOUNDED or not width else width)
    return ColumnType(kind)


def check_decimal_fits(value: decimal.Decimal, precision: int, scale: int) -> bool:
    """True if `value` is exactly representable in DECIMAL(precision, scale) (no rounding, no overflow)."""
    if not value.is_finite():
        return False
    _, digits, exp = value.as_tuple()
    digits = list(digits)
    while len(digits) > 1 and digits[-1] == 0 and exp < 0:  # trailing fractional zeros are free
        digits.pop()
        exp += 1
    if not any(digits):
        return True
    fraction = max(0, -exp)
    integer = max(0, len(digits) + exp)
    return fraction <= scale and integer <= precision - scale


_DECIMAL_RE = re.compile(r"(?:DECIMAL|NUMERIC)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_PARSE = {"VARCHAR": "string", "TEXT": "string", "STRING": "string", "INTEGER": "int32", "INT": "int32",
          "INT4": "int32", "BIGINT": "int64", "INT8": "int64", "DOUBLE": "float64", "FLOAT8": "float64",
          "DATE": "date", "TIMESTAMP": "timestamp", "TIMESTAMP_MS": "timestamp", "DATETIME": "timestamp",
          "TIMESTAMPTZ": "timestamptz", "TIMESTAMP WITH TIME ZONE": "timestamptz", "BOOLEAN": "bool",
          "BOOL": "bool", "BLOB": "binary", "BYTEA": "binary", "VARBINARY": "binary"}


def parse_column_type(duckdb_type: str) -> ColumnType:
    """Inverse of `ColumnType.duckdb_type` (also DuckDB's information_schema spellings), for schema evolution.

    String/binary widths are not kept by DuckDB, so the result has width=None.
    """
    t = " ".join(duckdb_type.upper().split())
    if m := _DECIMAL_RE.fullmatch(t):
        return ColumnType("decimal", int(m.group(1)), int(m.group(2)))
    if t in ("DECIMAL", "NUMERIC"):
        return ColumnType("decimal", 18, 3)  # DuckDB's default
    kind = _PARSE.get(re.sub(r"^VARCHAR\s*\(\s*\d+\s*\)$", "VARCHAR", t))
    if kind is None:
        raise ValueError(f"DuckDB type {duckdb_type!r} has no ColumnType")
    return ColumnType(kind)
