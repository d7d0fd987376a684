"""Secrets: masked in connection strings and in everything the process logs (tracebacks included)."""
from __future__ import annotations

import logging
import re

import pytest

import cbm_luigi  # noqa: F401 — installs the log masking, as `luigi --module cbm_luigi` does
from cbm_luigi.settings import SettingError, connection_summary, load_settings, mask_secrets


def test_mask_secrets_handles_braces_quotes_and_escapes():
    cases = {"DRIVER={d};UID=etl;PWD={ab}}c;d};DB=x": "DRIVER={d};UID=etl;PWD={***};DB=x",
             'HostName=h;Password="p;w";Port=1': "HostName=h;Password={***};Port=1",
             "PWD='a;''b';X=1": "PWD={***};X=1",
             "UID=u;pwd = plain;DB=x": "UID=u;pwd={***};DB=x",
             "Password=secret": "Password={***}",
             # compound keywords of the DataDirect and Microsoft drivers
             "UID=a;KeyStoreSecret=hunter2;TrustStorePassword=ts;KeyStorePassword=ks;KeyPassword=kp;Passwd=pw;X=1":
                 "UID=a;KeyStoreSecret={***};TrustStorePassword={***};KeyStorePassword={***};KeyPassword={***};Passwd={***};X=1",
             # a key column named in a message keeps its value: only letters may come before the keyword
             "table t, column c, key sort_key=5: value 'x'": "table t, column c, key sort_key=5: value 'x'",
             # ... and a name merely ending like a keyword keeps it too, with the rest of the message (found in
             # review: `hkey={***}` swallowed the advice after it)
             "duplicate keys (hkey); first: hkey=7 (3 rows). Nothing was merged; fix PrimaryKeyCols":
                 "duplicate keys (hkey); first: hkey=7 (3 rows). Nothing was merged; fix PrimaryKeyCols",
             "monkey=1; bypass=1 AND PrimaryKey=cod_cli": "monkey=1; bypass=1 AND PrimaryKey=cod_cli",
             "Key=hunter2;Token=hunter2;AccessToken=hunter2;Pass=hunter2;X=1":
                 "Key={***};Token={***};AccessToken={***};Pass={***};X=1",
             # ODBC does not quote: what follows a closing quote or brace is still the password (its tail leaked)
             "UID=cbm;PWD='S3cr3t'hunter2;Encrypt=yes": "UID=cbm;PWD={***};Encrypt=yes",
             'UID=cbm;PWD="S3cr3t"hunter2;Encrypt=yes': "UID=cbm;PWD={***};Encrypt=yes",
             "UID=cbm;PWD={S3cr3t}hunter2;Encrypt=yes": "UID=cbm;PWD={***};Encrypt=yes",
             "UID=cbm;PWD={***}}hunter2};Encrypt=yes": "UID=cbm;PWD={***};Encrypt=yes",  # not the mask itself
             # Microsoft's client certificate keywords and DataDirect's short names
             "ClientCertificate=file:/c.pem;ClientKey=file:/k.pem,password:hunter2;X=1":
                 "ClientCertificate={***};ClientKey={***};X=1",
             "TSP=hunter2;KSP=hunter2;KP=hunter2;X=1": "TSP={***};KSP={***};KP={***};X=1"}
    for text, masked in cases.items():
        assert mask_secrets(text) == masked
        assert "secret" not in mask_secrets(text) and "plain" not in mask_secrets(text)
        assert "hunter2" not in mask_secrets(text)


def test_a_connection_is_named_with_its_harmless_values_only_whatever_the_password_key_is_called(monkeypatch):
    """A mistyped password keyword passes mask_secrets, which goes by the names passwords have: where the
    pipeline names a connection (init-db, summary, messages) only known-harmless values are shown."""
    from cbm_luigi.warehouse.mssql_wh import MssqlWarehouse

    text = "DRIVER={ODBC Driver 18 for SQL Server};SERVER=dwh,1433;Database=cbm;UID=etl;PDW=Pa55w0rd;Pasword=x1;PW=y2"
    assert connection_summary(text) == ("DRIVER={ODBC Driver 18 for SQL Server};SERVER=dwh,1433;Database=cbm;"
                                        "UID=etl;PDW={***};Pasword={***};PW={***}")
    assert connection_summary("DSN=progress;PWD={a;b}}c};HOST=h") == "DSN=progress;PWD={***};HOST=h"
    monkeypatch.setenv("CBM_ENV_FILE", "")
    monkeypatch.setenv("CBM_WAREHOUSE_KIND", "mssql")
    monkeypatch.setenv("CBM_MSSQL_ODBC", text)
    monkeypatch.setenv("CBM_SOURCE_KIND", "odbc")
    monkeypatch.setenv("CBM_SOURCE_ODBC", "DSN=progress;UID=etl;PDW=Pa55w0rd")
    settings = load_settings()
    for shown in (settings.describe(), MssqlWarehouse(settings).describe()):
        assert "Pa55w0rd" not in shown and "x1" not in shown and "y2" not in shown and "SERVER=dwh,1433" in shown


def test_a_setting_name_the_product_does_not_read_stops_it_with_the_name_meant(env, monkeypatch, tmp_path, capsys):
    """`CBM_WAREHOUSE_KND=mssql` in .env left the embedded warehouse in use, and init-db's advice built one
    (found in review)."""
    from cbm_luigi.cli import main as cbm_etl
    from cbm_luigi.tasks import LoadAll

    from .conftest import build

    monkeypatch.setenv("CBM_WAREHOUSE_KND", "mssql")
    with pytest.raises(SettingError, match=r"^unknown setting CBM_WAREHOUSE_KND \(did you mean CBM_WAREHOUSE_KIND\?\)"):
        load_settings()
    assert cbm_etl(["summary"]) == 1
    assert "unknown setting CBM_WAREHOUSE_KND (did you mean CBM_WAREHOUSE_KIND?)" in capsys.readouterr().err
    assert not build(LoadAll(mode="incremental")).scheduling_succeeded
    monkeypatch.delenv("CBM_WAREHOUSE_KND")
    monkeypatch.setenv("CBM_SOMETHING_ELSE", "1")
    with pytest.raises(SettingError, match=r"^unknown setting CBM_SOMETHING_ELSE: correct or remove it"):
        load_settings()
    for name in ("CBM_SOMETHING_ELSE", "CBM_TEST_MSSQL", "CBM_PAUSE_AT", "CBM_MSSQL_BULK"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    with open(__import__("cbm_luigi.settings").settings.__file__) as f:  # every name read is a known one
        read = set(re.findall(r'"(CBM_[A-Z_]+)"', f.read()))
    assert read <= __import__("cbm_luigi.settings").settings.KNOWN_NAMES and settings


def test_the_source_timezone_is_an_iana_name(monkeypatch):
    monkeypatch.setenv("CBM_ENV_FILE", "")
    monkeypatch.setenv("CBM_SOURCE_TIMEZONE", "Europe/Paris")
    assert str(load_settings().source_zone()) == "Europe/Paris"
    monkeypatch.setenv("CBM_SOURCE_TIMEZONE", "Paris")
    with pytest.raises(SettingError, match=r"^CBM_SOURCE_TIMEZONE='Paris': an IANA time zone such as Europe/Paris"):
        load_settings()
    monkeypatch.delenv("CBM_SOURCE_TIMEZONE")
    assert load_settings().source_zone() is None  # this process's own


def test_every_log_record_is_masked_traceback_included(caplog):
    log = logging.getLogger("luigi-interface")
    try:
        raise RuntimeError("[Driver] login failed for DRIVER={x};UID=etl;PWD=hunter2;HOST=h")
    except RuntimeError:
        with caplog.at_level(logging.ERROR):
            log.exception("task failed: %s", "Password=hunter2")
    text = caplog.text
    assert "task failed: Password={***}" in text and "PWD={***};HOST=h" in text and "hunter2" not in text


def test_masking_stops_at_the_line_end():
    """A masked value ends at `;` or the end of its line: the rest of a traceback stays readable."""
    assert mask_secrets("UID=u;PWD=x\nTraceback (most recent call last):") == \
        "UID=u;PWD={***}\nTraceback (most recent call last):"


@pytest.mark.parametrize("name,value,says", [
    ("CBM_BATCH_ROWS", "50k", "a whole number"), ("CBM_BATCH_ROWS", "500", "at least 1000"),
    ("CBM_DUCKDB_THREADS", "0", "at least 1"), ("CBM_CONNECT_RETRIES", "-1", "at least 0"),
    ("CBM_QUERY_TIMEOUT_S", "-1", "at least 0"), ("CBM_MSSQL_BULK_TIMEOUT_S", "1h", "a whole number"),
    ("CBM_DUCKDB_MEMORY_LIMIT", "lots", "a size such as"), ("CBM_TRANSFORM_MEMORY_LIMIT", "256 MBs", "a size"),
    ("CBM_SOURCE_DIALECT", "progress", "one of openedge, sqlite-standin"),
    ("CBM_ODBC_READER", "arrow_odbc", "one of auto, arrow-odbc, pyodbc"),
    ("CBM_SOURCE_ISOLATION", "dirty", "one of READ_UNCOMMITTED, DEFAULT"),
    ("CBM_SOURCE_KIND", "progress", "one of demo, odbc"), ("CBM_WAREHOUSE_KIND", "sqlserver", "one of duckdb, mssql")])
def test_a_setting_the_product_cannot_use_is_named(monkeypatch, name, value, says):
    monkeypatch.setenv("CBM_ENV_FILE", "")
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingError, match=rf"^{name}={re.escape(repr(value))}: {says}"):
        load_settings()


def test_settings_take_the_spellings_operators_use(monkeypatch):
    monkeypatch.setenv("CBM_ENV_FILE", "")
    for limit in ("1.5GB", "80%", "256 MB", "2GiB", "-1"):
        monkeypatch.setenv("CBM_DUCKDB_MEMORY_LIMIT", limit)
        assert load_settings().duckdb_memory_limit == limit
    monkeypatch.setenv("CBM_SOURCE_ISOLATION", "read uncommitted")  # as in the ODBC connection string
    assert load_settings().source_isolation == "READ_UNCOMMITTED"


def test_masking_twice_keeps_what_follows_a_masked_value():
    """A message is masked where it is made and again on its way to the log: a connection string ending with
    `PWD=secret` came out as `PWD={***}` with the driver's reason after it gone."""
    once = mask_secrets("DRIVER={X};UID=etl;PWD=Hunter2") + ": [unixODBC] Can't open lib 'X' : file not found"
    assert mask_secrets(once) == once == "DRIVER={X};UID=etl;PWD={***}: [unixODBC] Can't open lib 'X' : file not found"
    wrapped = f"cannot connect (mssql:{mask_secrets('UID=etl;PWD=Hunter2')}): Can't open lib"
    assert mask_secrets(mask_secrets(wrapped)) == "cannot connect (mssql:UID=etl;PWD={***}): Can't open lib"
    for raw in ("PWD=***.Winter2026;HOST=h", "PWD=*** hunter2;HOST=h", "PWD=***,x;HOST=h", "PWD=***:x;HOST=h"):
        assert mask_secrets(raw) == "PWD={***};HOST=h"  # a password that starts like the old mask is masked


def test_a_cbm_env_file_that_is_not_there_stops_every_command_with_its_name(tmp_path):
    """A CBM_ENV_FILE naming no file (a crontab typo, the file moved) was ignored without a word, and every setting
    took its demo default: the nightly built an empty embedded warehouse instead of loading SQL Server, and the
    upgrade's init-db exited 0 (found in review). Empty means: no file."""
    import os
    import subprocess

    from .conftest import BIN, REPO

    home = tmp_path / "opt" / "cbm_luigi"
    (home / "var" / "log").mkdir(parents=True)
    missing = tmp_path / "etc" / "cbm_luigi.env"
    base = {k: v for k, v in os.environ.items() if not k.startswith("CBM_")}
    base.update({"PATH": f"{BIN}:{base.get('PATH', '')}", "LUIGI_CONFIG_PATH": str(REPO / "luigi.cfg"),
                 "CBM_HOME": str(home), "CBM_ENV_FILE": str(missing)})
    night = subprocess.run(["luigi", "--module", "cbm_luigi", "LoadAll", "--local-scheduler"], cwd=home, env=base,
                           capture_output=True, text=True, timeout=300)
    assert night.returncode != 0 and f"CBM_ENV_FILE='{missing}': no such file" in night.stderr, night.stderr[-2000:]
    upgrade = subprocess.run(["cbm-etl", "init-db", "--no-tables"], cwd=home, env=base, capture_output=True,
                             text=True, timeout=300)
    assert upgrade.returncode != 0 and "CBM_ENV_FILE" in upgrade.stderr, upgrade.stdout + upgrade.stderr
    assert not (home / "var" / "warehouse.duckdb").exists()
    (home / "settings.env").write_text("CBM_BATCH_ROWS=1234\n")  # relative to where the command runs
    base["CBM_ENV_FILE"] = "settings.env"
    ok = subprocess.run([str(BIN / "python"), "-c", "from cbm_luigi.settings import load_settings; "
                         "print(load_settings().batch_rows)"], cwd=home, env=base, capture_output=True, text=True)
    assert ok.stdout.strip() == "1234", ok.stderr


def test_cbm_home_written_in_dot_env_stops_every_command_naming_it(tmp_path):
    """config/.env.template: CBM_HOME is an environment variable, not a .env setting. Written in .env it entered
    the environment after the first load_settings of a process had resolved var/ from the working directory:
    LoadAll read config.ETL_Tables from one warehouse while its tasks opened another, empty one, and the advice
    ('run cbm-etl init-db --no-tables') led nowhere (found in review). Now every command stops and says why;
    without the line the same home loads."""
    import os
    import subprocess

    from .conftest import BIN, REPO

    home, other = tmp_path / "home", tmp_path / "other"
    home.mkdir()
    other.mkdir()
    e = {k: v for k, v in os.environ.items() if not k.startswith("CBM_")}
    e.update({"PATH": f"{BIN}:{e.get('PATH', '')}", "LUIGI_CONFIG_PATH": str(REPO / "luigi.cfg")})

    def run(*cmd):
        return subprocess.run(list(cmd), cwd=home, env=e, capture_output=True, text=True, timeout=300)
    assert run("cbm-etl", "demo-source").returncode == 0
    assert run("cbm-etl", "init-db").returncode == 0
    (home / ".env").write_text(f"# the nightly settings\nCBM_HOME={other}\nCBM_SOURCE_KIND=demo\n")
    said = f"CBM_HOME in {home / '.env'}: they say where the settings file is read from, so they are environment "
    for cmd in (["cbm-etl", "summary"], ["luigi", "--module", "cbm_luigi", "LoadAll", "--mode", "full",
                                         "--local-scheduler"]):
        out = run(*cmd)
        assert out.returncode != 0 and said in out.stderr, out.stderr[-2000:]
    assert not list(other.iterdir())  # nothing was made in the other home
    (home / ".env").write_text("# the nightly settings\nCBM_SOURCE_KIND=demo\n")
    assert run("luigi", "--module", "cbm_luigi", "LoadAll", "--mode", "full", "--local-scheduler").returncode == 0
    assert run("cbm-etl", "summary").returncode == 0


def test_a_settings_file_with_a_line_dotenv_cannot_read_stops_every_command_naming_the_line(tmp_path):
    """A value with an unterminated quote (a password holding a `"`): python-dotenv warned once and dropped that
    line and every line after it, so the nightly ran on demo defaults: an embedded warehouse made in var/ instead
    of SQL Server (found in review). Every command stops now, naming the line, never showing it (it may hold the
    password)."""
    import os
    import subprocess

    from .conftest import BIN, REPO

    home = tmp_path / "opt" / "cbm_luigi"
    home.mkdir(parents=True)
    (home / ".env").write_text('# production\nCBM_WAREHOUSE_KIND=mssql\nCBM_MSSQL_ODBC="DRIVER={ODBC Driver 18 for '
                               'SQL Server};SERVER=dwh;UID=etl;PWD=pa"ss\nCBM_SOURCE_KIND=odbc\n')
    e = {k: v for k, v in os.environ.items() if not k.startswith("CBM_")}
    e.update({"PATH": f"{BIN}:{e.get('PATH', '')}", "LUIGI_CONFIG_PATH": str(REPO / "luigi.cfg"),
              "CBM_HOME": str(home)})
    for cmd in (["cbm-etl", "summary"], ["luigi", "--module", "cbm_luigi", "LoadAll", "--local-scheduler"]):
        out = subprocess.run(cmd, cwd=home, env=e, capture_output=True, text=True, timeout=300)
        assert out.returncode != 0, out.stdout[-1000:]
        assert f"{home / '.env'}: line(s) 3 cannot be read (an unterminated quote" in out.stderr, out.stderr[-2000:]
        assert "pa\"ss" not in out.stderr and "PWD=pa" not in out.stderr
    # no demo warehouse was made (var/ holds the luigi command's run lock alone)
    assert {p.name for p in (home / "var").iterdir()} <= {"luigi-lock"} if (home / "var").exists() else True


def test_a_settings_file_others_can_read_is_said(tmp_path, monkeypatch, caplog):
    from cbm_luigi import settings

    env_file = tmp_path / ".env"
    env_file.write_text("CBM_BATCH_ROWS=1234\n")
    monkeypatch.setenv("CBM_ENV_FILE", str(env_file))
    monkeypatch.setenv("CBM_BATCH_ROWS", "1234")  # load_dotenv writes os.environ: put back after the test
    monkeypatch.setattr(settings, "_WARNED", set())
    for mode, said in ((0o644, True), (0o600, False)):
        env_file.chmod(mode)
        settings._WARNED.clear()
        caplog.clear()
        assert settings.load_settings().batch_rows == 1234
        assert any(f"{env_file} is open to its group or other users (mode {mode:o})" in m and "chmod 600" in m
                   for m in caplog.messages) == said, caplog.messages


def test_a_settings_file_line_that_holds_no_setting_is_said_not_refused(tmp_path, monkeypatch, caplog):
    """A `;` comment (systemd's other comment sign, when .env is also luigid's EnvironmentFile) or `set -a`: no
    `=`, no setting. python-dotenv skips it, the release before read the file, and the check refused it with
    advice about quoting (found in review of the upgrade). Said in a warning; a line with `=` still stops."""
    from cbm_luigi import settings

    env_file = tmp_path / ".env"
    env_file.write_text("; cbm_luigi settings, also luigid.service's EnvironmentFile\nset -a\nCBM_BATCH_ROWS=1234\n")
    env_file.chmod(0o600)
    monkeypatch.setenv("CBM_ENV_FILE", str(env_file))
    monkeypatch.setenv("CBM_BATCH_ROWS", "1234")  # load_dotenv writes os.environ: put back after the test
    monkeypatch.setattr(settings, "_WARNED", set())
    assert settings.load_settings().batch_rows == 1234
    said = [m for m in caplog.messages if "is not a setting (a name, '=', a value) nor a # comment; it is skipped" in m]
    assert [m.split(": line ")[1].split(" ")[0] for m in said] == ["1", "2"], caplog.messages
    env_file.write_text('; a comment\nCBM_BATCH_ROWS="1234\n')
    with pytest.raises(settings.SettingError, match=r"line\(s\) 2 cannot be read"):
        settings.load_settings()


def test_key_pass_and_token_are_secrets_where_a_connection_string_has_them_only(monkeypatch):
    """`key`, `pass`, `token` are also Progress field names, and messages name rows by their key columns
    (`key token='A1'`): masked as secrets there, the value, the reason and the advice after them were lost (found
    in review). They count at a line's start or right after `;`, `{`, `"` or `'`; the values of a configured
    connection string's secret keywords are masked wherever they appear."""
    from cbm_luigi import settings as settings_mod

    kept = ["table cde, column qte, key token='T2': value Decimal('1.234') does not fit; To carry it over: x",
            "1 row(s) of the batch have an unknown (NULL) value in the key (key); first: key=None. Nothing was merged",
            "duplicate keys (code, pass): code='a', pass=1 (2 rows); code='b', pass=2 (2 rows). Fix PrimaryKeyCols"]
    for text in kept:
        assert mask_secrets(text) == text
    for text in ["TOKEN=hunter2;DSN=x", "DSN=x;Key=hunter2", "('DSN=x;PASS=hunter2')", '"KP=hunter2;X=1"',
                 "connect failed\nTSP=hunter2", "DRIVER={d};PWD=hunter2", "error: PWD=hunter2", "KeyPassword=hunter2"]:
        assert "hunter2" not in mask_secrets(text), text
    # a value quoted where no keyword stands before it: masked once the connection string is read
    monkeypatch.setattr(settings_mod, "_KNOWN_SECRETS", set())
    monkeypatch.setenv("CBM_ENV_FILE", "")
    monkeypatch.setenv("CBM_SOURCE_ODBC", "DSN=progress;UID=etl;DSN=x; Token={s3cr;et};PWD=Pa55w0rd;PASS=ab")
    load_settings()
    said = mask_secrets("driver said: login for etl with s3cr;et and Pa55w0rd refused (ab)")
    assert "s3cr;et" not in said and "Pa55w0rd" not in said and "(ab)" in said, said  # 'ab': too short to mask
