"""Training (models/train.py): what each epoch draws from the real crops, how it cuts them, which
command made each shipped network."""
import collections
import json

import cv2
import numpy as np
import pytest

from models.dataset import Sample
from models.recognizer import MODEL_DIR
from models.train import parse_args, real_order, tilted_cut


def crops(provinces: dict[str, int]) -> list[Sample]:
    image = np.zeros((36, 136, 3), np.uint8)
    return [Sample(image, f"{p}A{i:05d}", "small", "blue", "test", f"{p}{i}.jpg")
            for p, n in provinces.items() for i in range(n)]


def drawn_per_province(samples, order):
    return collections.Counter(samples[i].text[0] for i in order)


def test_unbalanced_every_crop_is_drawn_repeat_times():
    samples = crops({"皖": 6, "琼": 1})
    order = real_order(samples, 4, 0.0, np.random.default_rng(1))
    assert sorted(order) == sorted(list(range(7)) * 4)


def test_balanced_a_rare_province_is_drawn_more_and_the_total_stays():
    samples = crops({"皖": 900, "浙": 100, "琼": 1})
    order = real_order(samples, 4, 0.5, np.random.default_rng(1))
    assert len(order) == len(samples) * 4
    drawn = drawn_per_province(samples, order)
    # weights 900^-0.5 per 皖 crop, 1 for the 琼 one: 皖 30, 浙 10, 琼 1 of 41 in all
    assert abs(drawn["皖"] / len(order) - 30 / 41) < 0.03
    assert abs(drawn["浙"] / len(order) - 10 / 41) < 0.03
    assert drawn["琼"] > 4 * 20   # 98 expected, against 4 unbalanced


def test_the_order_follows_the_seed():
    samples = crops({"皖": 50, "琼": 2})
    first = real_order(samples, 3, 0.5, np.random.default_rng(7))
    assert first == real_order(samples, 3, 0.5, np.random.default_rng(7))
    assert first != real_order(samples, 3, 0.5, np.random.default_rng(8))


RECIPE = ("seed", "epochs", "province_balance", "tilt", "bold", "ema")


@pytest.mark.parametrize("folder,command", [("", []), ("second", ["--second-opinion"])])
def test_each_shipped_network_was_made_by_its_documented_command(folder, command):
    training = json.loads((MODEL_DIR / folder / "manifest.json").read_text())["training"]
    args = parse_args(command)
    assert {k: training[k] for k in RECIPE} == {k: getattr(args, k) for k in RECIPE}
    assert args.out == MODEL_DIR / folder


def test_options_given_with_second_opinion_override_it():
    args = parse_args(["--second-opinion", "--epochs", "2", "--out", "/tmp/x"])
    assert (args.epochs, str(args.out), args.tilt, args.ema) == (2, "/tmp/x", True, 0.999)


@pytest.mark.parametrize("angle,shear", [(0, 0), (12, 0), (-12, 0), (3, 0.2), (-5, -0.2)])
def test_a_tilted_cut_holds_the_whole_plate_and_little_else(angle, shear):
    scene = np.zeros((200, 300, 3), np.uint8)
    scene[70:130, 50:250] = 255                       # the plate, with 50 and 70 pixels around it
    cut = tilted_cut(scene, (50, 70, 50, 70), angle, shear, (0, 0, 0, 0))
    plate = cv2.cvtColor(cut, cv2.COLOR_BGR2GRAY) > 127
    assert abs(plate.sum() - 200 * 60) < 0.03 * 200 * 60      # all of it, turned
    assert plate[:, :3].any() and plate[:, -3:].any() and plate[:3].any() and plate[-3:].any()   # box fits it
    tilted = np.deg2rad(abs(angle))
    assert abs(cut.shape[1] - (200 * np.cos(tilted) + 60 * np.sin(tilted))) <= 2


def test_moved_edges_grow_or_cut_the_box():
    scene = np.zeros((200, 300, 3), np.uint8)
    scene[70:130, 50:250] = 255
    assert tilted_cut(scene, (50, 70, 50, 70), 0, 0, (-0.1, -0.1, 0.1, 0.1)).shape[:2] == (72, 240)
    assert tilted_cut(scene, (50, 70, 50, 70), 0, 0, (0.05, 0.1, -0.05, -0.1)).shape[:2] == (48, 180)


def test_training_without_onnx_stops_before_it_starts(tmp_path, monkeypatch):
    """The ONNX export at the end needs onnx: missing, the run is refused at once, not lost."""
    import sys
    from models.train import train
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(SystemExit, match=r"pip install -e '\.\[train\]' \(onnx is missing\)"):
        train(parse_args(["--out", str(tmp_path / "run")]))
    assert not (tmp_path / "run").exists()
