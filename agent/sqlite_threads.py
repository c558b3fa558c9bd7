"""One SQLite connection per thread for one database file, all closed together.

The store and the lists are used from several threads (the alarm path, the sync,
decisions); a sqlite3 connection is not to be shared across threads in the middle
of a transaction, so each thread gets its own, in WAL mode with full fsync.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from agent.sqlite_pages import wal_header_damaged

# What SQLite says of a file that is not (or no longer) a database.
DAMAGE_ERRORS = ("SQLITE_NOTADB", "SQLITE_CORRUPT")


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether SQLite found the file is not (or no longer) a database.

    Found by SQLite itself, never by reading the file beside it: closing any other
    descriptor of a database file drops the POSIX locks this process's
    connections hold on it, and a live database can then be damaged."""
    return sqlite_error_is(exc, DAMAGE_ERRORS)


def sqlite_error_is(exc: sqlite3.Error, names: tuple[str, ...]) -> bool:
    """Whether SQLite's error is one of `names`, or an extended code of one (a corrupt index
    is SQLITE_CORRUPT_INDEX, a short read SQLITE_IOERR_SHORT_READ)."""
    name = getattr(exc, "sqlite_errorname", "")
    return any(name == n or name.startswith(n + "_") for n in names)


def damage_before_opening(path: Path) -> str:
    """What is wrong with a database and its WAL, found without a read-write connection ("" if
    nothing). Call it before this process opens the database.

    A read-write connection to a database whose first page is damaged deletes its WAL when
    it closes, and one to a WAL whose header is damaged treats the WAL as empty and deletes
    it too: either way the commits not yet checkpointed, often all the recent ones, would be
    gone before the file could be set aside. A read-only connection leaves both as they are;
    the WAL's header (a SQLite-less read: SQLite locks the database and the -shm, never the
    -wal) is checked against its own checksum."""
    if wal_header_damaged(path):
        return f"its write-ahead log {path.name}-wal is damaged (header)"
    if not path.exists():
        return ""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        try:
            conn.execute("PRAGMA user_version").fetchone()
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return str(exc) if is_damage(exc) else ""
    return ""


def set_aside(path: Path) -> Path:
    """Rename a damaged database and its -wal/-shm files to <name>.damaged-<UTC time>; the new name."""
    target = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    for suffix in ("-wal", "-shm", ""):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.rename(target.with_name(target.name + suffix))
    return target


def damaged_files(folder) -> list[Path]:
    """The databases set aside in `folder` (the store's, the lists'), without their -wal/-shm files."""
    return sorted(p for p in Path(folder).glob("*.db.damaged-*") if not p.name.endswith(("-wal", "-shm")))


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
        not a database (only the first statement finds that out: is_damage says so)."""
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
