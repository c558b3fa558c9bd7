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
recognised by their shape. A WAL whose header is damaged, which SQLite takes as
empty, is read page by page beside what SQLite reads of the file.

An error that is no damage (the file locked by another process, SQLite busy) is
SalvageRetry, and counts no row lost: read the file again later.

`Store.requeue` then puts them back into the live outbox with their own UUIDs,
so the platform de-duplicates any it did get.
"""
from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from agent.records import KINDS
from agent.sqlite_pages import Row, Scan, scan_rows, wal_header_damaged
from agent.store import IMAGE_TYPES, NUMBER, NULL, RECORD_TYPES, misfit
from agent.sqlite_threads import is_damage, sqlite_error_is

CHUNK = 512
REFUSED_SHOWN = 20

RECORD_COLUMNS, IMAGE_COLUMNS = tuple(RECORD_TYPES), tuple(IMAGE_TYPES)

PAGES_UNREADABLE = ("SQLITE_IOERR_READ", "SQLITE_IOERR_SHORT_READ")
"""SQLite errors that, like damage, cost the rows SQLite was reading: the card cannot read them."""
NOT_NOW = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_NOMEM", "SQLITE_INTERRUPT", "SQLITE_IOERR",
           "SQLITE_CANTOPEN", "SQLITE_PROTOCOL")
"""SQLite errors that say nothing of the file's rows (with their extended codes)."""


class SalvageError(Exception):
    """Nothing can be read from the file at all (its first page, its schema)."""


class SalvageRetry(Exception):
    """SQLite cannot read the file just now, for no reason in the file itself (it is locked or
    busy, memory ran out): nothing is counted lost, read it again later. Not a SalvageError,
    which says for good that the file holds nothing that can be read."""


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
    wal_scanned: str = ""
    """How a WAL SQLite takes as empty (its header damaged) was read page by page ("" if none)."""


def read_unsent(path: Path) -> Salvage:
    """The unsent records and images that can still be read from the store file at `path`:
    through SQLite, or page by page where SQLite can read nothing of it. A WAL beside it whose
    header is damaged (SQLite takes it as empty) is read page by page, and its copies win.

    SalvageError: nothing can be read; SalvageRetry: not just now; OSError: the file cannot
    be opened."""
    path = Path(path)
    if not path.is_file():
        raise SalvageError(f"{path}: no such file")
    wal = _wal_copies(path) if _wal_header_damaged(path) else None   # before SQLite opens it
    try:
        return _through_sqlite(path, wal)
    except SalvageError as exc:
        unreadable = str(exc)
    except SalvageRetry as exc:
        raise SalvageRetry(f"SQLite cannot read {path} just now ({exc}): nothing is lost, "
                           "read it again later") from None
    return _scanned(path, unreadable, wal)   # with no connection open on the file


def _through_sqlite(path: Path, wal: "_WalCopies | None") -> Salvage:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        _raise_if_not_now(exc)
        raise SalvageError(f"SQLite cannot open {path}: {exc}") from None
    try:
        last = _last_rowid(conn, "records", "seq")
        return _read(conn, path, last, wal or _WalCopies())
    finally:
        conn.close()


def _read(conn: sqlite3.Connection, path: Path, last: int, wal: "_WalCopies") -> Salvage:
    """What SQLite reads of the file, where the WAL read page by page (`wal`) has no newer copy."""
    salvage = Salvage(path, wal_scanned=wal.describe())
    bad: list[int] = []
    columns = ", ".join(RECORD_COLUMNS)
    unsent: list[tuple[int, tuple]] = []
    for row in _readable(conn, f"SELECT seq, sent_at IS NOT NULL, {columns} FROM records "
                               "WHERE seq BETWEEN ? AND ? ORDER BY seq", last, bad):
        if row[2] in wal.copies.records:
            continue
        if row[1]:
            salvage.already_sent += 1
        else:
            unsent.append((row[0], tuple(row[2:])))
    salvage.already_sent += wal.copies.sent()
    unsent += wal.copies.unsent_records()
    salvage.records = [values for _, values in sorted(unsent, key=lambda r: r[0])]
    salvage.unreadable = _ranges(sorted(set(bad) - wal.copies.seqs()))
    try:
        salvage.images, unreadable_images = _read_images(conn, wal.copies.images)
    except SalvageError as exc:
        salvage.images, unreadable_images = [], 0
        salvage.images_problem = str(exc)
    salvage.images += wal.copies.unsent_images()
    if unreadable_images:
        salvage.images_problem = f"{unreadable_images} image row(s) unreadable"
    return salvage


def _read_images(conn: sqlite3.Connection, newer: dict) -> tuple[list[tuple], int]:
    """The unsent images SQLite reads that have no newer copy in `newer`; how many it cannot."""
    last = _last_rowid(conn, "images", "rowid")
    bad: list[int] = []
    images = [tuple(row) for row in _readable(
        conn, f"SELECT {', '.join(IMAGE_COLUMNS)} FROM images WHERE rowid BETWEEN ? AND ? "
              "AND sent_at IS NULL", last, bad) if row[0] not in newer]
    return images, len(bad)


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
SHA256 = re.compile(r"[0-9a-f]{64}\Z")


class _Copies:
    """The newest copy of each record (by UUID) and image (by sha256) among those seen.

    A copy in a WAL frame is newer than the file's and than those in the frames before it, and
    decides: a record confirmed, then put back in the outbox (the platform's resend), is
    unsent. The file's own pages keep no order (a freed page can hold an old copy): among
    them, a record seen confirmed in any copy counts as confirmed."""

    def __init__(self):
        self.records: dict[str, tuple[int, int, tuple | None]] = {}
        """uuid: (frame, seq, RECORD_COLUMNS; None once confirmed)."""
        self.images: dict[str, tuple[int, int, tuple | None]] = {}
        """sha256: (frame, row id, IMAGE_COLUMNS; None once confirmed)."""

    def add(self, row: Row) -> None:
        v = row.values
        if _is_record_row(v):
            unsent = tuple(v[1:9]) if v[9] is None else None
            _keep_newest(self.records, v[1], (row.frame, row.rowid, unsent))
        elif _is_image_row(v):
            unsent = tuple(v[:5]) if v[5] is None else None
            _keep_newest(self.images, v[0], (row.frame, row.rowid, unsent))

    def __bool__(self) -> bool:
        return bool(self.records or self.images)

    def sent(self) -> int:
        return sum(1 for _, _, values in self.records.values() if values is None)

    def seqs(self) -> set[int]:
        return {seq for _, seq, _ in self.records.values()}

    def unsent_records(self) -> list[tuple[int, tuple]]:
        """(seq, RECORD_COLUMNS) in sequence order."""
        return sorted(((seq, values) for _, seq, values in self.records.values() if values is not None),
                      key=lambda r: r[0])

    def unsent_images(self) -> list[tuple]:
        return [values for _, _, values in sorted(self.images.values(), key=lambda c: c[1])
                if values is not None]


def _keep_newest(newest: dict, key: str, copy: tuple[int, int, tuple | None]) -> None:
    old = newest.get(key)
    if old is None or copy[0] > old[0] or (copy[0] == old[0] and copy[2] is None):
        newest[key] = copy


@dataclass
class _WalCopies:
    copies: _Copies = field(default_factory=_Copies)
    scan: Scan | None = None

    def describe(self) -> str:
        if self.scan is None:
            return ""
        return (f"its WAL's header is damaged (SQLite takes such a WAL as empty): the WAL read page by "
                f"page, {self.scan.leaves} page(s) of rows, {self.scan.broken} broken, its copies newer "
                f"than the file's; {self.scan.wal}")


def _wal_header_damaged(path: Path) -> bool:
    try:
        return wal_header_damaged(path)
    except OSError:   # a WAL that cannot be read is read page by page, as far as it can be
        return True


def _wal_copies(path: Path) -> _WalCopies:
    wal = _WalCopies(scan=Scan(0))
    for row in scan_rows(path, wal.scan, database=False):
        wal.copies.add(row)
    return wal


def _scanned(path: Path, why: str, wal: "_WalCopies | None" = None) -> Salvage:
    """The unsent records and images found by reading the file's pages and its WAL's (`wal`:
    the WAL already read page by page, its header being damaged)."""
    scan = Scan(0)
    copies = wal.copies if wal else _Copies()
    for row in scan_rows(path, scan, wal=wal is None):
        copies.add(row)
    if wal:
        scan.pages, scan.leaves = scan.pages + wal.scan.pages, scan.leaves + wal.scan.leaves
        scan.broken, scan.wal = scan.broken + wal.scan.broken, wal.scan.wal
    if not copies:
        raise SalvageError(f"nothing can be read from {path}: {why}; and none of its {scan.pages} "
                           f"page(s) holds a row of the store")
    salvage = Salvage(path, already_sent=copies.sent())
    salvage.records = [values for _, values in copies.unsent_records()]
    salvage.images = copies.unsent_images()
    salvage.scanned = (f"SQLite could read nothing ({why}): read page by page, {scan.leaves} page(s) "
                       f"of rows, {scan.broken} broken" + (f"; {scan.wal}" if scan.wal else ""))
    return salvage


def _is_record_row(v: list) -> bool:
    """seq (NULL: the row id), uuid, kind, priority, created, time, schema, body, sealed, sent_at."""
    return (len(v) == 10 and v[0] is None and not misfit(v[1:9], RECORD_TYPES) and bool(UUID.match(v[1]))
            and v[2] in KINDS and isinstance(v[9], (*NUMBER, NULL)))


def _is_image_row(v: list) -> bool:
    """sha256, role, size, created, record_uuid, sent_at."""
    return (len(v) == 6 and not misfit(v[:5], IMAGE_TYPES) and bool(SHA256.match(v[0]))
            and isinstance(v[5], (*NUMBER, NULL)))


def describe_read(salvage: Salvage) -> list[str]:
    by_kind: dict[str, int] = {}
    for row in salvage.records:
        by_kind[row[1]] = by_kind.get(row[1], 0) + 1
    lines = [f"{salvage.path.name}: {len(salvage.records)} unsent record(s)" + _by_kind(by_kind)
             + f", {len(salvage.images)} unsent image(s); {salvage.already_sent} already confirmed "
               "by the platform (left)"]
    lines += [line for line in (salvage.scanned, salvage.wal_scanned) if line]
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
             + (f"; {report['too_old']} older than their storage.retention left out (confirmed and purged "
                f"before, read back from freed pages)" if report.get("too_old") else "")
             + f"; {report['images_queued']} image(s)"
             + (f"; {report['images_missing']} image file(s) gone" if report["images_missing"] else "")
             + (f"; {report['images_refused']} image row(s) unusable" if report.get("images_refused") else "")]
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
            _raise_if_not_now(exc)
            problem = exc
            continue
        if row and row[0] is not None:
            return int(row[0])
    if problem is not None:
        raise SalvageError(f"SQLite cannot read the {table} table: {problem}")
    return 0


def _readable(conn: sqlite3.Connection, sql: str, last: int, bad: list[int]):
    """Every row SQLite can read, CHUNK row ids at a time; the row ids it cannot read, being
    damaged, are appended to `bad` (a range that fails is halved down to single rows)."""
    for start in range(1, last + 1, CHUNK):
        todo = [(start, min(last, start + CHUNK - 1))]
        while todo:
            first, end = todo.pop()
            try:
                rows = conn.execute(sql, (first, end)).fetchall()
            except sqlite3.DatabaseError as exc:
                _raise_if_not_now(exc)
                if not (is_damage(exc) or sqlite_error_is(exc, PAGES_UNREADABLE)):
                    raise SalvageError(f"SQLite cannot read the store's tables: {exc}") from None
                if first == end:
                    bad.append(first)
                else:
                    middle = (first + end) // 2
                    todo += [(middle + 1, end), (first, middle)]
                continue
            yield from rows


def _raise_if_not_now(exc: sqlite3.Error) -> None:
    if sqlite_error_is(exc, NOT_NOW) and not sqlite_error_is(exc, PAGES_UNREADABLE):
        raise SalvageRetry(str(exc)) from None


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    ranges: list[list[int]] = []
    for n in sorted(numbers):
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    return [(a, b) for a, b in ranges]
