"""The rows of a SQLite file read page by page, without SQLite and without its schema.

When page 1 of a database is damaged (its header, or the schema table that
tells SQLite where every table starts), SQLite can read nothing of it, though
every other page may be intact; and SQLite takes a WAL whose header is damaged
as empty. This reads the files as the documented format
(https://www.sqlite.org/fileformat2.html) instead: every page that is a table
b-tree leaf gives its cells (row id + record), overflow chains followed; the
WAL beside it gives the newer copies of the pages it holds. The caller
recognises its own rows by their shape, since the schema may be gone.

Only the WAL's committed frames of its current generation are read: a frame's
salts must be the WAL header's and its checksum must follow on from the frame
before it, and frames after the last commit frame are left out (a transaction
that never committed). Past a frame that fails its checksum the scan goes on
with the next one that checks, since an SD card's bad block spoils one frame,
not the commits after it. When the WAL header itself is damaged its salts
cannot be trusted: the generation is the one of the first frame whose checksum
checks.

Files are read one page at a time (os.pread), never mapped: memory stays
bounded, and a page the card cannot read (an OSError; on a mapped file it is
SIGBUS, which kills the process) is counted broken and the scan goes on.
Pages that do not parse are counted and skipped too: damage costs the rows on
them. Freed pages and older copies are read too, so rows deleted before the
damage can come back; a caller must tolerate that.
"""
from __future__ import annotations

import bisect
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

TABLE_LEAF = 13
HEADER = b"SQLite format 3\x00"
WAL_HEADER_SIZE, WAL_FRAME_HEADER_SIZE = 32, 24
WAL_MAGIC = {0x377F0682: "little", 0x377F0683: "big"}
"""The WAL header's magic number: the byte order of its checksums."""
DEFAULT_PAGE_SIZE = 4096


@dataclass
class Scan:
    page_size: int
    pages: int = 0
    """Pages looked at (the file's and the WAL's committed frames)."""
    leaves: int = 0
    """Of those, table leaves whose cells parsed."""
    broken: int = 0
    """Table leaves (by their first byte) that did not parse, pages that could not be read, and
    WAL frames of its generation that could not be read or do not check."""
    wal: str = ""
    """What was made of the WAL beside the file ("" when there is none)."""


class Row(NamedTuple):
    rowid: int
    values: list
    frame: int
    """0: a page of the file itself; n: the WAL's frame n, a newer copy than any page of the
    file and than the copies in the frames before it."""


def scan_rows(path: Path, scan: Scan | None = None, *, database: bool = True,
              wal: bool = True) -> Iterator[Row]:
    """Every cell on every table leaf page of the database at `path` (unless not `database`)
    and of the committed frames of its `-wal` (unless not `wal`: already read), the file's
    first, then the WAL's in order."""
    path = Path(path)
    with _File.opened(path) as data, _File.opened(path.with_name(path.name + "-wal")) as wal_file:
        page_size = _page_size(data.head(100), wal_file.head(WAL_HEADER_SIZE))
        scan = scan if scan is not None else Scan(page_size)
        scan.page_size = page_size
        frames = _Wal.read(wal_file, page_size) if wal else None
        if frames is not None:
            scan.wal, scan.broken = frames.note, scan.broken + frames.broken
        if database:
            for number in range(1, data.size // page_size + 1):
                yield from _leaf_rows(scan, lambda n=number: data.page(n, page_size), number, 0,
                                      lambda n: data.page(n, page_size))
        if frames is None:
            return
        wal = frames
        for frame in wal.frames:
            yield from _leaf_rows(scan, lambda f=frame: wal.page(f.number), frame.page, frame.number,
                                  lambda n, f=frame: wal.page_as_of(n, f.commit, data))


def _leaf_rows(scan: Scan, read: Callable[[], bytes], number: int, frame: int,
               overflow: Callable[[int], bytes]) -> Iterator[Row]:
    scan.pages += 1
    try:
        page = read()
    except OSError:
        scan.broken += 1
        return
    if len(page) < scan.page_size:
        scan.broken += 1
        return
    offset = 100 if number == 1 and page[:len(HEADER)] == HEADER else 0
    if page[offset] != TABLE_LEAF:
        return
    try:
        cells = list(_leaf_cells(page, offset, overflow))
    except (IndexError, ValueError, struct.error, OSError):
        scan.broken += 1
        return
    scan.leaves += 1
    for rowid, values in cells:
        yield Row(rowid, values, frame)


class _File:
    """A file read a piece at a time with os.pread (an empty one when there is no such file)."""

    def __init__(self, fd: int | None, size: int):
        self.fd, self.size = fd, size

    @classmethod
    @contextmanager
    def opened(cls, path: Path):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield cls(None, 0)
            return
        try:
            yield cls(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    def read(self, offset: int, size: int) -> bytes:
        """OSError where the card cannot read it."""
        return os.pread(self.fd, size, offset) if self.fd is not None else b""

    def head(self, size: int) -> bytes:
        try:
            return self.read(0, size)
        except OSError:
            return b""

    def page(self, number: int, page_size: int) -> bytes:
        if not 1 <= number <= self.size // page_size:
            raise ValueError(f"page {number} outside the file")
        return self.read((number - 1) * page_size, page_size)


def _page_size(head: bytes, wal_head: bytes) -> int:
    """The file header's page size, else the WAL header's, else SQLite's default."""
    if head[:len(HEADER)] == HEADER and len(head) >= 18:
        size = struct.unpack(">H", head[16:18])[0]
        size = 65536 if size == 1 else size
        if _is_page_size(size):
            return size
    if len(wal_head) >= WAL_HEADER_SIZE:
        size = struct.unpack(">I", wal_head[8:12])[0]
        if _is_page_size(size):
            return size
    return DEFAULT_PAGE_SIZE


def _is_page_size(size: int) -> bool:
    return 512 <= size <= 65536 and size & (size - 1) == 0


# --- the WAL ------------------------------------------------------------------------------

def wal_header_sound(head: bytes) -> bool:
    """The WAL header's magic and checksum (https://www.sqlite.org/fileformat2.html#walformat)."""
    order = WAL_MAGIC.get(int.from_bytes(head[:4], "big"))
    return (len(head) >= WAL_HEADER_SIZE and order is not None
            and wal_checksum(head[:24], order) == _stored_checksum(head[24:32]))


def wal_header_damaged(database: Path) -> bool:
    """Whether the WAL beside `database` has a whole header that does not check (SQLite takes
    such a WAL as empty); False with no WAL or a shorter one. Read without SQLite (which locks
    the database and the -shm, never the -wal); an OSError other than no WAL is raised."""
    try:
        with open(Path(database).with_name(Path(database).name + "-wal"), "rb") as f:
            head = f.read(WAL_HEADER_SIZE)
    except FileNotFoundError:
        return False
    return len(head) == WAL_HEADER_SIZE and not wal_header_sound(head)


def wal_checksum(data: bytes, order: str, seed: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """SQLite's WAL checksum of `data` (a multiple of 8 bytes), words in `order`, from `seed`."""
    words = struct.unpack(f"{'<' if order == 'little' else '>'}{len(data) // 4}I", data)
    s0, s1 = seed
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _stored_checksum(field_bytes: bytes) -> tuple[int, int]:
    return struct.unpack(">II", field_bytes)


class _Frame(NamedTuple):
    number: int
    page: int
    commit: int
    """The number of the commit frame that ends its transaction."""


@dataclass
class _Wal:
    file: _File
    page_size: int
    frames: list[_Frame] = field(default_factory=list)
    """The committed frames of the current generation whose checksums check, in order."""
    by_page: dict[int, list[int]] = field(default_factory=dict)
    """Page number: the numbers of the frames in `frames` holding it, ascending."""
    note: str = ""
    broken: int = 0
    """Frames of this generation that could not be read or do not check."""

    @classmethod
    def read(cls, file: _File, page_size: int) -> "_Wal":
        wal = cls(file, page_size)
        if file.size < WAL_HEADER_SIZE + WAL_FRAME_HEADER_SIZE + page_size:
            return wal
        head = file.head(WAL_HEADER_SIZE)
        magic = int.from_bytes(head[:4], "big") if len(head) == WAL_HEADER_SIZE else 0
        orders = [WAL_MAGIC[magic]] if magic in WAL_MAGIC else ["little", "big"]
        for order in orders:
            chain = _Chain(wal, head, order)
            if chain.committed or order == orders[-1]:
                break
        wal.frames = chain.committed
        for frame in wal.frames:
            wal.by_page.setdefault(frame.page, []).append(frame.number)
        wal.note, wal.broken = chain.describe(), chain.broken
        return wal

    def offset(self, number: int) -> int:
        return WAL_HEADER_SIZE + (number - 1) * (WAL_FRAME_HEADER_SIZE + self.page_size)

    def page(self, number: int) -> bytes:
        return self.file.read(self.offset(number) + WAL_FRAME_HEADER_SIZE, self.page_size)

    def page_as_of(self, page: int, commit: int, data: _File) -> bytes:
        """Page `page` as the transaction ending at frame `commit` left it: its newest frame
        up to there, else the file's copy."""
        frames = self.by_page.get(page, [])
        at = bisect.bisect_right(frames, commit)
        return self.page(frames[at - 1]) if at else data.page(page, self.page_size)


class _Chain:
    """One pass over the WAL's frames: which are committed, of this generation, and check."""

    def __init__(self, wal: _Wal, head: bytes, order: str):
        self.wal, self.order = wal, order
        self.header_sound = wal_header_sound(head)
        self.salts = head[16:24] if self.header_sound else None
        self.first = 0
        """When the header is damaged: the frame whose salts were taken (0: none checks)."""
        self.committed: list[_Frame] = []
        self.stale = self.broken = self.uncommitted = 0
        frames = (wal.file.size - WAL_HEADER_SIZE) // (WAL_FRAME_HEADER_SIZE + wal.page_size)
        first_seeds = ([_stored_checksum(head[24:32]), wal_checksum(head[:24], order)]
                       if len(head) == WAL_HEADER_SIZE else [])
        self._walk(frames, first_seeds)

    def _walk(self, frames: int, first_seeds: list[tuple[int, int]]) -> None:
        previous: tuple[int, int] | None = None
        pending: list[tuple[int, int]] = []
        for number in range(1, frames + 1):
            seeds = first_seeds if number == 1 else [previous] if previous else []
            header, checks = self._frame(number, seeds)
            previous = _stored_checksum(header[16:24]) if header else None
            if self.salts is None and checks:
                self.salts, self.first = header[8:16], number
            if self.salts is None or not header:
                self.broken += 1
            elif header[8:16] != self.salts:
                self.stale += 1
            elif not checks:
                self.broken += 1
            else:
                pending.append((number, struct.unpack(">I", header[:4])[0]))
                if header[4:8] != b"\0\0\0\0":
                    self.committed += [_Frame(n, page, number) for n, page in pending]
                    pending = []
        self.uncommitted = len(pending)

    def _frame(self, number: int, seeds: list[tuple[int, int]]) -> tuple[bytes, bool]:
        """The frame's header (b"" where it cannot be read) and whether its checksum checks."""
        at = self.wal.offset(number)
        try:
            header = self.wal.file.read(at, WAL_FRAME_HEADER_SIZE)
        except OSError:
            return b"", False
        if len(header) < WAL_FRAME_HEADER_SIZE:
            return b"", False
        try:
            page = self.wal.file.read(at + WAL_FRAME_HEADER_SIZE, self.wal.page_size)
        except OSError:
            return header, False
        if len(page) < self.wal.page_size or header[:4] == b"\0\0\0\0":
            return header, False
        stored = _stored_checksum(header[16:24])
        return header, any(wal_checksum(header[:8] + page, self.order, seed) == stored for seed in seeds)

    def describe(self) -> str:
        parts = [f"WAL: {len(self.committed)} committed frame(s) read"]
        if self.stale:
            parts.append(f"{self.stale} of an earlier generation left out")
        if self.uncommitted:
            parts.append(f"{self.uncommitted} after its last commit left out")
        if self.broken:
            parts.append(f"{self.broken} broken or unreadable")
        if not self.header_sound:
            parts.append(f"its header is damaged: the frames read are those of frame {self.first}'s salts"
                         if self.first else "its header is damaged and no frame checks")
        return ", ".join(parts)


# --- table leaf pages ---------------------------------------------------------------------

def _leaf_cells(page: bytes, offset: int, overflow: Callable[[int], bytes]) -> Iterator[tuple[int, list]]:
    cells = struct.unpack(">H", page[offset + 3:offset + 5])[0]
    pointers = offset + 8
    for i in range(cells):
        at = struct.unpack(">H", page[pointers + 2 * i:pointers + 2 * i + 2])[0]
        if not pointers + 2 * cells <= at < len(page):
            raise ValueError("cell pointer outside the page")
        size, at = _varint(page, at)
        rowid, at = _varint(page, at)
        yield rowid, _record(_payload(page, at, size, overflow))


def _payload(page: bytes, at: int, size: int, overflow: Callable[[int], bytes]) -> bytes:
    """The cell's whole payload: the part on the page, then its overflow pages (no reserved
    bytes at the end of a page in our files: the usable size is the page size)."""
    usable = len(page)
    most = usable - 35
    if size <= most:
        return page[at:at + size]
    least = (usable - 12) * 32 // 255 - 23
    local = least + (size - least) % (usable - 4)
    local = local if local <= most else least
    payload = bytearray(page[at:at + local])
    next_page = struct.unpack(">I", page[at + local:at + local + 4])[0]
    while len(payload) < size:
        if next_page < 1:
            raise ValueError("overflow chain ends early")
        more = overflow(next_page)
        next_page = struct.unpack(">I", more[:4])[0]
        payload += more[4:4 + min(usable - 4, size - len(payload))]
    return bytes(payload)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = 0
    for i in range(9):
        byte = data[at + i]
        if i == 8:
            return (value << 8) | byte, at + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    raise ValueError("varint")


_INT_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


def _record(payload: bytes) -> list:
    """The values of one record (https://www.sqlite.org/fileformat2.html#record_format)."""
    header_size, at = _varint(payload, 0)
    types = []
    while at < header_size:
        serial, at = _varint(payload, at)
        types.append(serial)
    if at != header_size:
        raise ValueError("record header")
    values, at = [], header_size
    for serial in types:
        if serial == 0:
            values.append(None)
        elif serial in _INT_SIZES:
            n = _INT_SIZES[serial]
            if at + n > len(payload):
                raise ValueError("record body")
            values.append(int.from_bytes(payload[at:at + n], "big", signed=True))
            at += n
        elif serial == 7:
            values.append(struct.unpack(">d", payload[at:at + 8])[0])
            at += 8
        elif serial in (8, 9):
            values.append(serial - 8)
        elif serial >= 12:
            n = (serial - 12) // 2
            if at + n > len(payload):
                raise ValueError("record body")
            raw = payload[at:at + n]
            values.append(bytes(raw) if serial % 2 == 0 else raw.decode("utf-8"))
            at += n
        else:
            raise ValueError("reserved serial type")
    return values
