"""A table's load plan, built from config.ETL_Tables / config.ETL_Columns: what to read and what comes out.

Plain data, no I/O: the source layer turns it into a SELECT, the transform into stage columns, the warehouse
into DDL and MERGE.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo

import pyarrow as pa

from .naming import MAX_NAME_LENGTH, array_element_names, shown_value
from .settings import warn_once
from .source.dialect import SourceColumn, Window
from .source.dialect import quote as oe_quote
from .types import ColumnType, UnsupportedTypeError, map_openedge_type


class ConfigError(ValueError):
    """The configuration cannot work; the message says which row and what to change."""


class UnknownColumnError(ConfigError):
    """A name that is no active column of the table."""


# what building a plan raises when the configuration cannot make one (UnsupportedTypeError: a column of a type the
# product cannot map, whose row sync-columns writes all the same so it can be overridden)
PLAN_ERRORS = (ConfigError, UnsupportedTypeError)


@dataclass(frozen=True)
class PlanColumn:
    name: str  # as in Progress
    sql_name: str
    ctype: ColumnType
    nullable: bool = True
    extent: int = 0
    array_mode: str = "split"  # 'split' -> <name>_1..<name>_n ; 'single' -> one ;-separated string
    expression: str | None = None
    override: bool = False  # IsOverride: the operator declared the type, the catalog's is not the reference

    @property
    def is_split_array(self) -> bool:
        return self.extent > 0 and self.array_mode == "split"

    def extract_type(self) -> pa.DataType:
        # an EXTENT field arrives as one string, whatever the element type
        return pa.string() if self.extent > 0 else self.ctype.arrow_type()

    def output_columns(self) -> list[tuple[str, ColumnType, bool]]:
        """(sql name, type, nullable) of the column(s) this source column becomes in stg/ods."""
        if self.extent > 0:
            elem = ColumnType("string", width=self.ctype.width)
            if self.array_mode == "split":
                return [(n, elem, True) for n in array_element_names(self.sql_name, self.extent)]
            return [(self.sql_name, elem, True)]
        return [(self.sql_name, self.ctype, self.nullable)]


log = logging.getLogger(__name__)
DEFAULT_LOOKBACK = "1 day"  # config.ETL_Tables.LookbackInterval's column default (sql/*/02_config.sql)
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(minute|min|hour|h|day|d|week)s?\s*$", re.I)


def parse_interval(text: str | None, *, table: str) -> timedelta:
    """'2 days', '6 hours', '30 minutes'; '0 minutes' for none. Empty (a cell cleared in a grid: the column refuses
    NULL) is the column's default, DEFAULT_LOOKBACK, said once: read as none, it started the window at the last
    load's start without a word, and rows stamped by an ERP client whose clock is behind were skipped until the
    next full load (found in review)."""
    if text is None or not str(text).strip():
        warn_once(log, f"config.ETL_Tables[{table}].LookbackInterval is empty: the default {DEFAULT_LOOKBACK!r} is "
                       f"used (write it, or '0 minutes' for no lookback)")
        text = DEFAULT_LOOKBACK
    m = _INTERVAL.match(str(text))
    if not m:
        raise ConfigError(f"config.ETL_Tables[{table}].LookbackInterval = {text!r}: write e.g. '1 day', "
                          "'6 hours' or '30 minutes'")
    n, unit = float(m.group(1)), m.group(2).lower()
    return {"minute": timedelta(minutes=n), "min": timedelta(minutes=n), "hour": timedelta(hours=n),
            "h": timedelta(hours=n), "day": timedelta(days=n), "d": timedelta(days=n),
            "week": timedelta(weeks=n)}[unit]


@dataclass
class TablePlan:
    table: str
    destination: str
    keys: list[str]  # SQL names
    columns: list[PlanColumn]
    has_timestamps: bool = True
    date_col: str | None = None  # Progress name
    date_precision: str = "date"
    time_of_day_col: str | None = None  # Progress name
    lookback: timedelta = field(default_factory=timedelta)
    filter_clause: str | None = None
    is_dimension: bool = False
    is_critical: bool = False
    priority: int = 100
    sla_hours: float | None = None
    last_success_ts: datetime | None = None
    # etl.ETL_TableState (None before it was recorded): the extract_shape ods's hashes were last written under and
    # the columns that merge wrote (targets.record_merged), and the last validated extract's start in UTC with
    # the source clock's offset from UTC then, in minutes (targets.record_validated)
    merged_shape: str | None = None
    merged_columns: list[str] | None = None
    last_success_clock: tuple[datetime | None, int | None] = (None, None)

    def by_name(self, name: str) -> PlanColumn:
        """The column a configuration field names: by its Progress name (case ignored, as Progress does; an exact
        match first), or by its SQL name. A name that is one column's Progress name and another's SQL name is
        refused: `prix_vte` may be the SQL name of `prix-vte`, meant so in the configuration, when a field
        `prix_vte` is added at the source (found in review: the window moved to the new, empty field)."""
        def match(attr: str) -> PlanColumn | None:
            for same in (lambda v: v == name, lambda v: v.lower() == name.lower()):
                for c in self.columns:
                    if same(getattr(c, attr)):
                        return c
            return None
        progress, sql = match("name"), match("sql_name")
        if progress is not None and sql is not None and progress is not sql:
            raise ConfigError(f"{name!r} names two columns of table {self.table}, the Progress field "
                              f"{progress.name!r} and {sql.name!r} by its SQL name: write {sql.name!r} for the "
                              f"second, or {progress.sql_name!r} (its SQL name) for the first")
        if progress is None and sql is None:
            raise UnknownColumnError(f"table {self.table}: no active column {name!r} in config.ETL_Columns "
                                     f"(run `cbm-etl sync-columns {self.table}`, or check IsExcluded)")
        return progress or sql

    def by_sql_name(self, sql_name: str) -> PlanColumn:
        return next(c for c in self.columns if c.sql_name == sql_name)

    def source_names(self) -> dict[str, str]:
        """SQL name -> Progress name of each column read: how messages name a column and a key (naming.shown_column)."""
        return {c.sql_name: c.name for c in self.columns}

    @property
    def key_names(self) -> list[str]:
        """The key columns by their Progress names, as PrimaryKeyCols holds them (messages name them so)."""
        return [self.by_sql_name(k).name for k in self.keys]

    def source_columns(self) -> list[SourceColumn]:
        return [SourceColumn(c.name, c.sql_name, c.expression) for c in self.columns]

    def extract_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.sql_name, c.extract_type(), nullable=c.nullable) for c in self.columns])

    def output_columns(self) -> list[tuple[str, ColumnType, bool]]:
        return [oc for c in self.columns for oc in c.output_columns()]

    def extract_shape(self) -> str:
        """A fingerprint of the configuration a batch file is made under: the columns read (names, kinds of
        type, arrays, expressions), the filter, the modification columns (`_etl_source_ts`), the ods table. The file's hashdiff covers
        exactly those columns, so a batch extracted or staged under another shape is stale: merged after a
        config change (a column excluded, a type overridden) it would write hashes over columns it does not
        write, and ods would never see the difference again (found in review)."""
        # not the width, scale or NULL flag that sync-columns refreshes from the catalog (a dbtool SQL-width fix):
        # they change no value and no hash (decimals hash without trailing zeros), and ods widens by itself
        # nor the columns' order (a field moved in the Data Dictionary): the hashdiff sorts them by name
        parts = {"columns": sorted([c.sql_name, c.name, c.ctype.kind, c.extent, c.array_mode, c.expression]
                                   for c in self.columns),
                 "filter": self.filter_clause, "modified": [self.date_col, self.date_precision, self.time_of_day_col],
                 "destination": self.destination}
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    def window(self, mode: str, zone: tzinfo | None = None) -> tuple[Window | None, str]:
        """The incremental window for `mode`, and why there is none when there is none (for the log). `zone`:
        the one this run counts the source's local time in (None: this process's); it must be the one the loads
        before counted in, whatever the mode (the extract's start is compared with theirs)."""
        self.check_same_clock(zone)
        if mode == "full":
            return None, "full mode"
        if not self.has_timestamps or not self.date_col:
            return None, "no modification date configured (HasTimestamps = 0): incremental falls back to full"
        if self.last_success_ts is None:
            return None, "never loaded successfully: incremental falls back to full"
        if self.merged_shape is not None and self.merged_shape != self.extract_shape():
            # a column added to ods would stay NULL (or an excluded one keep its old hash) in every row outside the
            # window, until a full load saw them all changed at once: SCD2 would version every member then
            return None, ("the configuration changed since the last load (a column added or excluded, a type, an "
                          "expression, the filter), or what ods holds is not known to match it (ods lost a table or "
                          "columns, an upgrade): incremental reads in full once, so every row is loaded under it")
        since = self.last_success_ts - self.lookback
        tod = self.by_name(self.time_of_day_col).name if self.time_of_day_col else None
        return Window(self.by_name(self.date_col).name, since, self.date_precision, tod), (
            f"rows with {self.date_col} >= {since:%Y-%m-%d %H:%M:%S} (last success minus lookback)")

    def merge_mode(self, mode: str, window: Window | None) -> str:
        """How the batch merges: 'full' soft-deletes the keys it lacks, so only a batch that read every row for
        that purpose does: full mode, a table without a modification date, one never loaded. A read made full by
        a configuration change (window()) merges as incremental: it brings every row under the new
        configuration, and deletions are left to the next full (a FilterClause narrowed by mistake and restored
        the next day soft-deleted rows at once, and SCD2 versioned them all back: found in review)."""
        if window is not None or (mode != "full" and self.has_timestamps and self.date_col
                                  and self.last_success_ts is not None):
            return "incremental"
        return "full"

    def window_widened(self, read_since: str | None, mode: str, zone: tzinfo | None = None) -> bool:
        """Whether the window `mode` asks for now starts before the one an extract read (`read_since`, its
        metadata's `since`: None when it read every row): LastSuccessTs moved back or cleared by hand to read rows
        again, a longer LookbackInterval. Such an extract lacks rows the operator wants; a rerun reads the table
        again, whatever step its batch stopped at, and clean-cache need not keep it (found in review)."""
        window, _why = self.window(mode, zone)
        if read_since is None:
            return False
        return window is None or window.since < datetime.fromisoformat(read_since)

    def check_same_clock(self, zone: tzinfo | None) -> None:
        """This run must count local time in the zone the loads before it did: LastSuccessTs bounds its window and
        its own start becomes the next one. Seen in this run's zone, the last validated extract's start must have
        the offset from UTC it had then (the zone's rules at that instant: daylight saving is no change). Both are
        recorded by the validation alone, so LastSuccessTs moved by hand to read a window again is no zone change.
        A cron with another TZ refused every table as outdated; a zone ahead would move LastSuccessTs past rows
        not read yet, and the next window would skip them (found in review)."""
        at, then = self.last_success_clock
        if at is None or then is None:
            return
        now = round(at.replace(tzinfo=timezone.utc).astimezone(zone).utcoffset().total_seconds() / 60)
        if now != then:
            def utc(m: int) -> str:
                return f"UTC{'+' if m >= 0 else '-'}{abs(m) // 60:02d}:{abs(m) % 60:02d}"
            configured = getattr(zone, "key", None)  # CBM_SOURCE_TIMEZONE's name; None: the host's local time
            if configured:
                # the advice to set it would change nothing: it is set, and is what differs (found in review)
                cause = (f"CBM_SOURCE_TIMEZONE={configured} is not the zone the earlier runs counted in (they ran "
                         f"before it was set, or with another value): set it to their zone and rerun, if the ERP's "
                         f"clock is that one")
            else:
                cause = ("The ETL host's time zone differs from the earlier runs' (TZ in cron?): set "
                         "CBM_SOURCE_TIMEZONE in .env to the ERP's zone (e.g. Europe/Paris), so every run counts in "
                         "it whatever its TZ, and rerun")
            raise ConfigError(
                f"table {self.table}: this run counts local time at {utc(now)}"
                f"{f' ({configured})' if configured else ''}, the loads before it at {utc(then)} (at the last "
                f"validated extract's start, {at:%Y-%m-%d %H:%M} UTC). Nothing was read. {cause}. To change the "
                f"zone for good, clear the table's LastSuccessTs in config.ETL_Tables and its "
                f"MergedExtractStartedAt and ValidatedUtcOffset in etl.ETL_TableState (its next incremental reads in "
                f"full).")


def source_expression(stored: str | None, name: str) -> str | None:
    """The column expression of a stored SourceExpression (`<expr> AS <alias>`); None for the plain column."""
    if not stored or not stored.strip():
        return None
    expr = re.sub(r'(?is)\s+AS\s+("[^"]+"|[A-Za-z_][A-Za-z0-9_]*)\s*$', "", stored.strip())
    return None if expr == oe_quote(name) else expr


def build_plan(table_row: dict, column_rows: list[dict]) -> TablePlan:
    """TablePlan from one config.ETL_Tables row and its config.ETL_Columns rows (dicts by column name)."""
    t = table_row["TableName"]
    cols = []
    for r in sorted(column_rows, key=lambda r: (r.get("OrdinalPosition") or 0, r["ColumnName"])):
        if r.get("IsExcluded"):
            continue
        ctype = map_openedge_type(r["DataType"], r.get("Width"), r.get("Scale"), table=t, column=r["ColumnName"])
        mode = (r.get("ArrayMode") or "split").lower()
        if mode not in ("split", "single"):
            raise ConfigError(f"config.ETL_Columns[{t}.{r['ColumnName']}].ArrayMode = {mode!r}: 'split' or 'single'")
        cols.append(PlanColumn(r["ColumnName"], r["SqlName"], ctype, (r.get("NullFlag") or "Y") != "N",
                               int(r.get("ArrayExtent") or 0), mode,
                               source_expression(r.get("SourceExpression"), r["ColumnName"]),
                               bool(r.get("IsOverride"))))
    if not cols and column_rows:  # sync-columns keeps IsExcluded: its advice would bring the same error back
        raise ConfigError(f"table {t}: every column is excluded (IsExcluded = 1 on all {len(column_rows)} rows of "
                          f"config.ETL_Columns): set IsExcluded = 0 on the columns to load (UPDATE "
                          f"config.ETL_Columns SET IsExcluded = 0 WHERE TableName = '{t}' AND ColumnName IN "
                          f"(...)), or set IsActive = 0 in config.ETL_Tables to stop loading the table, then rerun")
    if not cols:
        raise ConfigError(f"table {t}: no active column in config.ETL_Columns; run `cbm-etl sync-columns {t}`")
    owner: dict[str, str] = {}
    for c in cols:  # an override can give two columns one name: say so, not the driver's puzzled error later
        if c.sql_name.lower().startswith("_etl_") or c.sql_name != c.sql_name.strip() or not c.sql_name:
            raise ConfigError(f"config.ETL_Columns[{t}.{c.name}].SqlName = {c.sql_name!r}: names starting with "
                              f"_etl_ are the pipeline's own columns, and a name needs no surrounding spaces: "
                              f"choose another SqlName (and the SourceExpression's alias), then rerun the table")
        if len(c.sql_name) > MAX_NAME_LENGTH:  # else refused deep in the dialect, naming no table or row
            raise ConfigError(f"config.ETL_Columns[{t}.{c.name}].SqlName = {shown_value(c.sql_name)}: longer than "
                              f"{MAX_NAME_LENGTH} characters, SQL Server's limit for a name: choose a shorter "
                              f"SqlName (and the SourceExpression's alias), then rerun the table")
        # a `--` or `;` inside a string literal or a quoted name (`"qte--cde"`, a legal Progress name) is fine
        unquoted = re.sub(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"", "''", c.expression or "")
        if c.expression and (unquoted.rstrip().endswith(";") or "--" in unquoted):
            raise ConfigError(f"config.ETL_Columns[{t}.{c.name}].SourceExpression = {c.expression!r}: one "
                              f"expression, without ';' or a '--' comment (it is placed inside the SELECT)")
        for name, _t, _n in c.output_columns():
            other = owner.setdefault(name.lower(), c.name)
            if other != c.name:
                raise ConfigError(f"table {t}: columns {other} and {c.name} both load into {name} (SqlName in "
                                  f"config.ETL_Columns): give one of them another SqlName (and its "
                                  f"SourceExpression alias), then rerun the table")
    plan = TablePlan(
        table=t, destination=table_row.get("DestinationTable") or cols and t, keys=[], columns=cols,
        has_timestamps=bool(table_row.get("HasTimestamps")), date_col=table_row.get("DateModifCol") or None,
        date_precision=(table_row.get("DateModifPrecision") or "date").lower(),
        time_of_day_col=table_row.get("TimeOfDayCol") or None,
        lookback=parse_interval(table_row.get("LookbackInterval"), table=t),
        filter_clause=table_row.get("FilterClause") or None, is_dimension=bool(table_row.get("IsDimension")),
        is_critical=bool(table_row.get("IsCritical")), priority=int(table_row.get("Priority") or 100),
        sla_hours=table_row.get("SLAHours"), last_success_ts=table_row.get("LastSuccessTs"))
    if plan.date_precision not in ("date", "datetime"):
        raise ConfigError(f"config.ETL_Tables[{t}].DateModifPrecision = {plan.date_precision!r}: 'date' or 'datetime'")
    keys = [k.strip() for k in (table_row.get("PrimaryKeyCols") or "").split(",") if k.strip()]
    if not keys:
        raise ConfigError(f"config.ETL_Tables[{t}].PrimaryKeyCols is empty: set the key columns "
                          f"(`cbm-etl discover` proposes them from unique indexes)")

    def named(field: str, name: str) -> PlanColumn:
        """The column a config.ETL_Tables field names; if none, the error names the field (sync-columns, which
        by_name suggests, cannot fix a misspelt name there)."""
        try:
            return plan.by_name(name)
        except UnknownColumnError:
            raise ConfigError(f"config.ETL_Tables[{t}].{field} names {name!r}, which is not an active column of "
                              f"the table in config.ETL_Columns: correct {field} (`cbm-etl discover` proposes "
                              f"one); if the column is new at the source run `cbm-etl sync-columns {t}`, if it is "
                              f"excluded set IsExcluded = 0") from None
        except ConfigError as exc:
            raise ConfigError(f"config.ETL_Tables[{t}].{field}: {exc}") from None

    plan.keys = [named("PrimaryKeyCols", k).sql_name for k in keys]
    for k in plan.keys:
        if plan.by_sql_name(k).extent:
            raise ConfigError(f"table {t}: key column {plan.by_sql_name(k).name} is an array (EXTENT) field")
    for field in ("DateModifCol", "TimeOfDayCol"):  # an array is read as one `;`-separated text (found in review)
        name = table_row.get(field) or None
        if name and named(field, name).extent:
            raise ConfigError(f"config.ETL_Tables[{t}].{field} = {name!r} is an array (EXTENT "
                              f"{named(field, name).extent}) field, which is read as one text of all its "
                              f"elements: name a field that is not an array, or leave {field} empty")
    if plan.date_col:
        kind = named("DateModifCol", plan.date_col).ctype.kind
        if kind not in ("date", "timestamp", "timestamptz"):
            raise ConfigError(f"config.ETL_Tables[{t}].DateModifCol = {plan.date_col!r} is a {kind} column: name "
                              f"the DATE or TIMESTAMP column that records when a row changed (`cbm-etl discover` "
                              f"proposes one), or leave it empty (loads are then full)")
        if kind != "date" and (plan.date_precision == "date" or plan.time_of_day_col):
            # a TIMESTAMP compared with a DATE parameter (OpenEdge may refuse it), and its own time of day counted
            # twice in _etl_source_ts when a TimeOfDayCol is added
            raise ConfigError(f"config.ETL_Tables[{t}]: DateModifCol {plan.date_col!r} is a TIMESTAMP, which carries "
                              f"its own time: set DateModifPrecision = 'datetime' and leave TimeOfDayCol empty")
        if plan.time_of_day_col and named("TimeOfDayCol", plan.time_of_day_col).ctype.kind not in ("int32", "int64"):
            raise ConfigError(f"config.ETL_Tables[{t}].TimeOfDayCol = {plan.time_of_day_col!r} is not an INTEGER "
                              f"column: name the one that holds the seconds since midnight (Progress's usual "
                              f"`heure`), or leave it empty")
        if plan.has_timestamps and kind == "date" and plan.date_precision == "datetime":
            # `dat_mod >= 'D hh:mm'` skips the rows stamped D (they compare as midnight): same-day changes
            # would be missed without a word
            raise ConfigError(f"config.ETL_Tables[{t}].DateModifPrecision = 'datetime', but {plan.date_col} is a "
                              f"DATE column (rows changed on the window's first day would be missed): set it to "
                              f"'date' (with TimeOfDayCol for the time of day)")
    return plan
