import os
import socket
import threading
import time

import pytest

from agent.supervisor import FAULT, OK, Supervisor, notify


class Part:
    def __init__(self, name, fail_starts=0, log=None):
        self.name = name
        self.fail_starts = fail_starts
        self.running = False
        self.dead = False
        self.starts = 0
        self.log = log if log is not None else []

    def start(self):
        self.starts += 1
        self.log.append(("start", self.name))
        if self.fail_starts:
            self.fail_starts -= 1
            raise RuntimeError("serial port vanished")
        self.running, self.dead = True, False

    def stop(self):
        self.log.append(("stop", self.name))
        self.running = False

    def health(self):
        if self.dead:
            return {"state": FAULT, "detail": "thread died"}
        return {"state": OK, "detail": ""}


def test_critical_starts_first_and_stops_last(store):
    log = []
    sup = Supervisor(store, poll_s=60)
    sup.add(Part("sync", log=log))
    sup.add(Part("gpio", log=log), critical=True)
    sup.start()
    sup.stop()
    assert log[0] == ("start", "gpio")
    assert log[-1] == ("stop", "gpio")


def test_failed_start_does_not_stop_others_and_is_retried(store):
    reader = Part("readers", fail_starts=2)
    alarm = Part("gpio")
    sup = Supervisor(store, backoff_start=0.01, backoff_max=0.05, poll_s=60)
    sup.add(alarm, critical=True)
    sup.add(reader)
    sup.start()
    assert alarm.running and not reader.running
    assert sup.states()["readers"]["state"] == FAULT
    deadline = time.monotonic() + 5
    while not reader.running and time.monotonic() < deadline:
        time.sleep(0.02)
        sup.check()
    assert reader.running and reader.starts == 3
    faults = store.records("fault")
    assert len(faults) == 2
    assert faults[0].data["subsystem"] == "readers"
    assert "serial port vanished" in faults[0].data["detail"]
    sup.stop()


def test_backoff_grows_and_is_capped(store):
    part = Part("vision", fail_starts=10)
    sup = Supervisor(store, backoff_start=1, backoff_max=4, poll_s=60)
    sup.add(part)
    sup.start()
    delays = []
    for _ in range(4):
        delays.append(sup.states()["vision"]["retry_in_s"])
        sup.slots[0].next_try = 0
        sup.check()
    assert delays == [1, 2, 4, 4]
    sup.stop()


def test_dead_subsystem_restarted(store):
    part = Part("sync")
    sup = Supervisor(store, backoff_start=0.0, poll_s=60)
    sup.add(part)
    sup.start()
    part.dead = True
    sup.check()
    assert not part.running
    sup.check()
    assert part.running and part.starts == 2
    assert store.state_get("subsystems")["sync"]["state"] in ("starting", "ok")
    sup.stop()


def test_sd_notify_ready_and_watchdog(store, tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    sup = Supervisor(store, poll_s=0.05)
    sup.add(Part("gpio"), critical=True)
    sup.start()
    messages = [server.recv(4096).decode() for _ in range(2)]
    sup.stop()
    server.close()
    assert messages[0].startswith("READY=1")
    assert "gpio" in messages[0]
    assert messages[1].startswith("WATCHDOG=1")


def test_notify_without_systemd_is_quiet(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
