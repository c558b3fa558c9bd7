"""A small in-process event bus: subsystems ask each other for things without importing each other.

Handlers run in the publisher's thread and must return quickly (hand long work to
a thread of their own). A handler that raises is logged and does not stop the others.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Callable

log = logging.getLogger("gate.bus")

# The topics in use, and what their payloads carry:
BARRIER_OPEN = "barrier.open"        # lane, cause (decision|guard|command|demo), ref (record uuid)
BARRIER_CLOSE = "barrier.close"      # lane, cause, ref
GUARD_ATTENTION = "guard.attention"  # lane, reason (ask|watchlist|fault), ref
DRILL = "drill"                      # on (bool), source (cli|schedule|command), until (epoch or None)
PRESENCE = "lane.presence"           # lane, present (bool)
RESYNC = "sync.resync"               # (none)
LISTS_UPDATED = "lists.updated"      # version
ALARM_UNSTORED = "alarm.unstored"    # record: an alarm the store refused or holds up, for the sync to send from memory
ALARM_SENT_FROM_MEMORY = "alarm.sent_from_memory"   # uuid: the broker confirmed one of those

GUARD_ATTENTION_EVERY_S = 10.0
"""While the store refuses a lane's reads (cards, plates), its guard is asked again at most this
often: a card left on the reader, or a vehicle at the barrier, is read again and again."""


class Throttle:
    """Yes to each key at most once every `every_s` seconds, and at once again after reset(key)."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self._last: dict = {}

    def allow(self, key=None) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            return False
        self._last[key] = now
        return True

    def reset(self, key=None) -> None:
        self._last.pop(key, None)


class Bus:
    def __init__(self):
        self._handlers: dict[str, list[Callable]] = defaultdict(list)
        self._lock = threading.Lock()

    def subscribe(self, topic: str, handler: Callable[..., None]) -> None:
        with self._lock:
            self._handlers[topic].append(handler)

    def unsubscribe(self, topic: str, handler: Callable[..., None]) -> None:
        with self._lock:
            if handler in self._handlers[topic]:
                self._handlers[topic].remove(handler)

    def publish(self, topic: str, **payload) -> int:
        """Deliver to every handler; returns how many there were."""
        with self._lock:
            handlers = list(self._handlers[topic])
        for handler in handlers:
            try:
                handler(**payload)
            except Exception:
                log.exception("handler for %s failed", topic)
        return len(handlers)
