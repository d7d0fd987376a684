"""What the documents tell an operator to do, done literally: the crontab line of OPERATIONS.md, the settings of
config/.env.template, the commands quoted in messages (found in a review that followed every doc as written)."""
from __future__ import annotations

import re
import subprocess

import pytest

from cbm_luigi.settings import load_settings
from cbm_luigi.tasks import LoadAll

from .conftest import BIN, DEMO_TABLES, REPO, assert_ods_equals_source, build, running_luigid, subprocess_env, \
    succeeded


def _cron_line(days: str, at: str = "30 1") -> str:
    """The command of OPERATIONS.md's crontab entry at `at` on `days` (the fields after the five schedule
    fields)."""
    text = (REPO / "OPERATIONS.md").read_text()
    block = re.search(r"```cron\n(.*?)```", text, re.S).group(1)
    when = rf"^{re.escape(at)} \* \* {re.escape(days)}\s+"
    return re.sub(when, "", next(ln for ln in block.splitlines() if re.match(when, ln)))


def test_the_documented_nightly_crontab_line_loads_on_a_fresh_deployment(env, tmp_path_factory):
    """OPERATIONS.md, "Nightly run": the Monday-Saturday crontab line, run as written on a deployment set up as
    the README says (init-db done, luigid running on the ETL host, luigi.cfg in the directory cron cds to). The
    line appended to var/log/nightly.log, which nothing created: sh could not open the redirection, luigi never
    ran, and the page said `cbm_luigi failed: 2`, every night."""
    home = env.home  # the directory cron cds into (/opt/cbm_luigi), with its luigi.cfg and .venv
    (home / ".venv" / "bin").mkdir(parents=True)
    (home / ".venv" / "bin" / "luigi").symlink_to(BIN / "luigi")
    with running_luigid(env, tmp_path_factory.mktemp("luigid")) as port:
        cfg = (REPO / "luigi.cfg").read_text().replace(
            "[core]\n", f"[core]\nscheduler_host = 127.0.0.1\nscheduler_port = {port}\n", 1)
        (home / "luigi.cfg").write_text(cfg)
        command = _cron_line("1-6").replace("/opt/cbm_luigi", str(home)).replace(
            "/opt/bin/page-data-team", "echo PAGED")
        cron_env = {k: v for k, v in subprocess_env(env).items() if k != "LUIGI_CONFIG_PATH"}
        run = subprocess.run(["/bin/sh", "-c", command], env=cron_env, capture_output=True, text=True, timeout=300)
    assert "PAGED" not in run.stdout, f"the documented cron line paged: {run.stdout} {run.stderr}"
    log = home / "var" / "log" / "nightly.log"
    assert log.is_file() and "Luigi Execution Summary" in log.read_text()
    for t in DEMO_TABLES:
        assert_ods_equals_source(env, t)


def test_the_documented_sla_crontab_line_pages_for_a_table_not_ok_and_only_then(env):
    """OPERATIONS.md's morning `check-sla` line, run as written in the deployment's directory (nothing in var/log
    yet): it pages while a table has never validated, with check-sla's exit code, and stays quiet once every
    table is loaded."""
    home = env.home
    (home / ".venv" / "bin").mkdir(parents=True)
    (home / ".venv" / "bin" / "cbm-etl").symlink_to(BIN / "cbm-etl")
    command = _cron_line("*", at="0 7").replace("/opt/cbm_luigi", str(home)).replace(
        "/opt/bin/page-data-team", "echo PAGED")

    def cron():
        run = subprocess.run(["/bin/sh", "-c", command], env=subprocess_env(env), capture_output=True, text=True,
                             timeout=300)
        return run.stdout + run.stderr

    out = cron()
    assert "PAGED cbm_luigi SLA: 2 (see var/log/sla.log)" in out, out
    assert "client: NEVER_LOADED: no load has validated yet" in (home / "var" / "log" / "sla.log").read_text()
    assert succeeded(build(LoadAll(mode="full")))
    out = cron()
    assert "PAGED" not in out, out
    assert (home / "var" / "log" / "sla.log").read_text().splitlines()[-1] == \
        "check-sla: 0 of 6 active table(s) not OK"


def _refused_connect(calls, pyodbc):
    def connect(*_a, **_k):
        calls.append(1)
        raise pyodbc.OperationalError("08S01", "[08S01] [unixODBC] communication link failure")
    return connect


def test_cbm_connect_retries_means_the_same_number_of_retries_for_sql_server_as_for_progress(monkeypatch):
    """config/.env.template: `CBM_CONNECT_RETRIES=3` "connection retries for transient errors (network,
    timeout)": 1 + N attempts, for Progress and for SQL Server alike (SQL Server made N: with
    CBM_CONNECT_RETRIES=1 a network blip at the nightly's first warehouse session failed the run)."""
    pyodbc = pytest.importorskip("pyodbc")
    from cbm_luigi.source import readers
    from cbm_luigi.source.dialect import dialect_for
    from cbm_luigi.warehouse import mssql_wh

    for k, v in {"CBM_ENV_FILE": "", "CBM_CONNECT_RETRIES": "1", "CBM_WAREHOUSE_KIND": "mssql",
                 "CBM_MSSQL_ODBC": "DRIVER={ODBC Driver 18 for SQL Server};SERVER=dwh;UID=etl;PWD=x",
                 "CBM_SOURCE_KIND": "odbc", "CBM_SOURCE_ODBC": "DSN=erp;UID=etl;PWD=x",
                 "CBM_ODBC_READER": "pyodbc"}.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()
    assert settings.connect_retries == 1
    monkeypatch.setattr(mssql_wh.time, "sleep", lambda _s: None)
    monkeypatch.setattr(readers.time, "sleep", lambda _s: None)

    source_calls: list = []
    monkeypatch.setattr(pyodbc, "connect", _refused_connect(source_calls, pyodbc))
    with pytest.raises(Exception):
        readers.PyodbcReader(settings, dialect_for("openedge"))
    assert len(source_calls) == 2  # one attempt and the one retry asked for

    warehouse_calls: list = []
    monkeypatch.setattr(pyodbc, "connect", _refused_connect(warehouse_calls, pyodbc))
    with pytest.raises(RuntimeError, match="cannot connect to SQL Server"):
        mssql_wh.MssqlWarehouse(settings)._connect()
    assert len(warehouse_calls) == len(source_calls), \
        f"CBM_CONNECT_RETRIES=1: Progress was tried {len(source_calls)} times, SQL Server {len(warehouse_calls)}"


def test_cbm_query_timeout_bounds_the_source_query_not_the_sql_server_merge(monkeypatch):
    """luigi.cfg: "no limit on a task's running time: a full extract of a big table may take hours
    (CBM_QUERY_TIMEOUT_S bounds the source query instead)"; config/.env.template lists it under Source. An operator
    who sets it to bound a hung Progress read (an hour, say) must not bound the SQL Server warehouse's statements
    (it did: a MERGE, a key index or an ALTER COLUMN of a big ods table running past it failed every night)."""
    pyodbc = pytest.importorskip("pyodbc")
    from cbm_luigi.warehouse import mssql_wh

    for k, v in {"CBM_ENV_FILE": "", "CBM_QUERY_TIMEOUT_S": "3600", "CBM_WAREHOUSE_KIND": "mssql",
                 "CBM_MSSQL_ODBC": "DRIVER={ODBC Driver 18 for SQL Server};SERVER=dwh;UID=etl;PWD=x"}.items():
        monkeypatch.setenv(k, v)
    settings = load_settings()

    class Cursor:
        def execute(self, *_a):
            return self

        def close(self):
            pass

    class Connection:
        timeout = 0  # pyodbc's: seconds before any statement on the connection is cancelled (0: none)

        def cursor(self):
            return Cursor()

    monkeypatch.setattr(pyodbc, "connect", lambda *_a, **_k: Connection())
    con = mssql_wh.MssqlWarehouse(settings)._connect()
    assert con.timeout == 0, f"CBM_QUERY_TIMEOUT_S=3600 cancels any SQL Server statement after {con.timeout} s"


def test_the_advice_for_a_warehouse_without_the_state_table_changes_nothing_else(env):
    """A warehouse from before etl.ETL_TableState: every load stops with "the warehouse lacks
    etl.ETL_TableState: run `cbm-etl init-db --no-tables`": the command the message quotes must change nothing
    else (plain init-db also adds back every row of config/tables.csv missing from config.ETL_Tables: a table the
    team removed from the configuration came back, active, and the next night read it in full)."""
    from cbm_luigi.cli import main as cbm_etl

    env.sql("DELETE FROM config.ETL_Tables WHERE TableName = 'hisprixa'")  # no longer wanted in the warehouse
    env.sql("DROP TABLE etl.ETL_TableState")  # as a warehouse made by an older version
    run = subprocess.run([str(BIN / "luigi"), "--module", "cbm_luigi", "LoadAll", "--mode", "full",
                          "--local-scheduler"], cwd=env.home, env=subprocess_env(env), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode != 0
    advice = re.search(r"the warehouse lacks etl\.ETL_TableState: run `cbm-etl ([^`]+)` once \(it adds what is "
                       r"missing and changes nothing else", run.stderr)
    assert advice, run.stderr[-3000:]
    assert cbm_etl(advice.group(1).split()) == 0
    assert env.sql("SELECT TableName FROM config.ETL_Tables WHERE TableName = 'hisprixa'") == [], \
        f"`cbm-etl {advice.group(1)}` put the removed table hisprixa back into config.ETL_Tables"


def test_the_documented_housekeeping_crontab_line_cleans_and_prunes(env):
    """OPERATIONS.md's Sunday housekeeping line, run as written in the deployment's directory after a few nights:
    it keeps 8 cached batches and the history of 400 days, exits 0 (no page), and the next night loads."""
    home = env.home
    (home / ".venv" / "bin").mkdir(parents=True)
    (home / ".venv" / "bin" / "cbm-etl").symlink_to(BIN / "cbm-etl")
    for n in range(10):
        assert succeeded(build(LoadAll(mode="full", batch_tag=f"n{n}", run_id=f"r{n}")))
    env.sql("UPDATE etl.ETL_Log SET LogTs = LogTs - INTERVAL 500 DAY WHERE NOT BatchId LIKE '%-n9'")
    command = _cron_line("0", at="0 14").replace("/opt/cbm_luigi", str(home)).replace(
        "/opt/bin/page-data-team", "echo PAGED")
    run = subprocess.run(["/bin/sh", "-c", command], env=subprocess_env(env), capture_output=True, text=True,
                         timeout=300)
    assert "PAGED" not in run.stdout + run.stderr, run.stdout + run.stderr
    assert "etl.ETL_Log: " in (home / "var" / "log" / "housekeeping.log").read_text()
    assert len([p for p in env.cache.iterdir() if p.is_dir()]) == 8
    assert {b[-2:] for (b,) in env.sql("SELECT DISTINCT BatchId FROM etl.ETL_Log")} == {"n9"}
    assert succeeded(build(LoadAll(mode="incremental", batch_tag="next", run_id="rn")))
    for t in DEMO_TABLES:
        assert_ods_equals_source(env, t)


def test_the_templates_odbc_stand_in_lines_load_through_the_real_driver(env):
    """config/.env.template shows how to read the demo source through unixODBC's SQLite driver (the ODBC path
    without Progress; the review that read the documents as a new operator found it only in a test). Its lines,
    uncommented as written, in a .env of a home holding var/demo_source.sqlite: a load goes through the driver."""
    import shutil

    text = (REPO / "config" / ".env.template").read_text()
    block = text[text.index("# To try the ODBC path without Progress"):]
    lines = [ln[len("#   "):] for ln in block.splitlines()[1:] if ln.startswith("#   CBM_")]
    assert [ln.split("=", 1)[0] for ln in lines] == ["CBM_SOURCE_DIALECT", "CBM_SOURCE_ODBC", "CBM_SOURCE_INIT_SQL"]
    (env.home / "var").mkdir(exist_ok=True)
    shutil.copy(env.source, env.home / "var" / "demo_source.sqlite")
    dotenv = env.home / ".env"
    dotenv.write_text("CBM_SOURCE_KIND=odbc\n" + "\n".join(lines) + "\n")
    dotenv.chmod(0o600)
    run = subprocess.run([str(BIN / "luigi"), "--module", "cbm_luigi", "LoadTable", "--table", "famille", "--mode",
                          "full", "--local-scheduler"], cwd=env.home, capture_output=True, text=True, timeout=300,
                         env=subprocess_env(env, CBM_ENV_FILE=str(dotenv)))
    assert run.returncode == 0, run.stderr[-3000:]
    from cbm_luigi.extract import read_extract_meta

    [batch] = env.cache.glob("*/full/famille.extract.parquet")
    assert read_extract_meta(batch)["reader"] == "arrow-odbc"  # through unixODBC and the driver, not in-process
    assert_ods_equals_source(env, "famille")


def test_every_log_the_documented_crontab_appends_to_is_rotated_by_the_documented_logrotate_stanza():
    """OPERATIONS.md's cron lines append (`>>`) to files of var/log/ every night, about 3 KB a table a night (the
    same lines again: 340 MB a year for 300 tables), and its Housekeeping section bounded the cache and etl.* but
    not them (found by a review that simulated a year of nights). Its logrotate stanza must cover each of them, at
    the path the crontab's `cd` gives them. (logrotate itself is not installed here: the stanza is read, not run.)"""
    import fnmatch

    text = (REPO / "OPERATIONS.md").read_text()
    cron = re.search(r"```cron\n(.*?)```", text, re.S).group(1)
    logs = set()
    for line in cron.splitlines():
        home = re.search(r"\bcd (\S+) &&", line)
        logs |= {f"{home.group(1)}/{f}" for f in re.findall(r">>\s*(var/log/[\w.-]+)", line)} if home else set()
    assert len(logs) == 3, logs
    stanza = re.search(r"```logrotate\n(.*?)```", text.split("## Housekeeping", 1)[1], re.S).group(1)
    paths = stanza.split("{", 1)[0].split()
    body = {w.strip() for w in stanza.split("{", 1)[1].split("}", 1)[0].splitlines() if w.strip()}
    assert all(any(fnmatch.fnmatch(log, p) for p in paths) for log in logs), (logs, paths)
    assert {"missingok", "compress", "delaycompress"} <= body and any(w.startswith("rotate ") for w in body), body
