"""Plate detection: find every plate in a frame, with its box and four corners.

Classical and dependency-free (OpenCV and numpy only), so it runs on a Pi
without a neural runtime:

1. Proposals. The frame is shrunk to a working size. Two kinds of region are
   proposed: areas of a plate background colour (blue, yellow, green, white,
   black in HSV, closed over the characters), and areas dense in vertical
   strokes (the characters themselves: catches any colour, glare and night
   frames where the colour is washed out).
2. Geometry. Each region's rotated rectangle must look like a plate: aspect
   about 2-6, size in range, tilt up to about 25 degrees.
3. Verification. The candidate is warped to a flat crop and scored on what a
   plate has and a grille or a sign has not: a row of 5-9 character-sized
   blobs of even height on a uniform background, and the background colour.
4. Fit. A candidate whose text spans only part of its width (a colour region
   that joined the plate to a bumper of a like colour) is cut down to its
   text's width grown to a plate's, if that scores about as well.
5. Extent. A blue, yellow or green candidate that passes is lengthened along
   its axis to where its background colour ends (close up, the characters cut
   the colour into pieces and a run of some of them is a plate cut short). A
   green one is also grown over the parts of a new-energy plate that are not
   green: a small one's pale top, a large one's yellow head.
6. Overlapping candidates are merged (non-maximum suppression); at most
   `max_plates` are returned, best first.

Corners are ordered top-left, top-right, bottom-right, bottom-left in frame
pixels; `rectify` warps them to a flat crop for the recogniser.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

CROP_SIZE = (136, 36)  # width, height of a rectified single-row plate (GA 36: 440 x 140 mm)
WORK_WIDTH = 800       # frames are shrunk to at most this many pixels across for proposals

# HSV ranges of plate backgrounds (OpenCV hue 0-180): (h_lo, h_hi, s_lo, s_hi, v_lo, v_hi)
COLOR_RANGES = {
    "blue": (98, 128, 80, 255, 50, 255),
    "yellow": (12, 34, 90, 255, 90, 255),
    "green": (35, 88, 45, 255, 80, 255),
    "white": (0, 180, 0, 40, 170, 255),
    "black": (0, 180, 0, 255, 0, 55),
}
# A plate cut by its 7-8 characters and its dot falls into at most this many pieces.
MAX_PIECES = 8
# Plates at least this wide (frame pixels) are also looked for at half the work size.
LARGE_PLATE_WIDTH = 300
# How far a mask region's quad is grown along its own axes (the masks sit inside the rim).
COLOR_EXPAND = (0.03, 0.08)
STROKE_EXPAND = (0.04, 0.12)
# A single-row plate is 440 x 140 mm (3.1), a new-energy one 480 x 140 (3.4); seen from
# above, its height shrinks (the shared CCPD scenes' 99th percentile is 4.7). A quad is
# lengthened to its colour's end only within this width/height (extend_to_colour).
MAX_PLATE_ASPECT = 4.8
# A small new-energy plate is 480 x 140 mm; a green quad flatter than GREEN_MAX_ASPECT lost its
# pale top to the green mask (raise_pale_top).
NEW_ENERGY_ASPECT, GREEN_MAX_ASPECT = 480 / 140, 3.9
# A large new-energy plate's yellow head (province, letter) is about a third of its green part's
# width; take_yellow_head looks this far to the left of a green quad.
YELLOW_HEAD_REACH = 0.6
EXTENT_STRIP_H = 16    # rows of the strip the extent is measured on
EXTENT_GAP = 3         # columns without colour (of EXTENT_STRIP_H-high ones) that end the plate
EXTENT_SHADE = 0.6     # share of the plate's own saturation and value its colour must keep
# GA 36: a single-row plate's characters span about 92 % of its width.
TEXT_WIDTH_SHARE = 0.92
# A candidate whose text spans less than this share of its width is fitted to its text, and
# kept fitted if it scores within FIT_SLACK of the whole (a few columns of colour fewer).
FIT_WIDTH, FIT_SLACK = 0.8, 0.02
# Plate backgrounds of a hue of their own (white and black ones are everywhere: walls, tyres).
SATURATED = ("blue", "yellow", "green")
# Extra saturation/value added for the stricter passes of each saturated colour.
STRICTER = {"blue": (0, 50), "yellow": (0, 40), "green": (0, 50)}


@dataclass
class Detection:
    box: tuple[int, int, int, int]
    """Axis-aligned box (x1, y1, x2, y2) in frame pixels."""
    corners: np.ndarray
    """4x2 float32: top-left, top-right, bottom-right, bottom-left, in frame pixels."""
    score: float
    color_hint: str = ""
    """Background colour that proposed it ('' when found by stroke density)."""
    crop: np.ndarray | None = field(default=None, repr=False)
    block: tuple[int, int, int, int] | None = field(default=None, repr=False)
    """Where the text is in `crop`: (x1, y1, x2, y2)."""

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]


class Detector:
    """Finds plates; configured once, called per frame (thread-safe: no state between calls)."""

    def __init__(self, *, min_width: int = 50, max_width: int = 800, max_plates: int = 3,
                 min_score: float = 0.45, crop_size: tuple[int, int] = CROP_SIZE,
                 colors: tuple[str, ...] = ("blue", "yellow", "green", "white", "black"),
                 strokes: bool = True):
        self.min_width, self.max_width = min_width, max_width
        self.max_plates, self.min_score = max_plates, min_score
        self.crop_size = crop_size
        self.colors = colors
        self.strokes = strokes

    def detect(self, frame: np.ndarray, roi: list[int] | tuple | None = None,
               keep: int | None = None) -> list[Detection]:
        """Every plate in `frame` (BGR), best first; `roi` [x1, y1, x2, y2] limits the search.

        At most `keep` (default `max_plates`) are returned: a caller that can check
        candidates further (by reading them) asks for a few more."""
        if frame is None or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError("detect() expects a BGR colour image (H x W x 3)")
        ox, oy = 0, 0
        if roi:
            x1, y1, x2, y2 = (int(v) for v in roi)
            frame_roi = frame[max(0, y1):y2, max(0, x1):x2]
            ox, oy = max(0, x1), max(0, y1)
        else:
            frame_roi = frame
        if frame_roi.size == 0:
            return []
        scale = min(1.0, WORK_WIDTH / max(frame_roi.shape[:2]))
        # bilinear, not INTER_AREA: 1 ms instead of 6 a frame, and the same plates found
        small = cv2.resize(frame_roi, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR) \
            if scale < 1.0 else frame_roi
        proposals = [((quad / scale + (ox, oy)).astype(np.float32), hint)
                     for quad, hint in self._proposals(small, scale)]
        if not proposals:
            return []
        # each candidate is warped flat two or three times: OpenCV warps four channels
        # twice as fast as three, which pays for converting, once, the part of the
        # frame that verification looks at
        x1, y1, x2, y2 = _looked_at(proposals, frame.shape)
        bgra = cv2.cvtColor(frame[y1:y2, x1:x2], cv2.COLOR_BGR2BGRA)
        origin = np.float32((x1, y1))
        candidates = []
        for quad, hint in proposals:
            candidate = self._verify(bgra, quad - origin, hint)
            if candidate is not None:
                candidates.append(_placed(candidate, origin, frame.shape))
        return _suppress(candidates, keep or self.max_plates)

    # --- proposals --------------------------------------------------------------------

    def _proposals(self, small: np.ndarray, scale: float):
        # per-plane ranges: OpenCV's inRange is ten times faster on one channel than on
        # three, and a colour that takes any hue (white, black) or saturation skips its plane
        planes = cv2.split(cv2.cvtColor(small, cv2.COLOR_BGR2HSV))
        min_w = self.min_width * scale
        max_w = self.max_width * scale
        close_w = max(3, int(round(min_w / 6)) | 1)
        close = (close_w, max(3, close_w // 2))
        pad = 2 * close_w + 4  # what the closing and opening reach: the window's mask is the frame's
        for name in self.colors:
            h_lo, h_hi, s_lo, s_hi, v_lo, v_hi = COLOR_RANGES[name]
            window = (0, 0, small.shape[1], small.shape[0])
            for strict in STRICTER.get(name, (0,)):
                # a looser range finds pale plates; a stricter one separates a plate from a
                # car body or pavement of a similar hue that the looser one joins it to. Its
                # regions lie inside the looser one's (closing and opening grow with the
                # mask), so it looks only in a window around those
                x1, y1, x2, y2 = window
                mask = _in_range([plane[y1:y2, x1:x2] for plane in planes],
                                 (h_lo, min(255, s_lo + strict), min(255, v_lo + strict)), (h_hi, s_hi, v_hi))
                mask = _closed_then_opened(mask, close, (3, 3))
                # white and black regions are everywhere: joining their pieces finds walls and tyres
                quads, look_again = _plate_shaped(mask, min_w, max_w, expand=COLOR_EXPAND,
                                                  join_pieces=name in SATURATED)
                yield from ((quad + np.float32((x1, y1)), name) for quad in quads)
                if not look_again:
                    break  # nothing of this colour is joined to a plate: a stricter range has nothing to split
                window = _enclosing(look_again, pad, (x1, y1), small.shape)
        if self.strokes:
            gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
            for quad in _plate_shaped(_stroke_mask(gray, close_w), min_w, max_w, expand=STROKE_EXPAND)[0]:
                yield quad, ""
            # Close up, a plate's strokes are further apart than the closing bridges: look
            # again at half size for plates of LARGE_PLATE_WIDTH or more.
            large_w = max(min_w, LARGE_PLATE_WIDTH * scale)
            if large_w <= max_w:
                half = _stroke_mask(cv2.pyrDown(gray), close_w)
                for quad in _plate_shaped(half, large_w / 2, max_w / 2, expand=STROKE_EXPAND)[0]:
                    yield quad * 2, ""

    # --- verification -----------------------------------------------------------------

    def _verify(self, bgra: np.ndarray, quad: np.ndarray, hint: str) -> Detection | None:
        """The candidate at `quad` of `bgra` (the frame with an alpha channel: see detect)
        scored; if it passes, fitted to its text (fit_to_text, kept if it
        scores within FIT_SLACK) and lengthened to its colour's end (extend_to_colour,
        kept if it still passes)."""
        candidate = self._scored(bgra, quad, hint)
        if candidate is None or hint not in SATURATED:
            return candidate
        candidate = self._reshaped(bgra, candidate, fit_to_text(quad, candidate.block, self.crop_size),
                                   FIT_SLACK)
        candidate = self._reshaped(bgra, candidate, extend_to_colour(bgra, candidate.corners, hint),
                                   float("inf"))
        if hint != "green":
            return candidate
        candidate = self._reshaped(bgra, candidate, take_yellow_head(bgra, candidate.corners), float("inf"))
        return self._reshaped(bgra, candidate, raise_pale_top(candidate.corners), float("inf"))

    def _reshaped(self, bgra: np.ndarray, candidate: Detection, quad: np.ndarray,
                  slack: float) -> Detection:
        """The candidate at `quad` instead, if it scores within `slack` of the candidate."""
        if quad is candidate.corners:
            return candidate
        other = self._scored(bgra, quad, candidate.color_hint)
        return other if other is not None and other.score >= candidate.score - slack else candidate

    def _scored(self, bgra: np.ndarray, quad: np.ndarray, hint: str) -> Detection | None:
        crop = rectify(bgra, quad, self.crop_size)
        texture, block = text_layout(crop)
        # white and black backgrounds are everywhere: ask more of their characters
        penalty = 0.1 if hint and hint not in SATURATED else 0.0
        if texture <= 0 or 0.7 * texture + (0.3 if hint else 0.0) - penalty < self.min_score:
            return None  # fails even with all of its colour: not worth measuring it
        colour = background_fraction(crop, hint) if hint else 0.0
        score = 0.7 * texture + 0.3 * colour - penalty
        if score < self.min_score:
            return None
        return Detection(box=_box(quad, bgra.shape), corners=quad, score=round(float(score), 3),
                         color_hint=hint, crop=cv2.cvtColor(crop, cv2.COLOR_BGRA2BGR), block=block)


def _box(quad: np.ndarray, shape) -> tuple[int, int, int, int]:
    """The quad's axis-aligned box (x1, y1, x2, y2), kept inside an image of `shape`."""
    xs, ys = quad[:, 0], quad[:, 1]
    h, w = shape[:2]
    return int(max(0, xs.min())), int(max(0, ys.min())), int(min(w, xs.max())), int(min(h, ys.max()))


def _placed(candidate: Detection, origin: np.ndarray, shape) -> Detection:
    """A candidate verified in a part of the frame starting at `origin` (x, y), in frame pixels."""
    corners = candidate.corners + origin
    return replace(candidate, corners=corners, box=_box(corners, shape))


def _looked_at(proposals, shape, pad: int = 2) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2): the part of a frame of `shape` that verifying `proposals` (quad,
    colour) can look at. A quad of a plate background colour may be cut to its text
    and lengthened to its colour's end (extend_to_colour looks as far as
    MAX_PLATE_ASPECT times its height in all, centred inside it): it is grown by that
    much on each side, twice what is needed. `pad` keeps the bilinear warps' second
    pixel inside, so every warp reads what it would read from the whole frame."""
    quads = []
    for quad, hint in proposals:
        if hint in SATURATED:
            tl, tr, br, bl = quad
            height = max(np.linalg.norm(bl - tl), np.linalg.norm(br - tr))
            width = max(1.0, float(np.linalg.norm(((tr - tl) + (br - bl)) / 2)))
            quad = _expand(quad, MAX_PLATE_ASPECT * height / width, 0.0)
        quads.append(quad)
    points = np.concatenate(quads)
    h, w = shape[:2]
    x1, y1 = np.floor(points.min(axis=0)).astype(int) - pad
    x2, y2 = np.ceil(points.max(axis=0)).astype(int) + pad + 1
    return max(0, int(x1)), max(0, int(y1)), min(w, int(x2)), min(h, int(y2))


def extend_to_colour(frame: np.ndarray, quad: np.ndarray, color: str) -> np.ndarray:
    """The quad lengthened to where the plate's background colour ends, if it ends soon.

    Close up, white characters cut a plate's background into pieces, and the region
    found may be a run of some of them: a plate cut short, read without its province
    or its last characters. Along the quad's own axis, the plate goes on as long as
    the columns keep some of its background colour (above and below a character,
    between two) in the plate's own shade (EXTENT_SHADE of the median saturation and
    value inside the quad: a darker bumper or frame of the same hue stays out). A side
    is lengthened only when the colour ends within MAX_PLATE_ASPECT of the quad's
    height: a blue car body around a blue plate never ends, and stays out."""
    width, height = _sides(quad)
    if height <= 0 or width <= 0 or width >= height * MAX_PLATE_ASPECT:
        return quad
    reach = (height * MAX_PLATE_ASPECT - width) / width   # each side, as a share of the width
    hsv, matrix, a0, b0 = _strip_beyond(frame, quad, reach)
    h_lo, h_hi, s_lo, s_hi, v_lo, v_hi = COLOR_RANGES[color]
    inside = np.ascontiguousarray(hsv[:, a0:b0])
    own = inside[cv2.inRange(inside, (h_lo, s_lo, v_lo), (h_hi, s_hi, v_hi)) > 0]
    if len(own) < inside.shape[0] * inside.shape[1] // 10:
        return quad
    s_own, v_own = np.median(own[:, 1:], axis=0)
    lo = (h_lo, max(s_lo, int(EXTENT_SHADE * s_own)), max(v_lo, int(EXTENT_SHADE * v_own)))
    plate_columns = cv2.inRange(hsv, lo, (h_hi, s_hi, v_hi)).mean(axis=0) >= 0.2 * 255
    on_left, on_right = _colour_run(plate_columns[:a0][::-1]), _colour_run(plate_columns[b0:])
    if on_left <= 1 and on_right <= 1:
        return quad
    return _strip_part(a0 - on_left, b0 + on_right, matrix)


def _sides(quad: np.ndarray) -> tuple[float, float]:
    """A TL TR BR BL quad's mean width and height."""
    tl, tr, br, bl = quad
    return (np.linalg.norm(tr - tl) + np.linalg.norm(br - bl)) / 2, (np.linalg.norm(bl - tl) + np.linalg.norm(br - tr)) / 2


def _strip_beyond(frame: np.ndarray, quad: np.ndarray, reach: float):
    """A strip EXTENT_STRIP_H high along the quad, `reach` of its width beyond each end, in HSV:
    (the strip, the warp's matrix, the column the quad starts at, the column after it ends)."""
    width, height = _sides(quad)
    strip_w = max(2, int(round(EXTENT_STRIP_H * (1 + 2 * reach) * width / height)))
    strip, matrix = _warp_flat(frame, _expand(quad, reach, 0.0), (strip_w, EXTENT_STRIP_H), cv2.BORDER_CONSTANT)
    a0 = int(round(strip_w * reach / (1 + 2 * reach)))
    hsv = cv2.cvtColor(np.ascontiguousarray(strip[..., :3]), cv2.COLOR_BGR2HSV)
    return hsv, matrix, a0, strip_w - a0


def _past_edge(frame: np.ndarray, matrix: np.ndarray, columns: int) -> np.ndarray:
    """Which of a strip's first `columns` (_strip_beyond's `matrix`) lie past the frame's edge."""
    middles = np.stack([np.arange(columns, dtype=np.float32),
                        np.full(columns, (EXTENT_STRIP_H - 1) / 2, np.float32)], axis=1)[None]
    xs, ys = _unflatten(middles, matrix).T
    return (xs < 0) | (ys < 0) | (xs > frame.shape[1] - 1) | (ys > frame.shape[0] - 1)


def _strip_part(left: int, right: int, matrix: np.ndarray) -> np.ndarray:
    """The quad, in frame pixels, of a strip's columns left..right (_strip_beyond's `matrix`)."""
    ends = np.array([[[left, 0], [right, 0], [right, EXTENT_STRIP_H - 1], [left, EXTENT_STRIP_H - 1]]], np.float32)
    return _unflatten(ends, matrix)


def raise_pale_top(quad: np.ndarray) -> np.ndarray:
    """A green quad flatter than a new-energy plate, grown upwards to one's height.

    A small new-energy plate's ground fades from green at its foot to nearly white at its
    head: the green mask holds its lower part and the characters' feet, and a plate cut
    there reads its province as another (synthetic frames: 46 of 100 read right, 92 grown).
    The top edge is moved up along the quad's own axis until width / height is the plate's
    (NEW_ENERGY_ASPECT); a quad no flatter than GREEN_MAX_ASPECT is left as it is."""
    width, height = _sides(quad)
    if height <= 0 or width / height <= GREEN_MAX_ASPECT:
        return quad
    tl, tr, br, bl = quad
    up = ((bl - tl) + (br - tr)) / 2 * (width / NEW_ENERGY_ASPECT / height - 1)
    return np.array([tl - up, tr - up, br, bl], np.float32)


def take_yellow_head(frame: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """A green quad lengthened to the left over the yellow it meets there, if that ends soon.

    A large new-energy plate is yellow under its province and letter and green from there
    on: the green mask holds the rest of the plate, read without its first two characters
    (synthetic frames). Columns to the left count as the plate's while they keep some
    yellow (COLOR_RANGES), up to YELLOW_HEAD_REACH of the quad's width; yellow that goes on
    as far, or off the frame, is a car body, and the quad stays."""
    width, height = _sides(quad)
    if height <= 0 or width <= 0:
        return quad
    hsv, matrix, a0, b0 = _strip_beyond(frame, quad, YELLOW_HEAD_REACH)
    h_lo, h_hi, s_lo, s_hi, v_lo, v_hi = COLOR_RANGES["yellow"]
    yellow = cv2.inRange(hsv[:, :a0], (h_lo, s_lo, v_lo), (h_hi, s_hi, v_hi))
    # yellow that reaches the frame's edge may go on past it, as a car body's does
    run = _colour_run(((yellow.mean(axis=0) >= 0.2 * 255) | _past_edge(frame, matrix, a0))[::-1])
    if run <= 1:
        return quad
    return _strip_part(a0 - run, b0, matrix)


def fit_to_text(quad: np.ndarray, block: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """The quad cut down to the width of the plate its text `block` (x1, y1, x2, y2 in
    the quad's rectified crop of `size`) belongs to, or the quad itself when the text
    spans FIT_WIDTH of it or more.

    A colour region can join a plate to a bumper of a like colour (a silver one that
    a cold white balance turns blue). The plate's text inside still passes
    verification, but the box is the width of the car's front. Only the width is
    fitted: the text rows block of bold or blurred characters can stop short of
    their height, and a plate cut to it read worse (synthetic frames)."""
    w, h = size
    x1, x2 = block[0], block[2]
    if x2 - x1 >= FIT_WIDTH * w:
        return quad
    cx, half_w = (x1 + x2) / 2, min(w, (x2 - x1) / TEXT_WIDTH_SHARE) / 2
    plate = np.float32([[[cx - half_w, 0], [cx + half_w, 0], [cx + half_w, h - 1], [cx - half_w, h - 1]]])
    return _unflatten(plate, _flattening(quad, size))


def _colour_run(columns: np.ndarray) -> int:
    """How many of `columns` (flags, outwards from a quad's end) the plate's colour goes
    on for: up to its last flagged column reached in steps of at most EXTENT_GAP;
    0 when it goes on to the last column: that is not the plate's (a car body), the side stays."""
    flagged = np.flatnonzero(columns)
    breaks = np.flatnonzero(np.diff(flagged, prepend=-1) > EXTENT_GAP)
    reached = flagged[:breaks[0]] if len(breaks) else flagged
    run = int(reached[-1]) + 1 if len(reached) else 0
    return 0 if run == len(columns) else run


def _in_range(planes: list[np.ndarray], lo: tuple, hi: tuple) -> np.ndarray:
    """cv2.inRange(hsv, lo, hi) from the H, S and V `planes` of hsv."""
    mask = None
    for plane, low, high, top in zip(planes, lo, hi, (179, 255, 255)):
        if low <= 0 and high >= top:
            continue
        inside = cv2.inRange(plane, low, high)
        mask = inside if mask is None else cv2.bitwise_and(mask, inside, dst=mask)
    return mask if mask is not None else np.full(planes[0].shape, 255, np.uint8)


def _stroke_mask(gray: np.ndarray, close_w: int) -> np.ndarray:
    """Regions dense in vertical strokes: the characters of a plate of any colour."""
    gray = cv2.GaussianBlur(gray, (3, 3), 0)
    grad = cv2.convertScaleAbs(cv2.Sobel(gray, cv2.CV_16S, 1, 0, ksize=3))
    _, edges = cv2.threshold(grad, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return _closed_then_opened(edges, (close_w * 2 + 1, 3), (max(3, close_w), 3))


def _closed_then_opened(mask: np.ndarray, close: tuple[int, int], open_: tuple[int, int]) -> np.ndarray:
    """The mask closed with a `close` (w, h) rectangle, then opened with an `open_` one.

    The closing's erosion and the opening's erosion are one erosion by their sum (a
    rectangle of w1 + w2 - 1 by h1 + h2 - 1, anchored where the two anchors add up),
    which is the same image, borders included, in three passes instead of four."""
    (cw, ch), (ow, oh) = close, open_
    mask = cv2.dilate(mask, np.ones((ch, cw), np.uint8))
    mask = cv2.erode(mask, np.ones((ch + oh - 1, cw + ow - 1), np.uint8))
    return cv2.dilate(mask, np.ones((oh, ow), np.uint8))


def _plate_shaped(mask: np.ndarray, min_w: float, max_w: float, expand=(0.0, 0.0),
                  join_pieces: bool = False) -> tuple[list[np.ndarray], list[tuple[int, int, int, int]]]:
    """Quads (4x2, TL TR BR BL) of mask regions shaped like a plate, and where to look
    again with a stricter colour range: when some region large enough for a plate is
    not shaped like one (a misfit: a plate joined to a car body or the pavement may be
    among them), the bounding boxes (x, y, w, h) of all such regions, fitting or not
    (a fitting one may hold a plate more tightly); otherwise none.

    join_pieces: also try runs of pieces side by side in one row as one region. Close
    to the camera, a plate's characters are wider than the closing bridges, and its
    background falls apart into a few squarish pieces between them."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    areas = [cv2.contourArea(c) for c in contours]
    regions = [(c, area, False) for c, area in zip(contours, areas) if area >= (min_w * min_w) / 12]
    if join_pieces:
        regions += [(points, area, True) for points, area in _rows_of_pieces(contours, areas, min_w)]
    quads = []
    for points, area, joined in regions:
        quad = _plate_quad(points, area, min_w, max_w, joined)
        if quad is not None:
            quads.append(_expand(quad, *expand))
    if len(quads) == len(regions):
        return quads, []
    return quads, [cv2.boundingRect(points) for points, _, _ in regions]


def _enclosing(boxes, pad: int, offset: tuple[int, int], shape) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2): the window around all `boxes` (x, y, w, h, at `offset`), grown by
    `pad` and kept inside an image of `shape`."""
    xs = [x for x, _, w, _ in boxes] + [x + w for x, _, w, _ in boxes]
    ys = [y for _, y, _, h in boxes] + [y + h for _, y, _, h in boxes]
    ox, oy = offset
    return (max(0, ox + min(xs) - pad), max(0, oy + min(ys) - pad),
            min(shape[1], ox + max(xs) + pad), min(shape[0], oy + max(ys) + pad))


def _plate_quad(points: np.ndarray, area: float, min_w: float, max_w: float,
                joined: bool = False) -> np.ndarray | None:
    """The corners of a region of `area` pixels outlined by `points`, if it is plate-shaped.

    A region joined from pieces takes the corners of its rotated box: the characters
    bite into the pieces' ends, and their hull points would pull the quad inwards."""
    (cx, cy), (rw, rh), angle = cv2.minAreaRect(points)
    if rw < rh:
        rw, rh, angle = rh, rw, angle - 90
    angle = (angle + 90) % 180 - 90
    if rh <= 0 or not (min_w * 0.8 <= rw <= max_w * 1.2) or abs(angle) > 30:
        return None
    if not 1.5 <= rw / rh <= 7.0:
        return None
    if area < 0.45 * rw * rh:
        return None
    box = cv2.boxPoints(((cx, cy), (rw, rh), angle))
    return order_corners(box) if joined else _corner_quad(points, box, rw * rh)


def _rows_of_pieces(contours, areas: list[float], min_w: float) -> list[tuple[np.ndarray, float]]:
    """(points, area) of each longest run (2 to MAX_PIECES) of neighbouring pieces of even
    height side by side (each taller than a fifth of the smallest plate): a large plate's
    background cut by its characters. Only the longest, and a piece joins one run: a part
    of the plate reads well enough to outscore the whole of it."""
    boxes = [cv2.boundingRect(c) for c in contours]
    pieces = sorted((b, i) for i, b in enumerate(boxes) if b[3] >= min_w / 5 and b[2] >= min_w / 10)
    joined, used = [], set()
    for n, ((x, y, w, h), first) in enumerate(pieces):
        if first in used:
            continue
        members, area, right, top, bottom = [first], areas[first], x + w, y, y + h
        for (x2, y2, w2, h2), other in pieces[n + 1:]:
            if x2 - right > 0.6 * h:
                break  # sorted by x: every later piece is further away
            if x2 < right - 0.3 * w2:
                continue
            overlap = min(bottom, y2 + h2) - max(top, y2)
            if overlap < 0.6 * min(h, h2) or not 0.67 <= h2 / h <= 1.5:
                continue
            members.append(other)
            area += areas[other]
            right, top, bottom = x2 + w2, min(top, y2), max(bottom, y2 + h2)
            if len(members) == MAX_PIECES:
                break
        if len(members) > 1:
            joined.append((np.concatenate([contours[i] for i in members]), area))
            used.update(members)
    return joined


def _corner_quad(contour: np.ndarray, box: np.ndarray, box_area: float) -> np.ndarray:
    """The region's four corners: the hull points furthest towards each corner direction
    (follows perspective), unless that quad is much smaller than the rotated `box`."""
    hull = cv2.convexHull(contour).reshape(-1, 2)
    s, d = hull.sum(axis=1), hull[:, 1] - hull[:, 0]
    quad = hull[[s.argmin(), d.argmin(), s.argmax(), d.argmax()]].astype(np.float32)
    if cv2.contourArea(quad) < 0.8 * box_area:
        return order_corners(box)
    return quad


def order_corners(points: np.ndarray) -> np.ndarray:
    """Four points ordered top-left, top-right, bottom-right, bottom-left."""
    pts = np.asarray(points, np.float32).reshape(4, 2)
    by_x = pts[np.argsort(pts[:, 0])]
    left, right = by_x[:2], by_x[2:]
    tl, bl = left[np.argsort(left[:, 1])]
    tr, br = right[np.argsort(right[:, 1])]
    return np.array([tl, tr, br, bl], np.float32)


def _expand(quad: np.ndarray, fx: float, fy: float) -> np.ndarray:
    """Grow a TL TR BR BL quad along its own axes (mask regions sit inside the plate's rim)."""
    tl, tr, br, bl = quad
    across = ((tr - tl) + (br - bl)) / 2
    down = ((bl - tl) + (br - tr)) / 2
    dx, dy = across * fx, down * fy
    return np.array([tl - dx - dy, tr + dx - dy, br + dx + dy, bl - dx + dy], np.float32)


def rectify(frame: np.ndarray, corners: np.ndarray, size: tuple[int, int] = CROP_SIZE) -> np.ndarray:
    """Warp the quad `corners` (TL TR BR BL) of `frame` (BGR or BGRA) to a flat size[0] x size[1] crop."""
    return _warp_flat(frame, corners, size, cv2.BORDER_REPLICATE)[0]


def _warp_flat(frame: np.ndarray, corners: np.ndarray, size: tuple[int, int], border: int):
    """(the quad `corners` warped to a flat size[0] x size[1] image, the warp's matrix)."""
    matrix = _flattening(corners, size)
    return cv2.warpPerspective(frame, matrix, size, flags=cv2.INTER_LINEAR, borderMode=border), matrix


def _flattening(corners: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The perspective matrix taking the quad `corners` (TL TR BR BL) to a flat size[0] x size[1] image."""
    w, h = size
    target = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    return cv2.getPerspectiveTransform(np.asarray(corners, np.float32), target)


def _unflatten(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Points (1 x N x 2) of a flat image made with `matrix`, back in frame pixels (N x 2)."""
    return cv2.perspectiveTransform(points, np.linalg.inv(matrix))[0].astype(np.float32)


_SMOOTH = np.ones(3) / 3


def text_layout(crop: np.ndarray) -> tuple[float, tuple[int, int, int, int] | None]:
    """(0..1: how much the crop (BGR or BGRA) looks like a row of 5-9 plate characters, the block of
    text (x1, y1, x2, y2) in crop pixels, None when it scores 0).

    Works on projections, which survive characters touching the plate's rim:
    the middle band is binarised (Otsu) and both polarities tried (light on
    dark: blue, black; dark on light: yellow, white, green). A plate shows
    5-14 ink runs across the band (a province character may split, a 0 or a C
    shows two sides), evenly spread over most of the width, and a block of
    text rows covering about half the height or more. Grilles (one long run),
    bricks and foliage (no text rows block) fail.

    Runs on every proposal (~25 a frame): the dark polarity is counted as the
    complement of the light one, in whole pixel counts so both stay exact.
    """
    gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    h, w = gray.shape
    margin = w // 25
    inner = gray[:, margin: w - margin]
    b0, b1 = int(h * 0.3), int(h * 0.7)
    band = inner[b0:b1]
    if band.size == 0:
        return 0.0, None
    _, std = cv2.meanStdDev(band)
    if float(std[0, 0]) < 12:
        return 0.0, None
    level, _ = cv2.threshold(band, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    light = inner > level
    light_band = light[b0:b1]
    bh = light_band.shape[0]
    light_counts = light_band.sum(axis=0)
    light_total = int(light_counts.sum())
    light_f = light.astype(np.float64)  # row counts over the character columns as a matrix product
    iw = inner.shape[1]
    best, block = 0.0, None
    for light_ink in (True, False):
        share = (light_total if light_ink else light_band.size - light_total) / light_band.size
        if not 0.12 <= share <= 0.6:
            continue
        band_profile = (light_counts if light_ink else bh - light_counts) / bh
        profile = np.convolve(band_profile, _SMOOTH, mode="same")
        columns = profile > max(0.12, 0.5 * _p95(profile))
        starts, ends = _runs(columns)
        widths = ends - starts
        character_sized = (widths >= max(1, iw // 80)) & (widths <= iw * 0.22)
        n = int(np.count_nonzero(character_sized))
        if n < 4:
            continue
        first, last = starts[character_sized][0], ends[character_sized][-1]
        spread = (last - first) / iw
        count_score = 1.0 if 5 <= n <= 14 else (0.6 if n in (4, 15, 16) else 0.2)
        ncol = int(columns.sum())
        light_rows = light_f @ columns
        rows = (light_rows if light_ink else ncol - light_rows) / ncol
        top, bottom = _text_block(rows)
        score = count_score * min(1.0, spread / 0.7) * min(1.0, (bottom - top) / h / 0.5)
        if score > best:
            best, block = score, (int(first) + margin, top, int(last) + margin, bottom)
    return best, block


def _p95(values: np.ndarray) -> float:
    """np.percentile(values, 95) (linear), without its overhead: called ~20 times a frame."""
    pos = 0.95 * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    part = np.partition(values, (lo, hi))
    return float(part[lo] + (part[hi] - part[lo]) * (pos - lo))


def _runs(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends (exclusive) of the runs of True, as two arrays."""
    padded = np.zeros(len(flags) + 2, bool)
    padded[1:-1] = flags
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return edges[::2], edges[1::2]


def _text_block(rows: np.ndarray) -> tuple[int, int]:
    """Start and end (exclusive) of the longest run of rows that cross characters (part
    ink, part background, over the character columns); (0, 0) when there is none.

    Where several characters' bars line up (Z, 5, 7, a bold dot) a row or two in the
    middle is nearly all ink (three rows of 36 in a blurred 931Y9); such a short solid
    band between text rows is text too."""
    solid = rows >= 0.85
    text = (rows > 0.15) & ~solid
    solid_max = max(1, len(rows) // 10)
    for a, b in zip(*_runs(solid)):
        if b - a <= solid_max and a > 0 and b < len(rows) and text[a - 1] and text[b]:
            text[a:b] = True
    starts, ends = _runs(text)
    if not len(starts):
        return 0, 0
    longest = int((ends - starts).argmax())
    return int(starts[longest]), int(ends[longest])


def background_fraction(crop: np.ndarray, color: str) -> float:
    """Share of the crop's pixels in `color`'s background range, scaled so a plate scores ~1."""
    h_lo, h_hi, s_lo, s_hi, v_lo, v_hi = COLOR_RANGES[color]
    hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV)
    mask = cv2.inRange(hsv, (h_lo, s_lo, v_lo), (h_hi, s_hi, v_hi))
    return min(1.0, float(np.count_nonzero(mask)) / mask.size / 0.55)


def box_iou(a, b) -> float:
    ix1, iy1, ix2, iy2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, ix2 - ix1) * max(0, iy2 - iy1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _area(box) -> float:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def _suppress(candidates: list[Detection], keep: int, iou: float = 0.3) -> list[Detection]:
    """Best-first non-maximum suppression. The characters of a coloured plate (found as a
    'white', 'black' or stroke region inside a blue, yellow or green one of similar
    score) give way to the plate first. A box inside a chosen one is the same plate
    region unless the chosen one is many times larger: a blue car holds a blue plate.
    Of candidates scored alike, the larger goes first: scores saturate, and a plate's
    part (glare on its right half) scores as well as the whole of it."""
    inner = {id(c) for c in candidates for o in candidates
             if o is not c and c.color_hint in ("white", "black", "")
             and o.color_hint in SATURATED and _contains(o.box, c.box)
             and o.score >= c.score - 0.2}
    candidates = [c for c in candidates if id(c) not in inner]
    chosen: list[Detection] = []
    for cand in sorted(candidates, key=lambda c: (c.score, _area(c.box)), reverse=True):
        if all(box_iou(cand.box, c.box) < iou and not _same_plate_region(c.box, cand.box) for c in chosen):
            chosen.append(cand)
            if len(chosen) == keep:
                break
    return chosen


def _same_plate_region(outer, inner) -> bool:
    return _contains(outer, inner) and _area(outer) < 4 * _area(inner)


def _contains(outer, inner, slack: float = 0.85) -> bool:
    ix1, iy1 = max(outer[0], inner[0]), max(outer[1], inner[1])
    ix2, iy2 = min(outer[2], inner[2]), min(outer[3], inner[3])
    inter = max(0, ix2 - ix1) * max(0, iy2 - iy1)
    area = _area(inner)
    return area > 0 and inter / area >= slack
