"""Imports started ahead, on a thread, while the process waits on work that holds no GIL.

A module's import is Python work under the GIL; opening DuckDB or starting the source's statement (arrow-odbc's
calls into the driver) release it. A module needed a little later is imported on a thread just before such a
wait, so the wait and the import overlap instead of following each other: the ODBC reader's module (arrow_odbc,
~20 ms, most of it pycparser compiling its lexer for pyarrow.cffi) while the warehouse opens, conform.py with
pyarrow.compute (40-50 ms with numpy) while the statement starts and DuckDB plans the shaping. Where the module is
used, it is imported as always: that waits for an import still running, and raises (or falls back) as it always
did when the import failed here.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
import threading

log = logging.getLogger(__name__)
_STARTED: set[str] = set()
_THREADS: list[threading.Thread] = []


def import_ahead(*names: str) -> None:
    """Import `names` on a thread of their own, each once a process; a module already imported is skipped."""
    todo = [n for n in names if n not in _STARTED and n not in sys.modules]
    if not todo:
        return
    _STARTED.update(todo)

    def import_all():
        for name in todo:
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 — imported again where it is used, which raises it
                log.debug("importing %s ahead failed (%s): it is imported where it is used", name, exc)
    thread = threading.Thread(target=import_all, name="cbm-import-ahead")  # not a daemon: exit waits for it
    _THREADS[:] = [t for t in _THREADS if t.is_alive()] + [thread]
    thread.start()


def _finished_before_fork() -> None:
    """A fork (Luigi's --workers above 1) waits for the imports: a module a thread of the parent was importing
    would stay locked in the child, which has no such thread, and the child's first import of it would hang."""
    for thread in list(_THREADS):
        thread.join()


os.register_at_fork(before=_finished_before_fork)
