"""Identities: the device's 20-digit GB/T 28181 code and resident ID numbers."""
from __future__ import annotations

DEVICE_TYPES = {
    "121": "video checkpoint (plate camera)",
    "123": "parking entrance/exit controller",
    "124": "personnel entrance/exit controller",
    "134": "alarm input (one-key alarm button)",
    "135": "alarm output",
    "140": "relay output",
    "141": "barrier gate",
    "143": "credential (card) reader",
}
NETWORKS = {"0": "police video network", "1": "police video network",
            "5": "police information network", "7": "internet"}


def check_device_id(code: str) -> str | None:
    """None if `code` is a usable gate device code, else what is wrong with it."""
    if len(code) != 20 or not code.isdigit():
        return "expected 20 digits (8 division, 2 industry, 3 type, 1 network, 6 serial)"
    if code[10:13] not in DEVICE_TYPES:
        allowed = ", ".join(f"{k} {v}" for k, v in DEVICE_TYPES.items())
        return f"type digits 11-13 are {code[10:13]!r}; a gate device is one of: {allowed}"
    if code[13] not in NETWORKS:
        return f"network digit 14 is {code[13]!r}; expected 0, 1 (video), 5 (information) or 7 (internet)"
    return None


def describe_device_id(code: str) -> dict:
    return {"division": code[:8], "industry": code[8:10], "type": code[10:13],
            "type_name": DEVICE_TYPES.get(code[10:13], "unknown"), "network": code[13],
            "serial": code[14:]}


_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits of an ID number."""
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS))
    return "10X98765432"[total % 11]


def is_valid_id_number(number: str) -> bool:
    number = number.upper()
    return (len(number) == 18 and number[:17].isdigit()
            and number[17] == id_check_char(number[:17]))


def upgrade_id15(number: str) -> str:
    """The 18-character form of a legacy 15-digit ID number."""
    if len(number) != 15 or not number.isdigit():
        raise ValueError(f"not a 15-digit ID number: {number!r}")
    first17 = number[:6] + "19" + number[6:]
    return first17 + id_check_char(first17)


def mask_id_number(number: str | None) -> str:
    """2101**********123X: the first four and last four characters only."""
    if not number:
        return ""
    if len(number) <= 8:
        return "*" * len(number)
    return number[:4] + "*" * (len(number) - 8) + number[-4:]


def mask_name(name: str | None) -> str:
    """张** / J*** S***: the first character of each word."""
    if not name:
        return ""
    words = name.split()
    if len(words) > 1:
        return " ".join(w[0] + "*" * (len(w) - 1) for w in words)
    return name[0] + "*" * (len(name) - 1)
