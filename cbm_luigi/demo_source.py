"""A generated Progress-like demo database: the stand-in for a Proginov ERP seen through OpenEdge SQL.

It is one SQLite file, so the very same file is read by Python's sqlite3 (the embedded reader) and through the
real unixODBC + SQLite ODBC driver (the ODBC reader). The file holds:

- user tables (`client`, `produit`, `fournis`, `lignecli`, `hisprixa`, `famille`), reached as `PUB."client"`
  once the file is attached under the name `PUB`;
- an OpenEdge-shaped catalog (`SYSTABLES`, `SYSCOLUMNS_FULL`, `SYSINDEXES`) reached as `SYSPROGRESS.*` once the
  file is attached a second time under the name `SYSPROGRESS`.

Values are stored the way the Progress driver hands them over: dates as ISO text, logicals as 0/1, decimals as
exact text, arrays (EXTENT fields) as one `;`-separated string with `~;`/`~~` escapes and `?` for unknown.
A size knob (`scale`) and `add_synthetic_table` make benchmark tables with plain SQL, fast.
"""
from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from .source.dialect import quote  # the stand-in is quoted like OpenEdge

DEMO_TABLES = ("famille", "fournis", "produit", "client", "lignecli", "hisprixa")


@dataclass
class Col:
    name: str
    coltype: str  # OpenEdge SQL type name as in SYSCOLUMNS_FULL.coltype
    width: int = 0
    scale: int = 0
    nullable: bool = True
    extent: int = 0
    label: str = ""


@dataclass
class TableDef:
    name: str
    cols: list[Col]
    unique_index: tuple[str, ...]
    rows: list[tuple] = field(default_factory=list)


def _sqlite_decl(c: Col) -> str:
    """Declared SQLite type; chosen so the SQLite ODBC driver reports the OpenEdge SQL type.

    Decimals wider than a double's 15 exact digits are declared as text, so SQLite keeps them exact (the
    drivers then hand over text, which the pipeline converts exactly, as Progress would hand over a Decimal).
    An EXTENT field is text whatever its element type, as OpenEdge SQL hands it over (`1.5;2;?`): declared as a
    number, the SQLite ODBC driver would read `1.5;2;?` as 1.5.
    """
    if c.extent:
        return f"VARCHAR({(max(c.width, 30) + 2) * c.extent})"  # room for any element type's text
    if c.coltype == "numeric" and c.width > 15:
        return f"VARCHAR({c.width + 2})"
    return {
        "varchar": f"VARCHAR({c.width})", "integer": "INTEGER", "bigint": "BIGINT",
        "numeric": f"NUMERIC({c.width},{c.scale})", "date": "DATE", "timestamp": "TIMESTAMP",
        # DATETIME-TZ: ISO text with its offset, which the SQLite ODBC driver reports as TIMESTAMP and hands
        # over converted to UTC without the offset (the case OpenEdge's driver may also present)
        "timestamp_timezone": "TIMESTAMP",
        "bit": "BIT", "varbinary": "VARBINARY", "float": "DOUBLE",
    }[c.coltype]


def encode_extent(values: list[str | None]) -> str:
    """Encode array elements the way OpenEdge SQL returns an EXTENT field."""
    out = []
    for v in values:
        out.append("?" if v is None else v.replace("~", "~~").replace(";", "~;").replace("?", "~?"))
    return ";".join(out)


# -- the Proginov-like schema --------------------------------------------------------------------------------

VILLES = ["Paris", "Lyon", "Rennes", "Nantes", "Brest", "Quimper", "Saint-Étienne", "Besançon", "Orléans", "Nîmes"]
NOMS = ["Société Générale d'Épicerie", "Crème & Fils", "Boulangerie Zoë", "Forêt Noire SARL", "Garçon Café",
        "Les Délices d'Anaïs", "Château Müller", "Œuvre Commune", "Ferme du Lœss", "Müller & Cie"]
WORDS = ["pâte", "brûlée", "crème", "sucre", "farine", "beurre", "lait", "œuf", "sel", "café"]


def _schema() -> list[TableDef]:
    audit = [Col("usr_crt", "varchar", 16), Col("dat_crt", "date"), Col("usr_mod", "varchar", 16),
             Col("dat_mod", "date"), Col("heure", "integer", label="Heure modif (s depuis minuit)")]
    return [
        TableDef("famille", [Col("cod_fam", "varchar", 8, nullable=False), Col("libelle", "varchar", 60),
                             Col("actif", "bit")], ("cod_fam",)),  # no modification date at all
        TableDef("fournis", [Col("cod_fou", "integer", nullable=False), Col("nom", "varchar", 60),
                             Col("ville", "varchar", 40), Col("zta", "varchar", 40, extent=3),
                             *audit], ("cod_fou",)),
        TableDef("produit", [Col("cod_pro", "varchar", 20, nullable=False), Col("libelle", "varchar", 80),
                             Col("gencod-v", "varchar", 26), Col("gencod_v", "varchar", 26),
                             Col("cod_fam", "varchar", 8), Col("prix-vte", "numeric", 15, 4),
                             Col("poids", "numeric", 12, 3), Col("stock", "integer"), Col("order", "integer"),
                             Col("actif", "bit"), *audit], ("cod_pro",)),
        TableDef("client", [Col("cod_cli", "integer", nullable=False), Col("nom", "varchar", 60),
                            Col("raison-soc", "varchar", 60), Col("ville", "varchar", 40),
                            Col("cp", "varchar", 10), Col("email", "varchar", 80), Col("actif", "bit"),
                            Col("ca-annuel", "numeric", 17, 2), Col("zal", "varchar", 80, extent=5),
                            Col("nb_cde", "bigint"), *audit], ("cod_cli",)),
        TableDef("lignecli", [Col("num_cde", "integer", nullable=False), Col("num_lig", "integer", nullable=False),
                              Col("cod_cli", "integer"), Col("cod_pro", "varchar", 20), Col("qte", "numeric", 12, 3),
                              Col("prix", "numeric", 15, 4), Col("dat_liv", "date"),
                              Col("dat-hr-saisie", "timestamp"), *audit], ("num_cde", "num_lig")),
        TableDef("hisprixa", [Col("cod_pro", "varchar", 20, nullable=False), Col("cod_fou", "integer", nullable=False),
                              Col("dat_eff", "date", nullable=False), Col("prix", "numeric", 15, 4),
                              Col("devise", "varchar", 6), *audit], ("cod_pro", "cod_fou", "dat_eff")),
    ]


class _Gen:
    def __init__(self, seed: int, today: date):
        self.r = random.Random(seed)
        self.today = today

    def past_date(self, max_days: int = 2000, min_days: int = 3) -> str:
        return (self.today - timedelta(days=self.r.randint(min_days, max_days))).isoformat()

    def audit(self, recent: bool = False) -> tuple:
        crt = self.past_date(2500, 400)
        mod = self.today.isoformat() if recent else self.past_date(390, 3)
        return ("jdupont", crt, self.r.choice(["mlegall", "akerouac", None]), mod, self.r.randint(0, 86399))

    def maybe(self, value, p_null: float = 0.1):
        return None if self.r.random() < p_null else value

    def dec(self, lo: float, hi: float, scale: int) -> str:
        return f"{self.r.uniform(lo, hi):.{scale}f}"

    def array(self, n: int) -> str:
        elems: list[str | None] = []
        for i in range(n):
            x = self.r.random()
            elems.append(None if x < 0.15 else "" if x < 0.25 else
                         self.r.choice(["a;b", "50% ~ env.", "quoi?", "Crème", "R&D"]) if x < 0.4 else
                         f"{self.r.choice(WORDS)}-{i}")
        return encode_extent(elems)


def _rows(t: TableDef, g: _Gen, n: int, start: int = 1, recent: bool = False) -> list[tuple]:
    r = g.r
    rows = []
    for i in range(start, start + n):
        if t.name == "famille":
            rows.append((f"F{i:03d}", g.maybe(f"Famille {r.choice(WORDS)} {i}"), r.randint(0, 1)))
        elif t.name == "fournis":
            rows.append((i, f"{r.choice(NOMS)} {i}", g.maybe(r.choice(VILLES)), g.array(3), *g.audit(recent)))
        elif t.name == "produit":
            code = f"P{i:05d}"
            rows.append((code, f"{r.choice(WORDS).capitalize()} {r.choice(WORDS)} n°{i}",
                         g.maybe(f"{r.randrange(10**12, 10**13)}"), g.maybe(f"{r.randrange(10**7, 10**8)}", 0.5),
                         f"F{r.randint(1, 12):03d}", g.dec(0, 9999, 4), g.maybe(g.dec(0, 500, 3)),
                         r.randint(-5, 5000), r.randint(0, 9), r.randint(0, 1), *g.audit(recent)))
        elif t.name == "client":
            rows.append((i, r.choice(NOMS), g.maybe(f"{r.choice(NOMS)} SAS"), r.choice(VILLES),
                         f"{r.randint(1000, 95999):05d}", g.maybe(f"contact{i}@exemple.fr", 0.2),
                         g.maybe(r.randint(0, 1), 0.05), g.maybe(g.dec(-1000, 10**9, 2)), g.array(5),
                         g.maybe(r.randint(0, 2**40)), *g.audit(recent)))
        elif t.name == "lignecli":
            num_cde, num_lig = divmod(i - 1, 4)
            rows.append((num_cde + 1000, num_lig + 1, r.randint(1, 150), f"P{r.randint(1, 200):05d}",
                         g.dec(0, 100, 3), g.dec(0, 999, 4), g.maybe(g.past_date(300, 0)),
                         f"{g.past_date(300, 3)} {r.randint(0, 23):02d}:{r.randint(0, 59):02d}:"
                         f"{r.randint(0, 59):02d}.{r.randint(0, 999):03d}", *g.audit(recent)))
        elif t.name == "hisprixa":
            pro, rest = divmod(i - 1, 6)
            fou, k = divmod(rest, 3)
            rows.append((f"P{pro + 1:05d}", fou + 1, (date(2021, 1, 1) + timedelta(days=90 * k + i % 7)).isoformat(),
                         g.dec(0, 999, 4), r.choice(["EUR", "USD", "CHF"]), *g.audit(recent)))
    return rows


BASE_ROWS = {"famille": 12, "fournis": 40, "produit": 200, "client": 150, "lignecli": 1200, "hisprixa": 600}


def _create(con: sqlite3.Connection, t: TableDef) -> None:
    cols = ", ".join(f"{quote(c.name)} {_sqlite_decl(c)}{'' if c.nullable else ' NOT NULL'}" for c in t.cols)
    con.execute(f"DROP TABLE IF EXISTS {quote(t.name)}")
    con.execute(f"CREATE TABLE {quote(t.name)} ({cols}, PRIMARY KEY ({', '.join(map(quote, t.unique_index))}))")


def _register(con: sqlite3.Connection, t: TableDef) -> None:
    """Write the table into the OpenEdge-shaped catalog."""
    con.execute("DELETE FROM SYSTABLES WHERE tbl = ?", (t.name,))
    con.execute("DELETE FROM SYSCOLUMNS_FULL WHERE tbl = ?", (t.name,))
    con.execute("DELETE FROM SYSINDEXES WHERE tbl = ?", (t.name,))
    tid = con.execute("SELECT coalesce(max(id), 0) + 1 FROM SYSTABLES").fetchone()[0]
    con.execute("INSERT INTO SYSTABLES (id, tbl, owner, tbltype) VALUES (?, ?, 'PUB', 'T')", (tid, t.name))
    con.executemany(
        "INSERT INTO SYSCOLUMNS_FULL (id, col, tbl, owner, coltype, width, scale, nullflag, array_extent, label,"
        " col_label, description, format, display_order) VALUES (?, ?, ?, 'PUB', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(str(i), c.name, t.name, c.coltype, c.width, c.scale, "Y" if c.nullable else "N", c.extent,
          c.label or c.name, c.label or c.name, "", f"x({c.width // 2})" if c.coltype == "varchar" else "", i)
         for i, c in enumerate(t.cols, 1)])
    con.executemany(
        "INSERT INTO SYSINDEXES (idxname, tbl, tblowner, colname, idxseq, idxtype, active) "
        "VALUES (?, ?, 'PUB', ?, ?, 'U', 1)",
        [(f"{t.name}-pk", t.name, c, i) for i, c in enumerate(t.unique_index, 1)])


CATALOG_DDL = [
    "CREATE TABLE IF NOT EXISTS SYSTABLES (id INTEGER, tbl VARCHAR(32), owner VARCHAR(32), tbltype VARCHAR(1))",
    "CREATE TABLE IF NOT EXISTS SYSCOLUMNS_FULL (id VARCHAR(10), col VARCHAR(32), tbl VARCHAR(32), owner VARCHAR(32),"
    " coltype VARCHAR(32), width INTEGER, scale INTEGER, nullflag VARCHAR(1), array_extent INTEGER,"
    " label VARCHAR(60), col_label VARCHAR(60), description VARCHAR(200), format VARCHAR(40), display_order INTEGER)",
    "CREATE TABLE IF NOT EXISTS SYSINDEXES (idxname VARCHAR(32), tbl VARCHAR(32), tblowner VARCHAR(32),"
    " colname VARCHAR(32), idxseq INTEGER, idxtype VARCHAR(1), active INTEGER)",
]


def connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path))
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = NORMAL")
    for ddl in CATALOG_DDL:
        con.execute(ddl)
    return con


def generate(path: Path | str, *, scale: float = 1.0, seed: int = 42, today: date | None = None) -> dict[str, int]:
    """(Re)create the demo tables with `scale` × the base row counts; returns rows per table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    g = _Gen(seed, today or date.today())
    counts = {}
    with connect(path) as con:
        for t in _schema():
            _create(con, t)
            _register(con, t)
            n = max(1, int(BASE_ROWS[t.name] * scale))
            rows = _rows(t, g, n)
            con.executemany(f"INSERT INTO {quote(t.name)} VALUES ({', '.join('?' * len(t.cols))})", rows)
            counts[t.name] = n
    con.close()
    return counts


def mutate(path: Path | str, *, seed: int = 7, today: date | None = None) -> dict[str, dict[str, list]]:
    """Change some demo rows like a working day of the ERP: updates, inserts and deletes.

    Updated and inserted rows get `dat_mod` = today, so an incremental run sees them; deletes are invisible
    to a date filter and only a full batch soft-deletes them. Returns the touched keys per table.
    """
    g = _Gen(seed, today or date.today())
    touched: dict[str, dict[str, list]] = {}
    schema = {t.name: t for t in _schema()}
    with connect(Path(path)) as con:
        for name, (n_upd, n_ins, n_del) in {"client": (6, 3, 2), "produit": (5, 2, 1), "fournis": (2, 1, 0),
                                             "lignecli": (10, 8, 4), "hisprixa": (4, 3, 2),
                                             "famille": (1, 1, 1)}.items():
            t = schema[name]
            keycols = ", ".join(map(quote, t.unique_index))
            keys = con.execute(f"SELECT {keycols} FROM {quote(name)} ORDER BY {keycols}").fetchall()
            picked = g.r.sample(keys, n_upd + n_del)
            upd, dele = picked[:n_upd], picked[n_upd:]
            where = " AND ".join(f"{quote(k)} = ?" for k in t.unique_index)
            text_col = next(c.name for c in t.cols if c.coltype == "varchar" and c.name not in t.unique_index)
            for k in upd:
                sets = f"{quote(text_col)} = ?"
                params: list = [f"modifié {g.r.randint(0, 10**6)} é"]
                if any(c.name == "dat_mod" for c in t.cols):
                    sets += ", dat_mod = ?, heure = ?"
                    params += [g.today.isoformat(), g.r.randint(0, 86399)]
                con.execute(f"UPDATE {quote(name)} SET {sets} WHERE {where}", (*params, *k))
            for k in dele:
                con.execute(f"DELETE FROM {quote(name)} WHERE {where}", k)
            # past every row ever inserted (rowids only grow): a second day of changes makes new keys again
            start = con.execute(f"SELECT coalesce(max(rowid), 0) FROM {quote(name)}").fetchone()[0] + 10_000
            new_rows = _rows(t, g, n_ins, start=start, recent=True)
            con.executemany(f"INSERT INTO {quote(name)} VALUES ({', '.join('?' * len(t.cols))})", new_rows)
            touched[name] = {"updated": upd, "deleted": dele,
                             "inserted": [tuple(r[t.cols.index(next(c for c in t.cols if c.name == k))]
                                                for k in t.unique_index) for r in new_rows]}
    con.close()
    return touched


# -- synthetic tables for benchmarks ------------------------------------------------------------------------

_SYNTH_TYPES = [("varchar", 24, 0), ("integer", 0, 0), ("numeric", 12, 2), ("date", 0, 0), ("varchar", 40, 0),
                ("bit", 0, 0), ("numeric", 15, 4), ("bigint", 0, 0)]


def _synth_expr(kind: str, j: int, seed: int) -> str:
    h = f"((x * {2 * j + 7919} + {seed * 31 + j * 17}) % 1000003)"
    return {"varchar": f"CASE WHEN {h} % 17 = 0 THEN NULL ELSE 'v{j}-' || ({h} % 5000) || ' é' END",
            "integer": f"({h} % 100000) - 500",
            "numeric": f"printf('%.2f', ({h} % 10000000) / 100.0)",
            "date": f"date('2015-01-01', '+' || ({h} % 4000) || ' days')",
            "bit": f"{h} % 2",
            "bigint": f"{h} * 1000003"}[kind]


def add_synthetic_table(path: Path | str, name: str, rows: int, cols: int, *, seed: int = 1,
                        today: date | None = None) -> None:
    """A benchmark table `name` with `rows` × `cols` (key `id`, `dat_mod`, `heure`, then mixed types)."""
    today = today or date.today()
    extra = []
    exprs = []
    for j in range(max(0, cols - 3)):
        kind, width, scale = _SYNTH_TYPES[j % len(_SYNTH_TYPES)]
        c = Col(f"c{j:03d}-{kind[:3]}", kind, width, scale)
        if kind == "numeric" and scale == 4:
            exprs.append(f"printf('%.4f', ({_synth_expr('integer', j, seed)}) / 7.0)")
        else:
            exprs.append(_synth_expr(kind, j, seed))
        extra.append(c)
    t = TableDef(name, [Col("id", "integer", nullable=False), Col("dat_mod", "date"), Col("heure", "integer"),
                        *extra], ("id",))
    with connect(Path(path)) as con:
        _create(con, t)
        _register(con, t)
        select = ", ".join(["x", f"date('{(today - timedelta(days=30)).isoformat()}', '-' || (x % 300) || ' days')",
                            "x % 86400", *exprs])
        con.execute(f"INSERT INTO {quote(name)} WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n "
                    f"WHERE x < {int(rows)}) SELECT {select} FROM n")
    con.close()


def touch_synthetic_rows(path: Path | str, name: str, fraction: float, *, today: date | None = None) -> int:
    """Change `fraction` of a synthetic table's rows (new text, dat_mod = today); returns rows changed."""
    today = today or date.today()
    with connect(Path(path)) as con:
        n = con.execute(f"SELECT count(*) FROM {quote(name)}").fetchone()[0]
        step = max(1, round(1 / fraction)) if fraction > 0 else n + 1
        col = next(r[0] for r in con.execute("SELECT col FROM SYSCOLUMNS_FULL WHERE tbl = ? AND coltype = 'varchar'"
                                             " ORDER BY display_order", (name,)))
        cur = con.execute(f"UPDATE {quote(name)} SET {quote(col)} = 'changed ' || id, dat_mod = ? "
                          f"WHERE id % {step} = 0", (today.isoformat(),))
        changed = cur.rowcount
    con.close()
    return changed


def add_table(path: Path | str, table: TableDef) -> None:
    """Create (or replace) a table with its rows and register it in the catalog (tests, special cases)."""
    with connect(Path(path)) as con:
        _create(con, table)
        _register(con, table)
        con.executemany(f"INSERT INTO {quote(table.name)} VALUES ({', '.join('?' * len(table.cols))})", table.rows)
    con.close()


def drop_table(path: Path | str, name: str) -> None:
    with connect(Path(path)) as con:
        con.execute(f"DROP TABLE IF EXISTS {quote(name)}")
        for cat in ("SYSTABLES", "SYSCOLUMNS_FULL", "SYSINDEXES"):
            con.execute(f"DELETE FROM {cat} WHERE tbl = ?", (name,))
    con.close()
