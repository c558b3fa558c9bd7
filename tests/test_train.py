"""The training data order (models/train.py): what each epoch draws from the real crops."""
import collections
import json

import numpy as np

from models.dataset import Sample
from models.recognizer import MODEL_DIR
from models.train import parse_args, real_order


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


def test_the_shipped_model_was_made_by_the_default_command():
    training = json.loads((MODEL_DIR / "manifest.json").read_text())["training"]
    defaults = parse_args([])
    assert (training["seed"], training["epochs"], training["province_balance"]) == \
        (defaults.seed, defaults.epochs, defaults.province_balance)
