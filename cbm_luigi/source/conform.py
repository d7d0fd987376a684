"""Bring driver batches to the catalog's Arrow schema — exactly, or with an error that names the value.

Drivers differ (Progress hands over Decimal and date; the SQLite stand-in hands over doubles and ISO text),
so every batch is cast to the schema derived from the catalog. Casts are `safe`: a value that would change
(overflow, truncated fraction, year outside 1..9999) stops the extract with table, column, key and value.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from .errors import SourceValueError

_FIX = ("fix the row in Progress, or set a SourceExpression override for this column in config.ETL_Columns "
        "(e.g. CAST, SUBSTRING or CASE), or exclude it (IsExcluded = 1), then rerun the table")


DOUBLE_DIGITS = 15


def _first_bad(src: pa.Array, target: pa.DataType) -> int | None:
    for i in range(len(src)):
        v = src[i]
        if not v.is_valid:
            continue
        try:
            _cast(src.slice(i, 1), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError, ValueError):
            return i
    return None


def _key_text(batch: pa.RecordBatch, keys: list[str], i: int) -> str:
    parts = [f"{k}={batch.column(k)[i].as_py()!r}" for k in keys if k in batch.schema.names]
    return ", ".join(parts) or f"row {i} of the batch"


def _cast(arr: pa.Array, target: pa.DataType) -> pa.Array:
    out = _convert(arr, target)
    if pa.types.is_floating(target) and not pc.all(pc.or_kleene(pc.is_null(out), pc.is_finite(out))).as_py():
        # OpenEdge has no infinity or NaN: one here means the driver could not carry the source value
        raise pa.ArrowInvalid("non-finite double: the driver could not carry the source value")
    return out


def _convert(arr: pa.Array, target: pa.DataType) -> pa.Array:
    if arr.type.equals(target):
        return arr
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), target)
    if pa.types.is_floating(arr.type) and pa.types.is_decimal(target):
        # an ODBC driver that reports NUMERIC as double (the SQLite stand-in): a double holds 15 significant
        # digits exactly, so values needing more (integer digits + scale) are refused, the rest rounded to scale.
        limit = 10.0 ** (DOUBLE_DIGITS - target.scale)
        if pc.any(pc.greater_equal(pc.abs(arr), limit)).as_py():
            raise pa.ArrowInvalid(f"a double above {limit:g} cannot carry {DOUBLE_DIGITS} exact digits")
        return pc.round(arr, ndigits=target.scale).cast(target, safe=True)
    return arr.cast(target, safe=True)


def conform_batch(batch: pa.RecordBatch, schema: pa.Schema, *, table: str, keys: list[str]) -> pa.RecordBatch:
    """Cast each column to `schema` (by name, in schema order). Raises SourceValueError on the first loss."""
    arrays = []
    position = {name: i for i, name in enumerate(batch.schema.names)}  # by-name lookup is linear in pyarrow
    for field in schema:
        if field.name not in position:
            raise SourceValueError(f"table {table}: the source returned no column {field.name!r}; "
                                   f"run `cbm-etl sync-columns {table}`")
        src = batch.column(position[field.name])
        try:
            arrays.append(_cast(src, field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError, ValueError) as exc:
            i = _first_bad(src, field.type)
            where = _key_text(batch, keys, i) if i is not None else "some row"
            value = src[i].as_py() if i is not None else "?"
            raise SourceValueError(
                f"table {table}, column {field.name}, key {where}: value {value!r} does not fit "
                f"{field.type} without loss ({exc}). To carry it over: {_FIX}.") from None
        if not field.nullable and arrays[-1].null_count:
            i = pc.index(pc.is_null(arrays[-1]), True).as_py()
            raise SourceValueError(f"table {table}, column {field.name}, key {_key_text(batch, keys, i)}: NULL "
                                   f"(Progress unknown value ?) in a mandatory column. To carry it over: {_FIX}.")
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
