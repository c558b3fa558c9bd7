"""Plate text from a plate crop, with the model shipped in models/.

    rec = load_recognizer("opencv")        # or "easyocr" (needs torch + easyocr)
    read = rec.read(crop_bgr)              # PlateRead(text, confidence, char_confidences)
    plate_color(crop_bgr) -> "blue" | "yellow" | "green" | "white" | "black"
    plate_color_code(crop_bgr) -> GA/T 1400 PlateColor code (5 for blue...)

Both engines run the same weights on the same input: the crop is greyscaled and
resized to 128 x 32 here, so easyocr's own resize and padding are no-ops
(a 4:1 image at its imgH of 32). Double-row plates (rear plates of trucks,
trailers...) are cut into their two rows, which are put side by side into
one single-row image before the read: the model was trained on exactly that.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from agent.platecodes import ALPHABET, COLOR_CODES, edit_distance, is_valid, normalise

MODEL_DIR = Path(__file__).resolve().parent
NETWORK = "plate_ocr"
INPUT_W, INPUT_H = 128, 32
# A crop wider than this (w/h) is a single-row plate; narrower ones may be double-row.
DOUBLE_ROW_MAX_ASPECT = 2.3
# Where a double-row plate's top row (province + letter) ends, as a fraction of its height.
TOP_ROW_END, BOTTOM_ROW_START = 0.40, 0.33


class ModelFilesError(RuntimeError):
    """A shipped model file is missing or does not match models/manifest.json."""


@dataclass(frozen=True)
class PlateRead:
    text: str
    confidence: float
    char_confidences: tuple[float, ...] = field(default=())
    rows: int = 1


def check_manifest(model_dir: Path = MODEL_DIR, names=None) -> dict:
    """Verify the sha256 of each shipped file against manifest.json; raise naming the bad file."""
    manifest_path = Path(model_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise ModelFilesError(f"model manifest missing: {manifest_path}")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as exc:
        raise ModelFilesError(f"model manifest {manifest_path} is not valid: {exc}") from None
    for name, expected in files.items():
        if names is not None and name not in names:
            continue
        path = Path(model_dir) / name
        if not path.is_file():
            raise ModelFilesError(f"model file missing: {path} (listed in {manifest_path})")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise ModelFilesError(f"model file corrupt or replaced: {path} has sha256 {digest[:12]}..., "
                                  f"manifest says {expected[:12]}...")
    return manifest


# ----------------------------------------------------------------- preprocessing
def to_grey(crop: np.ndarray) -> np.ndarray:
    if crop is None or not isinstance(crop, np.ndarray) or crop.size == 0 or crop.ndim not in (2, 3):
        raise ValueError(f"plate crop must be a non-empty image array, got {getattr(crop, 'shape', crop)!r}")
    if crop.ndim == 2:
        return crop
    if crop.shape[2] == 4:
        return cv2.cvtColor(crop, cv2.COLOR_BGRA2GRAY)
    return cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)


def join_rows(grey: np.ndarray) -> np.ndarray:
    """A double-row plate as one row: the top row's middle (province, letter) then the bottom row."""
    h, w = grey.shape[:2]
    top = grey[:max(1, int(h * TOP_ROW_END)), int(w * 0.15):max(int(w * 0.15) + 1, int(w * 0.85))]
    bottom = grey[int(h * BOTTOM_ROW_START):, :]
    parts = [cv2.resize(p, (max(1, round(p.shape[1] * INPUT_H / p.shape[0])), INPUT_H),
                        interpolation=cv2.INTER_AREA) for p in (top, bottom)]
    return np.hstack(parts)


def preprocess(crop: np.ndarray, rows: int = 1) -> np.ndarray:
    """The network's input image: grey uint8, INPUT_H x INPUT_W."""
    grey = to_grey(crop)
    if rows == 2:
        grey = join_rows(grey)
    interp = cv2.INTER_AREA if grey.shape[1] > INPUT_W else cv2.INTER_LINEAR
    return cv2.resize(grey, (INPUT_W, INPUT_H), interpolation=interp)


def to_blob(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [-1, 1], as easyocr normalises."""
    return ((images.astype(np.float32) / 255.0 - 0.5) / 0.5)[:, None]


def ctc_decode(logits: np.ndarray, alphabet: str = ALPHABET) -> tuple[str, float, tuple[float, ...]]:
    """Greedy CTC over (T, classes) logits: text, confidence (product of char probs), per-char probs."""
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    best = probs.argmax(axis=1)
    best_probs = probs[np.arange(len(best)), best].tolist()
    chars, confs, prev = [], [], 0
    for k, p in zip(best.tolist(), best_probs):
        if k != 0 and k != prev:
            chars.append(alphabet[k - 1])
            confs.append(p)
        elif k != 0 and k == prev:
            confs[-1] = max(confs[-1], p)
        prev = k
    conf = float(np.prod(confs)) if confs else 0.0
    return "".join(chars), conf, tuple(round(c, 4) for c in confs)


# ----------------------------------------------------------------- colour
# hue ranges [lo, hi) of the coloured backgrounds (OpenCV hue 0-180)
HUES = {"yellow": (11, 35), "green": (35, 90), "blue": (90, 135)}


def plate_color(crop: np.ndarray) -> str:
    """The plate's background colour name from its pixels: blue, yellow, green, white or black."""
    if crop is None or crop.ndim != 3 or crop.size == 0:
        raise ValueError("plate_color needs a BGR colour crop")
    h, w = crop.shape[:2]
    centre = crop[int(h * 0.15):max(int(h * 0.15) + 1, int(h * 0.85)), int(w * 0.08):max(int(w * 0.08) + 1, int(w * 0.92))]
    hsv = cv2.cvtColor(np.ascontiguousarray(centre[..., :3]), cv2.COLOR_BGR2HSV)
    # hue from 0, saturation above 70, value above 45 (inRange bounds are inclusive)
    coloured = cv2.countNonZero(cv2.inRange(hsv, (0, 71, 46), (255, 255, 255)))
    if coloured / (hsv.shape[0] * hsv.shape[1]) > 0.30:
        votes = {name: cv2.countNonZero(cv2.inRange(hsv, (lo, 71, 46), (hi - 1, 255, 255)))
                 for name, (lo, hi) in HUES.items()}
        return max(votes, key=votes.get)
    val = hsv[..., 2]
    return "white" if np.median(val) > 115 else "black"


def plate_color_code(crop: np.ndarray) -> int:
    return COLOR_CODES[plate_color(crop)]


# ----------------------------------------------------------------- engines
class Recognizer:
    """Reads a plate crop. Subclasses provide `_infer(images uint8 N x 32 x 128) -> [(text, conf, confs)]`."""

    engine = "?"

    def read(self, crop_bgr: np.ndarray, rows: int | None = None) -> PlateRead:
        """Read one plate crop (BGR or grey). rows=None decides single/double row by itself:
        a wide crop is single-row; a squarer one that is not blue or green is read both
        ways and the reading that fits the plate grammar (then the surer one) wins."""
        if rows not in (None, 1, 2):
            raise ValueError(f"rows must be None, 1 or 2, not {rows!r}")
        to_grey(crop_bgr)   # refuses what is not an image, before anything looks at its colour
        if rows is None:
            h, w = crop_bgr.shape[:2]
            rows = 1
            if w / max(1, h) < DOUBLE_ROW_MAX_ASPECT and (crop_bgr.ndim == 2 or plate_color(crop_bgr) not in ("blue", "green")):
                rows = 0
        layouts = (1, 2) if rows == 0 else (rows,)
        images = np.stack([preprocess(crop_bgr, r) for r in layouts])
        reads = [PlateRead(normalise(t), c, cc, r) for (t, c, cc), r in zip(self._infer(images), layouts)]
        return max(reads, key=lambda r: (is_valid(r.text), r.confidence))

    def _infer(self, images: np.ndarray):
        raise NotImplementedError


class OpenCVRecognizer(Recognizer):
    """The ONNX export run by cv2.dnn: no torch needed (the Pi's fast path)."""

    engine = "opencv"

    def __init__(self, model_dir: Path = MODEL_DIR):
        check_manifest(model_dir, names={f"{NETWORK}.onnx"})
        path = Path(model_dir) / f"{NETWORK}.onnx"
        try:
            self.net = cv2.dnn.readNetFromONNX(str(path))
        except cv2.error as exc:
            raise ModelFilesError(f"OpenCV cannot load {path}: {exc}") from None

    def _infer(self, images):
        self.net.setInput(to_blob(images))
        logits = self.net.forward()
        return [ctc_decode(l) for l in logits.reshape(len(images), -1, len(ALPHABET) + 1)]


class EasyOCRRecognizer(Recognizer):
    """The same weights as an easyocr custom recognition network (torch on the CPU)."""

    engine = "easyocr"

    def __init__(self, model_dir: Path = MODEL_DIR, quantize: bool = True):
        check_manifest(model_dir, names={f"easyocr/{NETWORK}.{ext}" for ext in ("py", "yaml", "pth")})
        try:
            import easyocr
        except ImportError as exc:
            raise ModelFilesError(f"engine 'easyocr' needs the easyocr package (pip install -e .[easyocr]): {exc}") from None
        folder = str(Path(model_dir) / "easyocr")
        self.reader = easyocr.Reader(["ch_sim", "en"], gpu=False, recog_network=NETWORK,
                                     user_network_directory=folder, model_storage_directory=folder,
                                     detector=False, download_enabled=False, quantize=quantize, verbose=False)

    def _infer(self, images):
        out = []
        for img in images:
            # contrast_ths=0: no second pass with easyocr's contrast boost, so both engines see one input
            res = self.reader.recognize(img, allowlist=ALPHABET, contrast_ths=0.0, detail=1)
            text, conf = (res[0][1], float(res[0][2])) if res else ("", 0.0)
            out.append((text.replace(" ", ""), conf, ()))
        return out


def load_recognizer(engine: str = "opencv", model_dir: Path | str = MODEL_DIR) -> Recognizer:
    """The plate recogniser for `engine` ("opencv" or "easyocr"); checks the shipped files first."""
    if engine == "opencv":
        return OpenCVRecognizer(Path(model_dir))
    if engine == "easyocr":
        return EasyOCRRecognizer(Path(model_dir))
    raise ValueError(f"unknown recogniser engine {engine!r}: use 'opencv' or 'easyocr'")


def char_accuracy(pred: str, truth: str) -> float:
    return max(0.0, 1 - edit_distance(pred, truth) / max(1, len(truth)))


__all__ = ["PlateRead", "Recognizer", "load_recognizer", "plate_color", "plate_color_code", "preprocess",
           "ModelFilesError", "check_manifest", "ctc_decode", "char_accuracy"]
