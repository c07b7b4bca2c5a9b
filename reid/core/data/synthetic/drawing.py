"""Drawing one character: a standing figure (body, clothing, head, face) and its flip/shear/rotation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from reid.core.data.synthetic.cast import _PALETTE_ATTRIBUTES, RGB, CharacterDesign


def _jitter(color: RGB, gain: float, offset: np.ndarray) -> RGB:
    return tuple(int(min(255, max(0, round(c * gain + o)))) for c, o in zip(color, offset, strict=True))


def _shade(color: RGB, factor: float) -> RGB:
    return tuple(int(min(255, max(0, round(c * factor)))) for c in color)


@dataclass
class _Figure:
    image: Image.Image  # RGBA, transparent outside the figure
    head_box: tuple[float, float, float, float]  # in image coordinates


def _draw_figure(design: CharacterDesign, size: float, view: str, rng: np.random.Generator, ink: RGB,
                 line_scale: float, max_height: int | None = None) -> _Figure:
    """Draw a standing figure ``size`` px tall on a transparent canvas (front, back or close-up view)."""
    gain, offset = float(rng.uniform(0.82, 1.15)), rng.normal(0.0, 9.0, 3)
    col = {n: _jitter(getattr(design, n), gain, offset) for n in _PALETTE_ATTRIBUTES}
    s = size
    lw = max(1, int(round(s / 90 * line_scale)))
    width = int(s * 0.62 * design.build) + 8
    height = int(s * 1.02) + 6
    if max_height is not None:
        height = max(8, min(height, max_height))
    img = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    cx = width / 2
    rx = ry = 0.105 * s * design.head_size
    if design.head_shape == "tall":
        rx, ry = rx * 0.84, ry * 1.12
    elif design.head_shape == "wide":
        rx, ry = rx * 1.18, ry * 0.9
    cy = 0.04 * s + ry + 3
    neck = cy + ry * 0.95
    torso_top, torso_bottom = neck + 0.025 * s, neck + 0.36 * s
    half_w = 0.15 * s * design.build
    hip_y = torso_bottom
    # cape behind everything
    if design.accessory == "cape":
        d.polygon([(cx - half_w * 0.9, torso_top), (cx + half_w * 0.9, torso_top),
                   (cx + half_w * 1.6, hip_y + 0.25 * s), (cx - half_w * 1.6, hip_y + 0.25 * s)],
                  fill=_shade(col["accent"], 0.8), outline=ink, width=lw)
    _draw_limbs(d, design, col, rng, s, cx, half_w, torso_top, hip_y, ink, lw)
    # torso with its clothing pattern
    torso = [(cx - half_w, torso_top), (cx + half_w, torso_top), (cx + half_w * 0.8, torso_bottom),
             (cx - half_w * 0.8, torso_bottom)]
    d.polygon(torso, fill=col["shirt"])
    _draw_pattern(img, torso, design.pattern if view != "back" or design.pattern in
                  ("hstripes", "vstripes", "dots", "checker") else "solid", col["accent"], s)
    d.polygon(torso, outline=ink, width=lw)
    d.line([(cx - half_w * 0.8, torso_bottom), (cx + half_w * 0.8, torso_bottom)], fill=ink, width=lw * 2)
    if design.accessory == "scarf":
        d.rounded_rectangle([cx - half_w * 0.7, neck - 0.01 * s, cx + half_w * 0.7, neck + 0.05 * s],
                            radius=0.02 * s, fill=col["accent"], outline=ink, width=lw)
    head_box = (cx - rx, cy - ry, cx + rx, cy + ry)
    _draw_head(d, design, col, view, cx, cy, rx, ry, s, ink, lw)
    return _Figure(img, head_box)


def _draw_limbs(d: ImageDraw.ImageDraw, design: CharacterDesign, col: dict[str, RGB], rng: np.random.Generator,
                s: float, cx: float, half_w: float, torso_top: float, hip_y: float, ink: RGB, lw: int) -> None:
    """Legs, then arms (behind the torso's outline, in sleeves of the shirt colour); the random draws in the
    order the figure has always made them."""
    # legs
    leg_len = 0.98 * s - hip_y
    spread = float(rng.uniform(-0.25, 0.35))
    for side in (-1, 1):
        hx = cx + side * half_w * 0.45
        angle = side * spread + float(rng.normal(0, 0.06))
        fx, fy = hx + math.sin(angle) * leg_len, hip_y + math.cos(angle) * leg_len
        d.line([(hx, hip_y), (fx, fy)], fill=ink, width=int(0.085 * s) + 2 * lw)
        d.line([(hx, hip_y), (fx, fy)], fill=col["pants"], width=int(0.085 * s))
        d.ellipse([fx - 0.05 * s, fy - 0.025 * s, fx + 0.05 * s, fy + 0.02 * s], fill=ink)
    # arms (behind the torso's outline, in sleeves of the shirt colour)
    arm_len = 0.32 * s
    for side in (-1, 1):
        sx, sy = cx + side * half_w * 0.92, torso_top + 0.03 * s
        angle = float(rng.uniform(-0.3, 1.6))
        ex, ey = sx + side * math.sin(angle) * arm_len, sy + math.cos(angle) * arm_len
        d.line([(sx, sy), (ex, ey)], fill=ink, width=int(0.07 * s * design.build) + 2 * lw)
        d.line([(sx, sy), (ex, ey)], fill=col["shirt"], width=int(0.07 * s * design.build))
        d.ellipse([ex - 0.035 * s, ey - 0.035 * s, ex + 0.035 * s, ey + 0.035 * s], fill=col["skin"],
                  outline=ink, width=lw)


def _draw_pattern(img: Image.Image, torso: list[tuple[float, float]], pattern: str, accent: RGB,
                  s: float) -> None:
    if pattern == "solid":
        return
    x0, y0 = int(min(p[0] for p in torso)), int(min(p[1] for p in torso))
    x1, y1 = int(max(p[0] for p in torso)) + 1, int(max(p[1] for p in torso)) + 1
    w, h = max(1, x1 - x0), max(1, y1 - y0)
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    step = max(3, int(0.06 * s))
    if pattern == "hstripes":
        for y in range(0, h, 2 * step):
            d.rectangle([0, y, w, y + step - 1], fill=accent)
    elif pattern == "vstripes":
        for x in range(0, w, 2 * step):
            d.rectangle([x, 0, x + step - 1, h], fill=accent)
    elif pattern == "checker":
        for y in range(0, h, step):
            for x in range((y // step) % 2 * step, w, 2 * step):
                d.rectangle([x, y, x + step - 1, y + step - 1], fill=accent)
    elif pattern == "dots":
        r = max(1, step // 3)
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                d.ellipse([x - r, y - r, x + r, y + r], fill=accent)
    elif pattern == "sash":
        d.line([(0, 0), (w, h)], fill=accent, width=max(2, int(0.07 * s)))
    elif pattern in ("star", "circle"):
        cx, cy, r = w / 2, h * 0.4, min(w, h) * 0.28
        if pattern == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=accent)
            d.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=(250, 250, 250))
        else:
            pts = [(cx + (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5),
                    cy - (r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5)) for k in range(10)]
            d.polygon(pts, fill=accent)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in torso], fill=255)
    img.paste(layer, (x0, y0), Image.composite(layer, Image.new("RGBA", (w, h)), mask).getchannel("A"))


def _draw_head(d: ImageDraw.ImageDraw, design: CharacterDesign, col: dict[str, RGB], view: str, cx: float,
               cy: float, rx: float, ry: float, s: float, ink: RGB, lw: int) -> None:
    box = [cx - rx, cy - ry, cx + rx, cy + ry]
    hair = col["hair"]
    style = design.hair_style
    if style == "long":
        d.rounded_rectangle([cx - rx * 1.15, cy - ry * 0.6, cx + rx * 1.15, cy + ry * 1.5], radius=rx * 0.5,
                            fill=hair, outline=ink, width=lw)
    if design.head_shape == "square":
        d.rounded_rectangle(box, radius=rx * 0.3, fill=col["skin"], outline=ink, width=lw)
    elif design.head_shape == "chin":
        d.polygon([(cx - rx, cy - ry * 0.5), (cx - rx * 0.6, cy - ry), (cx + rx * 0.6, cy - ry),
                   (cx + rx, cy - ry * 0.5), (cx + rx * 0.7, cy + ry * 0.5), (cx, cy + ry),
                   (cx - rx * 0.7, cy + ry * 0.5)], fill=col["skin"], outline=ink, width=lw)
    else:
        d.ellipse(box, fill=col["skin"], outline=ink, width=lw)
    # hair on top
    top = [cx - rx * 1.05, cy - ry * 1.1, cx + rx * 1.05, cy + ry * 0.5]
    if style in ("flat", "long", "bun"):
        d.chord(top, 180, 360, fill=hair, outline=ink, width=lw)
    elif style == "spiky":
        n = 6
        pts = [(cx - rx, cy - ry * 0.2)]
        for k in range(n + 1):
            x = cx - rx + 2 * rx * k / n
            pts.append((x, cy - ry * (1.45 if k % 2 else 0.85)))
        pts.append((cx + rx, cy - ry * 0.2))
        d.polygon(pts, fill=hair, outline=ink, width=lw)
    elif style == "mohawk":
        d.polygon([(cx - rx * 0.22, cy - ry * 0.7), (cx, cy - ry * 1.6), (cx + rx * 0.22, cy - ry * 0.7)],
                  fill=hair, outline=ink, width=lw)
    elif style == "curly":
        for k in range(7):
            a = math.pi * (0.05 + 0.9 * k / 6)
            px, py = cx - math.cos(a) * rx * 0.95, cy - math.sin(a) * ry * 0.95
            r = rx * 0.32
            d.ellipse([px - r, py - r, px + r, py + r], fill=hair, outline=ink, width=lw)
    if style == "bun":
        r = rx * 0.38
        d.ellipse([cx - r, cy - ry * 1.05 - 2 * r, cx + r, cy - ry * 1.05], fill=hair, outline=ink, width=lw)
    if design.accessory == "hat":
        d.rectangle([cx - rx * 1.35, cy - ry * 0.75, cx + rx * 1.35, cy - ry * 0.58], fill=col["accent"],
                    outline=ink, width=lw)
        d.rectangle([cx - rx * 0.8, cy - ry * 1.5, cx + rx * 0.8, cy - ry * 0.7], fill=col["accent"],
                    outline=ink, width=lw)
    if view == "back":
        if style != "bald":
            d.ellipse([cx - rx * 1.02, cy - ry * 1.05, cx + rx * 1.02, cy + ry * 0.8], fill=hair, outline=ink,
                      width=lw)
        return
    _draw_face(d, design, col, cx, cy, rx, ry, ink, lw)


def _draw_face(d: ImageDraw.ImageDraw, design: CharacterDesign, col: dict[str, RGB], cx: float, cy: float,
               rx: float, ry: float, ink: RGB, lw: int) -> None:
    ey, ex = cy - ry * 0.05, rx * 0.42
    er = max(1.0, rx * 0.12)
    for side in (-1, 1):
        x = cx + side * ex
        if design.eyes == "dots":
            d.ellipse([x - er, ey - er, x + er, ey + er], fill=ink)
        elif design.eyes == "round":
            d.ellipse([x - er * 2, ey - er * 2, x + er * 2, ey + er * 2], fill=(255, 255, 255), outline=ink,
                      width=lw)
            d.ellipse([x - er * 0.8, ey - er * 0.8, x + er * 0.8, ey + er * 0.8], fill=ink)
        elif design.eyes == "narrow":
            d.line([(x - er * 2, ey), (x + er * 2, ey - side * er * 0.6)], fill=ink, width=max(lw, 2))
        elif design.eyes == "big":
            d.ellipse([x - er * 2.2, ey - er * 3, x + er * 2.2, ey + er * 2], fill=(255, 255, 255),
                      outline=ink,
                      width=lw)
            d.ellipse([x - er * 1.4, ey - er * 1.8, x + er * 1.4, ey + er * 1.4], fill=col["accent"])
            d.ellipse([x - er * 0.5, ey - er * 1.2, x + er * 0.2, ey - er * 0.5], fill=(255, 255, 255))
    if design.eyes == "visor":
        d.rounded_rectangle([cx - rx * 0.85, ey - er * 1.5, cx + rx * 0.85, ey + er * 1.5], radius=er,
                            fill=col["accent"], outline=ink, width=lw)
    if design.accessory == "glasses" and design.eyes != "visor":
        for side in (-1, 1):
            x = cx + side * ex
            d.ellipse([x - er * 2.6, ey - er * 2.3, x + er * 2.6, ey + er * 2.3], outline=ink,
                      width=max(lw, 2))
        d.line([(cx - ex + er * 2.6, ey), (cx + ex - er * 2.6, ey)], fill=ink, width=max(lw, 2))
    my, mw = cy + ry * 0.5, rx * 0.38
    if design.mouth == "line":
        d.line([(cx - mw, my), (cx + mw, my)], fill=ink, width=max(lw, 2))
    elif design.mouth == "smile":
        d.arc([cx - mw, my - mw * 0.9, cx + mw, my + mw * 0.5], 20, 160, fill=ink, width=max(lw, 2))
    elif design.mouth == "open":
        d.ellipse([cx - mw * 0.5, my - mw * 0.45, cx + mw * 0.5, my + mw * 0.45], fill=(120, 20, 30),
                  outline=ink, width=lw)
    elif design.mouth == "frown":
        d.arc([cx - mw, my - mw * 0.2, cx + mw, my + mw * 1.0], 200, 340, fill=ink, width=max(lw, 2))
    elif design.mouth == "beard":
        d.polygon([(cx - rx * 0.8, cy + ry * 0.2), (cx + rx * 0.8, cy + ry * 0.2),
                   (cx + rx * 0.45, cy + ry * 1.05), (cx, cy + ry * 1.25), (cx - rx * 0.45, cy + ry * 1.05)],
                  fill=col["hair"], outline=ink, width=lw)
        d.line([(cx - mw * 0.6, my - ry * 0.05), (cx + mw * 0.6, my - ry * 0.05)], fill=ink, width=max(lw, 2))


def _affine(fig: _Figure, angle: float, shear: float, flip: bool) -> _Figure:
    """Flip, shear and rotate a figure about its centre; the head box follows (bbox of its corners)."""
    img = fig.image
    x0, y0, x1, y1 = fig.head_box
    w, h = img.size
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x0, x1 = w - x1, w - x0
    if angle == 0.0 and shear == 0.0:
        return _Figure(img, (x0, y0, x1, y1))
    c, s = math.cos(angle), math.sin(angle)
    forward = np.array([[c, -s], [s, c]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    centre = np.array([w / 2, h / 2])
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], dtype=float) - centre
    moved = corners @ forward.T
    lo, hi = moved.min(axis=0), moved.max(axis=0)
    size = (int(math.ceil(hi[0] - lo[0])), int(math.ceil(hi[1] - lo[1])))
    inverse = np.linalg.inv(forward)
    shift = inverse @ lo + centre
    data = (inverse[0, 0], inverse[0, 1], shift[0], inverse[1, 0], inverse[1, 1], shift[1])
    out = img.transform(size, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)
    head = (np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) - centre) @ forward.T - lo
    return _Figure(out, (*head.min(axis=0), *head.max(axis=0)))
