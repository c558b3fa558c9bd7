"""Synthetic plates: every kind drawn in its colours with valid text, scenes with true boxes."""
import collections

import numpy as np
import pytest

from agent.platecodes import PROVINCES, classify, is_valid
from models import synth
from models.recognizer import plate_color


@pytest.mark.parametrize("kind", synth.KINDS)
def test_every_kind_has_valid_text_and_its_colour(kind):
    rng = np.random.default_rng(7)
    for _ in range(5):
        text, k = synth.random_plate(rng, kind)
        assert k == kind
        assert is_valid(text), text
        img, meta = synth.render_plate(text, kind, rng)
        assert meta["text"] == text and meta["kind"] == kind
        # agent.platecodes.classify does not know the 使 + 6 digits embassy form (reported)
        assert classify(text, meta["color"]) == kind or text.startswith("使")
        assert plate_color(img) == meta["color"], (text, kind)


def test_colours_follow_ga36():
    rng = np.random.default_rng(1)
    expected = {"small": "blue", "large": "yellow", "trailer": "yellow", "coach": "yellow",
                "small_new_energy": "green", "large_new_energy": "green", "police": "white",
                "hongkong": "black", "macau": "black", "embassy": "black", "consulate": "black"}
    for kind, colour in expected.items():
        _, meta = synth.render_plate(synth.random_plate(rng, kind)[0], kind, rng)
        assert meta["color"] == colour


def test_police_suffix_is_red():
    img, _ = synth.render_plate("京A1234警", "police", np.random.default_rng(0))
    right = img[25:115, 380:430].reshape(-1, 3).astype(int)
    red = (right[:, 2] > 150) & (right[:, 0] < 100) & (right[:, 1] < 100)
    assert red.mean() > 0.05


def test_provinces_are_drawn_evenly():
    rng = np.random.default_rng(3)
    counts = collections.Counter(synth.random_plate(rng, "small")[0][0] for _ in range(3100))
    assert set(counts) == set(PROVINCES)
    assert min(counts.values()) > 60 and max(counts.values()) < 150


def test_double_row_layout():
    img, meta = synth.render_plate("鲁B1234挂", "trailer", np.random.default_rng(0), rows=2)
    assert meta["rows"] == 2
    assert img.shape[:2] == (220, 440)
    with pytest.raises(ValueError, match="rows"):
        synth.render_plate("鲁B1234挂", "trailer", np.random.default_rng(0), rows=3)


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="unknown plate kind 'tank'"):
        synth.render_plate("京A12345", "tank", np.random.default_rng(0))


def test_degraded_plates_are_varied_and_reproducible():
    a, _ = synth.render_plate("苏E12345", "small", np.random.default_rng(5), degrade=True)
    b, _ = synth.render_plate("苏E12345", "small", np.random.default_rng(5), degrade=True)
    c, _ = synth.render_plate("苏E12345", "small", np.random.default_rng(6), degrade=True)
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_stroke_makes_bolder_characters_in_the_same_places():
    def ink(stroke):
        img, _ = synth.render_plate("冀A12345", "small", np.random.default_rng(1), stroke=stroke)
        return img.min(axis=2) > 200   # white characters on blue
    plain, bold = ink(0), ink(2)
    assert bold.sum() > 1.2 * plain.sum()   # the frame and the dot stay as they are
    assert (plain & ~bold).sum() == 0   # only added to, nowhere moved
    assert np.array_equal(plain, ink(0))


@pytest.mark.parametrize("night", [False, True])
def test_scene_boxes_hold_the_plates(night):
    rng = np.random.default_rng(11)
    plates = [("京A12345", "small"), ("粤Z1234港", "hongkong")]
    frame, found = synth.render_scene(plates, rng, size=(1280, 720), night=night)
    assert frame.shape == (720, 1280, 3)
    assert [p["text"] for p in found] == ["京A12345", "粤Z1234港"]
    for p in found:
        x1, y1, x2, y2 = p["box"]
        assert 0 <= x1 < x2 < 1280 and 0 <= y1 < y2 < 720
        corners = np.array(p["corners"])
        assert corners.shape == (4, 2)
        assert (corners[:, 0] >= x1 - 1).all() and (corners[:, 0] <= x2 + 1).all()
        inner = frame[y1 + (y2 - y1) // 4:y2 - (y2 - y1) // 4, x1 + (x2 - x1) // 8:x2 - (x2 - x1) // 8]
        assert plate_color(inner) == p["color"]


def test_night_scene_is_darker():
    day, _ = synth.render_scene([("京A12345", "small")], np.random.default_rng(2))
    night, _ = synth.render_scene([("京A12345", "small")], np.random.default_rng(2), night=True)
    assert night.mean() < day.mean() * 0.7
