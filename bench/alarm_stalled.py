"""Alarm press -> alarm at the broker while the SD card stalls every write.

A gate with the GPIO and sync areas on gpiozero's MockFactory, against a real
mosquitto on 127.0.0.1. Each round presses the button and times until the
alarm's message arrives at a platform-side subscriber, twice: with the store
healthy (the alarm goes from the outbox once committed), then with another
connection holding the store's write lock (as a card that stalls a commit
holds it): the alarm's write waits, and after WRITE_STALL_S the panel's sender
thread hands it to the sync from memory. In the stalled phase a refused alarm
is also waiting for its retry, which hangs on the same lock on the panel's
store worker: the press must not wait behind it. Between rounds the lock is
let go and the alarm is stored.

    python bench/alarm_stalled.py [--rounds 10]

Last line: RESULT stalled_p50_ms=... stalled_max_ms=... healthy_p50_ms=... (the target: under 2000).
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from alarm import CONFIG  # noqa: E402  (bench/alarm.py: the same gate, one button, a siren)



def alarms_at(platform) -> list[str]:
    return [json.loads(p)["uuid"] for t, p, _ in platform.messages if t.endswith("/records/alarm")]


def press_to_broker(factory, platform, timeout: float = 10.0) -> float:
    """Press (on this thread, the edge thread here, as gpiozero's is on a Pi), time until a
    new alarm arrives at the broker, release: milliseconds."""
    before = len(alarms_at(platform))
    pin = factory.pin(23)
    start = time.perf_counter()
    pin.drive_low()
    if not platform.wait_for(lambda _: len(alarms_at(platform)) > before, timeout):
        raise SystemExit(f"an alarm did not reach the broker within {timeout:.0f} s")
    took = (time.perf_counter() - start) * 1000
    pin.drive_high()
    time.sleep(0.05)   # released longer than debounce_s: the next press is distinct
    return took


class StalledCard:
    """Another connection holds the store's write lock, as a card stalling a commit does."""

    def __init__(self, path: Path):
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *exc):
        self.conn.execute("ROLLBACK")


def refused_once(store):
    """store.put refusing the next alarm once (a card error), so a retry waits on the store worker."""
    real_put, refuse = store.put, {"next": False}

    def put(record):
        if record.kind == "alarm" and refuse["next"]:
            refuse["next"] = False
            raise OSError("disk I/O error (bench)")
        return real_put(record)
    store.put = put
    return refuse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    import logging
    logging.basicConfig(level=logging.CRITICAL + 1)   # the refused and stalled writes log on purpose
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    from agent.config import load
    from agent.gate import Gate
    from agent.privacy import create_key
    from hil.broker import Mosquitto, Subscriber

    healthy, stalled = [], []
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="alarm-stall-bench-") as tmp, \
            Mosquitto() as broker, Subscriber(broker.port, "gate/#") as platform:
        tmp = Path(tmp)
        create_key(tmp / "keys" / "data.key")
        create_key(tmp / "keys" / "list.key")
        (tmp / "config.toml").write_text(CONFIG.format(data_dir=tmp / "data", port=broker.port))
        factory = MockFactory(pin_class=MockPWMPin)
        gate = Gate(load(tmp / "config.toml"), pin_factory=factory, simulated=True)
        gate.build(areas=[("drivers.gpio", True, "GPIO"), ("agent.sync", False, "sync")])
        gate.start()
        try:
            sync = next(slot.subsystem for slot in gate.supervisor.slots if slot.subsystem.name == "sync")
            deadline = time.monotonic() + 10
            while not sync.health().get("connected"):
                if time.monotonic() > deadline:
                    raise SystemExit("the agent did not connect to the bench broker")
                time.sleep(0.05)
            refuse = refused_once(gate.store)
            press_to_broker(factory, platform)                     # warm-up
            for _ in range(args.rounds):
                healthy.append(press_to_broker(factory, platform))
                stored = len(gate.store.records("alarm", limit=10_000))
                refuse["next"] = True
                with StalledCard(gate.store.path):
                    press_to_broker(factory, platform)             # refused: its retry hangs on the lock
                    time.sleep(0.3)
                    stalled.append(press_to_broker(factory, platform))
                deadline = time.monotonic() + 30
                while len(gate.store.records("alarm", limit=10_000)) < stored + 2:
                    if time.monotonic() > deadline:
                        raise SystemExit("the stalled alarms were not stored once the card came back")
                    time.sleep(0.05)
        finally:
            gate.stop()
            factory.reset()
    for name, values in (("healthy", healthy), ("stalled", stalled)):
        print(f"{name:>8}: n={len(values)} p50={statistics.median(values):.1f} ms max={max(values):.1f} ms")
    print(f"RESULT stalled_p50_ms={statistics.median(stalled):.1f} stalled_max_ms={max(stalled):.1f} "
          f"healthy_p50_ms={statistics.median(healthy):.1f} healthy_max_ms={max(healthy):.1f} rounds={args.rounds}")


if __name__ == "__main__":
    main()
