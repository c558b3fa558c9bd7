"""The rows of a SQLite file read page by page, without SQLite and without its schema.

When page 1 of a database is damaged (its header, or the schema table that
tells SQLite where every table starts), SQLite can read nothing of it, though
every other page may be intact. This reads the file as the documented format
(https://www.sqlite.org/fileformat2.html) instead: every page that is a table
b-tree leaf gives its cells (row id + record), overflow chains followed; the
WAL beside it gives the pages it holds newer copies of. The caller recognises
its own rows by their shape, since the schema may be gone.

Pages that do not parse are counted and skipped: damage costs the rows on them.
Freed pages are read too, so rows deleted before the damage can come back; a
caller must tolerate that.
"""
from __future__ import annotations

import itertools
import mmap
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

TABLE_LEAF = 13
HEADER = b"SQLite format 3\x00"
WAL_HEADER_SIZE, WAL_FRAME_HEADER_SIZE = 32, 24
DEFAULT_PAGE_SIZE = 4096


@dataclass
class Scan:
    page_size: int
    pages: int = 0
    """Pages looked at (the file's and the WAL's)."""
    leaves: int = 0
    """Of those, table leaves whose cells parsed."""
    broken: int = 0
    """Table leaves (by their first byte) that did not parse."""


def scan_rows(path: Path, scan: Scan | None = None) -> Iterator[tuple[int, list]]:
    """(row id, [values]) of every cell on every table leaf page of the database at `path`
    and of its `-wal`, in file order (the WAL's copies last, so they win when a caller keeps
    the last of each row id)."""
    path = Path(path)
    with _mapped(path) as data, _mapped(path.with_name(path.name + "-wal")) as wal:
        page_size = _page_size(data, wal)
        scan = scan if scan is not None else Scan(page_size)
        scan.page_size = page_size
        reader = _Pages(data, page_size)
        frame = WAL_FRAME_HEADER_SIZE + page_size
        wal_pages = (wal[at + WAL_FRAME_HEADER_SIZE:at + frame]
                     for at in range(WAL_HEADER_SIZE, len(wal) - frame + 1, frame))
        for number, page in enumerate(itertools.chain((reader.page(n) for n in range(1, reader.count + 1)),
                                             wal_pages), start=1):
            scan.pages += 1
            offset = 100 if number == 1 and page[:len(HEADER)] == HEADER else 0
            if page[offset] != TABLE_LEAF:
                continue
            try:
                cells = list(reader.leaf_cells(page, offset))
            except (IndexError, ValueError, struct.error):
                scan.broken += 1
                continue
            scan.leaves += 1
            yield from cells


@contextmanager
def _mapped(path: Path):
    """The file's bytes, mapped rather than read (a store can be larger than a Pi's memory);
    b"" when there is no such file or it is empty."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        yield b""
        return
    with f:
        if f.seek(0, 2) == 0:
            yield b""
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield data


def _page_size(data: bytes, wal: bytes) -> int:
    """The file header's page size, else the WAL header's, else SQLite's default."""
    if data[:len(HEADER)] == HEADER:
        size = struct.unpack(">H", data[16:18])[0]
        size = 65536 if size == 1 else size
        if _is_page_size(size):
            return size
    if len(wal) >= WAL_HEADER_SIZE:
        size = struct.unpack(">I", wal[8:12])[0]
        if _is_page_size(size):
            return size
    return DEFAULT_PAGE_SIZE


def _is_page_size(size: int) -> bool:
    return 512 <= size <= 65536 and size & (size - 1) == 0


class _Pages:
    def __init__(self, data, page_size: int):
        self.data, self.size = data, page_size
        self.usable = page_size   # no reserved bytes at the end of a page in our files
        self.count = len(data) // page_size

    def page(self, number: int) -> bytes:
        return self.data[(number - 1) * self.size:number * self.size]

    def leaf_cells(self, page: bytes, offset: int) -> Iterator[tuple[int, list]]:
        cells = struct.unpack(">H", page[offset + 3:offset + 5])[0]
        pointers = offset + 8
        for i in range(cells):
            at = struct.unpack(">H", page[pointers + 2 * i:pointers + 2 * i + 2])[0]
            if not pointers + 2 * cells <= at < len(page):
                raise ValueError("cell pointer outside the page")
            size, at = _varint(page, at)
            rowid, at = _varint(page, at)
            yield rowid, _record(self._payload(page, at, size))

    def _payload(self, page: bytes, at: int, size: int) -> bytes:
        """The cell's whole payload: the part on the page, then its overflow pages."""
        u = self.usable
        most = u - 35
        if size <= most:
            return page[at:at + size]
        least = (u - 12) * 32 // 255 - 23
        local = least + (size - least) % (u - 4)
        local = local if local <= most else least
        payload = bytearray(page[at:at + local])
        next_page = struct.unpack(">I", page[at + local:at + local + 4])[0]
        while len(payload) < size:
            if not 1 <= next_page <= self.count:
                raise ValueError("overflow page outside the file")
            overflow = self.page(next_page)
            next_page = struct.unpack(">I", overflow[:4])[0]
            payload += overflow[4:4 + min(u - 4, size - len(payload))]
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
