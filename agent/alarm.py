"""One-key alarm buttons: the siren at once, every press written durably, then sent first.

The press path, in the thread that saw the edge (gpiozero's callback thread, on
a Pi the one thread that sees every contact): debounce in memory, turn the siren
on (microseconds: the help the person who pressed hears must not wait for a
disk), build the record and hand it to the panel's store worker, which puts it
first, before anything else it has to write (one short SQLite transaction on its
own connection: the first record in the outbox, priority 0). Nothing on that
path waits for a disk, the camera pipeline, the sync or the purge; the one lock
it takes (the siren's deadline) is held for a GPIO write, never for I/O.

A press the store refuses (an SD card failing, a file system remounted
read-only) is kept in memory, retried every timer round, and handed to the sync
on the bus (ALARM_UNSTORED) to be sent from memory meanwhile: a broken store
must not keep an alarm from the platform. So is one whose write has not
committed within WRITE_STALL_S (a stalled card). Once stored it is sent again
from the outbox, with its `seq` (the platform de-duplicates by UUID).

Two threads of the panel's own keep the disk away from the rest: the sender
("alarm-sender", woken by each press) hands alarms to the sync from memory and
switches the siren and ack lamp off; it never touches the store. The store
worker ("alarm-store") writes the new alarms first, then the retries, tamper
records and the drill state's refresh (a drill command from the platform is written
on the thread that delivers it, the sync's downlink). A stalled card can hold one of its writes for the
SQLite busy timeout; neither the next edge nor the memory send of a new press
waits behind it.

Presses (documented in docs/gpio.md):
- a press counts at its first edge; bounces and glitches shorter than the
  button's debounce_s never make a second press;
- a held button is one alarm, however long it is held;
- every distinct press after a release is a new alarm record: nothing is
  coalesced away. A press within alarm.repeat_window_s of the previous alarm of
  the same button carries `repeat_of` (the first alarm's uuid) and `press`
  (its number in that incident), so the platform can group them;
- a button found pressed when the agent starts is not an alarm (a stuck or cut
  contact would otherwise raise one at every restart): it is a "tamper" record
  (condition active_at_start), and the button must be released before a press
  counts.
- an NC button whose contact stays open for tamper_s is a cut wire: a "tamper"
  record (cut), and another (restored) when it closes again. The opening itself
  already raised an alarm: an NC loop fails towards alarming.

Drill mode marks alarms with drill=true. It is on while a request (from
`gate-agent drill on`, or bus DRILL from a signed command, kept in the store
under "drill_request" so it survives a restart) has not expired, or while a
drills.schedule window is open. The agent publishes the effective state under
"drill" and shows it on the drill lamp.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from agent import bus as topics
from agent.debounce import PressDetector
from agent.records import format_time, new_record

log = logging.getLogger("gate.alarm")

DRILL_MAX_S = 8 * 3600
"""A drill request without an end (or a longer one) ends after this: a drill left on
would mark real alarms as drills."""

TICK_S = 0.1
WRITE_STALL_S = 0.5
"""An alarm whose write has not committed after this long is sent from memory meanwhile: an SD
card can stall a commit for seconds, and the platform must have the alarm within 2 s."""
DRILL_REFRESH_S = 0.5
STOP_JOIN_S = 2.0


# --- drill mode -----------------------------------------------------------------

def parse_window(text: str, tz: str = "Asia/Shanghai") -> tuple[float, float]:
    """'YYYY-MM-DDTHH:MM/MINUTES' in the device's time zone -> (start, end) epoch seconds."""
    try:
        start_text, minutes_text = text.split("/")
        start = datetime.strptime(start_text, "%Y-%m-%dT%H:%M").replace(tzinfo=ZoneInfo(tz))
        minutes = int(minutes_text)
    except (ValueError, AttributeError):
        raise ValueError(f"{text!r}: expected 'YYYY-MM-DDTHH:MM/MINUTES', "
                         "e.g. '2026-03-15T10:00/30'") from None
    if not 1 <= minutes <= DRILL_MAX_S // 60:
        raise ValueError(f"{text!r}: minutes must be from 1 to {DRILL_MAX_S // 60}")
    return start.timestamp(), start.timestamp() + minutes * 60


def schedule_problem(value: list) -> str | None:
    """Config check for drills.schedule: the first bad entry, explained."""
    for item in value:
        try:
            parse_window(item)
        except ValueError as exc:
            return str(exc)
    return None


class Drill:
    """Whether drill mode is on: a stored request, or a scheduled window."""

    def __init__(self, store, schedule: list[str] = (), tz: str = "Asia/Shanghai"):
        self.store = store
        self.windows = [parse_window(item, tz) for item in schedule]
        self.request: dict = {}

    def refresh(self) -> None:
        """Re-read the request from the store (the CLI writes it from another process)."""
        self.request = self.store.state_get("drill_request", {}) or {}

    def set(self, on: bool, source: str, until: float | None = None, now: float | None = None) -> dict:
        """Request drill mode on (until an epoch time, at most DRILL_MAX_S from now) or off."""
        now = time.time() if now is None else now
        if on:
            if until is None or until > now + DRILL_MAX_S:
                log.warning("drill request from %s without an end within %d h: ends in %d h",
                            source, DRILL_MAX_S // 3600, DRILL_MAX_S // 3600)
                until = now + DRILL_MAX_S
        request = {"on": bool(on), "source": source, "until": until if on else None, "set_at": now}
        self.store.state_set("drill_request", request)
        self.request = request
        return request

    def state(self, now: float | None = None) -> dict:
        """{"on", "source", "until"} as of now: pure computation, safe on the alarm path."""
        now = time.time() if now is None else now
        request = self.request
        if request.get("on") and (request.get("until") or 0) > now:
            return {"on": True, "source": request.get("source", "cli"), "until": request["until"]}
        for start, end in self.windows:
            if start <= now < end:
                return {"on": True, "source": "schedule", "until": end}
        return {"on": False, "source": None, "until": None}


# --- the panel ---------------------------------------------------------------------

class Button:
    """One alarm button's state; touched by the edge thread and the panel's store worker."""

    def __init__(self, spec, contact):
        self.spec = spec
        self.name, self.location, self.wiring = spec.name, spec.location, spec.wiring
        self.contact = contact
        self.lock = threading.Lock()
        pressed = self.pressed_now()
        self.detector = PressDetector(spec.debounce_s, pressed=pressed)
        self.raw_pressed = pressed
        self.raw_since = time.monotonic()
        self.cut_reported = False
        self.incident: str | None = None
        self.incident_at = float("-inf")
        self.presses = 0

    def pressed_now(self) -> bool:
        closed = self.contact.is_active
        return closed if self.wiring == "no" else not closed


class AlarmPanel:
    """The alarm subsystem: buttons, siren, acknowledgement and drill lamps."""

    name = "alarm"

    def __init__(self, config, store, bus, open_pins):
        self.config = config
        self.alarm = config.alarm
        self.store = store
        self.bus = bus
        self.open_pins = open_pins
        self.tz = config.device.timezone
        self.drill = Drill(store, config.drills.schedule, self.tz)
        self.pins = None
        self.buttons: list[Button] = []
        self.siren = self.ack_lamp = self.drill_lamp = None
        self._lock = threading.Lock()
        """Guards the siren and ack lamp deadlines (with the switching they time) and the
        alarms held in memory; never held while the store or the bus is called."""
        self._siren_off_at = self._ack_off_at = None
        self._unacked: set[str] = set()
        self._unstored: list = []
        self._writing: dict[str, tuple] = {}          # uuid -> (record, monotonic start of its write)
        self._sent_from_memory: set[str] = set()
        self._stop = threading.Event()
        self._wake_sender = threading.Event()
        self._to_store: queue.SimpleQueue = queue.SimpleQueue()
        """The record of each press, for the store worker to write."""
        self._thread: threading.Thread | None = None
        self._sender: threading.Thread | None = None
        self._next_drill_refresh = 0.0
        self._drill_shown: tuple | None = None
        self._round_error: str | None = None
        self._send_error: str | None = None

    # --- lifecycle ---

    def start(self) -> None:
        self._stop = threading.Event()  # a worker left in a stalled write by stop() ends with its own
        self._round_error = self._send_error = None
        # each start's own queue (a worker stopped mid-write keeps its own), made before the
        # buttons are attached: a press while they are is written, and sent from memory by the
        # sender started here, even if attaching waits on a stalled card
        self._to_store = queue.SimpleQueue()
        with self._lock:
            left = [record for record, _ in self._writing.values()]
            self._writing = {record.uuid: (record, time.monotonic()) for record in left}
        for record in left:     # pressed while the last stop() ended: written now
            self._to_store.put(record)
        self._sender = threading.Thread(target=self._send_loop, args=(self._stop,),
                                        name="alarm-sender", daemon=True)
        self._sender.start()
        self.pins = self.open_pins()
        try:
            self._open()
        except Exception:
            self._stop.set()
            self._wake_sender.set()
            self.pins.close()
            self.pins, self.buttons = None, []
            raise
        self.bus.subscribe(topics.DRILL, self._on_drill)
        self.bus.subscribe(topics.ALARM_SENT_FROM_MEMORY, self._on_sent_from_memory)
        self.store.sent_listeners.append(self._on_sent)
        self._thread = threading.Thread(target=self._run, args=(self._stop, self._to_store),
                                        name="alarm-store", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        alarm = self.alarm
        self.siren = self.pins.output("alarm.siren", alarm.siren)
        self.ack_lamp = self.pins.output("alarm.ack_lamp", alarm.ack_lamp)
        self.drill_lamp = self.pins.output("alarm.drill_lamp", alarm.drill_lamp)
        found = [o.name for o in (self.siren, self.ack_lamp, self.drill_lamp) if o and o.found_active]
        if found:
            self.store.add("fault", {"subsystem": self.name, "condition": "outputs_found_active",
                                     "detail": f"{', '.join(found)} found energised at start "
                                               "(left on by a crash?); driven off"})
        self._unacked = self._unsent_alarms()
        self.buttons = []
        for i, spec in enumerate(alarm.buttons):
            contact = self.pins.button(f"alarm.buttons[{i}] {spec.name}", spec.pin, spec.wiring)
            button = Button(spec, contact)
            self.buttons.append(button)
            if button.detector.pressed:
                self._found_pressed(button)
            contact.when_changed = lambda closed, at, b=button: self.on_edge(b, closed, at)
            self.on_edge(button, contact.is_active, time.monotonic())  # an edge while attaching
        self.drill.refresh()
        self._show_drill(time.time())
        log.info("alarm panel up: %d button(s), siren %s, drill %s", len(self.buttons),
                 "fitted" if self.siren else "not fitted",
                 "ON" if self.drill.state()["on"] else "off")

    def _found_pressed(self, button: Button) -> None:
        condition = "stuck closed or held" if button.wiring == "no" else "open: held or cut wire"
        log.warning("alarm button %s found pressed at start (%s): not an alarm; "
                    "it must be released first", button.name, condition)
        self.store.add("tamper", {"source": "alarm_button", "condition": "active_at_start",
                                  "button": button.name, "location": button.location,
                                  "detail": condition})

    def _unsent_alarms(self) -> set[str]:
        rows = self.store.db.execute(
            "SELECT uuid FROM records WHERE kind = 'alarm' AND sent_at IS NULL").fetchall()
        return {uuid for (uuid,) in rows}

    def stop(self) -> None:
        self._stop.set()
        self._wake_sender.set()
        self._to_store.put(None)
        for thread in (self._sender, self._thread):
            if thread and thread is not threading.current_thread():
                thread.join(timeout=STOP_JOIN_S)
        worker_stuck = bool(self._thread and self._thread.is_alive())
        if worker_stuck:
            log.warning("alarm store worker still in a store write after %.0f s (a stalled card?): "
                        "it ends when the write returns", STOP_JOIN_S)
        self._thread = self._sender = None
        for button in self.buttons:
            button.contact.when_changed = None
        if not worker_stuck:
            self._write_late_presses()
        self.bus.unsubscribe(topics.DRILL, self._on_drill)
        self.bus.unsubscribe(topics.ALARM_SENT_FROM_MEMORY, self._on_sent_from_memory)
        if self._on_sent in self.store.sent_listeners:
            self.store.sent_listeners.remove(self._on_sent)
        if self.pins:
            active = [o.name for o in (self.siren, self.ack_lamp, self.drill_lamp) if o and o.is_active]
            if active:
                log.info("stopping: %s driven off", ", ".join(active))
            self.pins.close()
            self.pins = None
        self.buttons = []

    def _write_late_presses(self) -> None:
        """Alarms pressed after the store worker emptied its queue and before the buttons were
        let go, written here (stop may wait for a disk); refused, they stay with the retries
        of the next start."""
        with self._lock:
            late = [record for record, _ in self._writing.values()]
        for record in late:
            self._write_alarm(record)

    def health(self) -> dict:
        if self.pins is None:
            return {"state": "stopped", "detail": ""}
        for thread, what in ((self._thread, "store"), (self._sender, "sender")):
            if thread is None or not thread.is_alive():
                return {"state": "fault", "detail": f"the alarm {what} thread is not running"}
        problems = [f"button {b.name} wire cut" for b in self.buttons if b.cut_reported]
        problems += [error for error in (self._round_error, self._send_error) if error]
        with self._lock:
            unstored = list(self._unstored)
            held_up = sum(time.monotonic() - started >= WRITE_STALL_S for _, started in self._writing.values())
        if held_up:
            problems.append(f"{held_up} alarm write(s) held up by the store for over {WRITE_STALL_S} s "
                            "(sent from memory meanwhile)")
        if unstored:
            confirmed = sum(r.uuid in self._sent_from_memory for r in unstored)
            problems.append(f"{len(unstored)} alarm(s) not stored yet "
                            f"({confirmed} of them confirmed by the platform, sent from memory)")
        drill = self.drill.state()
        detail = f"{len(self.buttons)} button(s)" + (", DRILL MODE" if drill["on"] else "")
        if problems:
            return {"state": "degraded", "detail": "; ".join(problems), "drill": drill["on"]}
        return {"state": "ok", "detail": detail, "drill": drill["on"]}

    # --- the press path ---

    def on_edge(self, button: Button, closed: bool, at: float) -> None:
        """A raw edge of a button's contact (gpiozero's thread): a new press sounds the siren,
        then is handed to the store worker (the edge thread never waits for a disk)."""
        pressed = closed if button.wiring == "no" else not closed
        with button.lock:
            if pressed != button.raw_pressed:
                button.raw_pressed, button.raw_since = pressed, at
            if not button.detector.edge(pressed, at):
                return
            self._siren_on(at)
            try:
                record = self._alarm_record(button, at)
            except Exception as exc:
                log.critical("ALARM from button %s (%s) LOST: no record could be made: %s",
                             button.name, button.location, exc)
                return
        self._hand_over(record)

    def _hand_over(self, record) -> None:
        """Hand the alarm to the store worker (the edge thread never waits for a disk); the
        sender, woken here, sends it from memory should its write not commit in WRITE_STALL_S."""
        self._unacked.add(record.uuid)
        with self._lock:
            self._writing[record.uuid] = (record, time.monotonic())
        self._to_store.put(record)
        self._wake_sender.set()

    def _write_alarm(self, record) -> None:
        """The alarm into the store, or, refused, kept for the retries and the sender."""
        where = f"button {record.data['button']} ({record.data['location']})"
        try:
            self.store.put(record)
        except Exception as exc:
            log.critical("ALARM from %s NOT STORED (%s): sending %s from memory, retrying the store",
                         where, exc, record.uuid)
            with self._lock:
                self._writing.pop(record.uuid, None)
                self._unstored.append(record)
            self._wake_sender.set()
            return
        with self._lock:
            self._writing.pop(record.uuid, None)
        self._sent_from_memory.discard(record.uuid)
        log.warning("ALARM: %s%s stored as %s", where, " [drill]" if record.data["drill"] else "", record.uuid)

    def _no_checkpoints_here(self) -> None:
        """The store worker's connection never runs a WAL checkpoint: an alarm commit must not
        pay for copying pages another subsystem (a purge, a burst of reads) wrote. The other
        connections keep SQLite's automatic checkpoints."""
        try:
            self.store.db.execute("PRAGMA wal_autocheckpoint = 0")
        except Exception as exc:  # a nicety: never let it stop the alarm
            log.warning("cannot turn off checkpoints on the alarm's connection: %s", exc)

    def _alarm_record(self, button: Button, at: float):
        wall = time.time()
        drill = self.drill.state(wall)
        repeat = at - button.incident_at <= self.alarm.repeat_window_s and button.incident
        button.presses = button.presses + 1 if repeat else 1
        data = {"button": button.name, "location": button.location, "drill": drill["on"],
                "pressed_at": format_time(wall, self.tz), "wiring": button.wiring,
                "press": button.presses, "repeat_of": button.incident if repeat else None}
        if drill["on"]:
            data["drill_source"] = drill["source"]
        record = new_record("alarm", data, device_id=self.store.device_id, site=self.store.site,
                            tz=self.tz, at=wall)
        if not repeat:
            button.incident = record.uuid
        button.incident_at = at
        return record

    def _siren_on(self, at: float) -> None:
        """Switch on and set the deadline under the lock the sender switches off under: a
        press while the siren goes off must leave it sounding."""
        if self.siren is None or self.alarm.siren_s <= 0:
            return
        off_at = at + self.alarm.siren_s
        with self._lock:
            try:
                self.siren.on()
            except Exception as exc:   # the record must still be written
                log.error("siren did not switch on: %s", exc)
                return
            if self._siren_off_at is None or off_at > self._siren_off_at:
                self._siren_off_at = off_at
        self._wake_sender.set()

    def _on_sent(self, uuids: list[str]) -> None:
        """The broker confirmed these records (sync's thread): light the ack lamp for alarms.
        Set operations are atomic in CPython; the panel's lock is held only for the lamp."""
        confirmed = self._unacked.intersection(uuids)
        if not confirmed:
            return
        self._unacked.difference_update(confirmed)
        log.info("platform confirmed alarm(s) %s", ", ".join(sorted(confirmed)))
        if self.ack_lamp is not None:
            with self._lock:
                self.ack_lamp.on()
                self._ack_off_at = time.monotonic() + self.alarm.ack_lamp_s
            self._wake_sender.set()

    def _on_drill(self, on: bool, source: str = "command", until: float | None = None, **_):
        self.drill.set(on, source, until)
        self._show_drill(time.time())

    # --- the sender: what must not wait for the store ---

    def _send_loop(self, stop: threading.Event) -> None:
        """Runs until stopped, sleeping until a press wakes it or the next thing is due."""
        while True:
            self._wake_sender.clear()   # before looking: a press or stop from now on wakes the wait
            if stop.is_set():
                return
            try:
                wait_s = self.send_round(time.monotonic())
                self._send_error = None
            except Exception as exc:
                if self._send_error is None:
                    log.exception("alarm sender round failed")
                self._send_error = f"sender round failed: {exc}"
                wait_s = TICK_S
            self._wake_sender.wait(wait_s)

    def send_round(self, now: float) -> float | None:
        """Send from memory the alarms refused or held up, switch off the siren and ack lamp
        when due, as of monotonic time `now`; no store call. Returns the seconds until the
        next round is due, None when only a press (or a stop) has anything for it."""
        with self._lock:
            stalled = [record for record, started in self._writing.values()
                       if now - started >= WRITE_STALL_S]
            waiting = stalled + self._unstored
            due = [started + WRITE_STALL_S for _, started in self._writing.values()
                   if now - started < WRITE_STALL_S]
        for record in waiting:
            self._send_from_memory(record)
        if any(record.uuid not in self._sent_from_memory for record in waiting):
            due.append(now + TICK_S)
        with self._lock:
            self._switch_off_when_due(now)
            due += [at for at in (self._siren_off_at, self._ack_off_at) if at is not None]
        return max(0.0, min(due) - now) if due else None

    def _switch_off_when_due(self, now: float) -> None:
        """Under self._lock: the siren and the ack lamp off once their time is up."""
        if self._siren_off_at is not None and now >= self._siren_off_at:
            self._siren_off_at = None
            if self.siren:
                self.siren.off()
        if self._ack_off_at is not None and now >= self._ack_off_at:
            self._ack_off_at = None
            if self.ack_lamp:
                self.ack_lamp.off()

    def _send_from_memory(self, record) -> None:
        """Ask the sync to send an alarm the store refused or holds up. Asked again every round
        until the platform has it: a restarted sync has forgotten what it was handed."""
        if record.uuid not in self._sent_from_memory:
            self.bus.publish(topics.ALARM_UNSTORED, record=record)

    # --- the store worker: new alarms, then tamper, drill, retries ---

    def _run(self, stop: threading.Event, to_store: queue.SimpleQueue) -> None:
        """Runs until stopped, writing each alarm handed to it at once and a round of the timers
        every TICK_S: a failed round (a tamper record the store refused, say) is logged and
        shown as degraded, never a reason to take the buttons down. Alarms handed to it before
        the stop are written before it ends."""
        self._no_checkpoints_here()
        next_round = time.monotonic() + TICK_S
        while True:
            try:
                alarm = to_store.get(timeout=max(0.0, next_round - time.monotonic()))
            except queue.Empty:
                alarm = None
            if alarm is not None:
                self._write_alarm(alarm)
            if stop.is_set():
                break
            if time.monotonic() >= next_round:
                next_round = time.monotonic() + TICK_S
                self._round()
        while not to_store.empty():
            alarm = to_store.get()
            if alarm is not None:
                self._write_alarm(alarm)

    def _round(self) -> None:
        try:
            self.tick(time.monotonic())
            self._round_error = None
        except Exception as exc:
            if self._round_error is None:
                log.exception("alarm timer round failed")
            self._round_error = f"timer round failed: {exc}"

    def tick(self, now: float) -> None:
        """One round of the timers that write to the store, as of monotonic time `now`. Any
        write here may wait seconds on a stalled card: nothing the 2 s depend on is here."""
        for button in self.buttons:
            if button.wiring == "nc":
                self._check_wire(button, now)
        if self._unstored:
            self._retry_unstored()
        if now >= self._next_drill_refresh:
            self._next_drill_refresh = now + DRILL_REFRESH_S
            self.drill.refresh()
            self._show_drill(time.time())

    def _check_wire(self, button: Button, now: float) -> None:
        with button.lock:
            open_s = now - button.raw_since
            if not button.cut_reported:
                cut = button.raw_pressed and open_s >= button.spec.tamper_s
            else:
                cut = button.raw_pressed  # restored only when the contact closes again
            if cut == button.cut_reported:
                return
        condition = "cut" if cut else "restored"
        self.store.add("tamper", {"source": "alarm_button", "condition": condition,
                                  "button": button.name, "location": button.location,
                                  "open_s": round(open_s, 1) if cut else None})
        button.cut_reported = cut  # only once recorded: a failed write is tried again next round
        log.error("alarm button %s (%s): wire %s", button.name, button.location, condition)

    def _retry_unstored(self) -> None:
        """Store the refused alarms, oldest first; the sender keeps sending them meanwhile."""
        while True:
            with self._lock:
                if not self._unstored:
                    return
                record = self._unstored[0]
            try:
                self.store.put(record)
            except Exception as exc:
                log.error("alarm %s still not stored: %s", record.uuid, exc)
                return
            with self._lock:
                self._unstored = [r for r in self._unstored if r.uuid != record.uuid]
            self._sent_from_memory.discard(record.uuid)
            log.warning("alarm %s stored late", record.uuid)

    def _on_sent_from_memory(self, uuid: str) -> None:
        """The broker confirmed an alarm sent from memory (sync's thread)."""
        self._sent_from_memory.add(uuid)
        self._on_sent([uuid])

    def _show_drill(self, now_wall: float) -> None:
        state = self.drill.state(now_wall)
        if self.drill_lamp is not None:
            (self.drill_lamp.on if state["on"] else self.drill_lamp.off)()
        seen = (state, self.drill.request.get("set_at"))
        if seen == self._drill_shown:
            return
        if self._drill_shown is None or state != self._drill_shown[0]:
            log.log(logging.WARNING if state["on"] else logging.INFO, "drill mode %s%s",
                    "ON" if state["on"] else "off", f" ({state['source']})" if state["on"] else "")
        self._drill_shown = seen
        # published for every new request too, so `gate-agent drill` sees it was picked up
        self.store.state_set("drill", dict(state, updated=now_wall))
