"""The agent's configuration: one TOML file, validated against a schema.

Every error names the key, the bad value and what is allowed. Unknown keys are
errors, so a typo never silently falls back to a default. Secrets are never in
the TOML: the config holds the paths of the files that contain them.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agent.identity import check_device_id

DEFAULT_PATH = Path("/etc/gate-agent/config.toml")
REQUIRED = object()


class ConfigError(Exception):
    """One or more problems in a config file; str() gives one line per problem."""

    def __init__(self, problems: list[str], source: str = ""):
        self.problems = problems
        self.source = source
        super().__init__("\n".join(f"{source}: {p}" if source else p for p in problems))


@dataclass
class Value:
    kind: type | tuple
    default: Any = REQUIRED
    help: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    check: Callable[[Any], str | None] | None = None
    secret_file: bool = False

    def allowed(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
                 list: "a list"}
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        text = " or ".join(names.get(k, k.__name__) for k in kinds)
        if self.min is not None and self.max is not None:
            text += f" from {self.min} to {self.max}"
        elif self.min is not None:
            text += f" of at least {self.min}"
        return text


@dataclass
class Table:
    fields: dict[str, "Value | Table | TableList"]
    help: str = ""
    optional: bool = False


@dataclass
class TableList:
    item: Table
    help: str = ""
    min_items: int = 0
    default: list = field(default_factory=list)


class Section:
    """A validated table: attribute access, read-only by convention."""

    def __init__(self, values: dict[str, Any]):
        self.__dict__.update(values)

    def to_dict(self) -> dict:
        out = {}
        for key, value in self.__dict__.items():
            if isinstance(value, Section):
                out[key] = value.to_dict()
            elif isinstance(value, list):
                out[key] = [v.to_dict() if isinstance(v, Section) else v for v in value]
            else:
                out[key] = value
        return out

    def __repr__(self) -> str:
        return f"Section({self.to_dict()!r})"


def _type_ok(value: Any, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, kinds)


def _validate_value(spec: Value, key: str, value: Any, problems: list[str]) -> Any:
    if not _type_ok(value, spec.kind):
        problems.append(f"{key} = {value!r}: expected {spec.allowed()}")
        return spec.default if spec.default is not REQUIRED else None
    if spec.choices and value not in spec.choices:
        problems.append(f"{key} = {value!r}: expected {spec.allowed()}")
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
            problems.append(f"{key} = {value!r}: expected {spec.allowed()}")
            return value
    if spec.check:
        message = spec.check(value)
        if message:
            problems.append(f"{key} = {value!r}: {message}")
    return value


def _validate_table(spec: Table, prefix: str, data: Any, problems: list[str]) -> Section:
    if not isinstance(data, dict):
        problems.append(f"{prefix} = {data!r}: expected a table")
        data = {}
    for key in data:
        if key not in spec.fields:
            known = ", ".join(sorted(spec.fields))
            problems.append(f"{_join(prefix, key)}: unknown key; allowed here: {known}")
    values = {}
    for name, sub in spec.fields.items():
        key = _join(prefix, name)
        if isinstance(sub, Table) and sub.optional and name not in data:
            values[name] = _absent(sub)
        elif isinstance(sub, Table):
            values[name] = _validate_table(sub, key, data.get(name, {}), problems)
        elif isinstance(sub, TableList):
            raw = data.get(name, sub.default)
            if not isinstance(raw, list):
                problems.append(f"{key} = {raw!r}: expected a list of tables ([[{key}]])")
                raw = []
            if len(raw) < sub.min_items:
                problems.append(f"{key}: at least {sub.min_items} [[{key}]] table(s) required")
            values[name] = [_validate_table(sub.item, f"{key}[{i}]", item, problems)
                            for i, item in enumerate(raw)]
        elif name in data:
            values[name] = _validate_value(sub, key, data[name], problems)
        elif sub.default is REQUIRED:
            problems.append(f"{key}: missing; expected {sub.allowed()}")
            values[name] = None
        else:
            values[name] = sub.default
    return Section(values)


def _absent(spec: Table) -> Section:
    """An optional part that is not fitted: its values are None (a pin of None is no pin)."""
    return Section({name: None for name in spec.fields})


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# --- the schema -------------------------------------------------------------

def _timezone_check(value: str) -> str | None:
    from zoneinfo import ZoneInfo
    try:
        ZoneInfo(value)
    except Exception:
        return "not a known time zone; expected an IANA name such as 'Asia/Shanghai'"
    return None


def _url_check(value: str) -> str | None:
    if not value.startswith(("mqtt://", "mqtts://")):
        return "expected mqtt://HOST:PORT or mqtts://HOST:PORT"
    return None


def _site_check(value: str) -> str | None:
    if not value or not all(c.isalnum() or c in "-_" for c in value):
        return "expected letters, digits, '-' or '_' (it becomes part of MQTT topics)"
    return None


def _drill_schedule_check(value: list) -> str | None:
    from agent.alarm import schedule_problem
    return schedule_problem(value)


def _card_fields_check(value: list) -> str | None:
    from agent.idcard import CARD_FIELDS
    unknown = [v for v in value if v not in CARD_FIELDS]
    if unknown:
        return f"unknown card field(s) {', '.join(map(repr, unknown))}; known: {', '.join(CARD_FIELDS)}"
    return None


RETENTION_HELP = "days to keep; 30 (video/images rule), 90 (anti-terrorism key targets), 180 (banks)"
RECORD_KINDS = ("alarm", "alert", "tamper", "access_decision", "barrier", "command",
                "plate_read", "card_read", "badge_read", "fault", "health")


def _retention() -> Table:
    defaults = {"health": 30, "access_decision": 180, "alarm": 180, "alert": 180, "image": 30}
    return Table({kind: Value(int, defaults.get(kind, 90), RETENTION_HELP, min=1, max=3650)
                  for kind in RECORD_KINDS + ("image",)},
                 help="Retention per record kind, in days. Synced records older than this are purged.")


PIN = Value(int, REQUIRED, "BCM pin number, 0-27", min=0, max=27)


def _input(help_text: str, debounce: float = 0.05, pull_up: bool = True, optional=True) -> Table:
    return Table({
        "pin": Value(int, REQUIRED, "BCM pin number, 0-27", min=0, max=27),
        "active_high": Value(bool, not pull_up, "true if the signal is active when the pin reads high"),
        "pull_up": Value(bool, pull_up, "enable the internal pull-up (contact to ground)"),
        "debounce_s": Value(float, debounce, "ignore further edges for this long", min=0, max=2),
    }, help=help_text, optional=optional)


def _output(help_text: str) -> Table:
    return Table({
        "pin": Value(int, REQUIRED, "BCM pin number, 0-27", min=0, max=27),
        "active_high": Value(bool, True, "true if the relay/lamp is energised by a high pin"),
    }, help=help_text, optional=True)


LANE = Table({
    "name": Value(str, REQUIRED, "short lane name used in records and topics, e.g. 'in1'",
                  check=_site_check),
    "direction": Value(str, "in", "traffic direction", choices=("in", "out", "both")),
    "barrier": _output("barrier relay output"),
    "barrier_mode": Value(str, "pulse", "pulse: a short closing of the relay opens the barrier; "
                          "hold: the relay stays energised while open", choices=("pulse", "hold")),
    "pulse_s": Value(float, 0.5, "relay pulse length", min=0.05, max=10),
    "hold_s": Value(float, 10.0, "in hold mode, release after this long", min=1, max=600),
    "fail_mode": Value(str, "secure", "what the barrier does when the agent stops or power is lost "
                       "(must match the relay wiring): secure = stays closed, safe = opens",
                       choices=("secure", "safe")),
    "barrier_confirm": _input("position/loop input that confirms the barrier opened"),
    "confirm_timeout_s": Value(float, 3.0, "a barrier that doesn't confirm within this raises a fault",
                               min=0.1, max=60),
    "presence": _input("vehicle presence (loop detector or photo-eye)", debounce=0.2),
    "manual_open": _input("guard's manual open button"),
    "guard_lamp": _output("guard's attention lamp or buzzer"),
    "guard_lamp_s": Value(float, 60.0, "how long the guard lamp stays lit after a request for "
                          "attention (a barrier action on the lane puts it out sooner)", min=1, max=3600),
    "camera": Value(str, "", "camera source for this lane: 'picamera2', a device number, "
                    "an rtsp:// or http:// URL, a video file, or a folder of images; empty: none"),
    "trigger": Value(str, "motion", "when to look for plates", choices=("motion", "presence", "continuous")),
    "roi": Value(list, [], "region of interest [x1, y1, x2, y2] in pixels; empty: whole frame"),
}, help="One table per lane.")

ALARM_BUTTON = Table({
    "name": Value(str, REQUIRED, "button id used in records", check=_site_check),
    "location": Value(str, REQUIRED, "where the button is, sent with the alarm (e.g. '1F cashier')"),
    "pin": Value(int, REQUIRED, "BCM pin number, 0-27", min=0, max=27),
    "wiring": Value(str, "no", "no: normally open, press closes to ground; nc: normally closed "
                    "(a cut wire is reported as tamper)", choices=("no", "nc")),
    "debounce_s": Value(float, 0.05, "ignore further edges for this long", min=0, max=2),
    "tamper_s": Value(float, 30.0, "on an nc button, a contact open longer than this is a cut wire",
                      min=1, max=3600),
}, help="One table per one-key alarm button.")

READER = Table({
    "name": Value(str, REQUIRED, "reader id used in records", check=_site_check),
    "kind": Value(str, "idcard", "idcard: resident ID card (SAM protocol); rdm6300: 125 kHz serial; "
                  "wiegand26 / wiegand34: serial Wiegand converter; digits: plain lines of digits",
                  choices=("idcard", "rdm6300", "wiegand26", "wiegand34", "digits")),
    "port": Value(str, REQUIRED, "serial port path or pyserial URL, e.g. /dev/ttyUSB0"),
    "baud": Value(int, 0, "0: try 115200, 57600, 38400, 19200, 9600 in turn", min=0, max=921600),
    "lane": Value(str, "", "lane this reader belongs to"),
    "poll_s": Value(float, 0.3, "card polling interval", min=0.05, max=10),
}, help="One table per serial card or badge reader.")

SCHEMA = Table({
    "device": Table({
        "id": Value(str, REQUIRED, "20-digit GB/T 28181 device code", check=check_device_id),
        "site": Value(str, REQUIRED, "site code used in topics, e.g. 'ln-sy-bank-012'", check=_site_check),
        "site_name": Value(str, "", "human-readable site name"),
        "timezone": Value(str, "Asia/Shanghai", "IANA time zone of record times", check=_timezone_check),
        "accountable_person": Value(str, "", "the person accountable for this unit's data"),
    }, help="Who this device is."),
    "lanes": TableList(LANE, min_items=1, help="Gate lanes."),
    "alarm": Table({
        "buttons": TableList(ALARM_BUTTON),
        "siren": _output("siren / strobe output"),
        "siren_s": Value(float, 60.0, "siren on time after a press", min=0, max=3600),
        "repeat_window_s": Value(float, 120.0, "a press within this of the same button's previous "
                                 "alarm is still a new alarm, marked repeat_of the first", min=0, max=3600),
        "ack_lamp": _output("lamp lit when the platform confirmed an alarm"),
        "ack_lamp_s": Value(float, 300.0, "how long the acknowledgement lamp stays lit", min=1, max=86400),
        "drill_lamp": _output("lamp that shows drill mode is on"),
    }, help="One-key alarm buttons and their outputs."),
    "readers": TableList(READER, help="Serial card and badge readers."),
    "storage": Table({
        "data_dir": Value(str, "/var/lib/gate-agent", "records database and images live here"),
        "quota_mb": Value(int, 2048, "disk budget for the database and images", min=16),
        "reserve_mb": Value(int, 16, "space kept back so alarms can always be stored", min=1),
        "retention": _retention(),
    }, help="Local store."),
    "privacy": Table({
        "key_file": Value(str, "keys/data.key",
                          "32-byte data encryption key (created by provisioning, mode 0600)",
                          secret_file=True),
        "keep_card_fields": Value(list, ["name", "id_number", "card_kind", "valid_from", "valid_to"],
                                  "ID card fields stored and sent; add 'address', 'photo' only if needed",
                                  check=_card_fields_check),
    }, help="Personal information: what is kept, and the key that encrypts it at rest."),
    "mqtt": Table({
        "url": Value(str, "mqtts://platform.example:8883", "broker URL", check=_url_check),
        "allow_plaintext": Value(bool, False, "must be true to use mqtt:// (no TLS)"),
        "ca_file": Value(str, "", "CA certificate that signed the broker's certificate", secret_file=True),
        "cert_file": Value(str, "", "device certificate (mutual TLS)", secret_file=True),
        "key_file": Value(str, "", "device private key (mutual TLS)", secret_file=True),
        "username": Value(str, "", "username, as an alternative to a client certificate"),
        "password_file": Value(str, "", "file holding the password", secret_file=True),
        "client_id": Value(str, "", "MQTT client id; empty: the device id"),
        "topic_prefix": Value(str, "gate", "first level of every topic"),
        "keepalive_s": Value(int, 30, "MQTT keepalive", min=5, max=3600),
        "inflight": Value(int, 64, "unacknowledged messages in flight at once", min=1, max=1000),
        "max_message_kb": Value(int, 1024, "largest message sent; larger images are not sent", min=16),
        "health_interval_s": Value(float, 60.0, "how often a health record is produced", min=1),
        "command_key_file": Value(str, "keys/command.pub",
                                  "public key that verifies signed commands and lists", secret_file=True),
    }, help="The police-side platform's broker."),
    "vision": Table({
        "engine": Value(str, "opencv", "plate recogniser: opencv (ONNX, no torch) or easyocr",
                        choices=("opencv", "easyocr")),
        "repeat_window_s": Value(float, 30.0, "same plate, same lane: suppress repeats within", min=0),
        "min_confidence": Value(float, 0.5, "reads below this are dropped", min=0, max=1),
        "no_plate_after_s": Value(float, 3.0, "a vehicle on a lane's presence input with no plate read "
                                  "this long (or gone without one) is recorded as a vehicle without a "
                                  "plate (plate_no 无车牌) so the guard decides", min=0.5, max=60),
        "workers": Value(int, 0, "vision worker threads; 0: every core", min=0, max=64),
    }, help="Plate pipeline."),
    "decisions": Table({
        "pair_window_s": Value(float, 10.0, "a plate and a card within this are one passage", min=0),
        "unknown": Value(str, "ask_guard", "what to do with an unknown vehicle or person",
                         choices=("deny", "ask_guard")),
        "fuzzy_allow": Value(bool, True, "allow a staff plate read with one character different "
                             "when confidence is high and no other entry is as close"),
        "fuzzy_visitors": Value(bool, False, "the same for visitor passes"),
        "fuzzy_min_confidence": Value(float, 0.9, "confidence needed for a one-character match",
                                      min=0, max=1),
        "anti_passback": Value(bool, False, "a badge that entered can't enter again before it exits"),
        "list_key_file": Value(str, "keys/list.key",
                               "key for the keyed hashes of ID numbers in lists", secret_file=True),
    }, help="Who may pass."),
    "drills": Table({
        "schedule": Value(list, [], "drill windows as 'YYYY-MM-DDTHH:MM/MINUTES' strings "
                          "(device time zone)", check=_drill_schedule_check),
    }, help="Emergency drills (at least twice a year)."),
    "log": Table({
        "level": Value(str, "info", "log level", choices=("debug", "info", "warning", "error")),
    }, help="Logging (to stdout; journald keeps it)."),
})


class Config(Section):
    """The validated configuration, with the path it came from."""

    path: Path
    remote_version: int | None = None
    """the version of the platform's settings laid over the file (None: the file alone)"""

    def with_remote(self, remote: dict | None) -> "Config":
        """This config with the platform's signed settings ({"version": N, "settings":
        {"section.key": value}}, already checked by the sync) laid over the file's values."""
        if not remote or not remote.get("settings"):
            return self
        for key, value in remote["settings"].items():
            section, name = key.split(".", 1)
            setattr(getattr(self, section), name, value)
        self.remote_version = remote.get("version")
        return self

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir)


def parse(text: str, source: str = "<config>", check_files: bool = True) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], source) from None
    problems: list[str] = []
    section = _validate_table(SCHEMA, "", data, problems)
    config = Config(section.__dict__)
    config.__dict__["path"] = Path(source)
    _resolve_paths(config, Path(source).parent)
    _cross_checks(config, problems)
    if check_files and not problems:
        problems += missing_files(config)
    if problems:
        raise ConfigError(problems, source)
    return config


def load(path: str | os.PathLike | None = None, check_files: bool = True) -> Config:
    path = Path(path or os.environ.get("GATE_AGENT_CONFIG") or DEFAULT_PATH)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"config file not found: {path} (create one with "
                           "'gate-agent provision init' or 'gate-agent config example')"]) from None
    except (PermissionError, IsADirectoryError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read config file {path}: {exc}"]) from None
    config = parse(text, str(path), check_files)
    return config


def _resolve_paths(config: Config, base: Path) -> None:
    """Relative file paths are relative to the config file's folder (keys/data.key
    next to /etc/gate-agent/config.toml is /etc/gate-agent/keys/data.key)."""
    def walk(spec: Table, section: Section):
        for name, sub in spec.fields.items():
            value = getattr(section, name, None)
            if isinstance(sub, Table) and isinstance(value, Section):
                walk(sub, value)
            elif isinstance(sub, Value) and (sub.secret_file or name == "data_dir") \
                    and isinstance(value, str) and value and not Path(value).is_absolute():
                setattr(section, name, str(base / value))
            if isinstance(sub, Value) and sub.secret_file and getattr(section, name, None):
                setattr(section, name, _from_credentials(getattr(section, name), base))
    walk(SCHEMA, config)


def _from_credentials(path: str, base: Path) -> str:
    """Under systemd, `LoadCredential=keys:/etc/gate-agent/keys` hands the service a copy of
    every file of the root-only keys folder as $CREDENTIALS_DIRECTORY/keys_<name>; a key file
    in the config's keys/ folder is read from there when that copy exists."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory or Path(path).parent != base / "keys":
        return path
    copy = Path(directory) / f"keys_{Path(path).name}"
    return str(copy) if copy.is_file() else path


def _cross_checks(config: Config, problems: list[str]) -> None:
    names = [lane.name for lane in config.lanes]
    for name in {n for n in names if names.count(n) > 1}:
        problems.append(f"lanes.name = {name!r}: used by more than one lane")
    for i, reader in enumerate(config.readers):
        if reader.lane and reader.lane not in names:
            problems.append(f"readers[{i}].lane = {reader.lane!r}: expected one of the lane names "
                            f"{', '.join(names)}")
    for i, lane in enumerate(config.lanes):
        roi = lane.roi
        if roi and (len(roi) != 4 or not all(isinstance(v, int) and v >= 0 for v in roi)
                    or roi[2] <= roi[0] or roi[3] <= roi[1]):
            problems.append(f"lanes[{i}].roi = {roi!r}: expected [x1, y1, x2, y2] with x2 > x1, y2 > y1")
    for i, lane in enumerate(config.lanes):
        if lane.camera and lane.trigger == "presence" and lane.presence.pin is None:
            problems.append(f"lanes[{i}].trigger = 'presence': lane {lane.name!r} has no presence input "
                            "(lanes.presence.pin), so its camera would never be asked to read; "
                            "add the loop detector's pin or use trigger = 'motion'")
        if lane.fail_mode == "safe" and lane.barrier_mode == "pulse" and lane.barrier.pin is not None:
            problems.append(f"lanes[{i}].fail_mode = 'safe': needs barrier_mode = 'hold' (a pulsed "
                            "relay cannot hold a barrier closed; use the barrier controller's own "
                            "fail-safe input instead)")
    buttons = [b.name for b in config.alarm.buttons]
    for name in sorted({n for n in buttons if buttons.count(n) > 1}):
        problems.append(f"alarm.buttons.name = {name!r}: used by more than one button")
    if config.mqtt.url.startswith("mqtt://") and not config.mqtt.allow_plaintext:
        problems.append(f"mqtt.url = {config.mqtt.url!r}: plaintext MQTT needs mqtt.allow_plaintext = true")
    problems += pin_conflicts(config)


def pin_assignments(config: Config) -> list[tuple[str, int]]:
    """Every (config key, BCM pin) pair in use."""
    used = []
    for i, lane in enumerate(config.lanes):
        for part in ("barrier", "barrier_confirm", "presence", "manual_open", "guard_lamp"):
            dev = getattr(lane, part)
            if dev.__dict__.get("pin") is not None:
                used.append((f"lanes[{i}].{part}", dev.pin))
    for i, button in enumerate(config.alarm.buttons):
        if button.pin is not None:
            used.append((f"alarm.buttons[{i}]", button.pin))
    for part in ("siren", "ack_lamp", "drill_lamp"):
        dev = getattr(config.alarm, part)
        if dev.__dict__.get("pin") is not None:
            used.append((f"alarm.{part}", dev.pin))
    return used


def pin_conflicts(config: Config) -> list[str]:
    seen: dict[int, str] = {}
    problems = []
    for key, pin in pin_assignments(config):
        if pin in seen:
            problems.append(f"{key}.pin = {pin}: already used by {seen[pin]} "
                            f"({_device_label(config, seen[pin])}); the "
                            f"{_device_label(config, key)} needs a pin of its own")
        else:
            seen[pin] = key
    return problems


def _device_label(config: Config, key: str) -> str:
    """'lane 'in1' barrier' for 'lanes[0].barrier': the device named as the installer knows it."""
    if key.startswith("lanes["):
        index, part = key[len("lanes["):].split("].")
        return f"lane {config.lanes[int(index)].name!r} {part}"
    if key.startswith("alarm.buttons["):
        index = int(key[len("alarm.buttons["):].rstrip("]"))
        return f"alarm button {config.alarm.buttons[index].name!r}"
    return key.replace("alarm.", "alarm ").replace("_", " ")


def secret_paths(config: Config) -> list[tuple[str, str]]:
    """(key, path) of every configured secret file."""
    out = []

    def walk(spec: Table, section: Section, prefix: str):
        for name, sub in spec.fields.items():
            key = _join(prefix, name)
            if isinstance(sub, Table):
                walk(sub, getattr(section, name), key)
            elif isinstance(sub, Value) and sub.secret_file and getattr(section, name):
                out.append((key, getattr(section, name)))
    walk(SCHEMA, config, "")
    return out


def missing_files(config: Config) -> list[str]:
    problems = []
    for key, path in secret_paths(config):
        if key == "mqtt.command_key_file":
            continue  # optional: without it, every command is refused
        if not Path(path).is_file():
            problems.append(f"{key} = {path!r}: file not found (provisioning creates it: "
                            "'gate-agent provision init')")
    return problems


def example() -> str:
    """A complete example config with every key commented."""
    lines = ["# gate-agent configuration (TOML). Validate with: gate-agent config check FILE",
             "# Secrets never go here: keys and passwords live in files named by *_file keys.",
             "# Relative file paths are relative to this file's folder.", ""]
    return render(_EXAMPLE_VALUES, lines)


def render(values: dict, header: list[str] = ()) -> str:
    """A commented config file holding `values` (nested dicts/lists as in the TOML) and
    every other key at its default; provisioning writes its configs with this."""
    lines = list(header)
    _emit_table(SCHEMA, "", values, lines)
    return "\n".join(lines) + "\n"


REFERENCE_MARKER = "<!-- generated by agent.config.reference(): edit the schema, not this part -->"


def write_reference(path: str | os.PathLike) -> None:
    """Replace everything after REFERENCE_MARKER in the markdown file `path` with reference()."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if REFERENCE_MARKER not in text:
        raise ValueError(f"{path}: no line {REFERENCE_MARKER!r} to write the reference after")
    head = text[:text.index(REFERENCE_MARKER) + len(REFERENCE_MARKER)]
    path.write_text(head + "\n\n" + reference(), encoding="utf-8")


def reference() -> str:
    """Every key of the schema as markdown tables, one per TOML table; docs/config.md holds
    this after its introduction (tests/test_docs.py keeps the two equal)."""
    lines: list[str] = []
    _reference_table(SCHEMA, "", lines)
    return "\n".join(lines).rstrip("\n") + "\n"


def _reference_table(spec: Table, prefix: str, lines: list[str]) -> None:
    values = [(name, sub) for name, sub in spec.fields.items() if isinstance(sub, Value)]
    if values:
        lines += ["| key | allowed | default | meaning |", "|---|---|---|---|"]
        for name, value in values:
            default = "*required*" if value.default is REQUIRED else f"`{_toml_value(value.default)}`"
            meaning = value.help + (" (*secret file*)" if value.secret_file else "")
            cells = (f"`{name}`", value.allowed(), default, meaning)
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    for name, sub in spec.fields.items():
        key = _join(prefix, name)
        if isinstance(sub, Table):
            help_text = _sentence(sub.help) + (" Optional: leave the table out when the part is "
                                               "not fitted (its values are then all none)."
                                               if sub.optional else "")
            lines += [f"### `[{key}]`", "", help_text, ""]
            _reference_table(sub, key, lines)
        elif isinstance(sub, TableList):
            help_text = " ".join(_sentence(h) for h in (sub.help, sub.item.help) if h)
            if sub.min_items:
                help_text += f" At least {sub.min_items} required."
            lines += [f"### `[[{key}]]`", "", help_text, ""]
            _reference_table(sub.item, key, lines)


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".") if text else ""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _emit_table(spec: Table, prefix: str, sample: dict, lines: list[str], header: str | None = None):
    if header:
        lines.append(header)
    nested = []
    for name, sub in spec.fields.items():
        if isinstance(sub, Value):
            lines.append(f"# {sub.help} ({sub.allowed()})")
            if name in sample:
                lines.append(f"{name} = {_toml_value(sample[name])}")
            elif sub.default is REQUIRED:
                lines.append(f"{name} = ...  # required")
            else:
                lines.append(f"{name} = {_toml_value(sub.default)}")
        else:
            nested.append((name, sub))
    for name, sub in nested:
        key = _join(prefix, name)
        lines.append("")
        if isinstance(sub, Table):
            if sub.optional and name not in sample:
                lines.append(f"# [{key}]  {sub.help} (optional)")
                for fname, fsub in sub.fields.items():
                    lines.append(f"# {fname} = {_toml_value(fsub.default) if fsub.default is not REQUIRED else '...'}"
                                 f"  # {fsub.help}")
                continue
            lines.append(f"# {sub.help}")
            _emit_table(sub, key, sample.get(name, {}), lines, f"[{key}]")
        else:
            lines.append(f"# {sub.help}")
            for item in sample.get(name, []):
                _emit_table(sub.item, key, item, lines, f"[[{key}]]")
                lines.append("")


_EXAMPLE_VALUES = {
    "device": {"id": "21010200001210000001", "site": "ln-sy-demo", "site_name": "Demo works, east gate",
               "accountable_person": "Zhang Wei, security office"},
    "lanes": [
        {"name": "in1", "direction": "in", "barrier": {"pin": 17}, "presence": {"pin": 27},
         "manual_open": {"pin": 22}, "guard_lamp": {"pin": 5}, "camera": "/var/lib/gate-agent/replay"},
    ],
    "alarm": {"buttons": [{"name": "b1", "location": "gatehouse desk", "pin": 23}],
              "siren": {"pin": 24}, "ack_lamp": {"pin": 25}, "drill_lamp": {"pin": 6}},
    "readers": [{"name": "id1", "kind": "idcard", "port": "/dev/ttyUSB0", "lane": "in1"}],
    "storage": {},
    "mqtt": {"ca_file": "keys/ca.pem", "cert_file": "keys/device.pem", "key_file": "keys/device.key"},
}
