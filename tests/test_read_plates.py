"""read_plates: the recogniser as the last check of the detector's candidates."""
import cv2
import numpy as np
import pytest

from agent.plates.detect import Detection
from agent.plates.pipeline import is_partial_plate, read_plates, read_still
from agent.plates.recognise import Reading
from agent.plates.recognise import load_reader
from models import synth


class RankedDetector:
    """The detector's interface, returning fixed candidate crops in its score order."""

    max_plates = 3

    def __init__(self, crops):
        self.crops = crops
        self.asked_for = None

    def detect(self, image, roi=None, keep=None):
        self.asked_for = keep
        out = []
        for i, crop in enumerate(self.crops[:keep or self.max_plates]):
            x = 10 + 150 * i
            corners = np.float32([[x, 10], [x + 136, 10], [x + 136, 46], [x, 46]])
            out.append(Detection(box=(x, 10, x + 136, 46), corners=corners, score=0.9 - 0.1 * i, crop=crop))
        return out


def plate_crop(text, kind="small"):
    img, _ = synth.render_plate(text, kind, np.random.default_rng(5), rows=1, degrade=False)
    return img


def sign_crop(seed):
    """Something plate-shaped that is not a plate: a blotchy painted surface."""
    rng = np.random.default_rng(seed)
    blotches = cv2.resize(rng.integers(0, 255, (4, 12, 3), dtype=np.uint8), (136, 36), interpolation=cv2.INTER_CUBIC)
    return blotches


@pytest.fixture(scope="module")
def reader():
    return load_reader("opencv")


def test_a_plate_ranked_below_three_signs_is_still_read(reader):
    detector = RankedDetector([sign_crop(1), sign_crop(2), sign_crop(3), plate_crop("苏E12345")])
    results = read_plates(np.zeros((60, 700, 3), np.uint8), detector, reader)
    assert detector.asked_for > detector.max_plates
    assert [r.text for r in results][0] == "苏E12345"
    assert results[0].valid


def test_unsure_reads_that_fit_no_plate_are_dropped(reader):
    detector = RankedDetector([sign_crop(4), plate_crop("京A8U123"), sign_crop(5)])
    results = read_plates(np.zeros((60, 500, 3), np.uint8), detector, reader)
    assert [r.text for r in results] == ["京A8U123"]
    dropped = [reader.read(sign_crop(s)) for s in (4, 5)]
    assert not any(d.valid or is_partial_plate(d) for d in dropped)


def reading(text, confidence, valid=False):
    return Reading(text, text, confidence, (confidence,) * len(text), "blue", valid)


def test_a_partial_plate_is_five_characters_read_with_some_confidence():
    assert is_partial_plate(reading("A12345", 0.3))
    assert is_partial_plate(reading("皖A123", 0.2))
    assert not is_partial_plate(reading("皖A12", 0.99))      # two characters and a sign's worth
    assert not is_partial_plate(reading("皖A1234", 0.05))


class ScriptedReader:
    """Reads each candidate crop as scripted by its first pixel."""

    def __init__(self, readings):
        self.readings = readings

    def read(self, crop):
        return self.readings[int(crop[0, 0, 0])]


def test_partial_reads_are_kept_behind_whole_plates():
    crops = [np.full((36, 136, 3), i, np.uint8) for i in range(4)]
    script = [reading("皖95", 0.9), reading("A12345", 0.6), reading("沪B5C678", 0.9, valid=True), reading("", 0.0)]
    results = read_plates(np.zeros((60, 700, 3), np.uint8), RankedDetector(crops), ScriptedReader(script))
    assert [r.text for r in results] == ["沪B5C678", "A12345"]


def test_never_more_than_max_plates(reader):
    texts = ["苏E12345", "京A8U123", "沪B5C678", "浙A12345", "粤B9F888"]
    detector = RankedDetector([plate_crop(t) for t in texts])
    results = read_plates(np.zeros((60, 800, 3), np.uint8), detector, reader)
    assert [r.text for r in results] == texts[:3]


def test_without_a_reader_the_detector_decides_alone():
    detector = RankedDetector([sign_crop(1), sign_crop(2), sign_crop(3), plate_crop("苏E12345")])
    results = read_plates(np.zeros((60, 700, 3), np.uint8), detector)
    assert len(results) == 3 and all(r.text == "" for r in results)


def test_plates_get_one_colour_rule_with_or_without_a_reader(reader):
    crops = [plate_crop("苏E12345"), plate_crop("苏E1234学", "coach"), plate_crop("粤B12345D", "large_new_energy")]
    alone = read_plates(np.zeros((60, 800, 3), np.uint8), RankedDetector(crops))
    read = read_plates(np.zeros((60, 800, 3), np.uint8), RankedDetector(crops), reader)
    assert [r.color for r in alone] == [r.color for r in read] == ["blue", "yellow", "green"]


class NothingFound:
    """A detector that finds no plate (as on a crop cut at the plate's border)."""

    max_plates = 3

    def detect(self, image, roi=None, keep=None):
        return []


def test_a_still_plate_crop_the_detector_misses_is_read_whole(reader):
    crop = plate_crop("浙C3K071")
    results = read_still(crop, NothingFound(), reader)
    h, w = crop.shape[:2]
    assert [(r.text, r.valid, r.detection.box, r.detection.score) for r in results] == [("浙C3K071", True, (0, 0, w, h), 0.0)]
    assert results[0].color == "blue" and results[0].confidence > 0.5


def test_a_still_frame_shaped_image_is_never_read_whole(reader):
    """A 16:9 image with no plate found is a scene without a plate, whatever it would read as."""
    frame = cv2.resize(plate_crop("浙C3K071"), (320, 180))
    assert read_still(frame, NothingFound(), reader) == []


def test_a_whole_read_that_fits_no_plate_is_not_reported(reader):
    assert read_still(sign_crop(6), NothingFound(), reader) == []


def test_a_still_image_with_a_plate_found_is_not_read_again(reader):
    detector = RankedDetector([plate_crop("苏E12345")])
    wide = np.zeros((60, 700, 3), np.uint8)
    assert [r.text for r in read_still(wide, detector, reader)] == ["苏E12345"]
    assert [r.detection.score for r in read_still(wide, detector, reader)] == [0.9]
