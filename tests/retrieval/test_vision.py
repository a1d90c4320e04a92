"""Detection / segmentation back ends: real ONNX models, real photos, slow float64 references."""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageOps
from skimage import data

from retrieval.errors import ImsearchError, ModelFormatError, UnknownNameError, WeightsUnavailableError
from retrieval.vision import (
    COCO_CLASSES,
    Detection,
    Detector,
    Segmentation,
    Segmenter,
    create_detector,
    create_segmenter,
    image_labels,
)
from retrieval.vision.modelfiles import KNOWN_SHA256, MODEL_DIR_ENV, model_dir, resolve_model_file
from retrieval.vision.ops import batched_nms, letterbox, union_area, yolox_decode, yolox_grids
from retrieval.vision.yolox import postprocess

SHARED = Path(__file__).resolve().parents[3] / "shared"
MODELS = Path(os.environ.get(MODEL_DIR_ENV, SHARED / "models"))
PHOTOS = SHARED / "data" / "caltech101-half"


@pytest.fixture(scope="module")
def detector() -> Detector:
    return create_detector("yolox_nano", model_dir=MODELS, threads=2)


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return create_segmenter("deeplabv3_mobilenetv2_voc", model_dir=MODELS, threads=2)


def load_photos(folder: str, n: int) -> list[np.ndarray]:
    files = sorted((PHOTOS / folder).glob("*.jpg"))[:n]
    return [np.asarray(ImageOps.exif_transpose(Image.open(f)).convert("RGB")) for f in files]


# ---------------------------------------------------------------- real models, real photos


def test_astronaut_is_a_person_with_a_plausible_box(detector: Detector) -> None:
    image = data.astronaut()  # 512x512, the astronaut fills the left two thirds
    dets = detector.detect([image])[0]
    people = [d for d in dets if d.label == "person"]
    assert people and people[0].score > 0.6
    x0, y0, x1, y1 = people[0].box
    assert x0 < 60 and y0 < 80 and 300 < x1 < 450 and y1 > 450
    assert all(0 <= v <= 512 for d in dets for v in d.box)
    assert isinstance(dets[0], Detection) and isinstance(detector, Detector)
    assert detector.identity["sha256"] == KNOWN_SHA256["yolox_nano.onnx"]


def test_chelsea_is_a_cat_for_both_models(detector: Detector, segmenter: Segmenter) -> None:
    image = data.chelsea()
    assert detector.detect([image])[0][0].label == "cat"
    seg = segmenter.segment([image])[0]
    assert isinstance(seg, Segmentation) and isinstance(segmenter, Segmenter)
    assert seg.class_fractions["cat"] > 0.4 and max(seg.class_fractions.items(), key=lambda kv: kv[1])[0] == "cat"
    assert seg.label_map.shape == (257, 257) and seg.label_map.dtype == np.uint8
    counts = np.bincount(seg.label_map.ravel(), minlength=len(seg.label_names))
    for label, fraction in seg.class_fractions.items():
        assert fraction == pytest.approx(counts[seg.label_names.index(label)] / seg.label_map.size)
    assert set(segmenter.class_names) <= set(COCO_CLASSES) and len(segmenter.class_names) == 20


@pytest.mark.parametrize(
    ("folder", "label", "use_segmenter"),
    [("Motorbikes", "motorcycle", True), ("Faces", "person", True), ("pigeon", "bird", True),
     ("laptop", "laptop", False), ("umbrella", "umbrella", False)],
)  # fmt: skip
def test_caltech_photos_get_their_label(
    detector: Detector, segmenter: Segmenter, folder: str, label: str, use_segmenter: bool
) -> None:
    photos = load_photos(folder, 4)
    dets = detector.detect(photos)
    assert sum(any(d.label == label for d in per) for per in dets) >= 3
    if use_segmenter:
        segs = segmenter.segment(photos)
        assert sum(s.class_fractions.get(label, 0.0) > 0.02 for s in segs) >= 3


def test_batch_equals_one_by_one_and_empty(detector: Detector) -> None:
    images = [data.astronaut(), data.chelsea(), data.coffee()]
    batched = detector.detect(images)
    single = [detector.detect([im])[0] for im in images]
    assert batched == single
    assert detector.detect([]) == []


def test_bad_image_arrays_are_refused(detector: Detector) -> None:
    with pytest.raises(ImsearchError, match="RGB uint8"):
        detector.detect([np.zeros((10, 10), dtype=np.uint8)])
    with pytest.raises(ImsearchError, match="RGB uint8"):
        detector.detect([np.zeros((10, 10, 3), dtype=np.float32)])


def test_letterbox_places_the_image_top_left_in_bgr(detector: Detector) -> None:
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[..., 0] = 255  # pure red
    canvas, ratio = letterbox(image, (416, 416))
    assert ratio == pytest.approx(2.08) and (canvas[208:] == 114).all() and (canvas[:208, :, 0] == 255).all()
    batch, ratios = detector.preprocess([image])  # type: ignore[attr-defined]
    assert batch.shape == (1, 3, 416, 416) and ratios == [pytest.approx(2.08)]
    assert (batch[0, 2, :208] == 255).all() and (batch[0, 0, :208] == 0).all()  # R is last in BGR


# ---------------------------------------------------------------- decode vs slow reference


def slow_decode(raw: np.ndarray, size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Obvious float64 YOLOX decode, one cell at a time."""
    boxes: list[list[float]] = []
    scores: list[list[float]] = []
    for stride in (8, 16, 32):
        for row in range(size_hw[0] // stride):
            for col in range(size_hw[1] // stride):
                out = raw[len(boxes)].astype(np.float64)
                cx, cy = (out[0] + col) * stride, (out[1] + row) * stride
                w, h = math.exp(out[2]) * stride, math.exp(out[3]) * stride
                boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                scores.append([out[4] * p for p in out[5:]])
    assert len(boxes) == raw.shape[0]
    return np.array(boxes), np.array(scores)


def test_decode_matches_slow_reference_on_random_raw_output() -> None:
    rng = np.random.default_rng(0)
    size = (96, 128)  # non-square: 12x16 + 6x8 + 3x4 cells
    grid, strides = yolox_grids(size)
    raw = rng.normal(size=(2, grid.shape[0], 5 + 3)).astype(np.float32)
    raw[..., 4:] = rng.random(size=raw[..., 4:].shape)
    boxes, scores = yolox_decode(raw, grid, strides)
    for i in range(2):
        ref_boxes, ref_scores = slow_decode(raw[i], size)
        np.testing.assert_allclose(boxes[i], ref_boxes, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(scores[i], ref_scores, rtol=1e-5, atol=1e-7)


def test_decode_and_postprocess_give_hand_computed_boxes() -> None:
    grid, strides = yolox_grids((416, 416))
    raw = np.zeros((grid.shape[0], 85), dtype=np.float32)
    # stride 8, row 2, col 3: cx = (0.5 + 3) * 8 = 28, cy = (0.25 + 2) * 8 = 18, w = 2 * 8, h = 8
    raw[2 * 52 + 3, :5] = [0.5, 0.25, math.log(2), 0.0, 0.9]
    raw[2 * 52 + 3, 5 + 16] = 0.8  # dog, score 0.72
    # stride 32, row 1, col 0 (cell 52*52 + 26*26 + 13): cx = 0, cy = 32 * 1 = 32, w = h = 32 * e
    raw[52 * 52 + 26 * 26 + 13, :5] = [0.0, 0.0, 1.0, 1.0, 0.5]
    raw[52 * 52 + 26 * 26 + 13, 5 + 0] = 0.9  # person, score 0.45
    boxes, scores = yolox_decode(raw, grid, strides)
    kept_boxes, kept_scores, kept_classes = postprocess(
        boxes, scores, ratio=0.5, image_hw=(600, 800), score_threshold=0.3, nms_iou=0.45, max_detections=10
    )
    assert kept_classes.tolist() == [16, 0]
    np.testing.assert_allclose(kept_scores, [0.72, 0.45], rtol=1e-6)
    half = 16 * math.e
    expected = np.array([[40, 28, 72, 44], [0, 0, half / 0.5, (32 + half) / 0.5]])  # clipped at the top-left
    np.testing.assert_allclose(kept_boxes, expected, rtol=1e-5)


# ---------------------------------------------------------------- NMS and union area


def slow_batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, thr: float) -> list[int]:
    def iou(a: np.ndarray, b: np.ndarray) -> float:
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
        return iw * ih / union

    keep: list[int] = []
    for i in sorted(range(len(scores)), key=lambda k: -scores[k]):
        if all(classes[k] != classes[i] or iou(boxes[k], boxes[i]) <= thr for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_nms_matches_naive_loop_and_torchvision(seed: int) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, size=(300, 2))
    wh = rng.uniform(5, 40, size=(300, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.random(300)
    classes = rng.integers(0, 4, size=300)
    kept = batched_nms(boxes, scores, classes, 0.45)
    assert kept.tolist() == slow_batched_nms(boxes, scores, classes, 0.45)
    ref = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                      torch.from_numpy(classes), 0.45)
    assert kept.tolist() == ref.tolist()


def raster_area(boxes: np.ndarray, scale: int) -> float:
    """Pixel-raster union: exact for coordinates on a 1/scale grid."""
    ints = np.round(boxes * scale).astype(int)
    canvas = np.zeros((ints[:, 3].max() + 1, ints[:, 2].max() + 1), dtype=bool)
    for x0, y0, x1, y1 in ints:
        canvas[y0:y1, x0:x1] = True
    return canvas.sum() / scale**2


@pytest.mark.parametrize(("seed", "scale"), [(0, 1), (1, 1), (2, 4)])
def test_union_area_matches_pixel_raster(seed: int, scale: int) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 60 * scale, size=(12, 2)) / scale
    wh = rng.integers(0, 30 * scale, size=(12, 2)) / scale  # includes empty boxes
    boxes = np.concatenate([xy, xy + wh], axis=1)
    assert union_area(boxes) == pytest.approx(raster_area(boxes, scale))
    assert union_area(np.zeros((0, 4))) == 0.0


def test_image_labels_union_not_sum() -> None:
    dets = [Detection((0, 0, 50, 50), "dog", 0.9), Detection((25, 25, 75, 75), "dog", 0.6),
            Detection((90, 0, 120, 10), "cat", 0.4)]  # fmt: skip
    seg = Segmentation({"dog": 0.3}, {"dog": 0.8}, np.zeros((4, 4), np.uint8), ("background", "dog"))
    rows = image_labels(dets, seg, image_size=(100, 200))  # 100 wide, 200 high: the cat box is clipped
    by_key = {(r.source, r.label): r for r in rows}
    dog = by_key[("detector", "dog")]
    assert dog.count == 2 and dog.max_score == 0.9
    assert dog.area_fraction == pytest.approx((2500 + 2500 - 625) / 20000)
    assert by_key[("detector", "cat")].area_fraction == pytest.approx(100 / 20000)
    assert by_key[("segmenter", "dog")].area_fraction == 0.3
    with pytest.raises(ImsearchError, match="image_size"):
        image_labels(dets, None, image_size=(0, 10))


# ---------------------------------------------------------------- model files and registry


def test_model_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path))
    assert model_dir() == tmp_path and model_dir("/x") == Path("/x")
    monkeypatch.delenv(MODEL_DIR_ENV)
    (tmp_path / "shared" / "models").mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    assert model_dir().resolve() == (tmp_path / "shared" / "models").resolve()
    monkeypatch.chdir(tmp_path / "shared" / "models")  # no ../shared/models from here
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert model_dir() == tmp_path / "home" / ".cache" / "imsearch" / "models"


def test_sha256_mismatch_missing_and_unknown_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "yolox_nano.onnx").write_bytes(b"not the model")
    with pytest.raises(ModelFormatError, match=KNOWN_SHA256["yolox_nano.onnx"]) as err:
        create_detector("yolox_nano", model_dir=tmp_path)
    assert str(tmp_path / "yolox_nano.onnx") in str(err.value)
    with pytest.raises(WeightsUnavailableError, match=KNOWN_SHA256["deeplabv3_mobilenetv2_voc.onnx"]):
        create_segmenter("deeplabv3_mobilenetv2_voc", model_dir=tmp_path)
    other = tmp_path / "my_yolox.onnx"
    shutil.copy(MODELS / "yolox_nano.onnx", other)
    with pytest.raises(ModelFormatError, match="verify=False"):
        create_detector("yolox", file=other)
    with caplog.at_level(logging.WARNING, logger="retrieval.vision.modelfiles"):
        unverified = create_detector("yolox", file=other, verify=False, score_threshold=0.5)
    assert "without verification" in caplog.text
    assert unverified.identity["sha256"] == KNOWN_SHA256["yolox_nano.onnx"]
    assert unverified.identity["score_threshold"] == 0.5 and unverified.name == "my_yolox"
    assert resolve_model_file(other, sha256=KNOWN_SHA256["yolox_nano.onnx"])[0] == other


def test_registry_errors_list_valid_names() -> None:
    with pytest.raises(UnknownNameError, match=r"yolox_nano") as err:
        create_detector("yolo_nano")
    assert "tv:fasterrcnn_mobilenet_v3_large_fpn" in err.value.valid
    with pytest.raises(UnknownNameError, match=r"deeplabv3_mobilenetv2_voc"):
        create_segmenter("deeplab")
    with pytest.raises(ImsearchError, match="score_threshold"):
        create_detector("yolox_nano", model_dir=MODELS, score_threshold=1.5)


# ---------------------------------------------------------------- torchvision, random weights


@pytest.mark.parametrize("arch", ["fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn_v2"])
def test_torchvision_detectors_run_end_to_end(arch: str) -> None:
    torch.manual_seed(0)  # random weights: some draws give no box at all; this one gives some
    det = create_detector(f"tv:{arch}", weights="random", score_threshold=0.0, max_detections=20,
                          min_size=96, max_size=128, device="cpu")  # fmt: skip
    assert det.class_names == list(COCO_CLASSES)
    images = [data.astronaut()[::4, ::4].copy(), data.chelsea()[::3, ::3].copy()]
    results = det.detect(images)
    assert len(results) == 2 and all(0 < len(r) <= 20 for r in results)
    for image, dets in zip(images, results, strict=True):
        assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
        for d in dets:
            assert d.label in COCO_CLASSES and isinstance(d.score, float)
            assert 0 <= d.box[0] <= d.box[2] <= image.shape[1] and 0 <= d.box[1] <= d.box[3] <= image.shape[0]
    assert det.identity["weights"] == "random" and det.identity["arch"] == arch


@pytest.mark.parametrize("arch", ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"])
def test_torchvision_segmenters_run_end_to_end(arch: str) -> None:
    torch.manual_seed(0)
    seg = create_segmenter(f"tv:{arch}", weights="random", resize=64, device="cpu")
    assert set(seg.class_names) <= set(COCO_CLASSES) and len(seg.class_names) == 20
    out = seg.segment([data.chelsea()])[0]  # 300x451 -> 64x96
    assert out.label_map.shape == (64, 96) and out.label_map.dtype == np.uint8
    assert set(out.class_fractions) <= set(seg.class_names)
    assert sum(out.class_fractions.values()) <= 1.0 + 1e-9
    assert all(0.0 <= v <= 1.0 for v in out.class_scores.values())


def test_torchvision_weights_file_round_trip_and_missing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    random_seg = create_segmenter("tv:lraspp_mobilenet_v3_large", weights="random", resize=48, device="cpu")
    path = tmp_path / "lraspp.pth"
    torch.save(random_seg.model.state_dict(), path)  # type: ignore[attr-defined]
    loaded = create_segmenter("tv:lraspp_mobilenet_v3_large", weights_path=path, resize=48, device="cpu")
    image = data.coffee()
    a, b = random_seg.segment([image])[0], loaded.segment([image])[0]
    assert np.array_equal(a.label_map, b.label_map) and a.class_fractions == b.class_fractions
    assert loaded.identity["weights"] == "file:lraspp.pth" and len(loaded.identity["sha256"]) == 64
    with pytest.raises(WeightsUnavailableError, match="weights_path"):
        create_detector("tv:fasterrcnn_mobilenet_v3_large_fpn", weights_path=tmp_path / "none.pth")
    with pytest.raises(ModelFormatError, match="does not fit"):
        create_segmenter("tv:deeplabv3_mobilenet_v3_large", weights_path=path)
