"""cbm_luigi deployed as an operator may, not from the repository: the package built as a wheel (and an sdist),
installed into a venv outside the repository, its commands run from a site directory of their own; two homes
served by one installation (found in review: the wheel held no sql/, config/ or luigi.cfg, so init-db set up
nothing and a failed run exited 0; two homes shared Luigi's run lock in /tmp/luigi)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import collections

import luigi.configuration
import luigi.scheduler
import pytest
from luigi.configuration import toml_parser

from cbm_luigi import scheduling, shipped
from cbm_luigi.cli import main as cbm_etl

from .conftest import BIN, REPO, make_env, subprocess_env

_IGNORE = shutil.ignore_patterns(".venv", ".git", "var", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                 "bench", "tests")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The sdist of the working tree (built from a copy: the repository is left as it is), and the wheel built
    from that sdist, as pip builds one from an sdist (without build isolation: no download)."""
    root = tmp_path_factory.mktemp("build")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=_IGNORE)
    out = root / "dist"
    run = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(out)], cwd=src,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    sdist = next(out.glob("*.tar.gz"))
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                          str(out), str(sdist)], cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return {"wheel": next(out.glob("*.whl")), "sdist": sdist}


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory) -> Path:
    """A fresh venv outside the repository with the wheel installed (non-editable). Its dependencies come from
    this test run's own environment through a .pth line (a path listed there is not scanned for .pth files, so
    the repository's editable install does not leak in; the wheel's own copy comes first on sys.path)."""
    root = tmp_path_factory.mktemp("deploy")
    v = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(v)], check=True, timeout=120)
    site = next(v.glob("lib/python*/site-packages"))
    deps = next(Path(sys.executable).parent.parent.glob("lib/python*/site-packages"))
    (site / "zz_deps.pth").write_text(f"{deps}\n")
    run = subprocess.run([sys.executable, "-m", "pip", "--python", str(v / "bin" / "python"), "install", "-q",
                          "--no-deps", "--no-index", str(built["wheel"])], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    where = subprocess.run([str(v / "bin" / "python"), "-c", "import cbm_luigi; print(cbm_luigi.__file__)"],
                           cwd=root, capture_output=True, text=True, timeout=60).stdout
    assert where.startswith(str(site)), f"cbm_luigi imported from {where!r}, not the installed wheel"
    # luigi's own console script (luigi is a dependency, not installed into this venv by --no-deps)
    script = v / "bin" / "luigi"
    script.write_text(f"#!{v / 'bin' / 'python'}\nimport sys\nfrom luigi.cmdline import luigi_run\n"
                      f"sys.exit(luigi_run())\n")
    script.chmod(0o755)
    return v


def _site_env(site: Path, v: Path) -> dict[str, str]:
    """The operator's shell in the site directory: no CBM_* or LUIGI_CONFIG_PATH from the test run."""
    e = {k: val for k, val in os.environ.items() if not k.startswith("CBM_") and k != "LUIGI_CONFIG_PATH"}
    e["PATH"] = f"{v / 'bin'}:{e.get('PATH', '')}"
    return e


def _site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / ".env").write_text("")
    (site / ".env").chmod(0o600)
    return site


def _run(v: Path, site: Path, *argv: str, extra: dict | None = None) -> subprocess.CompletedProcess:
    env = _site_env(site, v)
    env.update(extra or {})
    return subprocess.run([str(v / "bin" / argv[0]), *argv[1:]], cwd=site, env=env, capture_output=True, text=True,
                          timeout=300)


def test_wheel_and_sdist_ship_the_files_the_package_reads(built):
    """init-db runs sql/<dialect>/*.sql, its default tables.csv is config/tables.csv, README says to copy
    config/.env.template, the exit codes cron relies on are in luigi.cfg: the sdist and the wheel built from it
    hold them all (the wheel in cbm_luigi/shipped/), and no .env."""
    wheel = zipfile.ZipFile(built["wheel"]).namelist()
    for name in ["sql/duckdb/01_schemas.sql", "sql/duckdb/04_views.sql", "sql/mssql/05_procedures.sql",
                 "sql/mssql/grants.sql.example", "config/tables.csv", "config/.env.template", "luigi.cfg"]:
        assert f"cbm_luigi/shipped/{name}" in wheel, f"{built['wheel'].name} lacks {name}"
    with tarfile.open(built["sdist"]) as t:
        sdist = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for name in ["sql/duckdb/01_schemas.sql", "sql/mssql/01_schemas.sql", "config/tables.csv",
                 "config/.env.template", "luigi.cfg", "OPERATIONS.md", "MANIFEST.in"]:
        assert name in sdist, f"{built['sdist'].name} lacks {name}"
    assert not [n for n in wheel + sorted(sdist) if n.endswith("/.env") or n == ".env"]


def test_installed_wheel_sets_up_and_loads_from_a_site_directory(venv, tmp_path):
    """README "Running it" followed literally on the installed wheel, from a site directory with its own .env and
    no luigi.cfg: plain init-db runs the shipped scripts and adds the shipped tables.csv's tables (it said "0
    table(s) added from tables.csv" and set up nothing), the nightly loads, check-sla is content; --version says
    which code runs and where its luigi.cfg is."""
    site = _site(tmp_path)
    r = _run(venv, site, "cbm-etl", "demo-source")
    assert r.returncode == 0, r.stderr
    r = _run(venv, site, "cbm-etl", "init-db")
    assert r.returncode == 0, f"init-db from the installed wheel: exit {r.returncode}: {r.stdout}{r.stderr}"
    assert "6 table(s) added from " in r.stdout and "cbm_luigi/shipped/config/tables.csv" in r.stdout, r.stdout
    r = _run(venv, site, "cbm-etl", "sync-columns", "--all")
    assert r.returncode == 0, r.stderr
    r = _run(venv, site, "luigi", "--module", "cbm_luigi", "LoadAll", "--mode", "incremental", "--local-scheduler")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (site / "var" / "luigi-lock").is_dir()  # the run lock in the home, not /tmp/luigi
    r = _run(venv, site, "cbm-etl", "check-sla")
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run(venv, site, "cbm-etl", "--version")
    assert r.returncode == 0 and r.stdout.startswith("cbm_luigi 0.") and "shipped/luigi.cfg" in r.stdout, r.stdout
    import duckdb

    with duckdb.connect(str(site / "var" / "warehouse.duckdb"), read_only=True) as con:
        loaded = con.execute("SELECT COUNT(*) FROM etl.ETL_Log WHERE Step = 'validate' AND Status = 'SUCCESS'"
                             ).fetchone()[0]
    assert loaded == 6


def test_installed_init_db_reads_the_homes_own_tables_csv_first(venv, tmp_path):
    """An operator's config/tables.csv in CBM_HOME is the default over the shipped one, and init-db names the
    file it read in full."""
    site = _site(tmp_path)
    (site / "config").mkdir()
    own = (REPO / "config" / "tables.csv").read_text().splitlines()
    (site / "config" / "tables.csv").write_text("\n".join(own[:3]) + "\n")  # the header and two tables
    assert _run(venv, site, "cbm-etl", "demo-source").returncode == 0
    r = _run(venv, site, "cbm-etl", "init-db")
    assert r.returncode == 0, r.stderr
    assert f"2 table(s) added from {site / 'config' / 'tables.csv'}" in r.stdout, r.stdout


def test_installed_luigi_run_that_fails_does_not_exit_0_outside_the_repository(venv, tmp_path):
    """luigi.cfg's [retcode] ("cron must see failures") is read by Luigi from the working directory or
    LUIGI_CONFIG_PATH only; from a site directory without one, a run that failed scheduling exited 0 and the cron
    line never paged. cbm_luigi now gives Luigi the shipped luigi.cfg's values where no file sets them; an
    operator's own luigi.cfg still wins."""
    site = _site(tmp_path)
    assert _run(venv, site, "cbm-etl", "demo-source").returncode == 0
    # no init-db: the warehouse has no config.ETL_Tables, LoadAll fails (scheduling error)
    argv = ["luigi", "--module", "cbm_luigi", "LoadAll", "--mode", "incremental", "--local-scheduler"]
    r = _run(venv, site, *argv)
    assert "failed scheduling" in r.stdout + r.stderr, r.stderr[-2000:]
    assert r.returncode == 35, f"a LoadAll that failed scheduling exited {r.returncode} outside the repository"
    (site / "luigi.cfg").write_text("[retcode]\nscheduling_error = 77\n")
    r = _run(venv, site, *argv)
    assert r.returncode == 77, "the operator's own luigi.cfg must win over the shipped defaults"


def test_two_homes_sharing_one_installation_do_not_refuse_each_others_nightly(tmp_path, monkeypatch):
    """OPERATIONS: CBM_HOME is set where the command starts, so one installation may serve two sites. Luigi's
    run lock was /tmp/luigi/<md5 of the command line>.pid: the same nightly command of two homes was one lock,
    and the second site's nightly stopped with "Pid(s) {...} already running", exit 10, loading nothing. The
    lock is now in each home's var/luigi-lock."""
    a = make_env(tmp_path / "a", monkeypatch)
    b = make_env(tmp_path / "b", monkeypatch)
    tag = "lock" + uuid.uuid4().hex[:8]  # one command line for both homes, shared with no other test
    argv = [str(BIN / "luigi"), "--module", "cbm_luigi", "LoadAll", "--mode", "full", "--batch-tag", tag,
            "--local-scheduler"]
    pause = tmp_path / "paused"
    first = subprocess.Popen(argv, cwd=a.home, env=subprocess_env(a, CBM_PAUSE_AT="stage", CBM_PAUSE_FILE=str(pause)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (pause.exists() and pause.read_text()) and time.time() < deadline:
            assert first.poll() is None, "home a's run ended before its pause point"
            time.sleep(0.2)
        assert pause.exists(), "home a's run never reached its stage"
        second = subprocess.run(argv, cwd=b.home, env=subprocess_env(b), capture_output=True, text=True, timeout=300)
        # the same home's second run is still refused by the lock (exit 10), as OPERATIONS says
        again = subprocess.run(argv, cwd=a.home, env=subprocess_env(a), capture_output=True, text=True, timeout=300)
    finally:
        first.kill()
        first.wait(30)
    assert second.returncode == 0, (f"home b's nightly, another warehouse, exit {second.returncode}: "
                                    f"{(second.stdout + second.stderr)[-300:].strip()}")
    assert again.returncode == 10 and "already running" in again.stdout + again.stderr
    assert (a.home / "var" / "luigi-lock").is_dir() and (b.home / "var" / "luigi-lock").is_dir()


def test_init_db_without_its_sql_scripts_says_so(env, tmp_path, monkeypatch, capsys):
    """An installation without its sql/ (a wheel built before they were shipped) ran no statement without a word
    and then failed with "schema config does not exist ... run `cbm-etl init-db`", the very command run."""
    monkeypatch.setattr(shipped, "PACKAGE", tmp_path / "site-packages" / "cbm_luigi")  # no shipped/, no checkout
    assert cbm_etl(["init-db"]) != 0
    err = capsys.readouterr().err
    assert "sql/duckdb is not where this installation of cbm_luigi keeps it" in err and "reinstall" in err, err
    (tmp_path / "site-packages" / "cbm_luigi" / "shipped" / "sql" / "duckdb").mkdir(parents=True)
    assert cbm_etl(["init-db"]) != 0
    err = capsys.readouterr().err
    assert "no SQL script in" in err and "reinstall" in err, err


# -- found in review of the change that made the package installable ---------------------------------------------

# -- 1. Luigi's TOML config parser: the shipped values are given as strings, [resources] breaks the scheduler ----

def test_toml_parser_resources_given_by_config_defaults_are_numbers(monkeypatch):
    """LUIGI_CONFIG_PARSER=toml (Luigi's other supported format): config_defaults() sets the shipped luigi.cfg's
    values as strings into the TOML parser, which returns them as they are (no parsing, unlike the .cfg parser's
    getintdict). The scheduler then compares `1 + 0 > '2'` for every ExtractParquet: TypeError, exit 40."""
    monkeypatch.setenv("LUIGI_CONFIG_PARSER", "toml")
    monkeypatch.setattr(toml_parser.LuigiTomlParser, "enabled", True)  # no luigi.toml is read: toml not needed
    monkeypatch.setattr(toml_parser.LuigiTomlParser, "_instance", None)
    monkeypatch.setattr(toml_parser.LuigiTomlParser, "_config_paths", [])
    scheduling.config_defaults()
    resources = luigi.configuration.get_config().getintdict("resources")
    assert resources.get("progress_odbc") == 2, f"[resources] under the TOML parser: {resources!r}"
    s = luigi.scheduler.Scheduler()
    assert s._has_resources({"progress_odbc": 1}, collections.defaultdict(int))


def test_nightly_under_the_toml_config_parser_loads(tmp_path, monkeypatch):
    """The luigi command with LUIGI_CONFIG_PARSER=toml and a luigi.toml of the operator's (luigi[toml]): it
    exited 40 with "TypeError: '>' not supported between instances of 'int' and 'str'" in
    luigi/scheduler.py _has_resources, and no table loads."""
    pytest.importorskip("toml")
    env = make_env(tmp_path, monkeypatch)
    (env.home / "luigi.toml").write_text("[retcode]\ntask_failed = 31\n")
    e = subprocess_env(env, LUIGI_CONFIG_PARSER="toml")
    e.pop("LUIGI_CONFIG_PATH")
    r = subprocess.run([str(BIN / "luigi"), "--module", "cbm_luigi", "LoadAll", "--mode", "incremental",
                        "--local-scheduler"], cwd=env.home, env=e, capture_output=True, text=True, timeout=600)
    assert "TypeError" not in r.stderr, r.stderr[-1500:]
    assert r.returncode == 0, r.stderr[-1500:]


# -- 2./3. what a wheel built from a used checkout carries --------------------------------------------------------

@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> dict:
    """OPERATIONS "Installing" followed in a checkout used before: `pip wheel --no-deps -w dist .` once with a
    SQL script of that release and a settings file the operator keeps in config/ (prod.env), then the next
    release (the script gone) built again in the same checkout (its build/ left, as pip leaves it)."""
    root = tmp_path_factory.mktemp("rebuild")
    src = root / "checkout"
    shutil.copytree(REPO, src, ignore=_IGNORE)
    (src / "sql" / "duckdb" / "99_dropped_in_next_release.sql").write_text("CREATE SCHEMA IF NOT EXISTS gone;\n")
    (src / "config" / "prod.env").write_text("CBM_MSSQL_ODBC=Driver=x;UID=etl;PWD=s3cret\n")

    def wheel(out: Path) -> list[str]:
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(out), "."], cwd=src, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return zipfile.ZipFile(next(out.glob("*.whl"))).namelist()

    first = wheel(root / "dist1")
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(root / "sdist")], cwd=src,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with tarfile.open(next((root / "sdist").glob("*.tar.gz"))) as t:
        sdist = t.getnames()
    (src / "sql" / "duckdb" / "99_dropped_in_next_release.sql").unlink()
    (src / "config" / "prod.env").unlink()
    second = wheel(root / "dist2")
    return {"first": first, "sdist": sdist, "second": second}


def test_a_wheel_rebuilt_in_a_checkout_does_not_keep_a_removed_sql_script(rebuilt):
    """setup.py copies sql/ into build/lib/cbm_luigi/shipped with dirs_exist_ok and never empties it: a script
    removed (or renamed) by a release stays in every wheel built later in that checkout, and init-db runs it
    (it runs every sql/<dialect>/*.sql it finds)."""
    stale = [n for n in rebuilt["second"] if n.endswith("99_dropped_in_next_release.sql") or n.endswith("prod.env")]
    assert not stale, f"the second wheel still carries {stale}"


def test_wheel_and_sdist_do_not_carry_a_settings_file_kept_in_config(rebuilt):
    """`graft config` and copytree(config/, ignore '.env') ship every file in config/ but one named exactly
    `.env`: a settings file with the warehouse password kept beside the template (config/prod.env, read through
    CBM_ENV_FILE) goes into the sdist and the wheel."""
    leaked = [n for n in rebuilt["first"] + rebuilt["sdist"] if n.endswith("prod.env")]
    assert not leaked, f"settings file shipped: {leaked}"


# -- 4. cbm-etl --version ---------------------------------------------------------------------------------------

def test_version_prints_the_luigi_cfg_path_whole(tmp_path, monkeypatch, capsys):
    """--version says where the shipped luigi.cfg is (for luigid's LUIGI_CONFIG_PATH). argparse's version action
    wraps its text to the terminal's width (textwrap: breaks long words, collapses spaces): an installation path
    longer than a line comes out cut in two, with a newline inside the path."""
    pkg = tmp_path / "opt" / "cbm_luigi-releases" / "2026-11-30" / "venv" / "lib" / "python3.11" / "site-packages" \
        / "cbm_luigi"
    (pkg / "shipped").mkdir(parents=True)
    (pkg / "shipped" / "luigi.cfg").write_text((REPO / "luigi.cfg").read_text())
    monkeypatch.setattr(shipped, "PACKAGE", pkg)
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exc:
        cbm_etl(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert str(pkg / "shipped" / "luigi.cfg") in out.splitlines()[-1], out


# -- 5. "A value in your file wins": Luigi's own aliases ------------------------------------------------------

def test_an_operators_worker_timeout_under_luigis_older_name_still_wins(tmp_path):
    """Luigi reads [worker] timeout, and when absent its older name [core] worker-timeout. config_defaults()
    sets [worker] timeout = 0 when the file has only the older name, so the operator's value is ignored
    (the same for worker-keep-alive): OPERATIONS says "A value in your file wins"."""
    cfg = tmp_path / "site.cfg"
    cfg.write_text("[core]\nworker-timeout = 7200\nworker-keep-alive = true\n")
    e = {k: v for k, v in os.environ.items() if not k.startswith("CBM_")}
    e["LUIGI_CONFIG_PATH"] = str(cfg)
    r = subprocess.run([str(BIN / "python"), "-W", "ignore", "-c",
                        "import cbm_luigi, luigi.worker; w = luigi.worker.worker(); print(w.timeout, w.keep_alive)"],
                       cwd=tmp_path, env=e, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["7200", "True"], f"the operator's [core] worker-timeout/keep-alive: {r.stdout}"


# -- 6. a CBM_HOME the nightly cannot write ----------------------------------------------------------------------

def test_a_home_where_var_cannot_be_made_is_said_not_a_traceback(tmp_path, monkeypatch):
    """A CBM_HOME holding only .env (read-only: the warehouse, source and cache set elsewhere) ran the nightly
    while the lock was in /tmp/luigi. Now making var/luigi-lock fails inside luigi.lock: "ERROR: Uncaught
    exception in luigi" and a traceback, exit 40, nothing loaded, no word of what to do."""
    env = make_env(tmp_path / "w", monkeypatch)
    settings = tmp_path / "site.env"
    settings.write_text("")
    settings.chmod(0o600)
    if os.geteuid() == 0:
        home = Path("/proc/1")  # root writes anywhere else: a directory no process can make var/ in
    else:
        home = tmp_path / "ro"
        home.mkdir()
        home.chmod(0o555)
    e = subprocess_env(env, CBM_HOME=str(home), CBM_ENV_FILE=str(settings))
    r = subprocess.run([str(BIN / "luigi"), "--module", "cbm_luigi", "LoadAll", "--mode", "incremental",
                        "--local-scheduler"], cwd=tmp_path, env=e, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert "Uncaught exception in luigi" not in out and "Traceback" not in out, out[-1500:]
    assert str(home / "var") in out, out[-1500:]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to run make as another user")
def test_make_setup_works_in_a_checkout_the_user_cannot_write(tmp_path):
    """A checkout deployed read-only (another owner), its venv built elsewhere (VENV=...): `make setup` (and so
    `make test`) writes the package's bytecode where it can, and goes on without where it cannot (found in review:
    compileall's PermissionError failed it)."""
    root = Path(tempfile.mkdtemp(prefix="cbm_ro_"))  # pytest's tmp_path is root's alone: nobody cannot enter it
    try:
        checkout = root / "checkout"
        shutil.copytree(REPO / "cbm_luigi", checkout / "cbm_luigi", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("Makefile", "setup.py"):
            shutil.copy(REPO / name, checkout / name)
        venv = root / "venv"
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python").symlink_to(shutil.which("python3", path="/usr/bin:/bin") or sys.executable)
        time.sleep(0.01)
        (venv / ".installed").touch()  # built already, newer than setup.py
        for p in [root, venv, venv / "bin", *checkout.rglob("*"), checkout]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        done = subprocess.run(["runuser", "-u", "nobody", "--", "make", "-C", str(checkout), "setup", f"VENV={venv}"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "no bytecode written" in done.stdout
        assert not (checkout / "cbm_luigi" / "__pycache__").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("before", ["enabled", "disabled"])
def test_importing_the_package_leaves_the_garbage_collector_as_it_found_it(before):
    """The package turns the collector off while it imports (nothing it loads can be freed: it is frozen after)
    and puts it back as it was: on for Luigi's command line, off for a host program that turned it off."""
    code = ("import gc\n" + ("gc.disable()\n" if before == "disabled" else "") +
            "import cbm_luigi\nprint(gc.isenabled(), gc.get_freeze_count() > 10_000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.split() == [str(before == "enabled"), "True"]
