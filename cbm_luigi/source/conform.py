"""Bring driver batches to the catalog's Arrow schema — exactly, or with an error that names the value.

Drivers differ (Progress hands over Decimal and date; the SQLite stand-in hands over doubles and ISO text),
so every batch is cast to the schema derived from the catalog. Casts are `safe`: a value that would change
(overflow, truncated fraction, sub-millisecond digits, year outside 1..9999) stops the extract with table,
column, key and value. Arrow's safe casts still accept a few changes, refused here: a double with more decimals
than the column's scale (rounded), a time of day in a date column (dropped), a number other than 0/1 in a
logical column (made True) and a logical in a non-logical column (made 1).
"""
from __future__ import annotations

import logging
import math
import re
import struct
from collections.abc import Mapping
from datetime import date
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

from ..naming import SHOWN_VALUE_CHARS, shown_column, shown_value
from ..settings import warn_once
from ..types import MAX_DATE, MIN_DATE
from .errors import VALUE_FIX, SourceValueError

log = logging.getLogger(__name__)


DOUBLE_DIGITS = 15
MAX_DECIMAL128_CHARS = 38  # text of 38 - s characters has at most that many digits: _text_to_decimal


_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, ArithmeticError, ValueError)


def _first_bad(src: pa.Array, target: pa.DataType) -> tuple[int | None, Exception | None]:
    """The first value the cast refuses, and the cast's own words on it (those of the whole column can be about
    another row: found in review). By halving: the shortest refused prefix ends with it (a cast refuses a
    prefix as soon as it holds one value it refuses), in about log2(rows) casts instead of one per row."""
    lo, hi = 0, len(src)  # src[:lo] is taken, src[:hi] refused
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            _cast(src.slice(0, mid), target)
            lo = mid
        except _CAST_ERRORS:
            hi = mid
    try:
        _cast(src.slice(hi - 1, 1), target)
    except _CAST_ERRORS as exc:
        return hi - 1, exc
    return None, None


def _key_text(batch: pa.RecordBatch, keys: list[str], i: int, names: Mapping[str, str]) -> str:
    parts = [f"{names.get(k, k)}={_shown(batch.column(k), i)}" for k in keys if k in batch.schema.names]
    return ", ".join(parts) or f"row {i} of the batch"


def _shown(arr: pa.Array, i: int) -> str:
    """Value `i` for a message; as Arrow prints it when Python cannot hold it (a date of year 0 or 10000)."""
    try:
        return shown_value(arr[i].as_py())
    except (ValueError, OverflowError):
        return repr(pc.cast(arr.slice(i, 1), pa.string())[0].as_py())


_EPOCH = date(1970, 1, 1).toordinal()
_EPOCH_DAYS = (MIN_DATE.toordinal() - _EPOCH, MAX_DATE.toordinal() - _EPOCH)  # date32's own unit
_PER_SECOND = {"s": 1, "ms": 1000, "us": 10**6, "ns": 10**9}


def _out_of_range(arr: pa.Array) -> int | None:
    """Index of the first date or timestamp outside years 1..9999 (what OpenEdge SQL, DuckDB and SQL Server
    hold; Arrow takes year 0 or 10000 from the driver's text or struct without a word), else None. Time-zone
    timestamps are checked in UTC, as they are stored."""
    t = arr.type
    if pa.types.is_date32(t):
        lo, hi, raw = *_EPOCH_DAYS, arr.view(pa.int32())
    elif pa.types.is_timestamp(t):
        per = _PER_SECOND[t.unit]
        lo, hi = _EPOCH_DAYS[0] * 86400 * per, (_EPOCH_DAYS[1] + 1) * 86400 * per - 1
        raw = arr.view(pa.int64())
    else:
        return None
    low, high = pc.min_max(raw).values()
    if low.as_py() is None or (low.as_py() >= lo and high.as_py() <= hi):
        return None
    return pc.index(pc.or_(pc.less(raw, lo), pc.greater(raw, hi)), True).as_py()


def _all(mask: pa.Array) -> bool:
    """Every non-NULL value of `mask` is true. An empty or all-NULL column passes (`pc.all` alone answers NULL
    there, which would refuse a column of unknown values)."""
    return pc.all(mask, min_count=0).as_py()


def _cast(arr: pa.Array, target: pa.DataType) -> pa.Array:
    out = _convert(arr, target)
    if pa.types.is_floating(target) and not _all(pc.is_finite(out)):
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
        # digits exactly, so values needing more (integer digits + scale) are refused. Below that, a double is
        # taken only when it is the nearest double to a decimal of the column's scale (1.23 arrives as
        # 1.2299999999999999822 and is 1.23); 1.234 in a scale-2 column would be rounded, so it is refused.
        if not _all(pc.is_finite(arr)):
            raise pa.ArrowInvalid("non-finite double: the driver could not carry the source value")
        limit = 10.0 ** (DOUBLE_DIGITS - target.scale)
        if pc.any(pc.greater_equal(pc.abs(arr), limit)).as_py():
            raise pa.ArrowInvalid(f"a double above {limit:g} cannot carry {DOUBLE_DIGITS} exact digits")
        # The candidate decimal is whole / 10^scale, where whole is x * 10^scale rounded to an integer (under
        # 10^15, so the product is off by less than 0.5). Dividing two exact doubles rounds to the nearest
        # double once, so x is that decimal's nearest double exactly when the quotient is x.
        # pc.round(x, ndigits) cannot make this check: it scales by an inexact 10^-ndigits, and from 11
        # places on it refused valid values (1.1 came back as 1.099999999998).
        p10 = 10.0 ** target.scale
        if not _all(pc.equal(pc.divide(pc.round(pc.multiply(arr, p10)), p10), arr)):
            raise pa.ArrowInvalid(f"more than {target.scale} decimal places: the value would be rounded")
        return arr.cast(target, safe=True)  # Arrow's cast picks that same nearest decimal
    if pa.types.is_integer(arr.type) and pa.types.is_decimal(target):
        # SQLite hands over an integral NUMERIC as an integer; Arrow casts int64 only to a decimal of 19 integer
        # digits or more, so go through the widest decimal and let the safe cast check the precision
        return arr.cast(pa.decimal256(76, target.scale)).cast(target, safe=True)
    if pa.types.is_floating(target) and (pa.types.is_decimal(arr.type) or _kind(arr.type) == "text"):
        # Arrow's "safe" checks nothing here (a 17th digit is rounded away), and its decimal cast misses the
        # nearest float (-1234567.89 became -1234567.8900000001): a decimal goes through its exact text
        text = arr.cast(pa.string()) if pa.types.is_decimal(arr.type) else arr
        out = text.cast(target, safe=True)
        if not _all(pc.is_finite(out)):  # Arrow parses 'inf' and 'nan'; SQL Server's FLOAT holds neither
            raise pa.ArrowInvalid("not a finite number")
        _check_float_exact(text, out)
        return out
    if pa.types.is_decimal(target) and _kind(arr.type) == "text":
        return _text_to_decimal(arr, target)
    src, dst = _kind(arr.type), _kind(target)
    if src != dst and src != "text" and not (dst == "text" and src != "bool") and (src, dst) != ("number", "bool"):
        # Arrow would make a logical 1, a date its day number, a number a date: values of another kind
        raise pa.ArrowInvalid(f"a {arr.type} value in a {target} column")
    if (src, dst) == ("number", "bool") and not _all(pc.is_in(arr, pa.array([0, 1, None], arr.type))):
        raise pa.ArrowInvalid("a logical value is 0 or 1")  # Arrow makes any other number True
    if src == "text" and pa.types.is_integer(target) and not _all(pc.match_substring_regex(arr, r"^-?[0-9]+$")):
        raise pa.ArrowInvalid("not an integer written in decimal digits")  # Arrow reads '0x10' as 16
    out = arr.cast(target, safe=True)
    if pa.types.is_timestamp(arr.type) and pa.types.is_date(target) and not _all(
            pc.equal(out.cast(arr.type), arr)):
        raise pa.ArrowInvalid("a time of day in a date column would be dropped")
    return out


def _text_to_decimal(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """A number's text into a DECIMAL(p, s), exactly or refused, each value on its own. Arrow's parse is right
    for text of at most 38 - s characters without an exponent (it has at most that many digits, and rescaled
    to s they still fit a decimal128); past that it wraps around without a word: 39 nines became
    -20847100762815390390123822295304634369, 31 digits into a scale 10 another number, '9.9e38' a negative one,
    '1e-39' zero (found in reviews). Other text is checked here first: an exponent written out by Python's exact
    Decimal, trailing zeros after the point put aside, then no more integer digits than p - s, no more decimals
    than s, and only then parsed, within what Arrow parses right."""
    exponent = pc.match_substring_regex(arr, "[eE]")
    if _all(pc.and_(pc.less_equal(pc.utf8_length(arr), MAX_DECIMAL128_CHARS - target.scale), pc.invert(exponent))):
        return arr.cast(target, safe=True)
    text = arr
    if pc.any(exponent).as_py():
        text = pa.array([_plain(v) if e else v for v, e in zip(arr.to_pylist(), exponent.to_pylist())], pa.string())
    text = pc.replace_substring_regex(text, r"^([+-]?)\.0+$", r"\10")  # '.00' is 0, as Arrow reads it
    text = pc.replace_substring_regex(text, r"^([+-]?[0-9]*\.[0-9]*?)0+$", r"\1")
    number = pc.match_substring_regex(text, r"^[+-]?[0-9]*\.?[0-9]*$")  # other text: the parse refuses it

    def counted(pattern):
        return pc.if_else(number, pc.utf8_length(pc.replace_substring_regex(text, pattern, r"\1")), 0)
    if pc.any(pc.greater(counted(r"^[+-]?0*([0-9]*).*$"), target.precision - target.scale)).as_py():
        raise pa.ArrowInvalid(f"more integer digits than DECIMAL({target.precision},{target.scale}) holds")
    if pc.any(pc.greater(counted(r"^[^.]*\.?([0-9]*)$"), target.scale)).as_py():
        raise pa.ArrowInvalid(f"more than {target.scale} decimal places: the value would be rounded")
    return text.cast(target, safe=True)


_EXPONENT_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][+-]?[0-9]+")


def _plain(text: str | None) -> str | None:
    """A number's text with an exponent written out exactly (`1.5e3` -> `1500`), in ASCII digits and one sign
    each; else refused here, never left to Arrow's parse, which takes `1e+-2`, makes `1e-102` zero and crashes
    the process on `1e-10000000` (found in review). Past 100 digits from the point no column holds it."""
    if text is None:
        return None
    if not _EXPONENT_TEXT.fullmatch(text):
        raise pa.ArrowInvalid(f"{shown_value(text)} is not a number")
    try:
        d = Decimal(text)
    except ArithmeticError:  # an exponent of 10**18 or more: Python's Decimal holds none (found in review)
        raise pa.ArrowInvalid(f"{shown_value(text)} has more digits than any DECIMAL column holds") from None
    if d.is_zero():
        return "0"
    if abs(d.adjusted()) > 100:
        raise pa.ArrowInvalid(f"{shown_value(text)} has more digits than any DECIMAL column holds")
    return format(d, "f")


def _significant_digits(text: pa.Array) -> pa.Array:
    """The digits of each number's text that count: no sign, point, exponent, leading or trailing zeros."""
    t = pc.replace_substring_regex(pc.utf8_trim_whitespace(text), r"[eE].*$", "")
    t = pc.replace_substring_regex(t, r"0+$|0+\.0*$|\.0*$", "")
    return pc.replace_substring_regex(pc.replace_substring_regex(t, r"[^0-9]", ""), r"^0+", "")


def _check_float_exact(text: pa.Array, out: pa.Array) -> None:
    """A number's text (a decimal's, exact) made a float only when the float reads back as the same number: 0.1
    is 0.1; 12345678901234567.1 would be 12345678901234568 and 1e-400 would be 0.0: refused. Text with more
    significant digits than the float type holds (15 for a double, 6 for a REAL), or whose float is below the
    smallest normal one (zero included, for a text that is not zero), is compared one value at a time with the
    float's shortest form."""
    single = out.type.bit_width == 32
    digits = _significant_digits(text)
    smallest = 1.1754943508222875e-38 if single else 2.2250738585072014e-308
    check = pc.or_(pc.greater(pc.utf8_length(digits), 6 if single else DOUBLE_DIGITS),
                   pc.and_(pc.less(pc.abs(out), smallest), pc.greater(pc.utf8_length(digits), 0)))
    for i in (pc.indices_nonzero(pc.fill_null(check, False)).to_pylist() if pc.any(check).as_py() else []):
        number, value = text[i].as_py().strip(), out[i].as_py()
        try:
            same = value is not None and math.isfinite(value) and Decimal(number) == _shortest(value, single)
        except ArithmeticError:  # an exponent Python's Decimal cannot hold (10**18 or more)
            same = False
        if not same:
            raise pa.ArrowInvalid(f"{shown_value(number)} would be {value!r} as {out.type}")


def _shortest(value: float, single: bool) -> Decimal:
    """The shortest decimal that reads back as this float (a REAL's value, held in a Python float, is
    rounded to 32 bits on the way back)."""
    if not single:
        return Decimal(repr(value))
    for n in range(1, 10):
        text = f"{value:.{n}g}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == value:
            return Decimal(text)
    return Decimal(repr(value))


def _kind(t: pa.DataType) -> str:
    """Which values convert into which: text parses into anything (strictly) and anything but a logical has a
    text form; otherwise only a number becomes another number, or a 0/1 logical."""
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_date(t) or pa.types.is_timestamp(t):
        return "time"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "binary"  # arrow-odbc reads SQL BINARY(n) as fixed-size binary
    return str(t)


def _cast_alike(batch: pa.RecordBatch, schema: pa.Schema, position: dict[str, int]) -> dict[str, pa.Array]:
    """Columns converted together, a group per (driver type, catalog type): one set of compute calls over the
    columns laid end to end instead of one per column (on a 350-column table the calls' own cost is most of
    the conversion). A group that fails is left out: its columns are converted one by one, which names the bad
    one."""
    groups: dict[tuple[pa.DataType, pa.DataType], list[str]] = {}
    types = batch.schema.types
    for field in schema:
        i = position.get(field.name)
        if i is not None and not types[i].equals(field.type):
            groups.setdefault((types[i], field.type), []).append(field.name)
    done: dict[str, pa.Array] = {}
    for (_src, target), names in groups.items():
        if len(names) < 2:
            continue
        parts = [batch.column(position[n]) for n in names]
        try:
            joined = _cast(pa.concat_arrays(parts), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ArithmeticError, ValueError):
            continue
        at = 0
        for name, part in zip(names, parts):
            done[name] = joined.slice(at, len(part))
            at += len(part)
    return done


def _refused(column: str, fact: str, reason: str, value: pa.Array | None = None) -> SourceValueError:
    return SourceValueError(f"{fact}. To carry it over: {VALUE_FIX}.", column=column, fact=fact, reason=reason,
                            value=value)


def fits(value: pa.Array, target: pa.DataType) -> bool:
    """Whether the conform step takes these values into `target` (the extract asks it of a refused value and
    the type the catalog says now)."""
    try:
        _cast(value, target)
        return True
    except _CAST_ERRORS:
        return False


def _brief(exc: Exception) -> str:
    """Arrow's own words on a refused value, which quote it whole (`Failed to parse string: '<a CLOB>'`): cut
    as a value is (naming.shown_value), so the message stays short and its advice in etl.ETL_Log."""
    text = str(exc)
    return text if len(text) <= SHOWN_VALUE_CHARS else f"{text[:SHOWN_VALUE_CHARS]}..."


def _say_zoneless(table: str, column: str) -> None:
    """A DATETIME-TZ the driver hands over as a zone-less timestamp is taken as UTC: the SQLite ODBC driver
    converts the stored offset to UTC first. That is the driver's choice, not a fact of the data, so it is said
    (once per table and column in a process)."""
    warn_once(log, f"table {table}, column {column}: DATETIME-TZ values arrive without their offset (the driver "
                   f"reports the column as TIMESTAMP); they are taken as UTC. Check one row against Progress: if "
                   f"the hours are off, give the column a SourceExpression that hands over its text with the offset "
                   f"(OPERATIONS.md, DATETIME-TZ)")


def conform_batch(batch: pa.RecordBatch, schema: pa.Schema, *, table: str, keys: list[str],
                  names: Mapping[str, str] | None = None) -> pa.RecordBatch:
    """Cast each column to `schema` (by name, in schema order). Raises SourceValueError on the first loss, naming
    the column and the key by their Progress names (`names`: SQL name -> Progress name; TablePlan.source_names)."""
    names = names or {}

    def column(sql_name: str) -> str:
        return shown_column(names.get(sql_name, sql_name), sql_name)

    arrays = []
    position = {name: i for i, name in enumerate(batch.schema.names)}  # by-name lookup is linear in pyarrow
    converted = _cast_alike(batch, schema, position)
    for field in schema:
        if field.name not in position:
            raise SourceValueError(f"table {table}: the source returned no column {field.name!r}; "
                                   f"run `cbm-etl sync-columns {table}`")
        src = batch.column(position[field.name])
        if pa.types.is_timestamp(field.type) and field.type.tz and pa.types.is_timestamp(src.type) \
                and not src.type.tz:
            _say_zoneless(table, column(field.name))
        try:
            arrays.append(converted[field.name] if field.name in converted else _cast(src, field.type))
        except _CAST_ERRORS as exc:
            i, own = _first_bad(src, field.type)
            where = _key_text(batch, keys, i, names) if i is not None else "some row"
            value = _shown(src, i) if i is not None else "?"
            raise _refused(field.name, f"table {table}, column {column(field.name)}, key {where}: value {value} "
                                       f"does not fit {field.type} without loss ({_brief(own or exc)})", "type",
                           src.slice(i, 1) if i is not None else None) from None
        bad = _out_of_range(arrays[-1])
        if bad is not None:
            raise _refused(field.name, f"table {table}, column {column(field.name)}, key "
                                       f"{_key_text(batch, keys, bad, names)}: value {_shown(arrays[-1], bad)} is "
                                       f"outside years 1 to 9999, which the warehouse cannot hold"
                                       f"{' (in UTC)' if getattr(field.type, 'tz', None) else ''}", "range")
        if not field.nullable and arrays[-1].null_count:
            i = pc.index(pc.is_null(arrays[-1]), True).as_py()
            raise _refused(field.name, f"table {table}, column {column(field.name)}, key "
                                       f"{_key_text(batch, keys, i, names)}: NULL (Progress unknown value ?) in a "
                                       f"mandatory column", "null")
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
