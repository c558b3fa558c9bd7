"""Employee badge formats: 125 kHz RDM6300 frames, Wiegand 26/34 bit strings, digit lines.

Hardware-free: the serial port lives in drivers/serial_reader.py.

Every read becomes a `Badge`: `badge` is the number as usually printed on the
card (RDM6300 and Wiegand 34: the 32-bit tag as 10 decimal digits, so an
EM4100 card reads the same on both; Wiegand 26: the 24 bits as 8 digits;
digit readers: the digits as typed), plus facility and card number where
the format carries them (the "123,45678" printed beside the long number).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

STX, ETX = 0x02, 0x03
RDM6300_BAUD = 9600
MAX_LINE = 64


@dataclass(frozen=True)
class Badge:
    format: str
    badge: str
    facility: int | None = None
    card_number: int | None = None
    raw: str = ""

    def to_data(self) -> dict:
        data = {"format": self.format, "badge": self.badge, "raw": self.raw}
        if self.facility is not None:
            data["facility"] = self.facility
            data["card_number"] = self.card_number
        return data


class BadgeError(ValueError):
    """A frame or line that is not a valid badge read (bad checksum, parity, shape)."""


# --- RDM6300 ------------------------------------------------------------------

def rdm6300_checksum(five: bytes) -> int:
    value = 0
    for byte in five:
        value ^= byte
    return value


def rdm6300_frame(tag: int, version: int = 0) -> bytes:
    """02, 10 hex chars (version byte + 32-bit tag), 2 hex chars of XOR checksum, 03."""
    five = bytes([version]) + tag.to_bytes(4, "big")
    body = five.hex().upper() + f"{rdm6300_checksum(five):02X}"
    return bytes([STX]) + body.encode() + bytes([ETX])


def parse_rdm6300(body: bytes) -> Badge:
    """The 12 ASCII hex characters between 02 and 03."""
    try:
        text = body.decode("ascii")
        raw = bytes.fromhex(text)
    except (UnicodeDecodeError, ValueError):
        raise BadgeError(f"RDM6300 frame {body!r} is not 12 hex characters") from None
    if len(raw) != 6:
        raise BadgeError(f"RDM6300 frame {body!r} is not 12 hex characters")
    if rdm6300_checksum(raw[:5]) != raw[5]:
        raise BadgeError(f"RDM6300 checksum {raw[5]:02X}, expected {rdm6300_checksum(raw[:5]):02X}")
    tag = int.from_bytes(raw[1:5], "big")
    return Badge("rdm6300", f"{tag:010d}", facility=(tag >> 16) & 0xFF, card_number=tag & 0xFFFF,
                 raw=text[:10].upper())


class StreamParser:
    """Bytes in, badges out; what can't be parsed is counted, the last reason kept."""

    def __init__(self):
        self._buffer = bytearray()
        self.rejected = 0
        self.last_rejection = ""

    def _reject(self, why: str) -> None:
        self.rejected += 1
        self.last_rejection = why


class Rdm6300Parser(StreamParser):
    """Finds 02 ... 03 frames in a byte stream; bad ones are counted and skipped."""

    FRAME_BODY = 12

    def feed(self, data: bytes) -> list[Badge]:
        self._buffer += data
        badges = []
        buf = self._buffer
        while True:
            start = buf.find(STX)
            if start < 0:
                buf.clear()
                return badges
            del buf[:start]
            if len(buf) < self.FRAME_BODY + 2:
                return badges
            if buf[self.FRAME_BODY + 1] != ETX:
                self._reject("no 03 after 12 characters")
                del buf[:1]
                continue
            try:
                badges.append(parse_rdm6300(bytes(buf[1:self.FRAME_BODY + 1])))
            except BadgeError as exc:
                self._reject(str(exc))
                del buf[:1]
                continue
            del buf[:self.FRAME_BODY + 2]

# --- Wiegand ------------------------------------------------------------------

WIEGAND = {26: 8, 34: 16}
"""Bits -> facility code width; the card number is always 16 bits."""


def _ones(bits: str) -> int:
    return bits.count("1")


def wiegand_bits(facility: int, card: int, bits: int = 26) -> str:
    """The bit string: even parity over the first half of the data, odd over the second."""
    if bits not in WIEGAND:
        raise ValueError(f"Wiegand {bits} is not supported; expected 26 or 34")
    fac_width = WIEGAND[bits]
    if not 0 <= facility < 2 ** fac_width or not 0 <= card < 2 ** 16:
        raise ValueError(f"facility {facility} / card {card} do not fit Wiegand {bits}")
    data = f"{facility:0{fac_width}b}{card:016b}"
    half = len(data) // 2
    even = "1" if _ones(data[:half]) % 2 else "0"
    odd = "0" if _ones(data[half:]) % 2 else "1"
    return even + data + odd


def parse_wiegand(bits: str, expect: int | None = None) -> Badge:
    bits = bits.strip()
    if not bits or set(bits) - {"0", "1"}:
        raise BadgeError(f"Wiegand line {bits!r} is not a string of 0 and 1")
    if len(bits) not in WIEGAND or (expect and len(bits) != expect):
        want = expect or "26 or 34"
        raise BadgeError(f"Wiegand line has {len(bits)} bits; expected {want}")
    data = bits[1:-1]
    half = len(data) // 2
    if (_ones(bits[0]) + _ones(data[:half])) % 2 != 0:
        raise BadgeError(f"Wiegand {len(bits)} even parity fails on {bits}")
    if (_ones(data[half:]) + _ones(bits[-1])) % 2 != 1:
        raise BadgeError(f"Wiegand {len(bits)} odd parity fails on {bits}")
    fac_width = WIEGAND[len(bits)]
    facility, card = int(data[:fac_width], 2), int(data[fac_width:], 2)
    value = int(data, 2)
    width = 8 if len(bits) == 26 else 10
    return Badge(f"wiegand{len(bits)}", f"{value:0{width}d}", facility=facility, card_number=card,
                 raw=bits)


# --- digit lines ----------------------------------------------------------------

DIGITS_RE = re.compile(r"^[0-9]{4,20}$")


def parse_digits(line: str) -> Badge:
    line = line.strip()
    if not DIGITS_RE.match(line):
        raise BadgeError(f"line {line!r} is not 4 to 20 digits")
    return Badge("digits", line, raw=line)


class LineParser(StreamParser):
    """Splits a byte stream into lines (CR, LF or both) and parses each with `parse`.
    A line longer than MAX_LINE is noise: it is dropped and counted."""

    def __init__(self, parse):
        super().__init__()
        self.parse = parse

    def feed(self, data: bytes) -> list[Badge]:
        self._buffer += data
        badges = []
        while True:
            cut = min((i for i in (self._buffer.find(b"\r"), self._buffer.find(b"\n")) if i >= 0),
                      default=-1)
            if cut < 0:
                if len(self._buffer) > MAX_LINE:
                    self._reject(f"{len(self._buffer)} bytes without a line end")
                    self._buffer.clear()
                return badges
            line = bytes(self._buffer[:cut])
            del self._buffer[:cut + 1]
            if not line.strip():
                continue
            try:
                badges.append(self.parse(line.decode("ascii")))
            except (UnicodeDecodeError, BadgeError) as exc:
                self._reject(str(exc) if isinstance(exc, BadgeError) else f"non-ASCII line {line!r}")


def parser_for(kind: str):
    """A stream parser for a configured reader kind (rdm6300, wiegand26, wiegand34, digits)."""
    if kind == "rdm6300":
        return Rdm6300Parser()
    if kind in ("wiegand26", "wiegand34"):
        bits = int(kind[-2:])
        return LineParser(lambda line: parse_wiegand(line, expect=bits))
    if kind == "digits":
        return LineParser(parse_digits)
    raise ValueError(f"no badge parser for reader kind {kind!r}")
