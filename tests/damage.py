"""Shared by the tests of damaged stores: a store with many pages, and what a failing SD card
does to one of them."""
from __future__ import annotations

import os
import random
import sqlite3
from contextlib import contextmanager

PAGE = 4096


@contextmanager
def card_stalled(path):
    """Another connection holds the database's write lock, as a stalled SD card holds a commit:
    every write waits for SQLite's busy timeout until the block ends (reads go on: WAL)."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def garbage(size: int) -> bytes:
    """`size` bytes of noise, the same every run: where a test counts broken pages, noise that
    happens to start like a b-tree page (about one page in sixty of os.urandom's) is one more."""
    return random.Random(size).randbytes(size)


def fill_with_badge_reads(store, n: int) -> None:
    """n badge reads, badges "000000", "000001"..., in one transaction: many leaf pages."""
    store.db.conn.execute("BEGIN")
    for i in range(n):
        store.add("badge_read", {"reader": "r1", "format": "wiegand26", "badge": f"{i:06d}"})
    store.db.conn.execute("COMMIT")


def garble_page_holding(path, text: str) -> int:
    """Overwrite the start of the b-tree page whose rows hold `text` (a table leaf page, when
    the text is in a record's body); its number."""
    data = bytearray(path.read_bytes())
    page = data.index(text.encode()) // PAGE
    data[page * PAGE:page * PAGE + 64] = os.urandom(64)
    path.write_bytes(data)
    return page
