"""Resident ID card readers: the SAM serial protocol and the card's 256-byte text block.

Hardware-free: frames are built and parsed here, the serial port lives in
drivers/serial_reader.py. The protocol and layouts are in
docs/readers.md and /work/shared/specs/id-card-reader.md.

A frame is `AA AA AA 96 69`, a big-endian length counting every byte after
it (checksum included), the body, and an XOR checksum of every byte after
the preamble. Requests carry command, parameter, data; responses carry SW1,
SW2, SW3 (the status), data.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from agent.identity import id_check_char, is_valid_id_number

PREAMBLE = b"\xAA\xAA\xAA\x96\x69"
MIN_LENGTH = 3
MAX_LENGTH = 4096
"""Largest length field accepted: the biggest real reply (30 10 with a fingerprint)
is 2314. A larger one is noise, and resyncing past it beats waiting for bytes
that never come."""

# Commands: (command, parameter)
RESET_SAM = (0x10, 0xFF)
SAM_STATUS = (0x11, 0xFF)
READ_SAM_ID = (0x12, 0xFF)
FIND_CARD = (0x20, 0x01)
SELECT_CARD = (0x20, 0x02)
READ_TEXT_PHOTO = (0x30, 0x01)
READ_NEW_ADDRESS = (0x30, 0x03)
READ_TEXT_PHOTO_FINGERPRINT = (0x30, 0x10)
SET_BAUD = 0x60
BAUDS = (115200, 57600, 38400, 19200, 9600)
"""Parameter nn of `60 nn` indexes this tuple; also the auto-detect order."""

TEXT_LEN, PHOTO_LEN, FINGERPRINT_LEN = 256, 1024, 1024

# SW3: code -> (named condition, meaning)
STATUS = {
    0x90: ("ok", "success"),
    0x9F: ("card_found", "find card: success"),
    0x10: ("request_checksum_error", "checksum error in the request"),
    0x11: ("request_length_error", "length error in the request"),
    0x21: ("unknown_command", "unknown command"),
    0x24: ("unknown_error", "unknown error"),
    0x31: ("card_auth_failed", "card-to-reader authentication failed"),
    0x32: ("reader_auth_failed", "reader-to-card authentication failed"),
    0x33: ("verification_failed", "information verification failed"),
    0x40: ("wrong_card_type", "wrong card type"),
    0x41: ("read_failed", "read failed"),
    0x47: ("random_number_failed", "random-number failed"),
    0x60: ("sam_self_test_failed", "SAM self-test failed"),
    0x66: ("sam_not_authorised", "SAM not authorised"),
    0x80: ("no_card", "find card failed (no card)"),
    0x81: ("select_failed", "select card failed"),
}
SW3_BY_NAME = {name: code for code, (name, _) in STATUS.items()}
SAM_FAULTS = {0x60, 0x66}
"""Statuses that mean the reader's security module is broken, not the card or the link."""


def status_name(sw3: int) -> str:
    """The named condition for a status byte; unknown codes keep their value in the name."""
    return STATUS[sw3][0] if sw3 in STATUS else f"unknown_status_{sw3:02X}"


def status_meaning(sw3: int) -> str:
    return STATUS[sw3][1] if sw3 in STATUS else f"status {sw3:02X} (not in the protocol table)"


def xor(data: bytes) -> int:
    value = 0
    for byte in data:
        value ^= byte
    return value


def _frame(body: bytes) -> bytes:
    length = (len(body) + 1).to_bytes(2, "big")
    return PREAMBLE + length + body + bytes([xor(length + body)])


def build_request(command: int, parameter: int, data: bytes = b"") -> bytes:
    return _frame(bytes([command, parameter]) + data)


def build_response(sw3: int, data: bytes = b"", sw1: int = 0, sw2: int = 0) -> bytes:
    return _frame(bytes([sw1, sw2, sw3]) + data)


@dataclass(frozen=True)
class Frame:
    """One checked frame; `body` is what lies between the length and the checksum."""
    body: bytes

    # as a request
    @property
    def command(self) -> tuple[int, int]:
        return self.body[0], self.body[1]

    @property
    def request_data(self) -> bytes:
        return self.body[2:]

    # as a response
    @property
    def sw3(self) -> int:
        return self.body[2] if len(self.body) > 2 else -1

    @property
    def data(self) -> bytes:
        return self.body[3:]

    @property
    def status(self) -> str:
        return status_name(self.sw3)

    def raw(self) -> bytes:
        return _frame(self.body)


class FrameParser:
    """Finds frames in a byte stream, resynchronising past noise and broken frames.

    `feed()` returns the complete, checked frames so far; a frame still arriving
    stays buffered. `flush()` is for when no more bytes are coming (a timeout):
    it gives up on a partial frame and looks for complete ones after it.
    `rejected` counts candidate frames whose checksum or length was wrong.
    """

    def __init__(self):
        self._buffer = bytearray()
        self.rejected = 0
        self.last_rejection = ""

    def reset(self) -> None:
        self._buffer.clear()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        return self._scan(final=False)

    def flush(self) -> list[Frame]:
        frames = self._scan(final=True)
        self._buffer.clear()
        return frames

    def _scan(self, final: bool) -> list[Frame]:
        frames: list[Frame] = []
        buf = self._buffer
        while True:
            start = buf.find(PREAMBLE)
            if start < 0:
                keep = _partial_preamble_tail(buf)
                del buf[:len(buf) - keep]
                return frames
            del buf[:start]
            if len(buf) < 7:
                if final:
                    del buf[:1]
                    continue
                return frames
            length = int.from_bytes(buf[5:7], "big")
            if not MIN_LENGTH <= length <= MAX_LENGTH:
                self._reject(f"length {length} out of range")
                del buf[:1]
                continue
            end = 7 + length
            if len(buf) < end:
                if final:
                    del buf[:1]
                    continue
                return frames
            if xor(buf[5:end - 1]) != buf[end - 1]:
                self._reject(f"checksum {buf[end - 1]:02X}, expected {xor(buf[5:end - 1]):02X}")
                del buf[:1]
                continue
            frames.append(Frame(bytes(buf[7:end - 1])))
            del buf[:end]

    def _reject(self, why: str) -> None:
        self.rejected += 1
        self.last_rejection = why


def _partial_preamble_tail(buf: bytearray) -> int:
    """How many trailing bytes could be the start of a preamble still arriving."""
    for keep in range(min(len(PREAMBLE) - 1, len(buf)), 0, -1):
        if buf[-keep:] == PREAMBLE[:keep]:
            return keep
    return 0


# --- read replies -------------------------------------------------------------

@dataclass
class CardData:
    """The blocks of a read reply."""
    text: bytes
    photo: bytes = b""
    fingerprint: bytes = b""


def build_read_data(text: bytes, photo: bytes = b"", fingerprint: bytes | None = None) -> bytes:
    """Data of a `30 01` reply (fingerprint None) or a `30 10` reply."""
    lengths = len(text).to_bytes(2, "big") + len(photo).to_bytes(2, "big")
    if fingerprint is not None:
        lengths += len(fingerprint).to_bytes(2, "big")
    return lengths + text + photo + (fingerprint or b"")


def parse_read_data(data: bytes, with_fingerprint: bool = False) -> CardData:
    """Split a read reply's data into its blocks; ValueError if the lengths don't add up."""
    header = 6 if with_fingerprint else 4
    if len(data) < header:
        raise ValueError(f"read reply has {len(data)} data bytes, less than its {header}-byte header")
    text_len = int.from_bytes(data[0:2], "big")
    photo_len = int.from_bytes(data[2:4], "big")
    fp_len = int.from_bytes(data[4:6], "big") if with_fingerprint else 0
    if header + text_len + photo_len + fp_len != len(data):
        raise ValueError(f"read reply declares text {text_len} + photo {photo_len} + fingerprint "
                         f"{fp_len} bytes but carries {len(data) - header}")
    if text_len != TEXT_LEN:
        raise ValueError(f"text block is {text_len} bytes; expected {TEXT_LEN}")
    text = data[header:header + text_len]
    photo = data[header + text_len:header + text_len + photo_len]
    return CardData(text, photo, data[header + text_len + photo_len:])


# --- code tables --------------------------------------------------------------

GENDERS = {"0": ("unknown", "未知的性别"), "1": ("male", "男"), "2": ("female", "女"),
           "9": ("unstated", "未说明的性别")}
"""GB/T 2261.1: code -> (English word, Chinese word)."""

NATIONS = {
    "01": ("汉", "Han"), "02": ("蒙古", "Mongol"), "03": ("回", "Hui"), "04": ("藏", "Zang"),
    "05": ("维吾尔", "Uygur"), "06": ("苗", "Miao"), "07": ("彝", "Yi"), "08": ("壮", "Zhuang"),
    "09": ("布依", "Buyei"), "10": ("朝鲜", "Chosen"), "11": ("满", "Man"), "12": ("侗", "Dong"),
    "13": ("瑶", "Yao"), "14": ("白", "Bai"), "15": ("土家", "Tujia"), "16": ("哈尼", "Hani"),
    "17": ("哈萨克", "Kazak"), "18": ("傣", "Dai"), "19": ("黎", "Li"), "20": ("傈僳", "Lisu"),
    "21": ("佤", "Va"), "22": ("畲", "She"), "23": ("高山", "Gaoshan"), "24": ("拉祜", "Lahu"),
    "25": ("水", "Sui"), "26": ("东乡", "Dongxiang"), "27": ("纳西", "Naxi"),
    "28": ("景颇", "Jingpo"), "29": ("柯尔克孜", "Kirgiz"), "30": ("土", "Tu"),
    "31": ("达斡尔", "Daur"), "32": ("仫佬", "Mulao"), "33": ("羌", "Qiang"),
    "34": ("布朗", "Blang"), "35": ("撒拉", "Salar"), "36": ("毛南", "Maonan"),
    "37": ("仡佬", "Gelao"), "38": ("锡伯", "Xibe"), "39": ("阿昌", "Achang"),
    "40": ("普米", "Pumi"), "41": ("塔吉克", "Tajik"), "42": ("怒", "Nu"),
    "43": ("乌孜别克", "Uzbek"), "44": ("俄罗斯", "Russ"), "45": ("鄂温克", "Ewenki"),
    "46": ("德昂", "Deang"), "47": ("保安", "Bonan"), "48": ("裕固", "Yugur"),
    "49": ("京", "Gin"), "50": ("塔塔尔", "Tatar"), "51": ("独龙", "Derung"),
    "52": ("鄂伦春", "Oroqen"), "53": ("赫哲", "Hezhen"), "54": ("门巴", "Monba"),
    "55": ("珞巴", "Lhoba"), "56": ("基诺", "Jino"),
    "97": ("其他", "other"), "98": ("外国血统中国籍人士", "foreign origin"),
}
"""GB/T 3304: code -> (name as printed on the card, romanised name)."""

CARD_KINDS = {" ": "resident", "\0": "resident", "": "resident", "J": "hkmotw",
              "I": "foreigner_permanent", "Y": "foreigner_2023"}
KIND_LETTERS = {"resident": " ", "hkmotw": "J", "foreigner_permanent": "I", "foreigner_2023": "Y"}
LONG_TERM = "long-term"

# Layouts: field -> (byte offset, byte length) in the 256-byte UCS-2LE block.
LAYOUTS = {
    "resident": {"name": (0, 30), "gender_code": (30, 2), "nation_code": (32, 4),
                 "birth": (36, 16), "address": (52, 70), "id_number": (122, 36),
                 "authority": (158, 30), "valid_from": (188, 16), "valid_to": (204, 16)},
    "hkmotw": {"name": (0, 30), "gender_code": (30, 2), "birth": (36, 16), "address": (52, 70),
               "id_number": (122, 36), "authority": (158, 30), "valid_from": (188, 16),
               "valid_to": (204, 16), "pass_number": (220, 18), "issue_count": (238, 4)},
    "foreigner_permanent": {"english_name": (0, 120), "gender_code": (120, 2),
                            "id_number": (122, 30), "nationality": (152, 6),
                            "chinese_name": (158, 30), "valid_from": (188, 16),
                            "valid_to": (204, 16), "birth": (220, 16), "card_version": (236, 4),
                            "authority_code": (240, 8)},
    "foreigner_2023": {"chinese_name": (0, 30), "gender_code": (30, 2), "change_count": (32, 4),
                       "birth": (36, 16), "english_name": (52, 70), "english_name_more": (220, 22),
                       "id_number": (122, 36), "valid_from": (188, 16), "valid_to": (204, 16),
                       "nationality": (242, 6)},
}
KIND_OFFSET = 248

CARD_FIELDS = ("reader", "lane", "card_kind", "id_number", "name", "gender_code", "gender",
               "nation_code", "nation", "nation_en", "birth_date", "address", "authority",
               "valid_from", "valid_to", "expired", "not_yet_valid", "id_valid", "english_name",
               "chinese_name", "nationality", "pass_number", "issue_count", "card_version",
               "authority_code", "change_count", "new_address", "photo", "fingerprint")
"""Every field a card read can carry; privacy.keep_card_fields picks from these."""
ALWAYS_KEPT = ("reader", "lane", "card_kind", "id_number", "expired", "not_yet_valid", "id_valid")
"""Kept whatever privacy.keep_card_fields says: the record's identity and the checks on it."""


def _text(block: bytes, offset: int, length: int) -> str:
    return block[offset:offset + length].decode("utf-16-le", errors="replace").strip(" \0\u3000")


def _put(block: bytearray, offset: int, length: int, value: str, what: str) -> None:
    raw = value.encode("utf-16-le")
    if len(raw) > length:
        raise ValueError(f"{what} {value!r} needs {len(raw)} bytes; the field holds {length}")
    block[offset:offset + length] = raw + " ".encode("utf-16-le") * ((length - len(raw)) // 2)


def card_kind_of(block: bytes) -> str:
    letter = block[KIND_OFFSET:KIND_OFFSET + 2].decode("utf-16-le", errors="replace").strip()
    return CARD_KINDS.get(letter[:1], f"unknown:{letter!r}")


def _date(text: str) -> str | None:
    """YYYYMMDD -> YYYY-MM-DD, None if it isn't a real date."""
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date().isoformat()
    except ValueError:
        return None


def parse_text(block: bytes, today: dt.date | None = None) -> dict:
    """The named fields of a 256-byte text block, with validity and ID-number checks.

    Unreadable fields are kept as read and named in `problems` rather than raising:
    a card with one smudged field still identifies its holder. Problems never quote
    the values (they end up in logs).
    """
    if len(block) != TEXT_LEN:
        raise ValueError(f"text block is {len(block)} bytes; expected {TEXT_LEN}")
    kind = card_kind_of(block)
    if kind not in LAYOUTS:
        raise ValueError(f"unknown card type {kind.split(':', 1)[1]} at offset {KIND_OFFSET}")
    raw = {name: _text(block, off, length) for name, (off, length) in LAYOUTS[kind].items()}
    problems: list[str] = []
    out: dict = {"card_kind": kind}
    if kind == "foreigner_2023":
        raw["english_name"] = (raw["english_name"] + raw.pop("english_name_more")).strip()
    if kind in ("foreigner_permanent", "foreigner_2023"):
        out["name"] = raw.get("chinese_name") or raw.get("english_name", "")
    for key in ("name", "english_name", "chinese_name", "address", "authority", "nationality",
                "pass_number", "issue_count", "card_version", "authority_code", "change_count"):
        if key in raw:
            out[key] = raw[key]
    out["id_number"] = raw["id_number"].upper()
    code = raw.get("gender_code", "")
    out["gender_code"] = code
    out["gender"] = GENDERS.get(code, (None,))[0]
    if out["gender"] is None:
        problems.append("gender code is not in GB/T 2261.1")
    if "nation_code" in raw:
        code = raw["nation_code"]
        out["nation_code"] = code
        out["nation"], out["nation_en"] = NATIONS.get(code, (None, None))
        if out["nation"] is None:
            problems.append("nation code is not in GB/T 3304")
    out["birth_date"] = _date(raw["birth"])
    if out["birth_date"] is None:
        problems.append("birth date is not YYYYMMDD")
    out["valid_from"] = _date(raw["valid_from"])
    if out["valid_from"] is None:
        problems.append("valid-from date is not YYYYMMDD")
    out["valid_to"] = LONG_TERM if raw["valid_to"] == "长期" else _date(raw["valid_to"])
    if out["valid_to"] is None:
        problems.append("valid-to date is neither YYYYMMDD nor 长期")
    out.update(validity(out["valid_from"], out["valid_to"], today))
    out["id_valid"] = check_card_number(kind, out["id_number"])
    if not out["id_valid"]:
        problems.append(f"{'ID' if kind != 'foreigner_permanent' else 'PR'} number fails its check")
    out["problems"] = problems
    return out


def validity(valid_from: str | None, valid_to: str | None, today: dt.date | None = None) -> dict:
    """expired: past its last valid day (a long-term card never is); an unreadable
    date counts as expired, so an unreadable card is never waved through as valid."""
    today = today or dt.date.today()
    if valid_to == LONG_TERM:
        expired = False
    else:
        expired = valid_to is None or dt.date.fromisoformat(valid_to) < today
    not_yet = valid_from is not None and dt.date.fromisoformat(valid_from) > today
    return {"expired": expired, "not_yet_valid": not_yet}


def check_card_number(kind: str, number: str) -> bool:
    """Resident, J and Y numbers carry the ISO 7064 MOD 11-2 check character; J numbers
    start 81/82/83 (Hong Kong, Macau, Taiwan) and Y numbers 9. The 15-character PR number
    of the older foreigner card has no published check digit: only its shape (3-letter
    nationality code, 12 digits) is checked."""
    if kind == "foreigner_permanent":
        return len(number) == 15 and number[:3].isalpha() and number[:3].isupper() \
            and number[3:].isdigit()
    if not is_valid_id_number(number):
        return False
    if kind == "hkmotw":
        return number[:2] in ("81", "82", "83")
    if kind == "foreigner_2023":
        return number.startswith("9")
    return True


def build_text(kind: str, fields: dict) -> bytes:
    """A 256-byte text block for `kind` from named raw fields (dates as YYYYMMDD, valid_to
    may be 长期): the inverse of parse_text, used by the simulator and tests."""
    if kind not in LAYOUTS:
        raise ValueError(f"unknown card kind {kind!r}; known: {', '.join(LAYOUTS)}")
    block = bytearray(" ".encode("utf-16-le") * (TEXT_LEN // 2))
    fields = dict(fields)
    if kind == "foreigner_2023":
        name = fields.get("english_name", "")
        fields["english_name"], fields["english_name_more"] = name[:35], name[35:]
    for name, (off, length) in LAYOUTS[kind].items():
        if name in fields and fields[name] is not None:
            _put(block, off, length, str(fields[name]), name)
    _put(block, KIND_OFFSET, 2, KIND_LETTERS[kind], "card type")
    return bytes(block)


def make_id_number(prefix6: str, birth: str, sequence: str) -> str:
    """An 18-character number with a correct check character (birth YYYYMMDD, 3-digit sequence)."""
    first17 = f"{prefix6}{birth}{sequence}"
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError(f"need 6 + 8 + 3 digits, got {prefix6!r} {birth!r} {sequence!r}")
    return first17 + id_check_char(first17)


@dataclass
class StatusError(Exception):
    """The reader answered with a status other than the one expected."""
    sw3: int
    step: str = ""
    detail: str = field(default="")

    def __str__(self) -> str:
        return f"{self.step}: {status_name(self.sw3)} ({status_meaning(self.sw3)}, SW3 {self.sw3:02X})"

    @property
    def condition(self) -> str:
        return status_name(self.sw3)
