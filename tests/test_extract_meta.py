"""read_extract_meta reads a batch file's footer once a process while the file is the same one (extract.py): each
load step asks for it, and a wide file's footer costs milliseconds. These tests write real parquet files and check
that a file replaced, rewritten or touched is read again, and that callers cannot change what the next one gets."""
import json
import os

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
    monkeypatch.setattr(extract.pq, "ParquetFile", counting)
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
