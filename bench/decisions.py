"""Decision time with 100,000 entries in each list, and the time to load 100,000 entries.

    PYTHONPATH=. python bench/decisions.py [--entries 100000] [--decisions 20000]

Prints the CSV import time of a 100k staff list (ID numbers hashed with HMAC,
one transaction), the startup load of all four lists from lists.db, the memory
the index takes, then the decision time (Decider.decide: the in-memory rules, as
decision_ms measures them) over a mix of known, near, unknown and watchlisted
plates, ID cards and badges, and the full path with the access_decision record
written (synchronous=FULL). Last line: RESULT p50_ms=... p99_ms=... load_100k_s=...
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.bus import Bus  # noqa: E402
from agent.decisions import Decider, DecisionSubsystem, Inputs, Settings  # noqa: E402
from agent.identity import id_check_char  # noqa: E402
from agent.lists import Lists, apply_update  # noqa: E402
from agent.platecodes import PROVINCES  # noqa: E402
from agent.privacy import Sealer, create_key, load_key  # noqa: E402
from agent.store import Store  # noqa: E402

PLATE_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def plates(rng: random.Random, n: int, taken: set) -> list[str]:
    out = []
    while len(out) < n:
        plate = rng.choice(PROVINCES) + rng.choice("ABCDEFGHJK") + "".join(
            rng.choice(PLATE_CHARS) for _ in range(5))
        if plate not in taken:
            taken.add(plate)
            out.append(plate)
    return out


def id_numbers(rng: random.Random, n: int, taken: set) -> list[str]:
    out = []
    while len(out) < n:
        first17 = f"{rng.randrange(110000, 660000)}{rng.randrange(1950, 2008)}" \
                  f"{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}{rng.randrange(1000):03d}"
        number = first17 + id_check_char(first17)
        if number not in taken:
            taken.add(number)
            out.append(number)
    return out


def startup_in_fresh_process(work: Path) -> tuple[float, float]:
    """Open lists.db in a new interpreter: the agent's start-up time and the index's memory."""
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "from decisions import rss_mb\n"
        "from agent.lists import Lists\n"
        "from agent.privacy import load_key\n"
        "base = rss_mb(); t = time.perf_counter()\n"
        f"lists = Lists({str(work / 'data')!r}, load_key({str(work / 'list.key')!r}))\n"
        "print(time.perf_counter() - t, rss_mb() - base)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout.split()
    return float(out[0]), float(out[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000, help="entries in each list")
    parser.add_argument("--decisions", type=int, default=20_000, help="decisions timed")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the watchlisted inputs would log an alert each
    n = args.entries
    rng = random.Random(1)
    work = Path(tempfile.mkdtemp(prefix="bench-decisions-"))
    key = load_key(create_key(work / "list.key"))
    taken_plates, taken_ids = set(), set()
    staff_ids = id_numbers(rng, n, taken_ids)
    staff_plates = plates(rng, n, taken_plates)
    visitor_plates, visitor_ids = plates(rng, n, taken_plates), id_numbers(rng, n, taken_ids)
    watch_plates, watch_ids = plates(rng, n, taken_plates), id_numbers(rng, n, taken_ids)

    csv_path = work / "staff.csv"
    with open(csv_path, "w", encoding="utf-8") as f:
        f.write("id_number,badge,name,days,hours\n")
        for i, number in enumerate(staff_ids):
            f.write(f"{number},{i:010d},员工{i},mon-fri,07:00-19:00\n")

    lists = Lists(work / "data", key)
    t, cpu = time.perf_counter(), time.process_time()
    lists.import_csv(csv_path, "staff", replace=True)
    load_100k_s, load_cpu_s = time.perf_counter() - t, time.process_time() - cpu
    print(f"import {n} staff from CSV (HMAC + one transaction + index): {load_100k_s:.2f} s "
          f"({load_cpu_s:.2f} s CPU)")

    t = time.perf_counter()
    apply_update(lists, {"mode": "snapshot", "version": 1, "lists": {
        "staff_vehicles": [{"plate": p, "days": "mon-sat"} for p in staff_plates],
        "staff": [{"id_number": number, "badge": f"{i:010d}"} for i, number in enumerate(staff_ids)],
        "visitors": [{"plate": p, "id_number": number, "valid_from": "2026-01-01", "valid_to": "2026-12-31",
                      "uses": "multiple"} for p, number in zip(visitor_plates, visitor_ids)],
        "watchlist": [{"plate": p, "id_number": number} for p, number in zip(watch_plates, watch_ids)],
    }})
    print(f"apply a snapshot of 4 x {n} entries: {time.perf_counter() - t:.2f} s")
    lists.close()

    startup_s, index_mb = startup_in_fresh_process(work)
    print(f"startup load of 4 x {n} entries from lists.db (fresh process): {startup_s:.2f} s, "
          f"memory +{index_mb:.0f} MB")
    lists = Lists(work / "data", key)

    decider = Decider(lists, Settings(), {"in1": "in"})
    now = time.time()

    def near(plate: str) -> str:
        i = rng.randrange(2, len(plate))
        return plate[:i] + rng.choice([c for c in PLATE_CHARS if c != plate[i]]) + plate[i + 1:]

    makers = [
        lambda: Inputs(plate=rng.choice(staff_plates), confidence=0.95),
        lambda: Inputs(plate=near(rng.choice(staff_plates)), confidence=0.95),
        lambda: Inputs(plate=plates(rng, 1, set(taken_plates))[0], confidence=0.95),
        lambda: Inputs(plate=near(rng.choice(watch_plates)), confidence=0.6),
        lambda: Inputs(plate=rng.choice(visitor_plates), confidence=0.9, id_number=rng.choice(visitor_ids)),
        lambda: Inputs(id_number=rng.choice(staff_ids)),
        lambda: Inputs(badge=f"{rng.randrange(n):010d}"),
        lambda: Inputs(id_number=rng.choice(watch_ids)),
    ]
    inputs = [rng.choice(makers)() for _ in range(args.decisions)]
    outcomes: dict[str, int] = {}
    times, cpu_times = [], []
    for item in inputs:
        t, c = time.perf_counter(), time.thread_time()
        verdict = decider.decide(item, "in1", now)
        cpu_times.append((time.thread_time() - c) * 1000)
        times.append((time.perf_counter() - t) * 1000)
        outcomes[verdict.rule] = outcomes.get(verdict.rule, 0) + 1
    p50, p99 = statistics.median(times), percentile(times, 0.99)
    print(f"decide x {len(times)}: p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {max(times):.3f} ms (wall); "
          f"thread CPU p50 {statistics.median(cpu_times):.3f} ms, p99 {percentile(cpu_times, 0.99):.3f} ms")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(wall figures above the CPU ones mean the machine was shared)")
    print("rules hit: " + ", ".join(f"{rule} {count}" for rule, count in sorted(outcomes.items())))

    store = Store(work / "data", device_id="21010200001210000001", site="bench",
                  sealer=Sealer(load_key(create_key(work / "data.key"))), reserve_mb=1)
    gate = DecisionSubsystem(store=store, bus=Bus(), lists=lists, settings=Settings(), lanes={"in1": "in"})
    full = []
    for i in range(300):
        record = store.add("plate_read", {"lane": "in1", "plate_no": rng.choice(staff_plates),
                                          "plate_color": "blue", "plate_class": "02", "confidence": 0.95,
                                          "pass_time": "", "motor_vehicle": {}}, at=now + i * 60)
        t = time.perf_counter()
        gate.handle(record)
        full.append((time.perf_counter() - t) * 1000)
    print(f"full path with the decision record stored (synchronous=FULL) x {len(full)}: "
          f"p50 {statistics.median(full):.2f} ms, p99 {percentile(full, 0.99):.2f} ms")
    store.close()
    lists.close()
    shutil.rmtree(work)
    print(f"RESULT p50_ms={p50:.4f} p99_ms={p99:.4f} load_100k_s={load_100k_s:.2f} "
          f"load_100k_cpu_s={load_cpu_s:.2f} startup_all_s={startup_s:.2f} index_mb={index_mb:.0f}")


if __name__ == "__main__":
    main()
