"""The reader simulators on real ptys, spoken to with plain pyserial (drivers/reader_sim.py)."""
import os
import shutil
import subprocess
import time

import pytest
import serial

from agent import badges, idcard
from drivers.reader_sim import BadgeSimulator, Card, Fault, ReaderSimulator


@pytest.fixture
def sim(tmp_path):
    simulator = ReaderSimulator(link=tmp_path / "idreader").start()
    yield simulator
    simulator.stop()


@pytest.fixture
def port(sim):
    with serial.Serial(sim.port, 115200, timeout=0.05) as p:
        yield p


def ask(port, command, data=b"", wait=0.5) -> bytes:
    """Send one request; return the bytes that came back: up to a whole frame (and what
    trails it within 50 ms), or whatever came within `wait` seconds."""
    port.reset_input_buffer()
    port.write(idcard.build_request(*command, data))
    parser = idcard.FrameParser()
    got, deadline = b"", time.monotonic() + wait
    while time.monotonic() < deadline:
        chunk = port.read(4096)
        got += chunk
        if parser.feed(chunk):
            time.sleep(0.05)
            return got + port.read(4096)
    return got


def reply(port, command, data=b"") -> idcard.Frame:
    frames = idcard.FrameParser().feed(ask(port, command, data))
    assert len(frames) == 1, frames
    return frames[0]


def test_link_path_points_at_a_pty(sim):
    assert os.path.islink(sim.port) and os.readlink(sim.port).startswith("/dev/pts/")


def test_find_select_read_with_and_without_a_card(sim, port):
    assert reply(port, idcard.FIND_CARD).sw3 == 0x80
    assert reply(port, idcard.SELECT_CARD).sw3 == 0x81
    assert reply(port, idcard.READ_TEXT_PHOTO).sw3 == 0x41
    card = Card.resident(name="赵敏", new_address="北京市海淀区新址1号")
    sim.place(card)
    assert reply(port, idcard.FIND_CARD).sw3 == 0x9F
    assert reply(port, idcard.SELECT_CARD).sw3 == 0x90
    raw = ask(port, idcard.READ_TEXT_PHOTO)
    assert len(raw) == 1295
    frame = idcard.FrameParser().feed(raw)[0]
    blocks = idcard.parse_read_data(frame.data)
    assert blocks.text == card.text() and blocks.photo == card.photo
    address = reply(port, idcard.READ_NEW_ADDRESS).data.decode("utf-16-le").strip()
    assert address == "北京市海淀区新址1号"
    sim.remove()
    assert reply(port, idcard.FIND_CARD).sw3 == 0x80


def test_fingerprint_read_and_a_reader_without_it(sim, port):
    sim.place(Card.resident(fingerprint=b"\x01" * 1024))
    frame = reply(port, idcard.READ_TEXT_PHOTO_FINGERPRINT)
    assert idcard.parse_read_data(frame.data, with_fingerprint=True).fingerprint == b"\x01" * 1024
    sim.fingerprint = False
    assert reply(port, idcard.READ_TEXT_PHOTO_FINGERPRINT).status == "unknown_command"


def test_sam_commands_and_unknown_command(sim, port):
    assert reply(port, idcard.SAM_STATUS).sw3 == 0x90
    assert reply(port, idcard.RESET_SAM).sw3 == 0x90
    assert reply(port, idcard.READ_SAM_ID).data == sim.sam_id
    assert reply(port, (0x77, 0x01)).status == "unknown_command"


def test_request_with_a_bad_checksum_gets_status_10(sim, port):
    request = bytearray(idcard.build_request(*idcard.FIND_CARD))
    request[-1] ^= 0xFF
    port.write(bytes(request))
    time.sleep(0.2)
    frames = idcard.FrameParser().feed(port.read(100))
    assert [f.status for f in frames] == ["request_checksum_error"]


@pytest.mark.parametrize("fault", ["bad_checksum", "truncated", "noise", "silence", "garbage"])
def test_each_fault_breaks_exactly_the_next_reply(sim, port, fault):
    sim.inject(fault)
    raw = ask(port, idcard.FIND_CARD, wait=0.6)
    parser = idcard.FrameParser()
    broken = parser.feed(raw) + parser.flush()
    if fault == "noise":
        assert [f.sw3 for f in broken] == [0x80] and len(raw) > 11   # found inside the noise
    else:
        assert broken == []
        assert (raw == b"") == (fault == "silence")
    assert reply(port, idcard.FIND_CARD).sw3 == 0x80


def test_status_faults_by_name_code_and_target(sim, port):
    sim.place(Card.resident())
    sim.inject(Fault.status("read_failed", on="read"))
    sim.inject("status:60")
    assert reply(port, idcard.FIND_CARD).status == "sam_self_test_failed"
    assert reply(port, idcard.SELECT_CARD).sw3 == 0x90
    assert reply(port, idcard.READ_TEXT_PHOTO).status == "read_failed"
    assert reply(port, idcard.READ_TEXT_PHOTO).sw3 == 0x90
    with pytest.raises(ValueError, match="fault 'smoke'"):
        sim.inject("smoke")


def test_client_at_the_wrong_speed_gets_garbage_then_speed_switch(tmp_path):
    with ReaderSimulator(link=tmp_path / "r", baud=19200) as sim:
        with serial.Serial(sim.port, 115200, timeout=0.05) as port:
            raw = ask(port, idcard.SAM_STATUS, wait=0.3)
            assert raw and idcard.FrameParser().feed(raw) == []
            port.baudrate = 19200
            assert reply(port, idcard.SAM_STATUS).sw3 == 0x90
            assert reply(port, (idcard.SET_BAUD, 0)).sw3 == 0x90   # -> 115200
            assert sim.baud == 115200
            port.baudrate = 115200
            assert reply(port, idcard.SAM_STATUS).sw3 == 0x90


def test_unplug_removes_the_path_and_replug_brings_it_back(sim):
    port = serial.Serial(sim.port, 115200, timeout=0.05)
    assert reply(port, idcard.FIND_CARD).sw3 == 0x80
    sim.unplug()
    assert not os.path.exists(sim.port)
    with pytest.raises(serial.SerialException):
        port.write(idcard.build_request(*idcard.FIND_CARD))
        port.read(10)
    port.close()
    sim.replug()
    with serial.Serial(sim.port, 115200, timeout=0.05) as again:
        assert reply(again, idcard.FIND_CARD).sw3 == 0x80


def test_script_places_each_card_until_read_then_leaves_a_gap(tmp_path):
    first, second = Card.resident(name="甲"), Card.hkmotw(name="乙")
    with ReaderSimulator([first, Fault("bad_checksum"), second], link=tmp_path / "r",
                         dwell_polls=2, gap_polls=1) as sim:
        with serial.Serial(sim.port, 115200, timeout=0.05) as port:
            seen = []
            for _ in range(14):
                find = idcard.FrameParser().feed(ask(port, idcard.FIND_CARD, wait=0.5))
                status = find[0].sw3 if find else None
                if status == 0x9F:
                    read = idcard.FrameParser().feed(ask(port, idcard.READ_TEXT_PHOTO, wait=0.5))
                    seen.append(idcard.parse_text(idcard.parse_read_data(read[0].data).text)["name"]
                                if read else None)
                else:
                    seen.append(status)
            assert seen[:4] == ["甲", "甲", "甲", 0x80]          # read, then 2 dwell polls, gap
            assert None in seen                                  # the scripted bad checksum
            assert "乙" in seen and seen[-1] == 0x80 and sim.script_done


@pytest.mark.parametrize("kind", ["resident", "hkmotw", "foreigner_permanent", "foreigner_2023"])
def test_card_builders_make_cards_that_pass_their_checks(kind):
    card = getattr(Card, kind)()
    fields = idcard.parse_text(card.text())
    assert fields["card_kind"] == kind and fields["id_valid"] and fields["problems"] == []
    assert Card.from_dict({"kind": kind}).text() == card.text()
    with pytest.raises(ValueError, match="unexpected keyword"):
        Card.from_dict({"kind": kind, "colour": "blue"})


def test_rdm6300_simulator_repeats_while_the_tag_is_present(tmp_path):
    with BadgeSimulator("rdm6300", link=tmp_path / "b", repeat_s=0.05) as sim:
        with serial.Serial(sim.port, 9600, timeout=0.05) as port:
            sim.place(0x00BC614E)
            time.sleep(0.4)
            sim.remove()
            time.sleep(0.15)
            port.reset_input_buffer()
            sim.inject("bad_checksum")
            sim.place(7)
            time.sleep(0.2)
            sim.remove()
            data = port.read(4096)
    found = badges.Rdm6300Parser().feed(data)
    assert found and all(b.badge == "0000000007" for b in found)


def test_wiegand_simulator_sends_one_line_per_presentation(tmp_path):
    with BadgeSimulator("wiegand26", link=tmp_path / "w") as sim:
        with serial.Serial(sim.port, 9600, timeout=0.2) as port:
            sim.place((90, 324))
            line = port.readline()
    assert line == b"00101101000000001010001000\r\n"


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_simulator_on_any_serial_url_through_a_socat_pair(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    socat = subprocess.Popen(["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"])
    try:
        for _ in range(50):
            if a.exists() and b.exists():
                break
            time.sleep(0.05)
        with ReaderSimulator(url=str(a)) as sim:
            sim.place(Card.foreigner_2023())
            with serial.Serial(str(b), 115200, timeout=0.05) as port:
                assert reply(port, idcard.FIND_CARD).sw3 == 0x9F
                frame = reply(port, idcard.READ_TEXT_PHOTO)
                assert idcard.parse_text(idcard.parse_read_data(frame.data).text)["name"] == "安娜"
    finally:
        socat.terminate()
        socat.wait(timeout=5)
