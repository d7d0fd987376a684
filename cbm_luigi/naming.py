"""SQL-safe table and column names: the one place where source names are rewritten.

OpenEdge names may hold `-`, `#`, `$`, `%`, `&`, accented letters and reserved words; they match
case-insensitively. Every warehouse name is produced here so that DuckDB and SQL Server get the same names.
The dialect classes still quote every identifier; these rules make the names comfortable to use unquoted.

Rules of `sql_safe_name` (applied in this order, deterministic, idempotent on their own output):

1. Strip surrounding blanks; strip accents (Unicode NFKD, combining marks dropped: `é` -> `e`).
2. Replace every character outside `[A-Za-z0-9_]` with `_` (runs are NOT collapsed: `a--b` != `a-b`).
3. Lower-case.
4. Empty -> `col`.
5. Leading digit -> prefix `c_` (`1st` -> `c_1st`).
6. Reserved word in T-SQL or DuckDB (`RESERVED_WORDS`; common names such as `date` stay as they are) -> suffix `_` (`order` -> `order_`).
7. Starts with `_etl_` (the prefix of the pipeline's technical columns) -> prefix `src` (`src_etl_x`).
8. Longer than `MAX_NAME_LENGTH` (128, SQL Server's limit) -> first 119 chars + `_` + first 8 hex digits
   of sha1(original name, UTF-8).

Collisions within one table (`resolve_column_names`), independent of the input order:

9. Among originals sharing a safe name, the one already equal to its safe name wins it, then the smallest
   original (code-point order); a safe name also in `reserved` is won by nobody.
10. The others get `_2`, `_3`, ... in that order, skipping every name already taken (safe names of the
    table, `reserved`, earlier suffixes); the base is cut so the result stays <= `MAX_NAME_LENGTH`.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable

MAX_NAME_LENGTH = 128
ETL_PREFIX = "_etl_"

# SQL Server reserved keywords (learn.microsoft.com "Reserved Keywords (Transact-SQL)", complete list).
_TSQL = """
ADD ALL ALTER AND ANY AS ASC AUTHORIZATION BACKUP BEGIN BETWEEN BREAK BROWSE BULK BY CASCADE CASE CHECK
CHECKPOINT CLOSE CLUSTERED COALESCE COLLATE COLUMN COMMIT COMPUTE CONSTRAINT CONTAINS CONTAINSTABLE CONTINUE
CONVERT CREATE CROSS CURRENT CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP CURRENT_USER CURSOR DATABASE DBCC
DEALLOCATE DECLARE DEFAULT DELETE DENY DESC DISK DISTINCT DISTRIBUTED DOUBLE DROP DUMP ELSE END ERRLVL ESCAPE
EXCEPT EXEC EXECUTE EXISTS EXIT EXTERNAL FETCH FILE FILLFACTOR FOR FOREIGN FREETEXT FREETEXTTABLE FROM FULL
FUNCTION GOTO GRANT GROUP HAVING HOLDLOCK IDENTITY IDENTITY_INSERT IDENTITYCOL IF IN INDEX INNER INSERT
INTERSECT INTO IS JOIN KEY KILL LEFT LIKE LINENO LOAD MERGE NATIONAL NOCHECK NONCLUSTERED NOT NULL NULLIF OF
OFF OFFSETS ON OPEN OPENDATASOURCE OPENQUERY OPENROWSET OPENXML OPTION OR ORDER OUTER OVER PERCENT PIVOT PLAN
PRECISION PRIMARY PRINT PROC PROCEDURE PUBLIC RAISERROR READ READTEXT RECONFIGURE REFERENCES REPLICATION
RESTORE RESTRICT RETURN REVERT REVOKE RIGHT ROLLBACK ROWCOUNT ROWGUIDCOL RULE SAVE SCHEMA SECURITYAUDIT SELECT
SEMANTICKEYPHRASETABLE SEMANTICSIMILARITYDETAILSTABLE SEMANTICSIMILARITYTABLE SESSION_USER SET SETUSER SHUTDOWN
SOME STATISTICS SYSTEM_USER TABLE TABLESAMPLE TEXTSIZE THEN TO TOP TRAN TRANSACTION TRIGGER TRUNCATE
TRY_CONVERT TSEQUAL UNION UNIQUE UNPIVOT UPDATE UPDATETEXT USE USER VALUES VARYING VIEW WAITFOR WHEN WHERE
WHILE WITH WITHIN WRITETEXT
"""
# DuckDB 2.0: SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category = 'reserved'.
_DUCKDB = """
ALL ANALYSE ANALYZE AND ANY ARRAY AS ASC ASYMMETRIC BOTH CASE CAST CHECK COLLATE COLUMN CONSTRAINT CREATE
DEFAULT DEFERRABLE DESC DESCRIBE DISTINCT DO ELSE END EXCEPT FALSE FETCH FOR FOREIGN FROM GROUP HAVING IN
INITIALLY INTERSECT INTO LAMBDA LATERAL LEADING LIMIT NOT NULL OFFSET ON ONLY OR ORDER PIVOT PIVOT_LONGER
PIVOT_WIDER PLACING PRIMARY QUALIFY REFERENCES RETURNING SELECT SHOW SOME SUMMARIZE SYMMETRIC TABLE THEN TO
TRAILING TRUE UNION UNIQUE UNPIVOT USING VARIADIC WHEN WHERE WINDOW WITH
"""
# SQL-92 reserved words as listed by Microsoft under "ODBC reserved keywords" (not already above).
_ANSI = """
ABSOLUTE ACTION ADA ALLOCATE ARE ASSERTION AT AVG BIT BIT_LENGTH BOTH CASCADED CAST CATALOG CHAR CHAR_LENGTH
CHARACTER CHARACTER_LENGTH COLLATION CONNECT CONNECTION CONSTRAINTS CORRESPONDING COUNT DATE DAY DEC DECIMAL
DEFERRABLE DEFERRED DESCRIBE DESCRIPTOR DIAGNOSTICS DISCONNECT DOMAIN EXCEPTION EXTRACT FALSE FIRST FLOAT
FORTRAN FOUND GET GLOBAL GO HOUR IMMEDIATE INCLUDE INDICATOR INITIALLY INPUT INSENSITIVE INT INTEGER INTERVAL
ISOLATION LANGUAGE LAST LEADING LEVEL LOCAL LOWER MATCH MAX MIN MINUTE MODULE MONTH NAMES NATURAL NCHAR NEXT
NO NONE NUMERIC OCTET_LENGTH ONLY OUTPUT OVERLAPS PAD PARTIAL PASCAL POSITION PREPARE PRESERVE PRIOR
PRIVILEGES REAL RELATIVE ROWS SCROLL SECOND SECTION SESSION SIZE SMALLINT SPACE SQL SQLCA SQLCODE SQLERROR
SQLSTATE SQLWARNING SUBSTRING SUM TEMPORARY TIME TIMESTAMP TIMEZONE_HOUR TIMEZONE_MINUTE TRAILING TRANSLATE
TRANSLATION TRIM TRUE UNKNOWN UPPER USAGE USING VALUE VARCHAR WHENEVER WORK WRITE YEAR ZONE
"""
RESERVED_WORDS: frozenset[str] = frozenset((_TSQL + _DUCKDB).split())

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def sql_safe_name(name: str) -> str:
    """Normalise one source name (rules 1-8 of the module docstring)."""
    decomposed = unicodedata.normalize("NFKD", name.strip())
    s = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    s = _UNSAFE.sub("_", s).lower() or "col"
    if s[0].isdigit():
        s = "c_" + s
    if s.upper() in RESERVED_WORDS:
        s += "_"
    if s.startswith(ETL_PREFIX):
        s = "src" + s
    if len(s) > MAX_NAME_LENGTH:
        digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
        s = f"{s[:MAX_NAME_LENGTH - 9]}_{digest}"
    return s


def _with_suffix(base: str, suffix: str) -> str:
    """`base + suffix`, cutting the base so the result fits MAX_NAME_LENGTH."""
    return base[:MAX_NAME_LENGTH - len(suffix)] + suffix


def resolve_column_names(names: list[str], reserved: Iterable[str] = ()) -> dict[str, str]:
    """Map each original name (input order kept) to a safe name unique within the table (rules 9-10).

    `reserved` holds names generated elsewhere (array elements such as `zal_1`, technical columns) that no
    source column may take. Comparisons are case-insensitive. The result does not depend on input order.
    """
    originals = list(dict.fromkeys(names))
    safe = {n: sql_safe_name(n) for n in originals}
    blocked = {r.lower() for r in reserved}
    taken = blocked | set(safe.values())  # every base name is off limits for suffixes
    groups: dict[str, list[str]] = {}
    for n in originals:
        groups.setdefault(safe[n], []).append(n)
    result: dict[str, str] = {}
    losers: list[tuple[str, str]] = []
    for base in sorted(groups):
        members = sorted(groups[base], key=lambda n: (n != base, n))
        if base not in blocked:
            result[members.pop(0)] = base
        losers.extend((base, n) for n in members)
    for base, n in losers:  # already in (base, preference) order
        i = 2
        while (candidate := _with_suffix(base, f"_{i}")) in taken:
            i += 1
        taken.add(candidate)
        result[n] = candidate
    return {n: result[n] for n in originals}


def free_array_name(base: str, extent: int, taken: set[str]) -> str:
    """`base`, or `base_2`, `base_3` ... : the first name that, with its element names (`<name>_1` ...), is not in
    `taken` (lower-case names, updated with the ones chosen)."""
    candidate, i = base, 2
    while candidate.lower() in taken or any(e.lower() in taken for e in array_element_names(candidate, extent)):
        candidate, i = _with_suffix(base, f"_{i}"), i + 1
    taken.add(candidate.lower())
    taken.update(e.lower() for e in array_element_names(candidate, extent))
    return candidate


_FILE_SAFE = re.compile(r"[A-Za-z0-9_#$%&-]+")


def cache_file_stem(table: str) -> str:
    """The name a table's batch files carry in the cache. Progress table names (letters, digits, `-_#$%&`) are
    file-safe as they are, so each table keeps its own: `art-ext` and `art_ext` share a SQL-safe name and would
    otherwise share one extract file. Anything else gets its SQL-safe name and a hash of the original."""
    if _FILE_SAFE.fullmatch(table):
        return table
    return f"{sql_safe_name(table)}-{hashlib.md5(table.encode()).hexdigest()[:8]}"


def shown_column(name: str, sql_name: str) -> str:
    """A column as messages name it: by its Progress name, which the operator fixes at the source and finds in
    config.ETL_Columns, with its warehouse name when that differs (`prix-vte` may own `prix_vte` while a field
    `prix_vte` added later became `prix_vte_2`: the SQL name alone points at the other column)."""
    return name if name == sql_name else f"{name} ({sql_name} in the warehouse)"


SHOWN_VALUE_CHARS = 120


def shown_value(value, at: int | None = None, limit: int = SHOWN_VALUE_CHARS) -> str:
    """A value as messages show it: its repr, cut to about `limit` characters around position `at` of the value
    (the bad byte), else from its start, saying how long it is. A whole CLOB in a message pushed the advice after
    it out of etl.ETL_Log, which keeps runlog.MAX_ERROR characters, and made a log line of megabytes."""
    shown = repr(value)
    if len(shown) <= limit:
        return shown
    size = f"{len(value):,} {'bytes' if isinstance(value, (bytes, bytearray)) else 'characters'}" \
        if isinstance(value, (str, bytes, bytearray)) else f"{len(shown):,} characters shown"
    if at is None or not isinstance(value, (str, bytes, bytearray)):
        return f"{shown[:limit]}... ({size})"
    start = max(0, at - limit // 3)
    part = repr(value[start:start + limit // 2])
    return f"{'...' if start else ''}{part}{'...' if start + limit // 2 < len(value) else ''} ({size}; the part " \
        f"from position {start + 1})"


def array_element_names(sql_name: str, extent: int) -> list[str]:
    """Column names for the elements of an EXTENT field: `zal` -> `zal_1` ... `zal_5` (1-based, as ABL)."""
    return [_with_suffix(sql_name, f"_{i}") for i in range(1, extent + 1)]
