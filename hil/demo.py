"""`gate-agent demo`: the real agent on simulated gate hardware, for about a minute.

Everything runs for real except the hardware that can't exist here: the
store is a real SQLite file, the broker a real mosquitto on 127.0.0.1 (when
installed), the card reader a simulator on a pty speaking the reader's
serial protocol, the camera a folder of rendered frames, and the GPIO pins
gpiozero's MockFactory, which the script presses like a guard would.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path

import click

from agent.privacy import create_key, masked

DEVICE_ID = "21010200001210000001"
SITE = "demo-east-gate"
PINS = {"barrier": 17, "presence": 27, "manual_open": 22, "guard_lamp": 5,
        "alarm": 23, "siren": 24, "ack_lamp": 25, "drill_lamp": 6}


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


def describe(record) -> str:
    d = masked(record.data)
    kind = record.kind
    if kind == "plate_read":
        return f"plate {d.get('plate_no')} ({d.get('plate_color_name', d.get('plate_color'))}) " \
               f"at {d.get('lane')}, confidence {d.get('confidence')}"
    if kind == "card_read":
        return f"ID card {d.get('card_kind')} {d.get('name', '')} {d.get('id_number', '')} at {d.get('reader')}"
    if kind == "access_decision":
        return f"{d.get('outcome').upper()} at {d.get('lane')} by rule {d.get('rule')} " \
               f"in {d.get('decision_ms')} ms"
    if kind == "barrier":
        return f"barrier {d.get('lane')} {d.get('action')} (cause: {d.get('cause')})"
    if kind == "alarm":
        return f"ALARM{' (DRILL)' if d.get('drill') else ''} button {d.get('button')} at {d.get('location')}"
    if kind == "fault":
        return f"fault in {d.get('subsystem')}: {d.get('condition')} {d.get('detail', '')}"
    return json.dumps(d, ensure_ascii=False)[:120]


def write_config(root: Path, broker_url: str, reader_port: str | None, frames: Path | None) -> Path:
    keys = root / "keys"
    create_key(keys / "data.key")
    create_key(keys / "list.key")
    lane = [
        "[[lanes]]", 'name = "in1"', 'direction = "in"',
        f"barrier = {{ pin = {PINS['barrier']} }}",
        f"presence = {{ pin = {PINS['presence']} }}",
        f"manual_open = {{ pin = {PINS['manual_open']} }}",
        f"guard_lamp = {{ pin = {PINS['guard_lamp']} }}",
        f'camera = "{frames}"' if frames else 'camera = ""',
        'trigger = "continuous"',
    ]
    reader = ["[[readers]]", 'name = "id1"', 'kind = "idcard"', f'port = "{reader_port}"',
              'lane = "in1"', "baud = 115200"] if reader_port else []
    text = "\n".join([
        "[device]", f'id = "{DEVICE_ID}"', f'site = "{SITE}"', 'site_name = "Demo works, east gate"', "",
        *lane, "",
        "[alarm]", "siren_s = 5.0", f"siren = {{ pin = {PINS['siren']} }}",
        f"ack_lamp = {{ pin = {PINS['ack_lamp']} }}", f"drill_lamp = {{ pin = {PINS['drill_lamp']} }}",
        "[[alarm.buttons]]", 'name = "b1"', 'location = "gatehouse desk"', f"pin = {PINS['alarm']}", "",
        *reader, "",
        "[storage]", f'data_dir = "{root / "data"}"', "reserve_mb = 1", "",
        "[mqtt]", f'url = "{broker_url}"', "allow_plaintext = true", "health_interval_s = 10.0", "",
        "[log]", 'level = "warning"', "",
    ])
    path = root / "config.toml"
    path.write_text(text)
    return path


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
