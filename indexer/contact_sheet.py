"""A contact sheet: the query and its results as thumbnails with scores and labels, in one PNG."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from retrieval.errors import ImageDecodeError
from retrieval.imageio import decode_image
from retrieval.search import Hit

logger = logging.getLogger(__name__)

THUMB = 192
CAPTION = 34


def _thumb(source: object, box: tuple[float, float, float, float] | None) -> Image.Image:
    try:
        decoded = decode_image(source, max_side=THUMB * 2)  # type: ignore[arg-type]
        img = Image.fromarray(decoded.pixels)
        if box is not None:
            sx = img.width / decoded.original_size[0]
            sy = img.height / decoded.original_size[1]
            ImageDraw.Draw(img).rectangle(
                [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy], outline=(255, 40, 40), width=3
            )
    except ImageDecodeError as exc:
        logger.warning("contact sheet: %s", exc)
        img = Image.new("RGB", (THUMB, THUMB), (90, 90, 90))
    img.thumbnail((THUMB, THUMB))
    return img


def contact_sheet(
    query: object,
    query_box: tuple[float, float, float, float] | None,
    hits: Sequence[Hit],
    out: str | Path,
    *,
    columns: int = 6,
) -> Path:
    """Write the sheet to ``out`` (PNG); the query first, framed in blue."""
    cells: list[tuple[Image.Image, str, str]] = [(_thumb(query, query_box), "query", "")]
    for rank, hit in enumerate(hits, 1):
        labels = ", ".join(sorted({lab.label for lab in hit.labels})[:3])
        cells.append((_thumb(hit.path, hit.box), f"#{rank}  {hit.score:.3f}", labels))
    rows = (len(cells) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (THUMB + 8) + 8, rows * (THUMB + CAPTION + 8) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (img, line1, line2) in enumerate(cells):
        x = 8 + (i % columns) * (THUMB + 8)
        y = 8 + (i // columns) * (THUMB + CAPTION + 8)
        sheet.paste(img, (x + (THUMB - img.width) // 2, y + (THUMB - img.height) // 2))
        if i == 0:
            draw.rectangle([x - 3, y - 3, x + THUMB + 2, y + THUMB + 2], outline=(40, 90, 255), width=3)
        draw.text((x, y + THUMB + 3), line1, fill=(0, 0, 0), font=font)
        draw.text((x, y + THUMB + 17), line2[:32], fill=(80, 80, 80), font=font)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path, format="PNG")
    return out_path
