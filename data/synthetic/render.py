"""Pictures, backgrounds and scenes: what each synthetic frame shows and where every object's box is.

An object's box is the tight bound of its alpha mask (alpha > ``alpha_threshold``) as actually pasted into the
frame, after scaling, rotation and clipping to the frame. Boxes are ``(x0, y0, x1, y1)`` pixel edges, x1/y1
exclusive, so the COCO box is ``[x0, y0, x1 - x0, y1 - y0]``.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data.synthetic.catalogue import ClassSpec

log = logging.getLogger(__name__)

EMOJI_SIZE = 109            # the only size NotoColorEmoji's bitmap strikes load at
BACKGROUND_PHOTOS = ("astronaut", "brick", "camera", "cat", "chelsea", "coffee", "coins", "grass", "gravel",
                     "horse", "moon", "rocket", "hubble_deep_field", "immunohistochemistry", "clock", "page", "text")
Box = tuple[int, int, int, int]
MAX_OVERLAP = 0.3           # silent objects whose box would overlap another's by more (over the smaller) are dropped


# ----------------------------------------------------------------------------------------------------- pictures


@functools.lru_cache(maxsize=64)
def emoji_sprite(glyph: str, font_path: str) -> np.ndarray:
    """The glyph rendered at the font's native size, cropped to its alpha bounds: uint8 (h, w, 4) RGBA.

    Raises ValueError when the font draws nothing for ``glyph`` (missing from the font)."""
    font = ImageFont.truetype(font_path, EMOJI_SIZE)
    canvas = Image.new("RGBA", (EMOJI_SIZE * 2, EMOJI_SIZE * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((8, 8), glyph, font=font, embedded_color=True)
    bbox = canvas.getbbox()
    if bbox is None:
        raise ValueError(f"emoji font {font_path} draws nothing for {glyph!r}")
    return np.asarray(canvas.crop(bbox)).copy()


def emoji_available(font_path: str, glyphs: list[str]) -> bool:
    """True when the font file loads and draws every glyph in colour."""
    if not Path(font_path).is_file():
        return False
    try:
        return all(emoji_sprite(g, font_path)[..., :3].std() > 10 for g in glyphs)
    except (OSError, ValueError) as e:
        log.warning("emoji font %s unusable: %s", font_path, e)
        return False


def _polygon(shape: str, c: float, r: float) -> list[tuple[float, float]]:
    """Vertices of the regular-ish fallback shapes around centre (c, c) with radius r."""
    def ngon(n, rot=-90.0, radii=(1.0,)):
        return [(c + r * radii[i % len(radii)] * math.cos(math.radians(rot + 360 * i / n)),
                 c + r * radii[i % len(radii)] * math.sin(math.radians(rot + 360 * i / n))) for i in range(n)]
    table = {"triangle": lambda: ngon(3), "triangle_down": lambda: ngon(3, rot=90), "diamond": lambda: ngon(4),
             "pentagon": lambda: ngon(5), "hexagon": lambda: ngon(6, rot=0), "star": lambda: ngon(10, radii=(1, .45)),
             "cross": lambda: [(c + r * x, c + r * y) for x, y in ((-.3, -1), (.3, -1), (.3, -.3), (1, -.3), (1, .3),
                               (.3, .3), (.3, 1), (-.3, 1), (-.3, .3), (-1, .3), (-1, -.3), (-.3, -.3))]}
    return table[shape]()


@functools.lru_cache(maxsize=64)
def shape_sprite(shape: str, colour: tuple[int, int, int], size: int = 128) -> np.ndarray:
    """Numpy-fallback picture: a filled shape in the class colour with a dark outline. uint8 (h, w, 4), cropped."""
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    c, r = size / 2, size * 0.46
    fill, outline = (*colour, 255), (20, 20, 20, 255)
    if shape == "circle":
        draw.ellipse((c - r, c - r, c + r, c + r), fill=fill, outline=outline, width=4)
    elif shape == "ellipse":
        draw.ellipse((c - r * 0.6, c - r, c + r * 0.6, c + r), fill=fill, outline=outline, width=4)
    elif shape == "ring":
        draw.ellipse((c - r, c - r, c + r, c + r), fill=fill, outline=outline, width=4)
        draw.ellipse((c - r * .45, c - r * .45, c + r * .45, c + r * .45), fill=(250, 250, 250, 255))
    elif shape in ("square", "rounded"):
        draw.rounded_rectangle((c - r, c - r * .8, c + r, c + r * .8), radius=4 if shape == "square" else r * .4,
                               fill=fill, outline=outline, width=4)
    elif shape == "bar":
        draw.rectangle((c - r, c - r * .22, c + r, c + r * .22), fill=fill, outline=outline, width=4)
    else:
        draw.polygon(_polygon(shape, c, r), fill=fill, outline=outline, width=4)
    return np.asarray(img.crop(img.getbbox())).copy()


def class_sprite(spec: ClassSpec, picture_backend: str, font_path: str) -> np.ndarray:
    """The class's base picture, uint8 (h, w, 4): its emoji ("emoji") or its coloured shape ("shapes")."""
    if picture_backend == "emoji":
        return emoji_sprite(spec.glyph, font_path)
    return shape_sprite(spec.shape, spec.colour)


def render_object(sprite: np.ndarray, size_px: int, angle_deg: float, gains: np.ndarray,
                  alpha_threshold: int) -> np.ndarray:
    """Scale ``sprite`` so its longer side is ``size_px``, rotate by ``angle_deg`` and colour-jitter it by ``gains``
    (3,). Returns uint8 (h, w, 4) cropped to the bounds of alpha > ``alpha_threshold``."""
    img = Image.fromarray(sprite)
    s = size_px / max(img.size)
    img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.LANCZOS)
    img = img.rotate(angle_deg, resample=Image.BICUBIC, expand=True)
    out = np.asarray(img).astype(np.float32)
    out[..., :3] = np.clip(out[..., :3] * gains, 0, 255)
    mask = out[..., 3] > alpha_threshold
    ys, xs = np.nonzero(mask)
    return out[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8)


def paste_object(frame: np.ndarray, obj: np.ndarray, x: int, y: int, alpha_threshold: int
                 ) -> tuple[np.ndarray, Box | None]:
    """Alpha-blend ``obj`` (h, w, 4) into ``frame`` (H, W, 3) float32 in place with its top-left at (x, y).

    Returns the object's mask in frame coordinates, bool (H, W), and its tight box (None if fully outside)."""
    H, W = frame.shape[:2]
    h, w = obj.shape[:2]
    fx0, fy0, fx1, fy1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    mask = np.zeros((H, W), bool)
    if fx0 >= fx1 or fy0 >= fy1:
        return mask, None
    part = obj[fy0 - y:fy1 - y, fx0 - x:fx1 - x].astype(np.float32)
    a = part[..., 3:] / 255.0
    region = frame[fy0:fy1, fx0:fx1]
    region *= 1.0 - a
    region += a * part[..., :3]
    mask[fy0:fy1, fx0:fx1] = part[..., 3] > alpha_threshold
    return mask, mask_box(mask)


def mask_box(mask: np.ndarray) -> Box | None:
    """Tight ``(x0, y0, x1, y1)`` (exclusive ends) of a bool (H, W) mask; None when empty."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# ---------------------------------------------------------------------------------------------------- backgrounds


@functools.lru_cache(maxsize=1)
def background_photos() -> tuple[tuple[str, Image.Image], ...]:
    """scikit-image's bundled photos as RGB PIL images; ones that need a download (or fail) are skipped."""
    import skimage.data
    photos = []
    for name in BACKGROUND_PHOTOS:
        try:
            arr = np.asarray(getattr(skimage.data, name)())
        except Exception as e:  # noqa: BLE001 - any download/IO failure just drops that photo
            log.info("background photo %s unavailable (%s); skipped", name, type(e).__name__)
            continue
        arr = (arr * 255).astype(np.uint8) if arr.dtype == bool else arr.astype(np.uint8)
        arr = np.stack([arr] * 3, -1) if arr.ndim == 2 else arr[..., :3]
        photos.append((name, Image.fromarray(np.ascontiguousarray(arr))))
    if not photos:
        raise RuntimeError("no scikit-image background photo could be loaded; is scikit-image installed?")
    return tuple(photos)


@dataclass
class BackgroundTrack:
    """A crop window panning slowly over one photo, with a colour jitter."""
    photo: int                      # index into background_photos()
    x: float
    y: float
    side: float                     # crop side in photo pixels
    vx: float                       # pan, photo pixels per frame
    vy: float
    gains: tuple[float, float, float]
    channel_order: tuple[int, int, int]

    def render(self, t: int, size: int) -> np.ndarray:
        """Frame ``t``'s background, float32 (size, size, 3) in 0..255."""
        img = background_photos()[self.photo][1]
        x = min(max(self.x + self.vx * t, 0.0), img.width - self.side)
        y = min(max(self.y + self.vy * t, 0.0), img.height - self.side)
        crop = img.resize((size, size), Image.BILINEAR, box=(x, y, x + self.side, y + self.side))
        arr = np.asarray(crop, dtype=np.float32)[..., list(self.channel_order)]
        return np.clip(arr * np.asarray(self.gains, np.float32), 0, 255)


def plan_background(rng: np.random.Generator, num_frames: int) -> BackgroundTrack:
    """Random photo, crop (40-100% of the shorter side), slow pan and colour jitter."""
    photos = background_photos()
    k = int(rng.integers(len(photos)))
    w, h = photos[k][1].size
    side = float(rng.uniform(0.4, 1.0) * min(w, h))
    x, y = float(rng.uniform(0, w - side)), float(rng.uniform(0, h - side))
    pan = rng.uniform(-0.15, 0.15, size=2) * side / max(num_frames, 1)
    gains = tuple(float(g) for g in rng.uniform(0.75, 1.15) * rng.uniform(0.85, 1.15, size=3))
    order = tuple(int(c) for c in rng.permutation(3)) if rng.random() < 0.3 else (0, 1, 2)
    return BackgroundTrack(k, x, y, side, float(pan[0]), float(pan[1]), gains, order)


# --------------------------------------------------------------------------------------------------------- scenes


@dataclass
class ObjectTrack:
    """One object in a clip: its rendered picture and a straight, slow drift."""
    class_index: int
    sounding: bool
    image: np.ndarray               # uint8 (h, w, 4), already scaled, rotated, jittered
    x: float                        # top-left at frame 0, pixels
    y: float
    vx: float                       # pixels per frame
    vy: float

    def position(self, t: int) -> tuple[int, int]:
        """Integer top-left at frame ``t``."""
        return int(round(self.x + self.vx * t)), int(round(self.y + self.vy * t))


@dataclass
class Scene:
    """Everything needed to draw any frame of a clip; objects are listed back to front."""
    class_index: int                # the sounding class
    size: int
    background: BackgroundTrack
    objects: list[ObjectTrack]
    alpha_threshold: int


def _start_range(extent: int, size: int, travel: float) -> tuple[float, float]:
    """Top-left positions keeping >= 85% of an ``extent``-wide object inside at both ends of its ``travel``."""
    lo, hi = -0.15 * extent, size - 0.85 * extent
    return lo - min(0.0, travel), hi - max(0.0, travel)


def _cover(a: Box, b: Box) -> float:
    """Intersection of two boxes over the smaller one's area (1 = one hides inside the other)."""
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return max(iw, 0) * max(ih, 0) / float(max(smaller, 1))


def _path_boxes(x: float, y: float, vx: float, vy: float, w: int, h: int, num_frames: int) -> list[Box]:
    """The object's box at the first, middle and last frame (motion is linear)."""
    out = []
    for t in (0, (num_frames - 1) / 2, num_frames - 1):
        bx, by = int(x + vx * t), int(y + vy * t)
        out.append((bx, by, bx + w, by + h))
    return out


def _place(image: np.ndarray, size: int, speed: float, num_frames: int, taken: list[list[Box]],
           rng: np.random.Generator, tries: int = 30) -> tuple[tuple[float, float, float, float], float]:
    """Start position and velocity for ``image`` keeping its path off the objects ``taken`` (their paths) as well
    as it can in ``tries``; returns the placement and its worst overlap (intersection over the smaller box)."""
    h, w = image.shape[:2]
    best = None
    for _ in range(tries):
        heading = rng.uniform(0, 2 * math.pi)
        vx, vy = speed * math.cos(heading) * rng.random(), speed * math.sin(heading) * rng.random()
        (xl, xh), (yl, yh) = (_start_range(w, size, vx * (num_frames - 1)),
                              _start_range(h, size, vy * (num_frames - 1)))
        if xl > xh or yl > yh:
            vx = vy = 0.0
            (xl, xh), (yl, yh) = _start_range(w, size, 0.0), _start_range(h, size, 0.0)
        x, y = float(rng.uniform(xl, max(xl, xh))), float(rng.uniform(yl, max(yl, yh)))
        path = _path_boxes(x, y, vx, vy, w, h, num_frames)
        overlap = max((_cover(a, b) for other in taken for a, b in zip(path, other)), default=0.0)
        if best is None or overlap < best[0]:
            best = (overlap, (x, y, vx, vy), path)
        if overlap < 0.1:
            break
    taken.append(best[2])
    return best[1], best[0]


def plan_scene(cfg, sprites: list[np.ndarray], class_index: int, rng: np.random.Generator,
               second: int | None = None) -> Scene:
    """Random scene for sounding class ``class_index``: its object (sometimes two), 0..max_silent_objects silent
    objects of other classes, a background. ``second``: a second sounding class (a duet: one object of each, the
    silent ones of neither). ``cfg`` is a SynthConfig; ``sprites`` the base pictures per class."""
    n_cls, size = len(sprites), cfg.frame_size
    others = [c for c in range(n_cls) if c != class_index and c != second]
    n_silent = min(int(rng.integers(0, cfg.max_silent_objects + 1)), len(others))
    if second is None:
        members = [(class_index, True)] + ([(class_index, True)] if rng.random() < cfg.p_second_instance else [])
    else:
        members = [(class_index, True), (second, True)]
    members += [(int(c), False) for c in rng.choice(others, size=n_silent, replace=False)] if n_silent else []
    speed = cfg.drift * size / cfg.fps
    objects, taken = [], []
    for cls, sounding in members:
        size_px = max(8, int(round(rng.uniform(cfg.scale_min, cfg.scale_max) * size)))
        angle = float(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))
        gains = (rng.uniform(1 - cfg.colour_jitter, 1 + cfg.colour_jitter)
                 * rng.uniform(1 - cfg.colour_jitter, 1 + cfg.colour_jitter, size=3)).astype(np.float32)
        image = render_object(sprites[cls], size_px, angle, gains, cfg.alpha_threshold)
        (x, y, vx, vy), overlap = _place(image, size, speed, cfg.num_frames, taken, rng)
        if overlap > MAX_OVERLAP and not sounding:
            taken.pop()             # a silent object that would hide behind (or hide) another: leave it out
            continue
        objects.append(ObjectTrack(cls, sounding, image, x, y, vx, vy))
    order = rng.permutation(len(objects))
    return Scene(class_index, size, plan_background(rng, cfg.num_frames), [objects[i] for i in order],
                 cfg.alpha_threshold)


def render_frame(scene: Scene, t: int) -> tuple[np.ndarray, list[np.ndarray], list[Box | None]]:
    """Frame ``t``: uint8 (H, W, 3), and per object (in ``scene.objects`` order) its bool (H, W) mask and box."""
    frame = scene.background.render(t, scene.size)
    masks, boxes = [], []
    for obj in scene.objects:
        x, y = obj.position(t)
        mask, box = paste_object(frame, obj.image, x, y, scene.alpha_threshold)
        masks.append(mask)
        boxes.append(box)
    return np.clip(frame + 0.5, 0, 255).astype(np.uint8), masks, boxes


# -------------------------------------------------------------------------------------------------- contact sheet


def contact_sheet(items: list[tuple[np.ndarray, list[tuple[Box, str, bool]]]], cell: int = 256,
                  cols: int = 4) -> Image.Image:
    """Grid of frames with their boxes: sounding objects in green, silent ones in red, class names on top."""
    rows = max(1, math.ceil(len(items) / cols))
    header = 24
    sheet = Image.new("RGB", (cols * cell, header + rows * cell), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    draw.text((6, 4), "green = sounding, red = silent", fill=(255, 255, 255), font=font)
    for i, (frame, annots) in enumerate(items):
        ox, oy = (i % cols) * cell, header + (i // cols) * cell
        s = cell / frame.shape[1]
        sheet.paste(Image.fromarray(frame).resize((cell, round(frame.shape[0] * s)), Image.BILINEAR), (ox, oy))
        for (x0, y0, x1, y1), name, sounding in annots:
            colour = (0, 255, 0) if sounding else (255, 40, 40)
            draw.rectangle((ox + x0 * s, oy + y0 * s, ox + x1 * s - 1, oy + y1 * s - 1), outline=colour, width=2)
            draw.text((ox + x0 * s + 3, oy + y0 * s + 2), name, fill=colour, font=font,
                      stroke_width=2, stroke_fill=(0, 0, 0))
    return sheet
