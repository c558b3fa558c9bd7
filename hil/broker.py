"""A real mosquitto on 127.0.0.1 for tests, benches, the demo and the rig."""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class BrokerUnavailable(RuntimeError):
    pass


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next((p for p in MOSQUITTO_PATHS if Path(p).exists()), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mosquitto:
    """`with Mosquitto() as broker:` a broker on 127.0.0.1:broker.port, stopped on exit.

    `stop()` and `start()` again keep the same port, to play a broker outage.
    `extra_config` lines are appended to mosquitto.conf (TLS listeners, ACLs...).
    """

    def __init__(self, port: int | None = None, extra_config: str = "", listener: bool = True):
        self.binary = find_mosquitto()
        if not self.binary:
            raise BrokerUnavailable("mosquitto is not installed (apt-get install mosquitto)")
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="gate-mosquitto-"))
        self.extra_config = extra_config
        self.listener = listener
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        conf = self.dir / "mosquitto.conf"
        lines = ["persistence false", "log_dest stderr", "log_type error", "log_type warning"]
        if self.listener:
            lines += [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        conf.write_text("\n".join(lines) + "\n" + self.extra_config + "\n")
        return conf

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        conf = self._write_config()
        self.log = open(self.dir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerUnavailable(f"mosquitto exited with {self.proc.returncode}: "
                                        f"{(self.dir / 'mosquitto.log').read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerUnavailable(f"mosquitto did not listen on 127.0.0.1:{self.port} in {timeout} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
