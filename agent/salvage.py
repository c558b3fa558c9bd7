"""What can still be read from a damaged store, to go back into the outbox.

When the agent finds gate.db damaged it sets it aside (gate.db.damaged-<UTC
time>) and starts a new store; the records the platform had not confirmed are
still in the file set aside. `read_unsent` reads them back row range by row
range: a range SQLite cannot read is halved until the rows it can read are
found, so a damaged page costs only the rows on it. The file is opened
read-only and never written (no checkpoint, no recovery of its WAL into it).

When SQLite can read nothing at all (page 1 damaged: the header, or the schema
that says where each table starts: the damage the agent meets when it opens a
store, and so the usual reason a file was set aside), the file and its WAL are
read page by page instead (agent/sqlite_pages.py), and the store's rows are
recognised by their shape.

`Store.requeue` then puts them back into the live outbox with their own UUIDs,
so the platform de-duplicates any it did get.
"""
from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from agent.records import KINDS
from agent.sqlite_pages import Scan, scan_rows

CHUNK = 512
REFUSED_SHOWN = 20

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
    scanned: str = ""
    """How the pages were read when SQLite could read nothing ("" when SQLite read it)."""


def read_unsent(path: Path) -> Salvage:
    """The unsent records and images that can still be read from the store file at `path`:
    through SQLite, or page by page where SQLite can read nothing of it."""
    path = Path(path)
    if not path.is_file():
        raise SalvageError(f"{path}: no such file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise SalvageError(f"SQLite cannot open {path}: {exc}") from None
    try:
        last = _last_rowid(conn, "records", "seq")
        return _read(conn, path, last)
    except SalvageError as exc:
        unreadable = str(exc)
    finally:
        conn.close()
    return _scanned(path, unreadable)   # with no connection open on the file


def _read(conn: sqlite3.Connection, path: Path, last: int) -> Salvage:
    salvage = Salvage(path)
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


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
SHA256 = re.compile(r"[0-9a-f]{64}\Z")
NUMBER = (int, float)


def _scanned(path: Path, why: str) -> Salvage:
    """The unsent records and images found by reading the file's pages: a record seen sent in
    any copy of its page (the file's or a newer one in the WAL) counts as sent."""
    scan = Scan(0)
    unsent: dict[str, tuple[int, list]] = {}
    sent: set[str] = set()
    images: dict[str, list] = {}
    images_sent: set[str] = set()
    for rowid, values in scan_rows(path, scan):
        if _is_record_row(values):
            uuid = values[1]
            if values[9] is not None:
                sent.add(uuid)
                unsent.pop(uuid, None)
            elif uuid not in sent:
                unsent[uuid] = (rowid, values)
        elif _is_image_row(values):
            if values[5] is not None:
                images_sent.add(values[0])
                images.pop(values[0], None)
            elif values[0] not in images_sent:
                images[values[0]] = values
    if not unsent and not sent and not images and not images_sent:
        raise SalvageError(f"nothing can be read from {path}: {why}; and none of its {scan.pages} "
                           f"page(s) holds a row of the store")
    salvage = Salvage(path, already_sent=len(sent))
    salvage.records = [tuple(values[1:9]) for _, values in sorted(unsent.values(), key=lambda r: r[0])]
    salvage.images = [tuple(values[:5]) for values in images.values()]
    salvage.scanned = (f"SQLite could read nothing ({why}): read page by page, {scan.leaves} page(s) "
                       f"of rows, {scan.broken} broken")
    return salvage


def _is_record_row(v: list) -> bool:
    """seq (NULL: the row id), uuid, kind, priority, created, time, schema, body, sealed, sent_at."""
    return (len(v) == 10 and v[0] is None and isinstance(v[1], str) and bool(UUID.match(v[1]))
            and v[2] in KINDS and isinstance(v[3], int) and isinstance(v[4], NUMBER)
            and isinstance(v[5], str) and isinstance(v[6], int) and isinstance(v[7], str)
            and (v[8] is None or isinstance(v[8], bytes)) and (v[9] is None or isinstance(v[9], NUMBER)))


def _is_image_row(v: list) -> bool:
    """sha256, role, size, created, record_uuid, sent_at."""
    return (len(v) == 6 and isinstance(v[0], str) and bool(SHA256.match(v[0])) and isinstance(v[1], str)
            and isinstance(v[2], int) and isinstance(v[3], NUMBER) and (v[4] is None or isinstance(v[4], str))
            and (v[5] is None or isinstance(v[5], NUMBER)))


def describe_read(salvage: Salvage) -> list[str]:
    by_kind: dict[str, int] = {}
    for row in salvage.records:
        by_kind[row[1]] = by_kind.get(row[1], 0) + 1
    lines = [f"{salvage.path.name}: {len(salvage.records)} unsent record(s)" + _by_kind(by_kind)
             + f", {len(salvage.images)} unsent image(s); {salvage.already_sent} already confirmed "
               "by the platform (left)"]
    if salvage.scanned:
        lines.append(salvage.scanned)
    if salvage.unreadable:
        spans = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in salvage.unreadable[:10])
        more = f" and {len(salvage.unreadable) - 10} more" if len(salvage.unreadable) > 10 else ""
        lost = sum(b - a + 1 for a, b in salvage.unreadable)
        lines.append(f"DAMAGED: {lost} row(s) unreadable, sequence numbers {spans}{more} (some may "
                     "have been purged before the damage)")
    if salvage.images_problem:
        lines.append(f"images: {salvage.images_problem}")
    return lines


def describe_requeue(report: dict) -> list[str]:
    queued = report["queued"]
    lines = [f"queued {sum(queued.values())} record(s)" + _by_kind(queued)
             + (f"; {report['already_here']} already in the outbox" if report["already_here"] else "")
             + f"; {report['images_queued']} image(s)"
             + (f"; {report['images_missing']} image file(s) gone" if report["images_missing"] else "")]
    refused = report["refused"]
    lines += [f"not queued: {uuid}: {reason}" for uuid, reason in refused[:REFUSED_SHOWN]]
    if len(refused) > REFUSED_SHOWN:
        lines.append(f"not queued: {len(refused) - REFUSED_SHOWN} more")
    return lines


def _by_kind(counts: dict[str, int]) -> str:
    return f" ({', '.join(f'{k} {n}' for k, n in sorted(counts.items()))})" if counts else ""


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
