"""OpenEdge SQL text: identifier quoting, the extract SELECT and the catalog queries.

The reader layer executes what this module writes; the warehouse never sees it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

OWNER = "PUB"
OPENEDGE_MAX_IDENTIFIER = 32


def quote(name: str) -> str:
    """Double-quote a Progress identifier (hyphens, reserved words and mixed case all survive)."""
    return '"' + name.replace('"', '""') + '"'


def source_alias(alias: str) -> str:
    """The name a column is read under: its SQL-safe name, or a 32-character stand-in when that name is longer.

    OpenEdge identifiers (aliases too) stop at 32 characters, and a SQL-safe name can pass them (a collision
    suffix `_2` on a 32-character name, an operator's SqlName). The stand-in keeps the name's start and adds a
    hash of the whole name; the readers rename it back (`result_names`), so no other layer sees it.
    """
    if len(alias) <= OPENEDGE_MAX_IDENTIFIER:
        return alias
    digest = hashlib.sha1(alias.encode("utf-8")).hexdigest()[:12]
    return f"{alias[:OPENEDGE_MAX_IDENTIFIER - 13]}_{digest}"


def result_names(names: list[str], wanted: list[str]) -> list[str]:
    """`names` as read, with each stand-in of `source_alias` renamed back to its name in `wanted`."""
    back = {source_alias(w): w for w in wanted if source_alias(w) != w}
    return [back.get(n, n) for n in names] if back else list(names)


@dataclass(frozen=True)
class SourceColumn:
    """One column to read: the Progress name, the SQL-safe alias and an optional operator expression."""
    name: str
    alias: str
    expression: str | None = None  # e.g. SUBSTRING("desc", 1, 2000) — replaces the plain column reference

    def select_item(self, ref: str | None = None) -> str:
        """`<expression or column> AS <alias>`; `ref` is how the dialect names the plain column."""
        return f"{self.expression or ref or quote(self.name)} AS {quote(source_alias(self.alias))}"


@dataclass(frozen=True)
class Window:
    """Incremental window: rows modified at or after `since` (a date column compares on dates)."""
    column: str
    since: datetime
    precision: str = "date"  # 'date' | 'datetime'
    time_of_day_column: str | None = None  # seconds since midnight, next to a date-only column


class OpenEdgeDialect:
    """OpenEdge SQL as documented (SQL Reference 11.x/12.x).

    Window values always go as parameters, bound as ISO text and converted by the server (`CAST(? AS DATE)`),
    because the Arrow ODBC reader binds text parameters only.
    """

    name = "openedge"
    ping_sql = "SELECT fld FROM SYSPROGRESS.SYSCALCTABLE"  # OpenEdge's one-row table: is the connection alive?

    def date_param(self) -> str:
        return "CAST(? AS DATE)"

    def timestamp_param(self) -> str:
        return "CAST(? AS TIMESTAMP)"

    def table_ref(self, table: str) -> str:
        return f"{OWNER}.{quote(table)}"

    def column_ref(self, table: str | None, name: str) -> str:
        """A column of the table as the SELECT names it."""
        return quote(name)

    def window_predicate(self, w: Window, table: str | None = None) -> tuple[str, list[str]]:
        col = self.column_ref(table, w.column)
        if w.precision == "datetime":
            return f"{col} >= {self.timestamp_param()}", [w.since.strftime("%Y-%m-%d %H:%M:%S")]
        day = w.since.date().isoformat()
        if w.time_of_day_column:
            # dat_mod is a date and heure the seconds since midnight: rows after day D, or on D from second S
            # (a NULL heure counts as modified). The range on dat_mod stays a top-level AND term so the server
            # can use the dat_mod index; an OR at the top would make it scan the table.
            secs = w.since.hour * 3600 + w.since.minute * 60 + w.since.second
            tod = self.column_ref(table, w.time_of_day_column)
            return (f"{col} >= {self.date_param()} AND ({col} > {self.date_param()} OR {tod} >= {secs} "
                    f"OR {tod} IS NULL)", [day, day])
        return f"{col} >= {self.date_param()}", [day]

    def extract_sql(self, table: str, columns: list[SourceColumn], window: Window | None = None,
                    filter_clause: str | None = None) -> tuple[str, list[str]]:
        """One SELECT with explicit aliased columns; returns (sql, parameters)."""
        if not columns:
            raise ValueError(f"table {table}: no column to extract (all excluded?) — check config.ETL_Columns")
        where, params = [], []
        if window is not None:
            pred, params = self.window_predicate(window, table)
            where.append(pred)
        if filter_clause and filter_clause.strip():
            where.append(f"({filter_clause.strip()}\n)")  # a trailing `-- comment` ends at the line end
        sql = "SELECT " + ", ".join(c.select_item(self.column_ref(table, c.name)) for c in columns) + " FROM " + \
            self.table_ref(table)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return sql, params

    # -- catalog (SYSPROGRESS) ---------------------------------------------------------------------------
    def tables_sql(self) -> str:
        return ("SELECT tbl FROM SYSPROGRESS.SYSTABLES WHERE owner = 'PUB' AND tbltype = 'T' ORDER BY tbl")

    def columns_sql(self) -> str:
        return ("SELECT col, coltype, width, scale, nullflag, array_extent, label, description, display_order "
                "FROM SYSPROGRESS.SYSCOLUMNS_FULL WHERE owner = 'PUB' AND tbl = ? ORDER BY display_order")

    def unique_index_sql(self) -> str:
        return ("SELECT idxname, idxseq, colname, active FROM SYSPROGRESS.SYSINDEXES "
                "WHERE tblowner = 'PUB' AND tbl = ? AND idxtype = 'U' ORDER BY idxname, idxseq")

    def count_sql(self, table: str) -> str:
        return f"SELECT COUNT(*) FROM {self.table_ref(table)}"


class SqliteStandInDialect(OpenEdgeDialect):
    """The demo stand-in: the same SQL, but SQLite keeps dates as ISO text, so parameters compare as text."""

    name = "sqlite-standin"
    ping_sql = "SELECT 1"

    def date_param(self) -> str:
        return "?"

    def timestamp_param(self) -> str:
        return "?"

    def column_ref(self, table: str | None, name: str) -> str:
        """Qualified by its table: SQLite takes a double-quoted name that is no column for a string, so a column
        dropped at the source loaded as its own name (`'email'` in every row) where OpenEdge says 42S22. A
        FilterClause or SourceExpression is the operator's text and stays as written."""
        return f"{self.table_ref(table)}.{quote(name)}" if table else quote(name)


def dialect_for(name: str) -> OpenEdgeDialect:
    return {"openedge": OpenEdgeDialect, "sqlite-standin": SqliteStandInDialect}[name]()
