"""Plate text from a plate crop, with the model shipped in models/.

    rec = load_recognizer("opencv")        # or "easyocr" (needs torch + easyocr)
    read = rec.read(crop_bgr)              # PlateRead(text, confidence, char_confidences, rows, second_opinion)
    plate_color(crop_bgr) -> "blue" | "yellow" | "green" | "white" | "black"
    plate_color_code(crop_bgr) -> GA/T 1400 PlateColor code (5 for blue...)

Both engines run the same weights on the same input: the crop is greyscaled and
resized to 128 x 32 here, so easyocr's own resize and padding are no-ops
(a 4:1 image at its imgH of 32). Double-row plates (rear plates of trucks,
trailers...) are cut into their two rows, which are put side by side into
one single-row image before the read: the model was trained on exactly that.

Two networks are shipped: models/ holds the first reader, models/second/ one trained by
another recipe (models/train.py --second-opinion). The first reads every crop; the
second is asked only when the first is unsure (its read fits no plate grammar, or a
character is below SECOND_OPINION_BELOW), and then the two networks' log-probabilities
are averaged and decoded. The two miss different crops, so the pair misses fewer than
either, at the cost of a second run on about one crop in eight.

A crop squarer than any plate is a loose cut (a photo, a lane's fixed region): unless it
reads as a sure plate as it is, the pipeline's detector looks for the plate in it first.
`read_as_is` reads a crop as the plate, without looking.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from agent.plates.color import plate_color, plate_color_code
from agent.plates.detect import Detector
from agent.platecodes import ALPHABET, PLATE_LAYOUTS, edit_distance, is_valid, layouts_for, normalise

MODEL_DIR = Path(__file__).resolve().parent
NETWORK = "plate_ocr"
INPUT_W, INPUT_H = 128, 32
# A crop wider than this (w/h) is a single-row plate; narrower ones may be double-row.
DOUBLE_ROW_MAX_ASPECT = 2.3
# Where a double-row plate's top row (province + letter) ends, as a fraction of its height.
TOP_ROW_END, BOTTOM_ROW_START = 0.40, 0.33
# A read that fits no plate grammar is refitted (fit_to_grammar) when it has about a plate's
# length, the best fitting path is at least e^-GRAMMAR_MAX_GAP (a hundredth) as likely as the
# read, and the network is sure of every character on it (GRAMMAR_MIN_CHAR): a stray or
# doubled character dropped, not a sign or a grille turned into a plate. On the shared scenes the
# detector's false candidates refit with a gap as small as a real plate's, but never with
# every character at 0.8 or above.
GRAMMAR_FIT_LENGTHS = range(6, 10)
GRAMMAR_MAX_GAP = 4.6
GRAMMAR_MIN_CHAR = 0.8
# The second network is asked when the first's read has about a plate's length (GRAMMAR_FIT_LENGTHS)
# and fits no plate grammar, or a character on it is less sure than this. On the held-out crops that
# is about one crop in eight; asking it on every crop mends 2 more of 572 at twice the time. Shorter
# or longer reads are the detector's false candidates: on the shared scenes they were four in five
# of the second opinions, and one of 694 became a plate.
SECOND_OPINION_BELOW = 0.99
SECOND_OPINION_DIR = "second"
# In grey, a blue plate is light characters on a dark ground, and nearly every real crop the
# networks trained on is blue; the green plates they saw were synthetic and read poorly (3 of 8
# real held-out green crops). A green crop (agent.plates.color: a green hue on a light ground)
# is inverted before the read: 5 of 8. Yellow and white are not: the networks learnt them from
# synthetic plates as they are, and inverted, synthetic scenes' yellow plates read 95.9 ->
# 71.6 % and white 87.5 -> 6.2 %.
INVERTED_COLORS = ("green",)
# A crop squarer than this (w/h) is squarer than any plate, double-row ones (2:1) included: a
# loose cut with the plate somewhere inside (a hand-cut photo, a lane's fixed region). Unless it
# reads as a sure plate as it is, the plate is looked for in it (agent.plates.detect) and read
# where found. Tight crops of tilted plates are as square, but read sure as they are.
LOOSE_CROP_MAX_ASPECT = 1.8


class ModelFilesError(RuntimeError):
    """A shipped model file is missing or does not match models/manifest.json."""


@dataclass(frozen=True)
class PlateRead:
    text: str
    confidence: float
    char_confidences: tuple[float, ...] = field(default=())
    rows: int = 1
    second_opinion: bool = False
    color: str = ""
    """The crop's colour (agent.plates.color), "" for a grey crop: a green plate's read must have
    a new-energy plate's 8 characters to be valid (agent.platecodes.is_valid)."""

    @property
    def valid(self) -> bool:
        """The text fits the plate grammar of its colour."""
        return is_valid(self.text, self.color)


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


def light_on_dark(grey: np.ndarray, color: str) -> np.ndarray:
    """The grey crop inverted where its colour is one of INVERTED_COLORS, so that it looks like
    the real plates the networks learnt from. Done at read time only: the training recipe
    (models/train.py) sees crops as they are, so the shipped weights still reproduce from it."""
    return 255 - grey if color in INVERTED_COLORS else grey


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


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def ctc_decode(logits: np.ndarray, alphabet: str = ALPHABET) -> tuple[str, float, tuple[float, ...]]:
    """Greedy CTC over (T, classes) logits: text, confidence (product of char probs), per-char probs."""
    probs = np.exp(_log_softmax(logits))
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


def ctc_best_path_as(logp: np.ndarray, layouts, alphabet: str = ALPHABET):
    """The most likely CTC path through log-probabilities (T, 1 + len(alphabet)), class 0 the
    blank, whose text fits one of `layouts`, each a string of allowed characters per position:
    (text, log-probability, per-char probs), or None when no path fits.

    Viterbi over (position, character) states of all layouts at once, one row per position:
    on[r, c] is a path that has emitted its layout's positions up to row r and stands on c;
    after[a] one that stands on a blank, with the characters of after-state a emitted. A
    character repeated in the text needs a blank between, as CTC wants."""
    T, C = logp.shape
    neg = -1e9
    layout_of = np.concatenate([[g] * len(layout) for g, layout in enumerate(layouts)])
    R = len(layout_of)
    first = np.concatenate([[i == 0 for i in range(len(layout))] for layout in layouts])
    before = np.arange(R) + layout_of          # the after-state a row is entered from
    row_of_after = np.full(R + len(layouts), -1)
    row_of_after[before + 1] = np.arange(R)
    allowed = np.zeros((R, C), bool)
    for r, chars in enumerate(chars for layout in layouts for chars in layout):
        allowed[r, [alphabet.index(ch) + 1 for ch in chars if ch in alphabet]] = True
    on, after = np.full((R, C), neg), np.full(R + len(layouts), neg)
    after[row_of_after < 0] = 0.0              # each layout's start: nothing emitted yet
    rows, inner = np.arange(R), np.flatnonzero(~first)
    came = np.zeros((T, R, C), np.int8)          # 0 stayed on c, 1 from a blank, 2 from the row before
    switched_from = np.zeros((T, R, C), np.int16)
    blank_from = np.full((T, len(after)), -1, np.int16)
    for t in range(T):
        best_c = on.argmax(axis=1)
        best = on[rows, best_c]
        others = on.copy()
        others[rows, best_c] = neg
        second_c = others.argmax(axis=1)
        second = others[rows, second_c]
        switch, switch_c = np.full((R, C), neg), np.zeros((R, C), np.int16)
        switch[inner], switch_c[inner] = best[inner - 1, None], best_c[inner - 1, None]
        switch[inner, best_c[inner - 1]] = second[inner - 1]   # from the same character needs a blank
        switch_c[inner, best_c[inner - 1]] = second_c[inner - 1]
        ways = np.stack([on, np.broadcast_to(after[before, None], (R, C)), switch])
        came[t] = ways.argmax(axis=0)
        switched_from[t] = switch_c
        on = np.where(allowed, np.take_along_axis(ways, came[t][None], 0)[0] + logp[t], neg)
        from_char, from_c = np.full(len(after), neg), np.full(len(after), -1)
        from_char[before + 1], from_c[before + 1] = best, best_c
        took = from_char > after
        blank_from[t] = np.where(took, from_c, -1)
        after = np.maximum(from_char, after) + logp[t, 0]
    last = np.flatnonzero(np.append(first[1:], True))   # each layout's last row
    ends = [max((on[r].max(), ("on", r)), (after[r + 1 + layout_of[r]], ("after", r + 1 + layout_of[r])))
            for r in last]
    score, (state, k) = max(ends, key=lambda e: e[0])
    if score <= neg / 2:
        return None
    g = layout_of[k] if state == "on" else layout_of[row_of_after[k]]
    start = np.flatnonzero(layout_of == g)[0]
    chars, probs = {}, {}
    r, c = (k, int(on[k].argmax())) if state == "on" else (-1, -1)
    a = k if state == "after" else -1
    for t in range(T - 1, -1, -1):
        if a < 0:
            chars[r], probs[r] = c, max(probs.get(r, 0.0), float(np.exp(logp[t, c])))
            how = came[t, r, c]
            if how == 1:
                a = before[r]
            elif how == 2:
                r, c = r - 1, int(switched_from[t, r, c])
        elif blank_from[t, a] >= 0:
            r, c, a = row_of_after[a], int(blank_from[t, a]), -1
    order = range(start, start + len(layouts[g]))
    return "".join(alphabet[chars[r] - 1] for r in order), float(score), tuple(round(probs[r], 4) for r in order)


def fit_to_grammar(logits: np.ndarray, max_gap: float = GRAMMAR_MAX_GAP, min_char: float = GRAMMAR_MIN_CHAR,
                   layouts=PLATE_LAYOUTS):
    """The likeliest reading that fits the plate grammar (`layouts`, agent.platecodes.PLATE_LAYOUTS),
    as ctc_decode returns it, or None when it is more than e^max_gap times less likely than
    the unconstrained best or any of its characters is less sure than min_char.

    A character sure at some step (min_char above 0.5) is that step's best class, so only
    those classes are searched, and a read with fewer sure steps than a plate has characters
    is refused at once: most of the detector's false candidates end there."""
    logp = _log_softmax(logits)
    best = logp.argmax(axis=1)
    sure = (best > 0) & (logp.max(axis=1) >= np.log(min_char))
    if sure.sum() < min(len(layout) for layout in layouts):
        return None
    classes = np.unique(best[sure])
    alphabet = "".join(ALPHABET[k - 1] for k in classes)
    searched = logp[:, np.concatenate([[0], classes])]
    fit = ctc_best_path_as(searched, layouts, alphabet)
    if fit is None:
        return None
    text, score, probs = fit
    if logp.max(axis=1).sum() - score > max_gap or min(probs) < min_char:
        return None
    return text, float(np.prod(probs)), probs


def needs_refit(read: PlateRead) -> bool:
    return not read.valid and len(read.text) in GRAMMAR_FIT_LENGTHS


def refit(read: PlateRead, logits: np.ndarray) -> PlateRead:
    """`read` refitted to the plate grammar of its colour from the network output it came from,
    or as it was."""
    fitted = fit_to_grammar(logits, layouts=layouts_for(read.color))
    if fitted is None:
        return read
    return replace(read, text=normalise(fitted[0]), confidence=fitted[1], char_confidences=fitted[2])


def is_sure_plate(read: PlateRead) -> bool:
    """A read that fits the plate grammar with every character at SECOND_OPINION_BELOW or surer."""
    return read.valid and min(read.char_confidences, default=0.0) >= SECOND_OPINION_BELOW


LOOSE_CROP_DETECTOR = Detector(max_plates=2)   # the pipeline's detector (thread-safe: no state between calls)


def plates_in(loose_crop: np.ndarray) -> list[np.ndarray]:
    """The flat crops of the (at most two) plates the detector finds in a loose crop (BGR or
    BGRA), best first."""
    return [found.crop for found in LOOSE_CROP_DETECTOR.detect(np.ascontiguousarray(loose_crop[..., :3]))]


# ----------------------------------------------------------------- engines
class Recognizer:
    """Reads a plate crop. Subclasses provide `_infer(images uint8 N x 32 x 128) -> [(text, conf, confs)]`
    and `_logits`; `second` is the same engine over the second network (None: the first alone)."""

    engine = "?"
    second: "Recognizer | None" = None

    def read(self, crop_bgr: np.ndarray, rows: int | None = None) -> PlateRead:
        """Read one plate crop (BGR or grey). rows=None decides single/double row by itself:
        a wide crop is single-row; a squarer one that is not blue or green is read both
        ways and the reading that fits the plate grammar (then the surer one) wins. A colour
        crop squarer than any plate (LOOSE_CROP_MAX_ASPECT) that does not read as a sure plate
        as it is is a loose cut: the plate is looked for in it, and a read of a plate found
        there that fits the grammar wins over the whole crop's unless that is the surer plate."""
        read = self.read_as_is(crop_bgr, rows)
        h, w = crop_bgr.shape[:2]
        if rows is not None or crop_bgr.ndim != 3 or w >= LOOSE_CROP_MAX_ASPECT * h or is_sure_plate(read):
            return read
        for found in plates_in(crop_bgr):
            candidate = self.read_as_is(found)
            if candidate.valid and (not read.valid or candidate.confidence > read.confidence):
                read = candidate
        return read

    def read_as_is(self, crop_bgr: np.ndarray, rows: int | None = None) -> PlateRead:
        """`read` without looking for a plate inside a loose crop: the crop is the plate."""
        if rows not in (None, 1, 2):
            raise ValueError(f"rows must be None, 1 or 2, not {rows!r}")
        grey = to_grey(crop_bgr)   # refuses what is not an image, before anything looks at its colour
        color = plate_color(crop_bgr) if crop_bgr.ndim == 3 else ""
        if rows is None:
            h, w = crop_bgr.shape[:2]
            rows = 1
            if w / max(1, h) < DOUBLE_ROW_MAX_ASPECT and color not in ("blue", "green"):
                rows = 0
        layouts = (1, 2) if rows == 0 else (rows,)
        images = np.stack([preprocess(light_on_dark(grey, color), r) for r in layouts])
        decoded, logits = self._infer(images)
        reads = [PlateRead(normalise(t), c, cc, r, color=color) for (t, c, cc), r in zip(decoded, layouts)]
        best = max(reads, key=lambda r: (r.valid, r.confidence))
        i = layouts.index(best.rows)
        output = logits[i] if logits is not None else self._logits(images[i:i + 1])[0]
        if needs_refit(best):
            best = refit(best, output)
        if self.second is None or len(best.text) not in GRAMMAR_FIT_LENGTHS or is_sure_plate(best):
            return best
        return self._with_second_opinion(images[i:i + 1], output, best.rows, color)

    def _with_second_opinion(self, image: np.ndarray, output: np.ndarray, rows: int, color: str) -> PlateRead:
        """The read of both networks' log-probabilities averaged (a geometric mean of their
        probabilities), refitted to the grammar like any read."""
        both = (_log_softmax(output) + _log_softmax(self.second._logits(image)[0])) / 2
        text, confidence, confidences = ctc_decode(both)
        read = PlateRead(normalise(text), confidence, confidences, rows, second_opinion=True, color=color)
        return refit(read, both) if needs_refit(read) else read

    def _infer(self, images: np.ndarray):
        """[(text, confidence, per-char confidences)] for N preprocessed images, and the
        logits they came from where the engine has them at hand (None otherwise)."""
        raise NotImplementedError

    def _logits(self, images: np.ndarray) -> np.ndarray:
        """The network's output for N preprocessed images: (N, time steps, classes)."""
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
        logits = self._logits(images)
        return [ctc_decode(l) for l in logits], logits

    def _logits(self, images):
        self.net.setInput(to_blob(images))
        return self.net.forward().reshape(len(images), -1, len(ALPHABET) + 1)


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
        # What the network said while easyocr read: the refit and the second opinion need it, and
        # easyocr's API gives text only. Kept, rather than the network run a second time.
        self._outputs: list[np.ndarray] = []
        self.reader.recognizer.register_forward_hook(lambda net, args, output: self._outputs.append(output.numpy()))

    def _infer(self, images):
        """easyocr's texts and confidences; the per-character probabilities (easyocr gives none)
        from the output its network gave for the same read, as the OpenCV engine has them."""
        texts = []
        self._outputs.clear()
        for img in images:
            # contrast_ths=0: no second pass with easyocr's contrast boost, so both engines see one input
            res = self.reader.recognize(img, allowlist=ALPHABET, contrast_ths=0.0, detail=1)
            text, conf = (res[0][1], float(res[0][2])) if res else ("", 0.0)
            texts.append((text.replace(" ", ""), conf))
        outputs = np.concatenate(self._outputs) if self._outputs else np.empty((0,))
        if len(outputs) != len(images):
            return [(text, conf, ()) for text, conf in texts], None
        decoded = [ctc_decode(o) for o in outputs]
        return [(text, conf, d[2] if d[0] == text else ()) for (text, conf), d in zip(texts, decoded)], outputs

    def _logits(self, images):
        """The network easyocr loaded, called directly: easyocr's API gives text, not logits."""
        import torch
        with torch.no_grad():
            return self.reader.recognizer(torch.from_numpy(to_blob(images))).numpy()


def load_recognizer(engine: str = "opencv", model_dir: Path | str = MODEL_DIR, alone: bool = False) -> Recognizer:
    """The plate recogniser for `engine` ("opencv" or "easyocr"): the network in `model_dir` with
    the one in `model_dir`/second as its second opinion, or, with alone=True, the first network
    only (to measure one training run). Checks the files of both against their manifests first."""
    engines = {"opencv": OpenCVRecognizer, "easyocr": EasyOCRRecognizer}
    if engine not in engines:
        raise ValueError(f"unknown recogniser engine {engine!r}: use 'opencv' or 'easyocr'")
    recognizer = engines[engine](Path(model_dir))
    if not alone:
        recognizer.second = engines[engine](Path(model_dir) / SECOND_OPINION_DIR)
    return recognizer


def char_accuracy(pred: str, truth: str) -> float:
    return max(0.0, 1 - edit_distance(pred, truth) / max(1, len(truth)))


__all__ = ["PlateRead", "Recognizer", "load_recognizer", "plates_in", "plate_color", "plate_color_code", "preprocess",
           "ModelFilesError", "check_manifest", "light_on_dark", "ctc_decode", "ctc_best_path_as", "fit_to_grammar", "refit",
           "char_accuracy"]
