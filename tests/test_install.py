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
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from cbm_luigi import shipped
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
