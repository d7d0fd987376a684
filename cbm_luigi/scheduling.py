"""Adjustments to Luigi, applied when cbm_luigi is imported (`luigi --module cbm_luigi`).

luigi.cfg's settings hold wherever the command runs (`config_defaults`): Luigi reads luigi.cfg from the working
directory or LUIGI_CONFIG_PATH only, and an installed cbm_luigi run from a directory of its own exited 0 when every
table failed (no [retcode]: cron never paged) and retried refused batches (found in review). A value Luigi found in
a file wins. The run lock (`[core] lock_pid_dir`) is kept in CBM_HOME's var/, not Luigi's /tmp/luigi: there, the
nightly of another home on the host (the same command line) stopped this one as "already running", and a
deployment run by another user could not take the lock at all (found in review).

Luigi builds the `--local-scheduler` with `prune_on_get_work=True` (luigi/interface.py, not configurable): on
every task it hands out, it walks the whole task graph for dead workers, expired tasks and retries. In a
one-process run there is nothing to prune, but with 1,000 tables (4,000 tasks) the walks cost a quarter of the
batch (measured: 121 s -> 89 s). The central scheduler (`luigid`) does not prune on get_work by default; this
makes the local one behave the same. Pruning on the scheduler's own timer is unchanged. Neither retries a failed
step: luigi.cfg's `retry_delay = -1` (a retry re-read a refused batch and replaced its error: see luigi.cfg).
"""
from __future__ import annotations

import configparser
import functools
import logging
import sys
from pathlib import Path

import luigi.configuration
import luigi.interface
import luigi.lock
import luigi.retcodes
import luigi.scheduler
import luigi.task_register

from .settings import home_dir
from .shipped import shipped

log = logging.getLogger(__name__)


def _create_local_scheduler(self):
    return luigi.scheduler.Scheduler(prune_on_get_work=False, record_task_history=False)


def install() -> bool:
    """Patch Luigi's run lock (to make its parent directory) and its local scheduler factory; False (and a log
    line) if this Luigi version has no such factory."""
    if luigi.lock.acquire_for is not _acquire_with_parent:
        luigi.lock.acquire_for = _acquire_with_parent
    factory = getattr(luigi.interface, "_WorkerSchedulerFactory", None)
    if factory is None or not hasattr(factory, "create_local_scheduler"):
        log.info("luigi.interface._WorkerSchedulerFactory not found: the local scheduler keeps pruning on get_work")
        return False
    factory.create_local_scheduler = _create_local_scheduler
    return True


def lock_dir() -> Path:
    """The run lock's directory: var/luigi-lock of the home (settings.home_dir)."""
    return home_dir() / "var" / "luigi-lock"


def config_defaults() -> list[str]:
    """Give every option of the shipped luigi.cfg, and `[core] lock_pid_dir`, to Luigi's configuration where no
    file Luigi read sets it; returns the options given ("section.option")."""
    cfg = luigi.configuration.get_config()
    ours = configparser.ConfigParser(interpolation=None)
    ours.read(shipped("luigi.cfg"), encoding="utf-8")
    values = [(section, key, value) for section in ours.sections() for key, value in ours.items(section, raw=True)]
    values.append(("core", "lock_pid_dir", str(lock_dir())))
    given = []
    toml = isinstance(cfg, luigi.configuration.LuigiTomlParser)
    for section, key, value in values:
        if cfg.has_option(section, key) or any(cfg.has_option(*alias) for alias in _aliases(section, key)):
            continue
        if toml:
            value = _typed(value)  # the TOML parser returns values as set: [resources] must be numbers
        elif isinstance(cfg, configparser.ConfigParser):
            value = value.replace("%", "%%")  # Luigi's .cfg parser interpolates %(...)s
            if not cfg.has_section(section):
                cfg.add_section(section)
        cfg.set(section, key, value)
        given.append(f"{section}.{key}")
    return given


def _typed(value: str):
    """A luigi.cfg value as TOML would hold it (Luigi's TOML parser does not parse what it returns)."""
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


def _aliases(section: str, key: str) -> list[tuple[str, str]]:
    """The older names Luigi still reads for option `key` of Config `section` ([core] worker-timeout for [worker]
    timeout): one set in the operator's file must win too."""
    try:
        cls = luigi.task_register.Register.get_task_cls(section)
    except luigi.task_register.TaskClassException:  # no Luigi Config class of that name ([resources]): no alias
        return []
    param = dict(cls.get_params()).get(key)
    path = getattr(param, "_config_path", None)
    return [(path["section"], path["name"])] if path else []


_acquire_for = getattr(luigi.lock.acquire_for, "__wrapped__", luigi.lock.acquire_for)  # Luigi's own


@functools.wraps(_acquire_for)
def _acquire_with_parent(pid_dir, *args, **kwargs):
    """Luigi makes the lock directory (mode 0700) but not its parent (var/ of a new home): both are made here, and a
    home where they cannot be is said in one line. Only the making is caught: Luigi's own errors (say a process
    that `--take-lock` signals ending meanwhile) stay its own (found in review)."""
    try:
        Path(pid_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        print(f"the run lock cannot be made in {pid_dir} ({exc.strerror or exc}): make {Path(pid_dir).parent} "
              f"writable by this user, or set [core] lock_pid_dir in luigi.cfg to a directory of this CBM_HOME's own",
              file=sys.stderr)
        raise SystemExit(luigi.retcodes.retcode().unhandled_exception) from None
    return _acquire_for(pid_dir, *args, **kwargs)

