import pytest

from agent.identity import (check_device_id, id_check_char, is_valid_id_number, mask_id_number,
                            mask_name, upgrade_id15)


def test_id_check_char_spec_vector():
    assert id_check_char("36042619910101007") == "1"


@pytest.mark.parametrize("number, ok", [
    ("360426199101010071", True),
    ("360426199101010072", False),
    ("11010519491231002X", True),
    ("11010519491231002x", True),
    ("1101051949123100", False),
])
def test_id_number_validity(number, ok):
    assert is_valid_id_number(number) is ok


def test_upgrade_15_digit():
    assert upgrade_id15("110105491231002") == "11010519491231002X"
    with pytest.raises(ValueError):
        upgrade_id15("11010549123100")


def test_masking():
    assert mask_id_number("21010519491231123X") == "2101**********123X"
    assert mask_name("张三丰") == "张**"
    assert mask_name("JOHN SMITH") == "J*** S****"


@pytest.mark.parametrize("code, fragment", [
    ("21010200001210000001", None),
    ("21010200009990000001", "type digits"),
    ("2101020000121000000A", "20 digits"),
    ("21010200001219000001", "network digit"),
])
def test_device_id(code, fragment):
    problem = check_device_id(code)
    assert (problem is None) if fragment is None else (fragment in problem)
