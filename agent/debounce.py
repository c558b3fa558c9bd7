"""Debouncing in software, with the time passed in (gpiozero's bounce_time is not
reliable on mock pins, and the logic must be testable without hardware).

Both kinds act on the *first* edge, so debouncing adds no latency to a press.
"""
from __future__ import annotations


class PressDetector:
    """Turns a contact's raw edges into distinct presses.

    A press counts at its first edge, at once. A later press counts only if the
    contact was released for at least `debounce_s` before it: bounces on press
    or release, and glitches while held, never make a second press.
    """

    def __init__(self, debounce_s: float, pressed: bool = False):
        self.debounce_s = debounce_s
        self.pressed = pressed
        self.released_at: float | None = None if pressed else float("-inf")
        """None while no release has been seen (a contact found pressed needs a release first)."""

    def edge(self, pressed: bool, at: float) -> bool:
        """Feed one raw edge; True if it starts a new press."""
        if pressed == self.pressed:
            return False
        self.pressed = pressed
        if not pressed:
            self.released_at = at
            return False
        return self.released_at is not None and at - self.released_at >= self.debounce_s


class Debounce:
    """A two-way input (loop, position switch): a change is reported at once, then edges
    are ignored for `window_s`; if the input settled elsewhere by the end of the
    window, `settle()` reports that."""

    def __init__(self, window_s: float, state: bool = False):
        self.window_s = window_s
        self.state = state
        self.raw = state
        self.locked_until = float("-inf")

    def edge(self, raw: bool, at: float) -> bool | None:
        """Feed one raw edge; the new state if it is reported now, else None."""
        self.raw = raw
        if at < self.locked_until or raw == self.state:
            return None
        return self._report(raw, at)

    def settle(self, now: float) -> bool | None:
        """Call at or after `due`: the new state if the input settled elsewhere, else None."""
        if now >= self.locked_until and self.raw != self.state:
            return self._report(self.raw, now)
        return None

    @property
    def due(self) -> float | None:
        """When `settle` has something to decide, or None."""
        return self.locked_until if self.raw != self.state else None

    def _report(self, state: bool, at: float) -> bool:
        self.state = state
        self.locked_until = at + self.window_s
        return state
