"""The edit set (retrieval.edits): seeded, deterministic, every kind a valid RGB image."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from retrieval.edits import (
    CLASSIC_EDITS,
    EDIT_KINDS,
    MIN_SIDE,
    STRONG,
    EditPolicy,
    apply_edit,
    classic_edit,
    copy_rng,
    edited_copies,
    edited_copy,
    random_edit,
    split_photos,
)


def _photo(w: int = 240, h: int = 180, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) % 256)], axis=-1).astype(np.uint8)
    arr[20:80, 30:120] = rng.integers(0, 256, size=3)
    return Image.fromarray(arr, "RGB")


def _bytes(img: Image.Image) -> bytes:
    return img.size[0].to_bytes(4, "little") + img.size[1].to_bytes(4, "little") + img.tobytes()


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_every_kind_gives_an_rgb_image_and_changes_it(kind: str) -> None:
    img = _photo()
    out = apply_edit(img, kind, np.random.default_rng(3))
    assert out.mode == "RGB"
    assert min(out.size) >= MIN_SIDE
    assert _bytes(out) != _bytes(img)
    again = apply_edit(img, kind, np.random.default_rng(3))
    assert _bytes(again) == _bytes(out)


def test_crop_keeps_the_asked_area() -> None:
    img = _photo(400, 300)
    policy = EditPolicy(crop_area=(0.3, 0.3))
    for seed in range(20):
        out = apply_edit(img, "crop", np.random.default_rng(seed), policy)
        area = out.size[0] * out.size[1] / (400 * 300)
        assert 0.2 <= area <= 0.36, (seed, out.size)


def test_copies_depend_only_on_seed_key_and_index() -> None:
    img = _photo()
    a = edited_copies(img, seed=7, key="photo-a", count=4)
    b = [edited_copy(img, seed=7, key="photo-a", index=i) for i in (3, 2, 1, 0)][::-1]
    assert [_bytes(x) for x in a] == [_bytes(x) for x in b]
    assert len({_bytes(x) for x in a}) == 4  # different copies
    other_key = edited_copy(img, seed=7, key="photo-b", index=0)
    other_seed = edited_copy(img, seed=8, key="photo-a", index=0)
    assert _bytes(other_key) != _bytes(a[0]) and _bytes(other_seed) != _bytes(a[0])


def test_copies_are_the_same_in_another_process() -> None:
    code = (
        "import hashlib, numpy as np;from PIL import Image;from retrieval.edits import edited_copy;"
        "img = Image.fromarray((np.arange(180*240*3) % 251).astype(np.uint8).reshape(180, 240, 3));"
        "out = edited_copy(img, seed=5, key=12345, index=2);"
        "print(hashlib.sha256(out.tobytes()).hexdigest(), out.size)"
    )
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(runs) == 1
    img = Image.fromarray((np.arange(180 * 240 * 3) % 251).astype(np.uint8).reshape(180, 240, 3))
    import hashlib

    here = edited_copy(img, seed=5, key=12345, index=2)
    assert runs.pop().split()[0] == hashlib.sha256(here.tobytes()).hexdigest()


def test_random_edit_composes_in_canonical_order_with_one_rotation() -> None:
    img = _photo()
    seen: set[str] = set()
    for i in range(60):
        out, kinds = random_edit(img, copy_rng(0, i))
        assert list(kinds) == [k for k in EDIT_KINDS if k in kinds]
        assert not {"rotate", "rotate90"} <= set(kinds)
        assert STRONG.min_ops <= len([k for k in kinds if k != "crop"]) <= STRONG.max_ops
        assert out.mode == "RGB" and min(out.size) >= MIN_SIDE
        seen.update(kinds)
    assert seen == set(EDIT_KINDS)  # 60 copies use every kind


def test_policy_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown edit kind"):
        EditPolicy(kinds=("crop", "sepia"))
    with pytest.raises(ValueError, match="unknown edit kind"):
        apply_edit(_photo(), "sepia", np.random.default_rng(0))


def test_classic_edits_are_seeded() -> None:
    img = _photo()
    for kind in CLASSIC_EDITS:
        a = classic_edit(img, kind, np.random.default_rng(11))
        b = classic_edit(img, kind, np.random.default_rng(11))
        assert _bytes(a) == _bytes(b)
        assert _bytes(a) != _bytes(img)


def test_split_by_photo_is_stable_and_disjoint() -> None:
    keys = [f"p{i}" for i in range(400)]
    kept, held = split_photos(keys, 0.25, seed=3)
    assert sorted(kept + held) == list(range(400))
    assert 60 <= len(held) <= 140
    shuffled = keys[::-1]
    _kept2, held2 = split_photos(shuffled, 0.25, seed=3)
    assert {shuffled[i] for i in held2} == {keys[i] for i in held}
