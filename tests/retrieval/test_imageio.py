"""Decoding every odd kind of image file, and clear errors for the broken ones."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.errors import ImageDecodeError
from retrieval.imageio import decode_image, probe_image
from tests import imagefactory as f


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return f.gradient(96, 64)


def test_plain_jpeg_and_path_and_bytes_agree(tmp_path: Path, pixels: np.ndarray) -> None:
    data = f.encode(Image.fromarray(pixels), "JPEG", quality=95)
    (tmp_path / "a.jpg").write_bytes(data)
    from_bytes = decode_image(data)
    from_path = decode_image(tmp_path / "a.jpg")
    from_file = decode_image(io.BytesIO(data))
    assert from_bytes.pixels.shape == (64, 96, 3) and from_bytes.pixels.dtype == np.uint8
    assert np.array_equal(from_bytes.pixels, from_path.pixels)
    assert np.array_equal(from_bytes.pixels, from_file.pixels)
    assert from_bytes.format == "JPEG" and from_bytes.original_size == (96, 64)
    assert np.abs(from_bytes.pixels.astype(int) - pixels).mean() < 4  # lossy but close


def test_exif_orientation_is_applied_and_time_read(pixels: np.ndarray) -> None:
    img = decode_image(f.jpeg_with_orientation(pixels, 6))
    # orientation 6: the stored 96x64 image is shown rotated 90 degrees clockwise
    assert img.pixels.shape == (96, 64, 3)
    assert img.original_size == (64, 96)
    expected = np.rot90(pixels, k=-1)
    assert np.abs(img.pixels.astype(int) - expected).mean() < 6
    assert img.exif_time == datetime(2021, 7, 14, 10, 20, 30)


def test_cmyk_jpeg_becomes_rgb(pixels: np.ndarray) -> None:
    img = decode_image(f.cmyk_jpeg(pixels))
    assert img.mode == "CMYK" and img.pixels.shape == (64, 96, 3)
    assert np.abs(img.pixels.astype(int) - pixels).mean() < 12


def test_transparency_is_composited_on_white(pixels: np.ndarray) -> None:
    img = decode_image(f.rgba_png(pixels))
    expected = (pixels.astype(float) * 128 + 255.0 * 127) / 255
    assert np.abs(img.pixels.astype(float) - expected).max() <= 1.5
    pal = decode_image(f.palette_png_with_transparency(pixels))
    assert pal.pixels.shape == (64, 96, 3)
    assert (pal.pixels == 255).all(axis=2).any()  # the transparent palette entry shows as white


def test_16bit_png_keeps_its_range(pixels: np.ndarray) -> None:
    img = decode_image(f.gray16_png(pixels))
    gray = pixels.mean(axis=2).astype(np.uint16)
    assert img.pixels.shape == (64, 96, 3)
    assert np.abs(img.pixels[:, :, 0].astype(int) - gray).max() <= 1  # not clipped to white
    assert img.pixels.std() > 10


def test_gray_animated_webp_bmp_tiff(pixels: np.ndarray) -> None:
    gray = decode_image(f.encode(Image.fromarray(pixels[:, :, 0]), "PNG"))
    assert np.array_equal(gray.pixels[:, :, 0], gray.pixels[:, :, 2])
    anim = decode_image(f.animated_gif(pixels))
    assert anim.pixels.shape == (64, 96, 3)
    # the first frame, not the inverted second one
    assert np.abs(anim.pixels.astype(int) - pixels).mean() < np.abs(anim.pixels.astype(int) - (255 - pixels)).mean()
    for fmt in ("WEBP", "BMP", "TIFF"):
        img = decode_image(f.encode(Image.fromarray(pixels), fmt))
        assert img.pixels.shape == (64, 96, 3), fmt


def test_float_tiff() -> None:
    arr = np.linspace(0, 1, 64 * 96, dtype=np.float32).reshape(64, 96)
    img = decode_image(f.encode(Image.fromarray(arr), "TIFF"))
    assert img.pixels[0, 0, 0] == 0 and img.pixels[-1, -1, 0] == 255


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: b"", "empty file"),
        (f.truncated_jpeg, "truncated or corrupt"),
        (lambda p: b"hello, not an image", "not a recognized image format"),
        (lambda p: f.png_bomb(), "over the limit"),
    ],
)
def test_broken_inputs_raise_clear_errors(pixels: np.ndarray, make, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImageDecodeError, match=reason) as info:
        decode_image(make(pixels), name="x.jpg")
    assert info.value.source == "x.jpg"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="file not found"):
        decode_image(tmp_path / "nope.jpg")
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageDecodeError, match="directory"):
        decode_image(tmp_path / "dir.jpg")


def test_byte_limit_and_pixel_limit(pixels: np.ndarray) -> None:
    data = f.encode(Image.fromarray(pixels), "PNG")
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(data, max_bytes=10)
    with pytest.raises(ImageDecodeError, match="raise max_pixels"):
        decode_image(data, max_pixels=96 * 64 - 1)
    assert decode_image(data, max_pixels=96 * 64).pixels.shape == (64, 96, 3)


def test_bomb_is_refused_without_decoding() -> None:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageDecodeError, match="30000x30000"):
        decode_image(f.png_bomb())
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 100_000  # KiB: nowhere near the 2.7 GB the pixels would take


def test_draft_decoding_of_large_jpeg_is_reduced_but_sufficient() -> None:
    big = f.gradient(2000, 1500)
    data = f.encode(Image.fromarray(big), "JPEG", quality=90)
    img = decode_image(data, max_side=400)
    assert img.original_size == (2000, 1500)
    assert max(img.pixels.shape[:2]) >= 400 and img.pixels.shape[1] < 2000


def test_probe_reads_header_only() -> None:
    assert probe_image(f.png_bomb()) == (30000, 30000, "PNG")


def test_real_photos_decode(tmp_path: Path) -> None:
    for path in f.real_photos(5):
        img = decode_image(path)
        assert img.pixels.ndim == 3 and img.pixels.shape[2] == 3


def test_an_unknown_format_is_refused_without_quoting_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"TOPSECRET: not an image at all")
    for source in (secret, secret.read_bytes()):
        with pytest.raises(ImageDecodeError) as info:
            decode_image(source)
        assert "not a recognized image format" in str(info.value) and "TOPSECRE" not in str(info.value)
        with pytest.raises(ImageDecodeError) as info:
            probe_image(source)
        assert "TOPSECRE" not in str(info.value)
