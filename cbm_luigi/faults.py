"""Fault injection for the kill-and-rerun tests: a named checkpoint where a run can be made to stop or fail.

With CBM_PAUSE_AT=<name> and CBM_PAUSE_FILE=<path> set, the process writes <path> when it reaches checkpoint
<name> and then sleeps, so a test can kill it with SIGKILL at a known point (for example inside the merge
transaction). With CBM_FAIL_AT=<name>, checkpoint <name> raises InjectedFailure, as a warehouse that stopped
answering there would. Unset (always, in production), `checkpoint` does nothing.
"""
from __future__ import annotations

import os
import time
from pathlib import Path


class InjectedFailure(ConnectionError):
    """Raised at the checkpoint CBM_FAIL_AT names (a test setting)."""


def checkpoint(name: str) -> None:
    if os.environ.get("CBM_FAIL_AT") == name:
        raise InjectedFailure(f"failure injected at checkpoint {name!r} (CBM_FAIL_AT, a test setting)")
    if os.environ.get("CBM_PAUSE_AT") != name:
        return
    Path(os.environ["CBM_PAUSE_FILE"]).write_text(str(os.getpid()))
    while True:  # wait for the test's SIGKILL
        time.sleep(0.1)
