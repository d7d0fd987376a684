"""The Progress OpenEdge quirks of /work/shared/reference (arrays and their escapes, names, types at their limits,
keys) end to end, through the embedded reader and the ODBC path (unixODBC + the SQLite ODBC driver standing in for
Progress), asserting what lands in ods.<t> or what the error names."""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import luigi
import pytest

from cbm_luigi import demo_source
from cbm_luigi.demo_source import Col, TableDef, encode_extent
from cbm_luigi.source.dialect import quote
from cbm_luigi.tasks import LoadTable

from .conftest import build, succeeded
from .test_source_odbc import odbc_vars

READERS = ["embedded", "pyodbc", "arrow-odbc"]


def raw_table(path, name: str, cols: list[tuple[Col, str]], key: tuple[str, ...], rows: list[tuple], *,
              pk: bool = True) -> None:
    """A stand-in table whose SQLite declared types are chosen here (so the ODBC driver reports what a Progress
    driver may report), registered in the OpenEdge-shaped catalog with each Col's coltype."""
    t = TableDef(name, [c for c, _decl in cols], key, rows)
    con = demo_source.connect(path)
    with con:
        con.execute(f"DROP TABLE IF EXISTS {quote(name)}")
        defs = ", ".join(f"{quote(c.name)} {decl}" for c, decl in cols)
        con.execute(f"CREATE TABLE {quote(name)} ({defs}"
                    + (f", PRIMARY KEY ({', '.join(map(quote, key))}))" if pk else ")"))
        demo_source._register(con, t)
        con.executemany(f"INSERT INTO {quote(name)} VALUES ({', '.join('?' * len(cols))})", rows)
    con.close()


def configure(env, monkeypatch, reader: str, table: str, keys: str = "id", date_col: str | None = None,
              **extra) -> None:
    if reader != "embedded":
        for k, v in odbc_vars(env, reader).items():
            monkeypatch.setenv(k, v)
    fields = {"TableName": table, "PrimaryKeyCols": keys, "DateModifCol": date_col, **extra}
    fields = {k: v for k, v in fields.items() if v is not None}
    env.sql(f"INSERT INTO config.ETL_Tables ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})",
            list(fields.values()))


def run(table: str, **kw) -> bool:
    return succeeded(build(LoadTable(table=table, mode="full", **kw)))


def failure(env, table: str) -> str:
    rows = env.sql("SELECT ErrorMessage FROM etl.ETL_Log WHERE TableName = ? AND Status = 'FAILED' "
                   "ORDER BY LogId DESC", [table])
    return rows[0][0] if rows else ""


def ods(env, table: str, cols: list[str], order: str = "id") -> list[tuple]:
    return env.sql(f'SELECT {", ".join(quote(c) for c in cols)} FROM ods.{quote(table)} ORDER BY {quote(order)}')


def ods_columns(env, table: str) -> list[str]:
    return [r[0] for r in env.sql("SELECT column_name FROM information_schema.columns WHERE table_schema = 'ods' "
                                  "AND table_name = ? ORDER BY ordinal_position", [table])]


# -- arrays ------------------------------------------------------------------------------------------------------

ARRAY_ROWS = [
    (1, "a~;b;c~~d;~?;?;"),  # escapes, an escaped ?, an unknown element, an empty one
    (2, ";;;;"),  # five empty elements
    (3, "?;?;?;?;?"),  # five unknown elements
    (4, None),  # the whole field unknown
    (5, "x~~;y~~~;z;w?;?x"),  # a `~` at an element's end, `~;` right after one, a `?` inside an element
    (6, "~~?;~?~?;;;"),  # `~` then an unknown-looking `?`, two literal ?
]
ARRAY_SPLIT = {
    1: ("a;b", "c~d", "?", None, ""),
    2: ("", "", "", "", ""),
    3: (None, None, None, None, None),
    4: (None, None, None, None, None),
    5: ("x~", "y~;z", "w?", "?x", None),
    6: ("~?", "??", "", "", ""),
}


@pytest.mark.parametrize("reader", READERS)
def test_arrays_split_end_to_end(env, monkeypatch, reader):
    raw_table(env.source, "tabarr", [(Col("id", "integer", nullable=False), "INTEGER"),
                                     (Col("zal", "varchar", 80, extent=5), "VARCHAR(400)")], ("id",), ARRAY_ROWS)
    configure(env, monkeypatch, reader, "tabarr")
    assert run("tabarr"), failure(env, "tabarr")
    got = {r[0]: r[1:] for r in ods(env, "tabarr", ["id", "zal_1", "zal_2", "zal_3", "zal_4", "zal_5"])}
    assert got == ARRAY_SPLIT


@pytest.mark.parametrize("reader", READERS)
def test_arrays_single_end_to_end(env, monkeypatch, reader):
    raw_table(env.source, "tabarr", [(Col("id", "integer", nullable=False), "INTEGER"),
                                     (Col("zal", "varchar", 80, extent=5), "VARCHAR(400)")], ("id",), ARRAY_ROWS)
    configure(env, monkeypatch, reader, "tabarr")
    from cbm_luigi.cli import main as cbm_etl
    assert cbm_etl(["sync-columns", "tabarr"]) == 0
    env.sql("UPDATE config.ETL_Columns SET ArrayMode = 'single' WHERE TableName = 'tabarr' AND ColumnName = 'zal'")
    assert run("tabarr"), failure(env, "tabarr")
    got = dict(ods(env, "tabarr", ["id", "zal"]))
    assert got == dict(ARRAY_ROWS)
    hashes = [r[0] for r in env.sql("SELECT _etl_hashdiff FROM ods.tabarr")]
    assert len(set(hashes)) == len(hashes)


@pytest.mark.parametrize("reader", READERS)
def test_array_with_more_elements_than_its_extent_is_refused_naming_it(env, monkeypatch, reader):
    raw_table(env.source, "tabarr", [(Col("id", "integer", nullable=False), "INTEGER"),
                                     (Col("zal", "varchar", 80, extent=3), "VARCHAR(400)")], ("id",),
              [(1, "a;b;c"), (2, "a;b;c;d"), (3, "a")])
    configure(env, monkeypatch, reader, "tabarr")
    assert not run("tabarr")
    err = failure(env, "tabarr")
    assert "table tabarr, column zal, key id=2" in err and "4 array elements" in err and "sync-columns" in err, err


# -- names ---------------------------------------------------------------------------------------------------------

NAME_COLS = ["id", "order", "user", "key", "Order-Date", "order_date", "a#b", "a$b", "a%b", "a&b", "_etl_hashdiff",
             "src_etl_hashdiff", "_ETL_is_current", "zal_1", "zal", "designation-commerciale-longue-a",
             "designation_commerciale_longue_a", "designation#commerciale-longue-a", "_etl_l_0", "src", "shaped"]


@pytest.mark.parametrize("reader", READERS)
def test_colliding_names_land_in_their_own_columns(env, monkeypatch, reader):
    cols = [(Col(n, "integer", nullable=n != "id") if n != "zal" else Col(n, "varchar", 20, extent=2),
             "INTEGER" if n != "zal" else "VARCHAR(50)") for n in NAME_COLS]
    row = tuple(i if n != "zal" else f"e{i}a;e{i}b" for i, n in enumerate(NAME_COLS))
    raw_table(env.source, "noms", cols, ("id",), [row])
    configure(env, monkeypatch, reader, "noms")
    assert run("noms"), failure(env, "noms")
    names = dict(env.sql("SELECT ColumnName, SqlName FROM config.ETL_Columns WHERE TableName = 'noms'"))
    got = dict(zip(ods_columns(env, "noms"), env.sql("SELECT * FROM ods.noms")[0]))
    for i, n in enumerate(NAME_COLS):
        if n == "zal":
            assert (got[names[n] + "_1"], got[names[n] + "_2"]) == (f"e{i}a", f"e{i}b")
        else:
            assert got[names[n]] == i, n
    assert len(set(names.values())) == len(names)


# -- types ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reader", READERS)
def test_quirky_types_land_exactly(env, monkeypatch, reader):
    big = "123456789012345678901234567.1234567890"  # 27 + 10 digits: fits DECIMAL(38,10)
    long_text = ("😀é" * 20000) + "z"
    raw_table(env.source, "typs", [
        (Col("id", "integer", nullable=False), "INTEGER"),
        (Col("d", "date"), "DATE"),
        (Col("tz", "timestamp_timezone"), "VARCHAR(40)"),  # the driver reports DATETIME-TZ as character
        (Col("n50", "numeric", 50, 10), "VARCHAR(52)"),
        (Col("clob", "lvarchar"), "TEXT"),
        (Col("b", "bit"), "BIT"),
        (Col("rid", "recid"), "INTEGER"),
        (Col("dat_mod", "date"), "DATE"), (Col("heure", "integer"), "INTEGER"),
    ], ("id",), [
        (1, "0001-01-01", "2020-01-01 10:00:00.123+02:00", big, long_text, 1, 2**31 - 1, "0001-01-01", 0),
        (2, "9999-12-31", "2020-06-30 23:59:59.000-05:30", "-" + big, "", 0, 1, "9999-12-31", 86399),
        (3, None, None, None, None, None, None, None, None),
    ])
    configure(env, monkeypatch, reader, "typs", date_col="dat_mod", TimeOfDayCol="heure")
    assert run("typs"), failure(env, "typs")
    got = {r[0]: r[1:] for r in env.sql("SELECT id, d, CAST(timezone('UTC', tz) AS VARCHAR), n50, clob, b, rid, "
                                        "_etl_source_ts FROM ods.typs ORDER BY id")}
    assert got[1] == (date(1, 1, 1), "2020-01-01 08:00:00.123", Decimal(big), long_text, True, 2**31 - 1,
                      datetime(1, 1, 1))
    assert got[2] == (date(9999, 12, 31), "2020-07-01 05:29:59", Decimal("-" + big), "", False, 1,
                      datetime(9999, 12, 31, 23, 59, 59))
    assert got[3] == (None,) * 7


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("table", ["user", "order", "a%b&c#d$e", "Fact-Ligne-Commande-Historique-X", "key",
                                   "%2Fx", "a%20b"])
def test_table_names(env, monkeypatch, reader, table):
    raw_table(env.source, table, [(Col("id", "integer", nullable=False), "INTEGER"),
                                  (Col("v", "varchar", 10), "VARCHAR(10)"), (Col("dat_mod", "date"), "DATE")],
              ("id",), [(1, "x", "2020-01-01"), (2, "y", "2020-01-02")])
    configure(env, monkeypatch, reader, table, date_col="dat_mod")
    assert run(table), failure(env, table)
    from cbm_luigi.naming import sql_safe_name
    dest = sql_safe_name(table)
    assert env.sql(f'SELECT id, v FROM ods."{dest}" ORDER BY id') == [(1, "x"), (2, "y")]
    assert succeeded(build(LoadTable(table=table, mode="incremental")))


QUIRKY_COLS = [
    (Col("id", "integer", nullable=False), "INTEGER"),
    (Col("d", "date"), "DATE"),
    (Col("tz", "timestamp_timezone"), "VARCHAR(40)"),
    (Col("n50", "numeric", 50, 10), "VARCHAR(52)"),
    (Col("clob", "lvarchar"), "TEXT"),
    (Col("b", "bit"), "BIT"),
    (Col("rid", "recid"), "INTEGER"),
    (Col("zal", "varchar", 80, extent=5), "VARCHAR(400)"),
    (Col("f", "float"), "DOUBLE"),
    (Col("ts", "timestamp"), "TIMESTAMP"),
    (Col("dat_mod", "date"), "DATE"), (Col("heure", "integer"), "INTEGER"),
]
QUIRKY_ROWS = [
    (1, "0001-01-01", "2020-01-01 10:00:00.123+02:00", "123456789012345678901234567.1234567890", "😀é" * 50, 1,
     2**31 - 1, "a~;b;c~~d;~?;?;", 0.1, "0001-01-01 00:00:00.000", "0001-01-01", 0),
    (2, "9999-12-31", "2020-06-30 23:59:59.000-05:30", "-0.0000000001", "", 0, 1, ";;;;", 1e300,
     "9999-12-31 23:59:59.999", "9999-12-31", 86399),
    (3, None, None, None, None, None, None, None, None, None, None, None),
    (4, "2024-02-29", "2024-02-29 00:00:00.000+14:00", "0", "x", None, 0, "?;?;?;?;?", -0.0, "2024-02-29 12:00:00.5",
     "2024-02-29", None),
]


@pytest.mark.parametrize("dimension", [False, True])
def test_switching_reader_changes_nothing(env, monkeypatch, dimension):
    raw_table(env.source, "quirky", QUIRKY_COLS, ("id",), QUIRKY_ROWS)
    configure(env, monkeypatch, "embedded", "quirky", date_col="dat_mod", TimeOfDayCol="heure",
              IsDimension=dimension)
    assert run("quirky"), failure(env, "quirky")
    first = env.sql("SELECT id, _etl_hashdiff FROM ods.quirky ORDER BY id")
    for i, reader in enumerate(["pyodbc", "arrow-odbc", "embedded"]):
        if reader == "embedded":
            for k in ("CBM_SOURCE_KIND", "CBM_SOURCE_ODBC", "CBM_SOURCE_INIT_SQL", "CBM_SOURCE_DIALECT",
                      "CBM_ODBC_READER"):
                monkeypatch.delenv(k)
        else:
            for k, v in odbc_vars(env, reader).items():
                monkeypatch.setenv(k, v)
        assert run("quirky", batch_tag=f"r{i}"), failure(env, "quirky")
        merge = env.sql("SELECT RowsInserted, RowsUpdated, RowsUnchanged FROM etl.ETL_Log WHERE Step = 'merge' "
                        "ORDER BY LogId DESC LIMIT 1")[0]
        assert (reader, merge) == (reader, (0, 0, 4)), env.sql("SELECT * FROM ods.quirky ORDER BY id")
        assert env.sql("SELECT id, _etl_hashdiff FROM ods.quirky ORDER BY id") == first


@pytest.mark.parametrize("reader", READERS)
def test_null_and_duplicate_keys_at_the_source_are_refused_naming_them(env, monkeypatch, reader):
    raw_table(env.source, "nk", [(Col("id", "integer"), "INTEGER"), (Col("x", "integer"), "INTEGER")], ("id",),
              [(1, 1), (None, 2), (None, 3)], pk=False)
    configure(env, monkeypatch, reader, "nk")
    assert not run("nk")
    assert "table nk: 2 row(s) of the batch have an unknown (NULL) value in the key (id)" in failure(env, "nk")
    raw_table(env.source, "dk", [(Col("id", "varchar", 10), "VARCHAR(10)"), (Col("x", "integer"), "INTEGER")],
              ("id",), [("a", 1), ("a", 2), ("A", 3)], pk=False)
    env.sql("INSERT INTO config.ETL_Tables (TableName, PrimaryKeyCols) VALUES ('dk', 'id')")
    assert not run("dk")
    assert "table dk: the batch has duplicate keys (id); first: id='a' (2 rows)" in failure(env, "dk")
    assert env.sql("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'ods'") == [(0,)]


@pytest.mark.parametrize("reader", READERS)
def test_a_refused_value_is_named_by_its_progress_column_not_by_a_sibling(env, monkeypatch, reader):
    """`prix-vte` was configured first and owns the SQL name prix_vte; the field `prix_vte` added later in Progress
    got prix_vte_2. A value of `prix-vte` that does not fit must name `prix-vte`: the message names prix_vte,
    which is the *other* Progress column, so following its advice (fix the row in Progress, override or
    exclude the column's row in config.ETL_Columns) changes the wrong column."""
    from cbm_luigi.cli import main as cbm_etl
    cols = [(Col("id", "integer", nullable=False), "INTEGER"), (Col("prix-vte", "numeric", 5, 2), "NUMERIC(5,2)")]
    raw_table(env.source, "tarif", cols, ("id",), [(1, 1.5)])
    configure(env, monkeypatch, reader, "tarif")
    assert run("tarif"), failure(env, "tarif")
    cols.append((Col("prix_vte", "numeric", 5, 2), "NUMERIC(5,2)"))  # a field added in the Data Dictionary
    raw_table(env.source, "tarif", cols, ("id",), [(1, 1.5, 2.5), (2, 1234.5, 3.5)])
    assert cbm_etl(["sync-columns", "tarif"]) == 0
    assert dict(env.sql("SELECT ColumnName, SqlName FROM config.ETL_Columns WHERE TableName = 'tarif'")) == {
        "id": "id", "prix-vte": "prix_vte", "prix_vte": "prix_vte_2"}
    assert not run("tarif", batch_tag="2")
    err = failure(env, "tarif")
    assert "value 1234.5" in err, err
    assert "column prix-vte" in err, err  # the Progress field the operator must fix, override or exclude
    assert "column prix-vte (prix_vte in the warehouse)" in err, err  # and where ods keeps it
    assert "column prix_vte," not in err and "column prix_vte " not in err, err


def test_configuration_fields_name_columns_by_progress_name_and_refuse_a_name_of_two(env, monkeypatch):
    """PrimaryKeyCols holds Progress names (a column's SQL name is taken too): `PRIX-VTE` is the field `prix-vte`;
    `prix_vte` is both the field of that name and the SQL name of `prix-vte`, so it is refused naming the two
    unambiguous spellings; the key errors name the key by its Progress names."""
    import pytest as _pytest

    from cbm_luigi.plan import ConfigError, build_plan

    def col(name, sql, pos):
        return {"ColumnName": name, "SqlName": sql, "DataType": "integer", "OrdinalPosition": pos}
    cols = [col("prix-vte", "prix_vte", 1), col("prix_vte", "prix_vte_2", 2)]
    assert build_plan({"TableName": "tarif", "PrimaryKeyCols": "PRIX-VTE"}, cols).keys == ["prix_vte"]
    plan = build_plan({"TableName": "tarif", "PrimaryKeyCols": "prix_vte_2"}, cols)
    assert plan.keys == ["prix_vte_2"] and plan.key_names == ["prix_vte"]
    with _pytest.raises(ConfigError) as exc:
        build_plan({"TableName": "tarif", "PrimaryKeyCols": "prix_vte"}, cols)
    assert str(exc.value) == ("config.ETL_Tables[tarif].PrimaryKeyCols: 'prix_vte' names two columns of table "
                              "tarif, the Progress field 'prix_vte' and 'prix-vte' by its SQL name: write "
                              "'prix-vte' for the second, or 'prix_vte_2' (its SQL name) for the first")

    raw_table(env.source, "cle", [(Col("cod-cli", "varchar", 10), "VARCHAR(10)"), (Col("x", "integer"), "INTEGER")],
              ("cod-cli",), [("a", 1), ("a", 2)], pk=False)
    configure(env, monkeypatch, "embedded", "cle", keys="cod-cli")
    assert not run("cle")
    assert "the batch has duplicate keys (cod-cli); first: cod-cli='a' (2 rows)" in failure(env, "cle")


# -- the OpenEdge fact sheet, checked (review) ----------------------------------------------------------------

def test_a_driver_error_quoting_the_number_193_is_not_called_a_32_64_bit_driver_mismatch(env, monkeypatch):
    """errors._RULES matched `\\b193\\b` anywhere in the driver's text (meant for `IM003 ... system error 193`;
    found in review).
    OpenEdge quotes the SQL around a syntax error (`Syntax error in SQL statement at or about "193)" (10713)`),
    SQLite says `near "193": syntax error`: a FilterClause typo next to the number 193 is reported as "the ODBC
    driver could not be loaded: 32/64-bit mismatch or wrong driver path in CBM_SOURCE_ODBC", which sends the
    operator to the driver installation instead of the FilterClause. (The same rule would also take any value,
    host address or record id 193 in a driver message, and wins over the rules below it: a network error
    mentioning `10.0.0.193` would lose its `transient` retry.)"""
    raw_table(env.source, "flt", [(Col("id", "integer", nullable=False), "INTEGER"),
                                  (Col("cod_soc", "integer"), "INTEGER")], ("id",), [(1, 193), (2, 7)])
    configure(env, monkeypatch, "pyodbc", "flt", FilterClause="cod_soc IN (1 193)")  # a comma forgotten
    assert not run("flt")
    err = failure(env, "flt")
    assert "syntax error" in err, err  # the driver's own words are there ...
    assert "32/64-bit" not in err and "could not be loaded" not in err, err  # ... but the advice is about the driver


def test_a_missing_column_named_like_network_is_not_called_a_lost_connection(env, monkeypatch):
    """Same cause as above (errors._RULES: patterns matched anywhere in the text, the first match wins; found in
    review): the connection rule's bare `network` came before the no-such-column rule, so a FilterClause naming a column that
    is not there (`network_id`, dropped at the source) is reported as "the connection to the Progress server
    failed: check HOST/PORT and that the SQL broker runs", and classed transient (worth a retry)."""
    raw_table(env.source, "flt2", [(Col("id", "integer", nullable=False), "INTEGER"),
                                   (Col("v", "integer"), "INTEGER")], ("id",), [(1, 1)])
    configure(env, monkeypatch, "pyodbc", "flt2", FilterClause="network_id = 1")
    assert not run("flt2")
    err = failure(env, "flt2")
    assert "no such column" in err, err
    assert "HOST/PORT" not in err and "sync-columns" in err, err


def test_a_modification_date_that_is_an_extent_field_is_refused_as_configuration(env, monkeypatch):
    """An EXTENT field arrives as one `;`-separated VARCHAR (fact sheet, Arrays). build_plan refuses an array as a
    key column, but takes a date EXTENT field (`zda`, one of Proginov's user arrays) as DateModifCol or an integer
    EXTENT field as TimeOfDayCol (found in review): the incremental window then compared the array's text with a date, and the
    full load died in DuckDB with `invalid timestamp field format: "2024-01-01;2024-02-01"`, followed by the
    generic advice "The batch file was not written; fix the cause (free space in CBM_CACHE_DIR?)". The message
    should be a configuration error naming DateModifCol, like the one for keys."""
    raw_table(env.source, "arrdm", [(Col("id", "integer", nullable=False), "INTEGER"),
                                    (Col("zda", "date", extent=2), "VARCHAR(40)")], ("id",),
              [(1, encode_extent(["2024-01-01", "2024-02-01"])), (2, encode_extent([None, "2024-03-01"]))])
    configure(env, monkeypatch, "embedded", "arrdm", date_col="zda", HasTimestamps=True)
    assert not run("arrdm")
    err = failure(env, "arrdm")
    assert "free space" not in err, err
    assert "DateModifCol" in err and ("EXTENT" in err or "array" in err), err


def test_the_query_timeout_is_not_sent_as_the_login_timeout(env, monkeypatch):
    """CBM_QUERY_TIMEOUT_S is documented as the per-query timeout (.env.template), and the DataDirect driver's
    LoginTimeout option (fact sheet, driver options; the template's DSN sets LoginTimeout=30) bounds the connect.
    PyodbcReader passes CBM_QUERY_TIMEOUT_S to pyodbc.connect(timeout=...), which is SQL_ATTR_LOGIN_TIMEOUT
    (pyodbc's docstring), and that attribute overrides the DSN's LoginTimeout (DataDirect: 'To override the value
    set by this connection option ... set SQL_ATTR_LOGIN_TIMEOUT'). With a one-hour query cap, a connect to a dead
    server waited an hour instead of 30 s, on every attempt (CBM_CONNECT_RETRIES). Used by CBM_ODBC_READER=pyodbc,
    and by the arrow-odbc reader's second reads (a value that is not UTF-8, a value longer than its buffer)."""
    import pyodbc

    for k, v in odbc_vars(env, "pyodbc").items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CBM_SOURCE_ODBC", odbc_vars(env, "pyodbc")["CBM_SOURCE_ODBC"] + ";LoginTimeout=30")
    monkeypatch.setenv("CBM_QUERY_TIMEOUT_S", "3600")
    seen = []
    real = pyodbc.connect

    def spy(*a, **kw):
        seen.append(kw.get("timeout"))
        return real(*a, **kw)
    monkeypatch.setattr(pyodbc, "connect", spy)
    assert succeeded(build(LoadTable(table="famille", mode="full")))
    assert seen, "the pyodbc reader was not used"
    assert 3600 not in seen, f"SQL_ATTR_LOGIN_TIMEOUT set to the query timeout on connect: {seen}"


def test_every_source_statement_of_the_default_reader_runs_under_the_query_timeout(env, monkeypatch):
    """CBM_QUERY_TIMEOUT_S ('per-query timeout in seconds', .env.template; QueryTimeout in the fact sheet's driver
    options) reaches the extract's SELECT through arrow-odbc (the default reader, CBM_ODBC_READER=auto), but
    ArrowOdbcReader.query() sent the catalog statements (SYSCOLUMNS_FULL, SYSINDEXES, COUNT(*)) and the
    SYSCALCTABLE ping run before every table on a kept connection without it (found in review): a server that
    stops answering hung sync-columns, discover and the nightly's next table for ever instead of timing out (HYT00, which
    errors.py turns into 'raise CBM_QUERY_TIMEOUT_S ... or rerun')."""
    import importlib

    ao = importlib.import_module("arrow_odbc.connect")  # the module (the package's `connect` is a function)

    for k, v in odbc_vars(env, "arrow-odbc").items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CBM_QUERY_TIMEOUT_S", "7")
    seen = []
    real = ao.Connection.read_arrow_batches

    def spy(self, query, *a, **kw):
        seen.append((query.split(" FROM ")[1][:40] if " FROM " in query else query[:40], kw.get("query_timeout_sec")))
        return real(self, query, *a, **kw)
    monkeypatch.setattr(ao.Connection, "read_arrow_batches", spy)
    assert succeeded(build(LoadTable(table="famille", mode="full")))  # columns synced on first use, then read
    assert any(t == 7 for _q, t in seen), seen  # the extract's SELECT has it
    untimed = [q for q, t in seen if t != 7]
    assert not untimed, f"statements sent without CBM_QUERY_TIMEOUT_S: {untimed}"


@pytest.mark.parametrize("literal, wrong_advice", [
    ("access denied", "GRANT SELECT"),
    ("timed out", "raise CBM_QUERY_TIMEOUT_S"),
    ("login failed", "check UID/PWD"),
    ("connection refused", "check HOST/PORT"),
])
def test_a_phrase_in_the_quoted_statement_does_not_choose_the_driver_advice(env, monkeypatch, literal, wrong_advice):
    """The SQLSTATEs and the bare `network` in errors._RULES were anchored because 'a driver's message quotes
    the statement back, and its numbers or words chose the advice'; the phrases of the other rules still matched
    anywhere (found in review). A FilterClause on a status text whose closing quote was forgotten (`motif <> 'access denied`, the
    same kind of typo as the commit's `IN (1 193)`) is quoted back by the driver (SQLite: `unrecognized token:
    "'access denied)"`, OpenEdge: `at or about "..." (10713)`), and the advice is GRANT SELECT / the query timeout
    / UID-PWD / HOST-PORT instead of the syntax error in FilterClause. A syntax error is said first."""
    raw_table(env.source, "motifs", [(Col("id", "integer", nullable=False), "INTEGER"),
                                     (Col("motif", "varchar", 30), "VARCHAR(30)")], ("id",), [(1, "ok")])
    configure(env, monkeypatch, "pyodbc", "motifs", FilterClause=f"motif <> '{literal}")  # closing quote forgotten
    assert not run("motifs")
    err = failure(env, "motifs")
    assert literal in err, err  # the driver quoted the statement back ...
    assert wrong_advice not in err and "FilterClause" in err, err  # ... and its words chose the advice


def test_the_default_readers_set_up_statements_run_under_the_query_timeout_too(env, monkeypatch):
    """arrow-odbc's catalog reads and connection check run under CBM_QUERY_TIMEOUT_S, and .env.template says the
    timeout covers 'every statement on the source'. ArrowOdbcReader sent its set-up statements through
    Connection.execute without `query_timeout_sec` (found in review): CBM_SOURCE_INIT_SQL here, and on Progress
    `SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED`, run on every new connection (the default reader, default
    isolation). A server that accepts the login and then stops answering hangs the night there, for ever, the
    failure fixed for the catalog reads. PyodbcReader sets `con.timeout` before the same statements."""
    import importlib

    ao = importlib.import_module("arrow_odbc.connect")
    for k, v in odbc_vars(env, "arrow-odbc").items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CBM_QUERY_TIMEOUT_S", "7")
    seen = []
    real = ao.Connection.execute

    def spy(self, query, *a, **kw):
        seen.append((query[:40], kw.get("query_timeout_sec")))
        return real(self, query, *a, **kw)
    monkeypatch.setattr(ao.Connection, "execute", spy)
    assert succeeded(build(LoadTable(table="famille", mode="full")))
    assert seen, "no set-up statement went through arrow-odbc"
    untimed = [q for q, t in seen if t != 7]
    assert not untimed, f"set-up statements sent without CBM_QUERY_TIMEOUT_S: {untimed}"


def test_arrow_odbc_refusing_a_row_wider_than_its_batch_buffer_says_what_to_do(env, monkeypatch):
    """arrow-odbc sizes a row's buffer from the declared widths (4 bytes a character, CLOBs at MAX_TEXT_BYTES) and
    refuses a table whose one row needs more than max_bytes_per_batch (64 MiB, fixed in readers.py): 600 columns
    of VARCHAR(31995) (or ~525 CLOBs, or 1,990 columns averaging 8,500 characters of SQL width). The table stops
    with arrow-odbc's own words ("You should either set a higher upper bound for the buffer size, or limit the
    length of the variadic columns"): no setting of cbm_luigi raises that bound, and neither the widest columns
    nor the ways out (IsExcluded, a SUBSTRING SourceExpression, CBM_ODBC_READER=pyodbc, which reads the same
    rows) are named."""
    n = 600
    cols = [(Col("id", "integer", nullable=False), "INTEGER")]
    cols += [(Col(f"c{j:03d}", "varchar", 31995), "VARCHAR(31995)") for j in range(n)]
    cols += [(Col("dat_mod", "date"), "DATE")]
    raw_table(env.source, "widevc", cols, ("id",), [(i, *[f"v{i}-{j}" for j in range(n)], "2026-01-01")
                                                    for i in range(1, 4)])
    configure(env, monkeypatch, "arrow-odbc", "widevc", date_col="dat_mod")
    assert not succeeded(build(LoadTable(table="widevc", mode="full")))
    err = failure(env, "widevc")
    assert "CBM_ODBC_READER=pyodbc" in err and "IsExcluded" in err and "SUBSTRING" in err, err[:800]
    assert "widest c000 (127,980 bytes)" in err, err[:800]  # named by the SQL names the warehouse shows
    # the way out it gives works: pyodbc reads the same rows
    monkeypatch.setenv("CBM_ODBC_READER", "pyodbc")
    luigi.task_register.Register.clear_instance_cache()
    assert succeeded(build(LoadTable(table="widevc", mode="full", batch_tag="pyodbc"))), failure(env, "widevc")[:500]
    assert env.sql("SELECT count(*), max(c599) FROM ods.widevc") == [(3, "v3-599")]
