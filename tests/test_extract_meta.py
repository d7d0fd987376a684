"""read_extract_meta reads a batch file's footer once a process while the file is the same one (extract.py): each
load step asks for it, and a wide file's footer costs milliseconds. These tests write real parquet files and check
that a file replaced, rewritten or touched is read again, and that callers cannot change what the next one gets."""
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cbm_luigi import extract
from cbm_luigi.extract import META_KEY, current_meta, read_extract_meta


def _write(path, meta: dict | None, rows: int):
    table = pa.table({"id": list(range(rows))})
    if meta is not None:
        table = table.replace_schema_metadata({META_KEY: json.dumps(meta)})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)  # as shape_batches does: a new file, a new inode


def _reads(monkeypatch) -> list:
    """The footer reads made from now on."""
    seen, real = [], pq.ParquetFile

    def counting(path, *a, **kw):
        seen.append(path)
        return real(path, *a, **kw)
    monkeypatch.setattr(pq, "ParquetFile", counting)  # the module read_extract_meta imports where it reads
    return seen


def test_a_file_is_read_once_while_it_is_the_same(tmp_path, monkeypatch):
    path = tmp_path / "t.extract.parquet"
    _write(path, {"format": extract.FORMAT, "table": "t", "started_at": "2026-11-30T01:00:00"}, 3)
    reads = _reads(monkeypatch)
    first = read_extract_meta(path)
    assert first == {"format": extract.FORMAT, "table": "t", "started_at": "2026-11-30T01:00:00", "rows": 3}
    first["started_at"] = "changed by a caller"
    first["rows"] = 99
    assert read_extract_meta(path)["started_at"] == "2026-11-30T01:00:00"  # each call its own dict
    assert current_meta(path)["rows"] == 3
    assert len(reads) == 1


def test_a_file_replaced_rewritten_or_touched_is_read_again(tmp_path, monkeypatch):
    path = tmp_path / "t.extract.parquet"
    _write(path, {"format": extract.FORMAT, "table": "t", "started_at": "a"}, 3)
    reads = _reads(monkeypatch)
    assert read_extract_meta(path)["started_at"] == "a"
    # a new extract renamed in: the same size and the same second, another file
    _write(path, {"format": extract.FORMAT, "table": "t", "started_at": "b"}, 3)
    assert read_extract_meta(path)["started_at"] == "b"
    # written over in place (same inode), then its times set back to the old ones: ctime still moves
    st = path.stat()
    table = pa.table({"id": [7, 8, 9]}).replace_schema_metadata(
        {META_KEY: json.dumps({"format": extract.FORMAT, "table": "t", "started_at": "c"})})
    pq.write_table(table, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_ino == st.st_ino
    assert read_extract_meta(path)["started_at"] == "c"
    # a file of no version of ours, and one gone
    _write(path, None, 2)
    assert read_extract_meta(path) == {"format": 0, "rows": 2} and current_meta(path) is None
    path.unlink()
    assert current_meta(path) is None
    assert len(reads) == 4


def test_the_kept_reads_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(extract, "_META_READ", {})
    for i in range(extract.META_READ_KEPT + 10):
        p = tmp_path / f"t{i}.extract.parquet"
        _write(p, {"format": extract.FORMAT, "table": f"t{i}"}, 1)
        assert read_extract_meta(p)["table"] == f"t{i}"
    assert len(extract._META_READ) == extract.META_READ_KEPT


def test_the_extract_keeps_what_it_wrote_so_the_steps_after_it_read_no_footer(env, monkeypatch):
    """A real extract through Luigi: the metadata the steps ask for next comes from what the extract wrote (no
    footer read in the process), and is what the footer holds."""
    from cbm_luigi.tasks import ExtractParquet

    from .conftest import build, succeeded

    reads = _reads(monkeypatch)
    task = ExtractParquet(table="produit", mode="full", batch_tag="kept", run_id="run1")
    assert succeeded(build(task))
    path = Path(task.output().path)
    kept = read_extract_meta(path)
    assert reads == []
    monkeypatch.setattr(extract, "_META_READ", {})
    assert read_extract_meta(path) == kept and len(reads) == 1
    assert kept["rows"] == pq.ParquetFile(path).metadata.num_rows > 0 and kept["run_id"] == "run1"


def test_a_file_another_process_renamed_over_the_extracts_is_not_taken_for_it(tmp_path, monkeypatch):
    """Two runs extracting the same batch: the second rename replaces the first's file. The first must not keep
    its own metadata for the file now in place (shape_batches gives the stat only while the file is its own)."""
    from cbm_luigi.plan import PlanColumn, TablePlan
    from cbm_luigi.transform import shape_batches
    from cbm_luigi.types import ColumnType

    plan = TablePlan("t", "t", ["id"], [PlanColumn("id", "id", ColumnType("int32"), False)])
    schema = plan.extract_schema()
    out = tmp_path / "t.parquet"
    given = []

    def batches():
        yield pa.record_batch([pa.array([1, 2], pa.int32())], schema=schema)

    shape_batches(plan, schema, batches(), out, renamed=given.append)
    assert len(given) == 1 and given[0].st_ino == out.stat().st_ino
    given.clear()
    real_replace, other = Path.replace, []

    def replaced_after_ours(self, target):  # the other run's rename comes right after ours
        done = real_replace(self, target)
        if not other:
            other.append(True)
            _write(out, {"format": extract.FORMAT, "table": "t", "run_id": "other"}, 5)
        return done

    monkeypatch.setattr(Path, "replace", replaced_after_ours)
    shape_batches(plan, schema, batches(), out, renamed=given.append)
    monkeypatch.undo()
    assert other and given == [] and read_extract_meta(out)["run_id"] == "other"
