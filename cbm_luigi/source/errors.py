"""Driver errors turned into short messages with the table and the likely fix; secrets masked."""
from __future__ import annotations

import re

from ..naming import shown_value
from ..settings import mask_secrets


class SourceError(RuntimeError):
    """A source failure an operator can act on. `transient` errors are worth a retry."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(mask_secrets(message))
        self.transient = transient


class SourceValueError(SourceError):
    """A value that cannot be carried over unchanged (too long, too precise, out of range). `column` (its SQL
    name), `fact` (the message without its advice), `value` and `reason` ('type': it does not fit the column's type,
    'null': NULL in a mandatory column, 'range': a date out of range) let the extract replace the advice when the
    catalog says the field itself changed in a way that explains the refusal (extract._changed_at_source)."""

    def __init__(self, message: str, *, column: str | None = None, fact: str | None = None,
                 reason: str | None = None, value=None):
        super().__init__(message)
        self.column, self.fact, self.reason = column, fact, reason
        self.value = value  # the refused value as the driver handed it over (a one-value Arrow array), if known


# what to do with a value that cannot be carried over (the end of every SourceValueError about one value)
VALUE_FIX = ("fix the row in Progress, or set a SourceExpression override for this column in config.ETL_Columns "
             "(e.g. CAST, SUBSTRING or CASE), or exclude it (IsExcluded = 1), then rerun the table")


class InvalidTextError(SourceValueError):
    """Text that is not UTF-8, found by the reader in result column `column` of the row `row` (result names; the
    bad text as bytes). The extract names the table's column and key (it knows them; the reader does not)."""

    def __init__(self, column: str, row: dict, raw: bytes):
        self.raw = raw
        super().__init__(f"column {column}: the value {self._shown()} is not UTF-8")
        self.column, self.row = column, row  # the result's column name (SourceValueError's own is the SQL name)

    def _shown(self) -> str:
        """The value around its first byte that is not UTF-8 (a CLOB is shown in part: see shown_value)."""
        try:
            self.raw.decode("utf-8")
            at = None
        except UnicodeDecodeError as exc:
            at = exc.start
        return shown_value(self.raw, at)

    def named(self, table: str, column: str, key: str) -> SourceValueError:
        return SourceValueError(
            f"table {table}, column {column}, key {key}: the value {self._shown()} is not UTF-8 text (a code-page "
            f"mix-up at the source? check the connection's IANAAppCodePage, 106 for UTF-8). To carry it over: "
            f"{VALUE_FIX}.")


def _state(*codes: str) -> str:
    """SQLSTATEs as drivers write them (`[08S01]` by pyodbc, `State: 08S01` by arrow-odbc, or first in the text),
    not anywhere: a driver's message quotes the statement back, and its numbers or words chose the advice (`IN (1
    193)` was a 32/64-bit mismatch, a column `network_id` a lost connection: found in review)."""
    return rf"(?:\[|\bState: |^)(?:{'|'.join(codes)})\b"


# the first rule whose pattern the driver's text matches gives the advice: phrases and codes of the drivers' own
# words, never a bare number or a common word (the statement quoted back holds any)
_RULES: list[tuple[re.Pattern, str, bool]] = [
    # first: a syntax error quotes the statement back, and its words would choose any advice below (a FilterClause
    # `motif <> 'access denied` with its quote forgotten was a missing GRANT: found in review)
    (_SYNTAX := re.compile(r"syntax error|unrecognized token|\(10713\)", re.I),
     "the source could not read the statement: check the table's FilterClause in config.ETL_Tables and its "
     "SourceExpression overrides in config.ETL_Columns (the driver quotes the part it could not read)", False),
    (re.compile(r"value exceeding its max length or precision", re.I),
     "a value is longer than the column's SQL width in Progress. Widen the width at the source with `dbtool` "
     "(option 1 'SQL Width & Date Scan w/Report', option 2 'SQL Width Scan w/Fix'), or set a SourceExpression "
     "override for the column in config.ETL_Columns. Truncation loses data: -SQLTruncateTooLarge / "
     "truncateTooLarge cut the value and the warehouse keeps the cut text; -SQLWidthUpdate ON (11.6+) widens "
     "the width but turns that truncation on for every connection that does not switch it off, so use it only "
     "with truncation off for the ETL connection", False),
    (re.compile(r"too large to be written into the allocated buffer", re.I),
     "a text or binary value is longer than the arrow-odbc reader's buffer for its column (nothing was cut). "
     "Exclude the column (IsExcluded = 1), read part of it with a SourceExpression override (e.g. SUBSTRING), "
     "or read the source with CBM_ODBC_READER=pyodbc, which fetches long values whole", False),
    (re.compile(r"year -?\d+ is out of range", re.I),
     "a DATE or TIMESTAMP value is outside years 1 to 9999, which the warehouse cannot hold (pyodbc cannot even "
     "read it into Python). The arrow-odbc reader (CBM_ODBC_READER=arrow-odbc) names its column and key; or find "
     "it with `SELECT ... FROM PUB.<table> WHERE <column> < '0001-01-01' OR <column> > '9999-12-31'` for each "
     "date column. Then fix the row in Progress, or give the column a SourceExpression override (e.g. CASE) or "
     "exclude it (IsExcluded = 1), and rerun the table", False),
    (re.compile(r"invalid UTF-8", re.I),
     "a text value is not UTF-8 (bytes in another code page at the source?): check the connection's "
     "IANAAppCodePage (106 for UTF-8) in CBM_SOURCE_ODBC; then fix the row in Progress, or set a SourceExpression "
     "override for the column, or exclude it (IsExcluded = 1), and rerun the table", False),
    (re.compile(r"\(7512\)|access denied|authorization failed", re.I),
     "the ODBC user may not read this table: GRANT SELECT ON PUB.<table> TO <etl user> in OpenEdge SQL", False),
    (re.compile(rf"{_state('IM003')}|system error 193|wrong ELF class", re.I),
     "the ODBC driver could not be loaded: 32/64-bit mismatch or wrong driver path in CBM_SOURCE_ODBC", False),
    (re.compile(rf"{_state('IM002')}|data source name not found|can't open lib", re.I),
     "no such ODBC driver or DSN: check `odbcinst -q -d` and the DRIVER= part of the connection string", False),
    (re.compile(rf"{_state('28000')}|login failed|invalid (user|password)", re.I),
     "login failed: check UID/PWD in .env (CBM_SOURCE_ODBC)", False),
    (re.compile(r"unicode converter buffer overflow", re.I),
     "code page mismatch: set IANAAppCodePage=106 (UTF-8) in the connection string", False),
    (re.compile(r"lock (wait )?time ?out|record lock|lock table", re.I),
     "waited on a record lock: read with isolation READ UNCOMMITTED (CBM_SOURCE_ISOLATION) or rerun later", True),
    (re.compile(rf"{_state('HYT00', 'HYT01')}|timeout expired|timed out", re.I),
     "the query or login timed out: raise CBM_QUERY_TIMEOUT_S or QueryTimeout/LoginTimeout, or rerun", True),
    (re.compile(rf"{_state('08S01', '08001', '08004')}|communication link|connection (reset|refused|lost)|"
                r"network (error|failure|is unreachable|unreachable)", re.I),
     "the connection to the Progress server failed: check HOST/PORT and that the SQL broker runs", True),
    (re.compile(rf"no such table|table/view/synonym not found|\(7519\)|{_state('42S02')}", re.I),
     "the table does not exist in PUB: check config.ETL_Tables.TableName (`cbm-etl discover` lists tables)", False),
    (re.compile(rf"no such column|column not found|{_state('42S22')}|\(7518\)", re.I),
     "no such column at the source: run `cbm-etl sync-columns <table>`, or fix FilterClause / a "
     "SourceExpression that names it", False),
]


def translate(exc: BaseException, *, table: str | None = None, action: str = "read") -> SourceError:
    """Wrap a driver exception: what failed, the likely fix, and the driver's own text (masked)."""
    if isinstance(exc, SourceError):
        return exc
    text = mask_secrets(" ".join(str(a) for a in getattr(exc, "args", ()) if a) or repr(exc))
    where = f"source table PUB.{table}" if table else "source"
    for pattern, fix, transient in _RULES:
        if pattern.search(text):
            fix = fix.replace("<table>", table) if table else fix
            if pattern is _SYNTAX and action != "extract":  # a set-up statement, a catalog query: not the config
                fix = "the source could not read the statement (the driver quotes the part it could not read)"
            return SourceError(f"{where}: {action} failed: {fix}. Driver said: {text}", transient=transient)
    return SourceError(f"{where}: {action} failed. Driver said: {text}")
