"""Lanes: barrier relays, their confirm inputs, vehicle presence, the guard's button and lamp.

Each lane is a small state machine (`Lane`) run by a thread of its own
(`LaneWorker`): raw edges from gpiozero's thread and requests from the bus are
queued to it, so a slow bus subscriber or a barrier record never holds up the
GPIO callback thread that also carries the alarm buttons, and two lanes never
wait on each other.

Relay meaning follows lanes[].fail_mode (docs/gpio.md has the wiring):
- secure: relay energised = barrier open. The agent stopping or losing power
  de-energises it, the barrier stays closed. Pulse or hold mode.
- safe (hold mode only): relay energised = barrier held closed. When the agent
  stops or power is lost the relay drops and the barrier opens.

Every actuation is a "barrier" record (lane, action, cause, ref, source),
written before the relay moves. Causes: decision, guard, command, demo (from
the bus), guard (manual_open button), hold_expired, start, stop.
"""
from __future__ import annotations

import logging
import queue
import threading
import time

from agent import bus as topics
from agent.debounce import Debounce, PressDetector

log = logging.getLogger("gate.lanes")


class Lane:
    """One lane's barrier state machine. Not thread-safe: one LaneWorker drives it.

    `record(kind, data) -> Record` writes durably; `publish(topic, **payload)` is the bus.
    Times are monotonic seconds from `clock` (a fake one drives the machine in tests);
    a pulse is timed from the moment the relay moved, after the record was written.
    """

    def __init__(self, spec, *, relay=None, confirm=None, presence=None, manual=None, lamp=None,
                 record, publish, clock=time.monotonic):
        self.spec = spec
        self.name = spec.name
        self.relay, self.lamp = relay, lamp
        self.record, self.publish, self.clock = record, publish, clock
        self.energised_opens = spec.fail_mode == "secure"
        self.is_open = False
        self.pulse_until: float | None = None
        self.hold_until: float | None = None
        self.confirm_by: float | None = None
        self.lamp_until: float | None = None
        self.fault: str | None = None
        self.last_open_ref: str | None = None
        self.confirm = Debounce(spec.barrier_confirm.debounce_s, confirm.is_active) if confirm else None
        self.presence = Debounce(spec.presence.debounce_s, presence.is_active) if presence else None
        self.manual = PressDetector(spec.manual_open.debounce_s, manual.is_active) if manual else None

    # --- requests ---

    def open(self, cause: str, ref: str | None = None, source: str = "bus") -> None:
        """Open the barrier: record, then pulse or hold the relay, then wait for the confirm input."""
        mode = self.spec.barrier_mode
        rec = self._record_barrier("open", cause, ref, source)
        self.last_open_ref = rec.uuid if rec else None
        self._lamp_off()
        if self.relay is None:
            log.warning("lane %s: open (%s) asked, but no barrier relay is fitted", self.name, cause)
            return
        self._drive(open_=True)
        now = self.clock()
        self.is_open = True
        if mode == "pulse":
            self.pulse_until = now + self.spec.pulse_s
        else:
            self.hold_until = now + self.spec.hold_s
        if self.confirm is not None:
            self.confirm_by = None if self.confirm.state else now + self.spec.confirm_timeout_s

    def close(self, cause: str, ref: str | None = None, source: str = "bus") -> None:
        """Close: release a held barrier (or hold a fail-safe one closed); cut a pulse short.
        In pulse mode the barrier controller closes the barrier itself."""
        self._record_barrier("close", cause, ref, source)
        self._lamp_off()
        self.pulse_until = self.hold_until = self.confirm_by = None
        self.is_open = False
        if self.relay is not None:
            self._drive(open_=False)

    def attention(self, reason: str, ref: str | None = None) -> None:
        """Light the guard lamp for guard_lamp_s (a barrier action puts it out sooner)."""
        if self.lamp is None:
            return
        self.lamp.on()
        self.lamp_until = self.clock() + self.spec.guard_lamp_s
        log.info("lane %s: guard attention (%s)", self.name, reason)

    # --- inputs (raw edges, debounced here) ---

    def on_presence(self, active: bool, at: float) -> None:
        if self.presence is not None:
            self._presence_changed(self.presence.edge(active, at))

    def on_confirm(self, active: bool, at: float) -> None:
        if self.confirm is not None:
            self._confirm_changed(self.confirm.edge(active, at))

    def on_manual(self, active: bool, at: float) -> None:
        if self.manual is not None and self.manual.edge(active, at):
            log.warning("lane %s: guard's manual open", self.name)
            self.open("guard", source="manual_open")

    def _presence_changed(self, state: bool | None) -> None:
        if state is not None:
            self.publish(topics.PRESENCE, lane=self.name, present=state)

    def _confirm_changed(self, state: bool | None) -> None:
        if state and self.confirm_by is not None:
            self.confirm_by = None
            if self.fault:
                log.info("lane %s: barrier confirms again; fault cleared", self.name)
            self.fault = None

    # --- time ---

    def tick(self, now: float) -> None:
        """Everything due by `now`: pulse end, hold release, confirm timeout, lamp, settling inputs."""
        if self.presence is not None:
            self._presence_changed(self.presence.settle(now))
        if self.confirm is not None:
            self._confirm_changed(self.confirm.settle(now))
        if self.pulse_until is not None and now >= self.pulse_until:
            self.pulse_until = None
            self._drive(open_=False)
        if self.hold_until is not None and now >= self.hold_until:
            self.close("hold_expired", self.last_open_ref, source="hold_s")
        if self.confirm_by is not None and now >= self.confirm_by:
            self.confirm_by = None
            self._not_confirmed()
        if self.lamp_until is not None and now >= self.lamp_until:
            self._lamp_off()

    def next_due(self) -> float | None:
        due = [t for t in (self.pulse_until, self.hold_until, self.confirm_by, self.lamp_until,
                           self.presence.due if self.presence else None,
                           self.confirm.due if self.confirm else None) if t is not None]
        return min(due, default=None)

    def _not_confirmed(self) -> None:
        self.fault = (f"barrier did not confirm opening within {self.spec.confirm_timeout_s} s")
        log.error("lane %s: %s", self.name, self.fault)
        rec = self._safe_record("fault", {"subsystem": "lanes", "condition": "barrier_not_confirmed",
                                          "detail": f"lane {self.name}: {self.fault}",
                                          "lane": self.name, "ref": self.last_open_ref})
        self.publish(topics.GUARD_ATTENTION, lane=self.name, reason="fault",
                     ref=rec.uuid if rec else None)

    # --- outputs ---

    def _drive(self, open_: bool) -> None:
        if self.relay is not None:
            (self.relay.on if open_ == self.energised_opens else self.relay.off)()

    def _lamp_off(self) -> None:
        self.lamp_until = None
        if self.lamp is not None:
            self.lamp.off()

    def _record_barrier(self, action: str, cause: str, ref: str | None, source: str):
        relay = "not fitted" if self.relay is None else (
            "energised" if (action == "open") == self.energised_opens else "released")
        return self._safe_record("barrier", {"lane": self.name, "action": action, "cause": cause,
                                             "ref": ref, "source": source, "relay": relay,
                                             "mode": self.spec.barrier_mode,
                                             "fail_mode": self.spec.fail_mode})

    def _safe_record(self, kind: str, data: dict):
        """Write a record; if the store fails the barrier still acts (the gate must keep working)."""
        try:
            return self.record(kind, data)
        except Exception as exc:
            log.error("lane %s: cannot store %s record %s: %s", self.name, kind, data, exc)
            return None

    # --- start and stop ---

    def start(self) -> None:
        """A fail-safe lane's barrier opened when the relay dropped: hold it closed again."""
        if self.relay is not None and not self.energised_opens:
            self.close("start", source="start")

    def stop(self) -> None:
        """Record what letting go of the relay does to the barrier; the driver drops it."""
        if self.relay is None:
            return
        if not self.energised_opens:
            self._record_barrier("open", "stop", None, "stop")
        elif self.relay.is_active:
            self._record_barrier("close", "stop", None, "stop")


class LaneWorker:
    """The thread that runs one Lane: queued edges and requests, and its timers."""

    def __init__(self, lane: Lane):
        self.lane = lane
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=f"lane-{lane.name}", daemon=True)
        self.error: str | None = None
        self._stopping = False

    def post(self, method: str, *args, **kwargs) -> None:
        """Run lane.<method>(*args, **kwargs) on the worker thread; returns at once."""
        self.queue.put((method, args, kwargs))

    def start(self) -> None:
        self.post("start")
        self.thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self.queue.put(None)
        self.thread.join(timeout)

    def _run(self) -> None:
        try:
            while True:
                due = self.lane.next_due()
                wait = None if due is None else max(0.0, due - time.monotonic())
                try:
                    item = self.queue.get(timeout=wait)
                except queue.Empty:
                    item = ()
                if item is None:
                    return
                if item:
                    method, args, kwargs = item
                    getattr(self.lane, method)(*args, **kwargs)
                self.lane.tick(time.monotonic())
        except Exception as exc:
            log.exception("lane %s worker failed", self.lane.name)
            self.error = f"lane {self.lane.name} worker failed: {exc}"


class Lanes:
    """The lanes subsystem: one Lane and LaneWorker per configured lane."""

    name = "lanes"

    def __init__(self, config, store, bus, open_pins):
        self.config = config
        self.store = store
        self.bus = bus
        self.open_pins = open_pins
        self.pins = None
        self.workers: dict[str, LaneWorker] = {}

    def start(self) -> None:
        self.pins = self.open_pins()
        try:
            for i, spec in enumerate(self.config.lanes):
                self.workers[spec.name] = self._open_lane(i, spec)
        except Exception:
            self.pins.close()
            self.pins, self.workers = None, {}
            raise
        self.bus.subscribe(topics.BARRIER_OPEN, self._on_open)
        self.bus.subscribe(topics.BARRIER_CLOSE, self._on_close)
        self.bus.subscribe(topics.GUARD_ATTENTION, self._on_attention)
        for worker in self.workers.values():
            worker.start()

    def _open_lane(self, i: int, spec) -> LaneWorker:
        key = f"lanes[{i}]"
        relay = self.pins.output(f"{key}.barrier", spec.barrier)
        lamp = self.pins.output(f"{key}.guard_lamp", spec.guard_lamp)
        found = [o.name for o in (relay, lamp) if o and o.found_active]
        if found:
            self.store.add("fault", {"subsystem": self.name, "condition": "outputs_found_active",
                                     "lane": spec.name,
                                     "detail": f"{', '.join(found)} found energised at start "
                                               "(left on by a crash?); driven off"})
        contacts = {part: self.pins.input(f"{key}.{part}", getattr(spec, part))
                    for part in ("barrier_confirm", "presence", "manual_open")}
        lane = Lane(spec, relay=relay, lamp=lamp, confirm=contacts["barrier_confirm"],
                    presence=contacts["presence"], manual=contacts["manual_open"],
                    record=self.store.add, publish=self.bus.publish)
        worker = LaneWorker(lane)
        handlers = {"barrier_confirm": "on_confirm", "presence": "on_presence", "manual_open": "on_manual"}
        for part, contact in contacts.items():
            if contact is not None:
                contact.when_changed = (lambda active, at, w=worker, m=handlers[part]:
                                        w.post(m, active, at))
                worker.post(handlers[part], contact.is_active, time.monotonic())  # missed while attaching
        return worker

    def _worker(self, lane: str, what: str) -> LaneWorker | None:
        worker = self.workers.get(lane)
        if worker is None:
            log.warning("%s for unknown lane %r ignored; lanes: %s", what, lane, ", ".join(self.workers))
        return worker

    def _on_open(self, lane: str, cause: str = "decision", ref: str | None = None, **_):
        if worker := self._worker(lane, "barrier open"):
            worker.post("open", cause, ref)

    def _on_close(self, lane: str, cause: str = "decision", ref: str | None = None, **_):
        if worker := self._worker(lane, "barrier close"):
            worker.post("close", cause, ref)

    def _on_attention(self, lane: str, reason: str = "ask", ref: str | None = None, **_):
        if worker := self._worker(lane, "guard attention"):
            worker.post("attention", reason, ref)

    def stop(self) -> None:
        for topic, handler in ((topics.BARRIER_OPEN, self._on_open), (topics.BARRIER_CLOSE, self._on_close),
                               (topics.GUARD_ATTENTION, self._on_attention)):
            self.bus.unsubscribe(topic, handler)
        for worker in self.workers.values():
            worker.stop()
            if not worker.thread.is_alive():
                try:
                    worker.lane.stop()
                except Exception:
                    log.exception("lane %s stop", worker.lane.name)
        if self.pins is not None:
            self.pins.close()
            self.pins = None
        self.workers = {}

    def health(self) -> dict:
        if self.pins is None:
            return {"state": "stopped", "detail": ""}
        errors = [w.error for w in self.workers.values() if w.error]
        if errors:
            return {"state": "fault", "detail": "; ".join(errors)}
        faults = [f"lane {w.lane.name}: {w.lane.fault}" for w in self.workers.values() if w.lane.fault]
        if faults:
            return {"state": "degraded", "detail": "; ".join(faults)}
        return {"state": "ok", "detail": f"{len(self.workers)} lane(s)"}
