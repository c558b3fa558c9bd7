"""What can still be read from a damaged store, to go back into the outbox.

When the agent finds gate.db damaged it sets it aside (gate.db.damaged-<UTC
time>) and starts a new store; the records the platform had not confirmed are
still in the file set aside. `read_unsent` reads them back row range by row
range: a range SQLite cannot read is halved until the rows it can read are
found, so a damaged page costs only the rows on it. The file is opened
read-only and never written (no checkpoint, no recovery of its WAL into it).

`Store.requeue` then puts them back into the live outbox with their own UUIDs,
so the platform de-duplicates any it did get.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 512

RECORD_COLUMNS = ("uuid", "kind", "priority", "created", "time", "schema", "body", "sealed")
IMAGE_COLUMNS = ("sha256", "role", "size", "created", "record_uuid")


class SalvageError(Exception):
    """Nothing can be read from the file at all (its first page, its schema)."""


@dataclass
class Salvage:
    path: Path
    records: list[tuple] = field(default_factory=list)
    """Unsent records, as RECORD_COLUMNS tuples, in their original order."""
    images: list[tuple] = field(default_factory=list)
    """Unsent images, as IMAGE_COLUMNS tuples."""
    already_sent: int = 0
    """Records the platform had confirmed: left where they are."""
    unreadable: list[tuple[int, int]] = field(default_factory=list)
    """Ranges of record sequence numbers SQLite could not read (first, last)."""
    images_problem: str = ""
    """Why some or all of the images table could not be read ("" when it could)."""


def read_unsent(path: Path) -> Salvage:
    """The unsent records and images SQLite can still read from the store file at `path`."""
    path = Path(path)
    if not path.is_file():
        raise SalvageError(f"{path}: no such file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise SalvageError(f"SQLite cannot open {path}: {exc}") from None
    try:
        salvage = Salvage(path)
        try:
            last = _last_rowid(conn, "records", "seq")
        except SalvageError as exc:
            raise SalvageError(f"nothing can be read from {path}: {exc}") from None
        bad: list[int] = []
        columns = ", ".join(RECORD_COLUMNS)
        for row in _readable(conn, f"SELECT sent_at IS NOT NULL, {columns} FROM records "
                                   "WHERE seq BETWEEN ? AND ? ORDER BY seq", last, bad):
            if row[0]:
                salvage.already_sent += 1
            else:
                salvage.records.append(tuple(row[1:]))
        salvage.unreadable = _ranges(bad)
        try:
            last_image = _last_rowid(conn, "images", "rowid")
        except SalvageError as exc:
            salvage.images_problem = str(exc)
            return salvage
        bad_images: list[int] = []
        salvage.images = [tuple(row) for row in _readable(
            conn, f"SELECT {', '.join(IMAGE_COLUMNS)} FROM images WHERE rowid BETWEEN ? AND ? "
                  "AND sent_at IS NULL", last_image, bad_images)]
        if bad_images:
            salvage.images_problem = f"{len(bad_images)} image row(s) unreadable"
        return salvage
    finally:
        conn.close()


def _last_rowid(conn: sqlite3.Connection, table: str, key: str) -> int:
    """The table's highest row id: AUTOINCREMENT's own count first (one small table), then the
    table's b-tree."""
    problem = None
    for sql in (f"SELECT seq FROM sqlite_sequence WHERE name = '{table}'", f"SELECT max({key}) FROM {table}"):
        try:
            row = conn.execute(sql).fetchone()
        except sqlite3.DatabaseError as exc:
            problem = exc
            continue
        if row and row[0] is not None:
            return int(row[0])
    if problem is not None:
        raise SalvageError(f"SQLite cannot read the {table} table: {problem}")
    return 0


def _readable(conn: sqlite3.Connection, sql: str, last: int, bad: list[int]):
    """Every row SQLite can read, CHUNK row ids at a time; the row ids it cannot read are
    appended to `bad` (a range that fails is halved down to single rows)."""
    for start in range(1, last + 1, CHUNK):
        todo = [(start, min(last, start + CHUNK - 1))]
        while todo:
            first, end = todo.pop()
            try:
                rows = conn.execute(sql, (first, end)).fetchall()
            except sqlite3.DatabaseError:
                if first == end:
                    bad.append(first)
                else:
                    middle = (first + end) // 2
                    todo += [(middle + 1, end), (first, middle)]
                continue
            yield from rows


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    ranges: list[list[int]] = []
    for n in sorted(numbers):
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    return [(a, b) for a, b in ranges]
