"""Chinese plate grammar (GA 36) and the GA/T 1400 codes a platform expects.

`normalise` applies the usual position-based fixes (O/0, I/1 in the serial),
`classify` names the kind of plate a text is, and `gat1400_codes` gives the
PlateClass / PlateColor codes for a record.
"""
from __future__ import annotations

import re

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I, O
DIGITS = "0123456789"
SUFFIXES = "挂学警港澳使领"
# Every character a plate model must know.
ALPHABET = PROVINCES + DIGITS + "ABCDEFGHJKLMNOPQRSTUVWXYZ" + SUFFIXES

_SERIAL = LETTERS + DIGITS
_NEW_ENERGY_CLASS = "ABCDEFGHJK"
# The plate grammar of specs/plates.md, one string of allowed characters per position:
# ordinary plates (the last may be 挂学警港澳), small and large new-energy plates.
PLATE_LAYOUTS = (
    (PROVINCES, LETTERS + "O", *[_SERIAL] * 4, _SERIAL + "挂学警港澳"),
    (PROVINCES, LETTERS + "O", _NEW_ENERGY_CLASS, _SERIAL, *[DIGITS] * 4),
    (PROVINCES, LETTERS + "O", *[DIGITS] * 5, _NEW_ENERGY_CLASS),
)
NEW_ENERGY_LAYOUTS = PLATE_LAYOUTS[1:]
"""The layouts a green plate can have: small and large new-energy plates, 8 characters."""


def _layouts_re(layouts) -> re.Pattern:
    return re.compile("^(?:" + "|".join("".join(f"[{chars}]" for chars in layout) for layout in layouts) + ")$")


PLATE_RE = _layouts_re(PLATE_LAYOUTS)
NEW_ENERGY_RE = _layouts_re(NEW_ENERGY_LAYOUTS)
EMBASSY_RE = re.compile(r"^(?:\d{6}使|使\d{6}|[京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼]\d{5}领)$")

COLOR_CODES = {"black": 1, "white": 2, "grey": 3, "red": 4, "blue": 5, "yellow": 6, "orange": 7,
               "brown": 8, "green": 9, "purple": 10, "cyan": 11, "pink": 12, "transparent": 13,
               "other": 99}
CLASS_CODES = {"large": "01", "small": "02", "embassy": "03", "consulate": "04", "trailer": "15",
               "coach": "16", "police": "23", "hongkong": "26", "macau": "27", "armed_police": "31",
               "army": "32", "large_new_energy": "51", "small_new_energy": "52", "other": "99"}
NO_PLATE = "无车牌"

_TO_DIGIT = {"O": "0", "I": "1", "D": "0", "Q": "0", "Z": "2", "S": "5", "B": "8"}
_TO_LETTER = {"0": "O", "2": "Z", "5": "S", "8": "B"}


def normalise(text: str) -> str:
    """Remove separators and apply the position-based fixes that GA 36 allows.

    The serial never uses I or O, so those read there become 1 and 0. For
    8-character new-energy plates the last four are digits, and on a small one
    (it ends in a digit, not D/F) a 0 read third is the D it looks like. The
    second character is a letter (O is kept: 粤O exists), except on embassy and
    consulate plates (使 or 领), which are all digits but for the 使, the 领 and
    a consulate's province.
    """
    text = "".join(ch for ch in text.upper() if ch not in " ·.-•_")
    if len(text) < 2:
        return text
    if text.startswith("使") or text.endswith(("使", "领")):
        return "".join(ch if ch in "使领" or ch in PROVINCES else _TO_DIGIT.get(ch, ch) for ch in text)
    chars = list(text)
    if chars[1] in _TO_LETTER:
        chars[1] = _TO_LETTER[chars[1]]
    for i in range(2, len(chars)):
        if chars[i] == "O":
            chars[i] = "0"
        elif chars[i] == "I":
            chars[i] = "1"
    if len(chars) == 8 and chars[0] in PROVINCES:
        if chars[2] == "0" and chars[7].isdigit():
            chars[2] = "D"  # ends in a digit: a small new-energy plate, whose third is a letter
        tail = range(4, 8) if chars[2] in "DABCEFGHJK" else range(2, 7)
        for i in tail:
            chars[i] = _TO_DIGIT.get(chars[i], chars[i])
    return "".join(chars)


def is_valid(text: str, color: str | None = None) -> bool:
    """The text fits the GA 36 grammar, and the plate's colour where it is known: a green plate
    is a new-energy plate, 8 characters (a 7-character read of one dropped a character)."""
    if color == "green":
        return bool(NEW_ENERGY_RE.match(text))
    return bool(PLATE_RE.match(text) or EMBASSY_RE.match(text))


def layouts_for(color: str | None = None) -> tuple:
    """The PLATE_LAYOUTS a plate of this colour can have: a green one, a new-energy plate's."""
    return NEW_ENERGY_LAYOUTS if color == "green" else PLATE_LAYOUTS


def classify(text: str, color: str | None = None) -> str:
    """The plate kind (a key of CLASS_CODES) from its text and, where it helps, its colour."""
    if text.endswith("使"):
        return "embassy"
    if text.endswith("领"):
        return "consulate"
    if text.endswith("警"):
        return "police"
    if text.endswith("港"):
        return "hongkong"
    if text.endswith("澳"):
        return "macau"
    if text.endswith("挂"):
        return "trailer"
    if text.endswith("学"):
        return "coach"
    if len(text) == 8:
        return "large_new_energy" if text[-1] in "DFABCEGHJK" and text[2:7].isdigit() else "small_new_energy"
    if color == "yellow":
        return "large"
    if color in ("blue", None):
        return "small"
    return "other"


def default_color(kind: str) -> str:
    return {"large": "yellow", "trailer": "yellow", "coach": "yellow", "small": "blue",
            "small_new_energy": "green", "large_new_energy": "green", "police": "white",
            "hongkong": "black", "macau": "black", "embassy": "black", "consulate": "black"}.get(kind, "blue")


def gat1400_codes(text: str, color: str) -> dict:
    kind = classify(text, color)
    return {"plate_class": CLASS_CODES[kind], "plate_color": COLOR_CODES.get(color, 99), "kind": kind}


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: how many characters to insert, delete or change."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]
