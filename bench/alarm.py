"""Alarm press -> durable record: latency with the CPU idle, then busy on every core.

A gate with only the GPIO area runs on gpiozero's MockFactory; each press drives
the button's mock pin low and the time runs until the alarm record is committed
(the store calls its listeners after the INSERT has committed, fsync included:
WAL, synchronous=FULL) - the whole edge path: gpiozero's callback, debounce,
record, SQLite. The busy phase starts one worker process per core doing
OpenCV/numpy work like the plate pipeline's (blur, resize, edges, a small
matmul), at the same priority as the agent.

    python bench/alarm.py [--presses 200] [--workers N] [--worker-nice 0] [--data-dir DIR]

"fsync" is the disk's own floor (append + fsync in the same folder, idle): the
difference between it and a press is the agent's own path.

Last line: RESULT press_to_record_p50_ms=... press_to_record_p99_ms=... busy=1 (busy figures),
with the idle figures beside them.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIG = """
[device]
id = "21010200001210000001"
site = "bench"

[[lanes]]
name = "in1"

[storage]
data_dir = "{data_dir}"

[mqtt]
url = "mqtt://127.0.0.1:{port}"
allow_plaintext = true

[alarm]
siren = {{ pin = 24 }}
siren_s = 1

[[alarm.buttons]]
name = "b1"
location = "bench"
pin = 23
debounce_s = 0.01
"""


def busy_worker(stop, nice: int = 0) -> None:
    """Vision-like load: OpenCV and numpy on 1080p frames, one thread per process."""
    if nice:
        os.nice(nice)
    import cv2
    import numpy as np
    cv2.setNumThreads(1)
    rng = np.random.default_rng(os.getpid())
    frame = rng.integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    weights = rng.standard_normal((256, 256)).astype(np.float32)
    while not stop.is_set():
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        small = cv2.resize(cv2.GaussianBlur(grey, (5, 5), 0), (640, 360))
        cv2.Canny(small, 50, 150)
        x = small[:256, :256].astype(np.float32)
        for _ in range(4):
            x = np.tanh(x @ weights)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def measure(gate, factory, presses: int) -> list[float]:
    committed = threading.Event()
    done_at = [0.0]

    def on_record(record):
        if record.kind == "alarm":
            done_at[0] = time.perf_counter()
            committed.set()
    gate.store.listeners.append(on_record)
    pin = factory.pin(23)
    latencies = []
    try:
        for _ in range(presses):
            committed.clear()
            start = time.perf_counter()
            pin.drive_low()
            if not committed.wait(5):
                raise SystemExit("a press was not recorded within 5 s")
            latencies.append((done_at[0] - start) * 1000)
            pin.drive_high()
            time.sleep(0.02)  # released longer than debounce_s: the next press is distinct
    finally:
        gate.store.listeners.remove(on_record)
    return latencies


def fsync_floor(folder: Path, n: int) -> list[float]:
    """The disk's own floor: append 200 bytes and fsync, as a WAL commit does at least."""
    latencies = []
    with open(folder / "fsync-probe", "ab") as f:
        for _ in range(n):
            start = time.perf_counter()
            f.write(b"x" * 200)
            f.flush()
            os.fsync(f.fileno())
            latencies.append((time.perf_counter() - start) * 1000)
            time.sleep(0.005)
    return latencies


def report(name: str, values: list[float]) -> tuple[float, float]:
    p50, p99 = statistics.median(values), percentile(values, 99)
    print(f"{name:>5}: n={len(values)} p50={p50:.2f} ms p90={percentile(values, 90):.2f} ms "
          f"p99={p99:.2f} ms max={max(values):.2f} ms")
    return p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presses", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--worker-nice", type=int, default=0,
                        help="niceness of the busy workers (0: same priority as the agent, the worst case; "
                             "10: as a vision process run with Nice=10)")
    parser.add_argument("--data-dir", default=None, help="where the bench store lives (default: a temp dir "
                        "under /var/tmp, on disk so fsync is real)")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    with tempfile.TemporaryDirectory(dir=args.data_dir or "/var/tmp", prefix="alarm-bench-") as tmp:
        tmp = Path(tmp)
        from agent.privacy import create_key
        create_key(tmp / "keys" / "data.key")
        create_key(tmp / "keys" / "list.key")
        (tmp / "config.toml").write_text(CONFIG.format(data_dir=tmp / "data", port=1883))

        import logging
        logging.basicConfig(level=logging.ERROR)
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        from agent.config import load
        from agent.gate import Gate
        factory = MockFactory(pin_class=MockPWMPin)
        gate = Gate(load(tmp / "config.toml"), pin_factory=factory, simulated=True)
        gate.build(areas=[("drivers.gpio", True, "GPIO")])
        gate.start()
        workers = []
        try:
            measure(gate, factory, 10)  # warm-up: this thread's connection, caches
            idle = measure(gate, factory, args.presses)
            floor = fsync_floor(tmp, args.presses)
            workers = [ctx.Process(target=busy_worker, args=(stop, args.worker_nice), daemon=True)
                       for _ in range(args.workers)]
            for worker in workers:
                worker.start()
            time.sleep(2.0)  # let them load the cores
            load_avg = os.getloadavg()[0]
            busy = measure(gate, factory, args.presses)
        finally:
            stop.set()
            for worker in workers:
                worker.join(5)
                if worker.is_alive():
                    worker.terminate()
            gate.stop()
            factory.reset()
    print(f"store on {args.data_dir or '/var/tmp'}; {args.workers} busy worker(s) on {os.cpu_count()} "
          f"core(s) at nice {args.worker_nice}, 1-min load {load_avg:.1f} during the busy phase")
    floor_p50, floor_p99 = report("fsync", floor)
    idle_p50, idle_p99 = report("idle", idle)
    busy_p50, busy_p99 = report("busy", busy)
    print(f"RESULT press_to_record_p50_ms={busy_p50:.2f} press_to_record_p99_ms={busy_p99:.2f} busy=1 "
          f"idle_p50_ms={idle_p50:.2f} idle_p99_ms={idle_p99:.2f} fsync_p50_ms={floor_p50:.2f} "
          f"fsync_p99_ms={floor_p99:.2f} presses={args.presses} "
          f"workers={args.workers} worker_nice={args.worker_nice}")


if __name__ == "__main__":
    main()
