"""A page's scene and its panels: background, placing characters, occlusion, balloons, boxes, finish."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from reid.core.data.synthetic import inked as inked_style
from reid.core.data.synthetic.cast import RGB, CharacterDesign, _pick
from reid.core.data.synthetic.config import SyntheticConfig
from reid.core.data.synthetic.drawing import _affine, _draw_figure, _jitter, _shade

_BACKGROUNDS = ("gradient", "radial", "hatch", "halftone", "city", "speedlines", "interior")
_BG_COLORS = ((250, 240, 210), (200, 225, 250), (230, 200, 230), (210, 240, 210), (250, 215, 180),
              (160, 180, 210), (240, 190, 170), (230, 230, 230), (120, 130, 170), (255, 250, 200),
              (180, 210, 200), (90, 100, 130))


@dataclass(frozen=True)
class _Scene:
    """What the panels of one page share: location look, lighting, and which characters are present."""

    background: str
    colors: tuple[RGB, RGB]
    tint: tuple[float, float, float]
    members: tuple[int, ...]


@dataclass
class _Placed:
    """One character drawn in a panel and what of it is annotated."""

    member: int
    view: str
    char_index: int = -1
    face_box: tuple[int, int, int, int] | None = None
    body_box: tuple[int, int, int, int] | None = None
    face_visible: float = 0.0
    body_visible: float = 0.0
    bubbles: list[list[int]] = field(default_factory=list)
    face_id: str | None = None
    body_id: str | None = None


def _background(rng: np.random.Generator, scene: _Scene, w: int, h: int) -> Image.Image:
    c1 = np.array(_jitter(scene.colors[0], float(rng.uniform(0.9, 1.1)), rng.normal(0, 6, 3)), np.float32)
    c2 = np.array(_jitter(scene.colors[1], float(rng.uniform(0.9, 1.1)), rng.normal(0, 6, 3)), np.float32)
    # the gradient is smooth: compute it on a 4x coarser grid and let PIL upsample it
    gw, gh = w // 4 + 2, h // 4 + 2
    xs, ys = np.arange(gw, dtype=np.float32)[None, :], np.arange(gh, dtype=np.float32)[:, None]
    if scene.background in ("radial", "speedlines"):
        fx, fy = float(rng.uniform(0.2, 0.8)) * gw, float(rng.uniform(0.2, 0.8)) * gh
        t = np.sqrt((xs - fx) ** 2 + (ys - fy) ** 2)
    else:
        a = float(rng.uniform(0, 2 * math.pi))
        t = xs * math.cos(a) + ys * math.sin(a)
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    coarse = Image.fromarray((c1 + t[..., None] * (c2 - c1)).astype(np.uint8), "RGB")
    img = coarse.resize((w, h), Image.Resampling.BILINEAR, box=(0, 0, (w - 1) / 4 + 0.5, (h - 1) / 4 + 0.5))
    if scene.background == "halftone":
        p = int(rng.integers(5, 10))
        fx, fy = np.arange(w) % p - p / 2, np.arange(h) % p - p / 2
        r = float(rng.uniform(0.2, 0.45)) * p
        dots = (fx[None, :] ** 2 + fy[:, None] ** 2) < r**2
        pixels = np.asarray(img)
        img = Image.fromarray(np.where(dots[..., None], (pixels * 0.75).astype(np.uint8), pixels), "RGB")
    d = ImageDraw.Draw(img)
    dark = tuple(int(v * 0.6) for v in c2)
    if scene.background == "hatch":
        step, a = int(rng.integers(6, 13)), float(rng.uniform(0.3, 1.3))
        dx, dy = math.cos(a) * (w + h), math.sin(a) * (w + h)
        for k in range(-(w + h), w + h, step):
            d.line([(k, 0), (k + dx, dy)], fill=dark, width=1)
    elif scene.background == "city":
        x = int(rng.integers(-20, 0))
        while x < w:
            bw, bh = int(rng.integers(w // 8, w // 3)), int(rng.uniform(0.25, 0.7) * h)
            d.rectangle([x, h - bh, x + bw, h], fill=_shade(tuple(dark), float(rng.uniform(0.8, 1.4))),
                        outline=(30, 30, 30))
            for wy in range(h - bh + 8, h - 8, 14):
                for wx in range(x + 5, x + bw - 8, 12):
                    d.rectangle([wx, wy, wx + 5, wy + 6], fill=(250, 240, 150))
            x += bw + int(rng.integers(0, 10))
    elif scene.background == "speedlines":
        fx, fy = float(rng.uniform(0.3, 0.7)) * w, float(rng.uniform(0.3, 0.7)) * h
        for _ in range(int(rng.integers(25, 50))):
            a, spread = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.01, 0.03))
            r = w + h
            d.polygon([(fx, fy), (fx + r * math.cos(a), fy + r * math.sin(a)),
                       (fx + r * math.cos(a + spread), fy + r * math.sin(a + spread))], fill=dark)
    elif scene.background == "interior":
        floor = int(rng.uniform(0.6, 0.8) * h)
        d.polygon([(0, floor), (w, floor), (w, h), (0, h)], fill=_shade(tuple(dark), 1.3))
        wx, wy = int(rng.uniform(0.1, 0.6) * w), int(rng.uniform(0.1, 0.3) * h)
        d.rectangle([wx, wy, wx + w // 4, wy + h // 4], fill=(200, 230, 250), outline=(40, 30, 20), width=3)
    return img


def _make_scene(rng: np.random.Generator, cast: list[CharacterDesign], weights: np.ndarray) -> _Scene:
    n = len(cast)
    k = min(n, int(rng.integers(2, 6)))
    members = [int(m) for m in rng.choice(n, k, replace=False, p=weights)]
    by_identity = {c.identity: c.member for c in cast}
    for m in list(members):  # bring look-alikes into the same scene: the hard negatives of a window
        c = cast[m]
        partners = [by_identity[c.lookalike_of]] if c.lookalike_of else [
            o.member for o in cast if o.lookalike_of == c.identity]
        for p in partners:
            if p not in members and rng.random() < 0.6:
                members.append(p)
    i, j = rng.choice(len(_BG_COLORS), 2, replace=False)
    tint = (1.0, 1.0, 1.0) if rng.random() < 0.6 else tuple(float(v) for v in rng.uniform(0.75, 1.08, 3))
    return _Scene(_pick(rng, _BACKGROUNDS), (_BG_COLORS[int(i)], _BG_COLORS[int(j)]), tint, tuple(members))


def _cast_panel(rng: np.random.Generator, cfg: SyntheticConfig, scene: _Scene, weights: np.ndarray, n_cast: int,
                n_extras: int) -> list[_Placed]:
    """Who is in one panel and how seen: 1..max characters of the scene, plus (inked style) 0-2 unnamed extras
    (member indices after the cast's); at most one close-up, never an extra's."""
    scene_w = weights[list(scene.members)] / weights[list(scene.members)].sum()
    most = min(cfg.max_chars_per_panel, len(scene.members))
    count_p = np.array([1.0, 1.5, 1.0, 0.6, 0.3, 0.2][:most])
    n = 1 + int(rng.choice(most, p=count_p / count_p.sum()))
    picks = rng.choice(len(scene.members), n, replace=False, p=scene_w)
    members = [int(scene.members[int(i)]) for i in picks]
    if cfg.style == "inked" and n_extras:
        members += [n_cast + int(k) for k in rng.choice(n_extras, min(2, int(rng.poisson(cfg.extras_rate))),
                                                          replace=False)]
    placed: list[_Placed] = []
    for m in members:
        u = rng.random()
        view = ("closeup" if u < cfg.closeup_rate else
                "back" if u < cfg.closeup_rate + cfg.back_view_rate else "front")
        if view == "closeup" and (any(p.view == "closeup" for p in placed) or m >= n_cast):
            view = "front"
        placed.append(_Placed(m, view))
    return placed


def _layout(rng: np.random.Generator, cfg: SyntheticConfig, figures: list[CharacterDesign], placed: list[_Placed],
            w: int, h: int) -> list[tuple[_Placed, float, float, float]]:
    """(character, size, centre x, top) of every figure in drawing order: far (small) figures first, the
    close-up last, so that later figures occlude earlier ones."""
    inked = cfg.style == "inked"
    standing = [p for p in placed if p.view != "closeup"]
    slots = rng.permutation(len(standing))
    if inked:
        shots = [inked_style.panel_figure_size(rng, h, figures[p.member].height, len(placed)) for p in standing]
        sizes = [size for size, _ in shots]
    else:
        shots = [(0.0, "full")] * len(standing)
        sizes = [h * float(rng.uniform(0.5, 0.95)) * figures[p.member].height * (1 - 0.08 * (len(placed) - 1))
                 for p in standing]
    draw_list: list[tuple[_Placed, float, float, float]] = []
    for i in sorted(range(len(standing)), key=lambda i: sizes[i]):
        slot_w = w / len(standing)
        x = (int(slots[i]) + 0.5 + float(rng.uniform(-0.3, 0.3))) * slot_w
        if shots[i][1] == "medium":  # the head in the upper part, the legs below the panel's border
            top = h * float(rng.uniform(-0.02, 0.2))
        else:
            top = h * float(rng.uniform(0.88, 1.25)) - sizes[i]
        if inked and rng.random() < 0.15:  # cut by the panel's left or right border
            x = float(rng.choice([0.0, w])) + float(rng.uniform(-0.12, 0.12)) * sizes[i]
        draw_list.append((standing[i], sizes[i], x, max(top, -0.06 * sizes[i])))
    for p in placed:
        if p.view == "closeup":
            size = h * float(rng.uniform(1.6, 2.6) if inked else rng.uniform(1.5, 2.3))
            draw_list.append((p, size, w * float(rng.uniform(0.3, 0.7)), h * float(rng.uniform(0.0, 0.15))))
    return draw_list


def _render_panel(rng: np.random.Generator, cfg: SyntheticConfig, cast: list[CharacterDesign],
                  weights: np.ndarray, scene: _Scene, style: dict[str, Any],
                  extras: list[CharacterDesign] | None = None) -> tuple[Image.Image, list[_Placed]]:
    """Draw one panel of ``scene``; ``extras`` (inked style) are unnamed passers-by, indexed after the cast."""
    inked = cfg.style == "inked"
    w = int(rng.integers(cfg.min_panel_size, cfg.max_panel_size + 1))
    h = int(rng.integers(cfg.min_panel_size, cfg.max_panel_size + 1))
    img = _background(rng, scene, w, h)
    figures = cast + (extras or [])
    placed = _cast_panel(rng, cfg, scene, weights, len(cast), len(extras or []))
    draw_list = _layout(rng, cfg, figures, placed, w, h)
    owner = np.full((h, w), -1, np.int16)
    stats: list[tuple[int, int, tuple[int, int, int, int]]] = []
    for k, (p, size, x, top) in enumerate(draw_list):
        p.char_index = k
        design = inked_style.appearance(figures[p.member], rng) if inked else cast[p.member]
        fig = _draw_figure(design, size, p.view, rng, style["ink"], style["line_scale"],
                           max_height=int(h - top + 0.15 * size) if p.view == "closeup" else None)
        tilt = 0.35 if p.view != "closeup" else 0.15
        angle = float(rng.uniform(-tilt, tilt)) * 0.5 if rng.random() < 0.7 else 0.0
        shear = float(rng.uniform(-0.25, 0.25)) if rng.random() < 0.6 else 0.0
        fig = _affine(fig, angle, shear, flip=bool(rng.random() < 0.5))
        fw, fh = fig.image.size
        left, upper = int(round(x - fw / 2)), int(round(top))
        img.paste(fig.image, (left, upper), fig.image)
        alpha = np.asarray(fig.image.getchannel("A")) > 127
        hx0, hy0, hx1, hy1 = (int(math.floor(fig.head_box[0])), int(math.floor(fig.head_box[1])),
                              int(math.ceil(fig.head_box[2])), int(math.ceil(fig.head_box[3])))
        face_full = int(alpha[max(0, hy0):max(0, hy1), max(0, hx0):max(0, hx1)].sum())
        body_full = int(alpha.sum())
        _stamp(owner, alpha, left, upper, k)
        stats.append((face_full, body_full, (hx0 + left, hy0 + upper, hx1 + left, hy1 + upper)))
    heads = {p.char_index: ((head[0] + head[2]) / 2, (head[1] + head[3]) / 2)
             for (p, *_), (_, _, head) in zip(draw_list, stats, strict=True)}
    _add_balloons(rng, img, owner, placed, heads, scene, w, h)
    for (p, *_), (face_full, body_full, head) in zip(draw_list, stats, strict=True):
        _annotate(p, owner, face_full, body_full, head, w, h)
    if inked:
        return inked_style.finish_inked(rng, img, style), placed
    _finish(rng, img, scene, style)
    return img, placed


def _stamp(owner: np.ndarray, alpha: np.ndarray, left: int, upper: int, value: int) -> None:
    """Mark the panel pixels covered by ``alpha`` pasted at (left, upper) as owned by ``value``."""
    h, w = owner.shape
    fh, fw = alpha.shape
    x0, y0, x1, y1 = max(0, left), max(0, upper), min(w, left + fw), min(h, upper + fh)
    if x0 >= x1 or y0 >= y1:
        return
    region = owner[y0:y1, x0:x1]
    region[alpha[y0 - upper:y1 - upper, x0 - left:x1 - left]] = value


def _clip_box(box: tuple[int, int, int, int], w: int, h: int) -> tuple[int, int, int, int] | None:
    x0, y0, x1, y1 = max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _annotate(p: _Placed, owner: np.ndarray, face_full: int, body_full: int,
              head: tuple[int, int, int, int], w: int, h: int) -> None:
    """Decide which boxes of a drawn character are annotated, from what of it is still visible.

    The body box spans the figure's visible pixels; the face box is the head region clipped to the panel
    and to the body box. A box whose visible share is too small is not annotated.
    """
    mine = owner == p.char_index
    p.body_visible = float(mine.sum()) / max(1, body_full)
    cols, rows = np.flatnonzero(mine.any(axis=0)), np.flatnonzero(mine.any(axis=1))
    body = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1) if len(cols) else None
    face = _clip_box(head, w, h)
    if face is not None:
        p.face_visible = float(mine[face[1]:face[3], face[0]:face[2]].sum()) / max(1, face_full)
    if p.view != "closeup" and body is not None and p.body_visible >= 0.3:
        p.body_box = body
    if (p.view != "back" and face is not None and p.face_visible >= 0.45
            and min(face[2] - face[0], face[3] - face[1]) >= 10):
        if p.body_box is not None:
            b = p.body_box
            face = (max(face[0], b[0]), max(face[1], b[1]), min(face[2], b[2]), min(face[3], b[3]))
        if face[2] > face[0] and face[3] > face[1]:
            p.face_box = face


def _add_balloons(rng: np.random.Generator, img: Image.Image, owner: np.ndarray, placed: list[_Placed],
                  heads: dict[int, tuple[float, float]], scene: _Scene, w: int, h: int) -> None:
    """Draw 0-2 speech balloons above the speakers' heads (or with a tail off-panel) and record them.

    Balloons occlude what is under them: their pixels are marked in ``owner`` (value -2).
    """
    speakers = [p for p in placed if p.view != "back"]
    off_panel = [m for m in scene.members if m not in {p.member for p in placed}]
    d = ImageDraw.Draw(img)
    mask = Image.new("L", (w, h), 0)
    md = ImageDraw.Draw(mask)
    for _ in range(int(rng.choice(3, p=[0.4, 0.4, 0.2]))):
        if off_panel and (not speakers or rng.random() < 0.2):
            speaker = _Placed(off_panel[int(rng.integers(len(off_panel)))], "offpanel")
            placed.append(speaker)  # speech only: no box, not drawn
            target = (float(rng.choice([0, w])), h * 0.5)
        elif speakers:
            speaker = speakers[int(rng.integers(len(speakers)))]
            target = heads[speaker.char_index]
        else:
            return
        bw, bh = int(rng.uniform(0.28, 0.45) * w), int(rng.uniform(0.12, 0.2) * h)
        if speaker.view != "offpanel" and rng.random() < 0.5:  # beside the head rather than above it
            x = target[0] + 0.08 * w if target[0] < w / 2 else target[0] - 0.08 * w - bw
        else:
            x = target[0] - bw / 2 + rng.uniform(-0.2, 0.2) * w
        bx = int(min(max(2, x), w - bw - 2))
        by = int(rng.uniform(0.02, 0.08) * h)
        box = [bx, by, bx + bw, by + bh]
        tail = [(bx + bw * 0.4, by + bh * 0.8), (bx + bw * 0.6, by + bh * 0.8),
                (target[0] * 0.5 + (bx + bw / 2) * 0.5, by + bh * 1.6)]
        d.polygon(tail, fill=(255, 255, 255), outline=(0, 0, 0))
        d.ellipse(box, fill=(255, 255, 255), outline=(0, 0, 0), width=2)
        md.polygon(tail, fill=255)
        md.ellipse(box, fill=255)
        for row in range(1, 3):
            y = by + bh * row / 3
            d.line([(bx + bw * 0.22, y), (bx + bw * float(rng.uniform(0.55, 0.78)), y)], fill=(40, 40, 40),
                   width=2)
        speaker.bubbles.append([max(0, bx), max(0, by), min(w, bx + bw), min(h, by + bh)])
    owner[np.asarray(mask) > 0] = -2


def _finish(rng: np.random.Generator, img: Image.Image, scene: _Scene, style: dict[str, Any]) -> None:
    """Line noise, lighting tint, pixel noise and the panel border, in place."""
    w, h = img.size
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 10))):
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        a, length = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(5, 30))
        d.line([(x, y), (x + length * math.cos(a), y + length * math.sin(a))], fill=style["ink"], width=1)
    # pixel noise: a random window of the series' noise tile (cheaper than fresh noise per panel)
    tile = style["noise_tile"]
    ox, oy = int(rng.integers(0, tile.shape[1] - w + 1)), int(rng.integers(0, tile.shape[0] - h + 1))
    pixels = np.asarray(img, dtype=np.int16) + tile[oy:oy + h, ox:ox + w]
    if scene.tint != (1.0, 1.0, 1.0):
        pixels = pixels * np.asarray(scene.tint, np.float32)
    img.paste(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"))
    ImageDraw.Draw(img).rectangle([0, 0, w - 1, h - 1], outline=(0, 0, 0), width=style["border"])
