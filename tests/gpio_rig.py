"""Shared by the GPIO tests: a gate with only the GPIO area, on gpiozero's MockFactory pins."""
from __future__ import annotations

import threading
import time

from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPWMPin

from agent.config import load
from agent.gate import Gate

GPIO_ONLY = [("drivers.gpio", True, "GPIO")]


class ClosedContactPin(MockPWMPin):
    """A contact to ground that is closed when the agent opens the pin: the pull-up
    can't raise it (a button held, or stuck, through a restart)."""

    def _set_pull(self, value):
        super()._set_pull(value)
        self.drive_low()


def mock_factory() -> MockFactory:
    return MockFactory(pin_class=MockPWMPin)


def release(factory: MockFactory) -> None:
    """Leave gpiozero clean for the next test (pins in use raise GPIOPinInUse)."""
    factory.reset()
    Device.pin_factory = None


def make_gate(config_path, factory) -> Gate:
    gate = Gate(load(config_path), pin_factory=factory, simulated=True)
    return gate.build(areas=GPIO_ONLY)


def subsystem(gate, name):
    return next(slot.subsystem for slot in gate.supervisor.slots if slot.subsystem.name == name)


def wait_for(condition, timeout: float = 3.0, what: str = "condition"):
    """Poll until condition() is truthy; its value, or AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Recorder:
    """Collects bus events of one topic, thread-safely."""

    def __init__(self, bus, topic):
        self.events: list[dict] = []
        self.changed = threading.Event()
        bus.subscribe(topic, self)

    def __call__(self, **payload):
        self.events.append(payload)
        self.changed.set()
