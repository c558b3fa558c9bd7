"""Reads that fit no plate grammar are refitted to the likeliest path that does (models.recognizer)."""
import itertools

import numpy as np
import pytest

from agent.platecodes import is_valid
from models.recognizer import GRAMMAR_MIN_CHAR, ctc_best_path_as, ctc_decode, fit_to_grammar
from scripted_network import Scripted, plate_logits


def collapse(path, alphabet):
    out, prev = [], 0
    for k in path:
        if k and k != prev:
            out.append(alphabet[k - 1])
        prev = k
    return "".join(out)


def log_softmax(logits):
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def brute_force(logp, layouts, alphabet):
    best = None
    for path in itertools.product(range(logp.shape[1]), repeat=logp.shape[0]):
        text = collapse(path, alphabet)
        if any(len(text) == len(layout) and all(ch in allowed for ch, allowed in zip(text, layout))
               for layout in layouts):
            score = logp[np.arange(len(path)), path].sum()
            if best is None or score > best[1]:
                best = (text, score)
    return best


@pytest.mark.parametrize("layouts", [
    (("AB", "B"),), (("A", "A"),), (("AB", "AB", "A"),), (("B",),), (("A", "B", "A", "B"),),
    (("A", "A"), ("B", "AB", "B")), (("B",), ("AB", "A"), ("A", "B", "A"))])
def test_best_fitting_path_is_the_best_of_every_path(layouts):
    rng = np.random.default_rng(sum(len(layout) for layout in layouts) * len(layouts))
    for _ in range(40):
        logp = log_softmax(rng.normal(0, 2, (6, 3)))
        found, expected = ctc_best_path_as(logp, layouts, "AB"), brute_force(logp, layouts, "AB")
        if expected is None:
            assert found is None
        else:
            assert found[0] == expected[0] and found[1] == pytest.approx(expected[1])
            assert len(found[2]) == len(found[0])


def test_too_few_time_steps_fit_nothing():
    assert ctc_best_path_as(np.zeros((3, 3)), (("A", "A"),), "AB") is not None   # A, blank, A
    assert ctc_best_path_as(np.zeros((2, 3)), (("A", "A"),), "AB") is None


def test_a_read_that_fits_is_what_greedy_reads():
    logits = plate_logits("-皖-A-N-8-8-5-L-")
    assert ctc_decode(logits)[0] == "皖AN885L"
    assert fit_to_grammar(logits)[0] == "皖AN885L"


def test_a_doubtful_extra_character_is_dropped():
    # greedy reads 皖AN885L1 (fits nothing); the 1 is barely surer than a blank there
    logits = plate_logits("-皖-A-N-8-8-5-L-1", extra={15: ("-", 7.5)})
    assert ctc_decode(logits)[0] == "皖AN885L1"
    text, confidence, char_confidences = fit_to_grammar(logits)
    assert text == "皖AN885L" and is_valid(text)
    assert len(char_confidences) == 8 - 1 and 0 < confidence <= 1


def test_a_sign_is_not_made_a_plate():
    logits = plate_logits("-1-2-3-4-5-6-7-")   # digits only: every fitting path is far less likely
    assert fit_to_grammar(logits) is None
    assert fit_to_grammar(plate_logits("-皖-A-N-8-8-5-L-1", extra={15: ("-", 7.5)}), max_gap=0.1) is None


def test_a_fit_through_an_unsure_character_is_refused():
    unsure_l = plate_logits("-皖-A-N-8-8-5-L-1", extra={15: ("-", 7.5), 13: ("K", 7.6)})   # L 0.6, K 0.4
    assert fit_to_grammar(unsure_l) is None
    assert fit_to_grammar(unsure_l, min_char=0.5)[0] == "皖AN885L"
    assert GRAMMAR_MIN_CHAR > 0.6


def test_read_refits_a_near_plate_and_keeps_the_rest():
    crop = np.full((40, 140, 3), (170, 70, 10), np.uint8)   # a blue single-row crop
    near = Scripted(plate_logits("-皖-A-N-8-8-5-L-1", extra={15: ("-", 7.5)})).read(crop)
    assert near.text == "皖AN885L" and near.rows == 1
    sign = Scripted(plate_logits("-7-1-3-4-1-6-7-")).read(crop)
    assert sign.text == "7134167"
    short = Scripted(plate_logits("-皖-A-8-")).read(crop)   # too short to be a plate misread
    assert short.text == "皖A8"
