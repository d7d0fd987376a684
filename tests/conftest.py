"""Shared fixtures: an isolated home per test (demo source + DuckDB warehouse + cache), helpers to run the
real pipeline through Luigi and to read source and ods rows for row-by-row comparison."""
from __future__ import annotations

import contextlib
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import luigi
import pytest

from cbm_luigi import demo_source, tasks
from cbm_luigi.cli import main as cbm_etl
from cbm_luigi.source.readers import release_readers
from cbm_luigi.warehouse.duckdb_wh import release_connections

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass
class Env:
    home: Path
    source: Path
    warehouse: Path
    cache: Path

    def vars(self) -> dict[str, str]:
        return {"CBM_HOME": str(self.home), "CBM_ENV_FILE": "", "CBM_DEMO_SOURCE": str(self.source),
                "CBM_DUCKDB_PATH": str(self.warehouse), "CBM_CACHE_DIR": str(self.cache)}

    def con(self) -> duckdb.DuckDBPyConnection:
        return duckdb.connect(str(self.warehouse))

    def sql(self, q: str, params=None) -> list[tuple]:
        with self.con() as c:
            return c.execute(q, params or []).fetchall()


def make_env(root: Path, monkeypatch, *, init: bool = True, scale: float = 1.0) -> Env:
    release_connections()
    release_readers()
    env = Env(root, root / "source.sqlite", root / "wh.duckdb", root / "cache")
    for k, v in env.vars().items():
        monkeypatch.setenv(k, v)
    for k in ("CBM_SOURCE_KIND", "CBM_SOURCE_ODBC", "CBM_SOURCE_INIT_SQL", "CBM_SOURCE_DIALECT", "CBM_ODBC_READER",
              "CBM_WAREHOUSE_KIND", "CBM_PAUSE_AT", "CBM_FAIL_AT"):
        monkeypatch.delenv(k, raising=False)
    tasks.clear_config_cache()
    luigi.task_register.Register.clear_instance_cache()
    demo_source.generate(env.source, scale=scale)
    if init:
        assert cbm_etl(["init-db"]) == 0
    return env


@pytest.fixture
def env(tmp_path, monkeypatch) -> Env:
    return make_env(tmp_path, monkeypatch)


def build(*task_list, **kw) -> luigi.execution_summary.LuigiRunResult:
    """luigi.build on the local scheduler. Tasks must be created after the test's env is set: Luigi caches
    instances by parameters, and a cached instance keeps the settings of the env it was made in."""
    tasks.clear_config_cache()
    try:
        return luigi.build(list(task_list), local_scheduler=True, detailed_summary=True, log_level="WARNING", **kw)
    finally:
        release_connections()  # let a later subprocess (or another env) open the warehouse file
        release_readers()  # a test may replace the source file next


def succeeded(result) -> bool:
    return result.status in (luigi.execution_summary.LuigiStatusCode.SUCCESS,
                             luigi.execution_summary.LuigiStatusCode.SUCCESS_WITH_RETRY)


# -- independent reading of the demo source (does not use the pipeline's reader or transform) ---------------

def _decode_extent(text: str | None, n: int) -> list[str | None]:
    if text is None:
        return [None] * n
    out, cur, i, quoted_unknown = [], "", 0, False
    while i < len(text):
        ch = text[i]
        if ch == "~" and i + 1 < len(text):
            cur += text[i + 1]
            quoted_unknown = True
            i += 2
            continue
        if ch == ";":
            out.append(None if cur == "?" and not quoted_unknown else cur)
            cur, quoted_unknown = "", False
        else:
            cur += ch
        i += 1
    out.append(None if cur == "?" and not quoted_unknown else cur)
    return (out + [None] * n)[:n]


def on_source(env: Env, *sql: str, params=()) -> None:
    """Run statements on the test's source (as the ERP would change it) and let the next read see them."""
    con = sqlite3.connect(str(env.source))
    try:
        for q in sql:
            con.execute(q, params)
        con.commit()
    finally:
        con.close()
    release_readers()


def take_rows(env: Env, table: str) -> list[tuple]:
    """Delete every row of a source table (as the ERP rebuilding it would) and return them for put_rows."""
    con = sqlite3.connect(str(env.source))
    try:
        rows = con.execute(f'SELECT * FROM "{table}"').fetchall()
        con.execute(f'DELETE FROM "{table}"')
        con.commit()
    finally:
        con.close()
    release_readers()
    return rows


def put_rows(env: Env, table: str, rows: list[tuple]) -> None:
    """Put back rows that take_rows removed."""
    con = sqlite3.connect(str(env.source))
    try:
        con.executemany(f'INSERT INTO "{table}" VALUES ({", ".join("?" * len(rows[0]))})', rows)
        con.commit()
    finally:
        con.close()
    release_readers()


_REBUILD = re.compile(r"`luigi --module cbm_luigi LoadTable --table (\S+) --mode full --batch-tag (rebuild-[0-9a-f]{8})`")


def advised_rebuild(err: str, table: str) -> str:
    """The batch tag of the full load a message gives to rebuild `table` (steps.rebuild_command)."""
    m = _REBUILD.search(err)
    assert m and m.group(1) == table, err
    return m.group(2)


def last_error(env: Env, table: str) -> str:
    """The table's latest FAILED etl.ETL_Log message ('' when none)."""
    rows = env.sql("SELECT ErrorMessage FROM etl.ETL_Log WHERE TableName = ? AND Status = 'FAILED' "
                   "ORDER BY LogId DESC LIMIT 1", [table])
    return rows[0][0] if rows else ""


def source_rows(path: Path, table: str) -> dict[tuple, dict]:
    """Rows of a demo table as Python values keyed by primary key, with SQL-safe names (from the catalog)."""
    con = sqlite3.connect(str(path))
    cols = con.execute("SELECT col, coltype, scale, array_extent FROM SYSCOLUMNS_FULL WHERE tbl = ? "
                       "ORDER BY display_order", (table,)).fetchall()
    key = [r[0] for r in con.execute("SELECT colname FROM SYSINDEXES WHERE tbl = ? ORDER BY idxseq", (table,))]
    names = {"gencod-v": "gencod_v_2", "order": "order_"}
    out = {}
    for row in con.execute(f'SELECT * FROM "{table}"'):
        rec = {}
        for (col, coltype, scale, extent), v in zip(cols, row):
            name = names.get(col, col.replace("-", "_"))
            if extent:
                for i, e in enumerate(_decode_extent(v, extent), 1):
                    rec[f"{name}_{i}"] = e
                continue
            if v is not None:
                if coltype == "date":
                    v = date.fromisoformat(v)
                elif coltype == "timestamp":
                    v = datetime.fromisoformat(v)
                elif coltype == "numeric":
                    v = Decimal(v).quantize(Decimal(1).scaleb(-scale))
                elif coltype == "bit":
                    v = bool(v)
            rec[name] = v
        out[tuple(rec[names.get(k, k.replace("-", "_"))] for k in key)] = rec
    con.close()
    return out


def ods_rows(env: Env, table: str, keys: list[str], *, deleted: bool | None = False) -> dict[tuple, dict]:
    """Live rows of ods.<table> (current version for SCD2), business columns only, keyed by `keys`."""
    with env.con() as c:
        cols = [r[0] for r in c.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = "
                                        "'ods' AND table_name = ? ORDER BY ordinal_position", [table]).fetchall()]
        where = []
        if "_etl_is_current" in cols:
            where.append("_etl_is_current")
        if deleted is not None:
            where.append("_etl_is_deleted" if deleted else "NOT _etl_is_deleted")
        rows = c.execute(f'SELECT * FROM ods."{table}"' + (" WHERE " + " AND ".join(where) if where else ""))
        names = [d[0] for d in rows.description]
        data = rows.fetchall()
    out = {}
    for r in data:
        rec = {n: v for n, v in zip(names, r) if not n.startswith("_etl_")}
        out[tuple(rec[k] for k in keys)] = rec
    return out


DEMO_TABLES = demo_source.DEMO_TABLES
TABLE_KEYS = {"famille": ["cod_fam"], "fournis": ["cod_fou"], "produit": ["cod_pro"], "client": ["cod_cli"],
              "lignecli": ["num_cde", "num_lig"], "hisprixa": ["cod_pro", "cod_fou", "dat_eff"]}


def assert_ods_equals_source(env: Env, table: str) -> None:
    src = source_rows(env.source, table)
    ods = ods_rows(env, table, TABLE_KEYS[table])
    assert set(ods) == set(src), f"{table}: keys differ: only in source {set(src) - set(ods)}, only in ods " \
                                 f"{set(ods) - set(src)}"
    for k, row in src.items():
        assert ods[k] == row, f"{table} key {k}: ods {ods[k]} != source {row}"


@contextlib.contextmanager
def as_root(do: list[str], undo: list[str], what: str):
    """A change only root can make (a mount, a file attribute), undone on exit; the test is skipped without it."""
    made = subprocess.run(do, capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot {what} here: {made.stderr!r}")
    try:
        yield
    finally:
        subprocess.run(undo, check=False)


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tiny filesystem of our own at `path` (root only), unmounted on exit."""
    path.mkdir(parents=True, exist_ok=True)
    with as_root(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], ["umount", "-l", str(path)],
                 "mount a tmpfs (root and CAP_SYS_ADMIN needed)"):
        yield path


def subprocess_env(env: Env, **extra) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("CBM_")}
    e.update(env.vars())
    e.update({"PATH": f"{BIN}:{e.get('PATH', '')}", "LUIGI_CONFIG_PATH": str(REPO / "luigi.cfg")})
    e.update(extra)
    return e


@contextlib.contextmanager
def running_luigid(env: Env, state_dir: Path):
    """A real luigid on a free local port, up when this yields the port; stopped on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon = subprocess.Popen([str(BIN / "luigid"), "--port", str(port), "--address", "127.0.0.1", "--state-path",
                               str(state_dir / "luigid.state"), "--logdir", str(state_dir)],
                              env=subprocess_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/ping", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        daemon.terminate()
        daemon.wait(10)

