"""Reading a damaged store back: how long, and how much comes back.

Builds a store of N records (faults of about 300 bytes, 1 alarm in 100, the first
30 % confirmed by the platform), closes it, and damages two copies the ways an SD
card does:
- a table leaf page in the middle garbled: SQLite reads around it (`read_unsent`, row
  ranges halved around the damage);
- page 1 garbled (header and schema, the damage the agent finds at start):
  SQLite can read nothing, the pages are read one by one (agent/sqlite_pages.py).
Then requeues the page-scanned one into a new store.

    python bench/salvage.py [--records 100000] [--data-dir DIR]

Last line: RESULT sqlite_read_s=... scan_read_s=... requeue_s=... unsent=... sqlite_back=... scan_back=...
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.records import new_record  # noqa: E402
from agent.salvage import read_unsent  # noqa: E402
from agent.store import Store  # noqa: E402

DEVICE, SITE = "21010200001210000001", "bench"
PAGE = 4096


def build(folder: Path, n: int) -> tuple[Path, int]:
    store = Store(folder, device_id=DEVICE, site=SITE, reserve_mb=1, quota_mb=100_000)
    conn = store.db.conn
    alarm = {"button": "b1", "location": "desk", "drill": False, "pressed_at": "2026-11-25T10:00:00.000+08:00"}
    sent = []
    for start in range(0, n, 5000):
        conn.execute("BEGIN")
        for i in range(start, min(n, start + 5000)):
            kind, data = ("alarm", alarm) if i % 100 == 0 else \
                ("fault", {"subsystem": "bench", "condition": "filler", "detail": f"{i:08d} " + "x" * 220})
            record = store.put(new_record(kind, data, device_id=DEVICE, site=SITE))
            if i < n * 0.3:
                sent.append(record.uuid)
        conn.execute("COMMIT")
    for start in range(0, len(sent), 500):
        store.mark_sent(sent[start:start + 500])
    store.close()
    return folder / "gate.db", n - len(sent)


def middle_leaf(path: Path) -> int:
    """The offset of the first table leaf page (type 13) from the middle of the file on."""
    data = path.read_bytes()
    for page in range(len(data) // PAGE // 2, len(data) // PAGE):
        if data[page * PAGE] == 13:
            return page * PAGE
    raise SystemExit("no table leaf page in the second half of the store")


def damaged_copy(source: Path, name: str, at: int) -> Path:
    target = source.with_name(name)
    shutil.copy(source, target)
    with open(target, "r+b") as f:
        f.seek(at)
        f.write(os.urandom(PAGE))
    return target


def timed(fn, repeat: int = 3):
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--data-dir", type=Path, default=None, help="where to build the store (default: a temp dir)")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="salvage-", dir=args.data_dir))
    try:
        source, unsent = build(folder / "built", args.records)
        size = source.stat().st_size
        middle = damaged_copy(source, "middle.db", middle_leaf(source))
        first = damaged_copy(source, "first.db", 0)
        sqlite_s, by_sqlite = timed(lambda: read_unsent(middle))
        scan_s, by_scan = timed(lambda: read_unsent(first))
        target = Store(folder / "new", device_id=DEVICE, site=SITE, reserve_mb=1, quota_mb=100_000)
        started = time.perf_counter()
        report = target.requeue(by_scan)
        requeue_s = time.perf_counter() - started
        target.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lost = sum(b - a + 1 for a, b in by_sqlite.unreadable)
    print(f"store: {args.records} records, {unsent} unsent, {size / 1e6:.1f} MB ({size // PAGE} pages)")
    print(f"leaf page damaged, read through SQLite: {sqlite_s:.2f} s, {len(by_sqlite.records)} unsent back, "
          f"{lost} row(s) unreadable ({by_sqlite.unreadable})")
    print(f"page 1 damaged, read page by page:    {scan_s:.2f} s, {len(by_scan.records)} unsent back "
          f"({by_scan.scanned})")
    print(f"requeue of those into a new store:    {requeue_s:.2f} s, {sum(report['queued'].values())} queued")
    print(f"RESULT sqlite_read_s={sqlite_s:.2f} scan_read_s={scan_s:.2f} requeue_s={requeue_s:.2f} "
          f"unsent={unsent} sqlite_back={len(by_sqlite.records)} scan_back={len(by_scan.records)} "
          f"records={args.records}")


if __name__ == "__main__":
    main()
