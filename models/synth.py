"""Synthetic Chinese plates (GA 36 layouts) and whole-scene frames.

The real labelled images are nearly all blue plates from one province (皖); a
recogniser trained on them alone misreads rare provinces and has never seen a
yellow, white, black, green or double-row plate. This module draws every kind
in docs/specs plates.md with the Debian CJK fonts, then degrades it the way a
gate camera does (perspective, blur, noise, low light, glare, dirt, JPEG, low
resolution).

    render_plate(text, kind, rng, rows=1, degrade=False) -> (bgr image, meta)
    render_scene([(text, kind)], rng, size=(1280, 720), night=False)
        -> (bgr frame, [{text, kind, color, rows, box, corners}])
    random_plate(rng, kind=None) -> (text, kind)   # provinces drawn evenly

Glyphs are rasterised once per (font, character) with Pillow (TrueType needs
it) and cached; plates are composed with numpy and OpenCV.
"""
from __future__ import annotations

import functools
import glob
import subprocess
from pathlib import Path

import cv2
import numpy as np

from agent.platecodes import LETTERS, PROVINCES, classify, default_color

SERIAL = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
DIGITS = "0123456789"
KINDS = ("small", "large", "trailer", "coach", "small_new_energy", "large_new_energy", "police",
         "hongkong", "macau", "embassy", "consulate")
DOUBLE_ROW_KINDS = ("large", "trailer", "coach", "large_new_energy", "police")

# BGR colours: background, text, accent (red characters such as 警 使 领)
_WHITE, _BLACK, _RED = (245, 245, 245), (20, 20, 20), (30, 30, 210)
_PALETTE = {
    "blue": ((170, 70, 10), _WHITE),
    "yellow": ((20, 190, 235), _BLACK),
    "green": ((110, 200, 80), _BLACK),
    "white": ((240, 240, 240), _BLACK),
    "black": ((25, 20, 20), _WHITE),
}
_RED_SUFFIX = "警使领"

_CJK_FONT_NAMES = ("NotoSansCJK-Bold.ttc", "NotoSansCJK-Black.ttc", "wqy-zenhei.ttc", "NotoSansCJK-Regular.ttc")
_LATIN_FONT_NAMES = ("DejaVuSansCondensed-Bold.ttf", "DejaVuSans-Bold.ttf", "NotoSansCJK-Bold.ttc",
                     "wqy-zenhei.ttc")


class FontsMissing(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def _font_files() -> dict[str, str]:
    """Map of font file name -> path, from fc-list with a fallback to the Debian folders."""
    paths = []
    try:
        out = subprocess.run(["fc-list", "--format", "%{file}\n"], capture_output=True, text=True, timeout=10)
        paths = out.stdout.split()
    except (OSError, subprocess.SubprocessError):
        pass
    paths += glob.glob("/usr/share/fonts/**/*.tt[cf]", recursive=True)
    return {Path(p).name: p for p in paths}


def _fonts(names) -> list[tuple[str, int]]:
    files = _font_files()
    found = []
    for name in names:
        if name in files:
            # Noto CJK collections hold JP, KR, SC, TC...: index 2 is Simplified Chinese.
            found.append((files[name], 2 if name.startswith("NotoSansCJK") else 0))
    if not found:
        raise FontsMissing(f"no font among {', '.join(names)}: install fonts-noto-cjk and fonts-wqy-zenhei")
    return found


def cjk_fonts():
    return _fonts(_CJK_FONT_NAMES)


def latin_fonts():
    return _fonts(_LATIN_FONT_NAMES)


@functools.lru_cache(maxsize=4096)
def glyph(char: str, font: tuple[str, int]) -> np.ndarray:
    """The character's ink as a uint8 mask, cropped to its bounding box."""
    from PIL import Image, ImageDraw, ImageFont  # Pillow: TrueType rasteriser
    face = ImageFont.truetype(font[0], 96, index=font[1])
    canvas = Image.new("L", (160, 160), 0)
    ImageDraw.Draw(canvas).text((20, 10), char, fill=255, font=face)
    mask = np.asarray(canvas)
    ys, xs = np.nonzero(mask > 40)
    if len(xs) == 0:
        raise FontsMissing(f"font {font[0]} has no glyph for {char!r}")
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].copy()


def random_plate(rng: np.random.Generator, kind: str | None = None) -> tuple[str, str]:
    """A valid plate text of `kind` (any kind when None); provinces drawn uniformly."""
    kind = kind or KINDS[rng.integers(len(KINDS))]
    prov = PROVINCES[rng.integers(len(PROVINCES))]
    letter = LETTERS[rng.integers(len(LETTERS))]

    def pick(chars, n):
        return "".join(chars[i] for i in rng.integers(len(chars), size=n))

    def serial(n):
        # Real serials are mostly digits with at most two or three letters.
        out = list(pick(DIGITS, n))
        for i in rng.choice(n, size=rng.integers(0, 3), replace=False):
            out[i] = pick(LETTERS, 1)
        return "".join(out)

    if kind in ("small", "large"):
        text = prov + letter + serial(5)
    elif kind in ("trailer", "coach", "police"):
        text = prov + letter + serial(4) + {"trailer": "挂", "coach": "学", "police": "警"}[kind]
    elif kind == "small_new_energy":
        text = prov + letter + pick("DABCEFGHJK", 1) + pick(SERIAL, 1) + pick(DIGITS, 4)
    elif kind == "large_new_energy":
        text = prov + letter + pick(DIGITS, 5) + pick("DF", 1)
    elif kind in ("hongkong", "macau"):
        text = "粤Z" + serial(4) + ("港" if kind == "hongkong" else "澳")
    elif kind == "embassy":
        text = pick(DIGITS, 6) + "使" if rng.random() < 0.5 else "使" + pick(DIGITS, 6)
    elif kind == "consulate":
        text = prov + pick(DIGITS, 5) + "领"
    else:
        raise ValueError(f"unknown plate kind {kind!r}; known: {', '.join(KINDS)}")
    return text, kind


def plate_color(kind: str) -> str:
    return "green" if kind in ("small_new_energy", "large_new_energy") else default_color(kind)


def _background(kind: str, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    if kind == "small_new_energy":
        # white-green vertical gradient, greener at the bottom
        t = np.linspace(0, 1, h)[:, None, None] ** 1.3
        top, bottom = np.array([235, 250, 240.0]), np.array([90, 200, 60.0])
        return np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).astype(np.uint8).copy()
    if kind == "large_new_energy":
        img = np.empty((h, w, 3), np.uint8)
        split = int(w * 0.27)
        img[:, :split] = _PALETTE["yellow"][0]
        img[:, split:] = (90, 200, 60)
        return img
    return np.full((h, w, 3), _PALETTE[plate_color(kind)][0], np.uint8)


def _layout(text: str, kind: str, rows: int) -> tuple[tuple[int, int], list[tuple[int, int, int, int]], list]:
    """Plate size in mm (= pixels at base scale) and each character's box x, y, w, h; dot positions."""
    n = len(text)
    if rows == 2:
        top = [(110, 15, 80, 60), (250, 15, 80, 60)]
        k = n - 2
        cw = min(65, (400 - (k - 1) * 15) // k)
        x0 = (440 - k * cw - (k - 1) * 15) // 2
        bottom = [(x0 + i * (cw + 15), 90, cw, 110) for i in range(k)]
        return (440, 220), top + bottom, [(220, 45)]
    if n == 8:
        xs, x = [], 16
        for i in range(8):
            xs.append(x)
            x += 43 + (49 if i == 1 else 9)
        return (480, 140), [(x, 25, 43, 90) for x in xs], [(16 + 43 * 2 + 9 + 24, 70)]
    if kind == "embassy" and n == 7:
        xs = [15 + i * 59 for i in range(7)]
        return (440, 140), [(x, 25, 45, 90) for x in xs], []
    xs, x = [], 15
    for i in range(n):
        xs.append(x)
        x += 45 + (34 if i == 1 else 12)
    return (440, 140), [(x, 25, 45, 90) for x in xs[:n]], [(15 + 45 * 2 + 12 + 17, 70)]


def render_plate(text: str, kind: str | None = None, rng: np.random.Generator | None = None, rows: int = 1,
                 degrade: bool = False, stroke: int = 0) -> tuple[np.ndarray, dict]:
    """Draw one plate. With degrade=True the plate is cut from a camera-like view of it.

    `stroke` thickens every character's strokes by 2 x stroke pixels of the 440-pixel plate:
    the plate font is bolder than any installed CJK font, most of all in the province.

    Returns the BGR image and meta {text, kind, color, rows, corners} (corners of the
    plate in the returned image: top-left, top-right, bottom-right, bottom-left).
    """
    rng = rng if rng is not None else np.random.default_rng()
    kind = kind or classify(text)
    if kind not in KINDS:
        raise ValueError(f"unknown plate kind {kind!r}; known: {', '.join(KINDS)}")
    if rows not in (1, 2):
        raise ValueError(f"rows must be 1 or 2, not {rows!r}")
    color = plate_color(kind)
    (w, h), boxes, dots = _layout(text, kind, rows)
    if len(boxes) != len(text):
        raise ValueError(f"{text!r} does not fit a {kind} plate")
    img = _background(kind, (w, h))
    ink = np.array(_PALETTE[color][1], np.float32)
    cjk, latin = cjk_fonts(), latin_fonts()
    font_pick = int(rng.integers(1 << 16))
    for i, (ch, (x, y, bw, bh)) in enumerate(zip(text, boxes)):
        fonts = latin if ch.isascii() else cjk
        mask = glyph(ch, fonts[font_pick % len(fonts)])
        if ch.isascii() and ch in "1":
            # a narrow digit keeps its width instead of being stretched to a bar
            nw = max(8, int(bw * 0.45))
            x, bw = x + (bw - nw) // 2, nw
        m = cv2.resize(mask, (bw, bh), interpolation=cv2.INTER_AREA)
        if stroke:
            m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * stroke + 1, 2 * stroke + 1)))
        m = m.astype(np.float32)[..., None] / 255
        colour = np.array(_RED, np.float32) if (ch in _RED_SUFFIX and color in ("white", "black")) else ink
        roi = img[y:y + bh, x:x + bw].astype(np.float32)
        img[y:y + bh, x:x + bw] = (roi * (1 - m) + colour * m).astype(np.uint8)
    for cx, cy in dots:
        cv2.circle(img, (cx, cy), 5, tuple(int(c) for c in ink), -1, cv2.LINE_AA)
    cv2.rectangle(img, (5, 5), (w - 6, h - 6), tuple(int(c) for c in ink), 3, cv2.LINE_AA)
    for rx in (w // 4, 3 * w // 4):
        cv2.circle(img, (rx, 12 if rows == 1 else 10), 5, (150, 150, 150), -1, cv2.LINE_AA)
    meta = {"text": text, "kind": kind, "color": color, "rows": rows,
            "corners": [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]}
    if degrade:
        img, meta["corners"] = camera_crop(img, rng)
    return img, meta


def camera_crop(plate: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """The plate as a detector would cut it from a camera frame: perspective, loose or
    tight margins, low resolution, blur, light, glare, dirt, noise and JPEG."""
    out_w = int(rng.uniform(70, 260))
    s0 = min(1.0, 1.3 * out_w / plate.shape[1])
    plate = cv2.resize(plate, None, fx=s0, fy=s0, interpolation=cv2.INTER_AREA)
    h, w = plate.shape[:2]
    pad = int(0.35 * h)
    bg = _clutter(rng, (w + 2 * pad, h + 2 * pad))
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    jitter = rng.normal(0, 0.04, (4, 2)) * [w, h]
    shear = rng.normal(0, 0.06) * h
    dst = src + pad + jitter + np.float32([[shear, 0], [shear, 0], [-shear, 0], [-shear, 0]])
    dst = dst.astype(np.float32)
    M = cv2.getPerspectiveTransform(src, dst)
    canvas = bg.copy()
    warped = cv2.warpPerspective(plate, M, (bg.shape[1], bg.shape[0]), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full((h, w), 255, np.uint8), M, (bg.shape[1], bg.shape[0]))
    canvas[mask > 127] = warped[mask > 127]
    x0, y0 = dst.min(0)
    x1, y1 = dst.max(0)
    mx = rng.uniform(-0.02, 0.10, 2) * (x1 - x0)
    my = rng.uniform(-0.04, 0.25, 2) * (y1 - y0)
    cx0, cy0 = int(max(0, x0 - mx[0])), int(max(0, y0 - my[0]))
    cx1, cy1 = int(min(canvas.shape[1], x1 + mx[1])), int(min(canvas.shape[0], y1 + my[1]))
    crop = canvas[cy0:cy1, cx0:cx1]
    corners = (dst - [cx0, cy0]).tolist()
    scale = out_w / crop.shape[1]
    crop = cv2.resize(crop, (out_w, max(12, int(crop.shape[0] * scale * rng.uniform(0.85, 1.15)))),
                      interpolation=cv2.INTER_AREA)
    corners = (np.array(corners) * [out_w / (cx1 - cx0), crop.shape[0] / (cy1 - cy0)]).tolist()
    return degrade_image(crop, rng), corners


def _clutter(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A bumper / body-like surround: a flat colour with a gradient and some noise."""
    w, h = size
    base = rng.integers(0, 256, 3).astype(np.float32)
    grad = np.linspace(rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.2), h)[:, None, None]
    img = np.broadcast_to(base * grad, (h, w, 3)) + rng.normal(0, 8, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def degrade_image(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Camera faults, each applied with some probability (strength scales how often)."""
    img = img.astype(np.float32)
    h, w = img.shape[:2]
    p = lambda q: rng.random() < q * strength  # noqa: E731
    if p(0.3):  # glare: a bright soft ellipse
        glare = np.zeros((h, w), np.float32)
        cv2.ellipse(glare, (int(rng.uniform(0, w)), int(rng.uniform(0, h))),
                    (int(rng.uniform(0.1, 0.4) * w), int(rng.uniform(0.2, 0.8) * h)), rng.uniform(0, 180),
                    0, 360, rng.uniform(60, 180), -1)
        img += cv2.GaussianBlur(glare, (0, 0), max(1.0, w / 15))[..., None]
    if p(0.3):  # dirt: dark brown smudges
        for _ in range(rng.integers(1, 6)):
            spot = np.zeros((h, w), np.float32)
            cv2.circle(spot, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), int(rng.uniform(1, h / 4) + 1),
                       rng.uniform(0.3, 0.7), -1)
            spot = cv2.GaussianBlur(spot, (0, 0), 1.5)[..., None]
            img = img * (1 - spot) + np.float32([40, 60, 80]) * spot
    if p(0.5):  # light level, contrast and colour cast
        img = img * rng.uniform(0.3, 1.3) + rng.uniform(-40, 40)
        img = img * rng.uniform(0.8, 1.2, 3)
    if p(0.2):  # low light: gamma, heavy sensor noise
        img = 255 * (np.clip(img, 0, 255) / 255) ** rng.uniform(1.5, 2.5)
        img += rng.normal(0, rng.uniform(4, 14), img.shape)
    if p(0.4):
        k = rng.choice([3, 5]) if w > 60 else 3
        if rng.random() < 0.5:
            img = cv2.GaussianBlur(img, (k, k), 0)
        else:  # motion blur along the travel direction
            kernel = np.zeros((k, k), np.float32)
            kernel[k // 2] = 1 / k
            img = cv2.filter2D(img, -1, kernel)
    if p(0.5):
        img += rng.normal(0, rng.uniform(2, 10), img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if p(0.3):  # very low resolution: down then up
        f = rng.uniform(0.35, 0.7)
        small = cv2.resize(img, (max(8, int(w * f)), max(6, int(h * f))), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if p(0.6):
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.uniform(15, 95))])
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return img


def _vehicle(rng: np.random.Generator, size: tuple[int, int], night: bool) -> tuple[np.ndarray, tuple]:
    """A frame with road, a vehicle front and its bumper; returns the frame and the bumper box."""
    W, H = size
    sky = rng.uniform(60, 200) * (0.25 if night else 1)
    road = np.linspace(sky, sky * rng.uniform(0.4, 0.9), H)[:, None, None]
    frame = np.broadcast_to(road * np.float32([1.0, 1.0, 1.05]), (H, W, 3)).copy()
    frame += rng.normal(0, 6, frame.shape)
    bw = int(W * rng.uniform(0.45, 0.8))
    bh = int(H * rng.uniform(0.45, 0.75))
    x0 = int(rng.uniform(0, W - bw))
    y0 = int(rng.uniform(H * 0.15, H - bh))
    body = rng.integers(20, 230, 3).astype(np.float32) * (0.35 if night else 1)
    cv2.rectangle(frame, (x0, y0), (x0 + bw, y0 + bh), body.tolist(), -1)
    cv2.rectangle(frame, (x0 + bw // 10, y0), (x0 + bw * 9 // 10, y0 + bh // 3), (body * 0.4).tolist(), -1)
    grille_y = y0 + bh // 3 + bh // 12
    cv2.rectangle(frame, (x0 + bw // 4, grille_y), (x0 + bw * 3 // 4, grille_y + bh // 7), (body * 0.2).tolist(), -1)
    lamp = (240, 240, 255) if night else (200, 200, 200)
    for lx in (x0 + bw // 10, x0 + bw * 8 // 10):
        cv2.ellipse(frame, (lx + bw // 20, grille_y + bh // 14), (bw // 14, bh // 20), 0, 0, 360, lamp, -1)
    frame = np.clip(frame, 0, 255).astype(np.uint8)
    bumper = (x0 + bw // 5, grille_y + bh // 5, x0 + bw * 4 // 5, y0 + bh)
    return frame, bumper


def render_scene(plates, rng: np.random.Generator | None = None, size: tuple[int, int] = (1280, 720),
                 night: bool = False) -> tuple[np.ndarray, list[dict]]:
    """A gate-camera frame with each (text, kind) plate on a vehicle-like shape.

    Each plate dict: text, kind, color, rows, box [x1, y1, x2, y2] (axis-aligned, pixels)
    and corners [[x, y] x4] (top-left, top-right, bottom-right, bottom-left).
    Several plates are laid out side by side in vertical strips.
    """
    rng = rng if rng is not None else np.random.default_rng()
    W, H = size
    plates = list(plates)
    n = max(1, len(plates))
    frame = np.zeros((H, W, 3), np.uint8)
    out = []
    for i in range(n):
        sx0, sx1 = i * W // n, (i + 1) * W // n
        strip, (bx0, by0, bx1, by1) = _vehicle(rng, (sx1 - sx0, H), night)
        frame[:, sx0:sx1] = strip
        if i >= len(plates):
            continue
        item = plates[i]
        text, kind = item[0], (item[1] if len(item) > 1 else None)
        rows = item[2] if len(item) > 2 else 1
        plate, meta = render_plate(text, kind, rng, rows=rows)
        ph, pw = plate.shape[:2]
        target_w = min(rng.uniform(90, 320) * W / 1280, (bx1 - bx0) * 0.9)
        s = target_w / pw
        cx = rng.uniform(bx0 + target_w / 2, max(bx0 + target_w / 2 + 1, bx1 - target_w / 2))
        cy = rng.uniform(by0 + ph * s / 2, max(by0 + ph * s / 2 + 1, by1 - ph * s / 2))
        src = np.float32([[0, 0], [pw, 0], [pw, ph], [0, ph]])
        corners = (src - [pw / 2, ph / 2]) * s
        yaw = rng.normal(0, 0.08)
        corners[:, 1] += corners[:, 0] * yaw
        corners += rng.normal(0, 0.02, (4, 2)) * [target_w, ph * s]
        corners = (corners + [cx + sx0, cy]).astype(np.float32)
        M = cv2.getPerspectiveTransform(src, corners)
        warped = cv2.warpPerspective(plate, M, (W, H), flags=cv2.INTER_LINEAR)
        mask = cv2.warpPerspective(np.full((ph, pw), 255, np.uint8), M, (W, H))
        frame[mask > 127] = warped[mask > 127]
        x1, y1 = np.floor(corners.min(0)).astype(int)
        x2, y2 = np.ceil(corners.max(0)).astype(int)
        out.append({"text": meta["text"], "kind": meta["kind"], "color": meta["color"], "rows": rows,
                    "box": [int(max(0, x1)), int(max(0, y1)), int(min(W - 1, x2)), int(min(H - 1, y2))],
                    "corners": corners.round(1).tolist()})
    if night:
        frame = (frame.astype(np.float32) * 0.45)
        for p in out:  # the plate lamp / IR keeps the plate readable
            x1, y1, x2, y2 = p["box"]
            frame[y1:y2 + 1, x1:x2 + 1] *= 1.8
        frame = np.clip(frame + rng.normal(0, 7, frame.shape), 0, 255).astype(np.uint8)
    else:
        frame = degrade_image(frame, rng, strength=0.4)
    return frame, out
