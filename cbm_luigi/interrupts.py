"""A Ctrl-C that lands inside a DuckDB statement, on any of our DuckDB connections (the warehouse's sessions,
the extract's shaping engine).

DuckDB's Python client takes the SIGINT itself: it interrupts the statement and raises `Query interrupted` (a
RuntimeError or duckdb.InterruptException), and no KeyboardInterrupt is left. Luigi then counted the operator's
Ctrl-C as the table's failure and went on with every other table (found in review). Raised as the
KeyboardInterrupt it is, it stops the run as a Ctrl-C anywhere else does.
"""
from __future__ import annotations

import contextlib

import duckdb


def interrupted(exc: BaseException) -> bool:
    """Whether `exc` is DuckDB's word for a Ctrl-C."""
    return isinstance(exc, duckdb.InterruptException) or (
        isinstance(exc, RuntimeError) and str(exc).strip() == "Query interrupted")


@contextlib.contextmanager
def ctrl_c_stops():
    """DuckDB's `Query interrupted` raised again as the KeyboardInterrupt it stands for (module docstring)."""
    try:
        yield
    except (duckdb.InterruptException, RuntimeError) as exc:
        if interrupted(exc):
            raise KeyboardInterrupt from exc
        raise
