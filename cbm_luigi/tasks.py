"""Luigi tasks: thin templates over the plain functions in extract.py, transform.py and steps.py.

ExtractParquet -> StageTable -> MergeOds -> ValidateTable, per table; LoadTable wraps them; LoadAll requires
every active table. Outputs are named from (table, mode, batch); the warehouse steps' targets are marker rows.
"""
from __future__ import annotations

import functools
import logging
import multiprocessing
import re
import time
import traceback
import uuid
from datetime import date, datetime
from functools import cached_property
from pathlib import Path

import luigi
import luigi.retcodes
from luigi.parameter import ParameterVisibility

from . import config_store, steps
from .ahead import import_ahead
from .extract import current_meta, extract_to_parquet, is_current, read_extract_meta
from .faults import checkpoint
from .naming import cache_file_stem, sql_safe_name
from .plan import PLAN_ERRORS, ConfigError, TablePlan
from .runlog import StepRecord, log_rows, replay_unlogged, spool_steps, unlogged_dir, write_steps
from .settings import Settings, load_settings, mask_secrets, warn_once
from .source.readers import driver_modules, pooled_reader
from .targets import (UNKNOWN_SHAPE, MarkerTarget, StagedBatchTarget, StageTarget, record_configuration,
                      validated_in)
from .transform import TechnicalValues
from .warehouse import open_warehouse
from .warehouse.duckdb_wh import WarehouseBusyError, WarehouseLockError

log = logging.getLogger("luigi-interface")
PROCESS_RUN_ID = str(uuid.uuid4())
_CONFIG_CACHE: dict = {}
_PLAN_CACHE: dict = {}
CONFIG_TTL_S = 30.0
MAX_BATCH_TAG = 40


def _config(settings: Settings) -> tuple[list[dict], dict[str, list[str]]]:
    """Active tables and dependencies, read once per process every CONFIG_TTL_S (complete() is called a lot)."""
    key = (settings.warehouse_kind, str(settings.duckdb_path), settings.mssql_odbc)
    hit = _CONFIG_CACHE.get(key)
    if hit and time.monotonic() - hit[0] < CONFIG_TTL_S:
        return hit[1], hit[2]
    with open_warehouse(settings).session() as s:
        try:
            tables, deps = config_store.table_rows(s), config_store.dependencies(s)
        except Exception as exc:  # noqa: BLE001 — re-raised, with the warehouse named when it is not set up
            hint = config_store.uninitialised_hint(str(exc), settings.describe_warehouse())
            if hint:
                raise RuntimeError(hint) from exc
            raise
    _CONFIG_CACHE[key] = (time.monotonic(), tables, deps)
    return tables, deps


def _log_where_luigi_logs() -> None:
    """Under the `luigi` command the pipeline's own lines (each extract's SQL and rows, schema changes, retries)
    had no handler: INFO was dropped, and warnings came out bare, without time or level (found in review).
    Luigi sets up its own logger only (or the whole logging, from a logging_conf_file), once the command line
    is read: the task it builds from the command line exists before that, so this runs when a task first asks
    for the settings. When nothing handles ours by then (the cli, pytest or a logging_conf_file set up the root
    logger), they get a handler of their own, on stderr as Luigi's, with the time and the level."""
    logger = logging.getLogger("cbm_luigi")
    if logger.hasHandlers():
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:  # Luigi's --log-level / [core] log_level, as it set its own logger
        logger.setLevel(max(logging.INFO, logging.getLogger("luigi-interface").level))


def clear_config_cache() -> None:
    _CONFIG_CACHE.clear()
    _PLAN_CACHE.clear()


_BATCH_TAG = re.compile(r"[a-z0-9][a-z0-9_-]*")


def check_batch_tag(tag: str) -> None:
    """A tag is used as given in the batch id and the cache folder: one spelling per batch (a normalised
    `Rerun` and `rerun` would share a batch, and the second run would reuse the first one's extract)."""
    if tag and not _BATCH_TAG.fullmatch(tag):
        raise ValueError(f"--batch-tag {tag!r}: use lower-case letters, digits, '-' and '_', starting with a "
                         "letter or digit (it names the batch and its cache folder)")
    if len(tag) > MAX_BATCH_TAG:
        raise ValueError(f"--batch-tag {tag!r} is longer than {MAX_BATCH_TAG} characters "
                         "(batch ids are stored in 64-character columns): use a shorter tag")


def batch_id_of(batch_date: date, batch_tag: str) -> str:
    """The batch's id: its date, then `-<tag>` when there is one (check_batch_id reads it back)."""
    return batch_date.isoformat() + (f"-{batch_tag}" if batch_tag else "")


def check_batch_id(batch_id: str) -> None:
    """A batch id as CbmTask.batch_id spells it: the batch date, then `-<tag>` (a valid tag) when there is one."""
    day, tag = batch_id[:10], batch_id[11:]
    try:
        sep = batch_id[10:11]
        if date.fromisoformat(day).isoformat() != day or sep not in ("", "-") or (sep == "-" and not tag):
            raise ValueError(batch_id)
        check_batch_tag(tag)
    except ValueError:
        raise ValueError(f"{batch_id!r} is not a batch id (YYYY-MM-DD or YYYY-MM-DD-<tag>)") from None


def _stops_when_busy(method):
    """A `complete()` or `requires()` that finds the DuckDB warehouse held by another process (or a file that
    cannot be locked at all) ends this process (exit code [retcode] scheduling_error, 35) with the message,
    before its Luigi worker tells the scheduler anything. Luigi reports a task whose complete() or requires()
    raised as UNKNOWN to luigid; an operator's second run of the same batch (another command line: Luigi's pid
    lock compares them) so changed the task of the run holding the warehouse, which luigid then never granted: a
    night that loaded every table exited 25 (found in review). In a task's own process (--workers above 1) the
    error is raised as it is: Luigi fails that task."""
    @functools.wraps(method)
    def checked(self):
        try:
            return method(self)
        except (WarehouseBusyError, WarehouseLockError) as exc:  # no task of this run can open it
            if multiprocessing.parent_process() is not None:
                raise
            log.error("%s; this run stops before scheduling anything", exc)
            raise SystemExit(luigi.retcodes.retcode().scheduling_error) from exc
    return checked


class CbmTask(luigi.Task):
    table = luigi.Parameter(description="source table name as in Progress (PUB.<table>)")
    mode = luigi.ChoiceParameter(choices=["full", "incremental"], default="incremental")
    batch_date = luigi.DateParameter(default=date.today(), description="the batch (default: today)")
    batch_tag = luigi.Parameter(default="", description="start a fresh batch the same day: up to 40 lower-case "
                                                        "letters, digits, - and _, starting with a letter or digit")
    run_id = luigi.Parameter(default=PROCESS_RUN_ID, significant=False, visibility=ParameterVisibility.HIDDEN)
    continue_on_error = luigi.BoolParameter(default=False, significant=False,
                                            description="load the tables after a failed critical one")
    in_batch = luigi.BoolParameter(default=False, significant=False, visibility=ParameterVisibility.HIDDEN)
    load_priority = luigi.IntParameter(default=0, significant=False, visibility=ParameterVisibility.HIDDEN)
    step = ""
    # the bases are not tasks to run: out of Luigi's registry, they add no flags to its command-line parser,
    # which Luigi builds about nine times a run, one flag for each parameter of each task it knows
    _visible_in_registry = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._visible_in_registry = not cls.__dict__.get("_base", False)
        for name in ("complete", "requires"):
            if name in cls.__dict__:
                setattr(cls, name, _stops_when_busy(cls.__dict__[name]))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_batch_tag(self.batch_tag)
        self.priority = self.load_priority
        self._records: list[StepRecord] = []

    # -- shared plumbing (one place) --------------------------------------------------------------------------
    @cached_property
    def settings(self) -> Settings:
        _log_where_luigi_logs()  # asked first while Luigi schedules or runs: its logging is set up by then
        settings = load_settings()
        import_ahead(*driver_modules(settings))  # while the warehouse opens (ahead.py)
        return settings

    @cached_property
    def warehouse(self):
        return open_warehouse(self.settings)

    @property
    def batch_id(self) -> str:
        return batch_id_of(self.batch_date, self.batch_tag)

    @property
    def destination(self) -> str:
        return sql_safe_name(self.table)

    def cache_path(self, kind: str) -> Path:
        return self.settings.cache_dir / self.batch_id / self.mode / f"{cache_file_stem(self.table)}.{kind}.parquet"

    def plan(self, fresh: bool = False) -> TablePlan:
        """The table's plan. The extract reads it fresh (LastSuccessTs, config edits); the later steps of the
        table reuse that one in this process (CONFIG_TTL_S), so all four steps agree on the columns."""
        key = self._plan_key()
        hit = _PLAN_CACHE.get(key)
        if hit and not fresh and time.monotonic() - hit[0] < CONFIG_TTL_S:
            return hit[1]
        with self.warehouse.session() as s:
            config_store.ensure_columns(s, lambda: pooled_reader(self.settings), self.table)
            plan = config_store.load_plan(s, self.table, self.warehouse)
        _PLAN_CACHE[key] = (time.monotonic(), plan)
        return plan

    def _plan_key(self) -> tuple:
        return (self.settings.duckdb_path, self.settings.mssql_odbc, self.table)

    marker_class: type[MarkerTarget] = MarkerTarget

    def shape_now(self) -> str | None:
        """The table's extract shape now (TablePlan.extract_shape); None when its configuration cannot make a
        plan (a ConfigError, a type it cannot map): what asks is then incomplete, and running the step raises
        the error, which Luigi logs (and etl.ETL_Log records) for a run() but not for a complete()."""
        try:
            return self.plan().extract_shape()
        except PLAN_ERRORS:
            return None

    def window_widened(self, meta: dict) -> bool:
        """TablePlan.window_widened for the batch's extract `meta`; a configuration that makes no plan: yes (the
        run says why)."""
        try:
            return self.plan().window_widened(meta["since"], self.mode, self.settings.source_zone())
        except PLAN_ERRORS:
            return True

    def marker(self) -> MarkerTarget:
        # a step on stg is also incomplete when stg was staged under another configuration than the table's now
        shape = {"shape": self.shape_now} if issubclass(self.marker_class, StagedBatchTarget) else {}
        return self.marker_class(self.warehouse, self.task_id, table=self.table, step=self.step,
                                 batch_id=self.batch_id, mode=self.mode, **shape)

    def params_for(self, cls):
        return cls(table=self.table, mode=self.mode, batch_date=self.batch_date, batch_tag=self.batch_tag,
                   run_id=self.run_id, continue_on_error=self.continue_on_error, in_batch=self.in_batch,
                   load_priority=self.load_priority)

    def record(self, rec: StepRecord, started: float) -> StepRecord:
        rec.duration_ms = int((time.monotonic() - started) * 1000)
        self._records.append(rec)
        return rec

    def status(self, text: str, pct: int | None = None) -> None:
        """Progress for the central scheduler's web view. Luigi's worker attaches the two reporters to the task
        only while it runs it; called directly (plain functions, tests) there is no web view to tell. A message
        the scheduler cannot take (luigid restarted during the night) is logged and the step goes on: raised
        inside the extract, it failed the table as an error of the Progress driver (found in review). The task
        then sends no more: each try waits out Luigi's retries (about a minute), once per batch of the extract."""
        report_message = getattr(self, "set_status_message", None)
        report_percentage = getattr(self, "set_progress_percentage", None)
        if getattr(self, "_status_refused", False):
            return
        try:
            if report_message:
                report_message(text)
            if pct is not None and report_percentage:
                report_percentage(pct)
        except Exception as exc:  # noqa: BLE001 — the web view's status line only: said, and the step goes on
            self._status_refused = True
            log.warning("table %s: the scheduler did not take the status message %r (%s: %s); the step goes on, "
                        "without status messages", self.table, text, type(exc).__name__,
                        mask_secrets(str(exc))[:300])

    def _replay(self, answered: bool) -> int:
        """runlog.replay_unlogged; whatever goes wrong there is said and costs no step its own rows."""
        try:
            return replay_unlogged(self.warehouse, self.settings.cache_dir, answered=answered)
        except Exception:  # noqa: BLE001 — said; the caller writes (or keeps) its own rows next
            log.error("could not write the etl.ETL_Log rows kept in %s: %s", unlogged_dir(self.settings.cache_dir),
                      traceback.format_exc())
            return 0

    def _log(self, extra: list[StepRecord], answered: bool = False) -> None:
        """The step's etl.ETL_Log rows, after those earlier steps could not write (runlog.replay_unlogged); rows
        the warehouse does not take, or that would pass rows still waiting, are kept in the cache for a later step
        (runlog.spool_steps). `answered`: the step has just worked in the warehouse (it succeeded), so a warehouse
        found down a moment ago is asked again now."""
        records, self._records = self._records + extra, []
        if not records:
            return
        ended = datetime.now()
        waiting = self._replay(answered)
        failure = f"{waiting} earlier row(s) wait there for the warehouse, and these go behind them"
        if not waiting:
            try:
                write_steps(self.warehouse, run_id=self.run_id, batch_id=self.batch_id, table=self.table,
                            mode=self.mode, task_id=self.task_id, records=records)
                return
            except Exception:  # noqa: BLE001 — the run's own outcome stands; the rows are kept, the failure said
                failure = f"the warehouse said: {traceback.format_exc()}"
        rows = log_rows(run_id=self.run_id, batch_id=self.batch_id, table=self.table, mode=self.mode,
                        task_id=self.task_id, records=records)
        try:
            kept = spool_steps(self.settings.cache_dir, rows, ended, tried=not waiting)
        except OSError as exc:
            if waiting:  # kept behind the waiting rows it cannot be: written now, out of order, rather than lost
                try:
                    write_steps(self.warehouse, run_id=self.run_id, batch_id=self.batch_id, table=self.table,
                                mode=self.mode, task_id=self.task_id, records=records)
                    log.error("could not keep the etl.ETL_Log rows of %s behind the %d row(s) waiting in %s (%s): "
                              "written before them", self.task_id, waiting, unlogged_dir(self.settings.cache_dir),
                              exc)
                    return
                except Exception:  # noqa: BLE001 — said below with the rest
                    failure += f"; the warehouse said: {traceback.format_exc()}"
            log.error("could not write etl.ETL_Log for %s, nor keep its rows in %s (%s): they are lost; %s",
                      self.task_id, unlogged_dir(self.settings.cache_dir), exc, failure)
            return
        log.error("could not write etl.ETL_Log for %s: its rows are kept in %s, and the next step that reaches the "
                  "warehouse writes them; %s", self.task_id, kept, failure)

    def trigger_event(self, event, *args, **kwargs):
        """Luigi's, then the Ctrl-C that interrupted one of our callbacks (Luigi's returns without a word on
        it), so the worker stops as on any other Ctrl-C."""
        self._interrupted = False
        super().trigger_event(event, *args, **kwargs)
        if self.__dict__.pop("_interrupted", False):
            raise KeyboardInterrupt

    def on_failure(self, exception):
        text = mask_secrets(f"{type(exception).__name__}: {exception}")
        return f"{self.table} [{self.step}, batch {self.batch_id}, {self.mode}]: {text}"


def _utc_start(meta: dict) -> datetime | None:
    """The extract's start in UTC as its own process saw it (a cache file written before it was recorded: None,
    and the local start is converted where it is used)."""
    return datetime.fromisoformat(meta["started_at_utc"]) if meta.get("started_at_utc") else None


def _interrupt_raised_again(handler):
    """Luigi returns quietly from an event callback that Ctrl-C interrupted (its callbacks are 'protected'), and
    the run would go on: the task notes it, and CbmTask.trigger_event raises it again once Luigi is done."""
    @functools.wraps(handler)
    def guarded(task, *args):
        try:
            handler(task, *args)
        except KeyboardInterrupt:
            if isinstance(task, CbmTask):
                task._interrupted = True
            raise
    return guarded


@CbmTask.event_handler(luigi.Event.SUCCESS)
@_interrupt_raised_again
def _log_success(task):
    if isinstance(task, CbmTask):
        task.__dict__.pop("_started", None)  # Luigi reuses the instance: a later attempt must not inherit it
        if task.step:
            task._log([], answered=True)
        else:  # a table loaded (LoadTable): rows kept earlier in the run are written before it ends, if they can be
            task._replay(answered=True)


@CbmTask.event_handler(luigi.Event.START)
@_interrupt_raised_again
def _note_start(task):
    if isinstance(task, CbmTask):
        task._started = time.monotonic()


@CbmTask.event_handler(luigi.Event.FAILURE)
@_interrupt_raised_again
def _log_failure(task, exception):
    if isinstance(task, CbmTask) and task.step:
        started = task.__dict__.pop("_started", None)  # a failure before run() started has none
        task._log([StepRecord(task.step, status="FAILED", error=f"{type(exception).__name__}: {exception}",
                              duration_ms=int((time.monotonic() - started) * 1000) if started else None)])
        _say_held_back(task)


# (batch id, mode) -> the tables a LoadAll --filter loads in this process (with what they wait for); none: every one
_RUN_TABLES: dict[tuple[str, str], set[str]] = {}


def _say_held_back(task: CbmTask) -> None:
    """Name the tables a failed table keeps from loading in this batch: Luigi's summary only counts them ('had
    failed dependencies', and hides every parameter of such tasks), so the log of a night stopped by a critical
    table named none of them (found in review)."""
    if not task.in_batch:
        return
    try:
        tables, deps = _config(task.settings)
        held = config_store.waiting_for(task.table, tables, deps, critical_stops=not task.continue_on_error)
        asked = _RUN_TABLES.get((task.batch_id, task.mode))
        held = [t for t in held if asked is None or t in asked]
        if not held:  # no query then: on a night the source is down, every table fails
            return
        with task.warehouse.session() as s:  # a rerun: those the batch loaded before are not held back
            done = validated_in(s, task.batch_id)
        held = [t for t in held if (t, task.mode) not in done]
        freed = [] if task.continue_on_error else [
            t for t in held if t in config_store.freed_by_continue_on_error(task.table, tables, deps)]
    except Exception:  # noqa: BLE001 — only a message: the failure itself is logged and stands
        log.debug("could not list the tables waiting for %s", task.table, exc_info=True)
        return
    if held:
        log.error("table %s failed (%s): %d table(s) that wait for it are not loaded in batch %s: %s%s", task.table,
                  task.step, len(held), task.batch_id, ", ".join(held),
                  f" (--continue-on-error loads {', '.join(freed)} anyway)" if freed else "")


@CbmTask.event_handler(luigi.Event.BROKEN_TASK)
@_interrupt_raised_again
def _log_broken(task, exception):
    """A step that could not even be scheduled for its configuration (a dependency cycle, a table missing from
    config) never runs, so without this row the monitoring views showed the table as OK, and without the line
    of _say_held_back the tables waiting for it were named nowhere (found in review). Other errors while
    scheduling (the warehouse unreachable, mostly) are not written to that warehouse: each try would wait out
    the connection retries again, for every task."""
    if isinstance(task, CbmTask) and task.step and isinstance(exception, ConfigError):
        task._log([StepRecord(task.step, status="FAILED", error=f"{type(exception).__name__}: {exception}",
                              detail="failed while scheduling: the step did not run")])
        _say_held_back(task)  # the tables it keeps from loading are named as for a step that failed running


class BatchFileTarget(luigi.LocalTarget):
    """The batch parquet: exists when the file is complete (atomic rename) and in this version's format (a
    file left in the cache by an older version is extracted again, not staged in a shape it does not have)."""

    def exists(self) -> bool:
        return super().exists() and is_current(Path(self.path))


class ExtractParquet(CbmTask):
    """PUB.<table> -> the batch parquet, shaped and hashed while read (atomic). Waits for the tables it depends
    on, and for earlier critical tables."""
    step = "extract"
    # concurrent extracts on the Progress server are capped by luigi.cfg [resources] progress_odbc
    resources = {"progress_odbc": 1}

    def requires(self):
        tables, deps = _config(self.settings)
        cycle = config_store.dependency_cycle(deps, self.table)
        if cycle:
            raise ConfigError(f"config.ETL_Dependencies has a cycle: {' -> '.join(cycle)} (each table waits for "
                              f"the next): delete one of these rows")
        active = {t["TableName"] for t in tables}
        for d in deps.get(self.table, []):
            if d != self.table and d not in active:
                warn_once(log, f"table {self.table} depends on {d!r}, which is not an active table of "
                               f"config.ETL_Tables: not waited for (add or activate it, or delete the "
                               f"config.ETL_Dependencies row)")
        need = config_store.waits_for(self.table, tables, deps,
                                      critical_stops=self.in_batch and not self.continue_on_error)
        return [ValidateTable(table=t, mode=self.mode, batch_date=self.batch_date, batch_tag=self.batch_tag,
                          run_id=self.run_id, continue_on_error=self.continue_on_error, in_batch=self.in_batch,
                          load_priority=self.load_priority + 1) for t in need]

    def output(self):
        return BatchFileTarget(str(self.cache_path("extract")), format=luigi.format.Nop)

    def complete(self) -> bool:
        """The batch file is there, made under the table's configuration now (a column excluded or a type
        overridden since: read again; a file of this run: the stage says so), it was not read before the table's
        last validated load (a batch left unmerged while a later one loaded the table reads the source again when
        rerun: merging its older rows would undo newer ones; steps.merge refuses it), and the window asked for now
        is not wider than the one it read (window_widened). A file this run wrote stays complete whatever happens
        meanwhile (another run loading the table, the clock set back): the merge is where that is refused."""
        if not self.output().exists():
            return False
        meta = read_extract_meta(Path(self.output().path))
        if meta.get("table") != self.table:  # not this table's extract (the cache names files per table): read again
            return False
        if meta.get("run_id") == self.run_id:  # a config edit since is refused by the stage, with the way out
            return True
        with self.warehouse.session() as s:
            if config_store.newer_load_than(s, self.table, datetime.fromisoformat(meta["started_at"])) is not None:
                return False
        if meta.get("shape") != self.shape_now():  # extracted under another configuration: read again
            return False
        return not self.window_widened(meta)

    def run(self):
        t0 = time.monotonic()
        plan = self.plan(fresh=True)
        self.status(f"extracting {self.table}")
        with pooled_reader(self.settings) as reader:
            meta = extract_to_parquet(reader, plan, self.mode, Path(self.output().path),
                                      batch_rows=self.settings.batch_rows,
                                      progress=lambda n: self.status(f"extract {self.table}: {n:,} rows"),
                                      memory_limit=self.settings.transform_memory_limit,
                                      threads=self.settings.duckdb_threads, run_id=self.run_id,
                                      zone=self.settings.source_zone())
        if meta["effective_mode"] != self.mode:
            log.info("table %s: %s", self.table, meta["window"])
        self.record(StepRecord("extract", rows=meta["rows"], detail=meta["window"]), t0)


class WarehouseStep(CbmTask):
    """A step whose target is a marker row, written in the step's own transaction; runs after `upstream`."""
    upstream: type[CbmTask]
    _base = True

    def requires(self):
        return self.params_for(self.upstream)

    def output(self):
        return self.marker()

    def complete(self) -> bool:
        """The marker; and for the steps that resume a batch (stage, merge), its batch file still there, in this
        version's format, read from the window asked for now: else the rerun goes back to the extract (a file
        removed by clean-cache or written by an older version, a window widened since: found in review)."""
        if not super().complete():
            return False
        if self.step not in ("stage", "merge"):
            return True
        meta = current_meta(self.cache_path("extract"))
        return meta is not None and not self.window_widened(meta)

    def extract_meta(self) -> dict:
        """What the extract recorded: its start time, its window's start (`since`) and its effective mode."""
        return read_extract_meta(self.cache_path("extract"))

    def forget_ods_state(self, s, plan: TablePlan) -> None:
        """ods.<table> lost what the loads before wrote (dropped by hand): the table's recorded configuration made
        unknown, the columns the last merge wrote kept, so its next read is in full and the merge refills them
        (an extract read from a window since is stale then: WarehouseStep.window_widened)."""
        record_configuration(s, self.table, UNKNOWN_SHAPE, plan.merged_columns)
        _PLAN_CACHE.pop(self._plan_key(), None)  # stale now

    def run_step(self, fn):
        """`fn()`, and when it finds stg.<table> or ods.<table> gone (steps.RelationGoneError) the batch's stage
        forgotten, its marker and the record of what stg holds, so the same command stages it again (the record
        kept, a merged batch's merge marker still held and every rerun failed the same way: found in review)."""
        try:
            return fn()
        except steps.RelationGoneError as exc:
            stage = self.params_for(StageTable).output()
            try:
                with self.warehouse.session() as s, s.transaction():
                    stage.forget_staged(s)
                    stage.forget(s)
                    if exc.ods_gone:
                        self.forget_ods_state(s, self.plan())
            except Exception as err:  # noqa: BLE001 — said after the error, which stays the one reported
                log.error("table %s: could not forget the batch's stage: %s", self.table, traceback.format_exc())
                instead = (self._read_in_full() if exc.ods_gone else
                           f"run `cbm-etl invalidate {self.table} --batch {self.batch_id}`, then the same command")
                exc.args = (f"{exc.fact} Forgetting its stage failed ({type(err).__name__}: "
                            f"{mask_secrets(str(err))[:300]}): {instead}.",)
            raise

    def _read_in_full(self) -> str:
        """The way out when ods lost what earlier loads wrote and the record that makes the next read full could
        not be written: a full batch of the table reads every row whatever is recorded (found in review: the
        advised invalidate read a window again, refused once more)."""
        return (f"run `{steps.rebuild_command(self.table)}`{steps.NO_LUIGID}: a full "
                f"read rebuilds what ods lost; then the same command loads this batch")


class StageTable(WarehouseStep):
    """Replace stg.<table> with the batch file plus this run's technical values."""
    step = "stage"
    upstream = ExtractParquet
    marker_class = StageTarget  # incomplete again when another batch or mode has replaced stg since

    def run(self):
        plan = self.plan()
        t0 = time.monotonic()
        self.status(f"stage {self.table}")
        tech = TechnicalValues(self.run_id, self.batch_id, datetime.now())
        started = datetime.fromisoformat(self.extract_meta()["started_at"])
        self.record(steps.stage(self.warehouse, plan, Path(self.input().path), tech, marker=self.output(),
                                run_id=self.run_id, extract_started_at=started, checkpoint=checkpoint), t0)


class MergeOds(WarehouseStep):
    """MERGE stg.<table> into ods.<table> (type 1 or SCD2), soft deletes in full mode; one transaction."""
    step = "merge"
    upstream = StageTable
    marker_class = StagedBatchTarget  # incomplete again (restaged, merged again) if stg changed before validation

    def run(self):
        plan = self.plan()
        t0 = time.monotonic()
        meta = self.extract_meta()
        self.status(f"merge {self.table}")
        mode = meta.get("effective_mode", self.mode)
        allowed = self.settings.empty_full_allowed(self.table)
        # the allowance applies to a read made by the run that has it, never to one made before the operator
        # set it: a refused empty read whose file survived a kill (between the refusal and _read_again's
        # removal) would be merged by the allowed rerun while the source holds its rows again (found in review)
        earlier_read = allowed and meta.get("run_id") != self.run_id
        try:
            rec = self.run_step(lambda: steps.merge(
                self.warehouse, plan, mode=mode, batch_id=self.batch_id, marker=self.output(), run_id=self.run_id,
                checkpoint=checkpoint, allow_empty_full=allowed and not earlier_read, read_all=meta["since"] is None))
        except steps.RefusedBatchError as exc:
            why = (" (CBM_ALLOW_EMPTY_FULL applies only to a read made by the same run, and this one was made by "
                   "an earlier run)" if earlier_read and isinstance(exc, steps.EmptyFullBatchError) else "")
            exc.args = (f"{exc} {self._read_again(why, plan if isinstance(exc, steps.OdsLostError) else None)}",)
            raise
        self.record(rec, t0)

    def _read_again(self, why: str = "", lost: TablePlan | None = None) -> str:
        """The batch's own rows were refused: merging the same extract again could never succeed (found in
        review: a row fixed in Progress, or a key read twice while it moved, failed every rerun; and
        CBM_ALLOW_EMPTY_FULL would have applied to the empty read made before the operator looked). The stage
        marker goes first, then the file: killed in between, the rerun restages the old file, is refused again
        and drops it then (the other order would leave DuckDB's stg view over a file that is gone). Returns what
        the operator does next, said after the refusal: a failure here must not replace it (found in review: a
        dropped connection's error was all etl.ETL_Log kept, and the rerun merged the same rows again). `lost`:
        the plan of a table whose ods lost what earlier loads wrote (steps.OdsLostError), read in full next."""
        stage = self.requires()
        again = "then the same command reads the table from Progress again"
        try:
            with self.warehouse.session() as s, s.transaction():
                stage.output().forget(s)
                if lost is not None:
                    self.forget_ods_state(s, lost)
        except Exception as exc:  # noqa: BLE001 — said after the refusal, which stays the error
            log.error("table %s: could not forget the refused batch's stage: %s", self.table, traceback.format_exc())
            detail = f"{type(exc).__name__}: {mask_secrets(str(exc))[:300]}"
            if lost is not None:  # the record that makes the next read full was not written either: worded as
                # run_step words it, so the triage row for it is the one found (found in review)
                return f"Forgetting its stage failed ({detail}): {self._read_in_full()}."
            return (f"The batch's extract could not be dropped{why} (forgetting its stage failed: {detail}): run "
                    f"`cbm-etl invalidate {self.table} --batch {self.batch_id}`, {again} (as it is, it would merge "
                    f"the same rows and be refused again).")
        try:
            self.cache_path("extract").unlink(missing_ok=True)
        except OSError as exc:
            return (f"The batch's extract could not be dropped{why} ({exc}): delete {self.cache_path('extract')}, "
                    f"{again} (with the file there it would merge the same rows and be refused again).")
        return (f"The batch's extract was dropped{why}: the same command reads the table from Progress again"
                f"{', in full' if lost is not None else ''}.")


class ValidateTable(WarehouseStep):
    """Check ods against the batch; on success advance LastSuccessTs to the extract's start."""
    step = "validate"
    upstream = MergeOds

    def run(self):
        plan = self.plan()
        t0 = time.monotonic()
        meta = self.extract_meta()
        self.record(self.run_step(lambda: steps.validate(
            self.warehouse, plan, mode=meta.get("effective_mode", self.mode), batch_id=self.batch_id,
            marker=self.output(), run_id=self.run_id, extract_started_at=datetime.fromisoformat(meta["started_at"]),
            extract_started_utc=_utc_start(meta))), t0)


class LoadTable(CbmTask, luigi.WrapperTask):
    """One table through every step: `luigi --module cbm_luigi LoadTable --table produit --mode full`."""

    def complete(self):  # wrapped by CbmTask.__init_subclass__
        """As a WrapperTask; and, run on its own, a warning when its batch was loaded by an earlier run: Luigi then
        reads nothing, says nothing and exits 0 (the reload advised after a second failed validation the same
        day did so: found in review)."""
        done = luigi.WrapperTask.complete(self)
        if done and not self.in_batch and not getattr(self, "_said_done", False):
            self._said_done = True
            log.warning("table %s, batch %s (%s): already loaded by an earlier run; nothing is read now. To load it "
                        "again the same day, give another --batch-tag (or `cbm-etl invalidate %s --batch %s`)",
                        self.table, self.batch_id, self.mode, self.table, self.batch_id)
        return done

    def requires(self):
        return self.params_for(ValidateTable)


class LoadAll(luigi.WrapperTask):
    """Every active table, in config Priority order: `luigi --module cbm_luigi LoadAll --mode incremental`."""
    mode = luigi.ChoiceParameter(choices=["full", "incremental"], default="incremental")
    batch_date = luigi.DateParameter(default=date.today())
    batch_tag = luigi.Parameter(default="")
    filter = luigi.Parameter(default="", description="comma-separated subset of tables (default: all active)")
    continue_on_error = luigi.BoolParameter(default=False, significant=False)
    run_id = luigi.Parameter(default=PROCESS_RUN_ID, significant=False, visibility=ParameterVisibility.HIDDEN)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_batch_tag(self.batch_tag)
        self._asked = False

    @_stops_when_busy
    def complete(self):
        """As a WrapperTask; and when the batch was already done before this run looked (the scheduler asks
        first), a warning: a cron started before midnight and rerun the next morning without --batch-date makes
        that rerun the next day's batch, and the next night's cron then reads nothing and exits 0 (found in
        review)."""
        tables = self.requires()
        done = all(t.complete() for t in tables)
        if not self._asked:
            self._asked = True
            if done and not tables:
                log.warning("LoadAll: no table is active in config.ETL_Tables (IsActive): nothing to load")
            elif done:
                log.warning("batch %s (%s): every table of it was loaded by an earlier run; nothing is read now. "
                            "A batch is the day its command starts: rerun a failed night with --batch-date <its "
                            "date>, and add --batch-tag <tag> for a second load the same day",
                            self.batch_id, self.mode)
        return done

    @property
    def batch_id(self) -> str:
        return batch_id_of(self.batch_date, self.batch_tag)

    @_stops_when_busy
    def requires(self):
        settings = load_settings()
        _log_where_luigi_logs()  # what _config says (a dependency row for no table) goes out with time and level
        rows, deps = _config(settings)
        wanted = [t.strip() for t in self.filter.split(",") if t.strip()]
        _RUN_TABLES.pop((self.batch_id, self.mode), None)  # every active table (for _say_held_back)
        if wanted:
            known = {r["TableName"].lower() for r in rows}
            unknown = [t for t in wanted if t.lower() not in known]
            if unknown:
                raise ValueError(f"--filter names tables that are not active in config.ETL_Tables: {unknown}")
            every = rows
            rows = [r for r in rows if r["TableName"].lower() in {w.lower() for w in wanted}]
            _RUN_TABLES[(self.batch_id, self.mode)] = config_store.in_run(
                [r["TableName"] for r in rows], every, deps, critical_stops=not self.continue_on_error)
        n = len(rows)
        # ValidateTable directly (not LoadTable): one task fewer per table, which counts with 1,000 tables
        return [ValidateTable(table=r["TableName"], mode=self.mode, batch_date=self.batch_date, batch_tag=self.batch_tag,
                          run_id=self.run_id, continue_on_error=self.continue_on_error, in_batch=True,
                          load_priority=n - i) for i, r in enumerate(rows)]
