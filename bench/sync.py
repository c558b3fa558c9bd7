"""Sync bench: drain rate of a 50,000-record backlog, and alarm latency idle and busy.

Starts its own mosquitto on 127.0.0.1. A record counts as drained only once its
PUBACK is committed in SQLite (the outbox is empty). Alarm latency is from the
alarm's creation (before it is stored, with fsync) to its arrival at a platform
subscriber.

    python bench/sync.py [--backlog 50000] [--alarms 200]

Last line: RESULT drain_per_s=... alarm_p50_ms=... alarm_p99_ms=... alarm_p99_busy_ms=...
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import config as configmod  # noqa: E402
from agent.privacy import Sealer, create_key, load_key  # noqa: E402
from agent.records import new_record  # noqa: E402
from agent.store import open_store  # noqa: E402
from agent.sync import SyncEngine  # noqa: E402
from hil.broker import Mosquitto, Subscriber  # noqa: E402

READ = {"lane": "in1", "plate_no": "辽A12345", "plate_color": "blue", "plate_class": "02",
        "confidence": 0.97, "pass_time": "20261124100000", "motor_vehicle": True}
ALARM = {"button": "b1", "location": "gatehouse desk", "drill": False, "pressed_at": ""}


def make_config(folder: Path, port: int):
    create_key(folder / "keys" / "data.key")
    create_key(folder / "keys" / "list.key")
    path = folder / "config.toml"
    path.write_text(f"""
[device]
id = "21010200001210000001"
site = "bench"
[[lanes]]
name = "in1"
[storage]
data_dir = "{folder / 'data'}"
reserve_mb = 1
[mqtt]
url = "mqtt://127.0.0.1:{port}"
allow_plaintext = true
""")
    return configmod.load(path)


def fill(store, n: int) -> None:
    """A backlog of n plate reads, written in one transaction (fast setup)."""
    conn = store.db.conn
    conn.execute("BEGIN")
    for _ in range(n):
        store.put(new_record("plate_read", READ, device_id=store.device_id, site=store.site))
    conn.execute("COMMIT")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def alarm_latencies(store, sub: Subscriber, count: int, gap_s: float) -> list[float]:
    arrived: dict[str, float] = {}
    done = threading.Event()

    def on_message(client, userdata, message):
        arrived.setdefault(json.loads(message.payload)["uuid"], time.time())
        if len(arrived) >= count:
            done.set()
    sub.client.on_message = on_message
    created = {}
    for _ in range(count):
        record = store.add("alarm", dict(ALARM, pressed_at=time.strftime("%Y-%m-%dT%H:%M:%S")))
        created[record.uuid] = record.created
        time.sleep(gap_s)
    if not done.wait(30):
        raise SystemExit(f"only {len(arrived)} of {count} alarms arrived")
    return [(arrived[u] - t) * 1000 for u, t in created.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=50_000)
    parser.add_argument("--alarms", type=int, default=200)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    with Mosquitto() as broker:
        cfg = make_config(folder, broker.port)
        store = open_store(cfg, Sealer(load_key(cfg.privacy.key_file)))

        fill(store, args.backlog)
        engine = SyncEngine(cfg, store, downlink=False)
        engine.start()
        engine._connected.wait(10)
        start = time.perf_counter()
        while engine.stats["records"] < args.backlog:
            time.sleep(0.01)
        drain_s = time.perf_counter() - start
        drain_per_s = args.backlog / drain_s
        print(f"drain: {args.backlog} records committed in {drain_s:.2f} s = {drain_per_s:.0f}/s "
              f"(window {cfg.mqtt.inflight})")

        with Subscriber(broker.port, "gate/+/+/records/alarm") as sub:
            idle = alarm_latencies(store, sub, args.alarms, 0.02)
            print(f"alarm idle: p50 {statistics.median(idle):.1f} ms, p99 {percentile(idle, 0.99):.1f} ms, "
                  f"max {max(idle):.1f} ms")
            engine.stop()
            fill(store, args.backlog)
            engine = SyncEngine(cfg, store, downlink=False)
            engine.start()
            engine._connected.wait(10)
            time.sleep(0.5)
            busy = alarm_latencies(store, sub, args.alarms, 0.02)
            left = store.depth()["by_priority"]["read"]
            print(f"alarm during a drain ({left} reads still queued at the end): "
                  f"p50 {statistics.median(busy):.1f} ms, p99 {percentile(busy, 0.99):.1f} ms, "
                  f"max {max(busy):.1f} ms")
            if left == 0:
                print("warning: the backlog drained before the alarms ended; busy figure is partly idle")
        engine.stop()
        store.close()
    print(f"RESULT drain_per_s={drain_per_s:.0f} alarm_p50_ms={statistics.median(idle):.1f} "
          f"alarm_p99_ms={percentile(idle, 0.99):.1f} alarm_p99_busy_ms={percentile(busy, 0.99):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
