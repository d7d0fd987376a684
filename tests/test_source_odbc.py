"""The source layer through a real ODBC driver manager (unixODBC) and driver (SQLite ODBC), against the demo
stand-in attached as PUB and SYSPROGRESS: the whole pipeline loads through pyodbc and arrow-odbc exactly as
through the embedded reader."""
from __future__ import annotations

import pytest

from cbm_luigi.extract import read_extract_meta
from cbm_luigi.settings import load_settings
from cbm_luigi.source import catalog
from cbm_luigi.source.readers import ArrowOdbcReader, PyodbcReader, open_reader
from cbm_luigi.tasks import LoadAll

from .conftest import DEMO_TABLES, TABLE_KEYS, assert_ods_equals_source, build, make_env, ods_rows, succeeded

pyodbc = pytest.importorskip("pyodbc")
if "SQLite3" not in pyodbc.drivers():
    pytest.fail("the SQLite3 ODBC driver is not installed: `make setup` installs libsqliteodbc")


def odbc_vars(env, reader: str) -> dict[str, str]:
    src = env.source
    return {"CBM_SOURCE_KIND": "odbc", "CBM_SOURCE_DIALECT": "sqlite-standin", "CBM_ODBC_READER": reader,
            "CBM_SOURCE_ODBC": f"DRIVER={{SQLite3}};Database={src};StepAPI=1;PWD=s3cret",
            "CBM_SOURCE_INIT_SQL": f"ATTACH DATABASE '{src}' AS PUB;;ATTACH DATABASE '{src}' AS SYSPROGRESS"}


@pytest.mark.parametrize("reader,cls", [("pyodbc", PyodbcReader), ("arrow-odbc", ArrowOdbcReader)])
def test_pipeline_through_odbc_equals_embedded(tmp_path, monkeypatch, reader, cls):
    embedded = make_env(tmp_path / "embedded", monkeypatch)
    assert succeeded(build(LoadAll(mode="full")))
    expected = {t: ods_rows(embedded, t, TABLE_KEYS[t]) for t in DEMO_TABLES}

    env = make_env(tmp_path / "odbc", monkeypatch)
    for k, v in odbc_vars(env, reader).items():
        monkeypatch.setenv(k, v)
    with open_reader(load_settings()) as r:
        assert isinstance(r, cls)
    assert succeeded(build(LoadAll(mode="full")))
    for t in DEMO_TABLES:
        assert_ods_equals_source(env, t)
        assert ods_rows(env, t, TABLE_KEYS[t]) == expected[t]
        assert env.sql(f'SELECT _etl_hashdiff FROM ods."{t}" ORDER BY ALL') == \
            embedded.sql(f'SELECT _etl_hashdiff FROM ods."{t}" ORDER BY ALL')  # same canonical form, same hash
    # the extract files say which reader wrote them
    metas = [read_extract_meta(p) for p in env.cache.glob("*/full/*.extract.parquet")]
    assert len(metas) == len(DEMO_TABLES) and {m["reader"] for m in metas} == {reader}


def test_catalog_discovery_through_odbc(env, monkeypatch):
    for k, v in odbc_vars(env, "pyodbc").items():
        monkeypatch.setenv(k, v)
    with open_reader(load_settings()) as r:
        assert set(DEMO_TABLES) <= set(catalog.list_tables(r))
        cols = catalog.read_columns(r, "client")
        zal = next(c for c in cols if c.name == "zal")
        assert (zal.coltype, zal.array_extent, zal.width) == ("varchar", 5, 80)
        ca = next(c for c in cols if c.name == "ca-annuel")
        assert (ca.coltype, ca.width, ca.scale, ca.nullable) == ("numeric", 17, 2, True)
        assert not next(c for c in cols if c.name == "cod_cli").nullable
        assert catalog.proposed_key(r, "lignecli") == ["num_cde", "num_lig"]
        assert catalog.modification_candidates(cols) == ("dat_mod", "heure")
        assert catalog.row_count(r, "client") == 150


def test_discovery_does_not_propose_an_inactive_unique_index(env, monkeypatch):
    """An index added online stays inactive (not enforced) until idxbuild: its columns may hold duplicates."""
    import sqlite3

    with sqlite3.connect(env.source) as con:
        con.executemany("INSERT INTO SYSINDEXES (idxname, tbl, tblowner, colname, idxseq, idxtype, active) "
                        "VALUES (?, 'lignecli', 'PUB', ?, 1, 'U', ?)", [("a-new", "cod_pro", 0), ("b-ean", "num_lig", 1)])
    for k, v in odbc_vars(env, "pyodbc").items():
        monkeypatch.setenv(k, v)
    with open_reader(load_settings()) as r:
        assert catalog.proposed_key(r, "lignecli") == ["num_lig"]  # the shortest active one, not "a-new"
        with sqlite3.connect(env.source) as con:
            con.execute("UPDATE SYSINDEXES SET active = 0 WHERE idxname = 'b-ean'")
        assert catalog.proposed_key(r, "lignecli") == ["num_cde", "num_lig"]


def test_odbc_errors_are_short_masked_and_actionable(env, monkeypatch):
    for k, v in odbc_vars(env, "pyodbc").items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CBM_SOURCE_ODBC", "DRIVER={No Such Driver};HOST=erp;PWD=s3cret")
    with pytest.raises(Exception) as exc:
        open_reader(load_settings())
    text = str(exc.value)
    assert "s3cret" not in text
    assert "odbcinst -q -d" in text  # the likely fix for a missing driver


@pytest.mark.parametrize("reader", ["embedded", "pyodbc", "arrow-odbc"])
def test_a_stream_runs_its_statement_when_called_and_reads_when_iterated(env, monkeypatch, reader):
    """The extract asks for the stream before DuckDB plans the transform, so the source is already at work: a
    statement that cannot run fails at the call, and the batches arrive in full when read."""
    if reader != "embedded":
        for k, v in odbc_vars(env, reader).items():
            monkeypatch.setenv(k, v)
    with open_reader(load_settings()) as r:
        with pytest.raises(Exception, match="(?i)no such table"):
            r.stream("SELECT id FROM PUB.no_such_table", [], None, 10)
        stream = r.stream('SELECT "cod_cli" FROM PUB."client" ORDER BY 1', [], None, 40)
        batches = list(stream)
        # at most 40 rows a batch; the DB-API readers fetch a few rows first to learn their size in bytes, then
        # at most twice the rows of the fetch before
        sizes = [b.num_rows for b in batches]
        assert sum(sizes) == 150 and max(sizes) == 40
        assert all(b <= 2 * a for a, b in zip(sizes, sizes[1:])) and sizes.count(40) >= len(sizes) - 3, sizes
        assert batches[0].column(0)[0].as_py() == min(row[0] for row in r.query('SELECT "cod_cli" FROM PUB."client"'))


def test_a_stream_closed_before_its_first_batch_releases_the_cursor(env):
    # the extract closes the stream whatever happened, also when DuckDB failed before asking for a batch; SQLite
    # refuses to detach a database that an open statement still reads ("database PUB is locked")
    with open_reader(load_settings()) as r:
        stream = r.stream('SELECT "cod_cli" FROM PUB."client"', [], None, 10)
        stream.close()
        r.con.execute("DETACH DATABASE PUB")
        stream = r.stream('SELECT "cod_cli" FROM SYSPROGRESS."client"', [], None, 10)
        assert sum(b.num_rows for b in stream) == 150  # read to the end: released as well
        r.con.execute("DETACH DATABASE SYSPROGRESS")


def test_a_stream_closed_after_its_connection_warns_instead_of_hiding_the_error_being_raised(env, caplog):
    r = open_reader(load_settings())
    stream = r.stream('SELECT "cod_cli" FROM PUB."client"', [], None, 10)
    assert next(stream).num_rows == 10
    r.close()  # e.g. the pooled reader closed on an error before the extract's `finally` closes the stream
    stream.close()
    stream.close()  # idempotent
    assert any("closing a source cursor failed" in m for m in caplog.messages)
    assert list(stream) == []


@pytest.mark.parametrize("reader", ["pyodbc", "arrow-odbc"])
def test_a_failing_init_statement_is_named_not_said_as_a_failed_connection(env, monkeypatch, reader):
    """The connection was made, then a CBM_SOURCE_INIT_SQL statement failed: the message said "source: connect
    failed", naming neither the setting nor the statement, and the operator checked the DSN, the host and the
    broker, which were fine (found in review). Real unixODBC + SQLite ODBC driver: the second statement attaches
    a file that cannot exist."""
    for k, v in odbc_vars(env, reader).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CBM_SOURCE_INIT_SQL", f"ATTACH DATABASE '{env.source}' AS PUB;;"
                                              f"ATTACH DATABASE '/nonexistent/dir/vault.db' AS vault KEY 'Tok3n-4f9a'")
    from cbm_luigi.source.errors import SourceError

    with pytest.raises(SourceError) as info:
        open_reader(load_settings())
    text = str(info.value)
    assert text.startswith("source: statement 2 of CBM_SOURCE_INIT_SQL (not shown: it may carry a key) failed"), text
    assert text.endswith("The connection itself was made: fix or remove that setting in .env.")
    # neither the connection's password nor a key the statement carries, nor its other quoted values: the driver
    # quotes the file it could not open (found in review: the statement was shown whole, key included)
    assert "s3cret" not in text and "Tok3n" not in text and "vault.db" not in text, text


def test_a_link_lost_during_the_set_up_is_not_blamed_on_the_setting(env, monkeypatch):
    """The connection is made, then the link drops on a set-up statement: a network failure, which the message
    called one ("check HOST/PORT ...") and then told the operator to fix or remove the setting, such as the
    READ UNCOMMITTED isolation that keeps the ERP's records unlocked (found in review). The link failure is
    injected on the real driver's connection (a wrapper whose execute raises it)."""
    from cbm_luigi.source.errors import SourceError

    for k, v in odbc_vars(env, "pyodbc").items():
        monkeypatch.setenv(k, v)
    real_connect = pyodbc.connect

    class LinkDropped:
        def __init__(self, con):
            object.__setattr__(self, "_con", con)

        def execute(self, sql, *a):
            raise pyodbc.OperationalError("08S01", "[08S01] [DataDirect][ODBC Progress OpenEdge Wire Protocol "
                                                   "driver]Communication link failure (injected)")

        def __getattr__(self, name):
            return getattr(self._con, name)

        def __setattr__(self, name, value):
            setattr(self._con, name, value)

    monkeypatch.setattr(pyodbc, "connect", lambda *a, **kw: LinkDropped(real_connect(*a, **kw)))
    with pytest.raises(SourceError) as info:
        open_reader(load_settings())
    text = str(info.value)
    assert info.value.transient and "Communication link failure" in text, text
    assert text.endswith("The connection was made, then its link failed during the set-up: run the command again "
                         "once the server answers (the setting is not at fault).") and "fix or remove" not in text
