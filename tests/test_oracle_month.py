"""Differential testing against an independent oracle: a seeded month of ERP nights on the demo source.

Two tables with the same columns and the same changes are added to the demo source: `article` (type 1) and
`artdim` (SCD2, IsDimension = 1). Each night the ERP changes rows at random (inserts, updates, deletes, revivals,
writes that change nothing, changes of an excluded column only, NULL <-> '', keys changed in case or trailing
blanks, 12.50 <-> 12.5, NULL/false/true logicals, late writers stamped before the window, rows stamped with an
unknown date); the demo's own six tables get the same kinds of changes (arrays, composite keys, timestamps, a
table without modification date, a 2-day lookback, one without a time-of-day column). Then the real pipeline
runs (luigi.build, DuckDB warehouse, each night with its own run id as its own process would, the embedded,
pyodbc or arrow-odbc reader): incremental most nights, full some nights, sometimes a second batch the same day
(--batch-tag, or the same batch id in the other mode). The operator also acts, as OPERATIONS.md says: a column
excluded / included again, an override that changes no value, a new source field (INITIAL value) synced, the
lookback changed, LastSuccessTs moved back or cleared, an earlier batch invalidated (--from stage / extract) and
its command run again, a value that does not fit fixed in Progress or by an override and the command run again,
an empty full read refused and run again once the rows are back.

A plain-Python model of what ods must hold after each batch, written from the documented semantics (the window
`dat_mod >= D AND (dat_mod > D OR heure >= S OR heure IS NULL)` from LastSuccessTs - LookbackInterval; deletes
seen by full batches only; a read made full by a configuration change merges as incremental; SCD2 refreshes in
place a current version whose other values did not change; soft deletes and revivals), is compared with ods
after every batch: every row and version, the deleted flags, one current version per key, validity intervals
without gap or overlap, the merge counts in etl.ETL_Log, LastSuccessTs, vw_SLABreach and etl.ETL_Validation.
Added from a review (2026-11-29): no difference the documentation does not explain was found. `run_month(env,
monkeypatch, seed, nights, readers=...)` runs other seeds.
"""
from __future__ import annotations

import random
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest

from cbm_luigi import demo_source
from cbm_luigi.cli import main as cbm_etl
from cbm_luigi.demo_source import Col, TableDef
from cbm_luigi.plan import parse_interval
from cbm_luigi.tasks import LoadAll

from .conftest import build, on_source, source_rows, succeeded

COLS = [Col("cod", "varchar", 20, nullable=False), Col("lib", "varchar", 60), Col("note", "varchar", 40),
        Col("prix-ht", "numeric", 17, 2),  # wider than 15 digits: the demo keeps it as exact text ("12.50")
        Col("poids", "numeric", 12, 3), Col("qte", "integer"), Col("secret", "varchar", 40), Col("actif", "bit"),
        Col("maj", "timestamp"),
        Col("dat_mod", "date"), Col("heure", "integer")]
NAMES = [c.name for c in COLS]
TABLES = {"article": False, "artdim": True}  # table -> SCD2
LOOKBACK = timedelta(days=1)


# -- the ERP -------------------------------------------------------------------------------------------------

def sql_name(progress: str) -> str:
    return progress.replace("-", "_")


class Erp:
    """The source rows (the same in both tables) as Progress holds them, and the changes of a working day."""

    def __init__(self, env, seed: int, n: int):
        self.env = env
        self.r = random.Random(seed)
        self.cols = list(COLS)
        self.rows: dict[str, dict] = {}
        self.gone: dict[str, dict] = {}  # deleted keys, with their last row (a revival may bring it back)
        self.next_id = 1
        today = date.today()
        for _ in range(n):
            row = self.new_row(self.fresh_key())
            row["dat_mod"] = (today - timedelta(days=self.r.randint(3, 300))).isoformat()
            row["heure"] = self.r.randint(0, 86399)
            self.rows[row["cod"]] = row
        self.write()

    def fresh_key(self) -> str:
        self.next_id += 1
        return f"A{self.next_id:05d}"

    def price(self) -> str | None:
        if self.r.random() < 0.1:
            return None
        v = Decimal(self.r.randint(0, 10**7)) / 100
        return self.r.choice([f"{v:.2f}", str(v.normalize()) if v else "0", f"{v:.2f}"]).replace("E+", "e")

    def new_row(self, key: str) -> dict:
        r = self.r
        row = {"cod": key, "lib": None if r.random() < 0.1 else f"lib {r.randint(0, 10**6)} é",
               "note": r.choice([None, "", "n", f"note {r.randint(0, 99)}"]), "prix-ht": self.price(),
               "poids": None if r.random() < 0.1 else f"{r.randint(0, 10**6) / 1000:.3f}",
               "qte": r.randint(-5, 500), "secret": f"s{r.randint(0, 10**6)}", "actif": r.choice([0, 1, None]),
               "maj": self.when(), "dat_mod": None, "heure": None}
        if any(c.name == "remise" for c in self.cols):
            row["remise"] = r.choice([0, 0, r.randint(1, 50)])
        return row

    def when(self) -> str | None:
        if self.r.random() < 0.1:
            return None
        t = datetime(2026, 1, 1) + timedelta(seconds=self.r.randint(0, 10**7), milliseconds=self.r.randint(0, 999))
        return t.isoformat(" ", "milliseconds")

    def tuple(self, row: dict) -> tuple:
        return tuple(row[c.name] for c in self.cols)

    def stamp(self, row: dict) -> None:
        now = datetime.now()
        row["dat_mod"], row["heure"] = now.date().isoformat(), now.hour * 3600 + now.minute * 60 + now.second

    def add_column(self) -> None:
        """A new field in the Data Dictionary: Progress gives every existing record its INITIAL value (0)."""
        self.cols.insert(len(self.cols) - 2, Col("remise", "integer"))
        for row in list(self.rows.values()) + list(self.gone.values()):
            row["remise"] = 0
        self.write()

    def day(self) -> list[str]:
        """One working day of changes; returns what was done (for failure messages)."""
        r, did = self.r, []
        today = date.today()
        for _ in range(r.randint(15, 30)):
            op = r.choice(["insert", "update", "update", "delete", "revive", "same", "excluded", "null_empty",
                           "key_case", "scale", "late", "late", "unknown_date"])
            k = r.choice(sorted(self.rows))
            row = self.rows[k]
            if op == "insert":
                new = self.new_row(self.fresh_key())
                self.stamp(new)
                self.rows[new["cod"]] = new
                k = new["cod"]
            elif op == "update":
                col = r.choice(["lib", "qte", "poids", "prix-ht", "actif", "maj"] +
                               (["remise"] if "remise" in row else []))
                fresh = self.new_row(k)
                while fresh[col] == row[col]:
                    fresh = self.new_row(k)
                row[col] = fresh[col]
                self.stamp(row)
            elif op == "delete":
                self.gone[k] = self.rows.pop(k)
            elif op == "revive":
                if not self.gone:
                    continue
                k = r.choice(sorted(self.gone))
                row = self.gone.pop(k)
                if r.random() < 0.5:
                    row["lib"] = f"back {r.randint(0, 999)}"
                if r.random() < 0.7:
                    self.stamp(row)
                self.rows[k] = row
            elif op == "same":  # a write that changes no value
                pass
            elif op == "excluded":  # only `secret` changes (excluded most of the month), not stamped
                row["secret"] = f"s{r.randint(0, 10**6)}"
            elif op == "null_empty":
                row["note"] = "" if row["note"] is None else None
                self.stamp(row)
            elif op == "key_case":  # Progress would see the same key; on DuckDB another row (docs/mssql.md)
                new_key = r.choice([k.lower(), k + " ", k.lower() + "  "])
                if new_key in self.rows or new_key in self.gone:
                    continue
                self.gone[k] = self.rows.pop(k)
                row = dict(row, cod=new_key)
                self.stamp(row)
                self.rows[new_key] = row
                did.append(f"{op} {k!r} -> {new_key!r}")
                continue
            elif op == "scale":  # 12.50 <-> 12.5: the same decimal value, not stamped
                p = row["prix-ht"]
                if p is None:
                    continue
                d = Decimal(p)
                row["prix-ht"] = f"{d:.2f}" if p != f"{d:.2f}" else format(d.normalize(), "f")
            elif op == "late":  # a client whose clock is behind: stamped yesterday (any second) or days ago
                row["lib"] = f"late {r.randint(0, 10**6)}"
                back = r.choice([1, 1, 3, 10])
                row["dat_mod"] = (today - timedelta(days=back)).isoformat()
                row["heure"] = r.choice([r.randint(0, 86399), None]) if back == 1 else r.randint(0, 86399)
            elif op == "unknown_date":
                row["lib"] = f"unknown {r.randint(0, 10**6)}"
                row["dat_mod"], row["heure"] = None, None
            did.append(f"{op} {k!r}")
        self.write()
        return did

    def write(self) -> None:
        for t in TABLES:
            demo_source.add_table(self.env.source, TableDef(t, self.cols, ("cod",),
                                                            [self.tuple(r) for r in self.rows.values()]))
        on_source(self.env)  # let the next read see them


# -- the oracle ----------------------------------------------------------------------------------------------

def ods_values(row: dict, rounded: bool = False) -> dict:
    """The business values ods must hold for a source row (as DuckDB returns them), by SQL name."""
    out = {}
    for name, v in row.items():
        if v is not None and name == "prix-ht":
            v = Decimal(v).quantize(Decimal("0.01"), ROUND_HALF_UP if rounded else None)
        elif v is not None and name == "poids":
            v = Decimal(v).quantize(Decimal("0.001"))
        elif v is not None and name == "dat_mod":
            v = date.fromisoformat(v)
        elif v is not None and name == "actif":
            v = bool(v)
        elif v is not None and name == "maj":
            v = datetime.fromisoformat(v)
        out[sql_name(name)] = v
    return out


def in_window(row: dict, since: datetime) -> bool:
    """OPERATIONS.md: dat_mod >= D AND (dat_mod > D OR heure >= S OR heure IS NULL)."""
    if row["dat_mod"] is None:
        return False
    d = date.fromisoformat(row["dat_mod"])
    day, secs = since.date(), since.hour * 3600 + since.minute * 60 + since.second
    return d >= day and (d > day or row["heure"] is None or row["heure"] >= secs)


@dataclass
class Version:
    values: dict
    hashed: frozenset  # what _etl_hashdiff covers: the non-NULL values of the columns read (transform.py)
    deleted: bool = False


@dataclass
class Model:
    """What ods.<t> must hold, from README / OPERATIONS (written without reading statements.py)."""
    scd2: bool
    keys: dict[str, list[Version]] = field(default_factory=dict)  # type 1: one "version" per key
    ods_cols: set = field(default_factory=set)
    merged_cols: set | None = None  # the columns the last merge wrote
    changed_config: bool = False  # the configuration changed since the last merge
    # arrays whose ArrayMode was switched since the last merge: the SCD2 refresh compares their new form too, so
    # each member whose array holds a value is versioned (steps._refresh_compared; a code comment, not the docs)
    switched: set = field(default_factory=set)

    def merge(self, batch: dict[str, dict], read: set, full: bool) -> tuple[int, int, int, int]:
        before = set(self.ods_cols)
        self.ods_cols |= read
        refresh = self.changed_config and bool(before)
        compared = ((self.merged_cols or before) & before & read) | (self.switched & read)
        ins = upd = same = dele = 0
        for k, row in batch.items():
            vals = {c: row.get(c) for c in read}
            h = frozenset((c, v) for c, v in vals.items() if v is not None)
            versions = self.keys.get(k)
            if not versions:
                self.keys[k] = [Version(vals, h)]
                ins += 1
                continue
            cur = versions[-1]
            if cur.hashed == h and not cur.deleted:
                same += 1
                continue
            upd += 1
            if not self.scd2:  # type 1: the columns read are written, the others keep what they held
                cur.values.update(vals)
                cur.hashed, cur.deleted = h, False
            elif refresh and not cur.deleted and all(cur.values.get(c) == vals[c] for c in compared):
                cur.values.update(vals)  # OPERATIONS: refreshed in place, no version for a change that did not
                cur.hashed = h  # happen at the source
            else:
                versions.append(Version(vals, h))
        if full:
            for k, versions in self.keys.items():
                if k not in batch and not versions[-1].deleted:
                    versions[-1].deleted = True
                    dele += 1
        self.merged_cols, self.changed_config, self.switched = set(read), False, set()
        return ins, upd, same, dele


def check(env, table: str, model: Model, where: str, keys=("cod",)) -> list[str]:
    """Every difference between ods.<table> and the model, and every broken SCD2 invariant."""
    cols = sorted(model.ods_cols)
    if not model.keys:
        return []
    have_cols = {r[0] for r in env.sql("SELECT column_name FROM information_schema.columns WHERE table_schema = "
                                       "'ods' AND table_name = ? AND column_name NOT LIKE '\\_etl\\_%' ESCAPE '\\'",
                                       [table])}
    if have_cols != set(cols):
        return [f"{where} {table}: ods columns {sorted(have_cols)} != model {cols}"]
    tech = ["_etl_is_deleted", "_etl_deleted_at IS NOT NULL"]
    if model.scd2:
        tech += ["_etl_is_current", "_etl_valid_from", "_etl_valid_to"]
    rows = env.sql(f"SELECT {', '.join(cols + tech)} FROM ods.{table} ORDER BY {', '.join(keys)}" +
                   (", _etl_valid_from" if model.scd2 else ""))
    ki, n = [cols.index(k) for k in keys], len(cols)
    got: dict = {}
    for r in rows:
        got.setdefault(r[ki[0]] if keys == ("cod",) else tuple(r[i] for i in ki), []).append(r)
    diffs = []
    if set(got) != set(model.keys):
        diffs.append(f"{where} {table}: keys only in ods {sorted(set(got) - set(model.keys))}, only in the model "
                     f"{sorted(set(model.keys) - set(got))}")
    for k in sorted(set(got) & set(model.keys)):
        have, want = got[k], model.keys[k]
        h = [(dict(zip(cols, r[:n])), r[n]) for r in have]
        w = [({c: v.values.get(c) for c in cols}, v.deleted) for v in want]
        if h != w:
            diffs.append(f"{where} {table} {k!r}: ods {h} != model {w}")
            continue
        if any(r[n] != r[n + 1] for r in have):
            diffs.append(f"{where} {table} {k!r}: _etl_deleted_at does not go with _etl_is_deleted: {have}")
        if model.scd2:
            if [r[n + 2] for r in have] != [False] * (len(have) - 1) + [True]:
                diffs.append(f"{where} {table} {k!r}: current flags {[r[n + 2] for r in have]}")
            for a, b in zip(have, have[1:]):
                if a[n + 4] != b[n + 3]:
                    diffs.append(f"{where} {table} {k!r}: gap or overlap: valid_to {a[n + 4]} then valid_from "
                                 f"{b[n + 3]}")
            for r in have:
                if r[n + 4] is not None and not r[n + 3] < r[n + 4]:
                    diffs.append(f"{where} {table} {k!r}: empty or reversed interval {r[n + 3]} .. {r[n + 4]}")
            if have[-1][n + 4] is not None:
                diffs.append(f"{where} {table} {k!r}: current version closed at {have[-1][n + 4]}")
    return diffs


# -- the demo's own tables ------------------------------------------------------------------------------------

DEMO = {t.name: t for t in demo_source._schema()}
DEMO_CONF = {  # config/tables.csv: SCD2, key, lookback, time-of-day column (None: no modification date at all)
    "famille": (True, ["cod_fam"], None, None), "fournis": (True, ["cod_fou"], 1, "heure"),
    "client": (True, ["cod_cli"], 1, "heure"), "produit": (False, ["cod_pro"], 1, "heure"),
    "lignecli": (False, ["num_cde", "num_lig"], 2, "heure"), "hisprixa": (False, ["cod_pro", "cod_fou", "dat_eff"], 1, None)}


class DemoErp:
    """The same kinds of changes on the demo's tables (arrays, composite keys, timestamps, logicals), done
    generically: a column takes another row's value, rows are copied under new keys, deleted, revived."""

    def __init__(self, env, seed: int):
        self.env, self.r = env, random.Random(seed + 1)
        self.gone: dict[str, list[tuple]] = {t: [] for t in DEMO}

    def day(self) -> None:
        r = self.r
        con = sqlite3.connect(str(self.env.source))
        today = date.today()
        for t, td in DEMO.items():
            names = [c.name for c in td.cols]
            rows = [list(x) for x in con.execute(f'SELECT * FROM "{t}"')]
            ki = [names.index(k) for k in td.unique_index]
            audit = "dat_mod" in names
            other = [i for i, c in enumerate(td.cols) if c.name not in td.unique_index and c.name not in
                     ("usr_crt", "dat_crt", "usr_mod", "dat_mod", "heure")]

            def stamp(row, how="now"):
                if not audit:
                    return
                now = datetime.now()
                d, h = now.date(), now.hour * 3600 + now.minute * 60 + now.second
                if how == "late":
                    d, h = today - timedelta(days=r.choice([1, 2, 3, 10])), r.choice([r.randint(0, 86399), None])
                row[names.index("dat_mod")] = None if how == "unknown" else d.isoformat()
                row[names.index("heure")] = None if how == "unknown" else h

            keys = {tuple(x[i] for i in ki) for x in rows}
            for _ in range(r.randint(3, 10)):
                op = r.choice(["update", "update", "insert", "delete", "revive", "late", "unknown", "null"])
                if not rows:
                    break
                row = r.choice(rows)
                if op in ("update", "late", "unknown", "null"):
                    c = r.choice(other)
                    if op == "null":
                        row[c] = None if row[c] is not None else r.choice(rows)[c]
                    else:
                        row[c] = r.choice(rows)[c]
                    stamp(row, {"update": "now", "null": "now"}.get(op, op))
                elif op == "insert":
                    new = list(r.choice(rows))
                    for _ in range(100):
                        for i in ki:
                            col = td.cols[i]
                            if col.coltype == "integer":
                                new[i] = new[i] + r.randint(1, 5000)
                            elif col.coltype == "date":
                                new[i] = (today - timedelta(days=r.randint(0, 3000))).isoformat()
                            elif len(ki) == 1:
                                new[i] = f"{new[i][:1]}Z{r.randint(0, 10**6)}"
                        if tuple(new[i] for i in ki) not in keys:
                            break
                    stamp(new)
                    rows.append(new)
                    keys.add(tuple(new[i] for i in ki))
                elif op == "delete":
                    rows.remove(row)
                    keys.discard(tuple(row[i] for i in ki))
                    self.gone[t].append(row)
                elif op == "revive" and self.gone[t]:
                    back = self.gone[t].pop(r.randrange(len(self.gone[t])))
                    if tuple(back[i] for i in ki) in keys:
                        continue
                    if r.random() < 0.7:
                        stamp(back)
                    rows.append(back)
                    keys.add(tuple(back[i] for i in ki))
            con.execute(f'DELETE FROM "{t}"')
            con.executemany(f'INSERT INTO "{t}" VALUES ({", ".join("?" * len(names))})', rows)
        con.commit()
        con.close()
        on_source(self.env)

    def batch(self, t: str, since: datetime | None) -> dict:
        """The rows a batch of `t` reads (conftest.source_rows: an independent reading of the demo file), with
        the documented window applied in SQLite."""
        rows = source_rows(self.env.source, t)
        _scd2, _keys, _lookback, tod = DEMO_CONF[t]
        if since is None:
            return rows
        td = DEMO[t]
        day, secs = since.date().isoformat(), since.hour * 3600 + since.minute * 60 + since.second
        where = "dat_mod >= ? AND (dat_mod > ? OR heure >= ? OR heure IS NULL)" if tod else "dat_mod >= ?"
        params = [day, day, secs] if tod else [day]
        con = sqlite3.connect(str(self.env.source))
        kcols = td.unique_index
        types = {c.name: c.coltype for c in td.cols}
        wanted = {tuple(date.fromisoformat(v) if types[k] == "date" else v for k, v in zip(kcols, x))
                  for x in con.execute(f'SELECT {", ".join(kcols)} FROM "{t}" WHERE {where}', params)}
        con.close()
        return {k: v for k, v in rows.items() if k in wanted}


# -- the month -----------------------------------------------------------------------------------------------

def setup_tables(env, demo: bool) -> None:
    with env.con() as c:
        if not demo:
            c.execute("UPDATE config.ETL_Tables SET IsActive = false")
        for i, (t, scd2) in enumerate(TABLES.items()):
            c.execute("INSERT INTO config.ETL_Tables (TableName, DestinationTable, PrimaryKeyCols, HasTimestamps, "
                      "DateModifCol, DateModifPrecision, TimeOfDayCol, LookbackInterval, IsDimension, Priority, "
                      "SLAHours, IsActive) VALUES (?, ?, 'cod', true, 'dat_mod', 'date', 'heure', '1 day', ?, ?, 26, "
                      "true)", [t, t, scd2, 10 + i])
    for t in TABLES:
        assert cbm_etl(["sync-columns", t]) == 0
    with env.con() as c:
        c.execute("UPDATE config.ETL_Columns SET IsExcluded = true WHERE ColumnName = 'secret' AND TableName IN "
                  "('article', 'artdim')")


def last_success(env) -> dict[str, datetime | None]:
    return dict(env.sql("SELECT TableName, LastSuccessTs FROM config.ETL_Tables"))


def use_reader(monkeypatch, env, reader: str) -> None:
    if reader == "embedded":
        for k in ("CBM_SOURCE_KIND", "CBM_SOURCE_DIALECT", "CBM_ODBC_READER", "CBM_SOURCE_ODBC",
                  "CBM_SOURCE_INIT_SQL"):
            monkeypatch.delenv(k, raising=False)
        return
    src = env.source
    for k, v in {"CBM_SOURCE_KIND": "odbc", "CBM_SOURCE_DIALECT": "sqlite-standin", "CBM_ODBC_READER": reader,
                 "CBM_SOURCE_ODBC": f"DRIVER={{SQLite3}};Database={src};StepAPI=1",
                 "CBM_SOURCE_INIT_SQL": f"ATTACH DATABASE '{src}' AS PUB;;ATTACH DATABASE '{src}' AS SYSPROGRESS"
                 }.items():
        monkeypatch.setenv(k, v)


class Config:
    """Configuration changes an operator makes during the month (OPERATIONS.md, Configuration)."""

    def __init__(self, env, erp: Erp, models: dict[str, Model]):
        self.env, self.erp, self.models = env, erp, models
        self.read = {sql_name(c.name) for c in COLS if c.name != "secret"}
        self.lookback = LOOKBACK
        self.rounded = False  # prix-ht read through ROUND(.., 2)

    def change(self, what: str) -> None:
        with self.env.con() as c:
            if what == "secret":
                now = "secret" in self.read
                c.execute("UPDATE config.ETL_Columns SET IsExcluded = ? WHERE ColumnName = 'secret' AND TableName IN "
                          "('article', 'artdim')", [now])
                self.read ^= {"secret"}
            elif what == "lib_override":  # an override that changes no value
                on = c.execute("SELECT IsOverride FROM config.ETL_Columns WHERE ColumnName = 'lib' AND TableName = "
                               "'article'").fetchone()[0]
                expr = '"lib" AS "lib"' if on else 'SUBSTRING("lib", 1, 60) AS "lib"'
                c.execute("UPDATE config.ETL_Columns SET IsOverride = ?, SourceExpression = ? WHERE ColumnName = "
                          "'lib' AND TableName IN ('article', 'artdim')", [not on, expr])
            if what.startswith("lookback:"):
                c.execute("UPDATE config.ETL_Tables SET LookbackInterval = ? WHERE TableName IN ('article', 'artdim')",
                          [what.split(":", 1)[1]])
                self.lookback = parse_interval(what.split(":", 1)[1], table="article")
                return
            if what.startswith(("move_back:", "clear:")):  # OPERATIONS: to read a window again
                how, t = what.split(":")
                c.execute("UPDATE config.ETL_Tables SET LastSuccessTs = " +
                          ("LastSuccessTs - INTERVAL 3 DAY" if how == "move_back" else "NULL") +
                          " WHERE TableName = ?", [t])
                return
            if what == "prix_round":
                on = c.execute("SELECT IsOverride FROM config.ETL_Columns WHERE ColumnName = 'prix-ht' AND "
                               "TableName = 'article'").fetchone()[0]
                expr = '"prix-ht" AS "prix_ht"' if on else 'ROUND("prix-ht", 2) AS "prix_ht"'
                c.execute("UPDATE config.ETL_Columns SET IsOverride = ?, SourceExpression = ? WHERE ColumnName = "
                          "'prix-ht' AND TableName IN ('article', 'artdim')", [not on, expr])
                self.rounded = not on
        if what == "new_column":
            self.erp.add_column()
            for t in TABLES:
                assert cbm_etl(["sync-columns", t]) == 0
            self.read |= {"remise"}
        for m in self.models.values():
            m.changed_config = True


def run_month(env, monkeypatch, seed: int, nights: int, n_rows: int = 200, *, plan: dict | None = None,
              readers=("embedded",), demo: bool = True) -> list[str]:
    """`plan`: night -> list of steps, else random steps: (mode, tag) batches, ("config", what) changes,
    ("bad", tag) a batch refused for a value of article/artdim, fixed and run again, ("rerun", (table, from))
    an earlier batch of a table invalidated and its command run again (OPERATIONS.md, Batches and reruns)."""
    r = random.Random(seed * 7919)
    erp = Erp(env, seed, n_rows)
    setup_tables(env, demo)
    models = {t: Model(scd2) for t, scd2 in TABLES.items()}
    demo_erp = DemoErp(env, seed)
    demo_models = {t: Model(c[0]) for t, c in DEMO_CONF.items()} if demo else {}
    config = Config(env, erp, models)
    base = date(2026, 10, 1)
    diffs: list[str] = []
    history: list[str] = []
    done: list[tuple[str, date, str]] = []  # batches run: (mode, date, tag)
    last: dict[str, tuple] = {}  # table -> (batch id, mode, rows, full, window) of its newest merge

    def window_of(t, mode, since):
        """The window a batch of `t` in `mode` reads now (None: every row), per OPERATIONS.md."""
        if t in models:
            m = models[t]
            return None if mode == "full" or since[t] is None or m.changed_config else since[t] - config.lookback
        lookback = DEMO_CONF[t][2]
        return None if mode == "full" or since[t] is None or lookback is None else since[t] - timedelta(days=lookback)

    def oracle(tables, mode, batch_id, since, before, where, reuse=(), settled=True) -> None:
        after = last_success(env)
        for t in tables:
            m = models.get(t) or demo_models[t]
            if t in reuse:  # its cached extract merged again (nothing newer merged since): changes nothing
                _b, _m, batch, full, window = last[t]
            elif t in models:
                window = window_of(t, mode, since)
                batch = {k: {c: v for c, v in ods_values(row, config.rounded).items() if c in config.read}
                         for k, row in erp.rows.items() if window is None or in_window(row, window)}
                full = mode == "full" or since[t] is None
            else:
                window = window_of(t, mode, since)
                batch = demo_erp.batch(t, window)
                full = window is None
            read = config.read if t in models else set(next(iter(source_rows(env.source, t).values())))
            counts = m.merge(batch, read, full=full)
            last[t] = (batch_id, mode, batch, full, window)
            logged = env.sql("SELECT RowsInserted, RowsUpdated, RowsUnchanged, RowsDeleted FROM etl.ETL_Log "
                             "WHERE TableName = ? AND Step = 'merge' AND BatchId = ? AND Mode = ? "
                             "ORDER BY LogId DESC LIMIT 1", [t, batch_id, mode])
            if not logged or tuple(logged[0]) != counts:
                diffs.append(f"{where} {t}: merge counts logged {logged} != model {counts}")
            if t in reuse:
                if after[t] != since[t]:
                    diffs.append(f"{where} {t}: LastSuccessTs moved from {since[t]} to {after[t]} (cached extract)")
            elif not (after[t] and before <= after[t] <= datetime.now()):
                diffs.append(f"{where} {t}: LastSuccessTs {after[t]} not the start of this night's extract")
            diffs.extend(check(env, t, m, where, ("cod",) if t in models else tuple(DEMO_CONF[t][1])))
        sla = env.sql("SELECT TableName, SLAStatus, LastError FROM etl.vw_SLABreach WHERE SLAStatus <> 'OK'")
        if sla and settled:
            diffs.append(f"{where}: every table loaded within the hour, yet vw_SLABreach says {sla}")
        failed_checks = env.sql("SELECT TableName, BatchId, CheckName FROM etl.ETL_Validation WHERE NOT Passed")
        if failed_checks:
            diffs.append(f"{where}: failed validations {failed_checks}")

    def run(mode, day, tag, where):
        reader = r.choice(readers)
        use_reader(monkeypatch, env, reader)
        # a run_id of its own: each night is its own process (cron), as in production
        result = build(LoadAll(mode=mode, batch_date=day, batch_tag=tag, run_id=str(uuid.uuid4())))
        batch_id = day.isoformat() + (f"-{tag}" if tag else "")
        failed = env.sql("SELECT DISTINCT TableName FROM etl.ETL_Log WHERE Status = 'FAILED' AND BatchId = ? AND "
                         "RunId = (SELECT RunId FROM etl.ETL_Log ORDER BY LogId DESC LIMIT 1)", [batch_id])
        history.append(f"{where} ({reader})")
        return succeeded(result), {f[0] for f in failed}, batch_id, result

    all_tables = list(models) + list(demo_models)
    for night in range(nights):
        day = base + timedelta(days=night)
        if plan is not None:
            steps = plan.get(night, [("incremental", "")])
        elif night == 0:
            steps = [("full", "")]
        else:
            steps = []
            if r.random() < 0.15:
                steps.append(("config", r.choice(["secret", "secret", "lib_override",
                                                   "new_column" if "remise" not in config.read else "secret"])))
            if r.random() < 0.2:
                steps.append(("config", r.choice(["lookback:1 day", "lookback:2 days", "lookback:30 minutes",
                                                   "lookback:6 hours", f"move_back:{r.choice(all_tables)}",
                                                   f"clear:{r.choice(all_tables)}"])))
            steps.append(("full" if r.random() < 0.2 else "incremental", ""))
            if r.random() < 0.1:
                steps[-1] = ("bad", steps[-1][0])
            if r.random() < 0.15:
                steps.append((r.choice(["full", "incremental"]), r.choice(["b", ""])))
                if steps[-1] == steps[-2] or steps[-2][0] == "bad":
                    steps[-1] = (steps[-1][0], "b")
            if r.random() < 0.2:
                steps.append(("rerun", (r.choice(all_tables), r.choice(["stage", "extract"]))))
        for kind, arg in steps:
            if kind == "config":
                config.change(arg)
                history.append(f"night {night}: config {arg}")
                continue
            if kind == "rerun":
                t, from_step = arg
                if t not in last:
                    continue
                mode_b, day_b, tag_b = r.choice([d for d in done if d[2] != "bad"])
                batch_id = day_b.isoformat() + (f"-{tag_b}" if tag_b else "")
                m = models.get(t) or demo_models[t]
                if cbm_etl(["invalidate", t, "--batch", batch_id, "--from", from_step]) != 0:
                    continue  # the table has nothing in that batch (its mode was another)
                since, before = last_success(env), datetime.now()
                then, now = last[t][4], window_of(t, mode_b, since)
                widened = then is not None and (now is None or now < then)
                same = last[t][:2] == (batch_id, mode_b) and not m.changed_config and not widened
                reuse = {t} if from_step == "stage" and same else set()
                where = f"night {night} rerun {t} batch {batch_id} {mode_b} --from {from_step}"
                ok, failed, _b, res = run(mode_b, day_b, tag_b, where)
                if not ok:
                    return history + [f"{where}: failed {failed}: {res.summary_text}"]
                oracle([t], mode_b, batch_id, since, before, where, reuse)
                if diffs:
                    return history + diffs
                continue
            if night:
                history.append(f"night {night}: " + "; ".join(erp.day()))
                if demo:
                    demo_erp.day()
            mode, tag = (arg, "bad") if kind == "bad" else (kind, arg)
            empty = kind == "bad" and mode == "full" and r.random() < 0.5
            if empty:  # the ERP rebuilding the tables while the full batch reads them: refused, then rerun
                kept, erp.rows = erp.rows, {}
                erp.write()
                erp.rows = kept
            elif kind == "bad":  # a value that does not fit prix-ht DECIMAL(17,2): both tables stop, the rest loads
                k = r.choice(sorted(erp.rows))
                good = erp.rows[k]["prix-ht"]
                erp.rows[k]["prix-ht"] = "1.234"
                erp.stamp(erp.rows[k])
                erp.write()
            since, before = last_success(env), datetime.now()
            where = f"night {night} {mode} batch {day}{'-' + tag if tag else ''}"
            ok, failed, batch_id, res = run(mode, day, tag, where)
            done.append((mode, day, tag))
            if kind == "bad":
                if ok or failed != set(TABLES):
                    return history + [f"{where}: expected article and artdim to fail, failed: {failed}"]
                oracle(demo_models, mode, batch_id, since, before, where, settled=False)
                how = "refill" if empty else r.choice(["row", "override"])
                if how == "refill":
                    erp.write()
                elif how == "row":  # the row fixed in Progress, then the same command again
                    erp.rows[k]["prix-ht"] = good
                    erp.write()
                else:  # OPERATIONS: a SourceExpression override, then the same command again
                    config.change("prix_round")
                before = datetime.now()
                ok, failed, batch_id, res = run(mode, day, tag, where + f" after the fix ({how})")
                if not ok:
                    return history + [f"{where}: the rerun after the fix failed: {failed}: {res.summary_text}"]
                oracle(models, mode, batch_id, since, before, where + f" after the fix ({how})")
                if how == "override":  # the row fixed in Progress later, and the override removed
                    erp.rows[k]["prix-ht"] = good
                    erp.stamp(erp.rows[k])
                    erp.write()
                    config.change("prix_round")
            else:
                if not ok:
                    return history + [f"{where}: the run failed: {failed}: {res.summary_text}"]
                oracle(all_tables, mode, batch_id, since, before, where)
            if diffs:
                return history + diffs
    return diffs


@pytest.mark.parametrize("seed,readers", [(20261129, ("embedded", "pyodbc", "arrow-odbc"))])
def test_a_month_of_nights_matches_the_oracle(env, monkeypatch, seed, readers):
    """20 nights; every difference from the documented semantics fails the test with the nights' history."""
    diffs = run_month(env, monkeypatch, seed=seed, nights=20, readers=readers)
    assert not diffs, "\n".join(diffs[-40:])
