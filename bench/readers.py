"""Bench: card placed -> read delivered, over a pty with the simulated reader; frame parser speed.

The pty has no line-speed delay, so the latency is the software's share; the
wire time of find + select + read at the reader's speed is printed beside it.
Ends with one RESULT line.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import idcard  # noqa: E402
from drivers.reader_sim import Card, ReaderSimulator  # noqa: E402
from drivers.serial_reader import IdCardPoller  # noqa: E402

ROUNDS = 40
POLL_S = 0.05


def p99(values):
    return sorted(values)[min(len(values) - 1, int(len(values) * 0.99))]


def card_latency() -> list[float]:
    got = threading.Event()
    latencies = []
    with tempfile.TemporaryDirectory() as tmp, ReaderSimulator(link=Path(tmp) / "r") as sim:
        poller = IdCardPoller(sim.port, poll_s=POLL_S, when_card=lambda card: got.set())
        poller.start()
        try:
            for i in range(ROUNDS):
                got.clear()
                start = time.perf_counter()
                sim.place(Card.resident(sequence=f"{(i % 400) * 2 + 1:03d}"))
                if not got.wait(5):
                    raise SystemExit("no read within 5 s")
                latencies.append(time.perf_counter() - start)
                sim.remove()
                while poller.present is not None:
                    time.sleep(0.005)
        finally:
            poller.stop()
    return latencies


def parser_throughput() -> float:
    frame = idcard.build_response(0x90, idcard.build_read_data(bytes(256), bytes(1024)))
    stream = (b"\x01\x02noise" + frame) * 800
    parser = idcard.FrameParser()
    start = time.perf_counter()
    found = 0
    for i in range(0, len(stream), 4096):
        found += len(parser.feed(stream[i:i + 4096]))
    elapsed = time.perf_counter() - start
    assert found == 800
    return len(stream) / elapsed / 1e6


def main() -> None:
    latencies = [s * 1000 for s in card_latency()]
    wire_ms = (10 + 15 + 10 + 19 + 10 + 1295) * 10 / 115200 * 1000
    mbps = parser_throughput()
    median, tail = statistics.median(latencies), p99(latencies)
    print(f"card placed -> read delivered over a pty, poll {POLL_S * 1000:.0f} ms, {ROUNDS} cards: "
          f"median {median:.1f} ms, p99 {tail:.1f} ms (includes up to one poll interval)")
    print(f"wire time of find + select + read at 115200 baud (not in the pty figure): {wire_ms:.0f} ms")
    print(f"frame parser: {mbps:.1f} MB/s")
    print(f"RESULT card_read_median_ms={median:.1f} card_read_p99_ms={tail:.1f} "
          f"wire_115200_ms={wire_ms:.0f} parser_mb_s={mbps:.1f}")


if __name__ == "__main__":
    main()
