"""`provision init` without the prompts: answers -> config values -> files on disk.

Re-running is safe. An existing config is kept as it is (its values, not the
new answers, are used to fill in anything missing) unless `force`, which backs
it up to config.toml.bak-<time> and writes a new one. Existing keys are always
kept; `replace_device_key` (with force) makes a new device key pair. The data
key and the list key are never replaced here: records sealed with the old data
key, and lists hashed with the old list key, would become unreadable.
"""
from __future__ import annotations

import grp
import os
import pwd
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent import config as configmod
from provisioning import keys as keysmod

CONFIG_MODE = 0o640
CONFIG_DIR_MODE = 0o750
DATA_DIR_MODE = 0o750
SERVICE_USER = "gate-agent"
DEFAULT_DATA_DIR = "/var/lib/gate-agent"

# BCM pins per lane index (0-27, clear of I2C 2/3, UART 14/15 and the ID EEPROM 0/1).
LANE_PINS = [
    {"barrier": 17, "presence": 27, "manual_open": 22, "guard_lamp": 5},
    {"barrier": 18, "presence": 19, "manual_open": 20, "guard_lamp": 21},
    {"barrier": 12, "presence": 13, "manual_open": 16, "guard_lamp": 26},
]
LANE_PARTS = ("barrier", "barrier_confirm", "presence", "manual_open", "guard_lamp")
ALARM_OUTPUTS = {"siren": 24, "ack_lamp": 25, "drill_lamp": 6}
ALARM_BUTTON_PIN = 23


class InstallError(Exception):
    """Provisioning can't go on; the message says what to do."""


@dataclass
class Reader:
    kind: str
    port: str


@dataclass
class Lane:
    name: str
    direction: str = "in"
    pins: dict[str, int | None] = field(default_factory=dict)
    camera: str = ""
    roi: list[int] = field(default_factory=list)
    reader: Reader | None = None


@dataclass
class AlarmButton:
    name: str
    pin: int
    location: str
    wiring: str = "no"


@dataclass
class Answers:
    site: str
    device_id: str
    broker: str
    lanes: list[Lane]
    site_name: str = ""
    timezone: str = "Asia/Shanghai"
    allow_plaintext: bool = False
    buttons: list[AlarmButton] = field(default_factory=list)
    alarm_pins: dict[str, int | None] = field(default_factory=dict)
    retention: dict[str, int] = field(default_factory=dict)
    data_dir: str = DEFAULT_DATA_DIR


def default_lane_pins(index: int) -> dict[str, int | None]:
    pins = dict.fromkeys(LANE_PARTS)
    if index < len(LANE_PINS):
        pins.update(LANE_PINS[index])
    return pins


def config_values(answers: Answers) -> dict:
    """The nested values `agent.config.render` writes."""
    lanes = []
    for lane in answers.lanes:
        values = {"name": lane.name, "direction": lane.direction, "camera": lane.camera}
        if lane.roi:
            values["roi"] = lane.roi
        for part, pin in lane.pins.items():
            if pin is not None:
                values[part] = {"pin": pin}
        lanes.append(values)
    alarm = {"buttons": [{"name": b.name, "location": b.location, "pin": b.pin, "wiring": b.wiring}
                         for b in answers.buttons]}
    alarm.update({part: {"pin": pin} for part, pin in answers.alarm_pins.items() if pin is not None})
    readers = [{"name": f"{lane.name}-{lane.reader.kind}", "kind": lane.reader.kind,
                "port": lane.reader.port, "lane": lane.name}
               for lane in answers.lanes if lane.reader]
    return {
        "device": {"id": answers.device_id, "site": answers.site, "site_name": answers.site_name,
                   "timezone": answers.timezone},
        "lanes": lanes,
        "alarm": alarm,
        "readers": readers,
        "storage": {"data_dir": answers.data_dir, "retention": answers.retention},
        "mqtt": {"url": answers.broker, "allow_plaintext": answers.allow_plaintext,
                 "key_file": "keys/device.key"},
    }


def render_config(answers: Answers) -> str:
    header = [f"# gate-agent configuration for device {answers.device_id} at {answers.site},",
              f"# written by 'gate-agent provision init' on {time.strftime('%Y-%m-%d %H:%M %Z')}.",
              "# Check it with: gate-agent config check",
              "# Keys and certificates live in keys/ beside this file (root only, mode 0600).", ""]
    return configmod.render(config_values(answers), header)


def validate(text: str, path: Path) -> configmod.Config:
    """Parse the config as the agent will (key files are made after this)."""
    try:
        return configmod.parse(text, str(path), check_files=False)
    except configmod.ConfigError as exc:
        raise InstallError(f"the answers make an invalid config:\n{exc}") from None


@dataclass
class Layout:
    """Where things go. With a root (a staged image or a test) every path is under it."""
    config: Path
    root: Path | None = None

    @property
    def keys(self) -> keysmod.KeyPaths:
        return keysmod.KeyPaths(self.config.parent / "keys")

    def real(self, path: str) -> Path:
        """Where a path written in the config lies on this machine."""
        if self.root is not None and Path(path).is_absolute() and not Path(path).is_relative_to(self.root):
            return self.root / Path(path).relative_to("/")
        return Path(path)


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)

    def add(self, what: str, path: Path | str, detail: str = "") -> None:
        self.lines.append(f"{what:<10} {path}" + (f"  ({detail})" if detail else ""))


def install(answers: Answers | None, layout: Layout, *, force: bool = False,
            replace_device_key: bool = False, command_key: Path | None = None) -> tuple[configmod.Config, Report]:
    """Write the config (or keep it), make the folders and keys; return the config as parsed."""
    report = Report()
    if replace_device_key and not force:
        raise InstallError("--replace-keys needs --force too: a new device key makes the "
                           "installed certificate useless until the platform signs a new one")
    config = _write_config(answers, layout, force, report)
    _make_data_dir(layout.real(config.storage.data_dir), report)
    _make_keys(config, layout, replace_device_key, command_key, force, report)
    return config, report


def _write_config(answers: Answers | None, layout: Layout, force: bool, report: Report) -> configmod.Config:
    path = layout.config
    if path.exists() and not force:
        try:
            config = configmod.load(path, check_files=False)
        except configmod.ConfigError as exc:
            raise InstallError(f"the existing config is invalid:\n{exc}\nfix it, or rewrite it with "
                               "'gate-agent provision init --force'") from None
        report.add("kept", path, "exists; rewrite it with --force")
        return config
    if answers is None:
        raise InstallError(f"{path} does not exist: run 'gate-agent provision init' to create it")
    text = render_config(answers)
    config = validate(text, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not layout.root:
        os.chmod(path.parent, CONFIG_DIR_MODE)
        _share_with_service(path.parent)
    if path.exists():
        backup = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, backup)
        report.add("backed up", backup)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, CONFIG_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, CONFIG_MODE)
    os.replace(tmp, path)
    if not layout.root:
        _share_with_service(path)
    report.add("wrote", path, "mode 0640")
    return config


def _share_with_service(path: Path) -> None:
    """root:gate-agent, so the service user can read the config (when that group exists)."""
    if os.geteuid() != 0:
        return
    try:
        gid = grp.getgrnam(SERVICE_USER).gr_gid
    except KeyError:
        return
    os.chown(path, 0, gid)


def _make_data_dir(path: Path, report: Report) -> None:
    existed = path.is_dir()
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, DATA_DIR_MODE)
    if os.geteuid() == 0 and not existed:
        try:
            user = pwd.getpwnam(SERVICE_USER)
            os.chown(path, user.pw_uid, user.pw_gid)
        except KeyError:
            pass  # systemd's StateDirectory= gives it to the service user at first start
    report.add("kept" if existed else "made", path, "data folder")


def _make_keys(config: configmod.Config, layout: Layout, replace_device_key: bool,
               command_key: Path | None, force: bool, report: Report) -> None:
    paths = layout.keys
    keysmod.make_keys_dir(paths.dir)
    if paths.device_key.exists() and not replace_device_key:
        key = keysmod.load_device_key(paths.device_key)
        report.add("kept", paths.device_key)
    else:
        key = keysmod.create_device_key(paths.device_key, replace=replace_device_key)
        report.add("made", paths.device_key, "EC P-256, 0600")
        if paths.device_cert.exists():
            report.add("stale", paths.device_cert,
                       "issued for the old key: install the new certificate")
    csr = keysmod.make_csr(key, config.device.id, config.device.site, config.device.site_name)
    if keysmod.same_csr(paths.device_csr, csr):
        report.add("kept", paths.device_csr, f"CN={config.device.id}: send it to the platform")
    else:
        keysmod.write_csr(paths.device_csr, csr)
        report.add("wrote", paths.device_csr, f"CN={config.device.id}: send it to the platform")
    for path in (paths.data_key, paths.list_key):
        if path.exists():
            os.chmod(path, keysmod.KEY_MODE)
            report.add("kept", path)
        else:
            keysmod.create_symmetric_key(path)
            report.add("made", path, "32 random bytes, 0600")
    if command_key is not None:
        state = keysmod.install_command_key(command_key, paths.command_key, replace=force)
        report.add(state, paths.command_key, "Ed25519 command key")
    elif not paths.command_key.exists():
        report.add("missing", paths.command_key,
                   "no command key yet: signed commands are refused until you add it with "
                   "'gate-agent provision command-key FILE'")
    for path in paths.dir.iterdir():
        if path.is_file():
            os.chmod(path, keysmod.KEY_MODE)
