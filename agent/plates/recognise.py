"""The pipeline's view of the plate recogniser (models/recognizer.py, built on branch `model`).

models.recognizer is imported lazily, the first time a reader is made, so
`agent` imports without it and a missing model gives one clear message
instead of an ImportError deep in a worker. What the pipeline adds on top of
the model's raw read: GA 36 position fixes (agent.platecodes.normalise),
the grammar check, the plate colour and the GA/T 1400 codes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.platecodes import classify, gat1400_codes, is_valid, normalise

ENGINES = ("opencv", "easyocr")


class RecogniserUnavailable(RuntimeError):
    """The recogniser's code or model files are not installed; the message says what to do."""


@dataclass(frozen=True)
class Reading:
    text: str
    """Normalised plate text (O/0, I/1 fixed by position)."""
    raw: str
    confidence: float
    char_confidences: tuple[float, ...]
    color: str
    valid: bool
    """Matches the GA 36 grammar and the colour (agent.platecodes.is_valid): a green plate has 8
    characters."""

    @property
    def kind(self) -> str:
        return classify(self.text, self.color)

    def codes(self) -> dict:
        return gat1400_codes(self.text, self.color)


class PlateReader:
    """Reads a rectified plate crop: text, per-character confidence, colour, validity."""

    def __init__(self, engine: str = "opencv"):
        if engine not in ENGINES:
            raise ValueError(f"vision.engine = {engine!r}: expected one of {', '.join(ENGINES)}")
        self.engine = engine
        try:
            import models.recognizer as recognizer
        except ModuleNotFoundError as exc:
            raise RecogniserUnavailable(
                f"plate recogniser not installed (models.recognizer: {exc}); the detector works "
                "without it, reading needs the models/ package with its model files") from None
        try:
            self._model = recognizer.load_recognizer(engine)
        except ImportError as exc:
            raise RecogniserUnavailable(f"recogniser engine {engine!r} cannot load: {exc} "
                                        "(easyocr needs 'pip install gate-agent[easyocr]')") from None
        except (FileNotFoundError, RuntimeError) as exc:
            raise RecogniserUnavailable(f"recogniser model files missing or damaged: {exc}") from None

    def read(self, crop: np.ndarray) -> Reading:
        raw = self._model.read(crop)
        text = normalise(raw.text)
        confs = tuple(float(c) for c in raw.char_confidences)
        if len(confs) != len(text):
            confs = tuple([float(raw.confidence)] * len(text))
        return Reading(text=text, raw=raw.text, confidence=float(raw.confidence),
                       char_confidences=confs, color=raw.color, valid=is_valid(text, raw.color))


def load_reader(engine: str = "opencv") -> PlateReader:
    return PlateReader(engine)
