"""A plate's background colour from its pixels: the one rule the recogniser, the
detection-only pipeline and the records use.

On the labelled real crops it names 2,620 of 2,641 colours right; the detector's own
HSV ranges, which are loose on purpose to propose regions, named 2,482. By hue alone it
named 2,579: 43 blue plates (a green or yellow cast, a washed-out photo) were called green
or yellow. Green and yellow plates carry dark characters on their colour, blue ones light
characters; so a green or yellow hue whose middle is mostly dark (LIGHT_GROUND_MIN) is a
blue plate. That costs two real green crops of eight (a dim CCPD cut, a loose image),
whose colour code is then wrong; their reads are as they were.
"""
from __future__ import annotations

import cv2
import numpy as np

from agent.platecodes import COLOR_CODES

# hue ranges [lo, hi) of the coloured backgrounds (OpenCV hue 0-180)
HUES = {"yellow": (11, 35), "green": (35, 90), "blue": (90, 135)}
LIGHT_GROUNDS = ("green", "yellow")
LIGHT_GROUND_MIN = 0.5
"""The share of a green or yellow plate's middle above its own Otsu threshold is more than this
(its ground); a blue plate's is its characters, about a third."""


def plate_color(crop: np.ndarray) -> str:
    """The plate's background colour name: blue, yellow, green, white or black."""
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
        hue = max(votes, key=votes.get)
        return "blue" if hue in LIGHT_GROUNDS and not has_light_ground(centre) else hue
    return "white" if np.median(hsv[..., 2]) > 115 else "black"


def has_light_ground(crop: np.ndarray) -> bool:
    """More than LIGHT_GROUND_MIN of the crop above its own Otsu threshold: dark characters on a
    light ground."""
    grey = crop if crop.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(crop[..., :3]), cv2.COLOR_BGR2GRAY)
    _, bright = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(bright.mean()) > LIGHT_GROUND_MIN


def plate_color_code(crop: np.ndarray) -> int:
    """The GA/T 1400 PlateColor code of the crop's colour."""
    return COLOR_CODES[plate_color(crop)]
