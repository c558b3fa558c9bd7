"""`gate-agent selftest`: try every part of the gate, say what works and how to fix what doesn't.

Each check returns Results (PASS / WARN / FAIL / SKIP, the reason, the fix).
A check that crashes is itself a FAIL with the error, never a traceback.
Hardware is reached through the same libraries the agent uses: gpiozero (with
the configured pin factory, or MockFactory with --simulate), pyserial, OpenCV
or picamera2, paho-mqtt.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from agent import config as configmod

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
CHECKS = ("config", "keys", "service", "relays", "inputs", "readers", "cameras", "broker", "disk",
          "clock")
SAM_STATUS = bytes.fromhex("AAAAAA96690003 11FFED".replace(" ", ""))
SAM_PREAMBLE = bytes.fromhex("AAAAAA9669")
BAUDS = (115200, 57600, 38400, 19200, 9600)
SW3_MEANING = {0x90: "success", 0x10: "checksum error in the request", 0x11: "length error",
               0x21: "unknown command", 0x24: "unknown error", 0x60: "SAM self-test failed",
               0x66: "SAM not authorised"}
MIN_FREE_MB = 64


@dataclass
class Result:
    check: str
    part: str
    status: str
    reason: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Options:
    simulate: bool = False
    interactive: bool = False
    relays: bool = True
    pin_factory: object = None
    confirm: Callable[[str], bool] | None = None
    say: Callable[[str], None] = print
    input_wait_s: float = 15.0
    save_frames: Path | None = None
    broker_timeout_s: float = 10.0
    run: Callable = subprocess.run
    extra: dict = field(default_factory=dict)


def run_all(config_path, *, simulate=False, interactive=False, relays=True, only=(),
            save_frames=None, **kwargs) -> list[Result]:
    """Every check (or those in `only`), in the order an installer would walk the gate."""
    import click
    opts = Options(simulate=simulate, interactive=interactive, relays=relays, save_frames=save_frames,
                   confirm=lambda q: click.confirm(q, default=True), say=click.echo)
    for key, value in kwargs.items():
        setattr(opts, key, value)
    if opts.simulate and opts.pin_factory is None:
        from gpiozero.pins.mock import MockFactory, MockPWMPin
        opts.pin_factory = MockFactory(pin_class=MockPWMPin)
    wanted = set(only) or set(CHECKS)
    try:
        config = configmod.load(config_path, check_files=False)
    except configmod.ConfigError as exc:
        return [Result("config", str(config_path), FAIL, str(exc).replace("\n", "; "),
                       "fix the lines named, then 'gate-agent config check'")]
    results = [Result("config", str(config_path), PASS, "valid")] if "config" in wanted else []
    for name in CHECKS[1:]:
        if name not in wanted:
            continue
        try:
            results += CHECK_FUNCTIONS[name](config, opts)
        except Exception as exc:  # a broken check must not hide the others
            results.append(Result(name, name, FAIL, f"the check itself failed: {type(exc).__name__}: {exc}",
                                  "report this with the output of 'gate-agent selftest --json'"))
    return results


# --- keys and certificate ---------------------------------------------------------

def check_keys(config, opts: Options) -> list[Result]:
    from agent.privacy import KeyError_, load_key
    from provisioning import keys as keysmod
    out = []
    try:
        load_key(config.privacy.key_file)
        out.append(Result("keys", "data key", PASS, config.privacy.key_file))
    except KeyError_ as exc:
        out.append(Result("keys", "data key", FAIL, str(exc), "sudo gate-agent provision init"))
    list_key = Path(config.decisions.list_key_file)
    if list_key.is_file() and list_key.stat().st_size == 32:
        out.append(Result("keys", "list key", PASS, str(list_key)))
    else:
        out.append(Result("keys", "list key", FAIL, f"{list_key} missing or not 32 bytes",
                          "sudo gate-agent provision init"))
    command_key = Path(config.mqtt.command_key_file)
    if command_key.is_file():
        try:
            keysmod.read_command_key(command_key)
            out.append(Result("keys", "command key", PASS, str(command_key)))
        except keysmod.KeyProblem as exc:
            out.append(Result("keys", "command key", FAIL, str(exc),
                              "gate-agent provision command-key FILE --force"))
    else:
        out.append(Result("keys", "command key", WARN, f"{command_key} not installed: every signed "
                          "command and list from the platform will be refused",
                          "gate-agent provision command-key FILE (the platform's Ed25519 key)"))
    out.append(_check_cert(config, keysmod))
    return out


def _check_cert(config, keysmod) -> Result:
    mqtt = config.mqtt
    if not mqtt.cert_file:
        if mqtt.url.startswith("mqtts://") and not mqtt.username:
            return Result("keys", "device certificate", WARN, "none installed (mqtt.cert_file is empty): "
                          "the platform broker will refuse this device",
                          "send keys/device.csr to the platform, then "
                          "'gate-agent provision cert install device.pem ca.pem'")
        return Result("keys", "device certificate", SKIP, "not used (no mqtt.cert_file)")
    try:
        key = keysmod.load_device_key(Path(mqtt.key_file or Path(mqtt.cert_file).with_name("device.key")))
        cert = keysmod.load_certs(Path(mqtt.cert_file), "device certificate")
        cas = keysmod.load_certs(Path(mqtt.ca_file), "CA certificate") if mqtt.ca_file else []
        warnings = keysmod.check_device_cert(cert[0], key, cas, config.device.id)
    except keysmod.KeyProblem as exc:
        return Result("keys", "device certificate", FAIL, str(exc),
                      "gate-agent provision cert install CERT CA")
    days = (cert[0].not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).days
    if warnings:
        return Result("keys", "device certificate", WARN, "; ".join(warnings),
                      "ask the platform for a new certificate for keys/device.csr")
    return Result("keys", "device certificate", PASS, f"matches the device key, valid {days} more days")


# --- is the agent running? ----------------------------------------------------------

def check_service(config, opts: Options) -> list[Result]:
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        return [Result("service", "gate-agent.service", SKIP, "systemd is not running here")]
    active = opts.run(["systemctl", "is-active", "gate-agent.service"], capture_output=True, text=True)
    enabled = opts.run(["systemctl", "is-enabled", "gate-agent.service"], capture_output=True, text=True)
    if active.stdout.strip() == "active":
        return [Result("service", "gate-agent.service", WARN, "the agent is running and holds the pins "
                       "and serial ports: relay, input and reader checks may fail because of it",
                       "sudo systemctl stop gate-agent; run the selftest; sudo systemctl start gate-agent")]
    if enabled.stdout.strip() != "enabled":
        return [Result("service", "gate-agent.service", WARN, "not installed or not enabled: the agent "
                       "won't start at boot", "sudo gate-agent provision install-service")]
    return [Result("service", "gate-agent.service", PASS, "enabled (stopped for the selftest)")]


# --- GPIO --------------------------------------------------------------------------

def _outputs(config) -> list[tuple[str, object, float]]:
    """(label, output section, pulse seconds) of every fitted relay, lamp and siren."""
    parts = []
    for lane in config.lanes:
        pulse = lane.pulse_s if lane.barrier_mode == "pulse" else 1.0
        parts.append((f"{lane.name} barrier relay", lane.barrier, pulse))
        parts.append((f"{lane.name} guard lamp", lane.guard_lamp, 1.0))
    parts += [("alarm siren", config.alarm.siren, 0.3), ("alarm ack lamp", config.alarm.ack_lamp, 1.0),
              ("drill lamp", config.alarm.drill_lamp, 1.0)]
    return [(label, dev, pulse) for label, dev, pulse in parts if dev.pin is not None]


def _gpio_problem(exc: Exception, pin: int) -> tuple[str, str]:
    text = f"{type(exc).__name__}: {exc}"
    if "in use" in text.lower() or "busy" in text.lower():
        return text, "the agent (or another program) holds this pin: sudo systemctl stop gate-agent"
    if "factory" in text.lower() or "not supported" in text.lower():
        return text, ("no GPIO on this machine: on the Pi install python3-lgpio (or pip install "
                      "gate-agent[pi]); elsewhere use --simulate")
    if isinstance(exc, PermissionError) or "permission" in text.lower():
        return text, "run with sudo, or add the user to the gpio group"
    return text, f"check that BCM pin {pin} is free and the pin factory works"


def gpio_factory(opts: Options):
    """The configured pin factory (GPIOZERO_PIN_FACTORY, else gpiozero's own choice: lgpio
    on Bookworm), or a Result saying why there is none."""
    if opts.pin_factory is not None:
        return opts.pin_factory
    import warnings
    from gpiozero import Device
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Device.ensure_pin_factory()
    except Exception as exc:
        reason, fix = _gpio_problem(exc, 0)
        return Result("gpio", "GPIO pin factory", FAIL, reason, fix)
    opts.pin_factory = Device.pin_factory
    return opts.pin_factory


def _no_gpio(opts: Options) -> list[Result]:
    """The pin factory's failure, said once."""
    if opts.extra.get("gpio_reported"):
        return []
    opts.extra["gpio_reported"] = True
    return [gpio_factory(opts)]


def check_relays(config, opts: Options) -> list[Result]:
    from gpiozero import DigitalInputDevice, OutputDevice
    out = []
    if not opts.relays:
        return [Result("relays", "relays", SKIP, "--no-relays")]
    if isinstance(gpio_factory(opts), Result):
        return _no_gpio(opts)
    for label, spec, pulse in _outputs(config):
        part = f"{label} (BCM {spec.pin})"
        if opts.interactive and not opts.confirm(f"Pulse the {label} on BCM {spec.pin} now "
                                                 f"({pulse:g} s)?"):
            out.append(Result("relays", part, SKIP, "skipped by the installer"))
            continue
        try:
            device = OutputDevice(spec.pin, active_high=spec.active_high, initial_value=False,
                                  pin_factory=opts.pin_factory)
        except Exception as exc:
            reason, fix = _gpio_problem(exc, spec.pin)
            out.append(Result("relays", part, FAIL, reason, fix))
            continue
        try:
            device.on()
            time.sleep(min(pulse, 0.02) if opts.simulate else pulse)
            device.off()
            out.append(_relay_verdict(label, part, spec, device, opts))
        finally:
            device.close()
    for lane in config.lanes:
        if lane.barrier.pin is not None and lane.barrier_confirm.pin is not None:
            out.append(_barrier_confirm(lane, opts, DigitalInputDevice, OutputDevice))
    return out


def _relay_verdict(label, part, spec, device, opts: Options) -> Result:
    if opts.simulate:
        levels = [s.state for s in device.pin.states]
        active = 1 if spec.active_high else 0
        if active in levels[1:] and levels[-1] != active:
            return Result("relays", part, PASS, "pin went active and back (simulated: nothing clicks)")
        return Result("relays", part, FAIL, f"pin levels {levels}: never went active and back",
                      "check lanes/alarm active_high in the config")
    if opts.interactive:
        if opts.confirm(f"Did the {label} click (and the barrier/lamp/siren respond)?"):
            return Result("relays", part, PASS, "clicked (confirmed by the installer)")
        return Result("relays", part, FAIL, "the installer heard no click",
                      f"check the relay board's power and the wire from BCM {spec.pin} "
                      "(GPIO header pin map: pinout.xyz); if the relay is energised at rest, "
                      "flip active_high in the config")
    return Result("relays", part, WARN, "pulsed, but nobody confirmed it clicked",
                  "run 'gate-agent selftest' interactively to confirm each relay")


def _barrier_confirm(lane, opts: Options, input_class, output_class) -> Result:
    part = f"{lane.name} barrier confirm (BCM {lane.barrier_confirm.pin})"
    if opts.simulate:
        return Result("relays", part, SKIP, "simulated: no barrier moves")
    spec = lane.barrier_confirm
    try:
        sensor = input_class(spec.pin, pull_up=spec.pull_up, pin_factory=opts.pin_factory)
        relay = output_class(lane.barrier.pin, active_high=lane.barrier.active_high,
                             initial_value=False, pin_factory=opts.pin_factory)
    except Exception as exc:
        reason, fix = _gpio_problem(exc, spec.pin)
        return Result("relays", part, FAIL, reason, fix)
    try:
        relay.on()
        time.sleep(lane.pulse_s if lane.barrier_mode == "pulse" else 0.0)
        if lane.barrier_mode == "pulse":
            relay.off()
        deadline = time.monotonic() + lane.confirm_timeout_s
        while time.monotonic() < deadline:
            if _is_active(sensor.pin.state, spec.active_high):
                return Result("relays", part, PASS, "the barrier reported open after the pulse")
            time.sleep(0.02)
        return Result("relays", part, FAIL, f"no open signal within {lane.confirm_timeout_s:g} s "
                      "of the pulse", "check the barrier's position switch wiring, or "
                      "lanes.barrier_confirm.active_high / confirm_timeout_s")
    finally:
        relay.off()
        relay.close()
        sensor.close()


def _is_active(level, active_high: bool) -> bool:
    return bool(level) == bool(active_high)


def _inputs(config) -> list[tuple[str, int, bool, bool, bool]]:
    """(label, pin, pull_up, active_high, is_alarm) of every fitted input."""
    parts = []
    for lane in config.lanes:
        for name in ("presence", "manual_open", "barrier_confirm"):
            spec = getattr(lane, name)
            if spec.pin is not None:
                parts.append((f"{lane.name} {name.replace('_', ' ')}", spec.pin, spec.pull_up,
                              spec.active_high, False))
    for button in config.alarm.buttons:
        # no: pressing closes the contact to ground; nc: pressing (or a cut wire) opens it
        parts.append((f"alarm button {button.name} ({button.location})", button.pin, True,
                      button.wiring == "nc", True))
    return parts


def check_inputs(config, opts: Options) -> list[Result]:
    from gpiozero import DigitalInputDevice
    out = []
    if isinstance(gpio_factory(opts), Result):
        return _no_gpio(opts)
    for label, pin, pull_up, active_high, is_alarm in _inputs(config):
        part = f"{label} (BCM {pin})"
        try:
            device = DigitalInputDevice(pin, pull_up=pull_up, pin_factory=opts.pin_factory)
        except Exception as exc:
            reason, fix = _gpio_problem(exc, pin)
            out.append(Result("inputs", part, FAIL, reason, fix))
            continue
        try:
            out.append(_read_input(label, part, device, active_high, is_alarm, opts))
        finally:
            device.close()
    return out


def _read_input(label, part, device, active_high, is_alarm, opts: Options) -> Result:
    level = device.pin.state
    if opts.interactive and not opts.simulate:
        opts.say(f"Trigger the {label} now (press, cover, or drive over it); waiting "
                 f"{opts.input_wait_s:g} s" + (" (no alarm is sent during the selftest)" if is_alarm else ""))
        deadline = time.monotonic() + opts.input_wait_s
        while time.monotonic() < deadline:
            if _is_active(device.pin.state, active_high):
                return Result("inputs", part, PASS, "seen active when triggered")
            time.sleep(0.01)
        return Result("inputs", part, FAIL, f"no change in {opts.input_wait_s:g} s",
                      "check the wire to this pin and its common/ground; for a loop detector, "
                      "its relay output")
    if not _is_active(level, active_high):
        return Result("inputs", part, PASS, f"reads idle (level {'high' if level else 'low'})")
    if is_alarm:
        return Result("inputs", part, FAIL, f"reads ACTIVE at rest (level {'high' if level else 'low'}): "
                      "the agent would raise an alarm or tamper at start",
                      "check the button, its wire, and alarm.buttons.wiring (no = normally open, "
                      "nc = normally closed)")
    return Result("inputs", part, WARN, f"reads ACTIVE now (level {'high' if level else 'low'})",
                  "if nothing is there, check the wiring and active_high / pull_up for this input")


# --- card readers ----------------------------------------------------------------

def sam_reply(port, timeout: float = 0.6) -> bytes | None:
    """Read one reply frame (preamble, length, body) or None if none came in time."""
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline:
        chunk = port.read(max(1, port.in_waiting))
        buffer += chunk
        start = buffer.find(SAM_PREAMBLE)
        if start >= 0 and len(buffer) >= start + 7:
            length = int.from_bytes(buffer[start + 5:start + 7], "big")
            if len(buffer) >= start + 7 + length:
                return buffer[start:start + 7 + length]
    return None


def parse_sam_reply(frame: bytes) -> tuple[int, str]:
    """(SW3, problem or '') of a reply frame."""
    body = frame[5:]
    if len(body) < 6:
        return -1, f"reply too short ({frame.hex(' ')})"
    check = 0
    for b in body[:-1]:
        check ^= b
    if check != body[-1]:
        return -1, f"reply checksum {body[-1]:02X}, expected {check:02X}"
    return body[4], ""


def check_readers(config, opts: Options) -> list[Result]:
    out = []
    for reader in config.readers:
        part = f"reader {reader.name} ({reader.kind} on {reader.port})"
        out.append(_check_reader(reader, part, opts))
    return out


def _open_serial(port: str, baud: int):
    import serial
    kwargs = {"exclusive": True} if port.startswith("/") else {}
    return serial.serial_for_url(port, baudrate=baud, timeout=0.05, **kwargs)


def _serial_problem(reader, exc) -> Result:
    part = f"reader {reader.name} ({reader.kind} on {reader.port})"
    err = getattr(exc, "errno", None)
    text = str(exc)
    if err == 2 or "No such file" in text:
        return Result("readers", part, FAIL, f"{reader.port} does not exist",
                      "plug the reader in and check its cable; 'ls -l /dev/serial/by-id' shows the "
                      "ports; set readers.port to the one that appears")
    if err == 13 or "Permission denied" in text:
        return Result("readers", part, FAIL, f"no permission to open {reader.port}",
                      "run with sudo; the service user must be in the dialout group")
    if err in (11, 16) or "busy" in text.lower() or "lock" in text.lower():
        return Result("readers", part, FAIL, f"{reader.port} is in use by another program",
                      "stop the agent (sudo systemctl stop gate-agent) or the other program")
    return Result("readers", part, FAIL, f"cannot open {reader.port}: {text}",
                  "check readers.port (a path like /dev/ttyUSB0 or a pyserial URL)")


def _check_reader(reader, part: str, opts: Options) -> Result:
    import serial
    if reader.kind != "idcard":
        return _check_passive_reader(reader, part, opts)
    bauds = (reader.baud,) if reader.baud else BAUDS
    for baud in bauds:
        try:
            port = _open_serial(reader.port, baud)
        except (serial.SerialException, OSError, ValueError) as exc:
            return _serial_problem(reader, exc)
        try:
            port.reset_input_buffer()
            port.write(SAM_STATUS)
            frame = sam_reply(port)
        finally:
            port.close()
        if frame is None:
            continue
        sw3, problem = parse_sam_reply(frame)
        if problem:
            return Result("readers", part, FAIL, f"garbled reply at {baud} baud: {problem}",
                          "check the cable (noise, ground) and that readers.kind is right")
        if sw3 == 0x90:
            return Result("readers", part, PASS, f"SAM status OK (90) at {baud} baud")
        meaning = SW3_MEANING.get(sw3, "unknown status")
        return Result("readers", part, FAIL, f"SAM answered {sw3:02X}: {meaning}",
                      "the reader's security module is faulty or not authorised: ask the reader's "
                      "supplier (a SAM must be authorised by the Ministry of Public Security)")
    tried = ", ".join(map(str, bauds))
    return Result("readers", part, FAIL, f"no answer to the SAM status request at {tried} baud",
                  "check the reader's power and cable, that it is a resident ID card (SAM) reader, "
                  "and readers.baud")


def _check_passive_reader(reader, part: str, opts: Options) -> Result:
    import serial
    baud = reader.baud or (9600 if reader.kind == "rdm6300" else 115200)
    try:
        port = _open_serial(reader.port, baud)
    except (serial.SerialException, OSError, ValueError) as exc:
        return _serial_problem(reader, exc)
    try:
        if not opts.interactive:
            return Result("readers", part, WARN, f"port opens at {baud} baud; a {reader.kind} reader "
                          "only speaks when a card is shown", "run the selftest interactively and "
                          "show a badge when asked")
        opts.say(f"Show a badge to {reader.name} now; waiting {opts.input_wait_s:g} s")
        deadline = time.monotonic() + opts.input_wait_s
        while time.monotonic() < deadline:
            data = port.read(64)
            if data:
                return Result("readers", part, PASS, f"received {len(data)} bytes when a badge was shown")
        return Result("readers", part, FAIL, f"nothing received in {opts.input_wait_s:g} s",
                      "check the reader's power, TX wire to the Pi's RX, and readers.baud")
    finally:
        port.close()


# --- cameras and plates ----------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def grab_frame(source: str):
    """One BGR frame from a lane.camera source; raises RuntimeError with the reason.

    Goes through the agent's own camera driver (drivers.camera.open_source) when it
    is installed, so the selftest tries the same path the agent will use."""
    try:
        import drivers.camera as driver
    except ModuleNotFoundError as exc:
        if exc.name not in ("drivers", "drivers.camera"):
            raise
        return _grab_frame_directly(source)
    try:
        frames = driver.open_source(source)
        try:
            frame = frames.read()
        finally:
            frames.close()
    except driver.CameraError as exc:
        raise RuntimeError(str(exc)) from None
    if frame is None:
        raise RuntimeError(f"{source} gave no frame")
    return frame.image


def _grab_frame_directly(source: str):
    """The same without drivers.camera: picamera2, OpenCV, or an image file/folder."""
    import cv2
    path = Path(source)
    if source == "picamera2":
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise RuntimeError("picamera2 cannot be imported: sudo apt install python3-picamera2, "
                               "and make the venv with --system-site-packages") from None
        camera = Picamera2()
        try:
            camera.configure(camera.create_still_configuration(main={"format": "BGR888"}))
            camera.start()
            return camera.capture_array()
        finally:
            camera.close()
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise RuntimeError(f"folder {path} holds no .jpg/.png images")
        path = images[0]
    if path.suffix.lower() in IMAGE_SUFFIXES:
        frame = cv2.imread(str(path))
        if frame is None:
            raise RuntimeError(f"{path} is not a readable image")
        return frame
    if not source.isdigit() and "://" not in source and not path.exists():
        raise RuntimeError(f"{source} does not exist")
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source, cv2.CAP_ANY,
                               [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000])
    try:
        if not capture.isOpened():
            raise RuntimeError(f"cannot open {source}")
        ok, frame = capture.read()
        if not ok or frame is None:
            raise RuntimeError(f"{source} opened but gave no frame")
        return frame
    finally:
        capture.release()


def check_cameras(config, opts: Options) -> list[Result]:
    out = []
    plates = None
    for lane in config.lanes:
        if not lane.camera:
            continue
        part = f"{lane.name} camera ({lane.camera})"
        try:
            frame = grab_frame(lane.camera)
        except Exception as exc:
            out.append(Result("cameras", part, FAIL, str(exc),
                              "check lanes.camera, the cable or network to the camera, and its power"))
            continue
        out.append(_frame_verdict(lane, part, frame, opts))
        plates = plates or PlateCheck(config.vision.engine)
        out.append(plates.check(lane, frame))
    return out


def _frame_verdict(lane, part: str, frame, opts: Options) -> Result:
    height, width = frame.shape[:2]
    if opts.save_frames:
        import cv2
        opts.save_frames.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(opts.save_frames / f"{lane.name}.jpg"), frame)
    if lane.roi and (lane.roi[2] > width or lane.roi[3] > height):
        return Result("cameras", part, FAIL, f"lanes.roi {lane.roi} reaches outside the "
                      f"{width}x{height} frame", "set lanes.roi inside the frame (x2 <= width, y2 <= height)")
    brightness = float(frame.mean())
    if brightness < 15:
        return Result("cameras", part, WARN, f"{width}x{height} frame is nearly black "
                      f"(mean {brightness:.0f})", "lens cap? night without IR light? check exposure")
    if brightness > 240:
        return Result("cameras", part, WARN, f"{width}x{height} frame is nearly white "
                      f"(mean {brightness:.0f})", "over-exposed: sun or headlights into the lens?")
    return Result("cameras", part, PASS, f"{width}x{height} frame, mean brightness {brightness:.0f}")


class PlateCheck:
    """A plate read on a test frame through the agent's pipeline (agent.plates: detector,
    then recogniser), or a plain 'not built yet' where that pipeline is not installed."""

    def __init__(self, engine: str):
        self.missing = self.reader_problem = ""
        try:
            from agent.plates.detect import Detector
            from agent.plates.pipeline import read_plates
            from agent.plates.recognise import RecogniserUnavailable, load_reader
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("agent.plates"):
                raise
            self.missing = f"plate reading is not built yet ({exc.name} is missing)"
            return
        self.detector, self.read_plates = Detector(), read_plates
        try:
            self.reader = load_reader(engine)
        except RecogniserUnavailable as exc:
            self.reader, self.reader_problem = None, str(exc)

    def check(self, lane, frame) -> Result:
        part = f"{lane.name} plate read"
        if self.missing:
            return Result("cameras", part, WARN, self.missing + ": the frame was captured but no "
                          "plate read was attempted", "update gate-agent to a version with agent.plates")
        results = self.read_plates(frame, self.detector, self.reader, roi=lane.roi or None)
        if not results:
            return Result("cameras", part, WARN, "no plate found in this frame",
                          "normal with an empty lane: hold a plate (or drive a car) into view and run "
                          "again; otherwise check lanes.roi and the focus")
        if self.reader is None:
            return Result("cameras", part, FAIL, f"{len(results)} plate(s) found, but none can be read: "
                          f"{self.reader_problem}", "install the plate model (models/), see docs/vision.md")
        best = max(results, key=lambda r: r.confidence)
        status = PASS if best.valid else WARN
        return Result("cameras", part, status, f"read {best.text or '?'} ({best.color or 'colour ?'}, "
                      f"confidence {best.confidence:.2f}{'' if best.valid else ', not a valid plate'})",
                      "" if best.valid else "check focus, angle and lanes.roi")


# --- broker ------------------------------------------------------------------------

def check_broker(config, opts: Options) -> list[Result]:
    return [broker_result(config, opts.broker_timeout_s)]


def broker_result(config, timeout: float = 10.0) -> Result:
    import paho.mqtt.client as mqtt
    url = urlparse(config.mqtt.url)
    tls = url.scheme == "mqtts"
    host, port = url.hostname or "", url.port or (8883 if tls else 1883)
    part = f"broker {host}:{port}"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"{config.mqtt.client_id or config.device.id}-selftest",
                         protocol=mqtt.MQTTv311)
    client.connect_timeout = timeout
    try:
        if tls:
            client.tls_set_context(_tls_context(config))
        if config.mqtt.username:
            password = Path(config.mqtt.password_file).read_text().strip() if config.mqtt.password_file else None
            client.username_pw_set(config.mqtt.username, password)
    except (OSError, ssl.SSLError) as exc:
        return Result("broker", part, FAIL, f"cannot load the TLS files: {exc}",
                      "check mqtt.ca_file, cert_file, key_file (gate-agent provision cert install)")
    connected = threading.Event()
    answer = {}

    def on_connect(_client, _userdata, _flags, reason_code, _properties):
        answer["rc"] = reason_code
        connected.set()
    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=max(5, int(timeout)))
    except ssl.SSLCertVerificationError as exc:
        return Result("broker", part, FAIL, f"the broker's certificate is not trusted: {exc.verify_message}",
                      "mqtt.ca_file must be the CA that signed the broker's certificate; 'not yet "
                      "valid' or 'expired' usually means this device's clock is wrong")
    except ssl.SSLError as exc:
        return Result("broker", part, FAIL, f"TLS handshake failed: {exc.reason or exc}",
                      "the broker may require a client certificate: gate-agent provision cert install")
    except ConnectionRefusedError:
        return Result("broker", part, FAIL, "connection refused: nothing listens there",
                      "check mqtt.url (host and port) and that the platform's broker is up")
    except socket.gaierror:
        return Result("broker", part, FAIL, f"cannot resolve {host}",
                      "check mqtt.url and DNS (/etc/resolv.conf, the router)")
    except (TimeoutError, socket.timeout):
        return Result("broker", part, FAIL, f"no answer in {timeout:g} s",
                      "check the network route and firewall to the platform (port {port})".format(port=port))
    except OSError as exc:
        return Result("broker", part, FAIL, f"cannot connect: {exc}", "check the network and mqtt.url")
    client.loop_start()
    try:
        if not connected.wait(timeout):
            return Result("broker", part, FAIL, f"connected but no CONNACK in {timeout:g} s",
                          "the broker is overloaded or something in between drops MQTT")
        rc = answer["rc"]
        if rc.is_failure:
            return Result("broker", part, FAIL, f"the broker refused this device: {rc}",
                          "ask the platform to register this device id and its certificate "
                          "(or check mqtt.username / password_file)")
    finally:
        client.disconnect()
        client.loop_stop()
    if not tls:
        return Result("broker", part, WARN, "connected WITHOUT TLS (mqtt.allow_plaintext = true): "
                      "records travel unencrypted", "use an mqtts:// URL outside a closed test network")
    return Result("broker", part, PASS, "connected over TLS and accepted")


def _tls_context(config) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.mqtt.ca_file or None)
    if config.mqtt.cert_file:
        context.load_cert_chain(config.mqtt.cert_file, config.mqtt.key_file or None)
    return context


# --- disk and clock ----------------------------------------------------------------

def check_disk(config, opts: Options) -> list[Result]:
    data_dir = Path(config.storage.data_dir)
    part = f"disk ({data_dir})"
    existing = next((p for p in [data_dir, *data_dir.parents] if p.exists()), Path("/"))
    free_mb = shutil.disk_usage(existing).free / 1e6
    out = []
    if not data_dir.is_dir():
        out.append(Result("disk", part, FAIL, f"{data_dir} does not exist",
                          "sudo gate-agent provision init (or start the service: StateDirectory makes it)"))
    elif not os.access(data_dir, os.W_OK):
        out.append(Result("disk", part, WARN if os.geteuid() != 0 else FAIL,
                          f"{data_dir} is not writable by this user",
                          "it must be writable by the gate-agent user (systemd's StateDirectory does this)"))
    if free_mb < max(MIN_FREE_MB, config.storage.reserve_mb * 4):
        out.append(Result("disk", part, FAIL, f"only {free_mb:.0f} MB free",
                          "free space (journalctl --vacuum-size=100M, old files) or a bigger SD card"))
    elif free_mb < config.storage.quota_mb:
        out.append(Result("disk", part, WARN, f"{free_mb:.0f} MB free, less than storage.quota_mb = "
                          f"{config.storage.quota_mb}", "lower storage.quota_mb or free space"))
    else:
        out.append(Result("disk", part, PASS, f"{free_mb:.0f} MB free (quota {config.storage.quota_mb} MB)"))
    if data_dir.is_dir():
        out += _check_databases(data_dir)
    return out


DATABASES = ("gate.db", "lists.db", "lists-state.db")


def _check_databases(data_dir: Path) -> list[Result]:
    """Each database there, read through (PRAGMA quick_check) without writing, and those set aside.

    Damage found in gate.db is marked (gate.db.damage-found, as the agent itself does): damage
    past page 1 is otherwise not seen when the agent starts. Only damage: a store SQLite cannot
    read for another reason (locked, not readable by this user) is sound, and is not set aside."""
    from agent.sqlite_threads import damaged_files
    from agent.store import DAMAGE_MARK
    mark = data_dir / DAMAGE_MARK
    out = []
    for name in DATABASES:
        path = data_dir / name
        if path.exists():
            out.append(_database_result(path, mark))
    if mark.exists() and not any(r.part == "database gate.db" and r.fix == RESTART for r in out):
        out.append(Result("disk", "database gate.db", FAIL,
                          f"damage found while the agent ran: {mark.read_text(errors='replace').strip()}", RESTART))
    for path in damaged_files(data_dir):
        fix = ("the agent requeued its unsent records when it started (gate-agent status says how many); "
               "delete it once the outbox has drained" if path.name.startswith("gate.db.")
               else "recover what it held, then delete it: docs/records.md, a damaged store")
        out.append(Result("disk", f"database {path.name}", WARN, "set aside as damaged by the agent", fix))
    return out


RESTART = "restart the agent: it sets gate.db aside and requeues what it can read (docs/records.md)"
QUICK_CHECK_WAIT_S = 10.0
"""How long quick_check waits for a lock the agent holds (its transactions are short)."""


def _database_result(path: Path, mark: Path) -> Result:
    part = f"database {path.name}"
    problem, damaged = _quick_check(path)
    if not problem:
        return Result("disk", part, PASS, "readable (quick_check ok)")
    if not damaged:
        return Result("disk", part, FAIL, f"SQLite cannot read it through, but not for damage "
                      f"(nothing for the agent to set aside): {problem}", _unreadable_fix(path, problem))
    if path.name == "gate.db":
        return Result("disk", part, FAIL, problem + _leave_mark(mark, problem), RESTART)
    return Result("disk", part, FAIL, problem,
                  "the agent sets it aside at its next start when SQLite cannot open it; "
                  "else stop the agent, move it aside, and let the platform send its lists again")


def _leave_mark(mark: Path, problem: str) -> str:
    """Mark the damage for the agent's next start; '' or why the mark could not be left."""
    if mark.exists():
        return ""
    found_at = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        mark.write_text(f"{found_at} selftest: {problem}\n")
    except OSError as exc:
        return f" (and {mark} cannot be written: {exc.strerror}; run the self test as root)"
    return ""


def _unreadable_fix(path: Path, problem: str) -> str:
    if "locked" in problem or "busy" in problem:
        return (f"another program held it locked for over {QUICK_CHECK_WAIT_S:.0f} s: run the self test "
                f"again; if it stays locked, find what holds it (sudo fuser -v {path}): the agent's own "
                "writes wait for it too")
    return (f"check that {path} and its folder belong to the gate-agent user and can be read "
            "(ls -l; sudo chown -R gate-agent: on storage.data_dir), and run the self test as root")


def _quick_check(path: Path) -> tuple[str, bool]:
    """('', False) when SQLite reads the whole file without complaint; else what it says, and
    whether that is damage: quick_check's own findings, or an error SQLite gives only for a file
    that is not (or no longer) a database. Read-only: beside a running agent, and a read-only
    connection leaves a -wal file as it is."""
    from agent.sqlite_threads import is_damage
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=QUICK_CHECK_WAIT_S)
        try:
            rows = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return str(exc), is_damage(exc)
    return ("", False) if rows == ["ok"] else ("; ".join(rows), True)


def check_clock(config, opts: Options) -> list[Result]:
    now = dt.datetime.now(dt.timezone.utc)
    part = "clock"
    if now.year < 2025:
        return [Result("clock", part, FAIL, f"the clock says {now:%Y-%m-%d %H:%M} UTC: every pass "
                       "time and alarm time sent would be wrong", "connect the network for NTP, or "
                       "set it: sudo timedatectl set-time 'YYYY-MM-DD HH:MM:SS'")]
    synced = _ntp_synchronized(opts.run)
    if synced is True:
        return [Result("clock", part, PASS, f"NTP-synchronised ({now:%Y-%m-%d %H:%M} UTC)")]
    loud = (f"THE CLOCK IS NOT SYNCHRONISED ({now:%Y-%m-%d %H:%M} UTC): pass and alarm times "
            "sent to the police platform may be wrong")
    if synced is False:
        return [Result("clock", part, WARN, loud, "check network access to NTP servers "
                       "(timedatectl timesync-status; chronyc sources); a Pi has no battery clock")]
    return [Result("clock", part, WARN, "cannot tell whether the clock is synchronised (no timedatectl "
                   "or chrony answer)", "check with 'timedatectl' on the device")]


def _ntp_synchronized(run) -> bool | None:
    try:
        result = run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                     capture_output=True, text=True, timeout=5)
        if result.returncode == 0 and result.stdout.strip() in ("yes", "no"):
            return result.stdout.strip() == "yes"
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        result = run(["chronyc", "-n", "tracking"], capture_output=True, text=True, timeout=5)
        if result.returncode == 0 and "Leap status" in result.stdout:
            return re.search(r"Leap status\s*:\s*Normal", result.stdout) is not None
    except (OSError, subprocess.TimeoutExpired):
        pass
    return None


CHECK_FUNCTIONS = {"keys": check_keys, "service": check_service, "relays": check_relays,
                   "inputs": check_inputs, "readers": check_readers, "cameras": check_cameras,
                   "broker": check_broker, "disk": check_disk, "clock": check_clock}


def render(results: list[Result]) -> str:
    width = min(48, max((len(r.part) for r in results), default=10))
    lines = [f"{'RESULT':<6}  {'PART':<{width}}  REASON"]
    for r in results:
        lines.append(f"{r.status:<6}  {r.part:<{width}}  {r.reason}")
        if r.fix and r.status in (FAIL, WARN):
            lines.append(f"{'':<6}  {'':<{width}}  fix: {r.fix}")
    counts = {s: sum(r.status == s for r in results) for s in (PASS, WARN, FAIL, SKIP)}
    lines.append("")
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) +
                 (": FAILED" if counts[FAIL] else ": ok"))
    return "\n".join(lines)
