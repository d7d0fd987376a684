"""`cbm-etl`: the operator's commands around the Luigi pipeline (setup, catalog, reruns, summaries)."""
from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import stat
import sys
from datetime import datetime, timedelta
from pathlib import Path

from . import config_store, demo_source, runlog
from .plan import PLAN_ERRORS
from .runlog import kept_error, unlogged_dir, unlogged_rows
from .settings import SettingError, load_settings, mask_secrets
from .shipped import shipped
from .source import catalog
from .source.readers import open_reader
from .targets import remove_markers, validated_in
from .warehouse import open_warehouse
from .warehouse.duckdb_wh import release_connections



def cmd_init_db(args) -> int:
    settings = load_settings()
    wh = open_warehouse(settings)
    n = wh.init_db()
    added, read = 0, None
    csv_path = Path(args.tables_csv) if args.tables_csv else default_tables_csv(settings.home)
    if args.tables_csv and not csv_path.is_file():
        print(f"init-db: --tables-csv {csv_path}: no such file", file=sys.stderr)
        return 2
    if csv_path and not args.no_tables:
        with wh.session() as s, s.transaction():
            added = config_store.load_tables_csv(s, csv_path)
        read = f"{added} table(s) added from {csv_path.resolve()}"
    elif not args.no_tables:  # said: "0 added from tables.csv" read as a file with nothing new (found in review)
        read = (f"no tables.csv (neither {settings.home / 'config' / 'tables.csv'} nor one shipped with cbm_luigi): "
                f"no table added; name one with --tables-csv")
    with wh.session() as s, s.transaction():
        recorded = config_store.record_loaded_configurations(s, wh)
    print(f"init-db: {n} statements run on {wh.describe()}" + (f"; {read}" if read else "") +
          (f"; the configuration of {recorded} loaded table(s) recorded" if recorded else ""))
    return 0


def default_tables_csv(home: Path) -> Path | None:
    """init-db's tables.csv when none is named: the home's own config/tables.csv, else the one shipped with
    cbm_luigi (the repository's in a checkout run from elsewhere, or the wheel's copy)."""
    own = home / "config" / "tables.csv"
    if own.is_file():
        return own
    with contextlib.suppress(FileNotFoundError):
        return shipped("config/tables.csv")
    return None


def cmd_sync_columns(args) -> int:
    settings = load_settings()
    wh = open_warehouse(settings)
    failed = []
    with wh.session() as s:
        tables = [r["TableName"] for r in config_store.table_rows(s)] if args.all else args.table
        if not tables:
            print("sync-columns: name a TABLE or use --all (the active tables)", file=sys.stderr)
            return 2
        with open_reader(settings) as reader:
            for t in tables:  # one table's failure (gone from the source?) does not keep the others from syncing
                try:
                    with s.transaction():
                        stats = config_store.sync_columns(s, reader, t)
                except Exception as exc:  # noqa: BLE001 — said, counted, and the exit code tells
                    failed.append(t)
                    print(f"sync-columns {t}: FAILED: {type(exc).__name__}: {mask_secrets(str(exc))}",
                          file=sys.stderr)
                    continue
                print(f"sync-columns {t}: {stats}")
    if failed:
        print(f"sync-columns: {len(failed)} of {len(tables)} table(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_discover(args) -> int:
    settings = load_settings()
    with open_reader(settings) as reader:
        print(f"{'table':<24} {'rows':>10}  {'proposed key':<28} {'modif. date':<12} {'time of day':<12} columns")
        for t in catalog.list_tables(reader):
            cols = catalog.read_columns(reader, t)
            key = catalog.proposed_key(reader, t)
            dcol, tod = catalog.modification_candidates(cols)
            rows = catalog.row_count(reader, t) if args.count else -1
            print(f"{t:<24} {rows if rows >= 0 else '-':>10}  {','.join(key) or '-':<28} {dcol or '-':<12} "
                  f"{tod or '-':<12} {len(cols)}")
    return 0


def cmd_demo_source(args) -> int:
    settings = load_settings()
    path = Path(args.path) if args.path else settings.source_path
    counts = demo_source.generate(path, scale=args.scale, seed=args.seed)
    print(f"demo source {path}: {counts}")
    return 0


def cmd_demo_change(args) -> int:
    settings = load_settings()
    touched = demo_source.mutate(settings.source_path, seed=args.seed)
    for t, kinds in touched.items():
        print(f"demo change {t}: " + ", ".join(f"{len(v)} {k}" for k, v in kinds.items()))
    return 0


def cmd_invalidate(args) -> int:
    """Forget a table's completed steps (one batch or all) so the next run reloads it."""
    from .naming import cache_file_stem
    from .tasks import check_batch_id

    settings = load_settings()
    if args.batch is not None:  # one batch, never a pattern of several (the cache glob would take it as one)
        try:
            check_batch_id(args.batch)
        except ValueError as exc:
            print(f"invalidate: --batch {exc}", file=sys.stderr)
            return 2
    wh = open_warehouse(settings)
    with wh.session() as s:
        if not s.scalar("SELECT COUNT(*) FROM config.ETL_Tables WHERE TableName = ?", [args.table]):
            print(f"invalidate: no table {args.table!r} in config.ETL_Tables (names as in Progress)",
                  file=sys.stderr)
            return 1
    files = f"*/{cache_file_stem(args.table)}.*.parquet"
    removed = 0
    # the files first, then the markers: a file that cannot be removed (a read-only cache, another user's file)
    # leaves the markers as they were, so the table is as before and the same command can run again. The other
    # order left the markers gone and the file there, which the rerun merged again (found in review)
    if args.from_step == "extract":  # an extract is a file, not a marker: a batch whose stage failed has only that
        for p in sorted(settings.cache_dir.glob(f"{args.batch or '*'}/{files}")):
            try:
                p.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                print(f"invalidate {args.table}: could not remove {p}: {exc.strerror or exc}. No marker was "
                      f"removed{f' ({removed} cached file(s) were)' if removed else ''}: make the file removable "
                      f"(remove it as its owner, or remount the cache read-write), then run the same command "
                      f"again", file=sys.stderr)
                return 1
            removed += 1
    with wh.session() as s, s.transaction():
        n = remove_markers(s, table=args.table, batch_id=args.batch)
        marked = {r[0] for r in s.query("SELECT DISTINCT BatchId FROM etl.ETL_Markers WHERE TableName = ?",
                                        [args.table])}
    if args.batch is not None and not n and not removed:
        cached = {p.parent.parent.name for p in settings.cache_dir.glob(f"*/{files}")}
        hint = "" if args.from_step == "extract" else " (with --from stage its cached extract is kept)"
        print(f"invalidate: table {args.table} has nothing to forget in batch {args.batch}{hint}; nothing was "
              f"removed. Its batches: {', '.join(sorted(marked | cached, reverse=True)[:10]) or 'none'}",
              file=sys.stderr)
        return 1
    print(f"invalidate {args.table}: {n} marker(s) and {removed} cached file(s) removed")
    return 0


# latest by LogId, the order rows were written (LogTs is local wall-clock time, which repeats an hour in autumn)
_LATEST_BATCH = runlog.LATEST_BATCHES
_STEPS = ("extract", "stage", "merge", "validate")
IN_LIST_MOST = 1000  # values of one `IN (?, ...)`: SQL Server refuses a statement of more than 2,100 parameters


def cmd_summary(args) -> int:
    settings = load_settings()
    wh = open_warehouse(settings)
    with wh.session() as s:
        # each table's latest batch (and mode), with that batch's own steps only: counts of an older batch must
        # not stand next to a newer batch's failure
        rows = s.query_dicts(
            "SELECT l.TableName, l.Step, l.Status, l.Rows, l.RowsInserted, l.RowsUpdated, l.RowsUnchanged, "
            "l.RowsDeleted, l.DurationMs, l.BatchId, l.Mode, l.ErrorMessage, l.LogTs, l.RunId FROM etl.ETL_Log AS l "
            f"JOIN ({_LATEST_BATCH}) AS b ON b.TableName = l.TableName AND b.BatchId = l.BatchId "
            "AND b.Mode = l.Mode ORDER BY l.TableName, l.LogId")
        sla = s.query_dicts("SELECT TableName, SLAStatus, LastSuccessTs, HoursSinceSuccess, SLAHours "
                            "FROM etl.vw_SLABreach ORDER BY TableName")
        # what the warehouse holds: a step's marker commits with its data, its log row just after (a kill in
        # between leaves the marker without the row, and a rerun rightly skips the step)
        marks = {(t, b, m, step): (at, run) for t, b, m, step, at, run in s.query(
            "SELECT m.TableName, m.BatchId, m.Mode, m.Step, m.CreatedAt, m.RunId FROM etl.ETL_Markers AS m "
            f"JOIN ({_LATEST_BATCH}) AS b ON b.TableName = m.TableName AND b.BatchId = m.BatchId "
            "AND b.Mode = m.Mode")}
        # rows waiting in the cache, as etl.ETL_Log will hold them: after every logged row (a batch of theirs other
        # than the logged one is the table's latest)
        waiting = runlog.waiting_rows(settings.cache_dir)
        failed_waiting = {(r["TableName"], r["BatchId"], r["Mode"]) for r in waiting if r["Status"] == "FAILED"}
        tables = sorted({t for t, _b, _m in failed_waiting})
        validated = set()
        for i in range(0, len(tables), IN_LIST_MOST):  # SQL Server takes 2,100 parameters a statement (Msg 8003)
            part = tables[i:i + IN_LIST_MOST]
            validated |= {(t, b, m) for t, b, m in s.query(
                f"SELECT TableName, BatchId, Mode FROM etl.ETL_Markers WHERE Step = 'validate' AND TableName IN "
                f"({', '.join('?' * len(part))})", part)}
    release_connections()  # read whole: printed through a pager left open, it held the embedded warehouse (review)
    print(f"warehouse: {wh.describe()}")
    by_table: dict[str, dict] = {r["TableName"]: {} for r in sla}  # the active tables; those never run show too
    for r in rows:
        if r["TableName"] in by_table:  # a deactivated table's history stays in the log, not in the summary
            by_table[r["TableName"]][r["Step"]] = r  # the step's last attempt in that batch
    late: dict[str, set[str]] = {}
    last_waiting: dict[str, dict] = {}
    for r in waiting:
        st = by_table.get(r["TableName"])
        if st is None:
            continue
        if any((x["BatchId"], x["Mode"]) != (r["BatchId"], r["Mode"]) for x in st.values()):
            st.clear()
            late.pop(r["TableName"], None)
        st[r["Step"]] = r
        late.setdefault(r["TableName"], set()).add(r["Step"])
        last_waiting[r["TableName"]] = r
    status = {r["TableName"]: {**r, "SLAStatus": _sla_once_written(r, last_waiting.get(r["TableName"]), validated)}
              for r in sla}
    print(f"{'table':<14} {'status':<10} {'rows':>8} {'ins':>6} {'upd':>6} {'same':>7} {'del':>5} {'seconds':>8}  "
          f"{'SLA':<12} batch/mode")
    for t, st in sorted(by_table.items()):
        if not st:
            print(f"{t:<14} {'-':<10} {'never run':>8}{'':>37}  {status.get(t, {}).get('SLAStatus', '-'):<12}")
            continue
        last = max(st.values(), key=lambda r: _STEPS.index(r["Step"]) if r["Step"] in _STEPS else -1)
        batch = (t, last["BatchId"], last["Mode"])
        # a step committed without its log row (none, or an earlier attempt's failure) is done, unlogged: told by
        # the run that committed it (times would compare the warehouse's clock with the ETL host's of a late row)
        unlogged = [step for step in _STEPS[1:] if (*batch, step) in marks and not _logged(st.get(step),
                                                                                           *marks[(*batch, step)])]
        logged = {step: r for step, r in st.items() if step not in unlogged}
        failed = [r for r in logged.values() if r["Status"] == "FAILED"]
        validated = "validate" in unlogged or logged.get("validate", {}).get("Status") == "SUCCESS"
        # INCOMPLETE: no validation and no failure, so killed (OOM, SIGKILL) or still running
        ok = "FAILED" if failed else "SUCCESS" if validated else "INCOMPLETE"
        secs = sum((r["DurationMs"] or 0) for r in logged.values()) / 1000
        m = st.get("merge", {})

        def n(key):
            return "?" if "merge" in unlogged else m.get(key) or 0
        x = st.get("extract")  # its log row is written after the rename; a failed extract read nothing usable
        read = "?" if x is None else "-" if x["Status"] == "FAILED" else x["Rows"] or 0
        print(f"{t:<14} {ok:<10} {read:>8} {n('RowsInserted'):>6} "
              f"{n('RowsUpdated'):>6} {n('RowsUnchanged'):>7} {n('RowsDeleted'):>5} "
              f"{secs:>8.2f}  {status.get(t, {}).get('SLAStatus', '-'):<12} {last['BatchId']}/{last['Mode']}")
        if late.get(t):
            print(f"    {', '.join(s for s in _STEPS if s in late[t])}: the etl.ETL_Log row(s) wait in "
                  f"{runlog.unlogged_dir(settings.cache_dir)} (the warehouse did not take them when the step ended)")
        if unlogged:
            print(f"    {', '.join(unlogged)}: done (marker committed) but not in etl.ETL_Log: the run was killed "
                  f"between the two; its counts are not known here")
        for r in failed:
            if r["ErrorMessage"]:
                # whole: the way out is at the end of each message (etl.ETL_Log keeps up to runlog.MAX_ERROR)
                print(f"    {r['Step']}: {r['ErrorMessage']}")
    waiting_n, refused = unlogged_rows(settings.cache_dir)
    if waiting_n:
        print(f"{waiting_n} etl.ETL_Log row(s) wait in {unlogged_dir(settings.cache_dir)}: the warehouse did not take "
              f"them when their steps ended, and the next step that reaches it writes them (shown above as written)")
    if refused:
        print(f"{refused} etl.ETL_Log row(s) the warehouse refused are in {unlogged_dir(settings.cache_dir)}/*.refused "
              f"(the run's log says why): insert them by hand or delete the files")
    return 0


def _sla_once_written(view: dict, last_waiting: dict | None, validated: set[tuple]) -> str:
    """The table's etl.vw_SLABreach status as it will be once its waiting etl.ETL_Log rows are written (summary shows
    those rows as written: a FAILED step with "SLA OK" beside it misled, found in review). The view's own rules:
    FAILING while the latest row failed and its batch has not validated since, else by the hours since the last
    validated load."""
    if last_waiting is None:
        return view["SLAStatus"]
    batch = (last_waiting["TableName"], last_waiting["BatchId"], last_waiting["Mode"])
    if last_waiting["Status"] == "FAILED" and batch not in validated:
        return "FAILING"
    if view["SLAStatus"] != "FAILING":  # not made by a logged failure the waiting rows come after
        return view["SLAStatus"]
    hours, limit = view["HoursSinceSuccess"], view["SLAHours"]
    return "NEVER_LOADED" if hours is None else "LATE" if limit is not None and hours > limit else "OK"


def _logged(row: dict | None, marked_at, marked_by: str | None) -> bool:
    """Whether a step's marker has its log row: the step's last row succeeded in the run that wrote the marker
    (a marker of a version that recorded no run: a row no older than it)."""
    if row is None or row["Status"] != "SUCCESS":
        return False
    return row["RunId"] == marked_by if marked_by else row["LogTs"] >= marked_at


def cmd_check_sla(args) -> int:
    """For the monitor's own cron line, apart from the nightly (which pages only when it runs and fails: a night
    that never started, or still runs in the morning, pages nobody). Prints the active tables whose
    `etl.vw_SLABreach` status is not OK and exits 2 when there is any; 1 when it cannot tell (the warehouse cannot
    be read, a night still holding the embedded one included, or `--critical` with no critical table)."""
    settings = load_settings()
    wh = open_warehouse(settings)
    with wh.session() as s:
        rows = s.query_dicts("SELECT TableName, IsCritical, SLAHours, HoursSinceSuccess, LastStatus, LastError, "
                             "LastRunTs, SLAStatus FROM etl.vw_SLABreach ORDER BY TableName")
    release_connections()  # read whole: its output may wait on a pipe, the night must not
    if not rows:  # a monitor that checks nothing must not stay quiet (found in review)
        print("cbm-etl check-sla: config.ETL_Tables has no active table, so nothing was checked: is this the "
              f"warehouse meant ({wh.describe()})? Activate the tables to load (IsActive = 1)", file=sys.stderr)
        return 1
    if args.critical:
        rows = [r for r in rows if r["IsCritical"]]
        if not rows:
            print("cbm-etl check-sla: no active table has IsCritical = 1, so nothing was checked: mark the tables "
                  "to page on in config.ETL_Tables, or drop --critical", file=sys.stderr)
            return 1
    late = [r for r in rows if r["SLAStatus"] != "OK"]
    for r in late:
        print(f"{r['TableName']}: {r['SLAStatus']}{'' if r['IsCritical'] else ' (not critical)'}: "
              f"{_sla_reason(r)}")
    kind = "critical table" if args.critical else "active table"
    print(f"check-sla: {len(late)} of {len(rows)} {kind}(s) not OK" +
          (" (`cbm-etl summary` shows each table's last batch; OPERATIONS.md says how to rerun)" if late else ""))
    return 2 if late else 0


def _sla_reason(r: dict) -> str:
    hours = r["HoursSinceSuccess"]
    since = "no load has validated yet" if hours is None else \
        f"last validated load started {hours:.1f} h ago (SLA {r['SLAHours'] if r['SLAHours'] is not None else '-'} h)"
    if r["SLAStatus"] != "FAILING":
        return since
    error = " ".join(str(r["LastError"] or "no message logged").split())
    # its start and its end, where the way out is: a page is read on a phone
    return f"its last step failed at {r['LastRunTs']:%Y-%m-%d %H:%M}: {kept_error(error, 400)}; {since}"


def cmd_prune_history(args) -> int:
    """Delete the pipeline's own records (etl.ETL_Log, etl.ETL_Validation, etl.ETL_Markers) older than
    `--keep-days`, keeping each table's latest batch whole: they grow by about 150 MB a year for 1,000 tables, and
    on SQL Server the monitoring views read the whole log."""
    if not runlog.MIN_KEEP_DAYS <= args.keep_days <= 36500:
        print(f"prune-history: --keep-days {args.keep_days}: keep at least {runlog.MIN_KEEP_DAYS} days (the "
              f"performance view reads 7, and a recent night's triage needs its rows), and at most 36500",
              file=sys.stderr)
        return 2
    settings = load_settings()
    before = datetime.now().replace(microsecond=0) - timedelta(days=args.keep_days)
    deleted = runlog.prune_history(open_warehouse(settings), before)
    release_connections()
    for table, n in deleted.items():
        print(f"{table}: {n:,} row(s) written before {before:%Y-%m-%d %H:%M} deleted")
    return 0


def cmd_write_kept_log(args) -> int:
    """Write the etl.ETL_Log rows kept in `<cache>/unlogged/` now (the next run's first step would): once the
    warehouse is back after a night it was not, so the log and the monitoring views tell that night before the
    next one runs. Exit 0 when none waits any more, 1 when some still do (the warehouse still not answering)."""
    settings = load_settings()
    waiting, refused = unlogged_rows(settings.cache_dir)
    if not waiting:
        print(f"write-kept-log: no etl.ETL_Log row waits in {unlogged_dir(settings.cache_dir)}")
        return 0
    left = runlog.replay_unlogged(open_warehouse(settings), settings.cache_dir, answered=True)
    release_connections()
    set_aside = unlogged_rows(settings.cache_dir)[1] - refused
    print(f"write-kept-log: {waiting} row(s) waited in {unlogged_dir(settings.cache_dir)}; "
          + (f"{left} still wait: the warehouse does not answer (the log above says what it said)" if left else
             "written" + (f", but {set_aside} of them refused by the warehouse and set aside as *.refused (the log "
                          f"above says why)" if set_aside else "")))
    return 1 if left else 0


def cmd_clean_cache(args) -> int:
    """Remove cached batches but the newest `--keep` (by the time their files were written, not by name), and
    never one holding a file a rerun would still use: a table of that batch not validated yet, whose extract is
    in this version's format, made under the table's configuration now and from the window asked for now, and
    not older than the table's newest load (any other is read again anyway). A table whose configuration makes no
    plan now keeps its file. Only folders named as batches are the cache's: anything else in CBM_CACHE_DIR (a
    volume's lost+found, say) is left alone, and a batch that cannot be removed is named and skipped, the others
    removed (one such folder stopped the command, every night, and the cache filled the disk: found in review)."""
    from .extract import current_meta
    from .tasks import check_batch_id

    settings = load_settings()

    def is_batch(p):
        try:
            check_batch_id(p.name)
            return p.is_dir()
        except ValueError:
            return False

    def written(p):  # by its files only: a file deleted (invalidate) makes its folder's time now (found in review)
        times = []
        for f in p.rglob("*"):
            try:
                st = f.stat()
            except FileNotFoundError:  # an extract running now renamed its temp file since the listing
                continue
            if stat.S_ISREG(st.st_mode):
                times.append(st.st_mtime)
        return max(times, default=0.0)

    batches = sorted((p for p in settings.cache_dir.glob("*") if is_batch(p)), key=written)
    old = batches[:-args.keep] if args.keep else batches
    if not old:
        return 0
    failed = []
    wh = open_warehouse(settings)
    with wh.session() as s:
        tables = {r[0] for r in s.query("SELECT TableName FROM config.ETL_Tables")}
        for p in old:
            done = validated_in(s, p.name)
            needed = []
            for f in sorted(p.glob("*/*.extract.parquet")):
                meta = current_meta(f)  # read once: a file invalidated meanwhile is None, not a crash
                if meta is None:
                    continue
                table, started = meta.get("table"), datetime.fromisoformat(meta["started_at"])
                if table in tables and (table, f.parent.name) not in done and \
                        config_store.newer_load_than(s, table, started) is None and \
                        _a_rerun_would_use(s, wh, table, meta, f.parent.name, settings.source_zone()):
                    needed.append(f"{table} ({f.parent.name})")
            if needed:
                print(f"kept {p}: not validated yet: {', '.join(needed)} (rerun the batch, or `cbm-etl "
                      f"invalidate <table> --batch {p.name}` to give it up)")
                continue
            try:
                shutil.rmtree(p)
            except OSError as exc:
                failed.append(p)
                print(f"could not remove {p}: {exc.strerror or exc} ({exc.filename}): remove it as its owner "
                      f"(a load run by hand as another user?)", file=sys.stderr)
                continue
            print(f"removed {p}")
    return 1 if failed else 0


def _a_rerun_would_use(s, wh, table: str, meta: dict, mode: str, zone) -> bool:
    """Whether a rerun would use this extract: ExtractParquet.complete reads again one made under another
    configuration, or from a narrower window than the one asked for now (TablePlan.window_widened); when the
    table's configuration makes no plan now, it might: yes."""
    try:
        plan = config_store.load_plan(s, table, wh)
        return meta.get("shape") == plan.extract_shape() and not plan.window_widened(meta["since"], mode, zone)
    except PLAN_ERRORS:
        return True


def _not_negative(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n}: the number of batches to keep is 0 or more")
    return n


def version_text() -> str:
    """`cbm-etl --version`: which code runs, and where its shipped files (sql/, config/, luigi.cfg) are read from
    (luigid's LUIGI_CONFIG_PATH can point at that luigi.cfg)."""
    from . import __version__

    try:
        cfg = str(shipped("luigi.cfg"))
    except FileNotFoundError as exc:
        cfg = str(exc)
    return f"cbm_luigi {__version__} ({Path(__file__).resolve().parent}); luigi.cfg: {cfg}"


class _PrintVersion(argparse.Action):
    """--version printed as it is (argparse's version action wraps it to the terminal, cutting the path)."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and "
                         "where the shipped files are read from, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="cbm-etl", description=__doc__)
    p.add_argument("--version", action=_PrintVersion)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("init-db", help="create schemas, tables and views (idempotent) and load config/tables.csv")
    a.add_argument("--tables-csv", help="tables to add to config.ETL_Tables (default: CBM_HOME's config/tables.csv, "
                                        "else the one shipped with cbm_luigi); tables already configured are left "
                                        "as they are")
    a.add_argument("--no-tables", action="store_true",
                   help="create or upgrade the warehouse objects and record the configuration of the tables "
                        "already loaded; add no table from tables.csv (the upgrade step)")
    a.set_defaults(fn=cmd_init_db)
    a = sub.add_parser("sync-columns", help="refresh config.ETL_Columns from the source catalog")
    a.add_argument("table", nargs="*")
    a.add_argument("--all", action="store_true")
    a.set_defaults(fn=cmd_sync_columns)
    a = sub.add_parser("discover", help="list PUB tables with proposed key and modification-date columns")
    a.add_argument("--count", action="store_true", help="also count rows (a full scan per table)")
    a.set_defaults(fn=cmd_discover)
    a = sub.add_parser("demo-source", help="generate the demo source database")
    a.add_argument("--path", help="where to write it (default: CBM_DEMO_SOURCE, var/demo_source.sqlite)")
    a.add_argument("--scale", type=float, default=1.0, help="row counts times this (default 1)")
    a.add_argument("--seed", type=int, default=42, help="random seed: the same seed gives the same rows")
    a.set_defaults(fn=cmd_demo_source)
    a = sub.add_parser("demo-change", help="update, insert and delete some demo rows (a working day)")
    a.add_argument("--seed", type=int, default=7)
    a.set_defaults(fn=cmd_demo_change)
    a = sub.add_parser("invalidate", help="forget a table's completed steps so the next run reloads it")
    a.add_argument("table")
    a.add_argument("--batch", help="batch id, e.g. 2026-11-27 or 2026-11-27-rerun (default: every batch)")
    a.add_argument("--from", dest="from_step", choices=["stage", "extract"], default="extract",
                   help="extract (default): also drop the cached parquet (re-read the source); stage: reuse it")
    a.set_defaults(fn=cmd_invalidate)
    a = sub.add_parser("summary", help="per-table summary of the last runs")
    a.set_defaults(fn=cmd_summary)
    a = sub.add_parser("check-sla", help="print the tables not OK in etl.vw_SLABreach; exit 2 if any (for paging)")
    a.add_argument("--critical", action="store_true", help="only the tables with IsCritical = 1")
    a.set_defaults(fn=cmd_check_sla)
    a = sub.add_parser("prune-history", help="delete run log, validation and marker rows older than N days "
                                              "(each table's latest batch is kept)")
    a.add_argument("--keep-days", type=int, required=True)
    a.set_defaults(fn=cmd_prune_history)
    a = sub.add_parser("write-kept-log", help="write the etl.ETL_Log rows kept in the cache while the warehouse "
                       "did not take them (the next run's first step would)")
    a.set_defaults(fn=cmd_write_kept_log)
    a = sub.add_parser("clean-cache", help="remove cached batches, keeping the newest N")
    a.add_argument("--keep", type=_not_negative, default=3)
    a.set_defaults(fn=cmd_clean_cache)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except Exception as exc:  # noqa: BLE001 — one readable line for the operator, masked
        text = mask_secrets(str(exc))
        with contextlib.suppress(SettingError):  # a settings error is the message itself
            text = config_store.uninitialised_hint(text, load_settings().describe_warehouse()) or text
        print(f"cbm-etl {args.cmd}: {type(exc).__name__}: {text}", file=sys.stderr)
        return 1
    finally:
        release_connections()


if __name__ == "__main__":
    sys.exit(main())
