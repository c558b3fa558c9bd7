"""Plate text normalisation: the position-based fixes GA 36 allows, and the grammar."""
import random
import re

import pytest

from agent.platecodes import ALPHABET, PLATE_LAYOUTS, PLATE_RE, PROVINCES, classify, is_valid, layouts_for, normalise

# The validation expression of specs/plates.md, as written there.
SPEC_EXPRESSION = re.compile(
    r"^[京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼][A-HJ-Z]"
    r"(?:[A-HJ-NP-Z0-9]{4}[A-HJ-NP-Z0-9挂学警港澳]|[A-HJK][A-HJ-NP-Z0-9]\d{4}|\d{5}[A-HJK])$")


@pytest.mark.parametrize("read,expected", [
    ("京A·12345", "京A12345"),          # separators go
    ("苏e 12345", "苏E12345"),          # upper case
    ("京0I2345", "京O12345"),           # second place is a letter (O exists: 粤O)
    ("沪B5C67O", "沪B5C670"),           # the serial never uses O or I
    ("浙AD1O78I", "浙AD10781"),          # small new-energy: the last four are digits
    ("皖AD19S8B", "皖AD19588"),
    ("粤B12345D", "粤B12345D"),          # large new-energy: five digits then D/F
    ("粤BS234QF", "粤B52340F"),
    ("使257973", "使257973"),            # embassy and consulate plates: digits but for 使/领
    ("使Z5797S", "使257975"),            # and a consulate's province
    ("2S7973使", "257973使"),
    ("湘52573领", "湘52573领"),
    ("湘S2O73领", "湘52073领"),
])
def test_position_fixes(read, expected):
    assert normalise(read) == expected


def test_a_zero_read_third_on_a_small_new_energy_plate_is_its_d():
    assert normalise("皖A01978") == "皖A01978"        # 7 characters: an ordinary plate, left alone
    assert normalise("皖A0197891") == "皖A0197891"    # 9: not a plate length at all
    fixed = normalise("皖A019789")
    assert fixed == "皖AD19789" and is_valid(fixed)
    assert classify(fixed, "green") == "small_new_energy"
    assert normalise("粤B01234F") == "粤B01234F"      # ends D/F: a large one, its third is a digit


def test_the_grammar_by_position_is_the_spec_expression():
    """PLATE_RE is built from PLATE_LAYOUTS (which the recogniser fits reads to): both must be
    exactly the expression the spec gives."""
    rng = random.Random(36)
    texts = ["".join(rng.choice(ALPHABET + "IO") for _ in range(rng.randint(6, 9))) for _ in range(20000)]
    texts += ["".join(rng.choice(chars + "IO0AD") for chars in rng.choice(PLATE_LAYOUTS)) for _ in range(20000)]
    assert sum(bool(PLATE_RE.match(t)) for t in texts) > 5000
    assert [t for t in texts if bool(PLATE_RE.match(t)) != bool(SPEC_EXPRESSION.match(t))] == []
    assert all(layout[0] == PROVINCES for layout in PLATE_LAYOUTS)


def test_a_green_plate_is_valid_only_with_a_new_energy_plates_8_characters():
    assert is_valid("皖K01833") and not is_valid("皖K01833", "green")
    assert is_valid("皖KD01833", "green") and is_valid("皖K01833", "blue")
    assert layouts_for("green") == PLATE_LAYOUTS[1:] and layouts_for("blue") == PLATE_LAYOUTS
