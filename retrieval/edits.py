"""Edited copies of photos, seeded: one module for training, calibration and the benches.

A *copy* is a photo after the edits people make before re-sharing it: a crop, a rotation,
a flip, a perspective change, colour or grey, blur, noise, a strong JPEG, overlaid text or
shapes, a border, a screenshot-style resize. Two edit sets live here:

* :data:`EDIT_KINDS` with :func:`apply_edit` / :func:`random_edit` — the strong set that
  self-supervised training, learned whitening from copy pairs, calibration and
  ``bench.copies`` draw from (several edits composed, crops down to ~30 % of the area);
* :data:`CLASSIC_EDITS` with :func:`classic_edit` — the seven single edits ``bench.rerank``
  has always used (kept draw for draw, so its copy R@1 stays comparable between runs).

Everything is a function of a ``numpy.random.Generator``; :func:`copy_rng` derives one from
``(seed, photo key, copy index)`` so the same photo gets the same copies in every process,
in any order (``key`` may be an int or a string such as a sha256 or a path).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

#: the strong edit kinds, in the order they are applied when several are composed
EDIT_KINDS: tuple[str, ...] = (
    "crop",
    "rotate",
    "rotate90",
    "flip",
    "perspective",
    "colour",
    "grey",
    "blur",
    "noise",
    "text",
    "shapes",
    "border",
    "screenshot",
    "jpeg",
)
#: bench.rerank's single edits (one per copy)
CLASSIC_EDITS: tuple[str, ...] = ("crop", "rotate", "flip", "colour", "blur", "jpeg", "caption")
#: edits never return an image with a side below this many pixels
MIN_SIDE = 32

_WORDS = ("when you see it", "#meme", "lol", "follow for more", "2024", "repost", "@user", "so true", "omg", "wow")


@dataclass(frozen=True)
class EditPolicy:
    """How strong a random edit is: how many edits are composed, and the range of each."""

    min_ops: int = 1
    max_ops: int = 3
    crop_prob: float = 0.6  # the crop is drawn on its own (most copies are cropped), before the others
    crop_area: tuple[float, float] = (0.3, 0.9)  # fraction of the area kept
    rotate_deg: float = 30.0
    jpeg_quality: tuple[int, int] = (20, 60)
    kinds: tuple[str, ...] = tuple(k for k in EDIT_KINDS if k != "crop")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(EDIT_KINDS))
        if unknown:
            raise ValueError(f"unknown edit kind(s) {unknown}; known: {', '.join(EDIT_KINDS)}")
        if not 0 <= self.min_ops <= self.max_ops <= len(self.kinds):
            raise ValueError(f"need 0 <= min_ops <= max_ops <= {len(self.kinds)}, got {self.min_ops}, {self.max_ops}")
        if not 0.0 < self.crop_area[0] <= self.crop_area[1] <= 1.0:
            raise ValueError(f"crop_area must be (min, max) within (0, 1], got {self.crop_area}")


#: the default: what training, calibration and bench.copies use
STRONG = EditPolicy()


def copy_rng(seed: int, key: int | str, index: int = 0) -> np.random.Generator:
    """A generator that depends only on ``(seed, key, index)``: stable across processes and runs."""
    if isinstance(key, str):
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        key_words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    else:
        if key < 0:
            raise ValueError(f"an integer photo key must be >= 0, got {key}")
        key_words = [key & 0xFFFFFFFF, key >> 32]
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, index, *key_words])


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=max(8, size))
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(0, 256, size=3))
    return r, g, b


def _crop(img: Image.Image, rng: np.random.Generator, area: tuple[float, float]) -> Image.Image:
    w, h = img.size
    keep = float(rng.uniform(*area))
    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.0 / 0.6))))
    fw = min(1.0, np.sqrt(keep * aspect))
    fh = min(1.0, keep / fw)
    cw, ch = max(MIN_SIDE, round(float(fw) * w)), max(MIN_SIDE, round(float(fh) * h))
    cw, ch = min(cw, w), min(ch, h)
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    return img.crop((x0, y0, x0 + cw, y0 + ch))


def _perspective(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    d = rng.uniform(0.0, 0.2, size=8) * np.array([w, h] * 4)
    # where each output corner samples the input (clockwise from top-left)
    quad = (d[0], d[1], d[2], h - d[3], w - d[4], h - d[5], w - d[6], d[7])
    return img.transform((w, h), Image.Transform.QUAD, tuple(float(v) for v in quad), Image.Resampling.BILINEAR)


def _text(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = img.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    for _ in range(int(rng.integers(1, 4))):
        words = " ".join(str(rng.choice(_WORDS)) for _ in range(int(rng.integers(1, 4))))
        size = int(h * rng.uniform(0.05, 0.15))
        xy = (float(rng.uniform(0, 0.6) * w), float(rng.uniform(0, 0.85) * h))
        draw.text(xy, words, fill=_colour(rng), font=_font(size))
    return out


def _shapes(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = img.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    for _ in range(int(rng.integers(1, 4))):
        sw, sh = rng.uniform(0.05, 0.35) * w, rng.uniform(0.05, 0.35) * h  # each at most a third of the frame
        x0, y0 = float(rng.uniform(0, w - sw)), float(rng.uniform(0, h - sh))
        x1, y1 = x0 + float(sw), y0 + float(sh)
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=_colour(rng))
        else:
            draw.ellipse((x0, y0, x1, y1), fill=_colour(rng))
    return out


def _border(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    pads = (rng.uniform(0.02, 0.25, size=4) * np.array([w, h, w, h])).astype(int)
    if rng.random() < 0.5:  # letterbox: top and bottom (or left and right) only
        pads = pads * (np.array([0, 1, 0, 1]) if rng.random() < 0.5 else np.array([1, 0, 1, 0]))
    return ImageOps.expand(img, border=tuple(int(p) for p in pads), fill=_colour(rng))


def _screenshot(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Downscaled, then placed in a larger 'screen' with bars (status bar, caption area)."""
    w, h = img.size
    f = float(rng.uniform(0.35, 0.8))
    small = img.resize((max(MIN_SIDE, int(w * f)), max(MIN_SIDE, int(h * f))), Image.Resampling.BILINEAR)
    sw, sh = small.size
    canvas_w = int(sw * rng.uniform(1.0, 1.3))
    canvas_h = int(sh * rng.uniform(1.15, 1.6))
    bg = (255, 255, 255) if rng.random() < 0.5 else (18, 18, 18)
    canvas = Image.new("RGB", (canvas_w, canvas_h), bg)
    top = int((canvas_h - sh) * rng.uniform(0.2, 0.6))
    canvas.paste(small, ((canvas_w - sw) // 2, top))
    draw = ImageDraw.Draw(canvas)
    fg = (128, 128, 128)
    draw.rectangle((0, 0, canvas_w, max(2, top // 4)), fill=fg)  # status bar
    if canvas_h - (top + sh) > 12:
        draw.text((6, top + sh + 4), str(rng.choice(_WORDS)), fill=fg, font=_font(max(8, (canvas_h - top - sh) // 3)))
    return canvas


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def apply_edit(img: Image.Image, kind: str, rng: np.random.Generator, policy: EditPolicy = STRONG) -> Image.Image:
    """One strong edit of ``img`` (RGB in, RGB out, no side below :data:`MIN_SIDE` unless the input's was)."""
    img = _rgb(img)
    if kind == "crop":
        return _crop(img, rng, policy.crop_area)
    if kind == "rotate":
        angle = float(rng.uniform(5.0, policy.rotate_deg)) * float(rng.choice([-1.0, 1.0]))
        return img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=_colour(rng))
    if kind == "rotate90":
        return img.transpose(
            [Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270][int(rng.integers(3))]
        )
    if kind == "flip":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if kind == "perspective":
        return _perspective(img, rng)
    if kind == "colour":
        out = ImageEnhance.Color(img).enhance(float(rng.uniform(0.0, 2.0)))
        out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.6, 1.4)))
        return ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.6, 1.4)))
    if kind == "grey":
        return ImageOps.grayscale(img).convert("RGB")
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1.0, 3.5)) * max(img.size) / 512))
    if kind == "noise":
        arr = np.asarray(img, dtype=np.float32)
        arr = arr + rng.normal(0.0, float(rng.uniform(5.0, 25.0)), size=arr.shape).astype(np.float32)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if kind == "text":
        return _text(img, rng)
    if kind == "shapes":
        return _shapes(img, rng)
    if kind == "border":
        return _border(img, rng)
    if kind == "screenshot":
        return _screenshot(img, rng)
    if kind == "jpeg":
        return _jpeg(img, int(rng.integers(policy.jpeg_quality[0], policy.jpeg_quality[1] + 1)))
    raise ValueError(f"unknown edit kind {kind!r}; known: {', '.join(EDIT_KINDS)}")


def random_edit(
    img: Image.Image, rng: np.random.Generator, policy: EditPolicy = STRONG
) -> tuple[Image.Image, tuple[str, ...]]:
    """A random composition of strong edits; returns the copy and the kinds applied, in order."""
    kinds: list[str] = []
    if rng.random() < policy.crop_prob:
        kinds.append("crop")
    count = int(rng.integers(policy.min_ops, policy.max_ops + 1))
    picked = rng.choice(len(policy.kinds), size=count, replace=False) if count else np.array([], dtype=int)
    chosen = {policy.kinds[int(i)] for i in picked}
    if "rotate" in chosen and "rotate90" in chosen:  # one rotation per copy
        chosen.discard("rotate90")
    kinds += [k for k in EDIT_KINDS if k in chosen]
    out = _rgb(img)
    for kind in kinds:
        out = apply_edit(out, kind, rng, policy)
    return out, tuple(kinds)


def edited_copy(
    img: Image.Image, *, seed: int, key: int | str, index: int = 0, policy: EditPolicy = STRONG
) -> Image.Image:
    """Copy number ``index`` of photo ``key``: the same image for the same arguments, in any process."""
    return random_edit(img, copy_rng(seed, key, index), policy)[0]


def edited_copies(
    img: Image.Image, *, seed: int, key: int | str, count: int, policy: EditPolicy = STRONG
) -> list[Image.Image]:
    """Copies ``0..count-1`` of photo ``key`` (see :func:`edited_copy`)."""
    return [edited_copy(img, seed=seed, key=key, index=i, policy=policy) for i in range(count)]


def classic_edit(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """One of ``bench.rerank``'s seven single edits (draw for draw what that bench always did)."""
    w, h = img.size
    if kind == "crop":  # keep 60-80 % of each side
        fw, fh = rng.uniform(0.6, 0.8, size=2)
        x0, y0 = rng.uniform(0, 1 - fw) * w, rng.uniform(0, 1 - fh) * h
        return img.crop((int(x0), int(y0), int(x0 + fw * w), int(y0 + fh * h)))
    if kind == "rotate":
        return img.rotate(float(rng.uniform(8, 15)) * rng.choice([-1, 1]), expand=True, fillcolor=(0, 0, 0))
    if kind == "flip":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if kind == "colour":
        out = ImageEnhance.Color(img).enhance(float(rng.uniform(0.2, 1.8)))
        return ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.7, 1.3)))
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(2, 3.5))))
    if kind == "jpeg":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(5, 12)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == "caption":  # a bar with text over the bottom 20 %
        out = img.copy()
        draw = ImageDraw.Draw(out)
        draw.rectangle([0, int(h * 0.8), w, h], fill=(20, 20, 20))
        draw.text((8, int(h * 0.83)), "when you see it... #caption #meme", fill=(255, 255, 255))
        return out
    raise ValueError(f"unknown classic edit {kind!r}; known: {', '.join(CLASSIC_EDITS)}")


def split_photos(keys: Sequence[int | str], held_out: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of ``keys`` split by photo into (kept, held out), seeded, stable under reordering of ``keys``."""
    if not 0.0 <= held_out < 1.0:
        raise ValueError(f"held_out must be in [0, 1), got {held_out}")
    scores = [copy_rng(seed, k, 0).random() for k in keys]
    kept = [i for i, s in enumerate(scores) if s >= held_out]
    out = [i for i, s in enumerate(scores) if s < held_out]
    return kept, out
