"""`gate-agent run`: the gate under the supervisor until SIGTERM or SIGINT."""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time

from agent.privacy import KeyError_
from agent.store import StoreError

log = logging.getLogger("gate")


class JsonLines(logging.Formatter):
    """One JSON object per line: journald keeps it, and machines can read it."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"t": round(record.created, 3), "level": record.levelname.lower(),
                "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def setup_logging(level: str = "info", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def simulated_pins():
    from gpiozero.pins.mock import MockFactory, MockPWMPin
    return MockFactory(pin_class=MockPWMPin)


def _hil_control(gate):
    """The HIL rig's hand on the mock pins, if $GATE_HIL_CONTROL asks for it (docs/hil.md)."""
    from hil.control import serve_if_asked
    return serve_if_asked(gate)


def run_gate(config, simulate: bool = False, stop_event: threading.Event | None = None) -> int:
    from agent.gate import Gate
    setup_logging(config.log.level)
    try:
        gate = Gate(config, pin_factory=simulated_pins() if simulate else None, simulated=simulate)
    except (KeyError_, StoreError) as exc:
        log.error("cannot start: %s", exc)
        print(f"gate-agent: {exc}", file=sys.stderr)
        return 2
    gate.build()
    control = _hil_control(gate) if simulate else None
    stop = stop_event or threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    gate.start()
    log.info("gate-agent running: device %s, site %s%s", config.device.id, config.device.site,
             " (simulated hardware)" if simulate else "")
    while not stop.wait(0.5):
        pass
    gate.stop()
    if control:
        control.stop()
    log.info("gate-agent stopped cleanly")
    return 0
