"""The rig's hand inside a simulated agent: a Unix socket speaking JSON lines.

Loaded by `gate-agent run --simulate` when GATE_HIL_CONTROL names a socket
path (never on real hardware). One request per line, one reply per line:

    {"op": "ping"}                          -> {"ok": true, "pid": 1234, "now": <monotonic>}
    {"op": "drive", "pin": 23, "level": 0}  -> {"ok": true, "at": <monotonic>}
    {"op": "read", "pin": 17}               -> {"ok": true, "level": 1, "function": "output"}
    {"op": "history", "pin": 17}            -> {"ok": true, "changes": [[<monotonic>, level], ...]}
    {"op": "bus", "topic": "drill", "payload": {...}} -> {"ok": true, "handlers": 1}
    {"op": "health"}                        -> {"ok": true, "subsystems": {...}}

Times are time.monotonic() of the agent process: CLOCK_MONOTONIC is one clock
for the whole machine, so the rig subtracts its own monotonic stimulus time
from them to get latencies without clock skew. Errors come back as
{"ok": false, "error": "..."}; the channel never raises into the agent.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

log = logging.getLogger("gate.hil")

ENV = "GATE_HIL_CONTROL"


class PinRecorder:
    """Every level change of the mock pins the rig looks at, with its monotonic time."""

    def __init__(self, factory):
        self.factory = factory
        self.changes: dict[int, list[tuple[float, float]]] = {}
        self._lock = threading.Lock()

    def pin(self, number: int):
        pin = self.factory.pin(number)
        with self._lock:
            if number not in self.changes:
                self._track(number, pin)
        return pin

    def _track(self, number: int, pin) -> None:
        history = self.changes[number] = [(time.monotonic(), _level(pin.state))]
        original = pin._change_state

        def change_state(value):
            changed = original(value)
            if changed:
                history.append((pin._last_change, _level(value)))
            return changed
        pin._change_state = change_state

    def track_all(self) -> None:
        """Start recording every pin the drivers have claimed so far."""
        for info in list(self.factory.pins):
            number = _bcm_number(info)
            if number is not None:
                self.pin(number)


def _level(state) -> float:
    return int(state) if state in (0, 1, True, False) else float(state)


def _bcm_number(info) -> int | None:
    name = getattr(info, "name", "")
    return int(name[4:]) if name.startswith("GPIO") and name[4:].isdigit() else None


class ControlServer:
    def __init__(self, gate, path: str | os.PathLike):
        self.gate = gate
        self.path = Path(path)
        self.pins = PinRecorder(gate.pin_factory)
        self._sock: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> "ControlServer":
        self.pins.track_all()
        self.path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        self._sock.listen(4)
        threading.Thread(target=self._accept, name="hil-control", daemon=True).start()
        log.warning("HIL control channel open on %s (simulated hardware only)", self.path)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._sock:
            self._sock.close()
        self.path.unlink(missing_ok=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="hil-client", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                reply = self.handle(line)
                stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()

    def handle(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
            op = request.get("op")
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                return {"ok": False, "error": f"unknown op {op!r}; known: ping, drive, read, "
                                             "history, bus, health"}
            return {"ok": True, **handler(request)}
        except Exception as exc:  # a bad request must never hurt the agent
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def op_ping(self, _request) -> dict:
        return {"pid": os.getpid(), "now": time.monotonic(),
                "missing_areas": list(getattr(self.gate, "missing_areas", []))}

    def op_drive(self, request) -> dict:
        pin = self.pins.pin(int(request["pin"]))
        if pin.function != "input":
            raise ValueError(f"pin {request['pin']} is an {pin.function}: only inputs can be driven")
        at = time.monotonic()
        pin.drive_high() if request["level"] else pin.drive_low()
        return {"at": at}

    def op_read(self, request) -> dict:
        pin = self.pins.pin(int(request["pin"]))
        return {"level": _level(pin.state), "function": pin.function}

    def op_history(self, request) -> dict:
        number = int(request["pin"])
        self.pins.pin(number)
        return {"changes": list(self.pins.changes[number])}

    def op_bus(self, request) -> dict:
        return {"handlers": self.gate.bus.publish(request["topic"], **request.get("payload", {}))}

    def op_health(self, _request) -> dict:
        return {"subsystems": self.gate.supervisor.states()}


def serve_if_asked(gate) -> ControlServer | None:
    """Open the control channel if $GATE_HIL_CONTROL is set and the pins are simulated."""
    path = os.environ.get(ENV)
    if not path:
        return None
    if not gate.simulated or gate.pin_factory is None:
        log.error("%s is set but the hardware is real: HIL control refused", ENV)
        return None
    return ControlServer(gate, path).start()


class ControlClient:
    """The rig's end of the channel."""

    def __init__(self, path: str | os.PathLike, timeout: float = 5.0):
        self.path = str(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._stream = None
        self._lock = threading.Lock()

    def connect(self, wait_s: float = 0.0) -> "ControlClient":
        deadline = time.monotonic() + wait_s
        while True:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                self._sock, self._stream = sock, sock.makefile("rwb")
                return self
            except OSError:
                sock.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        if self._stream:
            self._stream.close()
        if self._sock:
            self._sock.close()
        self._sock = self._stream = None

    def call(self, op: str, **args) -> dict:
        with self._lock:
            if self._stream is None:
                self.connect()
            self._stream.write(json.dumps({"op": op, **args}).encode() + b"\n")
            self._stream.flush()
            line = self._stream.readline()
        if not line:
            self.close()
            raise ConnectionError(f"HIL control channel {self.path} closed (agent gone?)")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "unknown error"))
        return reply


class ControlError(RuntimeError):
    pass
