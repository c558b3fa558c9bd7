"""The gate: one site's configuration, store, bus and subsystems, run by the supervisor.

Each area of the agent contributes its subsystems through a module-level
`build(gate) -> list[Subsystem]`. The alarm path (GPIO) is critical and
starts first; if any other area fails, the gate keeps working without it.
"""
from __future__ import annotations

import importlib
import logging
import threading

from agent.bus import Bus
from agent.privacy import Sealer, load_key
from agent.store import open_store
from agent.supervisor import Supervisor

log = logging.getLogger("gate")

# (module, critical, what it brings)
AREAS = [
    ("drivers.gpio", True, "barrier relays, one-key alarm buttons, loops, lamps"),
    ("agent.decisions", False, "who may pass"),
    ("drivers.readers", False, "ID card and badge readers"),
    ("agent.vision", False, "plate camera pipeline"),
    ("agent.sync", False, "store-and-forward to the platform"),
    ("agent.housekeeping", False, "health records, retention and quota"),
]


class Unbuilt:
    """An area that could not be built, in the supervisor's list so that status shows why."""

    def __init__(self, name: str, detail: str):
        self.name, self.detail = name, detail

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def health(self) -> dict:
        return {"state": "stopped", "detail": self.detail}


class Gate:
    def __init__(self, config, *, pin_factory=None, simulated: bool = False):
        self.sealer = Sealer(load_key(config.privacy.key_file))
        self.store = open_store(config, self.sealer, set_aside_damaged=True)
        self.config = config.with_remote(self.store.state_get("remote_config"))
        """the file's config with the platform's last signed settings over it, applied at start
        so every area reads one config (a newer version received while running waits for
        the next start, and the status says so: a restart that drops a lamp or an alarm
        press would cost more than a setting that waits)"""
        self.bus = Bus()
        self.pin_factory = pin_factory
        self.simulated = simulated
        self.supervisor = Supervisor(self.store)
        self.missing_areas: list[str] = []
        self.stopped = threading.Event()

    def build(self, areas=AREAS) -> "Gate":
        for module_name, critical, what in areas:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                self.missing_areas.append(f"{module_name} ({what})")
                log.warning("NOT BUILT YET: %s (%s); the gate runs without it", module_name, what)
                continue
            try:
                subsystems = module.build(self)
            except Exception as exc:
                if critical:
                    raise
                self._cannot_build(module_name, what, exc)
                continue
            for subsystem in subsystems:
                self.supervisor.add(subsystem, critical=critical)
        return self

    def _cannot_build(self, module_name: str, what: str, exc: Exception) -> None:
        """An area that cannot be built (a damaged file, say) must not stop the others, the
        alarm path above all: the gate runs without it, and a fault record says so."""
        detail = f"cannot start: {exc}; the gate runs without {what} until the agent restarts"
        log.exception("cannot build %s (%s): the gate runs without it", module_name, what)
        unbuilt = Unbuilt(module_name.rsplit(".", 1)[-1], detail)
        self.record("fault", {"subsystem": unbuilt.name, "condition": "failed", "detail": detail})
        self.supervisor.add(unbuilt)

    def start(self) -> None:
        self.supervisor.start()

    def stop(self) -> None:
        self.supervisor.stop()
        self.store.close()
        self.stopped.set()

    def record(self, kind: str, data: dict):
        """Store a record durably; the one way any area writes what happened."""
        return self.store.add(kind, data)
