"""One SQLite connection per thread for one database file, all closed together.

The store and the lists are used from several threads (the alarm path, the sync,
decisions); a sqlite3 connection is not to be shared across threads in the middle
of a transaction, so each thread gets its own, in WAL mode with full fsync.
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class ThreadConnections:
    def __init__(self, path: str | Path, *, foreign_keys: bool = False):
        self.path = Path(path)
        self.foreign_keys = foreign_keys
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use.

        sqlite3.Error if it can't be: a missing folder, no permission, a file that is
        not a database (only the first statement finds that out)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                if self.foreign_keys:
                    conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error:
                conn.close()
                raise
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:
                    pass
            self._all.clear()
        self._local = threading.local()
