"""End to end, through the HIL rig: alarm button press -> siren relay, and press -> alarm at the broker.

Each round is the `alarm_press` scenario with a fresh agent process, a fresh
mosquitto and the rig's control channel: the siren time comes from the agent's
own pin history, the broker time from the rig's MQTT subscriber (the same
monotonic clock). This is the whole path a press takes to the platform,
as a separate process would see it, not one function.

    python bench/hil_alarm.py [--rounds 10]

Last line: RESULT press_to_siren_p50_ms=... press_to_broker_p50_ms=... (p99 and max beside them).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hil.rig import PASS, Rig  # noqa: E402
from hil.scenario import discover  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    scenario = discover(["alarm_press"])[0]
    missing = scenario.missing_parts()
    if missing:
        print(f"alarm_press needs parts not built yet: {', '.join(missing)}")
        print("RESULT skipped=1")
        return 0
    siren, broker, failed = [], [], 0
    for i in range(args.rounds):
        result = Rig(scenario).run()
        checks = {c.name: c for c in result.checks}
        s = next((c for n, c in checks.items() if n.startswith("siren")), None)
        b = next((c for n, c in checks.items() if n.startswith("alarm record")), None)
        if result.status != PASS or s is None or b is None or s.measured_ms is None or b.measured_ms is None:
            failed += 1
            print(f"round {i + 1}: {result.status} {result.reason}")
            continue
        siren.append(s.measured_ms)
        broker.append(b.measured_ms)
        print(f"round {i + 1}: siren {s.measured_ms:.1f} ms, broker {b.measured_ms:.1f} ms")
    if not siren:
        print(f"RESULT rounds=0 failed={failed}")
        return 1
    print(f"press -> siren relay:  median {statistics.median(siren):.1f} ms, p99 {percentile(siren, .99):.1f} ms, "
          f"max {max(siren):.1f} ms ({len(siren)} rounds)")
    print(f"press -> broker:       median {statistics.median(broker):.1f} ms, p99 {percentile(broker, .99):.1f} ms, "
          f"max {max(broker):.1f} ms")
    print(f"RESULT press_to_siren_p50_ms={statistics.median(siren):.1f} "
          f"press_to_siren_p99_ms={percentile(siren, .99):.1f} "
          f"press_to_broker_p50_ms={statistics.median(broker):.1f} "
          f"press_to_broker_p99_ms={percentile(broker, .99):.1f} "
          f"press_to_broker_max_ms={max(broker):.1f} rounds={len(siren)} failed={failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
