"""How the rig touches the gate's pins: through the control channel (simulated) or loopback wires (a real Pi).

Both backends offer the same small interface:
    drive(pin, level) -> monotonic time of the edge
    changes(pin) -> [(monotonic, level), ...]  every level seen since the rig started
    wired(pin) -> None if the rig can reach that pin, else why not
All times are time.monotonic(), one clock for the whole machine.
"""
from __future__ import annotations

import threading
import time
import tomllib
from pathlib import Path

from hil.control import ControlClient


class PinsUnavailable(RuntimeError):
    pass


class ControlPins:
    """Mock pins inside the simulated agent, over hil.control. Survives agent restarts:
    the history seen before a kill is kept and the new process's history is appended."""

    def __init__(self, socket_path: Path):
        self.socket_path = socket_path
        self.client: ControlClient | None = None
        self._before_restart: dict[int, list] = {}
        self._watched: set[int] = set()

    def attach(self, wait_s: float = 20.0) -> dict:
        self.client = ControlClient(self.socket_path).connect(wait_s=wait_s)
        reply = self.client.call("ping")
        for pin in self._watched:
            self.client.call("history", pin=pin)
        return reply

    def detach(self) -> None:
        """Before the agent goes away: keep what its pins did so far."""
        if self.client:
            for pin in self._watched:
                try:
                    self._before_restart[pin] = self.changes(pin)
                except (OSError, RuntimeError):
                    pass
            self.client.close()
        self.client = None

    def watch(self, pin: int) -> None:
        self._watched.add(pin)
        if self.client:
            self.client.call("history", pin=pin)

    def wired(self, pin: int) -> str | None:
        return None

    def drive(self, pin: int, level: int) -> float:
        self._require()
        self._watched.add(pin)
        return self.client.call("drive", pin=pin, level=level)["at"]

    def changes(self, pin: int) -> list[tuple[float, float]]:
        self._watched.add(pin)
        old = self._before_restart.get(pin, [])
        if not self.client:
            return list(old)
        new = [tuple(c) for c in self.client.call("history", pin=pin)["changes"]]
        return sorted(set(old) | set(new))

    def bus(self, topic: str, **payload) -> int:
        self._require()
        return self.client.call("bus", topic=topic, payload=payload)["handlers"]

    def subsystems(self) -> dict | None:
        """Each subsystem's health inside the agent (None: out of reach)."""
        self._require()
        return self.client.call("health")["subsystems"]

    def _require(self) -> None:
        if not self.client:
            raise PinsUnavailable("the agent is not running (killed and not restarted?)")

    def close(self) -> None:
        if self.client:
            self.client.close()


class Wiring:
    """hil/wiring.example.toml: which agent pin is looped back to which rig pin on a real Pi."""

    def __init__(self, wires: dict[str, int], path: Path | None = None):
        self.wires = wires
        self.path = path

    @classmethod
    def load(cls, path: str | Path) -> "Wiring":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"wiring file {path}: {exc}") from None
        wires = {}
        for i, wire in enumerate(data.get("wire", [])):
            if set(wire) - {"part", "rig_pin", "note"} or "part" not in wire or "rig_pin" not in wire:
                raise ValueError(f"{path}: wire[{i}] = {wire!r}: expected part = \"in1.barrier\", "
                                 "rig_pin = <BCM pin>, optional note")
            if not isinstance(wire["rig_pin"], int) or not 0 <= wire["rig_pin"] <= 27:
                raise ValueError(f"{path}: wire[{i}].rig_pin = {wire['rig_pin']!r}: expected a BCM pin 0-27")
            wires[wire["part"]] = wire["rig_pin"]
        unknown = set(data) - {"wire"}
        if unknown:
            raise ValueError(f"{path}: {sorted(unknown)[0]}: unknown key; allowed: wire")
        return cls(wires, path)


class WiredPins:
    """A real Pi with a loopback harness: each agent output wired to a rig input, each
    agent input driven by a rig output. `parts` maps agent pin -> (part name, is_output)."""

    def __init__(self, wiring: Wiring, parts: dict[int, tuple[str, bool]], pin_factory=None):
        from gpiozero import DigitalInputDevice, DigitalOutputDevice
        self.wiring = wiring
        self.parts = parts
        self._history: dict[int, list] = {}
        self._lock = threading.Lock()
        self._devices: dict[int, object] = {}
        for agent_pin, (part, is_output) in parts.items():
            rig_pin = wiring.wires.get(part)
            if rig_pin is None:
                continue
            if is_output:
                device = DigitalInputDevice(rig_pin, pull_up=False, pin_factory=pin_factory)
                self._history[agent_pin] = [(time.monotonic(), int(device.value))]
                device.when_activated = lambda p=agent_pin: self._seen(p, 1)
                device.when_deactivated = lambda p=agent_pin: self._seen(p, 0)
            else:
                device = DigitalOutputDevice(rig_pin, initial_value=True, pin_factory=pin_factory)
                self._history[agent_pin] = [(time.monotonic(), 1)]
            self._devices[agent_pin] = device

    def _seen(self, agent_pin: int, level: int) -> None:
        with self._lock:
            self._history[agent_pin].append((time.monotonic(), level))

    def wired(self, pin: int) -> str | None:
        if pin in self._devices:
            return None
        part = self.parts.get(pin, (f"pin {pin}",))[0]
        return f"not wired: {part} (BCM {pin}) has no loopback in {self.wiring.path}"

    def watch(self, pin: int) -> None:
        pass

    def drive(self, pin: int, level: int) -> float:
        reason = self.wired(pin)
        if reason:
            raise PinsUnavailable(reason)
        at = time.monotonic()
        self._devices[pin].value = bool(level)
        with self._lock:
            self._history[pin].append((at, int(level)))
        return at

    def changes(self, pin: int) -> list[tuple[float, float]]:
        with self._lock:
            return list(self._history.get(pin, []))

    def bus(self, topic: str, **payload) -> int:
        raise PinsUnavailable("the agent's bus is out of reach on real hardware: "
                              "use the agent's own CLI (gate-agent drill) on the Pi")

    def subsystems(self) -> dict | None:
        return None

    def attach(self, wait_s: float = 0.0) -> dict:
        return {}

    def detach(self) -> None:
        pass

    def close(self) -> None:
        for device in self._devices.values():
            device.close()
