"""`gate-agent demo`: the real agent on simulated gate hardware, for about a minute.

Everything runs for real except the hardware that can't exist here: the
store is a real SQLite file, the broker a real mosquitto on 127.0.0.1 (when
installed), the card reader a simulator on a pty speaking the reader's
serial protocol, the camera a folder of rendered frames, and the GPIO pins
gpiozero's MockFactory, which the script presses like a guard would.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path

import click


class Narrator:
    """Prints what happens at the gate, one line per event, with the time since start."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def say(self, who: str, text: str) -> None:
        with self.lock:
            click.echo(f"{time.monotonic() - self.t0:6.1f}s  {who:<9} {text}")

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n


@click.command()
@click.option("--seconds", default=60.0, show_default=True, help="Stop after this long at most.")
@click.option("--keep", is_flag=True, help="Keep the demo's folder (config, database, images).")
def demo(seconds, keep):
    """Run the gate on simulated hardware for about a minute and narrate it.

    Simulated: GPIO pins (gpiozero MockFactory), the ID card reader (a pty),
    the camera (rendered frames). Real: the agent, its SQLite store, and a
    mosquitto broker on 127.0.0.1 when mosquitto is installed.

    \b
    Example:
      gate-agent demo --seconds 45
    """
    from hil.demo_script import DemoRun
    root = Path(tempfile.mkdtemp(prefix="gate-demo-"))
    logging.basicConfig(level=logging.ERROR)
    try:
        DemoRun(root, Narrator(), seconds).run()
    finally:
        if keep:
            click.echo(f"demo files kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
