"""The supervisor: starts each subsystem, restarts one that dies, keeps the alarm path up.

A subsystem is anything with `name`, `start()`, `stop()` and `health()`; it
runs its own threads (or process) and reports its state through `health()`.
The supervisor polls them, restarts a dead one with capped exponential
backoff, writes a fault record when one fails, and talks to systemd.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("gate.supervisor")

OK, STARTING, DEGRADED, FAULT, STOPPED = "ok", "starting", "degraded", "fault", "stopped"


class Subsystem(Protocol):
    name: str

    def start(self) -> None:
        """Start working and return at once (spawn threads or a process)."""

    def stop(self) -> None:
        """Stop and release the hardware; safe to call twice."""

    def health(self) -> dict:
        """{"state": ok|starting|degraded|fault|stopped, "detail": str, ...}; `fault` means
        dead and to be restarted, `degraded` means running but impaired."""


@dataclass
class _Slot:
    subsystem: Subsystem
    critical: bool = False
    failures: int = 0
    next_try: float = 0.0
    started: bool = False
    last: dict = field(default_factory=lambda: {"state": STARTING, "detail": ""})


def notify(message: str) -> bool:
    """sd_notify(3) without libsystemd: a datagram to $NOTIFY_SOCKET, if systemd gave one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
        return True
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)
        return False


class Supervisor:
    def __init__(self, store=None, backoff_start: float = 1.0, backoff_max: float = 60.0,
                 poll_s: float = 1.0):
        self.store = store
        self.slots: list[_Slot] = []
        self.backoff_start, self.backoff_max, self.poll_s = backoff_start, backoff_max, poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, subsystem: Subsystem, critical: bool = False) -> None:
        """Register a subsystem; `critical` ones (the alarm path) start first."""
        slot = _Slot(subsystem, critical)
        if critical:
            self.slots.insert(sum(s.critical for s in self.slots), slot)
        else:
            self.slots.append(slot)

    def start(self) -> None:
        for slot in self.slots:
            self._try_start(slot)
        self._publish_states()
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        self._watchdog_s = watchdog_usec / 2e6 if watchdog_usec else 0.0
        notify("READY=1\nSTATUS=" + self.summary())
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        self._thread.start()

    def _try_start(self, slot: _Slot) -> None:
        name = slot.subsystem.name
        try:
            slot.subsystem.start()
            slot.started = True
            slot.last = {"state": STARTING, "detail": ""}
            log.info("subsystem %s started", name)
        except Exception as exc:  # a subsystem's failure must not stop the others
            self._failed(slot, f"start failed: {exc}")

    def _failed(self, slot: _Slot, detail: str) -> None:
        slot.failures += 1
        slot.started = False
        delay = min(self.backoff_max, self.backoff_start * 2 ** (slot.failures - 1))
        slot.next_try = time.monotonic() + delay
        slot.last = {"state": FAULT, "detail": detail, "retry_in_s": round(delay, 1)}
        name = slot.subsystem.name
        log.error("subsystem %s failed: %s; restarting in %.1f s", name, detail, delay)
        if self.store is not None:
            try:
                self.store.add("fault", {"subsystem": name, "condition": "failed", "detail": detail,
                                         "restart_in_s": round(delay, 1), "failures": slot.failures})
            except Exception as exc:
                log.error("cannot record the fault of %s: %s", name, exc)
        try:
            slot.subsystem.stop()
        except Exception:
            log.exception("stopping failed subsystem %s", name)

    def check(self) -> None:
        """One round: restart what is due, record state changes."""
        now = time.monotonic()
        for slot in self.slots:
            if not slot.started:
                if now >= slot.next_try:
                    self._try_start(slot)
                continue
            try:
                health = slot.subsystem.health()
            except Exception as exc:
                health = {"state": FAULT, "detail": f"health check raised {exc}"}
            if health.get("state") == FAULT:
                self._failed(slot, health.get("detail", "fault"))
                continue
            if health.get("state") == OK and slot.failures:
                log.info("subsystem %s recovered", slot.subsystem.name)
                slot.failures = 0
            slot.last = health
        self._publish_states()

    def _loop(self) -> None:
        last_watchdog = 0.0
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:
                log.exception("supervisor round failed")
            if self._watchdog_s and time.monotonic() - last_watchdog >= self._watchdog_s:
                notify("WATCHDOG=1\nSTATUS=" + self.summary())
                last_watchdog = time.monotonic()

    def states(self) -> dict:
        return {slot.subsystem.name: slot.last for slot in self.slots}

    def summary(self) -> str:
        return ", ".join(f"{name} {info.get('state')}" for name, info in self.states().items())

    def _publish_states(self) -> None:
        if self.store is not None:
            try:
                self.store.state_set("subsystems", self.states())
            except Exception as exc:
                log.warning("cannot save subsystem states: %s", exc)

    def stop(self) -> None:
        """Stop in reverse order: the alarm path (started first) stops last."""
        notify("STOPPING=1")
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        for slot in reversed(self.slots):
            try:
                slot.subsystem.stop()
            except Exception:
                log.exception("stopping %s", slot.subsystem.name)
            slot.last = {"state": STOPPED, "detail": ""}
        self._publish_states()
