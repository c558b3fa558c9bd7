"""The shipped plate model: manifest checks, real crops, double-row plates, engine parity."""
import shutil

import cv2
import numpy as np
import pytest

from conftest import need_plates
from models import synth
from models.dataset import is_held_out, load_folder, load_loose
from agent.platecodes import is_valid
from models.recognizer import (MODEL_DIR, ModelFilesError, char_accuracy, light_on_dark, load_recognizer,
                               plate_color, plate_color_code, to_grey)


@pytest.fixture(scope="module")
def opencv():
    return load_recognizer("opencv")


@pytest.fixture(scope="module")
def held_out():
    root = need_plates()
    samples = []
    for folder in ("lprnet_crops_chenweijiang99", "lprnet_pytorch_test", "ccpd_subdataset_julienkolani"):
        samples += [s for s in load_folder(root / folder) if is_held_out(folder, s.file)][:80]
    return samples


def copy_models(tmp_path):
    dest = tmp_path / "models"
    shutil.copytree(MODEL_DIR, dest, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    for network in (dest, dest / "second"):
        shutil.copy(MODEL_DIR / "easyocr" / "plate_ocr.py", network / "easyocr" / "plate_ocr.py")
    return dest


def test_missing_model_file_is_named(tmp_path):
    dest = copy_models(tmp_path)
    (dest / "plate_ocr.onnx").unlink()
    with pytest.raises(ModelFilesError, match=r"missing: .*plate_ocr\.onnx"):
        load_recognizer("opencv", dest)


def test_corrupt_model_file_is_named(tmp_path):
    dest = copy_models(tmp_path)
    data = bytearray((dest / "plate_ocr.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (dest / "plate_ocr.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelFilesError, match=r"corrupt or replaced: .*plate_ocr\.onnx"):
        load_recognizer("opencv", dest)


def test_missing_manifest_is_named(tmp_path):
    dest = copy_models(tmp_path)
    (dest / "manifest.json").unlink()
    with pytest.raises(ModelFilesError, match="manifest missing"):
        load_recognizer("opencv", dest)


def test_missing_second_network_is_named(tmp_path):
    dest = copy_models(tmp_path)
    (dest / "second" / "plate_ocr.onnx").unlink()
    with pytest.raises(ModelFilesError, match=r"missing: .*second/plate_ocr\.onnx"):
        load_recognizer("opencv", dest)
    assert not load_recognizer("opencv", dest, alone=True).read(np.full((40, 140), 90, np.uint8)).second_opinion


def test_unknown_engine():
    with pytest.raises(ValueError, match="unknown recogniser engine 'tesseract'"):
        load_recognizer("tesseract")


def test_bad_crop_is_refused(opencv):
    with pytest.raises(ValueError, match="plate crop"):
        opencv.read(np.zeros((0, 0, 3), np.uint8))


def test_reads_real_held_out_crops(opencv, held_out):
    reads = [opencv.read(s.image) for s in held_out]
    exact = np.mean([r.text == s.text for r, s in zip(reads, held_out)])
    chars = np.mean([char_accuracy(r.text, s.text) for r, s in zip(reads, held_out)])
    assert exact >= 0.93, f"exact {exact:.2%} on {len(held_out)} held-out real crops"
    assert chars >= 0.98
    right = [r for r, s in zip(reads, held_out) if r.text == s.text]
    assert all(len(r.char_confidences) == len(r.text) and 0 < r.confidence <= 1 for r in right)


def test_the_second_network_mends_reads_the_first_is_unsure_of(opencv, held_out):
    first = load_recognizer("opencv", alone=True)
    alone = [first.read(s.image) for s in held_out]
    pair = [opencv.read(s.image) for s in held_out]
    asked = [r.second_opinion for r in pair]
    assert 0 < sum(asked) < 0.25 * len(held_out)
    assert all(a == b for a, b, was in zip(alone, pair, asked) if not was)   # the rest: the first alone
    right = [sum(r.text == s.text for r, s in zip(reads, held_out)) for reads in (alone, pair)]
    assert right[1] > right[0], right


def test_real_blue_crops_are_blue(held_out):
    colours = [plate_color(s.image) for s in held_out]
    assert colours.count("blue") / len(colours) > 0.9
    blue = next(s.image for s, c in zip(held_out, colours) if c == "blue")
    assert plate_color_code(blue) == 5


def test_green_plates_are_read_light_on_dark():
    rng = np.random.default_rng(7)
    img, _ = synth.render_plate(synth.random_plate(rng, "small_new_energy")[0], "small_new_energy", rng)
    assert plate_color(img) == "green" and np.median(to_grey(img)) > 128
    assert np.median(light_on_dark(to_grey(img), "green")) < 128


@pytest.mark.parametrize("kind", ["large", "police", "small"])
def test_other_plates_are_read_as_they_are(kind):
    rng = np.random.default_rng(7)
    img, _ = synth.render_plate(synth.random_plate(rng, kind)[0], kind, rng)
    assert np.array_equal(light_on_dark(to_grey(img), plate_color(img)), to_grey(img))


def test_real_green_plates_are_read_better_light_on_dark(opencv):
    root = need_plates()
    green = [s for s in load_folder(root / "ccpd_demo_hukai97") if s.color == "green"]
    assert len(green) >= 4
    as_they_are = sum(opencv.read(cv2.cvtColor(to_grey(s.image), cv2.COLOR_GRAY2BGR)).text == s.text for s in green)
    inverted = sum(opencv.read(s.image).text == s.text for s in green)
    assert inverted > as_they_are, (inverted, as_they_are)


def test_a_green_plate_read_with_a_character_short_is_no_valid_plate(opencv):
    """Green plates are new-energy plates, 8 characters: a box that cut one off reads as a
    7-character plate that fits the grammar of blue ones, and must not pass for a plate."""
    crop = cv2.imread(str(need_plates() / "hyperlpr3" / "_1_皖KD01833.jpg"))
    cut = crop[:, int(crop.shape[1] * 0.24):]            # the third character gone
    read = opencv.read(cut)
    assert read.color == "green" and len(read.text) != 8
    assert is_valid(read.text) and not is_valid(read.text, read.color)
    assert opencv.read(crop).text == "皖KD01833"


def test_blue_plates_with_a_green_or_yellow_cast_are_blue():
    """Their hue says green or yellow, their light characters on a dark ground say blue."""
    blue = [s for s in load_folder(need_plates() / "lprnet_pytorch_test") if s.color == "blue"]
    assert len(blue) > 500
    called = [plate_color(s.image) for s in blue]
    assert called.count("green") + called.count("yellow") == 0, [c for c in called if c != "blue"]


def test_double_row_plates_are_read(opencv):
    rng = np.random.default_rng(2026)
    right = 0
    for kind in ("large", "trailer", "coach", "police", "large"):
        text, _ = synth.random_plate(rng, kind)
        img, _ = synth.render_plate(text, kind, rng, rows=2)
        read = opencv.read(img)
        right += read.text == text and read.rows == 2
    assert right >= 4


def test_single_row_yellow_plate_is_not_split(opencv):
    img, _ = synth.render_plate("豫C12345", "large", np.random.default_rng(4))
    read = opencv.read(img)
    assert read.rows == 1 and read.text[1:] == "C12345", read   # the province: see the accuracy test


def synthetic_loose_cuts(n=8):
    """Scenes cut loose around their plate (1.3:1, the plate 80 % of the cut's width)."""
    cuts = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        text, kind = synth.random_plate(rng, "small")
        frame, found = synth.render_scene([(text, kind)], rng)
        x1, y1, x2, y2 = found[0]["box"]
        w = x2 - x1
        top = (y1 + y2) // 2 - int(w / 2.6)
        if top < 0 or top + int(w / 1.3) > frame.shape[0] or x1 - w // 8 < 0 or x2 + w // 8 > frame.shape[1]:
            continue
        cuts.append((frame[top:top + int(w / 1.3), x1 - w // 8:x2 + w // 8], text))
        if len(cuts) == n:
            return cuts
    raise AssertionError("too few synthetic scenes leave room for a loose cut")


def test_a_loose_cut_is_read_where_its_plate_is(opencv):
    cuts = synthetic_loose_cuts()
    located = sum(opencv.read(cut).text == text for cut, text in cuts)
    as_is = sum(opencv.read_as_is(cut).text == text for cut, text in cuts)
    assert located >= len(cuts) - 1 and as_is <= len(cuts) // 2, (located, as_is)
    cut = cuts[0][0]
    assert opencv.read(cv2.cvtColor(cut, cv2.COLOR_BGR2BGRA)) == opencv.read(cut)   # a PNG with alpha


def test_real_loose_cuts_are_read_where_their_plate_is(opencv):
    folder = need_plates() / "ccpd_subdataset_julienkolani"
    cuts = [s for s in load_loose(folder) if is_held_out(folder.name, s.file)][:40]
    assert len(cuts) >= 30 and all(s.image.shape[1] < 1.8 * s.image.shape[0] for s in cuts)
    located = sum(opencv.read(s.image).text == s.text for s in cuts)
    as_is = sum(opencv.read_as_is(s.image).text == s.text for s in cuts)
    assert located >= 0.95 * len(cuts) and as_is < 0.3 * len(cuts), (located, as_is, len(cuts))


def test_a_plate_crop_is_not_searched(opencv, monkeypatch):
    """Only a crop squarer than any plate is looked into, and only when it is no sure plate as it
    is: a tight crop, and one the caller gave its rows, are read as they are."""
    import models.recognizer as recognizer
    searched = []
    monkeypatch.setattr(recognizer, "plates_in", lambda crop: searched.append(crop.shape) or [])
    tight, _ = synth.render_plate("京A12345", "small", np.random.default_rng(4))
    assert opencv.read(tight).text == "京A12345"
    cut, text = synthetic_loose_cuts(1)[0]
    assert opencv.read(cut, rows=1) == opencv.read_as_is(cut, rows=1)
    assert searched == []
    opencv.read(cut)
    assert searched == [cut.shape]


def test_easyocr_gives_the_same_text(opencv, held_out):
    pytest.importorskip("easyocr", reason="easyocr not installed: pip install -e .[easyocr] (CI installs it)")
    easy = load_recognizer("easyocr")
    sample = held_out[::4]
    a = [opencv.read(s.image) for s in sample]
    b = [easy.read(s.image) for s in sample]
    assert [(r.text, r.second_opinion) for r in a] == [(r.text, r.second_opinion) for r in b]
    assert any(r.second_opinion for r in a)


def test_easyocr_reads_loose_cuts_alike(opencv):
    pytest.importorskip("easyocr", reason="easyocr not installed: pip install -e .[easyocr] (CI installs it)")
    easy = load_recognizer("easyocr")
    cuts = synthetic_loose_cuts(4)
    assert [opencv.read(cut).text for cut, _ in cuts] == [easy.read(cut).text for cut, _ in cuts]


def test_both_engines_refit_from_the_same_network_output(opencv, held_out):
    pytest.importorskip("easyocr", reason="easyocr not installed: pip install -e .[easyocr] (CI installs it)")
    from models.recognizer import preprocess
    images = np.stack([preprocess(s.image, 1) for s in held_out[:16]])
    easy = load_recognizer("easyocr")
    a, b = opencv._logits(images), easy._logits(images)
    assert a.shape == b.shape == (16, 32, 74)
    assert np.abs(a - b).max() < 1e-3
    decoded, kept = easy._infer(images)   # what the network said while easyocr read, not a second run
    assert np.abs(kept - a).max() < 1e-3
    expected = [opencv._infer(images[i:i + 1])[0][0] for i in range(16)]
    assert [d[0] for d in decoded] == [e[0] for e in expected]
    assert all(np.allclose(d[2], e[2], atol=1e-3) and len(d[2]) == len(d[0]) for d, e in zip(decoded, expected))
