"""Detector and segmenter registries: ``create_detector("yolox_nano")``, ``create_segmenter(...)``.

Names: ONNX models by file stem (``yolox_nano``, ``deeplabv3_mobilenetv2_voc``), the
generic ``yolox`` / ``deeplabv3`` (pass ``file=`` a compatible ONNX export), and
torchvision models as ``tv:<arch>``. Back ends are imported only when created, so
importing this module loads neither onnxruntime nor torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from retrieval.errors import ImsearchError, UnknownNameError
from retrieval.vision.types import Detector, Segmenter

TV_DETECTOR_ARCHS = ("fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn_v2")
TV_SEGMENTER_ARCHS = ("deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")


def _yolox(file: str | None = None) -> Callable[..., Detector]:
    def make(**kwargs: Any) -> Detector:
        from retrieval.vision.yolox import YoloxDetector

        if file is None and "file" not in kwargs:
            raise ImsearchError("detector 'yolox' needs file= (path or name of a YOLOX ONNX export)")
        if file is not None:
            kwargs.setdefault("file", file)
        return YoloxDetector(**kwargs)

    return make


def _deeplab(file: str | None = None) -> Callable[..., Segmenter]:
    def make(**kwargs: Any) -> Segmenter:
        from retrieval.vision.deeplab import DeeplabSegmenter

        if file is None and "file" not in kwargs:
            raise ImsearchError("segmenter 'deeplabv3' needs file= (path or name of a DeepLabV3 ONNX export)")
        if file is not None:
            kwargs.setdefault("file", file)
        return DeeplabSegmenter(**kwargs)

    return make


def _tv_detector(arch: str) -> Callable[..., Detector]:
    def make(**kwargs: Any) -> Detector:
        from retrieval.vision.torchvision_backend import TorchvisionDetector

        return TorchvisionDetector(arch, **kwargs)

    return make


def _tv_segmenter(arch: str) -> Callable[..., Segmenter]:
    def make(**kwargs: Any) -> Segmenter:
        from retrieval.vision.torchvision_backend import TorchvisionSegmenter

        return TorchvisionSegmenter(arch, **kwargs)

    return make


DETECTORS: dict[str, Callable[..., Detector]] = {
    "yolox_nano": _yolox("yolox_nano.onnx"),
    "yolox": _yolox(),
    **{f"tv:{arch}": _tv_detector(arch) for arch in TV_DETECTOR_ARCHS},
}
SEGMENTERS: dict[str, Callable[..., Segmenter]] = {
    "deeplabv3_mobilenetv2_voc": _deeplab("deeplabv3_mobilenetv2_voc.onnx"),
    "deeplabv3": _deeplab(),
    **{f"tv:{arch}": _tv_segmenter(arch) for arch in TV_SEGMENTER_ARCHS},
}


def available_detectors() -> list[str]:
    """Registered detector names."""
    return sorted(DETECTORS)


def available_segmenters() -> list[str]:
    """Registered segmenter names."""
    return sorted(SEGMENTERS)


def create_detector(name: str, **kwargs: Any) -> Detector:
    """Build the detector ``name`` with back-end keyword arguments (thresholds, device...)."""
    try:
        factory = DETECTORS[name]
    except KeyError:
        raise UnknownNameError("detector", name, available_detectors()) from None
    return factory(**kwargs)


def create_segmenter(name: str, **kwargs: Any) -> Segmenter:
    """Build the segmenter ``name`` with back-end keyword arguments (device, weights...)."""
    try:
        factory = SEGMENTERS[name]
    except KeyError:
        raise UnknownNameError("segmenter", name, available_segmenters()) from None
    return factory(**kwargs)
