"""The demo's timeline: hil/demo.toml played by the HIL rig, narrated as it happens.

The rig starts the real agent process (`gate-agent run --simulate`) with a real
SQLite store, a real mosquitto when one is installed, the ID card reader
simulator on a pty and a camera folder of rendered frames, and drives the
MockFactory pins through the agent's control channel. This module only adds
the narration: the steps in words, each record as the agent stores it (read
from its SQLite file, so personal fields stay sealed), what reached the
platform, the relays and lamps as they change, and a summary with timings.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from hil.broker import find_mosquitto
from hil.rig import ERROR, FAIL, PASS, Rig
from hil.scenario import load

DEMO_SCENARIO = Path(__file__).resolve().parent / "demo.toml"
WATCHED_PINS = ("in1.barrier", "in1.guard_lamp", "alarm.siren", "alarm.ack_lamp", "alarm.drill_lamp")
QUIET_KINDS = ("health",)


class DemoFailed(SystemExit):
    """The demo ran but the gate did not do what it should: exit 1 after the summary."""


class DemoRun:
    def __init__(self, root: Path, narrator, seconds: float):
        self.root = Path(root)
        self.narrator = narrator
        self.seconds = seconds
        self.stop = threading.Event()
        self.stored: dict[str, int] = {}

    def run(self) -> None:
        scenario = load(DEMO_SCENARIO)
        scenario.timeout_s = min(scenario.timeout_s, self.seconds)
        missing = scenario.missing_parts()
        if missing:
            raise DemoFailed(f"the demo needs parts that are not here: {', '.join(missing)}")
        say = self.narrator.say
        say("demo", "the gate: lane in1 with barrier, loop, guard lamp and open button; an ID card "
                    "reader; a one-key alarm with siren and receipt lamp")
        broker = find_mosquitto() is not None
        if broker:
            say("demo", "police platform: a mosquitto broker on 127.0.0.1 stands in for it")
        else:
            say("demo", "mosquitto is not installed, so there is no platform to send to: every record "
                        "waits in the local SQLite outbox (sudo apt-get install mosquitto to see the sync)")
        say("demo", "starting the agent (real process, simulated pins) ...")
        rig = Rig(scenario, say=self._step, broker=broker, workdir=self.root / "run")
        watcher = threading.Thread(target=self._watch, args=(rig,), name="demo-watch", daemon=True)
        watcher.start()
        try:
            result = rig.run()
        finally:
            self.stop.set()
            watcher.join(timeout=2)
        self._summary(rig, result)

    # narration while it runs

    def _step(self, text: str) -> None:
        words = text.split(": ", 1)[1] if ": " in text else text.strip()
        self.narrator.say("scene", words)

    def _watch(self, rig: Rig) -> None:
        last_seq, seen_messages = 0, 0
        levels: dict[str, int] = {}
        while not self.stop.wait(0.1):
            workdir = getattr(rig, "workdir", None)
            if workdir is None:
                continue
            last_seq = self._new_records(workdir / "data" / "gate.db", last_seq)
            collector = getattr(rig, "collector", None)
            if collector is not None:
                seen_messages = self._platform(collector, seen_messages)
            pins, site = getattr(rig, "pins", None), getattr(rig, "site", None)
            if pins is not None and site is not None:
                self._pins(pins, site, levels)

    def _new_records(self, db: Path, last_seq: int) -> int:
        if not db.exists():
            return last_seq
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
            try:
                rows = con.execute("SELECT seq, kind, priority, body FROM records WHERE seq > ? ORDER BY seq",
                                   (last_seq,)).fetchall()
            finally:
                con.close()
        except sqlite3.Error:
            return last_seq
        for seq, kind, priority, body in rows:
            last_seq = seq
            self.stored[kind] = self.stored.get(kind, 0) + 1
            if kind not in QUIET_KINDS:
                self.narrator.say("agent", f"stored {describe(kind, json.loads(body))}  [priority {priority}]")
        return last_seq

    def _platform(self, collector, seen: int) -> int:
        messages = collector.snapshot()
        for message in messages[seen:]:
            for record in message.records:
                if record.get("kind") in QUIET_KINDS:
                    continue
                self.narrator.count("at_platform")
                self.narrator.say("platform", f"received {record['kind']} on {message.topic}")
        return len(messages)

    def _pins(self, pins, site, levels: dict[str, int]) -> None:
        for name in WATCHED_PINS:
            if name not in site.pins:
                continue
            pin, active, _ = site.pins[name]
            try:
                changes = pins.changes(pin)
            except (OSError, RuntimeError):
                return
            if not changes:
                continue
            on = int(round(changes[-1][1]) == active)
            if levels.get(name, 0) != on:
                levels[name] = on
                self.narrator.say("hardware", f"{name.replace('.', ' ')} {'ON' if on else 'off'}")

    # the end

    def _summary(self, rig: Rig, result) -> None:
        say = self.narrator.say
        say("demo", f"done in {result.duration_s:.0f} s: {result.status}"
                    + (f" ({result.reason})" if result.reason else ""))
        for check in result.checks:
            measured = f"{check.measured_ms:7.0f} ms" if check.measured_ms is not None else " " * 10
            say("check", f"{check.status:<7} {measured}  {check.name}"
                         + (f"  ({check.detail})" if check.detail and check.status != PASS else ""))
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.stored.items()))
        say("summary", f"records stored in SQLite: {sum(self.stored.values())} ({kinds or 'none'})")
        if rig.collector is not None:
            say("summary", f"records at the platform: {len(rig.collector.uuids())} distinct")
        for note in result.notes:
            if not note.startswith("Traceback"):
                say("note", note.strip().splitlines()[-1])
        if result.status in (FAIL, ERROR):
            if result.agent_log_tail:
                say("agent log", "last lines:\n" + result.agent_log_tail)
            raise DemoFailed(1)


def describe(kind: str, data: dict) -> str:
    """One line for a record, from its public fields (the personal ones stay sealed)."""
    lane = data.get("lane", "")
    if kind == "plate_read" and data.get("has_plate") is False:
        return f"vehicle at {lane} with no plate read ({data.get('plate_no')}): the guard must look"
    if kind == "plate_read":
        return (f"plate {data.get('plate_no')} ({data.get('plate_color_name') or data.get('plate_color')}) "
                f"at {lane}, confidence {data.get('confidence')}")
    if kind == "card_read":
        return f"ID card read at {data.get('reader')} ({data.get('card_kind', 'card')}; name and number sealed)"
    if kind == "access_decision":
        return f"decision {str(data.get('outcome', '')).upper()} at {lane} by rule {data.get('rule')}"
    if kind == "barrier":
        return f"barrier {lane} {data.get('action')} (cause: {data.get('cause')})"
    if kind == "alarm":
        drill = " (DRILL)" if data.get("drill") else ""
        return f"ALARM{drill} button {data.get('button')} at {data.get('location')}"
    if kind == "alert":
        return f"ALERT {data.get('reason') or data.get('list') or ''} at {lane} {data.get('plate_no', '')}".rstrip()
    if kind == "fault":
        return f"fault in {data.get('subsystem')}: {data.get('condition')} {data.get('detail', '')}".rstrip()
    return f"{kind} {json.dumps(data, ensure_ascii=False)[:100]}"
