"""Small, deterministic image files of every odd kind a photo collection holds.

Used by the decoding, extraction and indexer tests. Everything is generated here, at
test time: no image is committed to the repository.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CALTECH = PHOTO_ROOT / "caltech101-half"
DISTRACTORS = PHOTO_ROOT / "caltech101-distractors"


def real_photos(n: int, *, stride: int = 97) -> list[Path]:
    """``n`` real photos spread over the classes of ../shared/data/caltech101-half."""
    paths = sorted(CALTECH.glob("*/*.jpg"))
    if len(paths) < n:
        raise RuntimeError(f"expected the shared photos under {CALTECH}; found {len(paths)}")
    return [paths[(i * stride) % len(paths)] for i in range(n)]


def gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB test pattern with some structure (uint8, (H, W, 3))."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / max(width, 1), yy / max(height, 1), (xx + yy) / max(width + height, 1)], axis=2)
    blobs = rng.uniform(0, 1, size=(3,))
    img = (base * 200 + 40 * np.sin(xx[..., None] / (7 + 5 * blobs))).clip(0, 255)
    return img.astype(np.uint8)


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def jpeg_with_orientation(pixels: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose EXIF says to rotate it (6 = rotate 90 degrees clockwise to view)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x0132] = "2021:07:14 10:20:30"
    return encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())


def cmyk_jpeg(pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(pixels).convert("CMYK"), "JPEG", quality=95)


def palette_png_with_transparency(pixels: np.ndarray) -> bytes:
    im = Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(im, "PNG", transparency=0)


def rgba_png(pixels: np.ndarray) -> bytes:
    alpha = np.full(pixels.shape[:2], 128, dtype=np.uint8)
    return encode(Image.fromarray(np.dstack([pixels, alpha])), "PNG")


def gray16_png(pixels: np.ndarray) -> bytes:
    gray = pixels.mean(axis=2).astype(np.uint16) * 257  # full 16-bit range
    return encode(Image.fromarray(gray), "PNG")


def animated_gif(pixels: np.ndarray) -> bytes:
    first = Image.fromarray(pixels)
    second = Image.fromarray(255 - pixels)
    return encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def truncated_jpeg(pixels: np.ndarray) -> bytes:
    data = encode(Image.fromarray(pixels), "JPEG", quality=90)
    return data[: len(data) // 2]


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 1024)  # far too little data; never decoded anyway
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def odd_files(directory: Path, size: tuple[int, int] = (96, 64)) -> dict[str, tuple[bytes, bool]]:
    """Write one file of each odd kind into ``directory``; returns name -> (bytes, decodable)."""
    pixels = gradient(*size)
    files: dict[str, tuple[bytes, bool]] = {
        "plain.jpg": (encode(Image.fromarray(pixels), "JPEG", quality=90), True),
        "rotated.jpg": (jpeg_with_orientation(pixels, 6), True),
        "cmyk.jpg": (cmyk_jpeg(pixels), True),
        "palette_alpha.png": (palette_png_with_transparency(pixels), True),
        "rgba.png": (rgba_png(pixels), True),
        "gray16.png": (gray16_png(pixels), True),
        "gray.png": (encode(Image.fromarray(pixels[:, :, 0]), "PNG"), True),
        "anim.gif": (animated_gif(pixels), True),
        "pic.webp": (encode(Image.fromarray(pixels), "WEBP", quality=90), True),
        "pic.bmp": (encode(Image.fromarray(pixels), "BMP"), True),
        "pic.tiff": (encode(Image.fromarray(pixels), "TIFF"), True),
        "empty.jpg": (b"", False),
        "truncated.jpg": (truncated_jpeg(pixels), False),
        "text.jpg": (b"this is not an image, just text named .jpg\n", False),
        "bomb.png": (png_bomb(), False),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in files.items():
        (directory / name).write_bytes(data)
    return files
