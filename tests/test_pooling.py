"""pooling.ConnectionPool: the SQL Server warehouse's sessions and the source's readers reuse this process's
connections instead of logging in each time (about 15 warehouse sessions a table). The pool is exercised on real
ODBC connections (unixODBC + the SQLite ODBC driver): lending, nesting, a failed session, a connection dropped
behind its back, a forked worker. No SQL Server
runs here: the last test drives MssqlWarehouse.session over fake connections (said there), and
tests/test_mssql_live.py checks the reuse on a real server when one is given."""
from __future__ import annotations

import os
import sqlite3

import pytest

from cbm_luigi import pooling
from cbm_luigi.pooling import ConnectionPool

pyodbc = pytest.importorskip("pyodbc")
if "SQLite3" not in pyodbc.drivers():
    pytest.fail("the SQLite3 ODBC driver is not installed: `make setup` installs libsqliteodbc")


@pytest.fixture
def odbc(tmp_path):
    """connect() to a real ODBC database, counting the logins; is_clean() asks one question, as for SQL Server."""
    path = tmp_path / "pool.sqlite"
    sqlite3.connect(path).close()
    made = []

    def connect():
        con = pyodbc.connect(f"DRIVER={{SQLite3}};Database={path}", autocommit=True)
        made.append(con)
        return con

    def is_clean(con):
        return con.cursor().execute("SELECT 1").fetchone()[0] == 1

    return connect, is_clean, made


def test_sessions_one_after_another_share_one_login(odbc):
    connect, is_clean, made = odbc
    pool = ConnectionPool(connect, is_clean)
    for i in range(5):
        with pool.connection() as con:
            con.execute("CREATE TABLE IF NOT EXISTS t (i INTEGER)")
            con.execute("INSERT INTO t VALUES (?)", i)
    assert len(made) == 1
    with pool.connection() as con:
        assert con is made[0] and con.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 5


def test_a_nested_session_gets_a_connection_of_its_own(odbc):
    connect, is_clean, made = odbc
    pool = ConnectionPool(connect, is_clean)
    with pool.connection() as outer:
        with pool.connection() as inner:
            assert inner is not outer
    assert len(made) == 2
    with pool.connection() as a, pool.connection() as b:  # both kept, both lent again
        assert {id(a), id(b)} == {id(c) for c in made}
    assert len(made) == 2


def test_a_failed_session_closes_its_connection(odbc):
    connect, is_clean, made = odbc
    pool = ConnectionPool(connect, is_clean)
    with pytest.raises(ZeroDivisionError):
        with pool.connection() as con:
            con.execute("SELECT 1")
            1 / 0
    with pytest.raises(pyodbc.ProgrammingError):  # closed, not kept in whatever state the failure left it
        made[0].execute("SELECT 1")
    with pool.connection() as con:
        assert con is not made[0]
    assert len(made) == 2


def test_a_connection_dropped_while_idle_is_replaced(odbc):
    connect, is_clean, made = odbc
    pool = ConnectionPool(connect, is_clean)
    with pool.connection():
        pass
    made[0].close()  # as a server restart or an idle timeout would
    with pool.connection() as con:
        assert con is made[1] and con.execute("SELECT 1").fetchone()[0] == 1


def test_a_connection_that_is_not_clean_is_closed_not_lent(odbc):
    connect, _is_clean, made = odbc
    verdicts = iter([False])
    pool = ConnectionPool(connect, lambda con: next(verdicts, True))
    with pool.connection():
        pass
    with pool.connection() as con:  # the kept one said it is not clean (SQL Server: @@TRANCOUNT > 0)
        assert con is made[1]
    with pytest.raises(pyodbc.ProgrammingError):
        made[0].execute("SELECT 1")


def test_at_most_keep_connections_are_kept(odbc):
    connect, is_clean, made = odbc
    pool = ConnectionPool(connect, is_clean, keep=2)
    with pool.connection(), pool.connection(), pool.connection():
        pass
    open_ = []
    for con in made:
        try:
            con.execute("SELECT 1")
            open_.append(con)
        except pyodbc.ProgrammingError:
            pass
    assert len(made) == 3 and len(open_) == 2


def test_a_forked_worker_neither_uses_nor_closes_its_parents_connections(odbc):
    """Luigi forks a worker per task with --workers > 1: the child shares the parent's sockets, so it logs in
    itself and leaves the parent's connections open (a logout from the child would end the parent's session)."""
    connect, is_clean, made = odbc
    pool = ConnectionPool(connect, is_clean)
    with pool.connection():
        pass
    parents = made[0]
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never run pytest's teardown
        code = 0
        try:
            with pool.connection() as con:
                code |= 1 if con is parents else 0
            code |= 2 if len(made) != 2 else 0
            with pool.connection() as con:
                code |= 4 if con is not made[1] else 0  # its own connection is kept for its next session
            code |= 8 if parents not in pooling._INHERITED else 0
        except BaseException:  # noqa: BLE001
            code |= 16
        os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with pool.connection() as con:  # the parent goes on with its own
        assert con is parents and con.execute("SELECT 1").fetchone()[0] == 1


class FakeMssqlConnection:
    """Stands in for a pyodbc connection to SQL Server, which cannot run here: answers @@TRANCOUNT only."""

    def __init__(self, made):
        self.trancount, self.closed = 0, False
        made.append(self)

    def cursor(self):
        con = self

        class Cursor:
            def execute(self, sql, *params):
                assert sql == "SELECT @@TRANCOUNT" and not con.closed
                self.row = (con.trancount,)
                return self

            def fetchone(self):
                return self.row

            def close(self):
                pass
        return Cursor()

    def close(self):
        self.closed = True


def test_mssql_sessions_reuse_a_connection_outside_a_transaction(monkeypatch):
    from cbm_luigi.settings import load_settings
    from cbm_luigi.warehouse.mssql_wh import MssqlWarehouse

    monkeypatch.setenv("CBM_WAREHOUSE_KIND", "mssql")
    monkeypatch.setenv("CBM_MSSQL_ODBC", "Driver={ODBC Driver 18 for SQL Server};Server=pooltest;UID=u;PWD=p")
    made: list[FakeMssqlConnection] = []
    monkeypatch.setattr(MssqlWarehouse, "_connect", lambda self: FakeMssqlConnection(made))
    monkeypatch.setattr(pooling, "_POOLS", {})
    wh = MssqlWarehouse(load_settings())
    for _ in range(3):
        with wh.session() as s:
            con = s.con
    assert made == [con]
    con.trancount = 1  # left inside a transaction: never lent again
    with wh.session() as s:
        assert s.con is not con and con.closed
    with MssqlWarehouse(load_settings()).session() as s:  # another instance, same server: the same pool
        assert s.con is made[1] and len(made) == 2
