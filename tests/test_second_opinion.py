"""The second network is asked only when the first is unsure, and then both outputs decide together."""
import numpy as np

from agent.platecodes import ALPHABET
from models.recognizer import SECOND_OPINION_BELOW, ctc_decode
from scripted_network import Scripted, plate_logits

CROP = np.full((40, 140, 3), (170, 70, 10), np.uint8)   # a blue single-row crop
SURE = 12.0   # a step's probability 0.9996 against 73 other classes at 0


def unsure_3_or_8():
    """皖A12?45 with the fifth character 8 (p 0.10) rather than 3 (p 0.08)."""
    logits = plate_logits("-皖-A-1-2-8-4-5", SURE)
    logits[9, 1 + ALPHABET.index("8")], logits[9, 1 + ALPHABET.index("3")] = 2.2, 2.0
    return logits


def test_a_sure_plate_is_read_by_the_first_network_alone():
    second = Scripted(plate_logits("-皖-B-9-9-9-9-9", SURE))
    read = Scripted(plate_logits("-皖-A-1-2-3-4-5", SURE), second).read(CROP)
    assert read.text == "皖A12345" and not read.second_opinion
    assert second.runs == 0


def test_an_unsure_character_is_settled_by_both_networks():
    first = unsure_3_or_8()
    assert ctc_decode(first)[0] == "皖A12845" and min(ctc_decode(first)[2]) < SECOND_OPINION_BELOW
    second = Scripted(plate_logits("-皖-A-1-2-3-4-5", SURE))
    read = Scripted(first, second).read(CROP)
    assert read.text == "皖A12345" and read.second_opinion
    assert second.runs == 1
    assert len(read.char_confidences) == 7 and 0 < read.confidence < 1


def test_a_sure_read_that_is_no_plate_is_asked_too():
    second = Scripted(plate_logits("-皖-A-1-2-3-4-5", SURE, extra={13: ("5", 16.0)}))
    read = Scripted(plate_logits("-皖-A-1-2-3-4", SURE), second).read(CROP)
    assert second.runs == 1 and read.second_opinion
    assert read.text == "皖A12345"   # the step the second network is surer of carries


def test_without_a_second_network_an_unsure_read_stands():
    read = Scripted(unsure_3_or_8()).read(CROP)
    assert read.text == "皖A12845" and not read.second_opinion


def test_a_read_far_from_a_plate_length_is_not_asked_about():
    second = Scripted(plate_logits("-皖-A-1-2-3-4-5", SURE))
    sign = plate_logits("-7-1-3")   # three characters, each at 0.976
    assert not Scripted(sign, second).read(CROP).second_opinion
    assert second.runs == 0   # the detector's false candidates: 4 in 5 second opinions without this rule
