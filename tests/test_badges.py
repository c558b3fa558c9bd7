"""Badge formats without hardware (agent/badges.py)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import badges


def test_wiegand26_spec_vector():
    assert badges.wiegand_bits(90, 324) == "00101101000000001010001000"
    badge = badges.parse_wiegand("00101101000000001010001000")
    assert (badge.format, badge.facility, badge.card_number) == ("wiegand26", 90, 324)
    assert badge.badge == f"{90 * 65536 + 324:08d}"


@pytest.mark.parametrize("bits", [26, 34])
def test_any_single_bit_flip_is_caught_by_parity(bits):
    good = badges.wiegand_bits(200 if bits == 26 else 4660, 51234, bits)
    assert badges.parse_wiegand(good).card_number == 51234
    for i in range(bits):
        flipped = good[:i] + ("1" if good[i] == "0" else "0") + good[i + 1:]
        with pytest.raises(badges.BadgeError, match="parity"):
            badges.parse_wiegand(flipped)


def test_wiegand34_parity_halves():
    bits = badges.wiegand_bits(0xFFFF, 0x0001, 34)
    assert len(bits) == 34
    assert (bits[:17].count("1")) % 2 == 0      # even over the parity bit and the first 16
    assert (bits[17:].count("1")) % 2 == 1      # odd over the last 16 and the parity bit
    badge = badges.parse_wiegand(bits)
    assert (badge.facility, badge.card_number) == (0xFFFF, 1)


@pytest.mark.parametrize("line, fragment", [
    ("0010110100000000101000100", "25 bits"),
    ("00101101000000001010001002", "0 and 1"),
    ("", "0 and 1"),
])
def test_malformed_wiegand_lines(line, fragment):
    with pytest.raises(badges.BadgeError, match=fragment):
        badges.parse_wiegand(line)


def test_wiegand_reader_of_one_width_refuses_the_other():
    with pytest.raises(badges.BadgeError, match="expected 34"):
        badges.parse_wiegand(badges.wiegand_bits(1, 2, 26), expect=34)


def test_rdm6300_frame_and_checksum():
    frame = badges.rdm6300_frame(0x02030405, version=0x01)
    assert frame == b"\x02" + b"0102030405" + b"01" + b"\x03"   # 01^02^03^04^05 = 01
    badge = badges.Rdm6300Parser().feed(frame)[0]
    assert badge.badge == f"{0x02030405:010d}" and badge.raw == "0102030405"
    assert (badge.facility, badge.card_number) == (0x03, 0x0405)


def test_rdm6300_bad_checksum_is_rejected_and_stream_resyncs():
    good = badges.rdm6300_frame(12345678)
    bad = good[:11] + b"F" + good[12:] if good[11:12] != b"F" else good[:11] + b"E" + good[12:]
    parser = badges.Rdm6300Parser()
    found = parser.feed(b"\x7f\x02zz" + bad + good[:5])
    found += parser.feed(good[5:])
    assert [b.badge for b in found] == ["0012345678"]
    assert parser.rejected >= 1


def test_em4100_card_reads_the_same_on_rdm6300_and_wiegand34():
    tag = 0x00BC614E
    via_rdm = badges.Rdm6300Parser().feed(badges.rdm6300_frame(tag, version=0x1F))[0]
    via_w34 = badges.parse_wiegand(badges.wiegand_bits(tag >> 16, tag & 0xFFFF, 34))
    assert via_rdm.badge == via_w34.badge == "0012345678"


@given(st.binary(max_size=2000))
@settings(max_examples=200, deadline=None)
def test_rdm6300_parser_never_raises(data):
    for badge in badges.Rdm6300Parser().feed(data):
        assert badges.rdm6300_frame(int(badge.badge), int(badge.raw[:2], 16)) in data.upper()


@given(st.lists(st.integers(0, 2 ** 32 - 1), min_size=1, max_size=5),
       st.binary(max_size=40).filter(lambda b: 2 not in b))
@settings(max_examples=100, deadline=None)
def test_rdm6300_frames_in_noise_are_all_found(tags, noise):
    stream = b"".join(noise + badges.rdm6300_frame(t) for t in tags)
    assert [int(b.badge) for b in badges.Rdm6300Parser().feed(stream)] == tags


def test_line_parser_digits_with_any_line_end():
    parser = badges.parser_for("digits")
    found = parser.feed(b"0012345678\r\n00998877\n")
    found += parser.feed(b"123\r12345\r")
    assert [b.badge for b in found] == ["0012345678", "00998877", "12345"]
    assert parser.rejected == 1   # "123" is too short


def test_line_parser_drops_a_runaway_line():
    parser = badges.parser_for("wiegand26")
    assert parser.feed(b"1" * 200) == []
    assert parser.rejected == 1
    found = parser.feed(b"\r\n" + badges.wiegand_bits(90, 324).encode() + b"\r\n")
    assert [b.card_number for b in found] == [324]


@given(st.binary(max_size=500))
@settings(max_examples=100, deadline=None)
def test_line_parsers_never_raise(data):
    for kind in ("wiegand26", "wiegand34", "digits"):
        badges.parser_for(kind).feed(data)


def test_unknown_reader_kind():
    with pytest.raises(ValueError, match="no badge parser"):
        badges.parser_for("idcard")
