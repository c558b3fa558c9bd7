"""`gate-agent reader`: read a card, list serial ports, run a simulated reader."""
from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import click

from agent.cli import UserError
from agent.identity import mask_id_number, mask_name

KNOWN_ADAPTERS = {
    "1a86:7523": "CH340 USB-serial (common in ID card and RFID readers)",
    "10c4:ea60": "Silicon Labs CP210x USB-serial",
    "067b:2303": "Prolific PL2303 USB-serial",
    "0403:6001": "FTDI FT232 USB-serial",
    "0400:c35a": "ID card reader (USB CDC, seen on some vendors' readers)",
}
MASKED_NAMES = ("name", "english_name", "chinese_name")
MASKED_NUMBERS = ("id_number", "pass_number")
WITHHELD = ("address", "new_address", "photo", "fingerprint", "birth_date")
"""birth_date too: it is the part of the ID number that the mask hides."""


@click.group("reader")
def reader():
    """ID card and badge readers: read one card, list ports, simulate a reader.

    \b
    Example:
      gate-agent reader list
      gate-agent reader read --port /dev/ttyUSB0
    """


def shown(card: dict, reveal: bool) -> dict:
    """A card for the screen: names and numbers masked, address and photo withheld,
    unless revealed (the photo is always shown as its size only)."""
    out = {}
    for key, value in card.items():
        if key in ("photo", "fingerprint") and isinstance(value, (bytes, bytearray)):
            out[key] = f"<{len(value)} bytes WLT>" if key == "photo" else f"<{len(value)} bytes>"
            if not reveal:
                out[key] = "<withheld>"
        elif reveal or not isinstance(value, str):
            out[key] = value
        elif key in MASKED_NAMES:
            out[key] = mask_name(value)
        elif key in MASKED_NUMBERS:
            out[key] = mask_id_number(value)
        elif key in WITHHELD:
            out[key] = "<withheld>"
        else:
            out[key] = value
    return out


@reader.command("read")
@click.option("--port", help="Serial port or pyserial URL; default: the first idcard reader in the config.")
@click.option("--baud", type=int, default=0, show_default=True, help="0: try the five speeds in turn.")
@click.option("--wait", "wait_s", type=float, default=10.0, show_default=True,
              help="Seconds to wait for a card.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--reveal", is_flag=True, help="Show the ID number, name and address unmasked.")
@click.pass_context
def read_command(ctx, port, baud, wait_s, as_json, reveal):
    """Read one ID card and print it (ID number, name, birth date, address masked unless --reveal).

    \b
    Example:
      gate-agent reader read --port /dev/ttyUSB0 --json
      gate-agent reader read --port /dev/ttyUSB0 --reveal
    """
    from agent import idcard
    from drivers.serial_reader import ReaderError, connect_idcard, read_one
    if not port:
        port, baud = _configured_port(ctx, baud)
    try:
        link = connect_idcard(port, baud)
    except ReaderError as exc:
        raise UserError(str(exc)) from None
    try:
        card = read_one(link, wait_s)
        sam = _sam_id(link) if card else None
    except ReaderError as exc:
        raise UserError(f"{port}: {exc}") from None
    except idcard.StatusError as exc:
        raise UserError(f"{port}: {exc}") from None
    finally:
        link.port.close()
    if card is None:
        raise UserError(f"{port}: no card placed within {wait_s:g} s")
    card = shown(card, reveal)
    card.update(port=port, baud=link.baud, sam_id=sam)
    if as_json:
        click.echo(json.dumps(card, ensure_ascii=False, indent=2))
        return
    for key, value in card.items():
        click.echo(f"{key:>15}: {value}")


def _sam_id(link) -> str | None:
    """The SAM's id where the reader tells it (not every reader does)."""
    from agent.idcard import StatusError
    try:
        return link.sam_id()
    except StatusError:
        return None


def _configured_port(ctx, baud: int) -> tuple[str, int]:
    from agent.cli import load_config
    cfg = load_config(ctx, check_files=False)
    for entry in cfg.readers:
        if entry.kind == "idcard":
            return entry.port, baud or entry.baud
    raise UserError(f"{cfg.path}: no [[readers]] entry of kind 'idcard'; give --port")


@reader.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(as_json):
    """List serial ports with their USB vendor:product ids.

    \b
    Example:
      gate-agent reader list
    """
    from serial.tools import list_ports
    ports = []
    for info in sorted(list_ports.comports(), key=lambda p: p.device):
        usb = f"{info.vid:04x}:{info.pid:04x}" if info.vid is not None else ""
        ports.append({"port": info.device, "usb": usb, "description": info.description or "",
                      "manufacturer": info.manufacturer or "", "serial": info.serial_number or "",
                      "hint": KNOWN_ADAPTERS.get(usb, "")})
    if as_json:
        click.echo(json.dumps(ports, ensure_ascii=False, indent=2))
        return
    if not ports:
        click.echo("no serial ports found (is the reader plugged in? USB readers show up as "
                   "/dev/ttyUSB* or /dev/ttyACM*)")
        return
    for p in ports:
        line = f"{p['port']}  {p['usb'] or '-':9}  {p['description']}"
        if p["hint"]:
            line += f"  ({p['hint']})"
        click.echo(line)


@reader.command("simulate")
@click.option("--cards", "cards_file", type=click.Path(dir_okay=False),
              help="JSON list of cards ({\"kind\": \"resident\", \"name\": ...}) and faults "
                   "({\"fault\": \"noise\"}) presented in turn.")
@click.option("--demo", is_flag=True, help="Present one card of every kind (one expired), forever.")
@click.option("--link", type=click.Path(dir_okay=False),
              help="Also reach the pty through this symlink (stable path for configs).")
@click.option("--baud", type=click.Choice(["115200", "57600", "38400", "19200", "9600"]),
              default="115200", show_default=True, help="The simulated reader's speed.")
@click.option("--badge", "badge_format", type=click.Choice(["rdm6300", "wiegand26", "wiegand34", "digits"]),
              help="Simulate a badge reader instead; the cards file then lists badge values.")
@click.option("--seconds", type=float, default=0, help="Stop after this long (0: until Ctrl-C).")
def simulate_command(cards_file, demo, link, baud, badge_format, seconds):
    """Run a simulated reader on a pty speaking the real protocol; prints its path.

    \b
    Example:
      gate-agent reader simulate --demo --link /tmp/idreader
      gate-agent reader read --port /tmp/idreader
    """
    from drivers.reader_sim import BadgeSimulator, Card, Fault, ReaderSimulator, demo_cards
    items = _load_items(cards_file) if cards_file else []
    stop = threading.Event()
    if badge_format:
        sim = BadgeSimulator(badge_format, link=link).start()
        values = items or ([0x00BC614E, 0x0012D687] if badge_format == "rdm6300" else
                           [(90, 324), (12, 3456)] if badge_format.startswith("wiegand") else
                           ["10001", "10002"])
        threading.Thread(target=_present_badges, args=(sim, values, stop), daemon=True).start()
    else:
        try:
            script = [_card_or_fault(item, Card, Fault) for item in items]
        except ValueError as exc:
            raise UserError(f"{cards_file}: {exc}") from None
        if demo:
            script = script + demo_cards()
        sim = ReaderSimulator(script, link=link, baud=int(baud), repeat=demo).start()
    click.echo(sim.port)
    click.echo(f"simulated {'badge' if badge_format else 'ID card'} reader on {sim.port}; "
               "Ctrl-C stops it", err=True)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait(seconds or None)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        sim.stop()


def _load_items(path: str) -> list:
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(items, list) or not all(isinstance(i, (dict, int, str, list)) for i in items):
        raise UserError(f"{path}: expected a JSON list of cards")
    return items


def _card_or_fault(item, Card, Fault):
    if not isinstance(item, dict):
        raise ValueError(f"{item!r} is not a card object")
    return Fault(str(item["fault"])) if "fault" in item else Card.from_dict(item)


def _present_badges(sim, values, stop: threading.Event) -> None:
    while not stop.is_set():
        for value in values:
            sim.place(tuple(value) if isinstance(value, list) else value)
            if stop.wait(1.0):
                return
            sim.remove()
            if stop.wait(2.0):
                return
