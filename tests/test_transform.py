"""Transform through DuckDB on real parquet files: the hashdiff's canonical form, EXTENT arrays, the stream."""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cbm_luigi.plan import PlanColumn, TablePlan
from cbm_luigi.transform import TransformError, shape_batches, shape_file
from cbm_luigi.types import ColumnType

S, I, D = ColumnType("string", width=40), ColumnType("int32"), ColumnType("decimal", 12, 2)


def run(tmp_path, cols: list[PlanColumn], data: dict, keys=("id",), **plan_kw) -> list[dict]:
    plan = TablePlan("t", "t", list(keys), cols, **plan_kw)
    src = tmp_path / f"x{len(list(tmp_path.iterdir()))}.parquet"
    pq.write_table(pa.table(data, schema=plan.extract_schema()), src)
    out = tmp_path / (src.stem + ".stage.parquet")
    assert shape_file(plan, src, out) == len(next(iter(data.values())))
    return sorted(pq.read_table(out).to_pylist(), key=lambda r: r["id"])


def hashes(rows):
    return [r["_etl_hashdiff"] for r in rows]


def test_hashdiff_canonical_form(tmp_path):
    base = [PlanColumn("id", "id", I, False), PlanColumn("nom", "nom", S), PlanColumn("prix", "prix", D)]
    data = {"id": [1, 2, 3], "nom": ["a", "", None], "prix": [Decimal("1.50"), None, Decimal("2.00")]}
    h = hashes(run(tmp_path, base, data))
    assert len(set(h)) == 3 and all(len(x) == 32 for x in h)
    # independent of the column order in the source
    assert hashes(run(tmp_path, base[::-1], data)) == h
    # a new column that is NULL everywhere changes no hash (schema growth makes no spurious versions)
    grown = base + [PlanColumn("neuf", "neuf", S)]
    assert hashes(run(tmp_path, grown, {**data, "neuf": [None, None, None]})) == h
    # ... but a value in it does
    assert hashes(run(tmp_path, grown, {**data, "neuf": ["x", None, None]}))[0] != h[0]
    # NULL is not the empty string
    assert hashes(run(tmp_path, base, {**data, "nom": ["a", None, None]}))[1] != h[1]
    # decimals: a scale change is not a change (trailing zeros dropped), nor a precision change, also from a
    # DECIMAL(s, s) (which DuckDB prints without its leading zero)
    wider = [base[0], base[1], PlanColumn("prix", "prix", ColumnType("decimal", 18, 4))]
    assert hashes(run(tmp_path, wider, data)) == h
    rate = {"id": [1, 2, 3], "nom": ["a", "", None], "prix": [Decimal("0.5"), Decimal("-0.05"), Decimal("0")]}
    hr = [hashes(run(tmp_path, [base[0], base[1], PlanColumn("prix", "prix", ColumnType("decimal", p, s))], rate))
          for p, s in ((3, 3), (4, 2), (38, 10), (38, 38))]
    assert hr[0] == hr[1] == hr[2] == hr[3] and len(set(hr[0])) == 3
    # values cannot slide between columns
    two = [base[0], PlanColumn("a", "a", S), PlanColumn("b", "b", S)]
    h1 = hashes(run(tmp_path, two, {"id": [1], "a": ["x=1:y"], "b": [None]}))
    h2 = hashes(run(tmp_path, two, {"id": [1], "a": ["x"], "b": ["y"]}))
    assert h1 != h2


def test_extent_arrays_split_with_escapes_and_unknown(tmp_path):
    cols = [PlanColumn("id", "id", I, False), PlanColumn("zal", "zal", S, extent=4),
            PlanColumn("zta", "zta", S, extent=3, array_mode="single")]
    rows = run(tmp_path, cols, {"id": [1, 2, 3],
                                "zal": ["a~;b;?;~?;c~~", ";;;", None],
                                "zta": ["x;?;y~;z", None, "a"]})
    assert [(r["zal_1"], r["zal_2"], r["zal_3"], r["zal_4"]) for r in rows] == [
        ("a;b", None, "?", "c~"), ("", "", "", ""), (None, None, None, None)]
    assert [r["zta"] for r in rows] == ["x;?;y~;z", None, "a"]  # kept whole: Progress's own, lossless form
    assert "zal" not in rows[0]
    # kept whole, two different arrays stay two different values (and hashes)
    two = run(tmp_path, cols, {"id": [1, 2], "zal": [None, None], "zta": ["a~;b;c", "a;b~;c"]})
    assert two[0]["zta"] != two[1]["zta"] and two[0]["_etl_hashdiff"] != two[1]["_etl_hashdiff"]


def test_a_column_named_like_an_internal_alias_does_not_replace_the_array(tmp_path):
    """Progress `øl-0` becomes `_l_0` (ø has no decomposition): the transform's list aliases used that name, and
    the array was split from the other column's text ('pq' -> 'p', 'q')."""
    cols = [PlanColumn("id", "id", I, False), PlanColumn("zal", "zal", S, extent=2),
            PlanColumn("øl-0", "_l_0", S), PlanColumn("zta", "zta", S, extent=2, array_mode="single"),
            PlanColumn("l1", "_l_1", S)]
    rows = run(tmp_path, cols, {"id": [1], "zal": ["alpha;beta"], "_l_0": ["pq"], "zta": ["a;b"], "_l_1": ["xyz"]})
    assert [(r["zal_1"], r["zal_2"], r["_l_0"], r["zta"], r["_l_1"]) for r in rows] == [
        ("alpha", "beta", "pq", "a;b", "xyz")]


def test_too_many_elements_in_a_kept_whole_array_is_an_error_too(tmp_path):
    cols = [PlanColumn("id", "id", I, False), PlanColumn("zta", "zta", S, extent=2, array_mode="single")]
    with pytest.raises(Exception, match=r"table t, column zta, key id=2: 3 array elements but the catalog says "
                                        r"EXTENT 2"):
        run(tmp_path, cols, {"id": [1, 2], "zta": ["a;b", "a;b;c"]})


def test_too_many_array_elements_is_an_error_naming_the_key(tmp_path):
    cols = [PlanColumn("id", "id", I, False), PlanColumn("zal", "zal", S, extent=2)]
    with pytest.raises(Exception, match=r"table t, column zal, key id=2: 3 array elements"):
        run(tmp_path, cols, {"id": [1, 2], "zal": ["a;b", "a;b;c"]})


def test_technical_columns(tmp_path):
    cols = [PlanColumn("id", "id", I, False), PlanColumn("dat_mod", "dat_mod", ColumnType("date")),
            PlanColumn("heure", "heure", I)]
    rows = run(tmp_path, cols, {"id": [1, 2], "dat_mod": [date(2026, 11, 26), None], "heure": [3661, None]},
               date_col="dat_mod", time_of_day_col="heure")
    assert rows[0]["_etl_source_ts"] == datetime(2026, 11, 26, 1, 1, 1)
    assert rows[1]["_etl_source_ts"] is None
    # the run's own values are added when staging, not stored with the batch
    assert list(rows[0])[-2:] == ["_etl_hashdiff", "_etl_source_ts"] and "_etl_run_id" not in rows[0]


def test_stream_is_shaped_batch_by_batch_and_a_source_error_comes_through_as_raised(tmp_path):
    plan = TablePlan("t", "t", ["id"], [PlanColumn("id", "id", I, False), PlanColumn("nom", "nom", S)])
    schema = plan.extract_schema()

    def batches(fail_after: int | None):
        for i in range(5):
            if fail_after is not None and i == fail_after:
                raise ValueError("table t, column nom, key id=30: the driver's own words")
            yield pa.record_batch([pa.array(range(i * 10, i * 10 + 10), pa.int32()),
                                   pa.array([f"n{j}" for j in range(10)])], schema=schema)

    out = tmp_path / "t.parquet"
    assert shape_batches(plan, schema, batches(None), out, metadata={"k": "it's"}) == 50
    assert pq.read_table(out).num_rows == 50 and pq.read_schema(out).metadata[b"k"] == b"it's"
    out.unlink()
    with pytest.raises(ValueError, match=r"^table t, column nom, key id=30: the driver's own words$"):
        shape_batches(plan, schema, batches(3), out)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_hashdiff_is_the_md5_of_the_documented_canonical_text(tmp_path):
    """Pinned against a Python rendering of the form in transform.py: a faster SQL expression must give the same
    text (decimals: trailing fractional zeros and a bare dot dropped, sign kept)."""
    import hashlib

    cols = [PlanColumn("id", "id", I, False), PlanColumn("nom", "nom", S), PlanColumn("prix", "prix", D),
            PlanColumn("jour", "jour", ColumnType("date")), PlanColumn("taux", "taux", ColumnType("decimal", 4, 4)),
            PlanColumn("qte", "qte", ColumnType("decimal", 20, 5))]
    prices = [Decimal("100.00"), Decimal("-0.01"), Decimal("12.50"), Decimal("0.00"), None]
    rates = [Decimal("0.5"), Decimal("-0.0125"), Decimal("0"), None, Decimal("0.0001")]
    qtys = [Decimal("-1000"), Decimal("0.00010"), Decimal("123456789012345.1"), Decimal("-0.1"), None]
    rows = run(tmp_path, cols, {"id": [1, 2, 3, 4, 5], "nom": ["é", "", None, "a;b", "x"], "prix": prices,
                                "jour": [date(1, 1, 1), None, date(2026, 11, 27), None, date(9999, 12, 31)],
                                "taux": rates, "qte": qtys})
    texts = ["id=1\x1fjour=0001-01-01\x1fnom=1:é\x1fprix=100\x1fqte=-1000\x1ftaux=0.5",
             "id=2\x1fnom=0:\x1fprix=-0.01\x1fqte=0.0001\x1ftaux=-0.0125",
             "id=3\x1fjour=2026-11-27\x1fprix=12.5\x1fqte=123456789012345.1\x1ftaux=0",
             "id=4\x1fnom=3:a;b\x1fprix=0\x1fqte=-0.1", "id=5\x1fjour=9999-12-31\x1fnom=1:x\x1ftaux=0.0001"]
    assert hashes(rows) == [hashlib.md5(t.encode()).hexdigest() for t in texts]


def test_a_duckdb_failure_names_the_table_and_ends_the_source_stream(tmp_path):
    """DuckDB stops reading at its own error: the source's generator (the driver's cursor) is closed at once."""
    plan = TablePlan("t", "t", ["id"], [PlanColumn("id", "id", I, False), PlanColumn("zal", "zal", S, extent=2)])
    schema = plan.extract_schema()
    state = {"sent": 0, "closed": False}

    def batches():
        try:
            for i in range(10_000):
                state["sent"] += 1
                yield pa.record_batch([pa.array([i], pa.int32()), pa.array(["a;b;c"])], schema=schema)
        finally:
            state["closed"] = True

    with pytest.raises(TransformError, match=r"^table t: shaping the batch in DuckDB failed: .*3 array elements"):
        shape_batches(plan, schema, batches(), tmp_path / "t.parquet")
    assert state["closed"] and state["sent"] < 10_000  # stopped early, and released
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> str:
    """The pid of a process that has ended (a killed extract's)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()


def _next_write(tmp_path, out) -> int:
    """The next extract of the batch file `out`: shape_file over a two-row file, as an extract writes it."""
    plan = TablePlan("t", "t", ["id"], [PlanColumn("id", "id", I, False)])
    src = tmp_path / "src.parquet"
    pq.write_table(pa.table({"id": [1, 2]}, schema=plan.extract_schema()), src)
    return shape_file(plan, src, out)


def test_a_half_written_file_of_a_killed_process_is_dropped_by_the_next_write(tmp_path):
    """A kill during the extract leaves `<file>.<pid>-<id>.tmp`: no later run would touch it (the pid is in the
    name), so the next write of the same file removes those whose process is gone, and only those."""
    import subprocess
    import sys

    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        out = tmp_path / "t.stage.parquet"
        from cbm_luigi.leftovers import HOST as _HOST

        orphan = tmp_path / f"t.stage.parquet.{dead}-abcd1234-{_HOST}.tmp"
        running = tmp_path / f"t.stage.parquet.{live.pid}-abcd1234-{_HOST}.tmp"
        other = tmp_path / f"u.stage.parquet.{dead}-abcd1234-{_HOST}.tmp"
        elsewhere = tmp_path / f"t.stage.parquet.{dead}-abcd1234-0badf00d.tmp"  # another host's pid: unknown here
        for p in (orphan, running, other, elsewhere):
            p.write_bytes(b"PAR1 half")
        assert _next_write(tmp_path, out) == 2
        assert not orphan.exists() and running.exists() and other.exists() and elsewhere.exists()
    finally:
        live.kill()
        live.wait()


def _free_pid() -> int:
    """A pid no process of this namespace has, below the kernel's limit."""
    import os
    import random

    top = int(open("/proc/sys/kernel/pid_max").read())
    while True:
        pid = random.randint(top // 2, top - 1)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass


def test_a_container_of_the_same_hostname_keeps_its_running_extract_and_spill_files(tmp_path):
    """Two containers given the same hostname over one cache volume number their processes each from 1: an
    extract running in one, seen from the other, had a pid that no process there had, and the other's next
    extract of the same file removed its half-written batch file and its DuckDB spill files as a dead process's
    leftovers (the host tag was the hostname alone). The other container is a real pid namespace here (unshare,
    as root), whose next pid is set to one that no process of this namespace has."""
    import os
    import shutil
    import subprocess
    import sys
    import time

    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to make a second pid namespace")
    out = tmp_path / "t.extract.parquet"
    pid = _free_pid()
    code = ("import os, sys, time\n"
            "from pathlib import Path\n"
            "from cbm_luigi.leftovers import HOST\n"
            "from cbm_luigi.transform import spill_dir\n"
            f"out = Path({str(out)!r})\n"
            "half = out.with_name(f'{out.name}.{os.getpid()}-abcd1234-{HOST}.tmp')\n"
            "half.write_bytes(b'PAR1 half')\n"
            "spill = spill_dir(out) / f'duckdb_temp_{os.getpid()}_1.block'\n"
            "spill.parent.mkdir(parents=True, exist_ok=True)\n"
            "spill.write_bytes(b'spilled')\n"
            "print(os.getpid(), half, spill, flush=True)\n"
            "time.sleep(60)\n")
    other = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c",
         f'echo {pid - 1} > /proc/sys/kernel/ns_last_pid && "$0" -c "$1"', sys.executable, code],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        line = other.stdout.readline().split()
        if not line:
            other.kill()
            pytest.skip(f"unshare refused here: {other.stderr.read()[:300]}")
        their_pid, half, spill = int(line[0]), line[1], line[2]
        assert their_pid == pid  # a pid of theirs that no process of this namespace has
        assert _next_write(tmp_path, out) == 2  # this container's extract of the same file
        time.sleep(0.1)
        assert os.path.exists(half) and os.path.exists(spill), os.listdir(tmp_path)
    finally:
        other.kill()
        other.wait()


def test_hashdiff_text_of_logicals_binary_timestamps_and_null_rows(tmp_path):
    """The other kinds, pinned the same way: a NULL of any kind contributes nothing (no `name=`, no separator),
    a row NULL everywhere but its key hashes as the key alone, binary as upper-case hex with its length."""
    import hashlib

    cols = [PlanColumn("id", "id", I, False), PlanColumn("actif", "actif", ColumnType("bool")),
            PlanColumn("blob", "blob", ColumnType("binary", width=8)),
            PlanColumn("maj", "maj", ColumnType("timestamp")), PlanColumn("n64", "n64", ColumnType("int64"))]
    rows = run(tmp_path, cols, {"id": [1, 2, 3], "actif": [True, False, None], "blob": [b"\x00\xff", b"", None],
                                "maj": [datetime(2026, 11, 29, 3, 4, 5, 6000), None, None],
                                "n64": [-(2 ** 63), None, None]})
    texts = ["actif=1\x1fblob=4:00FF\x1fid=1\x1fmaj=2026-11-29 03:04:05.006000\x1fn64=-9223372036854775808",
             "actif=0\x1fblob=0:\x1fid=2", "id=3"]
    assert hashes(rows) == [hashlib.md5(t.encode()).hexdigest() for t in texts]


def test_hashdiff_text_starting_with_the_separator_in_a_value(tmp_path):
    """Only the leading separator of the text is cut: a value that itself starts with U+001F, in the first column
    of the form, keeps it (the text always starts `<U+001F><name>=`, never with a value)."""
    import hashlib

    cols = [PlanColumn("id", "id", I, False), PlanColumn("a", "a", S), PlanColumn("b", "b", S)]
    rows = run(tmp_path, cols, {"id": [1, 2, 3], "a": ["\x1f\x1fz", None, None], "b": [None, "\x1f", None]})
    texts = ["a=3:\x1f\x1fz\x1fid=1", "b=1:\x1f\x1fid=2", "id=3"]
    assert hashes(rows) == [hashlib.md5(t.encode()).hexdigest() for t in texts]


def test_the_host_tag_is_the_hostname_alone_outside_containers(tmp_path):
    """On a machine's own pid namespace the tag stays md5(hostname), as before the pid namespace joined it: with a
    new tag there, the half-written batch file and the spill files a killed extract of the previous version
    left were no one's, and the next extract of the batch left them to clean-cache (found in review). Checked
    through the real shape_file on this machine when it runs outside a container; the tag's rule either way."""
    import hashlib
    import os
    import socket

    from cbm_luigi.leftovers import HOST, INIT_PID_NAMESPACE, host_tag

    old = hashlib.md5(b"erp-etl").hexdigest()[:8]
    assert host_tag("erp-etl", INIT_PID_NAMESPACE) == host_tag("erp-etl", 0) == old
    assert host_tag("erp-etl", 4026532178) != old
    if os.stat("/proc/self/ns/pid").st_ino != INIT_PID_NAMESPACE:
        return  # in a container: a tag of its own is the point
    tag = hashlib.md5(socket.gethostname().encode()).hexdigest()[:8]
    assert HOST == tag
    dead = _dead_pid()
    half = tmp_path / f"t.extract.parquet.{dead}-abcd1234-{tag}.tmp"
    half.write_bytes(b"PAR1 half")
    spill = tmp_path / f"spill-{tag}" / f"duckdb_temp_{dead}_1.block"
    spill.parent.mkdir()
    spill.write_bytes(b"spilled")
    assert _next_write(tmp_path, tmp_path / "t.extract.parquet") == 2
    assert not half.exists() and not spill.exists()


def test_the_batch_file_is_opened_once_while_still_empty_so_its_close_need_not_write_it_out(tmp_path, monkeypatch):
    """release_close_write_out relies on DuckDB having made its COPY target, empty, when it asks for the first
    batch (its close then leaves the write-out to the kernel: bench/README.md). A DuckDB that makes the file later
    would silently bring back the 40-50 ms wait at the close of a wide table's file: this says so. The file is
    still written whole, and a file that cannot be opened ahead is no error."""
    from cbm_luigi import transform

    plan = TablePlan("t", "t", ["id"], [PlanColumn("id", "id", I, False), PlanColumn("nom", "nom", S)])
    schema = plan.extract_schema()
    seen, real = [], transform.release_close_write_out

    def watched(path):
        seen.append((path.name, path.exists() and path.stat().st_size))
        real(path)

    def batches():
        for i in range(3):
            assert len(seen) == 1  # before the first batch is read, once
            yield pa.record_batch([pa.array(range(i * 10, i * 10 + 10), pa.int32()),
                                   pa.array([f"n{j}" for j in range(10)])], schema=schema)

    monkeypatch.setattr(transform, "release_close_write_out", watched)
    out = tmp_path / "t.parquet"
    assert shape_batches(plan, schema, batches(), out) == 30
    assert len(seen) == 1 and seen[0][0].startswith("t.parquet.") and seen[0][0].endswith(".tmp")
    assert seen[0][1] == 0, "DuckDB had not made its COPY target when it asked for the first batch"
    assert sorted(pq.read_table(out).column("id").to_pylist()) == list(range(30))
    # best effort: a path that cannot be opened changes nothing
    real(tmp_path / "not-there.tmp")


def test_the_engine_opened_early_is_the_one_the_shaping_uses_and_its_failure_is_the_shapings_to_raise(
        tmp_path, monkeypatch):
    """open_engine_early opens the extract's DuckDB on a thread while the source starts its statement; the
    shaping then uses that engine (one DuckDB opened, not two). An engine that cannot be opened is not an error
    of the thread: the shaping opens it again and raises."""
    import duckdb

    from cbm_luigi import transform

    def early(out, limit):
        transform.open_engine_early(out, limit, 1).join()

    plan = TablePlan("t", "t", ["id"], [PlanColumn("id", "id", I, False)])
    schema = plan.extract_schema()
    batch = pa.record_batch([pa.array(range(5), pa.int32())], schema=schema)
    monkeypatch.setattr(transform, "_ENGINE", {})
    real, opened = duckdb.connect, []
    monkeypatch.setattr(transform.duckdb, "connect", lambda *a, **k: opened.append(a) or real(*a, **k))
    out = tmp_path / "t.parquet"
    early(out, "100MB")
    assert len(opened) == 1
    assert shape_batches(plan, schema, [batch], out, memory_limit="100MB", threads=1) == 5
    assert len(opened) == 1 and pq.read_table(out).num_rows == 5
    early(tmp_path / "u.parquet", "a lot")
    with pytest.raises(duckdb.Error, match="(?i)memory must have a number"):
        shape_batches(plan, schema, [batch], tmp_path / "u.parquet", memory_limit="a lot", threads=1)
