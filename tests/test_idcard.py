"""The ID card protocol and text blocks, without hardware (agent/idcard.py)."""
import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import idcard
from agent.identity import id_check_char, is_valid_id_number, upgrade_id15

SPEC_REQUESTS = [  # command, parameter, checksum byte from the spec's table
    (0x10, 0xFF, 0xEC), (0x11, 0xFF, 0xED), (0x12, 0xFF, 0xEE), (0x20, 0x01, 0x22),
    (0x20, 0x02, 0x21), (0x30, 0x01, 0x32), (0x30, 0x03, 0x30), (0x30, 0x10, 0x23),
]
SPEC_STATUSES = [0x90, 0x9F, 0x10, 0x11, 0x21, 0x24, 0x31, 0x32, 0x33, 0x40, 0x41, 0x47,
                 0x60, 0x66, 0x80, 0x81]


@pytest.mark.parametrize("cmd, param, checksum", SPEC_REQUESTS)
def test_requests_match_the_spec_table(cmd, param, checksum):
    assert idcard.build_request(cmd, param) == bytes([0xAA, 0xAA, 0xAA, 0x96, 0x69, 0x00, 0x03,
                                                      cmd, param, checksum])


def test_read_reply_is_1295_bytes_with_length_0508():
    data = idcard.build_read_data(bytes(256), bytes(1024))
    frame = idcard.build_response(0x90, data)
    assert len(frame) == 1295 and frame[5:7] == b"\x05\x08"
    parsed = idcard.FrameParser().feed(frame)[0]
    assert parsed.sw3 == 0x90 and parsed.status == "ok"
    blocks = idcard.parse_read_data(parsed.data)
    assert len(blocks.text) == 256 and len(blocks.photo) == 1024 and blocks.fingerprint == b""


def test_read_reply_with_fingerprint_has_three_lengths():
    data = idcard.build_read_data(bytes(256), b"P" * 1024, b"F" * 1024)
    blocks = idcard.parse_read_data(data, with_fingerprint=True)
    assert blocks.photo == b"P" * 1024 and blocks.fingerprint == b"F" * 1024


def test_read_reply_with_inconsistent_lengths_is_refused():
    data = idcard.build_read_data(bytes(256), bytes(1024))[:-10]
    with pytest.raises(ValueError, match="declares"):
        idcard.parse_read_data(data)


@pytest.mark.parametrize("sw3", SPEC_STATUSES)
def test_every_spec_status_has_a_named_condition(sw3):
    name = idcard.status_name(sw3)
    assert name and not name.startswith("unknown_status")
    assert idcard.SW3_BY_NAME[name] == sw3
    assert idcard.status_meaning(sw3)


def test_status_names_are_distinct_and_unknown_codes_keep_their_value():
    assert len({idcard.status_name(c) for c in SPEC_STATUSES}) == len(SPEC_STATUSES)
    assert set(idcard.STATUS) == set(SPEC_STATUSES)
    assert idcard.status_name(0x55) == "unknown_status_55"
    assert str(idcard.StatusError(0x41, "read card")).startswith("read card: read_failed")


# --- the frame parser ------------------------------------------------------------

def test_parser_takes_a_frame_one_byte_at_a_time():
    frame = idcard.build_response(0x9F, b"\0\0\0\0")
    parser = idcard.FrameParser()
    found = []
    for byte in frame:
        found += parser.feed(bytes([byte]))
    assert [f.sw3 for f in found] == [0x9F]
    assert parser.pending == 0


def test_parser_skips_a_bad_checksum_and_finds_the_next_frame():
    bad = bytearray(idcard.build_response(0x90, b"abc"))
    bad[-1] ^= 0x01
    good = idcard.build_response(0x80)
    parser = idcard.FrameParser()
    frames = parser.feed(bytes(bad) + good)
    assert [f.sw3 for f in frames] == [0x80]
    assert parser.rejected >= 1 and "checksum" in parser.last_rejection


def test_parser_skips_an_absurd_length():
    noise = idcard.PREAMBLE + b"\xff\xff" + b"junk"
    frames = idcard.FrameParser().feed(noise + idcard.build_response(0x90))
    assert [f.sw3 for f in frames] == [0x90]


def test_truncated_frame_then_a_whole_one_is_found_on_flush():
    whole = idcard.build_response(0x90, idcard.build_read_data(bytes(256), bytes(1024)))
    parser = idcard.FrameParser()
    assert parser.feed(whole[:600] + idcard.build_response(0x80)) == []  # still waiting
    assert [f.sw3 for f in parser.flush()] == [0x80]


frames_st = st.tuples(st.integers(0, 255), st.binary(max_size=300)).map(
    lambda t: idcard.build_response(t[0], t[1]))
plain_noise_st = st.binary(max_size=200).filter(lambda b: idcard.PREAMBLE not in b)
broken_frame_st = frames_st.map(lambda f: f[:-1] + bytes([f[-1] ^ 0x5A]))
noise_st = st.lists(st.one_of(plain_noise_st, broken_frame_st), max_size=3).map(b"".join)


@given(st.binary(max_size=3000), st.lists(st.integers(1, 64), max_size=20))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_never_raise_and_only_checked_frames_come_out(data, cuts):
    parser = idcard.FrameParser()
    frames, pos = [], 0
    for cut in cuts:
        frames += parser.feed(data[pos:pos + cut])
        pos += cut
    frames += parser.feed(data[pos:]) + parser.flush()
    for frame in frames:
        raw = frame.raw()
        assert raw in data and idcard.xor(raw[5:-1]) == raw[-1]


@given(st.lists(st.tuples(noise_st, frames_st), min_size=1, max_size=5), noise_st,
       st.integers(1, 97))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_valid_frame_embedded_in_noise_is_found(pieces, tail, chunk):
    stream = b"".join(noise + frame for noise, frame in pieces) + tail
    parser = idcard.FrameParser()
    found = []
    for i in range(0, len(stream), chunk):
        found += parser.feed(stream[i:i + chunk])
    found += parser.flush()
    raws = [f.raw() for f in found]
    expected = [frame for _, frame in pieces]
    it = iter(raws)
    assert all(any(r == e for r in it) for e in expected), "a frame was lost or reordered"


# --- text blocks ----------------------------------------------------------------------

def _ucs2(block: bytearray, offset: int, text: str) -> None:
    raw = text.encode("utf-16-le")
    block[offset:offset + len(raw)] = raw


def hand_made_resident_block() -> bytes:
    """A resident card's text block laid out by hand from the spec's offsets."""
    block = bytearray(" ".encode("utf-16-le") * 128)
    _ucs2(block, 0, "张三丰")
    _ucs2(block, 30, "1")
    _ucs2(block, 32, "10")
    _ucs2(block, 36, "19910101")
    _ucs2(block, 52, "吉林省延吉市")
    _ucs2(block, 122, "222401199101010071")
    _ucs2(block, 158, "延吉市公安局")
    _ucs2(block, 188, "20110506")
    _ucs2(block, 204, "长期")
    return bytes(block)


def test_resident_block_by_the_spec_offsets():
    card = idcard.parse_text(hand_made_resident_block(), today=dt.date(2026, 1, 1))
    assert card["card_kind"] == "resident"
    assert card["name"] == "张三丰" and card["gender"] == "male" and card["gender_code"] == "1"
    assert card["nation_code"] == "10" and card["nation"] == "朝鲜" and card["nation_en"] == "Chosen"
    assert card["birth_date"] == "1991-01-01" and card["address"] == "吉林省延吉市"
    assert card["authority"] == "延吉市公安局"
    assert card["valid_from"] == "2011-05-06" and card["valid_to"] == "long-term"
    assert card["expired"] is False and card["id_valid"] is is_valid_id_number("222401199101010071")


CARDS = {
    "resident": {"name": "李娜", "gender_code": "2", "nation_code": "03", "birth": "19930901",
                 "address": "宁夏银川市兴庆区",
                 "id_number": idcard.make_id_number("640104", "19930901", "008"),
                 "authority": "银川市公安局", "valid_from": "20130901", "valid_to": "20330901"},
    "hkmotw": {"name": "陈大文", "gender_code": "1", "birth": "19850615", "address": "广东省深圳市",
               "id_number": idcard.make_id_number("810000", "19850615", "003"),
               "authority": "深圳市公安局", "valid_from": "20190101", "valid_to": "20290101",
               "pass_number": "H60123456", "issue_count": "02"},
    "foreigner_permanent": {"english_name": "SMITH, JOHN", "chinese_name": "史密斯", "gender_code": "1",
                            "id_number": "USA150703040101", "nationality": "USA",
                            "valid_from": "20170501", "valid_to": "20270501", "birth": "19700304",
                            "card_version": "05", "authority_code": "1500"},
    "foreigner_2023": {"chinese_name": "安娜", "gender_code": "2", "change_count": "01",
                       "birth": "19881130",
                       "english_name": "MUELLER-LUEDENSCHEIDT, ANNA MARIA THERESIA",
                       "id_number": idcard.make_id_number("911276", "19881130", "002"),
                       "valid_from": "20231201", "valid_to": "20331201", "nationality": "DEU"},
}


@pytest.mark.parametrize("kind", CARDS)
def test_every_card_kind_round_trips_through_its_text_block(kind):
    fields = CARDS[kind]
    card = idcard.parse_text(idcard.build_text(kind, fields), today=dt.date(2026, 1, 1))
    assert card["card_kind"] == kind
    assert card["problems"] == [] and card["id_valid"] is True and card["expired"] is False
    for key in ("name", "english_name", "chinese_name", "address", "authority", "nationality",
                "pass_number", "issue_count", "card_version", "authority_code", "change_count",
                "nation_code"):
        if key in fields:
            assert card[key] == fields[key], key
    assert card["id_number"] == fields["id_number"]
    assert card["birth_date"] == dt.datetime.strptime(fields["birth"], "%Y%m%d").date().isoformat()
    assert card["gender"] == idcard.GENDERS[fields["gender_code"]][0]
    if kind in ("foreigner_permanent", "foreigner_2023"):
        assert card["name"] == fields["chinese_name"]


def test_y_card_english_name_continues_at_offset_220():
    block = idcard.build_text("foreigner_2023", CARDS["foreigner_2023"])
    assert block[248:250].decode("utf-16-le") == "Y"
    head = block[52:122].decode("utf-16-le")
    tail = block[220:242].decode("utf-16-le").strip()
    assert (head + tail).strip() == CARDS["foreigner_2023"]["english_name"]


def test_card_type_letters_at_offset_248():
    for kind, letter in (("hkmotw", "J"), ("foreigner_permanent", "I"), ("foreigner_2023", "Y")):
        assert idcard.build_text(kind, CARDS[kind])[248:250].decode("utf-16-le") == letter
    zeroed = bytearray(idcard.build_text("resident", CARDS["resident"]))
    zeroed[248:250] = b"\0\0"
    assert idcard.card_kind_of(bytes(zeroed)) == "resident"
    zeroed[248:250] = "Q".encode("utf-16-le")
    with pytest.raises(ValueError, match="unknown card type"):
        idcard.parse_text(bytes(zeroed))


def test_field_too_long_is_refused_when_building():
    with pytest.raises(ValueError, match="name"):
        idcard.build_text("resident", {"name": "长" * 16})


def test_smudged_fields_are_named_not_raised_and_not_quoted():
    fields = dict(CARDS["resident"], birth="1993X901", nation_code="77", gender_code="5")
    card = idcard.parse_text(idcard.build_text("resident", fields), today=dt.date(2026, 1, 1))
    assert card["birth_date"] is None and card["nation"] is None and card["gender"] is None
    assert len(card["problems"]) == 3
    assert not any("1993X901" in p or "77" in p for p in card["problems"])


# --- code tables --------------------------------------------------------------------

def test_nation_table_is_gb_t_3304_complete():
    codes = [f"{n:02d}" for n in range(1, 57)] + ["97", "98"]
    assert list(idcard.NATIONS) == codes
    assert len({v[0] for v in idcard.NATIONS.values()}) == 58
    assert len({v[1] for v in idcard.NATIONS.values()}) == 58
    assert idcard.NATIONS["01"] == ("汉", "Han") and idcard.NATIONS["56"] == ("基诺", "Jino")
    assert idcard.NATIONS["05"][0] == "维吾尔" and idcard.NATIONS["29"][0] == "柯尔克孜"


def test_gender_table_is_gb_t_2261_1():
    assert {k: v[0] for k, v in idcard.GENDERS.items()} == {
        "0": "unknown", "1": "male", "2": "female", "9": "unstated"}


# --- validity ----------------------------------------------------------------------

@pytest.mark.parametrize("valid_from, valid_to, today, expired, not_yet", [
    ("2016-01-01", "2026-01-01", "2026-01-01", False, False),   # the last valid day
    ("2016-01-01", "2026-01-01", "2026-01-02", True, False),
    ("2016-01-01", "long-term", "2090-01-01", False, False),
    ("2026-03-01", "2036-03-01", "2026-02-28", False, True),
    ("2016-01-01", None, "2026-01-01", True, False),             # unreadable: never valid
])
def test_validity(valid_from, valid_to, today, expired, not_yet):
    got = idcard.validity(valid_from, valid_to, dt.date.fromisoformat(today))
    assert got == {"expired": expired, "not_yet_valid": not_yet}


def test_expired_card_is_flagged():
    fields = dict(CARDS["resident"], valid_to="20200101")
    card = idcard.parse_text(idcard.build_text("resident", fields), today=dt.date(2026, 1, 1))
    assert card["expired"] is True and card["valid_to"] == "2020-01-01"


# --- ID numbers ---------------------------------------------------------------------

@pytest.mark.parametrize("first17, check", [
    ("36042619910101007", "1"),     # the spec's example
    ("11010519491231002", "X"),     # GB 11643-1999 examples
    ("44052418800101001", "4"),
    ("13050319670401001", "6"),
])
def test_id_check_char_vectors(first17, check):
    assert id_check_char(first17) == check
    assert is_valid_id_number(first17 + check)


@pytest.mark.parametrize("old, new", [
    ("110105491231002", "11010519491231002X"),   # the spec's example
    ("130503670401001", "130503196704010016"),
    ("440524800101001", "440524198001010013"),
])
def test_15_digit_upgrade(old, new):
    assert upgrade_id15(old) == new and is_valid_id_number(new)


@pytest.mark.parametrize("kind, number, ok", [
    ("resident", "360426199101010071", True),
    ("resident", "360426199101010072", False),
    ("hkmotw", idcard.make_id_number("820000", "19900101", "001"), True),
    ("hkmotw", "360426199101010071", False),        # valid check char, not an 81/82/83 number
    ("foreigner_2023", idcard.make_id_number("911276", "19881130", "002"), True),
    ("foreigner_2023", "360426199101010071", False),
    ("foreigner_permanent", "USA150703040101", True),
    ("foreigner_permanent", "US1150703040101", False),
])
def test_card_number_checks(kind, number, ok):
    assert idcard.check_card_number(kind, number) is ok


def test_frames_swallowed_by_a_truncated_frame_are_recovered_without_a_flush():
    truncated = idcard.build_response(0x90, idcard.build_read_data(bytes(256), bytes(1024)))[:40]
    frames = [idcard.build_response(0x80 + (i % 2), bytes([i])) for i in range(150)]
    parser = idcard.FrameParser()
    found = parser.feed(truncated + b"".join(frames))
    assert [f.raw() for f in found] == frames
    assert parser.rejected == 1
