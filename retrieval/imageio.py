"""Robust image decoding: any photo a user may own -> an RGB ``uint8`` array.

Handles EXIF orientation, CMYK, palette and alpha (composited on white), grayscale,
16-bit and float images, the first frame of animations, and refuses decompression
bombs *before* decoding pixels. Every failure is an :class:`ImageDecodeError` that says
what was wrong with which input; nothing here raises a bare Pillow error.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from retrieval.errors import ImageDecodeError

logger = logging.getLogger(__name__)

#: Default pixel budget (width x height) of one image: about a 150-megapixel photo.
DEFAULT_MAX_PIXELS = 150_000_000
#: Default size budget of one encoded file.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024

# We do our own (stricter, clearer) bomb check; Pillow's warning would only be noise.
Image.MAX_IMAGE_PIXELS = None

_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 36867
_DATETIME = 306

ImageSource = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image: RGB pixels after EXIF rotation, plus what was learned on the way."""

    pixels: np.ndarray  # (H, W, 3) uint8, C-contiguous
    original_size: tuple[int, int]  # (width, height) of the stored image, after EXIF rotation
    format: str  # "JPEG", "PNG", ...
    mode: str  # Pillow mode of the file ("RGB", "CMYK", "I;16", ...)
    exif_time: datetime | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of ``pixels`` (smaller than original_size when reduced on decode)."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def _open(source: ImageSource, name: str, max_bytes: int) -> Image.Image:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageDecodeError(name, "empty file (0 bytes)")
        if len(data) > max_bytes:
            raise ImageDecodeError(name, f"file is {len(data)} bytes, over the limit of {max_bytes}")
        fp: BinaryIO = io.BytesIO(data)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ImageDecodeError(name, "file not found") from None
        except OSError as exc:
            raise ImageDecodeError(name, f"cannot read file: {exc.strerror or exc}") from None
        if size == 0:
            raise ImageDecodeError(name, "empty file (0 bytes)")
        if size > max_bytes:
            raise ImageDecodeError(name, f"file is {size} bytes, over the limit of {max_bytes}")
        try:
            fp = io.BytesIO(path.read_bytes())
        except PermissionError:
            raise ImageDecodeError(name, "permission denied (cannot read the file)") from None
        except IsADirectoryError:
            raise ImageDecodeError(name, "is a directory, not an image file") from None
        except OSError as exc:
            raise ImageDecodeError(name, f"cannot read file: {exc.strerror or exc}") from None
    else:
        fp = source
    try:
        return Image.open(fp)
    except UnidentifiedImageError:
        raise ImageDecodeError(
            name, "not a recognized image format (JPEG, PNG, WebP, GIF, BMP or TIFF); is it an image file?"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(name, f"cannot open image: {exc}") from None


def _exif_time(im: Image.Image) -> datetime | None:
    try:
        exif = im.getexif()
        raw = exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
    except Exception:  # malformed EXIF must never fail the decode
        return None
    if not isinstance(raw, str):
        return None
    try:
        return datetime.strptime(raw.strip("\x00 ").strip(), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency on white."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im)
        if mode == "F":
            arr_f = arr.astype(np.float64)
            scale = 255.0 if np.nanmax(arr_f, initial=0.0) <= 1.0 else 1.0
            arr8 = np.clip(np.nan_to_num(arr_f * scale), 0, 255).astype(np.uint8)
        elif mode == "I" and int(arr.max(initial=0)) <= 255:
            arr8 = np.clip(arr, 0, 255).astype(np.uint8)
        else:  # 16-bit data (I;16 or I holding 0..65535): keep the high byte
            arr8 = (np.clip(arr, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("PA", "RGBa", "La"):
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return im.convert("RGB")
    return im


def decode_image(
    source: ImageSource,
    *,
    name: str | None = None,
    max_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DecodedImage:
    """Decode ``source`` (bytes, a path or a binary file) into RGB pixels.

    ``max_side`` lets JPEG decoding skip detail that a later resize to ``max_side`` would
    throw away anyway (Pillow's draft mode, DCT scaling); the result is then at least
    ``max_side`` on its shorter side, never smaller than needed. ``max_pixels`` refuses
    decompression bombs from the header, before any pixel is decoded.
    """
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<bytes>")
    im = _open(source, label, max_bytes)
    try:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise ImageDecodeError(label, f"invalid image dimensions {width}x{height}")
        if width * height > max_pixels:
            raise ImageDecodeError(
                label,
                f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
                "(a decompression bomb, or a very large image: raise max_pixels to accept it)",
            )
        fmt = im.format or "unknown"
        file_mode = im.mode
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)
        if max_side and fmt == "JPEG" and file_mode in ("RGB", "L", "YCbCr"):
            im.draft(file_mode, (max_side, max_side))
        try:
            im.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageDecodeError(label, f"truncated or corrupt image data ({exc})") from None
        exif_time = _exif_time(im)
        try:
            oriented = ImageOps.exif_transpose(im)
        except Exception as exc:  # a broken orientation tag must not lose the photo
            logger.warning("%s: ignoring unreadable EXIF orientation (%s)", label, exc)
            oriented = im
        rgb = _to_rgb(oriented)
        pixels = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ImageDecodeError(label, f"unexpected decoded shape {pixels.shape}")
        # the header size, turned like the pixels when the orientation swapped the axes
        swapped = (oriented.size[0] == im.size[1]) and (oriented.size[1] == im.size[0]) and im.size[0] != im.size[1]
        orig = (height, width) if swapped else (width, height)
        return DecodedImage(pixels=pixels, original_size=orig, format=fmt, mode=file_mode, exif_time=exif_time)
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, MemoryError) as exc:
        raise ImageDecodeError(label, f"cannot decode image: {exc}") from None
    finally:
        im.close()


def probe_image(source: ImageSource, *, name: str | None = None) -> tuple[int, int, str]:
    """Read (width, height, format) from the header alone, without decoding pixels."""
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<bytes>")
    im = _open(source, label, DEFAULT_MAX_BYTES)
    try:
        return im.size[0], im.size[1], im.format or "unknown"
    finally:
        im.close()
