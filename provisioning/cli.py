"""`gate-agent provision ...` and `gate-agent selftest`: the installer's tools at the gate."""
from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import click

from agent import config as configmod
from agent.cli import UserError
from agent.identity import check_device_id
from provisioning import install as inst
from provisioning import keys as keysmod

NONE_WORDS = ("", "none", "-", "no")
RETENTION_KINDS = configmod.RECORD_KINDS + ("image",)


def _root_option(f):
    return click.option("--root", type=click.Path(file_okay=False, path_type=Path),
                        help="Install under this folder instead of / (a staged image, or a test): "
                             "config at ROOT/etc/gate-agent/config.toml.")(f)


def friendly_os_errors(command):
    """A file the installer can't write or read is a one-line error, not a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PermissionError as exc:
            raise UserError(f"{exc.filename or exc}: permission denied; run with sudo "
                            "(or --root DIR for a staged image)") from None
        except OSError as exc:
            raise UserError(f"{exc.filename or 'file'}: {exc.strerror or exc}") from None
    return wrapper


def layout_for(ctx: click.Context, root: Path | None) -> inst.Layout:
    config = Path(ctx.obj["config_path"])
    if root is not None:
        root = root.resolve()
        config = root / config.resolve().relative_to("/")
    return inst.Layout(config=config, root=root)


@click.group("provision")
def provision():
    """Set up this device: config, keys, certificate, systemd service.

    \b
    Example:
      sudo gate-agent provision init
      sudo gate-agent provision cert install device.pem ca.pem
      sudo gate-agent provision install-service
    """


# --- init -------------------------------------------------------------------------

def _site_problem(value: str) -> str | None:
    return configmod._site_check(value)


def _parse_pin(text: str) -> int | None:
    text = str(text).strip().lower()
    if text in NONE_WORDS:
        return None
    if not text.isdigit() or not 0 <= int(text) <= 27:
        raise ValueError(f"{text!r} is not a BCM pin number 0-27 (or 'none' if not fitted)")
    return int(text)


def _parse_roi(text: str) -> list[int]:
    text = text.strip().lower()
    if text in NONE_WORDS + ("whole", "whole frame"):
        return []
    parts = [p for p in re.split(r"[,\s]+", text.strip("[]")) if p]
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{text!r}: expected x1,y1,x2,y2 in pixels (or 'none' for the whole frame)")
    x1, y1, x2, y2 = map(int, parts)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"{text!r}: expected x2 > x1 and y2 > y1")
    return [x1, y1, x2, y2]


def _parse_reader(text: str) -> inst.Reader | None:
    if text.strip().lower() in NONE_WORDS:
        return None
    kind, sep, port = text.partition(":")
    kinds = configmod.READER.fields["kind"].choices
    if not sep or kind not in kinds or not port:
        raise ValueError(f"{text!r}: expected KIND:PORT with KIND one of {', '.join(kinds)}, "
                         "e.g. idcard:/dev/ttyUSB0")
    return inst.Reader(kind, port)


def _parse_button(text: str) -> inst.AlarmButton:
    parts = text.split(":", 3)
    wiring = "no"
    if len(parts) == 4 and parts[2] in ("no", "nc"):
        wiring = parts.pop(2)
    else:
        parts = text.split(":", 2)
    if len(parts) != 3 or _site_problem(parts[0]) or not parts[2]:
        raise ValueError(f"{text!r}: expected NAME:PIN[:no|nc]:LOCATION, e.g. b1:23:gatehouse desk")
    pin = _parse_pin(parts[1])
    if pin is None:
        raise ValueError(f"{text!r}: an alarm button needs a pin")
    return inst.AlarmButton(parts[0], pin, parts[2], wiring)


def _split_lane(value: str, lanes: list[str]) -> tuple[str, str]:
    """'in1=SOURCE' -> ('in1', 'SOURCE'); a bare value belongs to the first lane."""
    name, sep, rest = value.partition("=")
    if sep and name in lanes:
        return name, rest
    return lanes[0], value


def _value_proc(parse):
    def proc(text):
        try:
            return parse(text)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    return proc


class Asker:
    """Takes an answer from its flag, else asks the installer, else (--yes) the default."""

    def __init__(self, interactive: bool):
        self.interactive = interactive

    def __call__(self, text: str, parse, *, given=None, default=None, flag: str = ""):
        if given is not None:
            try:
                return parse(given)
            except ValueError as exc:
                raise UserError(f"{flag} {exc}") from None
        if not self.interactive:
            if default is None:
                raise UserError(f"missing {flag}: give it, or run without --yes to be asked")
            try:
                return parse(default)
            except ValueError as exc:
                raise UserError(f"{flag} {exc}") from None
        proc = _value_proc(parse)
        if default is None:
            return click.prompt(text, value_proc=proc)
        return click.prompt(text, default="none" if default == "" else default, value_proc=proc)


def _text(text: str) -> str:
    text = str(text).strip()
    return "" if text.lower() in NONE_WORDS else text


def _checked(check):
    def parse(text):
        text = str(text).strip()
        problem = check(text)
        if problem:
            raise ValueError(f"{text!r}: {problem}")
        return text
    return parse


def _broker(text: str) -> str:
    text = str(text).strip()
    problem = configmod._url_check(text)
    if problem:
        raise ValueError(f"{text!r}: {problem}")
    return text


def _lane_names(text: str) -> list[str]:
    names = [_checked(_site_problem)(n) for n in text.replace(" ", "").split(",") if n]
    if not names:
        raise ValueError("at least one lane name is needed")
    if len(set(names)) != len(names):
        raise ValueError(f"{text!r}: each lane needs its own name")
    return names


def _retention(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    if text.strip().lower() in NONE_WORDS:
        return out
    for value in filter(None, (v.strip() for v in text.split(","))):
        kind, sep, days = value.partition("=")
        if sep and kind not in RETENTION_KINDS:
            raise ValueError(f"{value}: unknown kind {kind!r}; expected one of {', '.join(RETENTION_KINDS)}")
        days = days if sep else kind
        if not days.isdigit() or not 1 <= int(days) <= 3650:
            raise ValueError(f"{value}: expected DAYS or KIND=DAYS with DAYS 1-3650 "
                             "(30 video rule, 90 anti-terrorism key targets, 180 banks)")
        out.update(dict.fromkeys((kind,) if sep else RETENTION_KINDS, int(days)))
    return out


def _flag_pins(values: tuple[str, ...], lanes: list[str]) -> dict[str, str]:
    pins = {}
    allowed = [f"{lane}.{part}" for lane in lanes for part in inst.LANE_PARTS] + \
              [f"alarm.{part}" for part in inst.ALARM_OUTPUTS]
    for value in values:
        key, sep, pin = value.partition("=")
        if not sep or key not in allowed:
            raise UserError(f"--pin {value}: expected PART=PIN with PART one of {', '.join(allowed)}")
        pins[key] = pin
    return pins


def gather(ask: Asker, opts: dict) -> inst.Answers:
    """Every answer from the flags, the installer, or the defaults."""
    site = ask("Site code (letters, digits, - and _; used in MQTT topics)", _checked(_site_problem),
               given=opts["site"], flag="--site")
    site_name = ask("Site name (shown to people)", _text, given=opts["site_name"], default="")
    device_id = ask("Device id (20-digit GB/T 28181 code from the platform)", _checked(check_device_id),
                    given=opts["device_id"], flag="--device-id")
    names = ask("Lane names, comma-separated", _lane_names, given=opts["lanes"], default="in1",
                flag="--lanes")
    flag_pins = _flag_pins(opts["pin"], names)
    cameras = dict(_split_lane(v, names) for v in opts["camera"])
    rois = dict(_split_lane(v, names) for v in opts["roi"])
    readers = dict(_split_lane(v, names) for v in opts["reader"])
    used: set[int] = set()
    lanes = []
    for index, name in enumerate(names):
        lane = inst.Lane(name, direction="out" if name.startswith("out") else "in")
        for part, default in inst.default_lane_pins(index).items():
            pin = ask(f"Lane {name}: {part.replace('_', ' ')} pin (BCM, none if not fitted)",
                      _pin_parser(used), given=flag_pins.get(f"{name}.{part}"),
                      default="" if default is None else str(default), flag=f"--pin {name}.{part}:")
            lane.pins[part] = pin
            if pin is not None:
                used.add(pin)
        lane.camera = ask(f"Lane {name}: camera (picamera2, device number, rtsp:// URL, file or "
                          "folder; none)", _text, given=cameras.get(name), default="")
        if lane.camera:
            lane.roi = ask(f"Lane {name}: plate region x1,y1,x2,y2 in pixels (none: whole frame)",
                           _parse_roi, given=rois.get(name), default="", flag="--roi")
        lane.reader = ask(f"Lane {name}: card reader KIND:PORT (idcard, rdm6300, wiegand26, "
                          "wiegand34, digits; none)", _parse_reader, given=readers.get(name),
                          default="idcard:/dev/ttyUSB0" if index == 0 else "", flag="--reader")
        lanes.append(lane)
    buttons = _buttons(ask, opts, used)
    alarm_pins = {}
    for part, default in inst.ALARM_OUTPUTS.items():
        pin = ask(f"Alarm {part.replace('_', ' ')} pin (BCM, none if not fitted)", _pin_parser(used),
                  given=flag_pins.get(f"alarm.{part}"), default=str(default) if default not in used else "",
                  flag=f"--pin alarm.{part}:")
        alarm_pins[part] = pin
        if pin is not None:
            used.add(pin)
    broker = ask("Platform broker URL (mqtts://HOST:PORT)", _broker, given=opts["broker"], flag="--broker")
    plaintext = opts["allow_plaintext"]
    if broker.startswith("mqtt://") and not plaintext:
        if not ask.interactive:
            raise UserError(f"--broker {broker}: plaintext MQTT (no TLS) needs --allow-plaintext")
        plaintext = click.confirm("mqtt:// sends everything unencrypted. Use it anyway?", default=False)
        if not plaintext:
            raise UserError("give an mqtts:// broker URL, or --allow-plaintext on a closed test network")
    retention = ask("Keep records and images how many days (30 video rule, 90 anti-terrorism key "
                    "targets, 180 banks; none keeps the per-kind defaults)", _retention,
                    given=",".join(opts["retention"]) or None, default="", flag="--retention")
    return inst.Answers(site=site, device_id=device_id, broker=broker, lanes=lanes,
                        site_name=site_name, timezone=opts["timezone"], allow_plaintext=plaintext,
                        buttons=buttons, alarm_pins=alarm_pins, retention=retention)


def _pin_parser(used: set[int]):
    def parse(text):
        pin = _parse_pin(text)
        if pin is not None and pin in used:
            raise ValueError(f"pin {pin} is already used by another part")
        return pin
    return parse


def _buttons(ask: Asker, opts: dict, used: set[int]) -> list[inst.AlarmButton]:
    if opts["alarm_button"]:
        try:
            buttons = [_parse_button(v) for v in opts["alarm_button"]]
        except ValueError as exc:
            raise UserError(f"--alarm-button {exc}") from None
    elif opts["no_alarm_buttons"]:
        buttons = []
    elif not ask.interactive:
        buttons = [inst.AlarmButton("b1", inst.ALARM_BUTTON_PIN, "gatehouse")]
    else:
        count = click.prompt("How many one-key alarm buttons", default=1, type=click.IntRange(0, 8))
        buttons = []
        for i in range(count):
            name = ask(f"Alarm button {i + 1}: name", _checked(_site_problem), default=f"b{i + 1}")
            default_pin = next(p for p in [inst.ALARM_BUTTON_PIN, 4, 7, 8, 9, 10, 11]
                               if p not in used)
            pin = None
            while pin is None:
                pin = ask(f"Alarm button {name}: pin (BCM)", _pin_parser(used), default=str(default_pin))
            location = ask(f"Alarm button {name}: location (sent with the alarm)", _checked(
                lambda t: None if t else "a location is needed"), default="gatehouse")
            wiring = click.prompt(f"Alarm button {name}: wiring (no: normally open, nc: normally "
                                  "closed, a cut wire shows as tamper)", default="no",
                                  type=click.Choice(["no", "nc"]))
            used.add(pin)
            buttons.append(inst.AlarmButton(name, pin, location, wiring))
        return buttons
    for button in buttons:
        if button.pin in used:
            raise UserError(f"--alarm-button {button.name}: pin {button.pin} is already used")
        used.add(button.pin)
    return buttons


@provision.command("init")
@click.option("--site", help="Site code used in topics, e.g. ln-sy-bank-012.")
@click.option("--site-name", help="Human-readable site name.")
@click.option("--device-id", help="20-digit GB/T 28181 device code the platform assigned.")
@click.option("--lanes", help="Lane names, comma-separated (default: in1).")
@click.option("--pin", multiple=True, metavar="PART=PIN",
              help="BCM pin of a part, 'none' if not fitted: LANE.barrier, LANE.barrier_confirm, "
                   "LANE.presence, LANE.manual_open, LANE.guard_lamp, alarm.siren, alarm.ack_lamp, "
                   "alarm.drill_lamp. Repeatable.")
@click.option("--alarm-button", multiple=True, metavar="NAME:PIN[:no|nc]:LOCATION",
              help="A one-key alarm button (default b1:23:gatehouse). Repeatable.")
@click.option("--no-alarm-buttons", is_flag=True, help="No one-key alarm button at this gate.")
@click.option("--reader", multiple=True, metavar="[LANE=]KIND:PORT",
              help="Card reader of a lane (default: idcard:/dev/ttyUSB0 on the first lane; "
                   "'none' for no reader). Repeatable.")
@click.option("--camera", multiple=True, metavar="[LANE=]SOURCE",
              help="Camera of a lane: picamera2, a device number, an rtsp:// URL, a file or a folder.")
@click.option("--roi", multiple=True, metavar="[LANE=]X1,Y1,X2,Y2",
              help="Region of the frame where plates appear, in pixels.")
@click.option("--broker", help="Platform broker URL, mqtts://HOST:PORT.")
@click.option("--allow-plaintext", is_flag=True, help="Allow an mqtt:// (unencrypted) broker URL.")
@click.option("--retention", multiple=True, metavar="[KIND=]DAYS",
              help="Days to keep records: DAYS for every kind, or KIND=DAYS. Repeatable.")
@click.option("--timezone", default="Asia/Shanghai", show_default=True, help="Time zone of record times.")
@click.option("--command-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The platform's Ed25519 command-verification public key (PEM).")
@click.option("--data-dir", help="Records folder as the agent will see it "
                                 "(default /var/lib/gate-agent, or ROOT/var/lib/gate-agent with --root).")
@_root_option
@click.option("-y", "--yes", "--non-interactive", "non_interactive", is_flag=True,
              help="Ask nothing: take the flags and the defaults (scripted installs).")
@click.option("--force", is_flag=True, help="Rewrite an existing config (the old one is backed up).")
@click.option("--replace-keys", is_flag=True,
              help="With --force: make a new device key pair (the certificate must be reissued).")
@click.pass_context
@friendly_os_errors
def init(ctx, root, non_interactive, force, replace_keys, command_key, data_dir, **opts):
    """Write the config, make the data folder and the keys.

    Asks for each setting with a default shown (Enter takes it), or takes them
    all from flags with --yes. Safe to run again: an existing config and
    existing keys are kept (rewrite the config with --force). Prints the
    certificate request (keys/device.csr) to send to the platform.

    \b
    Example:
      sudo gate-agent provision init
      sudo gate-agent provision init --yes --site ln-sy-bank-012 \\
          --device-id 21010200001210000001 --broker mqtts://platform.example:8883 \\
          --camera in1=picamera2 --reader in1=idcard:/dev/ttyUSB0
    """
    layout = layout_for(ctx, root)
    _need_write_access(layout.config)
    answers = None
    if force or not layout.config.exists():
        answers = gather(Asker(not non_interactive), opts)
        answers.data_dir = data_dir or (str(layout.root / "var/lib/gate-agent") if layout.root
                                        else inst.DEFAULT_DATA_DIR)
        if not non_interactive and not click.confirm(
                f"Write {layout.config} and create the keys?", default=True):
            raise UserError("nothing written")
    try:
        config, report = inst.install(answers, layout, force=force, replace_device_key=replace_keys,
                                      command_key=command_key)
    except (inst.InstallError, keysmod.KeyProblem) as exc:
        raise UserError(str(exc)) from None
    for line in report.lines:
        click.echo(line)
    click.echo(f"\nDevice {config.device.id} at {config.device.site}: send "
               f"{layout.keys.device_csr} to the platform, then install the certificate it returns:\n"
               f"  gate-agent provision cert install device.pem ca.pem\n"
               f"Then check the hardware with 'gate-agent selftest'.")


def _need_write_access(path: Path) -> None:
    """Say so before the questions, not after them."""
    existing = next(p for p in [path.parent, *path.parents] if p.exists())
    if not os.access(existing, os.W_OK):
        raise UserError(f"cannot write {path} as this user: run with sudo (or --root DIR)")


# --- the certificate ----------------------------------------------------------

@provision.group("cert")
def cert():
    """The device certificate the platform signs for keys/device.csr.

    \b
    Example:
      sudo gate-agent provision cert install device.pem ca.pem
    """


@cert.command("install")
@click.argument("cert_file", metavar="CERT", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("ca_file", metavar="[CA]", required=False,
                type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_root_option
@click.pass_context
@friendly_os_errors
def cert_install(ctx, cert_file, ca_file, root):
    """Check the certificate and install it as keys/device.pem (and the CA as keys/ca.pem).

    The certificate must hold this device's public key, be signed by the CA
    (the second argument, or the keys/ca.pem already installed) and be valid
    now. Sets mqtt.cert_file, ca_file and key_file in the config where they are empty.

    \b
    Example:
      sudo gate-agent provision cert install device.pem platform-ca.pem
    """
    layout = layout_for(ctx, root)
    paths = layout.keys
    config = _load(layout.config)
    try:
        key = keysmod.load_device_key(paths.device_key)
        certs = keysmod.load_certs(cert_file, "device certificate")
        if ca_file:
            cas = keysmod.load_certs(ca_file, "CA certificate")
        elif paths.ca_cert.exists():
            cas = keysmod.load_certs(paths.ca_cert, "CA certificate")
        else:
            raise keysmod.KeyProblem("no CA certificate given and none installed: give the platform "
                                     "CA file as the second argument")
        warnings = keysmod.check_device_cert(certs[0], key, cas, config.device.id)
    except keysmod.KeyProblem as exc:
        raise UserError(f"{cert_file}: {exc}") from None
    keysmod.write_secret(paths.device_cert, keysmod.cert_pem(certs), replace=True)
    keysmod.write_secret(paths.ca_cert, keysmod.cert_pem(cas), replace=True)
    click.echo(f"installed {paths.device_cert} (valid to {certs[0].not_valid_after_utc:%Y-%m-%d}) "
               f"and {paths.ca_cert}")
    for line in set_mqtt_files(layout.config, {"cert_file": "keys/device.pem", "ca_file": "keys/ca.pem",
                                               "key_file": "keys/device.key"}):
        click.echo(line)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


def _load(path: Path, check_files: bool = False) -> configmod.Config:
    try:
        return configmod.load(path, check_files=check_files)
    except configmod.ConfigError as exc:
        raise UserError(str(exc)) from None


def set_mqtt_files(config_path: Path, wanted: dict[str, str]) -> list[str]:
    """Fill the empty mqtt.*_file keys in place, keeping the rest of the file as written."""
    text = config_path.read_text(encoding="utf-8")
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "[mqtt]"), None)
    if start is None:
        lines += ["", "[mqtt]"]
        start = len(lines) - 1
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    config = _load(config_path)
    out = []
    for key, value in wanted.items():
        current = getattr(config.mqtt, key)
        target = str(config_path.parent / value)
        if current == target:
            continue
        if current:
            out.append(f"warning: mqtt.{key} is {current}, not {target}: change it if that is wrong")
            continue
        pattern = re.compile(rf"^\s*{key}\s*=")
        found = next((i for i in range(start + 1, end) if pattern.match(lines[i])), None)
        entry = f'{key} = "{value}"'
        if found is None:
            lines.insert(start + 1, entry)
            end += 1
        else:
            lines[found] = entry
        out.append(f"config: mqtt.{key} = {value!r}")
    if out:
        new_text = "\n".join(lines) + "\n"
        try:
            configmod.parse(new_text, str(config_path), check_files=False)
        except configmod.ConfigError as exc:
            raise UserError(f"could not set the certificate files in {config_path} ({exc}); "
                            "set mqtt.cert_file, ca_file and key_file by hand") from None
        tmp = config_path.with_name(config_path.name + ".tmp")
        tmp.write_text(new_text, encoding="utf-8")
        mode = config_path.stat()
        os.chmod(tmp, mode.st_mode & 0o777)
        if os.geteuid() == 0:
            os.chown(tmp, mode.st_uid, mode.st_gid)
        os.replace(tmp, config_path)
    return out


@provision.command("csr")
@_root_option
@click.pass_context
@friendly_os_errors
def show_csr(ctx, root):
    """Print the certificate request (keys/device.csr) to send to the platform.

    \b
    Example:
      sudo gate-agent provision csr > /media/usb/21010200001210000001.csr
    """
    path = layout_for(ctx, root).keys.device_csr
    try:
        click.echo(path.read_text(), nl=False)
    except FileNotFoundError:
        raise UserError(f"{path} not found: run 'gate-agent provision init' first") from None


@provision.command("command-key")
@click.argument("key_file", metavar="FILE", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--force", is_flag=True, help="Replace a different key already installed.")
@_root_option
@click.pass_context
@friendly_os_errors
def command_key(ctx, key_file, force, root):
    """Install the platform's Ed25519 public key that verifies signed commands and lists.

    \b
    Example:
      sudo gate-agent provision command-key platform-command.pub
    """
    layout = layout_for(ctx, root)
    keysmod.make_keys_dir(layout.keys.dir)
    try:
        state = keysmod.install_command_key(key_file, layout.keys.command_key, replace=force)
    except keysmod.KeyProblem as exc:
        raise UserError(str(exc)) from None
    click.echo(f"{state}: {layout.keys.command_key}")


# --- selftest ---------------------------------------------------------------------

@click.command("selftest")
@click.option("--simulate", is_flag=True, help="Simulated GPIO (gpiozero MockFactory): no relay moves.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (asks nothing).")
@click.option("-y", "--yes", "--non-interactive", "non_interactive", is_flag=True,
              help="Ask nothing: relays are pulsed without asking whether they clicked.")
@click.option("--no-relays", is_flag=True, help="Don't drive any relay, lamp or siren.")
@click.option("--only", multiple=True,
              type=click.Choice(["config", "keys", "service", "relays", "inputs", "readers", "cameras",
                                 "broker", "disk", "clock"]),
              help="Run only these checks. Repeatable.")
@click.option("--save-frames", type=click.Path(file_okay=False, path_type=Path),
              help="Save each camera's test frame here as LANE.jpg.")
@click.pass_context
def selftest(ctx, simulate, as_json, non_interactive, no_relays, only, save_frames):
    """Try every part of the gate and print PASS / WARN / FAIL with the reason and the fix.

    Relays click (you confirm each when asked), inputs are read, each card
    reader is asked for its status, a frame is taken from each camera and a
    plate read tried, the broker is reached over TLS, then disk space and
    clock sync. Stop the agent first (it holds the pins and ports). Exit code
    1 if anything FAILs.

    \b
    Example:
      sudo systemctl stop gate-agent && sudo gate-agent selftest
      gate-agent --config /tmp/gate/etc/gate-agent/config.toml selftest --simulate --yes --json
    """
    from provisioning import selftest as st
    interactive = not (non_interactive or as_json)
    results = st.run_all(ctx.obj["config_path"], simulate=simulate, interactive=interactive,
                         relays=not no_relays, only=set(only), save_frames=save_frames)
    if as_json:
        click.echo(json.dumps({"ok": not any(r.status == st.FAIL for r in results),
                               "checks": [r.as_dict() for r in results]}, ensure_ascii=False, indent=2))
    else:
        click.echo(st.render(results))
    if any(r.status == st.FAIL for r in results):
        ctx.exit(1)


# --- the service ------------------------------------------------------------------

@provision.command("install-service")
@_root_option
@click.option("--now", is_flag=True, help="Also (re)start the agent now.")
@click.option("--dry-run", is_flag=True, help="Say what would be done, change nothing.")
@click.option("--executable", help="The gate-agent program the service runs (default: this "
                                   "installation's, or /opt/gate-agent/.venv/bin/gate-agent with --root).")
@click.pass_context
@friendly_os_errors
def install_service(ctx, root, now, dry_run, executable):
    """Install and enable the systemd units (gate-agent.service, the retry timer, its user).

    Copies the units into /etc/systemd/system (or ROOT/etc/systemd/system), the
    service user into sysusers.d and folder modes into tmpfiles.d, then runs
    systemd-sysusers, daemon-reload and enable. Where systemd isn't running it
    says what to run.

    \b
    Example:
      sudo gate-agent provision install-service --now
    """
    from provisioning import service
    layout = layout_for(ctx, root)
    try:
        steps = service.install(layout, start=now, dry_run=dry_run, executable=executable)
    except service.ServiceError as exc:
        raise UserError(str(exc)) from None
    for step in steps:
        click.echo(step)


@provision.command("uninstall-service")
@_root_option
@click.option("--dry-run", is_flag=True, help="Say what would be done, change nothing.")
@click.pass_context
@friendly_os_errors
def uninstall_service(ctx, root, dry_run):
    """Stop, disable and remove the systemd units. Config, keys and records are kept.

    \b
    Example:
      sudo gate-agent provision uninstall-service
    """
    from provisioning import service
    layout = layout_for(ctx, root)
    try:
        steps = service.uninstall(layout, dry_run=dry_run)
    except service.ServiceError as exc:
        raise UserError(str(exc)) from None
    for step in steps:
        click.echo(step)
