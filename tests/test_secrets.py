"""Secrets: every value of .env stays out of logs, exceptions, etl.ETL_Log, the cbm-etl commands' output and
luigid's web view (README: "Credentials come from .env ... they are masked in every message and log line";
OPERATIONS: "Secrets: only in .env ... masked in logs, errors and the run log"). Found in a review of secrets.

Real unixODBC + SQLite ODBC driver as the source, real Luigi (the `luigi` command against a real luigid)."""
from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request

import pytest

import cbm_luigi  # noqa: F401 — the log masking, as `luigi --module cbm_luigi` installs it
from cbm_luigi.cli import main as cbm_etl
from cbm_luigi.settings import load_settings
from cbm_luigi.source.errors import SourceError
from cbm_luigi.source.readers import open_reader, release_readers

from .conftest import running_luigid, subprocess_env

pyodbc = pytest.importorskip("pyodbc")

TOKEN = "Tok3n-4f9a71c2"  # the secret: a key/token written in .env's CBM_SOURCE_INIT_SQL
PASSWORD = "s3cret-PWD"


def odbc_vars(env, reader: str, *, vault_ok: bool) -> dict[str, str]:
    """The SQLite stand-in through the real ODBC driver, as test_source_odbc does, plus one init statement that
    carries a secret: an encrypted database attached with its key (SQLCipher's `ATTACH ... KEY '<key>'`, which plain
    SQLite parses too). `vault_ok=False`: its file is not there (moved, unmounted), so the statement fails."""
    src = env.source
    vault = src if vault_ok else "/nonexistent/dir/vault.db"
    return {"CBM_SOURCE_KIND": "odbc", "CBM_SOURCE_DIALECT": "sqlite-standin", "CBM_ODBC_READER": reader,
            "CBM_SOURCE_ODBC": f"DRIVER={{SQLite3}};Database={src};StepAPI=1;PWD={PASSWORD}",
            "CBM_SOURCE_INIT_SQL": f"ATTACH DATABASE '{src}' AS PUB;;ATTACH DATABASE '{src}' AS SYSPROGRESS;;"
                                   f"ATTACH DATABASE '{vault}' AS vault KEY '{TOKEN}'"}


@pytest.mark.parametrize("reader", ["pyodbc", "arrow-odbc"])
def test_a_failing_init_statement_does_not_print_the_secret_it_carries(env, monkeypatch, capsys, reader):
    """A CBM_SOURCE_INIT_SQL statement that fails was named with its text, and mask_secrets knows `key=value`
    only: the key of `... KEY '<key>'` reached the exception, and with it every `cbm-etl` command that opens the
    source (sync-columns, discover). It is named by its number now."""
    for k, v in odbc_vars(env, reader, vault_ok=False).items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SourceError) as info:
        open_reader(load_settings())
    text = str(info.value)
    assert "statement 3 of CBM_SOURCE_INIT_SQL" in text  # the statement is named: the operator knows which
    assert PASSWORD not in text
    assert TOKEN not in text, text

    capsys.readouterr()
    assert cbm_etl(["sync-columns", "--all"]) == 1
    assert cbm_etl(["discover"]) == 1
    err = capsys.readouterr().err
    assert "statement 3 of CBM_SOURCE_INIT_SQL" in err
    assert TOKEN not in err, err


def _luigid_errors(port: int) -> list[str]:
    """The error luigid's web view shows for each FAILED task (what its 'error' button fetches)."""
    base = f"http://127.0.0.1:{port}/api"
    q = urllib.parse.quote(json.dumps({"status": "FAILED"}))
    failed = json.load(urllib.request.urlopen(f"{base}/task_list?data={q}", timeout=5))["response"]
    out = []
    for tid in failed:
        q = urllib.parse.quote(json.dumps({"task_id": tid}))
        out.append(json.load(urllib.request.urlopen(f"{base}/fetch_error?data={q}", timeout=5))["response"]["error"])
    return out


def test_a_nightly_whose_init_statement_fails_keeps_its_secret_out_of_log_run_log_web_view_and_commands(
        env, monkeypatch, tmp_path, capsys):
    """The nightly as cron runs it (`luigi` against luigid): the source's init statement with its key fails (the
    vault file moved). The key must reach neither the night's log (nightly.log, Luigi's INFO), nor luigid's web
    view, nor etl.ETL_Log.ErrorMessage, nor what `cbm-etl summary` and `cbm-etl check-sla` print from it (the
    morning's paging line). It reached all five: the failing statement was quoted whole."""
    good = odbc_vars(env, "arrow-odbc", vault_ok=True)
    for k, v in good.items():
        monkeypatch.setenv(k, v)
    assert cbm_etl(["sync-columns", "famille"]) == 0  # configured while the vault was there
    release_readers()
    bad = odbc_vars(env, "arrow-odbc", vault_ok=False)
    with running_luigid(env, tmp_path) as port:
        night = subprocess.run(["luigi", "--module", "cbm_luigi", "LoadTable", "--table", "famille", "--mode", "full",
                                "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port)], cwd=env.home,
                               env=subprocess_env(env, **bad), capture_output=True, text=True, timeout=300)
        assert night.returncode == 30, night.stderr[-3000:]
        web = _luigid_errors(port)
    log = night.stdout + night.stderr
    assert "statement 3 of CBM_SOURCE_INIT_SQL" in log and PASSWORD not in log
    assert web and all(PASSWORD not in e for e in web)
    [(logged,)] = env.sql("SELECT ErrorMessage FROM etl.ETL_Log WHERE TableName = 'famille' AND Status = 'FAILED'")
    assert "statement 3 of CBM_SOURCE_INIT_SQL" in logged

    for k, v in bad.items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    cbm_etl(["summary"])
    cbm_etl(["check-sla"])
    shown = capsys.readouterr().out
    assert "statement 3 of CBM_SOURCE_INIT_SQL" in shown

    leaks = {"nightly log": TOKEN in log, "luigid web view": any(TOKEN in e for e in web),
             "etl.ETL_Log.ErrorMessage": TOKEN in logged, "summary / check-sla": TOKEN in shown}
    assert not any(leaks.values()), leaks


def test_a_key_after_an_empty_literal_is_masked_in_the_drivers_words(env, monkeypatch):
    """An empty literal ('') before the key paired its closing quote with the key's opening one: the text between
    them was masked and the key was not, and the driver quotes it back in a syntax error (found in review)."""
    for k, v in odbc_vars(env, "pyodbc", vault_ok=True).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CBM_SOURCE_INIT_SQL", f"ATTACH DATABASE '{env.source}' AS PUB;;"
                                              f"ATTACH DATABASE '' AS vault '{TOKEN}'")  # KEY left out by mistake
    with pytest.raises(SourceError) as info:
        open_reader(load_settings())
    text = str(info.value)
    assert "statement 2 of CBM_SOURCE_INIT_SQL" in text and "syntax error" in text, text
    assert TOKEN not in text, text


@pytest.mark.parametrize("statement", [
    pytest.param("ATTACH DATABASE '{src}' AS vault KEY '{key}", id="closing-quote-left-out"),
    pytest.param("ATTACH DATABASE '{src}' AS vault \"{key}\"", id="double-quoted-key-without-KEY"),
    pytest.param("ATTACH DATABASE '/mnt/vault/it''s-{key}.db' AS vault", id="doubled-quote-said-undoubled"),
])
def test_a_quoted_value_of_a_failing_init_statement_is_masked_however_it_is_quoted(env, monkeypatch, statement):
    """Only '...' literals closed in the statement, as written, were masked: a key whose closing quote was left
    out (the typo that makes the statement fail) is quoted back by the driver, and so is a value in double quotes,
    and one holding a doubled quote, which the driver says undoubled (found in review)."""
    for k, v in odbc_vars(env, "pyodbc", vault_ok=True).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CBM_SOURCE_INIT_SQL", f"ATTACH DATABASE '{env.source}' AS PUB;;"
                                              + statement.format(src=env.source, key=TOKEN))
    with pytest.raises(SourceError) as info:
        open_reader(load_settings())
    text = str(info.value)
    assert "statement 2 of CBM_SOURCE_INIT_SQL" in text, text
    assert TOKEN not in text, text
