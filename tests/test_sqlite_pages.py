"""agent/sqlite_pages.py: a damaged SQLite file and its WAL read page by page, where the card
cannot read some of them."""
from __future__ import annotations

import errno
import os
import shutil
import sqlite3

import pytest

from agent.salvage import read_unsent
from agent.sqlite_pages import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, Scan, scan_rows
from agent.sqlite_threads import is_damage
from damage import PAGE, fill_with_badge_reads, garbage


def failing_reads_at(monkeypatch, offsets: set[int]) -> list[int]:
    """os.pread fails with EIO (an SD card's bad block) at these offsets; the ones it failed at."""
    real_pread, failed = os.pread, []

    def pread(fd, size, offset):
        if offset in offsets:
            failed.append(offset)
            raise OSError(errno.EIO, "Input/output error")
        return real_pread(fd, size, offset)
    monkeypatch.setattr(os, "pread", pread)
    return failed


def test_a_page_the_card_cannot_read_is_counted_broken_and_the_rest_comes_back(store, monkeypatch):
    fill_with_badge_reads(store, 2000)
    store.close()
    path = store.path
    data = bytearray(path.read_bytes())
    data[:PAGE] = garbage(PAGE)                          # SQLite can read nothing: page by page
    path.write_bytes(data)
    bad_page = data.index(b'"badge": "001000"') // PAGE
    failed = failing_reads_at(monkeypatch, {bad_page * PAGE})

    salvage = read_unsent(path)
    assert failed == [bad_page * PAGE]
    assert "0 broken" not in salvage.scanned and ", 1 broken" in salvage.scanned
    badges = [row[6] for row in salvage.records]
    assert not any('"badge": "001000"' in body for body in badges)
    assert 1900 < len(badges) < 2000
    assert '"badge": "000000"' in badges[0] and '"badge": "001999"' in badges[-1]


def test_the_scan_goes_on_past_a_wal_frame_the_card_cannot_read(tmp_path, monkeypatch):
    """SQLite stops at the first frame that does not check; a bad block in one frame must not
    cost the commits after it, which the next frames' checksums still vouch for."""
    live = tmp_path / "live.db"
    conn = sqlite3.connect(live, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (v TEXT)")
    for n in range(20):
        conn.execute("INSERT INTO t (v) VALUES (?)", [f"row-{n:02d}"])
    copy = tmp_path / "copy.db"
    for suffix in ("", "-wal"):
        shutil.copy(f"{live}{suffix}", f"{copy}{suffix}")
    conn.close()
    third_frame_page = WAL_HEADER_SIZE + 2 * (WAL_FRAME_HEADER_SIZE + PAGE) + WAL_FRAME_HEADER_SIZE
    failed = failing_reads_at(monkeypatch, {third_frame_page})

    scan = Scan(0)
    values = {row.values[0] for row in scan_rows(copy, scan) if row.frame}
    assert failed and scan.broken == 1 and "1 broken or unreadable" in scan.wal
    assert "row-19" in values                            # committed after the broken frame



@pytest.mark.parametrize("name,damage", [("SQLITE_CORRUPT", True), ("SQLITE_CORRUPT_INDEX", True),
                                         ("SQLITE_CORRUPT_VTAB", True), ("SQLITE_NOTADB", True),
                                         ("SQLITE_BUSY", False), ("SQLITE_IOERR_READ", False),
                                         ("SQLITE_CORRUPTED", False)])
def test_damage_is_known_by_sqlites_extended_codes_too(name, damage):
    """Python names the extended code (a corrupt index is SQLITE_CORRUPT_INDEX): it is damage
    as much as SQLITE_CORRUPT is."""
    exc = sqlite3.DatabaseError("database disk image is malformed")
    exc.sqlite_errorname = name
    assert is_damage(exc) is damage
