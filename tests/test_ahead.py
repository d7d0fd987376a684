"""ahead.py: imports started on a thread before a wait that holds no GIL. Real modules written to a temporary
directory, imported for real; a real fork. No mocks."""
from __future__ import annotations

import importlib
import os
import signal
import sys
import textwrap
import threading
import time

import pytest

from cbm_luigi import ahead


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Write `name.py` with `body` on a fresh sys.path entry; the modules are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(name: str, body: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
        importlib.invalidate_caches()
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)
        ahead._STARTED.discard(name)


def _wait_ahead() -> None:
    for thread in list(ahead._THREADS):
        thread.join(10)


def test_a_module_is_imported_on_a_thread_of_its_own_once(modules):
    name = modules("cbm_ahead_plain", """
        import threading
        IMPORTED_BY = threading.current_thread().name
        COUNT = globals().get("COUNT", 0) + 1
    """)
    ahead.import_ahead(name)
    ahead.import_ahead(name)  # asked twice (each extract asks): one import
    _wait_ahead()
    mod = importlib.import_module(name)
    assert mod.IMPORTED_BY == "cbm-import-ahead"
    assert mod.COUNT == 1
    assert [t for t in ahead._THREADS if t.is_alive()] == []


def test_the_caller_goes_on_while_a_slow_import_runs_and_its_own_import_waits_for_it(modules):
    name = modules("cbm_ahead_slow", """
        import time
        time.sleep(0.5)
        VALUE = 42
    """)
    started = time.monotonic()
    ahead.import_ahead(name)
    assert time.monotonic() - started < 0.3  # not waited for here
    mod = importlib.import_module(name)  # where it is used: waits for the thread's import, gets the whole module
    assert mod.VALUE == 42
    assert time.monotonic() - started >= 0.5


def test_a_module_that_fails_ahead_raises_where_it_is_used(modules):
    """Nothing is lost: the failure ahead is only logged (at debug), and the import where the module is used
    raises the module's own error."""
    name = modules("cbm_ahead_broken", """
        raise RuntimeError("the driver library is missing")
    """)
    ahead.import_ahead(name)
    _wait_ahead()
    assert name not in sys.modules
    with pytest.raises(RuntimeError, match="the driver library is missing"):
        importlib.import_module(name)


def test_a_missing_module_ahead_leaves_the_user_s_fallback_as_it_was(modules):
    """open_reader's `auto` reader falls back to pyodbc when arrow-odbc is not installed: the ImportError is
    the user's to catch, as before."""
    ahead.import_ahead("cbm_ahead_not_installed")
    _wait_ahead()
    with pytest.raises(ImportError):
        importlib.import_module("cbm_ahead_not_installed")
    ahead._STARTED.discard("cbm_ahead_not_installed")


def test_a_fork_waits_for_an_import_still_running(modules):
    """Luigi forks a worker per task with --workers above 1. A module half imported by a thread of the parent
    stays locked in the child, which has no such thread: the child's own import of it hung. The fork now waits
    for the import, and the child has the module."""
    name = modules("cbm_ahead_forked", """
        import time
        time.sleep(0.4)
        VALUE = "whole"
    """)
    ahead.import_ahead(name)
    assert any(t.is_alive() for t in ahead._THREADS)  # still importing when the fork is asked for
    pid = os.fork()
    if pid == 0:  # the child: import within 5 s, or the alarm ends it
        signal.alarm(5)
        try:
            mod = importlib.import_module(name)
            os._exit(0 if mod.VALUE == "whole" else 2)
        except BaseException:
            os._exit(3)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, os.waitstatus_to_exitcode(status)
    assert name in sys.modules  # the parent's import ended before the fork
    assert threading.active_count() >= 1
