"""GPIO through gpiozero: the only module that touches pins.

On a Raspberry Pi the pins come from gpiozero's default pin factory (lgpio on
a Pi 5 / Bookworm); in tests, the HIL rig and the demo they come from
gpiozero's MockFactory (`gate.pin_factory`), driven by the test.

The logic (agent/alarm.py, agent/lanes.py) never sees gpiozero: it gets
`Output`s (relays, siren, lamps) and `Contact`s (buttons, loops, switches)
from `GpioPins`, and is told of each raw edge through a callback. The
callback runs in gpiozero's thread (lgpio's callback thread on a Pi; the
thread that drives a mock pin in tests).

Outputs are opened without changing their level, read, then driven inactive,
so a relay left energised by a crashed agent is found, reported and released.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Callable

from gpiozero import BadPinFactory, CallbackSetToNone, DigitalInputDevice, DigitalOutputDevice

log = logging.getLogger("gate.gpio")


class Output:
    """A relay, siren or lamp. `found_active`: what it was when opened, before it was driven off."""

    def __init__(self, name: str, pin: int, active_high: bool, pin_factory=None):
        self.name = name
        self.pin = pin
        self.device = DigitalOutputDevice(pin, active_high=active_high, initial_value=None,
                                          pin_factory=pin_factory)
        self.found_active = bool(self.device.value)
        self.device.off()

    @property
    def is_active(self) -> bool:
        return bool(self.device.value)

    def on(self) -> None:
        self.device.on()

    def off(self) -> None:
        self.device.off()

    def close(self) -> None:
        """Drive inactive, then release the pin."""
        if not self.device.closed:
            self.device.off()
            self.device.close()

    def __repr__(self) -> str:
        return f"<Output {self.name} pin {self.pin} {'on' if self.is_active else 'off'}>"


class Contact:
    """A digital input: its logical state (`is_active`) and a callback on each raw edge.

    `pull_up` enables the internal pull-up (false: pull-down); `active_high` says
    which level means active. gpiozero ties the two (a pulled-up input is active
    low), so the combination it can't express is inverted here.
    """

    def __init__(self, name: str, pin: int, *, pull_up: bool, active_high: bool, pin_factory=None):
        self.name = name
        self.pin = pin
        self.device = DigitalInputDevice(pin, pull_up=pull_up, bounce_time=None,
                                         pin_factory=pin_factory)
        self._invert = active_high == pull_up
        self._when_changed: Callable[[bool, float], None] | None = None

    @property
    def is_active(self) -> bool:
        return bool(self.device.is_active) != self._invert

    @property
    def when_changed(self):
        return self._when_changed

    @when_changed.setter
    def when_changed(self, callback: Callable[[bool, float], None] | None) -> None:
        """callback(active, monotonic time) on every raw edge, bounces included."""
        self._when_changed = callback
        if callback is None:
            self._detach()
            return
        invert = self._invert
        self.device.when_activated = lambda: callback(not invert, time.monotonic())
        self.device.when_deactivated = lambda: callback(invert, time.monotonic())

    def _detach(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CallbackSetToNone)  # meant: we detach on purpose
            self.device.when_activated = self.device.when_deactivated = None

    def close(self) -> None:
        if not self.device.closed:
            self._detach()
            self.device.close()

    def __repr__(self) -> str:
        return f"<Contact {self.name} pin {self.pin} {'active' if self.is_active else 'inactive'}>"


class GpioPins:
    """Opens the gate's outputs and contacts on one pin factory; closes them all at once."""

    def __init__(self, pin_factory=None):
        self.pin_factory = pin_factory
        self.opened: list[Output | Contact] = []

    @property
    def simulated(self) -> bool:
        from gpiozero.pins.mock import MockFactory
        return isinstance(self.pin_factory, MockFactory)

    def output(self, name: str, spec) -> Output | None:
        """The output a config table describes, driven inactive; None if it isn't fitted."""
        if spec is None or spec.pin is None:
            return None
        out = self._opening(Output, name, spec.pin, spec.active_high, self.pin_factory)
        self.opened.append(out)
        if out.found_active:
            log.warning("%s (pin %d) was found energised (left on by a crash, or the pin's "
                        "power-on level on an active-low board); driven off", name, spec.pin)
        return out

    def input(self, name: str, spec) -> Contact | None:
        """The input a config table describes (pin, pull_up, active_high); None if not fitted."""
        if spec is None or spec.pin is None:
            return None
        contact = self._opening(Contact, name, spec.pin, pull_up=spec.pull_up,
                                active_high=spec.active_high, pin_factory=self.pin_factory)
        self.opened.append(contact)
        return contact

    def button(self, name: str, pin: int, wiring: str) -> Contact:
        """An alarm button wired to ground with the internal pull-up: active = contact closed.

        With simulated pins an NC button's contact starts closed, as the real loop is
        at rest (the mock pull-up would otherwise read as a cut wire).
        """
        contact = self._opening(Contact, name, pin, pull_up=True, active_high=False,
                                pin_factory=self.pin_factory)
        if wiring == "nc" and self.simulated:
            self.pin_factory.pin(pin).drive_low()
        self.opened.append(contact)
        return contact

    @staticmethod
    def _opening(kind, name, pin, *args, **kwargs):
        """Open one part; a failure says which part and pin, and what to do on a PC."""
        try:
            return kind(name, pin, *args, **kwargs)
        except BadPinFactory as exc:
            raise RuntimeError(f"no GPIO on this machine for {name} (pin {pin}): {exc}; "
                               "on a PC run 'gate-agent run --simulate'") from None
        except Exception as exc:
            raise RuntimeError(f"cannot open {name} on pin {pin}: {exc}") from exc

    def close(self) -> None:
        """Drive every output inactive and release every pin; safe to call twice."""
        for part in reversed(self.opened):
            try:
                part.close()
            except Exception:
                log.exception("closing %r", part)
        self.opened.clear()


def build(gate) -> list:
    """The GPIO subsystems: the alarm panel (buttons, siren, lamps) and the lanes (barriers)."""
    from agent.alarm import AlarmPanel
    from agent.lanes import Lanes
    return [AlarmPanel(gate.config, gate.store, gate.bus, lambda: GpioPins(gate.pin_factory)),
            Lanes(gate.config, gate.store, gate.bus, lambda: GpioPins(gate.pin_factory))]
