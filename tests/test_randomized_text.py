"""Randomized names and text (seeded, reproducible): random Progress-style names and hostile text values through
the naming rules, the quoting helpers, the hashdiff and the real pipeline on the embedded demo source and the
ODBC stand-in; every value round-trips exactly or is refused naming its table, column and key."""
from __future__ import annotations

import random
import re

import duckdb
import pytest

from cbm_luigi import demo_source
from cbm_luigi.cli import main as cbm_etl
from cbm_luigi.demo_source import Col, TableDef
from cbm_luigi.source.dialect import quote as oe_quote
from cbm_luigi.tasks import LoadTable

from .conftest import build, last_error, on_source, succeeded

SEED = 20261130

# Progress-legal field names: a letter first, then letters, digits, - _ # $ % &; mixed case, reserved words,
# 32 characters, names differing only by - vs _, accented letters (a code page that allows them)
NAME_POOL = ["Prix-Vte", "prix_vte", "prix-vte2", "qte#", "pct%", "cout$", "a&b", "order", "select", "Key",
             "user", "désignation", "Désignation-2", "x" * 32, "y" * 31 + "1", "from-to", "from_to", "a--b", "a-_b",
             "Group", "c1", "c-1", "percent", "libellé-long-" + "z" * 19]

TEXT_ATOMS = ["", " ", "  ", "a", "A", "a ", " a", "\t", "\n", "\r\n", "\x00", "\x01", "\x1f", "\x7f", "'", '"',
              "]", "[", ";", "--", "/*", "*/", "=", ":", "1:", "é", "e\u0301", "\U0001F600", "\U0001F44D\U0001F3FD",
              "日本", "\u200b", "\ufeff", "NULL", "?", "~", "~;", "%", "_", "\\", "'); DROP TABLE x; --",
              "\u2028", "ß", "İ"]


ARRAY_ATOMS = [a for a in TEXT_ATOMS if a not in ("\x01",)]  # U+0001..3 in a split element: refused (documented)


def rtext(r: random.Random, atoms=TEXT_ATOMS) -> str | None:
    k = r.random()
    if k < 0.1:
        return None
    if k < 0.13:
        return "".join(r.choice(atoms) for _ in range(2000))  # a long value
    return "".join(r.choice(atoms) for _ in range(r.randint(0, 6)))


def fuzz_table(env, name="fz", rows=60, seed=SEED, key_text=False):
    r = random.Random(seed)
    cols = [Col("id", "varchar" if key_text else "integer", 40, nullable=False)] + \
        [Col(n, "varchar", 60) for n in NAME_POOL]
    used, data = set(), []
    while len(data) < rows:
        k = rtext(r) if key_text else len(data) + 1
        if k is None or k in used:
            continue
        used.add(k)
        data.append((k, *[rtext(r) for _ in NAME_POOL]))
    demo_source.add_table(env.source, TableDef(name, cols, ("id",), data))
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols) VALUES (?, 'id')", [name])
    assert cbm_etl(["sync-columns", name]) == 0
    return data


def source_of(env, table):
    import sqlite3
    con = sqlite3.connect(env.source)
    try:
        return con.execute(f"SELECT * FROM {oe_quote(table)}").fetchall()
    finally:
        con.close()


def ods_of(env, table):
    names = dict(env.sql("SELECT ColumnName, SqlName FROM config.ETL_Columns WHERE TableName = ?", [table]))
    cols = ["id"] + NAME_POOL
    q = ", ".join(f'"{names[c]}"' for c in cols)
    dim = env.sql("SELECT IsDimension FROM config.ETL_Tables WHERE TableName = ?", [table])[0][0]
    return env.sql(f'SELECT {q} FROM ods."{table}" WHERE NOT _etl_is_deleted' + (" AND _etl_is_current" if dim else ""))


@pytest.mark.parametrize("key_text", [False, True], ids=["int_key", "text_key"])
def test_fuzz_text_round_trips(env, key_text):
    fuzz_table(env, key_text=key_text)
    assert succeeded(build(LoadTable(table="fz", mode="full", batch_tag="a"))), last_error(env, "fz")
    src = sorted(source_of(env, "fz"), key=repr)
    assert sorted(ods_of(env, "fz"), key=repr) == src


MUTATIONS = [
    lambda v: (v or "") + " ",           # a trailing blank
    lambda v: "" if v is None else None,  # NULL <-> ''
    lambda v: None if v is None else v.swapcase(),
    lambda v: (v or "") + "\x00",
    lambda v: (v or "") + "\u0301",      # a combining accent on the last letter
    lambda v: "\x1f" + (v or ""),
    lambda v: (v or "") + "\n",
]


@pytest.mark.parametrize("dim", [False, True], ids=["type1", "scd2"])
def test_fuzz_every_text_change_is_merged(env, dim):
    data = fuzz_table(env, rows=80)
    env.sql("UPDATE config.ETL_Tables SET IsDimension = ? WHERE TableName = 'fz'", [dim])
    assert succeeded(build(LoadTable(table="fz", mode="full", batch_tag="a"))), last_error(env, "fz")
    r = random.Random(SEED + 1)
    changed = 0
    import sqlite3
    con = sqlite3.connect(env.source)
    for row in data:
        mut = r.choice(MUTATIONS + ["swap", "move", None])
        if mut is None:
            continue
        i = r.randrange(len(NAME_POOL))
        a, b = NAME_POOL[i], NAME_POOL[(i + 1) % len(NAME_POOL)]
        va, vb = row[1 + i], row[1 + (i + 1) % len(NAME_POOL)]
        if mut == "swap":
            new = {a: vb, b: va}
        elif mut == "move":
            new = {a: None, b: va} if va is not None else {a: vb, b: None}
        else:
            new = {a: mut(va)}
        if all(new[c] == row[1 + NAME_POOL.index(c)] and (new[c] is None) == (row[1 + NAME_POOL.index(c)] is None)
               for c in new):
            continue
        sets = ", ".join(f"{oe_quote(c)} = ?" for c in new)
        con.execute(f'UPDATE fz SET {sets} WHERE id = ?', [*new.values(), row[0]])
        changed += 1
    con.commit()
    con.close()
    from cbm_luigi.source.readers import release_readers
    release_readers()
    assert changed > 20, changed
    assert succeeded(build(LoadTable(table="fz", mode="full", batch_tag="b"))), last_error(env, "fz")
    assert env.sql("SELECT RowsUpdated FROM etl.ETL_Log WHERE Step = 'merge' AND BatchId LIKE '%-b'") == [(changed,)]
    assert sorted(ods_of(env, "fz"), key=repr) == sorted(source_of(env, "fz"), key=repr)
    # the same source again: nothing changes
    assert succeeded(build(LoadTable(table="fz", mode="full", batch_tag="c"))), last_error(env, "fz")
    assert env.sql("SELECT RowsUpdated FROM etl.ETL_Log WHERE Step = 'merge' AND BatchId LIKE '%-c'") in ([(0,)], [])


TABLE_POOL = ["Art-Ext", "cde#", "pct%", "cout$", "a&b", "order", "select", "t" * 32, "désignation", "Group",
              "x1-2_3"]


def random_table(r: random.Random, name: str):
    pool = r.sample(NAME_POOL, 8)
    key_text, key_int, datecol, tod, arr, *plain = pool
    cols = [Col(key_text, "varchar", 40, nullable=False), Col(key_int, "integer", nullable=False),
            Col(datecol, "date"), Col(tod, "integer"), Col(arr, "varchar", 20, extent=3)] + \
        [Col(n, "varchar", 60) for n in plain]
    rows, used = [], set()
    while len(rows) < 40:
        k = (rtext(r), r.randint(1, 3))
        if k[0] is None or k in used:
            continue
        used.add(k)
        rows.append((*k, "2020-01-01", r.randint(0, 86399),
                     demo_source.encode_extent([rtext(r, ARRAY_ATOMS) for _ in range(3)]), *[rtext(r) for _ in plain]))
    return TableDef(name, cols, (key_text, key_int), rows)


def decode_extent(text, n):
    from .conftest import _decode_extent
    return _decode_extent(text, n)


def expected_rows(env, t: TableDef):
    return sorted((tuple([*row[:4], *decode_extent(row[4], 3), *row[5:]]) for row in source_of(env, t.name)),
                  key=repr)


def actual_rows(env, t: TableDef):
    names = dict(env.sql("SELECT ColumnName, SqlName FROM config.ETL_Columns WHERE TableName = ?", [t.name]))
    out = []
    for c in t.cols:
        out += [f"{names[c.name]}_{i}" for i in (1, 2, 3)] if c.extent else [names[c.name]]
    dest = env.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'ods'")
    from cbm_luigi.naming import sql_safe_name
    tab = sql_safe_name(t.name)
    assert (tab,) in dest, (t.name, dest)
    cur = ' AND _etl_is_current' if env.sql("SELECT IsDimension FROM config.ETL_Tables WHERE TableName = ?",
                                             [t.name])[0][0] else ''
    rows = env.sql(f'SELECT {", ".join(chr(34) + n + chr(34) for n in out)} FROM ods."{tab}" '
                   f'WHERE NOT _etl_is_deleted{cur}')
    return sorted(((*r[:2], str(r[2]) if r[2] else r[2], *r[3:]) for r in rows), key=repr)


@pytest.mark.parametrize("seed", range(4))
def test_fuzz_hostile_tables_full_incremental_scd2(env, seed):
    r = random.Random(SEED + 100 + seed)
    tables = [random_table(r, n) for n in r.sample(TABLE_POOL, 3)]
    for t in tables:
        demo_source.add_table(env.source, t)
        env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols, DateModifCol, TimeOfDayCol, "
                "IsDimension) VALUES (?, ?, ?, ?, ?)",
                [t.name, ",".join(t.unique_index), t.cols[2].name, t.cols[3].name, r.random() < 0.5])
        assert cbm_etl(["sync-columns", t.name]) == 0
    for t in tables:
        assert succeeded(build(LoadTable(table=t.name, mode="full", batch_tag="a"))), last_error(env, t.name)
        assert actual_rows(env, t) == expected_rows(env, t)
    import sqlite3
    from datetime import date
    today = date.today().isoformat()
    con = sqlite3.connect(env.source)
    for t in tables:
        for row in r.sample(t.rows, 10):
            c = r.choice(t.cols[4:])
            v = demo_source.encode_extent([rtext(r, ARRAY_ATOMS) for _ in range(3)]) if c.extent else rtext(r)
            con.execute(f"UPDATE {oe_quote(t.name)} SET {oe_quote(c.name)} = ?, {oe_quote(t.cols[2].name)} = ? "
                        f"WHERE {oe_quote(t.cols[0].name)} = ? AND {oe_quote(t.cols[1].name)} = ?",
                        [v, today, row[0], row[1]])
    con.commit()
    con.close()
    from cbm_luigi.source.readers import release_readers
    release_readers()
    for t in tables:
        assert succeeded(build(LoadTable(table=t.name, mode="incremental", batch_tag="b"))), last_error(env, t.name)
        assert actual_rows(env, t) == expected_rows(env, t)
        assert succeeded(build(LoadTable(table=t.name, mode="full", batch_tag="c"))), last_error(env, t.name)
        assert actual_rows(env, t) == expected_rows(env, t)


@pytest.mark.parametrize("reader", ["pyodbc", "arrow-odbc"])
@pytest.mark.parametrize("seed", range(2))
def test_fuzz_hostile_tables_through_odbc(env, monkeypatch, reader, seed):
    """The same through the ODBC readers; NUL is left out (the SQLite ODBC driver cuts a string there)."""
    from .test_source_odbc import odbc_vars
    for k, v in odbc_vars(env, reader).items():
        monkeypatch.setenv(k, v)
    r = random.Random(SEED + 200 + seed)
    t = random_table(r, r.choice(TABLE_POOL))
    def fit(v):
        return v.replace("\x00", "")[:30] if isinstance(v, str) else v
    t.rows = [(*[fit(v) for v in row[:4]],
               demo_source.encode_extent([fit(e) and fit(e)[:8] for e in decode_extent(row[4], 3)]),
               *[fit(v) for v in row[5:]]) for row in t.rows]  # within the declared widths: arrow-odbc refuses longer values (documented)
    t.rows = list({(row[0], row[1]): row for row in t.rows}.values())
    demo_source.add_table(env.source, t)
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols) VALUES (?, ?)",
            [t.name, ",".join(t.unique_index)])
    assert succeeded(build(LoadTable(table=t.name, mode="full", batch_tag="a"))), last_error(env, t.name)
    assert actual_rows(env, t) == expected_rows(env, t)


# -- a key column whose Progress name is a secret keyword keeps its message ---------------------------------

@pytest.mark.parametrize("key", ["key", "Token", "pass"])
def test_a_key_column_named_like_a_secret_keeps_its_message(env, key):
    """`key`, `token`, `pass` are legal Progress field names (`key` is even in the naming module's reserved-word
    tests). Messages name key values as `<name>=<value>`, and mask_secrets, run over every message, takes
    `key=...`, `token=...`, `pass=...` for a connection-string secret and masked everything up to the next `;`:
    the key value the operator must find in Progress and all the advice after it were gone from etl.ETL_Log
    (found in review). Those words count as secrets where a connection string has them only."""
    demo_source.add_table(env.source, TableDef("cde", [Col(key, "varchar", 10), Col("qte", "integer")], (key,),
                                               [("A1", 1), (None, 2)]))  # `?` in a non-mandatory key field
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols) VALUES ('cde', ?)", [key])
    assert not succeeded(build(LoadTable(table="cde", mode="full")))
    err = last_error(env, "cde")
    assert "unknown (NULL) value in the key" in err, err
    assert "{***}" not in err, err
    assert "set PrimaryKeyCols" in err, err


def test_a_key_column_named_like_a_secret_keeps_a_value_refusal_message(env):
    """The same for a value refused at the extract (conform.py names the key as `token='T1'`): the value and
    what to do were masked away; only `table cde, column qte, key token={***}` was left (found in review)."""
    demo_source.add_table(env.source, TableDef("cde", [Col("token", "varchar", 10, nullable=False),
                                                      Col("qte", "numeric", 5, 2)], ("token",),
                                               [("T1", 1.5), ("T2", 1.234)]))
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols) VALUES ('cde', 'token')")
    assert not succeeded(build(LoadTable(table="cde", mode="full")))
    err = last_error(env, "cde")
    assert "column qte" in err, err
    assert "{***}" not in err and "'T2'" in err and "1.234" in err, err


# -- the array checks name the key as every other message does ----------------------------------------------

def test_array_refusal_names_the_key_as_every_other_message_does(env):
    """A split EXTENT element holding U+0001 (or too many elements) stops the extract naming table, column and
    key; transform.py wrote the key values raw (`code=x, n=9, n=1`): a text key holding `, ` or `=` read as
    other key parts, the text 'NULL' as the unknown value, '' and blanks as nothing (found in review). conform.py,
    steps.py and mssql_wh.py show key values by their repr (`code='x, n=9', n=1`), and so does it now."""
    demo_source.add_table(env.source, TableDef(
        "cde", [Col("code", "varchar", 20, nullable=False), Col("n", "integer", nullable=False),
                Col("zal", "varchar", 10, extent=2)], ("code", "n"),
        [("x, n=9", 1, demo_source.encode_extent(["a\x01", "b"]))]))
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols) VALUES ('cde', 'code,n')")
    assert not succeeded(build(LoadTable(table="cde", mode="full")))
    err = last_error(env, "cde")
    assert "table cde, column zal" in err and "control character" in err, err
    assert "code='x, n=9', n=1" in err, err


# -- plain functions ----------------------------------------------------------------------------------------

def test_fuzz_names_unique_safe_idempotent_and_order_free():
    from cbm_luigi.config_store import _names_in_use, safe_names
    from cbm_luigi.naming import array_element_names, resolve_column_names, sql_safe_name
    from cbm_luigi.source.catalog import CatalogColumn
    from cbm_luigi.source.dialect import result_names, source_alias
    r = random.Random(SEED)
    alphabet = list("abcXYZ019_-#%$&") + ["é", "ß", "Ø", "ǅ", "ﬁ", "²", "İ", "ı", "Ω", "ж", "日", "\u0301", " ", "'",
                                          '"', "]", "[", ";", "?", "=", "\x00", "\U0001F600"]
    words = ["order", "select", "user", "key", "from", "table", "_etl_x", "_ETL_hashdiff", "date", "percent",
             "1st", "OrDeR", "a", "a_1", "a-1", "a_1_1", "A_1", "a_2", "src_etl_x"]
    for _ in range(3000):
        names = list(dict.fromkeys(
            r.choice(words) if r.random() < 0.3 else
            "".join(r.choice(alphabet) for _ in range(r.choice([1, 2, 3, 8, 31, 32, 33, 130])))
            for _ in range(r.randint(1, 10))))
        b = names[0]
        names = list(dict.fromkeys(names + [b.replace("_", "-"), b.upper(), b.replace("-", "_")]))
        m = resolve_column_names(names)
        assert len({v.lower() for v in m.values()}) == len(m), (names, m)
        shuffled = names[:]
        r.shuffle(shuffled)
        assert resolve_column_names(shuffled) == m
        for n, s in m.items():
            assert re.fullmatch(r"[a-z_][a-z0-9_]*", s) and len(s) <= 128 and not s.startswith("_etl_"), (n, s)
            assert sql_safe_name(sql_safe_name(n)) == sql_safe_name(n)
        aliases = [source_alias(s) for s in m.values()]
        assert len(set(aliases)) == len(aliases) and all(len(a) <= 32 for a in aliases)
        assert result_names(aliases, list(m.values())) == list(m.values())
        cols = [CatalogColumn("t", n, "varchar", 10, 0, True, r.choice([0, 0, 1, 2, 12]), "", "", i)
                for i, n in enumerate(names)]
        k = r.randint(0, len(cols))  # the first k synced before, the others added later
        first = safe_names(cols[:k])
        known = {c.name: {"SqlName": first[c.name], "ArrayExtent": c.array_extent} for c in cols[:k]}
        mp = {**first, **safe_names(cols[k:], reserved=_names_in_use(known))}
        out = [e for c in cols for e in (array_element_names(mp[c.name], c.array_extent) if c.array_extent
                                         else [mp[c.name]])]
        # (names of 127+ characters excepted: `_with_suffix` cuts `x_2` and `x_3` back to one element name; Progress
        # names stop at 32 characters, and build_plan refuses such a configuration naming both columns)
        assert len({o.lower() for o in out}) == len(out) or max(map(len, names)) > 120, mp


def test_fuzz_hashdiff_is_injective_on_text():
    from cbm_luigi.transform import hashdiff_expr
    from cbm_luigi.types import map_openedge_type
    s, i = map_openedge_type("varchar", 60, 0), map_openedge_type("integer", 0, 0)
    cols = [("a", s), ("a_", s), ("b", s), ("n", i)]
    r = random.Random(SEED)
    rows = set()
    for _ in range(3000):
        rows.add((rtext(r), rtext(r), rtext(r), r.choice([None, 0, 1, 12])))
    sep = "\x1f"
    for x in ["x", "", "1:", "3:a=b", sep, sep + "b=1:y"]:  # values that imitate the separator and lengths
        for y in [None, "", "y", sep, "a" + sep]:
            rows |= {(x, None, y, None), (x + sep + "b=" + str(len(y or "")) + ":" + (y or ""), None, None, None),
                     (x, y, None, None), (None, x, y, None), (x, None, None, len(y) if y else None)}
    con = duckdb.connect()
    con.execute('CREATE TABLE t (a VARCHAR, a_ VARCHAR, b VARCHAR, n INTEGER)')
    con.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", list(rows))
    got = con.execute(f"SELECT a, a_, b, n, {hashdiff_expr(cols)} FROM t").fetchall()
    by_hash = {}
    for *vals, h in got:
        by_hash.setdefault(h, set()).add(tuple(vals))
    assert all(len(v) == 1 for v in by_hash.values()), [v for v in by_hash.values() if len(v) > 1][:3]
    assert len(got) == len(rows)
