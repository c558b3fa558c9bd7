"""Simulated ID card and badge readers that speak the real protocols on a real serial port.

Tests, the demo and the HIL rig all use these. A simulator serves on a pty
(os.openpty, raw mode) by default, or on any serial port / pyserial URL (a
USB-serial adapter wired to the Pi for the HIL rig). With `link=PATH` the
pty is reached through a symlink that unplug() removes and replug()
recreates, so a client sees the port vanish and come back like a USB reader.

    sim = ReaderSimulator(link="/tmp/idreader").start()
    sim.place(Card.resident(name="张三"))     # stays until sim.remove()
    sim.inject("bad_checksum")               # the next reply is broken
    sim.unplug(); sim.replug()
    sim.stop()

Or a script: `ReaderSimulator(cards=[card1, Fault("noise"), card2])` places
each card until it has been read and polled `dwell_polls` more times, then
leaves the reader empty for `gap_polls` polls before the next.
"""
from __future__ import annotations

import collections
import datetime as dt
import logging
import os
import random
import select
import termios
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path

from agent import badges as badgefmt
from agent import idcard

log = logging.getLogger("gate.reader_sim")

_SPEEDS = {getattr(termios, f"B{b}"): b for b in (*idcard.BAUDS, 4800, 2400, 1200, 230400)}


# --- cards -------------------------------------------------------------------------

def _yyyymmdd(value: str) -> str:
    if value in (idcard.LONG_TERM, "长期"):
        return "长期"
    return dt.date.fromisoformat(value).strftime("%Y%m%d")


def sample_photo(seed: str) -> bytes:
    """1024 bytes standing in for a WLT photo (not decodable: WLT is licensed)."""
    rng = random.Random(seed)
    return b"WLT-SIMULATED\0" + bytes(rng.randrange(256) for _ in range(1024 - 14))


@dataclass
class Card:
    """A card to place on the simulated reader; build one with a kind's classmethod."""
    kind: str
    fields: dict
    photo: bytes = b""
    fingerprint: bytes = b""
    new_address: str = ""

    def text(self) -> bytes:
        return idcard.build_text(self.kind, self.fields)

    @property
    def id_number(self) -> str:
        return self.fields["id_number"]

    @classmethod
    def resident(cls, name: str = "张三", gender: str = "1", nation: str = "01",
                 birth: str = "1991-01-01", address: str = "辽宁省沈阳市和平区南京北街1号",
                 region: str = "210102", sequence: str | None = None, id_number: str | None = None,
                 authority: str = "沈阳市公安局和平分局", valid_from: str = "2015-01-01",
                 valid_to: str = "2035-01-01", photo: bytes | None = None,
                 fingerprint: bytes = b"", new_address: str = "") -> "Card":
        """A second-generation resident card; the ID number gets a correct check character
        (sequence odd for male, even for female) unless `id_number` is given."""
        sequence = sequence or ("007" if gender == "1" else "008")
        number = id_number or idcard.make_id_number(region, _yyyymmdd(birth), sequence)
        return cls("resident", {
            "name": name, "gender_code": gender, "nation_code": nation, "birth": _yyyymmdd(birth),
            "address": address, "id_number": number, "authority": authority,
            "valid_from": _yyyymmdd(valid_from), "valid_to": _yyyymmdd(valid_to)},
            photo=sample_photo(number) if photo is None else photo, fingerprint=fingerprint,
            new_address=new_address)

    @classmethod
    def hkmotw(cls, name: str = "陈大文", gender: str = "1", birth: str = "1985-06-15",
               address: str = "广东省深圳市福田区福华路1号", region: str = "810000",
               id_number: str | None = None, authority: str = "深圳市公安局",
               valid_from: str = "2019-01-01", valid_to: str = "2024-01-01",
               pass_number: str = "H60123456", issue_count: str = "01",
               photo: bytes | None = None) -> "Card":
        """A Hong Kong / Macau / Taiwan residence permit (region 810000 / 820000 / 830000)."""
        number = id_number or idcard.make_id_number(region, _yyyymmdd(birth),
                                                    "003" if gender == "1" else "004")
        return cls("hkmotw", {
            "name": name, "gender_code": gender, "birth": _yyyymmdd(birth), "address": address,
            "id_number": number, "authority": authority, "valid_from": _yyyymmdd(valid_from),
            "valid_to": _yyyymmdd(valid_to), "pass_number": pass_number,
            "issue_count": issue_count}, photo=sample_photo(number) if photo is None else photo)

    @classmethod
    def foreigner_permanent(cls, english_name: str = "SMITH, JOHN", chinese_name: str = "史密斯",
                            gender: str = "1", nationality: str = "USA", birth: str = "1970-03-04",
                            pr_number: str | None = None, valid_from: str = "2017-05-01",
                            valid_to: str = "2027-05-01", version: str = "05",
                            authority_code: str = "1500", photo: bytes | None = None) -> "Card":
        """The older foreigner permanent-residence card (`I`), 15-character PR number."""
        number = pr_number or f"{nationality}{authority_code[:2]}{_yyyymmdd(birth)[2:]}0101"[:15]
        return cls("foreigner_permanent", {
            "english_name": english_name, "chinese_name": chinese_name, "gender_code": gender,
            "id_number": number, "nationality": nationality, "valid_from": _yyyymmdd(valid_from),
            "valid_to": _yyyymmdd(valid_to), "birth": _yyyymmdd(birth), "card_version": version,
            "authority_code": authority_code}, photo=sample_photo(number) if photo is None else photo)

    @classmethod
    def foreigner_2023(cls, english_name: str = "MUELLER, ANNA MARIA", chinese_name: str = "安娜",
                       gender: str = "2", nationality: str = "DEU", birth: str = "1988-11-30",
                       province: str = "11", nationality_digits: str = "276",
                       id_number: str | None = None, valid_from: str = "2023-12-01",
                       valid_to: str = "2033-12-01", change_count: str = "00",
                       photo: bytes | None = None) -> "Card":
        """The 2023 foreigner permanent-residence ID card (`Y`): 18-character number starting 9."""
        number = id_number or idcard.make_id_number(f"9{province}{nationality_digits}",
                                                    _yyyymmdd(birth), "002")
        return cls("foreigner_2023", {
            "chinese_name": chinese_name, "english_name": english_name, "gender_code": gender,
            "change_count": change_count, "birth": _yyyymmdd(birth), "id_number": number,
            "valid_from": _yyyymmdd(valid_from), "valid_to": _yyyymmdd(valid_to),
            "nationality": nationality}, photo=sample_photo(number) if photo is None else photo)

    @classmethod
    def from_dict(cls, spec: dict) -> "Card":
        """{"kind": "resident", ...builder arguments}: the JSON form used by card files."""
        spec = dict(spec)
        kind = spec.pop("kind", "resident")
        builders = {"resident": cls.resident, "hkmotw": cls.hkmotw,
                    "foreigner_permanent": cls.foreigner_permanent,
                    "foreigner_2023": cls.foreigner_2023}
        if kind not in builders:
            raise ValueError(f"card kind {kind!r}: expected one of {', '.join(builders)}")
        try:
            return builders[kind](**spec)
        except TypeError as exc:
            raise ValueError(f"{kind} card: {exc}") from None


def demo_cards(today: dt.date | None = None) -> list[Card]:
    """One card of each kind, plus an expired resident card."""
    today = today or dt.date.today()
    return [
        Card.resident(name="张伟", birth="1986-04-12", valid_to="2036-04-12"),
        Card.resident(name="李娜", gender="2", nation="03", birth="1993-09-01",
                      valid_from="2010-09-01", valid_to=(today - dt.timedelta(days=30)).isoformat()),
        Card.hkmotw(valid_to=(today + dt.timedelta(days=365)).isoformat()),
        Card.foreigner_permanent(),
        Card.foreigner_2023(),
        Card.resident(name="王芳", gender="2", birth="1960-02-29", valid_from="2010-01-01",
                      valid_to="long-term"),
    ]


# --- faults --------------------------------------------------------------------------

FAULTS = ("bad_checksum", "truncated", "noise", "silence", "garbage")


@dataclass
class Fault:
    """A fault for the next reply: one of FAULTS, or a status (name or SW3 code) the reader
    answers instead of its normal one. `on` limits it to find / select / read replies."""
    kind: str
    on: str | None = None
    count: int = 1

    def __post_init__(self):
        if self.kind.startswith("status:"):
            self.kind = self.kind.split(":", 1)[1]
        if self.kind not in FAULTS and self.sw3 is None:
            raise ValueError(f"fault {self.kind!r}: expected one of {', '.join(FAULTS)}, a status "
                             f"name ({', '.join(idcard.SW3_BY_NAME)}) or a 2-digit hex SW3")
        if self.on not in (None, "find", "select", "read"):
            raise ValueError(f"fault target {self.on!r}: expected find, select or read")

    @property
    def sw3(self) -> int | None:
        if self.kind in idcard.SW3_BY_NAME:
            return idcard.SW3_BY_NAME[self.kind]
        if len(self.kind) == 2:
            try:
                return int(self.kind, 16)
            except ValueError:
                return None
        return None

    @classmethod
    def status(cls, sw3: int | str, on: str | None = None, count: int = 1) -> "Fault":
        return cls(sw3 if isinstance(sw3, str) else f"{sw3:02X}", on, count)


def _fault(value) -> Fault:
    return value if isinstance(value, Fault) else Fault(str(value))


# --- ports ----------------------------------------------------------------------------

class PtyPort:
    """The simulator's end of a pty; the client opens `path`. With a link, `path` is the
    symlink, removed by close() so the port vanishes like an unplugged USB reader."""

    def __init__(self, link: str | os.PathLike | None = None):
        self.link = Path(link) if link else None
        self.master = self.slave = None
        self.path = ""

    def open(self) -> str:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        tty.setraw(self.master)
        os.set_blocking(self.master, False)
        name = os.ttyname(self.slave)
        if self.link:
            tmp = self.link.with_name(self.link.name + ".new")
            tmp.unlink(missing_ok=True)
            os.symlink(name, tmp)
            os.replace(tmp, self.link)
        self.path = str(self.link or name)
        return self.path

    def close(self) -> None:
        if self.link:
            self.link.unlink(missing_ok=True)
        for fd in (self.master, self.slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.master = self.slave = None

    def read(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(self.master, 4096)
        except (BlockingIOError, OSError):
            return b""

    def write(self, data: bytes, timeout: float = 1.0) -> None:
        """Write all of `data`, or drop the rest if nobody reads it within `timeout`
        (a UART with nothing listening loses its bytes too)."""
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        while view:
            try:
                sent = os.write(self.master, view)
                view = view[sent:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return
                select.select([], [self.master], [], 0.05)
            except OSError:
                return

    def client_baud(self) -> int | None:
        """The speed the client set on its end (termios is shared by every opener of the tty)."""
        try:
            attrs = termios.tcgetattr(self.slave)
        except termios.error:
            return None
        return _SPEEDS.get(attrs[5])


class SerialUrlPort:
    """The simulator on a real serial port or pyserial URL (e.g. an adapter for the HIL rig)."""

    def __init__(self, url: str, baud: int):
        self.url, self.baud = url, baud
        self.serial = None
        self.path = url

    def open(self) -> str:
        import serial
        self.serial = serial.serial_for_url(self.url, baudrate=self.baud, timeout=0)
        return self.url

    def close(self) -> None:
        if self.serial is not None:
            self.serial.close()
            self.serial = None

    def read(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.serial.read(4096)
            if data:
                return data
            time.sleep(0.005)
        return b""

    def write(self, data: bytes, timeout: float = 1.0) -> None:
        self.serial.write(data)

    def set_baud(self, baud: int) -> None:
        self.serial.baudrate = baud

    def client_baud(self) -> int | None:
        return None  # a real line: a wrong speed garbles the bytes by itself


class _Simulator:
    """Plumbing shared by the card and badge simulators: port, thread, plug state."""

    def __init__(self, link=None, url: str | None = None, baud: int = 115200):
        self.baud = baud
        self.port_io = SerialUrlPort(url, baud) if url else PtyPort(link)
        self.port = ""
        self.plugged = False
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self):
        if self.plugged:
            return self
        self.port = self.port_io.open()
        self.plugged = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        self._thread = None
        self.port_io.close()
        self.plugged = False

    def unplug(self) -> None:
        """The reader vanishes: the port closes and, with a link, its path disappears."""
        self.stop()

    def replug(self):
        """The reader comes back (a new pty behind the same link path)."""
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _serve(self) -> None:
        raise NotImplementedError


# --- the ID card reader ----------------------------------------------------------------

class ReaderSimulator(_Simulator):
    """An ID card reader with its SAM: answers find / select / read / SAM / speed commands.

    Real readers differ in what a find answers while a card that was read stays on
    them: some find it again at once (the default here), some answer "no card" for a
    few polls (`quiet_after_read`).

    Attributes for tests: `requests` (recent commands as (cmd, param)), `reads` (read
    replies sent with a card's data), `fingerprint` (whether `30 10` is supported).
    """

    def __init__(self, cards: list | None = None, *, link=None, url: str | None = None,
                 baud: int = 115200, fingerprint: bool = True, dwell_polls: int = 3,
                 gap_polls: int = 2, repeat: bool = False, quiet_after_read: int = 0,
                 seed: int = 0):
        super().__init__(link, url, baud)
        self.fingerprint = fingerprint
        self.queue = collections.deque(cards or [])
        self.repeat = repeat
        self.dwell_polls, self.gap_polls = dwell_polls, gap_polls
        self.quiet_after_read = quiet_after_read
        self._quiet_left = 0
        self.card: Card | None = None
        self._scripted = False
        self._read_done = False
        self._dwell_left = 0
        self._gap_left = 0
        self.faults: list[Fault] = []
        self.requests: collections.deque = collections.deque(maxlen=200)
        self.reads = 0
        self.sam_id = bytes(range(16))
        self._rng = random.Random(seed)
        self._parser = idcard.FrameParser()

    # the API
    def place(self, card: Card) -> None:
        """Put a card on the reader; it stays until remove()."""
        with self._lock:
            self.card, self._scripted, self._read_done = card, False, False

    def remove(self) -> None:
        with self._lock:
            self.card = None

    def inject(self, fault, on: str | None = None, count: int = 1) -> None:
        """Break the next reply(ies): a Fault, a FAULTS name or a status name / hex SW3."""
        if not isinstance(fault, Fault):
            fault = Fault(str(fault), on, count)
        with self._lock:
            self.faults.append(fault)

    @property
    def script_done(self) -> bool:
        with self._lock:
            return not self.queue and self.card is None

    # serving
    def _serve(self) -> None:
        self._parser.reset()
        while not self._stop.is_set():
            data = self.port_io.read(0.05)
            if not data:
                continue
            before = self._parser.rejected
            for frame in self._parser.feed(data):
                self._answer(frame)
            if self._parser.rejected > before and self._parser.last_rejection.startswith("checksum"):
                self._send(idcard.build_response(0x10))

    def _send(self, data: bytes) -> None:
        self.port_io.write(data)

    def _answer(self, frame: idcard.Frame) -> None:
        if len(frame.body) < 2:
            self._send(idcard.build_response(0x11))
            return
        command = frame.command
        self.requests.append(command)
        client = self.port_io.client_baud()
        if client is not None and client != self.baud:
            self._send(bytes(self._rng.randrange(256) for _ in range(8)))  # wrong speed: garble
            return
        with self._lock:
            fault = self._take_fault(command)
            if fault is not None and fault.sw3 is not None:
                reply, after = idcard.build_response(fault.sw3), None
            else:
                reply, after = self._reply(command)
                reply = self._break(fault, reply) if fault else reply
        if reply:
            self._send(reply)
        if after:
            after()

    def _family(self, command) -> str | None:
        return {idcard.FIND_CARD: "find", idcard.SELECT_CARD: "select"}.get(
            command, "read" if command[0] == 0x30 else None)

    def _take_fault(self, command) -> Fault | None:
        family = self._family(command)
        for fault in self.faults:
            if fault.on is None or fault.on == family:
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def _break(self, fault: Fault, reply: bytes) -> bytes:
        if fault.kind == "bad_checksum":
            return reply[:-1] + bytes([reply[-1] ^ 0xFF])
        if fault.kind == "truncated":
            return reply[:max(8, len(reply) // 2)]
        if fault.kind == "noise":
            noise = bytes(self._rng.randrange(256) for _ in range(self._rng.randrange(5, 40)))
            return noise + reply + noise[:7]
        if fault.kind == "garbage":
            return bytes(self._rng.randrange(256) for _ in range(len(reply)))
        return b""  # silence

    def _next_scripted(self) -> None:
        """Advance the script on each find: place, dwell after the read, remove, gap."""
        if self.card is not None and self._scripted and self._read_done:
            if self._dwell_left <= 0:
                self.card, self._gap_left = None, self.gap_polls
            else:
                self._dwell_left -= 1
        if self.card is None and self._gap_left > 0:
            self._gap_left -= 1
            return
        while self.card is None and self.queue:
            item = self.queue.popleft()
            if self.repeat:
                self.queue.append(item)
            if isinstance(item, Card):
                self.card, self._scripted, self._read_done = item, True, False
                self._dwell_left = self.dwell_polls
            else:
                self.faults.append(_fault(item))

    def _reply(self, command) -> tuple[bytes, object]:
        ok = idcard.build_response
        if command == idcard.FIND_CARD:
            self._next_scripted()
            if self._quiet_left > 0:
                self._quiet_left -= 1
                return ok(0x80, bytes(4)), None
            return ok(0x9F if self.card else 0x80, bytes(4)), None
        if command == idcard.SELECT_CARD:
            return ok(0x90 if self.card else 0x81, bytes(8) if self.card else b""), None
        if command in (idcard.READ_TEXT_PHOTO, idcard.READ_TEXT_PHOTO_FINGERPRINT):
            if command == idcard.READ_TEXT_PHOTO_FINGERPRINT and not self.fingerprint:
                return ok(0x21), None
            if self.card is None:
                return ok(0x41), None
            fingerprint = self.card.fingerprint if command[1] == 0x10 else None
            data = idcard.build_read_data(self.card.text(), self.card.photo, fingerprint)
            self.reads += 1
            self._read_done = True
            self._quiet_left = self.quiet_after_read
            return ok(0x90, data), None
        if command == idcard.READ_NEW_ADDRESS:
            if self.card is None:
                return ok(0x41), None
            raw = self.card.new_address.encode("utf-16-le")[:70]
            return ok(0x90, raw + b" \0" * ((70 - len(raw)) // 2)), None
        if command in (idcard.RESET_SAM, idcard.SAM_STATUS):
            return ok(0x90), None
        if command == idcard.READ_SAM_ID:
            return ok(0x90, self.sam_id), None
        if command[0] == idcard.SET_BAUD and command[1] < len(idcard.BAUDS):
            new = idcard.BAUDS[command[1]]
            return ok(0x90), lambda: self._switch_baud(new)
        return ok(0x21), None

    def _switch_baud(self, baud: int) -> None:
        self.baud = baud
        if isinstance(self.port_io, SerialUrlPort):
            self.port_io.set_baud(baud)


# --- badge readers ------------------------------------------------------------------------

def badge_bytes(fmt: str, value) -> bytes:
    """What a badge reader of `fmt` sends for one presentation of `value`: an int tag for
    rdm6300, (facility, card) for wiegand26/34, a digit string for digits."""
    if fmt == "rdm6300":
        return badgefmt.rdm6300_frame(int(value))
    if fmt in ("wiegand26", "wiegand34"):
        facility, card = value
        return badgefmt.wiegand_bits(facility, card, int(fmt[-2:])).encode() + b"\r\n"
    if fmt == "digits":
        return str(value).encode() + b"\r\n"
    raise ValueError(f"badge format {fmt!r}: expected rdm6300, wiegand26, wiegand34 or digits")


class BadgeSimulator(_Simulator):
    """A badge reader: RDM6300 repeats its frame every `repeat_s` while a tag is in the
    field (like the real module); Wiegand converters and digit readers send one line
    per presentation."""

    def __init__(self, fmt: str = "rdm6300", *, link=None, url: str | None = None,
                 baud: int | None = None, repeat_s: float = 0.1, seed: int = 0):
        super().__init__(link, url, baud or badgefmt.RDM6300_BAUD)
        badge_bytes(fmt, 0 if fmt in ("rdm6300", "digits") else (0, 0))
        self.format = fmt
        self.repeat_s = repeat_s
        self.value = None
        self._pending: collections.deque = collections.deque()
        self.faults: list[str] = []
        self.sent = 0
        self._rng = random.Random(seed)
        self._wake = threading.Event()

    def place(self, value) -> None:
        with self._lock:
            self.value = value
            self._pending.append(badge_bytes(self.format, value))
        self._wake.set()

    def remove(self) -> None:
        with self._lock:
            self.value = None

    def inject(self, fault: str) -> None:
        if fault not in ("bad_checksum", "truncated", "noise", "garbage"):
            raise ValueError(f"badge fault {fault!r}: expected bad_checksum, truncated, noise, garbage")
        with self._lock:
            self.faults.append(fault)

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.repeat_s)
            self._wake.clear()
            with self._lock:
                out = list(self._pending)
                self._pending.clear()
                if not out and self.format == "rdm6300" and self.value is not None:
                    out = [badge_bytes(self.format, self.value)]
                out = [self._broken(chunk) for chunk in out]
            for chunk in out:
                self.port_io.write(chunk, timeout=0.2)
                self.sent += 1

    def _broken(self, chunk: bytes) -> bytes:
        if not self.faults:
            return chunk
        fault = self.faults.pop(0)
        if fault == "bad_checksum":
            if self.format == "rdm6300":
                return chunk[:11] + (b"0" if chunk[11:12] != b"0" else b"1") + chunk[12:]
            flipped = b"1" if chunk[:1] == b"0" else b"0"
            return flipped + chunk[1:]
        line_end = b"" if self.format == "rdm6300" else b"\r\n"
        if fault == "truncated":
            return chunk[:len(chunk) // 2] + line_end
        if fault == "noise":
            return bytes(self._rng.choice(b"\x01\x04\x7f\xaa\xff") for _ in range(9)) + line_end + chunk
        return bytes(self._rng.randrange(256) for _ in range(len(chunk)))
