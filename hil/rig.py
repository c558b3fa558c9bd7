"""The rig: the real agent process, simulated hardware, a real broker, one scenario at a time.

For each scenario: start mosquitto, the card reader simulators, the lanes'
camera folders; write a config and keys into a temp folder; start
`python -m agent --config C run --simulate` with the HIL control socket;
listen to `gate/#`; play the timeline; judge the expectations against what
the pins did and what reached the broker; stop everything.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from hil.broker import Mosquitto, free_port
from hil.pins import ControlPins, PinsUnavailable, WiredPins, Wiring
from hil.scenario import Expect, Scenario, Step, shared_plates

ROOT = Path(__file__).resolve().parent.parent
DEVICE_ID = "21010200001210000001"
SITE = "hil-site"

PASS, FAIL, SKIP, ERROR = "PASS", "FAIL", "SKIPPED", "ERROR"
SETTLE_S = 2.0
IN_FLIGHT_S = 1.0

# The simulated site every scenario starts from; a scenario's [config] is merged over it.
DEFAULT_SITE = {
    "device": {"id": DEVICE_ID, "site": SITE, "site_name": "HIL rig"},
    "lanes": [{"name": "in1", "direction": "in", "barrier": {"pin": 17}, "presence": {"pin": 27},
               "manual_open": {"pin": 22}, "guard_lamp": {"pin": 5}, "trigger": "presence"}],
    "alarm": {"buttons": [{"name": "b1", "location": "gatehouse desk", "pin": 23}],
              "siren": {"pin": 24}, "siren_s": 5.0, "ack_lamp": {"pin": 25}, "drill_lamp": {"pin": 6}},
    "mqtt": {"allow_plaintext": True, "health_interval_s": 3600.0},
    "log": {"level": "info"},
}
OUTPUT_PARTS = ("barrier", "guard_lamp")
INPUT_PARTS = ("presence", "manual_open", "barrier_confirm")
ALARM_OUTPUTS = ("siren", "ack_lamp", "drill_lamp")
SYNTH_KINDS = {"blue": "small", "green": "small_new_energy", "yellow": "large", "white": "police"}


class RigError(RuntimeError):
    """The rig could not play the scenario (not a verdict on the agent)."""


@dataclass
class Check:
    name: str
    status: str
    measured_ms: float | None = None
    detail: str = ""
    counted: bool = False
    """the detail is a figure measured (a count), shown also when the check passes"""


@dataclass
class Result:
    scenario: str
    status: str
    reason: str = ""
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    workdir: str = ""
    agent_log_tail: str = ""


# --- the site config ------------------------------------------------------------------

def merge(base: dict, over: dict) -> dict:
    """A new dict: `over` merged into a deep copy of `base` (the rig edits the result)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def to_toml(data: dict) -> str:
    """Enough TOML for an agent config: scalars, lists of scalars, tables, arrays of tables."""
    lines: list[str] = []

    def scalar(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {scalar(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"cannot write {v!r} as TOML")

    def table(prefix: str, d: dict, header: str | None) -> None:
        simple = {k: v for k, v in d.items() if not _is_table(v) and not _is_table_list(v)}
        if header:
            lines.append(header)
        lines.extend(f"{k} = {scalar(v)}" for k, v in simple.items())
        lines.append("")
        for k, v in d.items():
            name = f"{prefix}.{k}" if prefix else k
            if _is_table(v):
                table(name, v, f"[{name}]")
            elif _is_table_list(v):
                for item in v:
                    table(name, item, f"[[{name}]]")
    table("", data, None)
    return "\n".join(lines)


def _is_table(v) -> bool:
    return isinstance(v, dict)


def _is_table_list(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


class Site:
    """The pins, lanes and readers of the config the agent runs, by name."""

    def __init__(self, config: dict):
        self.config = config
        self.pins: dict[str, tuple[int, int, bool]] = {}   # name -> (pin, active level, is_output)
        for lane in config.get("lanes", []):
            for part in OUTPUT_PARTS + INPUT_PARTS:
                dev = lane.get(part)
                if dev and "pin" in dev:
                    is_output = part in OUTPUT_PARTS
                    if is_output:
                        active = 1 if dev.get("active_high", True) else 0
                    else:
                        active = 1 if dev.get("active_high", not dev.get("pull_up", True)) else 0
                    self.pins[f"{lane['name']}.{part}"] = (dev["pin"], active, is_output)
        alarm = config.get("alarm", {})
        for button in alarm.get("buttons", []):
            active = 1 if button.get("wiring", "no") == "nc" else 0
            self.pins[f"alarm.{button['name']}"] = (button["pin"], active, False)
        for part in ALARM_OUTPUTS:
            dev = alarm.get(part)
            if dev and "pin" in dev:
                self.pins[f"alarm.{part}"] = (dev["pin"], 1 if dev.get("active_high", True) else 0, True)

    def pin(self, name: str | int) -> tuple[int, int, bool]:
        if isinstance(name, int):
            known = [v for v in self.pins.values() if v[0] == name]
            return known[0] if known else (name, 1, False)
        if name in self.pins:
            return self.pins[name]
        if f"alarm.{name}" in self.pins:
            return self.pins[f"alarm.{name}"]
        raise RigError(f"no pin called {name!r} in this site; known: {', '.join(sorted(self.pins))}")

    def lane(self, name: str) -> dict:
        for lane in self.config.get("lanes", []):
            if lane["name"] == name:
                return lane
        raise RigError(f"no lane {name!r}; lanes: {', '.join(l['name'] for l in self.config['lanes'])}")


# --- what reached the broker ----------------------------------------------------------

@dataclass
class Message:
    at: float
    topic: str
    payload: bytes
    records: list[dict]


def records_in(payload: bytes) -> list[dict]:
    """The records in a message body: one record, a list of them, or {"records": [...]}."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return []
    if isinstance(body, dict) and isinstance(body.get("records"), list):
        body = body["records"]
    items = body if isinstance(body, list) else [body]
    return [r for r in items if isinstance(r, dict) and "uuid" in r and "kind" in r]


class Collector:
    """Subscribes to gate/# with a persistent session, so nothing published while the
    rig's own connection is down (a broker restart) escapes it."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hil-rig-{os.getpid()}",
                                  clean_session=False)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self.subscribed.clear()
        self.port = port

    def start(self, timeout: float = 10.0) -> "Collector":
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            raise RigError(f"could not subscribe to gate/# on 127.0.0.1:{self.port}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, _userdata, _flags, reason, _props=None):
        if not reason.is_failure:
            client.subscribe("gate/#", qos=1)
            self.subscribed.set()

    def _on_message(self, _client, _userdata, msg):
        message = Message(time.monotonic(), msg.topic, bytes(msg.payload), records_in(msg.payload))
        with self._lock:
            self.messages.append(message)

    def snapshot(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def record_count(self) -> int:
        return sum(len(m.records) for m in self.snapshot())

    def uuids(self) -> dict[str, int]:
        seen: dict[str, int] = {}
        for message in self.snapshot():
            for record in message.records:
                seen[record["uuid"]] = seen.get(record["uuid"], 0) + 1
        return seen


# --- the agent process ----------------------------------------------------------------

class AgentProcess:
    def __init__(self, workdir: Path, config_path: Path, simulate: bool = True):
        self.workdir = workdir
        self.config_path = config_path
        self.simulate = simulate
        self.socket = workdir / "control.sock"
        self.log_path = workdir / "agent.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.groups: list[int] = []

    def env(self) -> dict:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("GATE_AGENT_CONFIG", None)
        if self.simulate:
            env["GATE_HIL_CONTROL"] = str(self.socket)
        return env

    def cli(self, *args, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "agent", "--config", str(self.config_path), *args],
                              capture_output=True, text=True, env=self.env(), timeout=timeout,
                              cwd=self.workdir)

    def start(self) -> None:
        args = [sys.executable, "-m", "agent", "--config", str(self.config_path), "run"]
        if self.simulate:
            args.append("--simulate")
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- rig: start #{self.starts} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                         cwd=self.workdir, start_new_session=True)
        self.groups.append(self.proc.pid)

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RigError(f"the agent exited (code {code}); its log ends:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the agent's main process only, as the kernel's OOM killer would; its
        children (the vision process) must notice and go by themselves."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def reap_orphans(self) -> list[str]:
        """Kill what is left of every process group the rig started; say what was left.
        Zombies don't count: a child that exits after the agent is reparented to PID 1,
        which in a container often never reaps it (multiprocessing's resource tracker)."""
        left = []
        for group in self.groups:
            ps = subprocess.run(["ps", "-o", "stat=,args=", "-g", str(group)], capture_output=True, text=True)
            alive = [line.split(None, 1)[-1][:80] for line in ps.stdout.splitlines()
                     if line.strip() and not line.lstrip().startswith("Z")]
            if alive:
                left.append(f"processes of agent start #{self.groups.index(group) + 1} (group {group}) "
                            f"outlived it; killed by the rig: {'; '.join(alive)}")
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return left

    def stop(self, timeout: float = 10.0) -> int | None:
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                with open(self.log_path, "ab") as log:
                    log.write(f"--- rig: agent ignored SIGTERM for {timeout} s: killed ---\n".encode())
        return self.proc.returncode

    def running_logged(self) -> bool:
        """The current start has logged "gate-agent running" (every subsystem started)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return False
        return '"gate-agent running' in text.rsplit(f"--- rig: start #{self.starts} ---", 1)[-1]

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# --- stimuli that need other areas' simulators ----------------------------------------

class Frames:
    """Each lane's camera is a folder the rig writes frames into (drivers/camera.py replays it)."""

    def __init__(self, root: Path):
        self.root = root
        self.counter = 0
        self._real_index: dict[str, Path] | None = None

    def folder(self, lane: str) -> Path:
        return self.root / lane

    def empty_lane(self, lane: str) -> None:
        """A frame of an empty lane, always there: a folder camera with no images is a
        camera that is not working (drivers/camera.py), and an idle lane is not that."""
        import cv2
        import numpy as np
        rng = np.random.default_rng(0)
        frame = np.clip(rng.normal(90, 12, (720, 1280, 3)), 0, 255).astype(np.uint8)
        folder = self.folder(lane)
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / "empty-lane.jpg"), frame)

    def render(self, plate: str, color: str, image: str, rng) -> bytes:
        import cv2
        if image == "real":
            path = self.real_image(plate)
            return path.read_bytes()
        from models.synth import render_scene
        frame, _plates = render_scene([(plate, SYNTH_KINDS.get(color, color))] if plate else [], rng=rng)
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RigError(f"could not encode a frame for plate {plate}")
        return jpeg.tobytes()

    def real_image(self, plate: str) -> Path:
        if self._real_index is None:
            self._real_index = {}
            folder = shared_plates()
            if not folder.is_dir():
                raise RigError(f"real plate images not found at {folder} (set GATE_SHARED)")
            for labels in sorted(folder.glob("*/labels.csv")):
                with open(labels, newline="", encoding="utf-8") as f:
                    for row in csv.DictReader(f):
                        if row.get("kind") == "scene":
                            self._real_index.setdefault(row["plate"], labels.parent / row["file"])
        if plate not in self._real_index:
            raise RigError(f"no real scene image of plate {plate} under {shared_plates()}")
        return self._real_index[plate]

    def put(self, lane: str, jpeg: bytes) -> Path:
        folder = self.folder(lane)
        self.counter += 1
        path = folder / f"frame{self.counter:06d}.jpg"
        tmp = folder / f".frame{self.counter:06d}.tmp"
        tmp.write_bytes(jpeg)
        os.replace(tmp, path)
        return path

    def lose(self, lane: str) -> None:
        folder = self.folder(lane)
        if folder.exists():
            folder.rename(folder.with_name(folder.name + ".lost"))

    def restore(self, lane: str) -> None:
        lost = self.folder(lane).with_name(lane + ".lost")
        if lost.exists():
            lost.rename(self.folder(lane))


class Readers:
    """drivers.reader_sim simulators, one per configured reader, each on its own pty
    reached through a symlink (unplug removes the link, replug brings it back)."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder
        self.sims: dict[str, object] = {}
        self.kinds: dict[str, str] = {}

    def start(self, name: str, kind: str):
        from drivers import reader_sim
        link = self.folder / f"reader-{name}"
        if kind == "idcard":
            sim = reader_sim.ReaderSimulator(link=link)
        else:
            sim = reader_sim.BadgeSimulator(kind, link=link)
        self.sims[name], self.kinds[name] = sim.start(), kind
        return sim

    def place(self, name: str, card) -> None:
        from drivers import reader_sim
        if self.kinds.get(name) == "idcard":
            try:
                card = reader_sim.Card.from_dict(card)
            except ValueError as exc:
                raise RigError(f"card on reader {name}: {exc}") from None
        elif isinstance(card, dict):
            card = card.get("badge", card)
        self.call(name, "place", card)

    def port(self, name: str) -> str:
        return str(self.folder / f"reader-{name}")

    def call(self, name: str, method: str, *args):
        if name not in self.sims:
            raise RigError(f"no reader {name!r}; readers: {', '.join(self.sims) or 'none'}")
        fn = getattr(self.sims[name], method, None)
        if fn is None:
            raise RigError(f"drivers.reader_sim.ReaderSim has no {method}(): the simulator's API "
                           "differs from what hil/rig.py expects (docs/hil.md)")
        return fn(*args)

    def stop(self) -> None:
        for sim in self.sims.values():
            sim.stop()


# --- the rig --------------------------------------------------------------------------

class Rig:
    def __init__(self, scenario: Scenario, *, wiring: Wiring | None = None, keep: bool = False,
                 say=lambda text: None, broker: bool = True, workdir: Path | None = None):
        self.scenario = scenario
        self.given_workdir = workdir
        self.use_broker = broker
        self.wiring = wiring
        self.keep = keep
        self.say = say
        self.times: dict[str, float] = {}
        self.notes: list[str] = []
        self.vehicles = 0
        self._stored_count, self._stored_changed = -1, 0.0
        self._stored_before_damage: dict[str, tuple[str, float]] = {}
        """What the store held when `damage_store` garbled it: still the agent's records."""
        self._timers: list[threading.Timer] = []

    def run(self) -> Result:
        started = time.monotonic()
        missing = self.scenario.missing_parts()
        if missing:
            return Result(self.scenario.name, SKIP, "not built yet: " + ", ".join(missing))
        if self.given_workdir is not None:
            self.given_workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = self.given_workdir or Path(tempfile.mkdtemp(prefix=f"gate-hil-{self.scenario.path.stem}-"))
        result = Result(self.scenario.name, ERROR, workdir=str(self.workdir))
        self.broker = self.collector = self.agent = self.pins = None
        self.readers = Readers(self.workdir)
        try:
            self._setup()
            self._play()
            result.checks = self._judge()
            failed = [c for c in result.checks if c.status == FAIL]
            if failed:
                result.status, result.reason = FAIL, f"{len(failed)} of {len(result.checks)} checks failed"
            elif all(c.status == SKIP for c in result.checks):
                result.status, result.reason = SKIP, "; ".join(sorted({c.detail for c in result.checks}))
            else:
                result.status = PASS
        except (RigError, PinsUnavailable, OSError, subprocess.SubprocessError) as exc:
            result.status, result.reason = ERROR, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug in the rig or a simulator: report it, run the next scenario
            result.status, result.reason = ERROR, f"rig bug? {type(exc).__name__}: {exc}"
            self.notes.append(traceback.format_exc())
        finally:
            result.notes = self.notes
            if self.agent:
                result.agent_log_tail = self.agent.log_tail()
            self._teardown(result)
            result.duration_s = time.monotonic() - started
        return result

    # setup and teardown

    def _setup(self) -> None:
        work = self.workdir
        from agent.privacy import create_key
        create_key(work / "keys" / "data.key")
        create_key(work / "keys" / "list.key")
        if self.use_broker:
            self.broker = Mosquitto(extra_config=f"persistence true\npersistence_location {work}/\n"
                                                 "max_queued_messages 0\n").start()
            self.collector = Collector(self.broker.port).start()
            broker_url = self.broker.url
        else:   # nothing listens here: the agent keeps every record in its outbox
            broker_url = f"mqtt://127.0.0.1:{free_port()}"
        self.frames = Frames(work / "frames")
        config = merge(DEFAULT_SITE, self.scenario.config)
        config = merge(config, {"storage": {"data_dir": str(work / "data")},
                                "mqtt": {"url": broker_url}})
        for lane in config["lanes"]:
            if "vision" in self.scenario.needs and not lane.get("camera"):
                lane["camera"] = str(self.frames.folder(lane["name"]))
                self.frames.empty_lane(lane["name"])
        if "readers" in self.scenario.needs:
            config.setdefault("readers", [{"name": "id1", "kind": "idcard", "lane": "in1"}])
            for reader in config["readers"]:
                self.readers.start(reader["name"], reader.get("kind", "idcard"))
                reader["port"] = self.readers.port(reader["name"])
        self.site = Site(config)
        self.config_path = work / "config.toml"
        self.config_path.write_text(to_toml(config), encoding="utf-8")
        self.agent = AgentProcess(work, self.config_path, simulate=self.wiring is None)
        for list_name, text in self.scenario.lists.items():
            self._import_list(list_name, text)
        if self.wiring is None:
            self.pins = ControlPins(self.agent.socket)
        else:
            parts = {pin: (name, is_output) for name, (pin, _a, is_output) in self.site.pins.items()}
            self.pins = WiredPins(self.wiring, parts)
        for _name, (pin, _active, _out) in self.site.pins.items():
            self.pins.watch(pin)
        self._start_agent()

    def _import_list(self, list_name: str, text: str) -> None:
        path = self.workdir / f"{list_name}.csv"
        path.write_text(dated(text).strip() + "\n", encoding="utf-8")
        done = self.agent.cli("lists", "import", str(path), "--list", list_name)
        if done.returncode != 0:
            raise RigError(f"'gate-agent lists import {path.name}' failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-400:]}")

    def _start_agent(self) -> None:
        self.agent.start()
        deadline = time.monotonic() + 30
        while True:
            self.agent.check_alive()
            try:
                reply = self.pins.attach(wait_s=0.5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RigError(f"the agent's control channel did not open in 30 s:\n{self.agent.log_tail()}")
        if reply.get("missing_areas"):
            self.notes.append(f"agent start #{self.agent.starts}: areas not built: "
                              + ", ".join(a.split(" ")[0] for a in reply["missing_areas"]))
        while not self.agent.running_logged():
            self.agent.check_alive()
            if time.monotonic() > deadline:
                raise RigError(f"the agent did not say it was running in 30 s:\n{self.agent.log_tail()}")
            time.sleep(0.05)
        self._wait_started(deadline)

    def _wait_started(self, deadline: float) -> None:
        """Until no subsystem is still starting (the vision process loads its model for a
        while on a busy machine: a car that came before would be a test of the load)."""
        while True:
            subsystems = self.pins.subsystems() or {}
            starting = [name for name, h in subsystems.items() if h.get("state") == "starting"]
            if not starting:
                return
            if time.monotonic() > deadline:
                self.notes.append(f"still starting after 30 s: {', '.join(starting)}")
                return
            self.agent.check_alive()
            time.sleep(0.1)

    def _teardown(self, result: Result) -> None:
        for timer in self._timers:
            timer.cancel()
        if self.pins:
            self.pins.close()
        if self.agent:
            code = self.agent.stop()
            if code not in (0, None, -9) and result.status == PASS:
                result.status, result.reason = FAIL, f"the agent exited with {code} on SIGTERM"
            time.sleep(0.2)
            self.notes.extend(self.agent.reap_orphans())
        if self.collector:
            self.collector.stop()
        if self.broker:
            self.broker.stop()
            shutil.rmtree(self.broker.dir, ignore_errors=True)
        self.readers.stop()
        if not self.keep and result.status in (PASS, SKIP):
            shutil.rmtree(self.workdir, ignore_errors=True)
            result.workdir = ""

    # the timeline

    def _play(self) -> None:
        self.t0 = time.monotonic()
        for step in self.scenario.steps:
            delay = self.t0 + step.at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if step.wait_records:
                self._wait_records(step)
            if step.wait_s:
                time.sleep(step.wait_s)
            self.say(f"  {step}" + (f": {step.say}" if step.say else ""))
            at = getattr(self, f"_do_{step.do}")(step, **step.args)
            if step.id and at is not None:     # None: the step could not be played (not wired)
                self.times[step.id] = at
            if self.agent.proc and step.do not in ("kill", "damage_store"):
                self.agent.check_alive()
        self.t_end = time.monotonic()

    def _wait_records(self, step: Step) -> None:
        if self.collector is None:
            return
        start = self.collector.record_count()
        deadline = time.monotonic() + 30
        while self.collector.record_count() - start < step.wait_records:
            if time.monotonic() > deadline:
                raise RigError(f"{step}: waited 30 s for {step.wait_records} record(s) at the broker")
            time.sleep(0.01)

    def _drive(self, name, level: int) -> float | None:
        pin, _active, _out = self.site.pin(name)
        reason = self.pins.wired(pin)
        if reason:
            self.notes.append(f"stimulus skipped: {reason}")
            return None
        return self.pins.drive(pin, level)

    def _later(self, seconds: float, fn) -> None:
        timer = threading.Timer(seconds, fn)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _do_car(self, step, lane, plate, color, image, frames, dwell_s, presence, rng=None):
        import numpy as np
        rng = rng or np.random.default_rng(zlib.crc32(plate.encode()))
        jpeg = self.frames.render(plate, color, image, rng)   # one car, seen in `frames` frames
        at = time.monotonic()
        paths = [self.frames.put(lane, jpeg) for _ in range(frames)]
        self.vehicles += 1
        presence_pin = f"{lane}.presence" if presence and f"{lane}.presence" in self.site.pins else None
        if presence_pin:
            _pin, active, _ = self.site.pin(presence_pin)
            at = self._drive(presence_pin, active) or at

        def leave():
            if presence_pin and self.agent.proc and self.agent.proc.poll() is None:
                try:
                    self._drive(presence_pin, 1 - active)
                except (OSError, RuntimeError):
                    pass
            for path in paths:
                path.unlink(missing_ok=True)
        self._later(dwell_s, leave)
        return at

    def _do_traffic(self, step, lane, count, interval_ms, image, seed, dwell_s, frames):
        import numpy as np
        from models.synth import random_plate
        rng = np.random.default_rng(seed)
        first = None
        for i in range(count):
            text, kind = random_plate(rng, "small")
            at = self._do_car(step, lane, text, kind, image, frames, dwell_s, True, rng=rng)
            first = first or at
            time.sleep(interval_ms / 1000)
            if i % 50 == 49:
                self.say(f"    {i + 1}/{count} vehicles")
                self.agent.check_alive()
        return first

    def _do_card_place(self, step, reader, card):
        at = time.monotonic()
        self.readers.place(reader, card)
        return at

    def _do_card_remove(self, step, reader):
        at = time.monotonic()
        self.readers.call(reader, "remove")
        return at

    def _do_reader_unplug(self, step, reader):
        at = time.monotonic()
        self.readers.call(reader, "unplug")
        return at

    def _do_reader_replug(self, step, reader):
        at = time.monotonic()
        self.readers.call(reader, "replug")
        return at

    def _do_press(self, step, button, ms, repeat, gap_ms):
        name = button if button.startswith("alarm.") else f"alarm.{button}"
        _pin, active, _ = self.site.pin(name)
        first = None
        for i in range(repeat):
            if i:
                time.sleep(gap_ms / 1000)
            at = self._drive(name, active)
            first = first or at
            time.sleep(ms / 1000)
            self._drive(name, 1 - active)
        return first

    def _do_drive(self, step, pin, level, ms):
        at = self._drive(pin, level)
        if ms:
            time.sleep(ms / 1000)
            self._drive(pin, 1 - level)
        return at

    def _no_broker(self, step) -> bool:
        if self.collector is None:
            self.notes.append(f"stimulus skipped: {step} (no broker in this run)")
            return True
        return False

    def _do_broker_down(self, step):
        if self._no_broker(step):
            return None
        at = time.monotonic()
        self.broker.stop()
        return at

    def _do_broker_up(self, step):
        if self._no_broker(step):
            return None
        self.broker.start()
        at = time.monotonic()
        if not self.collector.subscribed.wait(10):
            raise RigError("the rig's own subscriber did not reconnect to the restarted broker")
        return at

    def _do_kill(self, step):
        self.pins.detach()
        at = time.monotonic()
        self.agent.kill()
        return at

    def _do_restart(self, step):
        at = time.monotonic()
        self._start_agent()
        return at

    def _do_damage_store(self, step):
        """What a failing SD card does to a database: its first page and the start of its
        WAL overwritten (from a sound WAL SQLite would read the first page back). Only
        between a `kill` and a `restart`: nothing may have the files open."""
        if self.agent.proc and self.agent.proc.poll() is None:
            raise RigError(f"{step}: the agent is running; damage the store between a kill and a restart")
        at = time.monotonic()
        self._stored_before_damage.update(stored_records(self.workdir / "data"))
        for name in ("gate.db", "gate.db-wal"):
            path = self.workdir / "data" / name
            if path.exists():
                with open(path, "r+b") as f:
                    f.write(os.urandom(4096))
        return at

    def _do_camera_stop(self, step, lane):
        at = time.monotonic()
        self.frames.lose(lane)
        return at

    def _do_camera_return(self, step, lane):
        at = time.monotonic()
        self.frames.restore(lane)
        return at

    def _do_drill(self, step, on, minutes):
        from agent.bus import DRILL
        at = time.monotonic()
        until = time.time() + minutes * 60 if on else None
        try:
            handlers = self.pins.bus(DRILL, on=on, source="command", until=until)
        except PinsUnavailable as exc:
            self.notes.append(f"stimulus skipped: {exc}")
            return None
        if handlers == 0:
            self.notes.append("drill: nothing in the agent listens to the drill bus topic")
        return at

    def _do_wait(self, step):
        return time.monotonic()

    # judging

    def _judge(self) -> list[Check]:
        expects = self.scenario.expects
        deadline_cap = self.t0 + self.scenario.timeout_s
        checks: dict[int, Check] = {}
        while True:
            now = time.monotonic()
            for i, expect in enumerate(expects):
                if i in checks:
                    continue
                check = self._evaluate(expect, now)
                if check is not None:
                    checks[i] = check
            if len(checks) == len(expects):
                break
            if now > deadline_cap:
                for i, expect in enumerate(expects):
                    if i not in checks:
                        checks[i] = Check(expect.name, FAIL, None,
                                          f"scenario timeout ({self.scenario.timeout_s:g} s) before it was decided")
                break
            time.sleep(0.1)
        for i, expect in enumerate(expects):
            check = checks[i]
            if expect.kind == "record" and not expect.never and check.status == FAIL and check.measured_ms is None:
                late = self._matching(expect, self._ref(expect))
                if late:
                    check.detail += f"; it came {(late[0][0] - self._ref(expect)) * 1000:.0f} ms after the step"
        return [checks[i] for i in range(len(expects))]

    def _ref(self, expect: Expect) -> float:
        return self.times.get(expect.after, self.t0) if expect.after else self.t0

    def _evaluate(self, expect: Expect, now: float) -> Check | None:
        """A Check once the expectation is decided, None while it is still open."""
        if expect.after and expect.after not in self.times:
            return Check(expect.name, SKIP, None, f"step {expect.after!r} was skipped")
        if expect.kind != "pin" and self.collector is None:
            return Check(expect.name, SKIP, None, "no broker in this run (mosquitto not installed)")
        return getattr(self, f"_eval_{expect.kind}")(expect, now)

    def _eval_pin(self, expect: Expect, now: float) -> Check | None:
        pin, active, _ = self.site.pin(expect.pin)
        reason = self.pins.wired(pin)
        if reason:
            return Check(expect.name, SKIP, None, reason)
        target = expect.level if expect.level is not None else (active if expect.on else 1 - active)
        ref = self._ref(expect)
        deadline = ref + expect.within_ms / 1000
        changes = self.pins.changes(pin)
        hit = first_at_level(changes, target, ref)
        if expect.never:
            if hit is not None and hit <= deadline:
                return Check(expect.name, FAIL, (hit - ref) * 1000, f"pin {pin} went to {target}")
            return Check(expect.name, PASS, None, f"pin {pin} never went to {target}") if now > deadline else None
        if hit is not None:
            ms = (hit - ref) * 1000
            status = PASS if hit <= deadline else FAIL
            return Check(expect.name, status, ms, "" if status == PASS else f"late: {ms:.0f} ms")
        if now > deadline:
            return Check(expect.name, FAIL, None, f"pin {pin} never reached level {target}; "
                                                  f"changes: {_fmt_changes(changes, ref)}")
        return None

    def _matching(self, expect: Expect, ref: float) -> list[tuple[float, dict]]:
        found = []
        for message in self.collector.snapshot():
            if message.at < ref or (expect.topic and not topic_matches(expect.topic, message.topic)):
                continue
            for record in message.records:
                if record.get("kind") == expect.record and contains(record.get("data", {}), expect.fields):
                    found.append((message.at, record))
        return found

    def _eval_record(self, expect: Expect, now: float) -> Check | None:
        ref = self._ref(expect)
        deadline = ref + expect.within_ms / 1000
        found = self._matching(expect, ref)
        if expect.never:
            early = [at for at, _ in found if at <= deadline]
            if early:
                return Check(expect.name, FAIL, (early[0] - ref) * 1000, "it came")
            return Check(expect.name, PASS) if now > deadline else None
        if found:
            at, record = found[0]
            ms = (at - ref) * 1000
            status = PASS if at <= deadline else FAIL
            return Check(expect.name, status, ms, "" if status == PASS else f"late: {ms:.0f} ms")
        if now > deadline:
            same_kind = [r for m in self.collector.snapshot() for r in m.records if r.get("kind") == expect.record]
            hint = (f"; {len(same_kind)} {expect.record} record(s) with other fields, last: "
                    f"{json.dumps(same_kind[-1].get('data'), ensure_ascii=False)[:200]}") if same_kind else ""
            return Check(expect.name, FAIL, None, f"none arrived{hint}")
        return None

    def _eval_count(self, expect: Expect, now: float) -> Check | None:
        need = max(expect.min, int(expect.min_per_vehicle * self.vehicles + 0.999))
        most = int(expect.max_per_vehicle * self.vehicles) if expect.max_per_vehicle else None
        uuids = {r["uuid"] for m in self.collector.snapshot() for r in m.records
                 if r.get("kind") == expect.count and contains(r.get("data", {}), expect.fields)}
        deadline = self.t_end + expect.within_ms / 1000
        bounds = f"{need}" + (f"..{most}" if most is not None else "+")
        found = f"{len(uuids)} for {self.vehicles} vehicles (needed {bounds})"
        if most is not None and len(uuids) > most:
            return Check(expect.name, FAIL, None, found)
        if len(uuids) >= need and (most is None or now > deadline):
            return Check(expect.name, PASS, None, found, counted=True)
        if now > deadline:
            return Check(expect.name, FAIL, None, found)
        return None

    def _eval_all_synced(self, expect: Expect, now: float) -> Check | None:
        """Decided once the agent has stored nothing new but health records for SETTLE_S
        (a car's records keep coming for a moment after the last step) and every record
        older than IN_FLIGHT_S is at the broker; or at the deadline."""
        deadline = self.t_end + expect.within_ms / 1000
        stored = {**self._stored_before_damage, **stored_records(Path(self.config_path.parent / "data"))}
        seen = self.collector.uuids()
        young = time.time() - IN_FLIGHT_S
        missing = {u: kind for u, (kind, created) in stored.items() if u not in seen and created < young}
        events = sum(1 for kind, _ in stored.values() if kind != "health")
        if events != self._stored_count:
            self._stored_count, self._stored_changed = events, now
        settled = now - max(self._stored_changed, self.t_end) >= SETTLE_S
        if (missing or not settled) and now <= deadline:
            return None
        dupes = sum(n - 1 for n in seen.values() if n > 1)
        phantom = [u for u in seen if u not in stored]
        detail = f"{len(stored)} stored, {len(seen)} distinct at the broker, {dupes} duplicate(s) by uuid"
        if missing:
            kinds = {}
            for kind in missing.values():
                kinds[kind] = kinds.get(kind, 0) + 1
            return Check(expect.name, FAIL, None, f"{len(missing)} never reached the broker "
                         f"({', '.join(f'{k}: {n}' for k, n in kinds.items())}); {detail}")
        if phantom:
            return Check(expect.name, FAIL, None, f"{len(phantom)} uuid(s) at the broker are not in "
                         f"the agent's database; {detail}")
        if not stored:
            return Check(expect.name, FAIL, None, "the agent stored no records at all")
        return Check(expect.name, PASS, (now - self.t_end) * 1000, detail)


def dated(text: str) -> str:
    """A scenario's list text with {yesterday} and {tomorrow} filled in: a visitor pass needs a
    time window around the run, and a window of three days holds in any time zone."""
    import datetime
    today = datetime.date.today()
    return (text.replace("{yesterday}", (today - datetime.timedelta(days=1)).isoformat())
                .replace("{tomorrow}", (today + datetime.timedelta(days=1)).isoformat()))


def stored_records(data_dir: Path) -> dict[str, tuple[str, float]]:
    """uuid -> (kind, created) of every record in the agent's SQLite store (read-only, WAL-safe)."""
    path = data_dir / "gate.db"
    if not path.exists():
        return {}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return {u: (k, c) for u, k, c in con.execute("SELECT uuid, kind, created FROM records")}
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


def first_at_level(changes: list[tuple[float, float]], level: int, since: float) -> float | None:
    """When the pin was first at `level` at or after `since` (`since` itself if already there)."""
    before = [c for c in changes if c[0] <= since]
    if before and round(before[-1][1]) == level:
        return since
    for at, value in changes:
        if at > since and round(value) == level:
            return at
    return None


def contains(data, want) -> bool:
    if isinstance(want, dict):
        return isinstance(data, dict) and all(k in data and contains(data[k], v) for k, v in want.items())
    return data == want


def topic_matches(pattern: str, topic: str) -> bool:
    p, t = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(p) == len(t)


def _fmt_changes(changes, ref) -> str:
    shown = [f"{(at - ref) * 1000:+.0f}ms:{round(v)}" for at, v in changes[-6:]]
    return " ".join(shown) or "none"


def run_all(scenarios: list[Scenario], **kwargs) -> list[Result]:
    return [Rig(s, **kwargs).run() for s in scenarios]
