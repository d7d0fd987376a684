"""Connections kept by a process and lent to its next user (the source's readers, SQL Server's sessions): one
place for reuse, health checks, closing on error and forked workers."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Hashable
from typing import Any, Iterator


class ConnectionPool:
    """This process's idle connections to one server, lent to the next user. The SQL Server warehouse: a night of
    1,000 tables opens about 15 sessions a table (the scheduler's complete() checks, each step, its log rows), and
    each logged in anew (TCP, TLS, login; unixODBC's own pooling is off unless odbcinst.ini turns it on, and on
    Linux it does not reset a reused connection). The source: one reader kept for the next table (connecting to
    Progress costs 10-20 ms locally, more remotely: 1,000 tables, 10-20 s).

    A connection goes back only from a session that ended without an exception (one that failed may be in any
    state: it is closed), at most `keep` of them. Before one is lent again `is_clean` asks it one trivial question:
    one the server dropped (restart, failover, idle timeout) or left inside a transaction is closed and the next
    tried. A forked Luigi worker (--workers > 1) never uses or closes its parent's connections: it shares their
    sockets, and a logout sent from the child would end the parent's session."""

    def __init__(self, connect: Callable[[], Any], is_clean: Callable[[Any], bool], keep: int = 4):
        self._connect, self._is_clean, self._keep = connect, is_clean, keep
        self._idle: list = []
        self._pid = os.getpid()

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        con = self._take()
        try:
            yield con
        except BaseException:
            _close(con)
            raise
        if len(self._idle) < self._keep and os.getpid() == self._pid:
            self._idle.append(con)
        else:
            _close(con)

    def close_idle(self) -> None:
        """Close the idle connections of this process (tests, and before a source file is replaced)."""
        if os.getpid() == self._pid:
            while self._idle:
                _close(self._idle.pop())

    def _take(self):
        if os.getpid() != self._pid:  # a forked child: the parent's connections stay open, and referenced
            _INHERITED.extend(self._idle)
            self._idle, self._pid = [], os.getpid()
        while self._idle:
            con = self._idle.pop()
            try:
                if self._is_clean(con):
                    return con
            except Exception:  # noqa: BLE001 — a dead connection: closed, and the next one tried
                pass
            _close(con)
        return self._connect()


_POOLS: dict[Hashable, ConnectionPool] = {}
_INHERITED: list = []  # a forked worker's share of its parent's connections: never closed, never collected


def pooled(key: Hashable, connect: Callable[[], Any], is_clean: Callable[[Any], bool], keep: int = 4
           ) -> ConnectionPool:
    """The process's pool for `key` (what the connection is made from), made on first use."""
    pool = _POOLS.get(key)
    if pool is None:
        pool = _POOLS[key] = ConnectionPool(connect, is_clean, keep)
    return pool


def close_idle(kind: str) -> None:
    """Close the idle connections of every pool whose key starts with `kind` ('source', 'mssql')."""
    for key, pool in list(_POOLS.items()):
        if key[0] == kind:
            pool.close_idle()


def _close(con) -> None:
    with contextlib.suppress(Exception):
        con.close()
