"""The benchmark harness keeps its contract (the JSON the performance issue asks for) on a tiny real run: real
`luigi` processes on a synthetic table, a real raw read. Nothing here is timed: only the shape and the
arithmetic of what the harness reports are checked."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO


def test_bench_reports_the_median_of_repeated_runs_in_the_documented_json(tmp_path):
    out = tmp_path / "results"
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--only", "medium", "--readers", "embedded",
                        "--repeat", "2", "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == str(out / "results.json")  # the JSON path is the last line
    report = json.loads((out / "results.json").read_text())
    assert report["repeat"] == 2 and report["machine"]["quick"] is True
    [r] = report["scenarios"]
    assert (r["name"], r["reader"], r["rows"], r["columns"], r["tables"]) == ("medium_full", "embedded", 500, 400, 1)
    assert set(r["steps"]) == {"extract", "stage", "merge", "validate"} and r["steps"]["extract"] > 0
    assert r["seconds"] > sum(r["steps"].values()) and r["peak_rss_mb"] > 0
    assert r["ratio_to_raw_read"] == pytest.approx(r["seconds"] / r["raw_read_seconds"], rel=0.01)
    # two runs, each in its own fresh warehouse; the record is the median one (the lower of two), whole
    assert r["repeats"] == 2 and len(r["runs"]) == 2
    assert r["seconds"] == min(run["seconds"] for run in r["runs"])
    assert "medium_full | embedded | 500 | 400 | 1 |" in (out / "results.md").read_text()


def test_bench_refuses_a_repeat_below_one(tmp_path):
    p = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--repeat", "0", "--out", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--repeat must be 1 or more" in p.stderr
    assert not (tmp_path / "results.json").exists()
