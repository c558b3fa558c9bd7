"""The real labelled plates in ../shared/data/plates as crops, and the fixed validation split.

Split (fixed, never changes between runs or machines):
- whole folders held out as unseen sources: hyperlpr3, green_web_tombolibo (its
  licence allows evaluation only), ccpd_demo_hukai97 (the only real green CCPD plates);
- every other file is held out when the first byte of sha1("folder/file") is
  below 52 (about 20%), so the split follows the file name, not the order read.

Scenes (CCPD) are cut by their labelled axis-aligned box, as a detector would, or, for
measuring loose crops (load_loose), around it with margins as a hand would cut them.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from agent.platecodes import ALPHABET, classify

HELD_OUT_FOLDERS = ("hyperlpr3", "green_web_tombolibo", "ccpd_demo_hukai97")
EVALUATION_ONLY = ("green_web_tombolibo",)
HELD_OUT_BYTE = 52  # of 256: ~20 %
LOOSE_CONTEXT = 3.0  # of the box, around a scene's plate: room for any loose_cut


@dataclass
class Sample:
    image: np.ndarray  # BGR crop
    text: str
    kind: str
    color: str
    source: str
    file: str
    context: tuple[int, int, int, int] = (0, 0, 0, 0)  # margin (l, t, r, b) around the plate box, scenes only
    scene: bool = False  # cut from a scene by its box (False: a labelled crop)


def is_held_out(folder: str, file: str) -> bool:
    if folder in HELD_OUT_FOLDERS:
        return True
    return hashlib.sha1(f"{folder}/{file}".encode()).digest()[0] < HELD_OUT_BYTE


def read_image(path: Path) -> np.ndarray | None:
    data = np.fromfile(str(path), np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None


def load_folder(folder: Path, context: float = 0.0):
    """Yield Samples from one folder's labels.csv (crops as they are; scenes cut by box).

    `context` adds that fraction of the box size around scene crops (for training jitter)."""
    with open(folder / "labels.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            text = row["plate"].strip()
            if not text or any(ch not in ALPHABET for ch in text):
                continue
            color = row.get("color") or "blue"
            img = read_image(folder / row["file"])
            if img is None:
                continue
            margin = (0, 0, 0, 0)
            if row["kind"] == "scene":
                if not row.get("x1"):
                    continue
                x1, y1, x2, y2 = (int(float(row[k])) for k in ("x1", "y1", "x2", "y2"))
                mx, my = int((x2 - x1) * context), int((y2 - y1) * context)
                X1, Y1 = max(0, x1 - mx), max(0, y1 - my)
                X2, Y2 = min(img.shape[1], x2 + mx), min(img.shape[0], y2 + my)
                margin = (x1 - X1, y1 - Y1, X2 - x2, Y2 - y2)
                img = img[Y1:Y2, X1:X2].copy()
                if img.size == 0:
                    continue
            yield Sample(img, text, classify(text, color), color, folder.name, row["file"], margin,
                         scene=row["kind"] == "scene")


def load_real(root: Path, split: str = "all", context: float = 0.0, include_eval_only: bool = True):
    """All usable real samples under `root`, filtered by split: "train", "val" or "all"."""
    out = []
    for labels in sorted(Path(root).glob("*/labels.csv")):
        folder = labels.parent
        if folder.name in EVALUATION_ONLY and (split == "train" or not include_eval_only):
            continue
        for s in load_folder(folder, context):
            held = is_held_out(folder.name, s.file)
            if split == "all" or (split == "val") == held:
                out.append(s)
    return out


def loose_cut(scene: np.ndarray, box, rng: np.random.Generator) -> np.ndarray | None:
    """`scene` cut around the plate in `box` (x1, y1, x2, y2) as a hand or a lane's fixed region
    would cut it: the plate 70-90 % of the cut's width, the cut 1.1-1.6 times as wide as high,
    the plate off its middle. None where the scene's edge would cut into the plate."""
    x1, y1, x2, y2 = box
    w = (x2 - x1) * rng.uniform(1.1, 1.4)
    h = w / rng.uniform(1.1, 1.6)
    cx = (x1 + x2) / 2 + rng.uniform(-0.05, 0.05) * (x2 - x1)
    cy = (y1 + y2) / 2 + rng.uniform(-0.25, 0.25) * h
    X1, Y1 = int(max(0, cx - w / 2)), int(max(0, cy - h / 2))
    X2, Y2 = int(min(scene.shape[1], cx + w / 2)), int(min(scene.shape[0], cy + h / 2))
    if X1 > x1 or Y1 > y1 or X2 < x2 or Y2 < y2:
        return None
    return scene[Y1:Y2, X1:X2].copy()


def load_loose(folder: Path, seed: int = 1):
    """Yield a Sample of each boxed scene in one folder's labels.csv, cut loose (loose_cut),
    the same cuts for the same seed."""
    rng = np.random.default_rng(seed)
    for s in load_folder(folder, context=LOOSE_CONTEXT):
        if not s.scene:
            continue
        l, t, r, b = s.context
        h, w = s.image.shape[:2]
        cut = loose_cut(s.image, (l, t, w - r, h - b), rng)
        if cut is not None:
            yield replace(s, image=cut, context=(0, 0, 0, 0))


def box_crop(sample: Sample) -> np.ndarray:
    """The crop at exactly its labelled box (scenes loaded with context margins)."""
    l, t, r, b = sample.context
    h, w = sample.image.shape[:2]
    return sample.image[t:h - b, l:w - r]
