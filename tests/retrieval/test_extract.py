"""Batched extraction: equal to a naive per-image reference, bf16 within tolerance, odd inputs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.errors import ImageDecodeError, ImsearchError
from retrieval.imageio import decode_image
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import ExtractItem, Extractor, input_size, resolve_engine
from retrieval.models.pooling import l2n
from tests import imagefactory as f


@pytest.fixture(scope="module")
def model() -> DescriptorModel:
    return DescriptorModel.create("efficientnet_lite0")  # the default: R-MAC, 3 scales, max side 512


@pytest.fixture(scope="module")
def small() -> DescriptorModel:
    return DescriptorModel.create("efficientnet_lite0", max_side=224, scales=(1.0, 0.7071))


def naive_descriptor(model: DescriptorModel, path: Path) -> np.ndarray:
    """Research-code style: decode, resize, fp32 NCHW forward per scale, sum, L2."""
    img = Image.open(path).convert("RGB")
    total = None
    for scale in model.meta.scales:
        size = input_size(img.width, img.height, model.meta.max_side, scale, model.meta.stride)
        arr = np.asarray(img.resize(size, Image.Resampling.BILINEAR))
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None]
        with torch.inference_mode():
            d = model(x)[0].double()
        total = d if total is None else total + d
    assert total is not None
    return l2n(total).numpy()


def test_input_size_snaps_to_stride() -> None:
    assert input_size(300, 200, 512, 1.0, 32) == (512, 352)  # 341.3 -> 352
    assert input_size(200, 300, 512, 0.5, 32) == (160, 256)
    assert input_size(4000, 30, 512, 1.0, 32) == (512, 32)  # never below one stride
    assert input_size(300, 300, 1024, 1.0, 16) == (1024, 1024)


def test_fp32_extraction_equals_the_naive_reference(small: DescriptorModel) -> None:
    paths = f.real_photos(6)
    ex = Extractor(small, precision="fp32", batch_size=4)
    got = ex.extract(paths)
    want = np.stack([naive_descriptor(small, p) for p in paths])
    cos = (got * want).sum(axis=1)
    assert cos.min() > 0.99999, cos


def test_descriptor_does_not_depend_on_the_batch(small: DescriptorModel) -> None:
    paths = f.real_photos(8)
    batched = Extractor(small, precision="fp32", batch_size=8).extract(paths)
    alone = np.stack([Extractor(small, precision="fp32", batch_size=1).extract([p])[0] for p in paths[:3]])
    np.testing.assert_allclose(batched[:3], alone, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_bf16_channels_last_within_tolerance_of_fp32_on_real_photos(model: DescriptorModel) -> None:
    paths = f.real_photos(16, stride=251)
    fp32 = Extractor(model, precision="fp32", batch_size=8, fuse=False, channels_last=False).extract(paths)
    bf16 = Extractor(model, precision="bf16", batch_size=8).extract(paths)
    cos = (fp32 * bf16).sum(axis=1)
    assert cos.mean() >= 0.999 and cos.min() >= 0.995, cos


def test_bytes_paths_arrays_and_decoded_agree(small: DescriptorModel) -> None:
    path = f.real_photos(1)[0]
    ex = Extractor(small, precision="fp32")
    decoded = decode_image(path)
    d = ex.extract([path, path.read_bytes(), decoded, decoded.pixels])
    np.testing.assert_allclose(d[1:], np.repeat(d[:1], 3, axis=0), atol=1e-6)


def test_odd_files_fail_alone_and_the_rest_succeed(tmp_path: Path, small: DescriptorModel) -> None:
    files = f.odd_files(tmp_path)
    ex = Extractor(small, batch_size=4)
    results = {r.key: r for r in ex.iter_extract(ExtractItem(n, tmp_path / n) for n in files)}
    assert set(results) == set(files)
    for name, (_, good) in files.items():
        res = results[name]
        if good:
            assert res.ok and res.descriptor is not None and res.descriptor.shape == (small.meta.dim,), name
            assert abs(float(np.linalg.norm(res.descriptor)) - 1) < 1e-4
        else:
            assert not res.ok and res.descriptor is None and res.error, name
    assert "over the limit" in str(results["bomb.png"].error)
    assert "truncated" in str(results["truncated.jpg"].error)
    with pytest.raises(ImageDecodeError, match="empty file"):
        ex.extract([tmp_path / "empty.jpg"])


def test_region_descriptors(small: DescriptorModel) -> None:
    path = f.real_photos(1)[0]
    w, h = Image.open(path).size
    single = DescriptorModel.create("efficientnet_lite0", max_side=224, scales=(1.0,))
    ex = Extractor(single, precision="fp32")
    res = ex.extract_one(path, boxes=[(0, 0, w, h), (w * 0.25, h * 0.25, w * 0.75, h * 0.75)])
    assert res.regions is not None and res.regions.shape == (2, single.meta.dim)
    # a box covering the whole image is the whole-image descriptor
    assert float(res.regions[0] @ res.descriptor) > 0.9999
    assert float(res.regions[1] @ res.descriptor) < 0.99
    bad = ex.extract_one(path, boxes=[(10, 10, 5, 5)])
    assert not bad.ok and "empty" in str(bad.error)


def test_annotator_boxes_are_pooled(small: DescriptorModel) -> None:
    path = f.real_photos(1)[0]

    def annotate(img):  # type: ignore[no-untyped-def]
        w, h = img.original_size
        return [(0.0, 0.0, w / 2, h / 2)], {"seen": img.pixels.shape}

    res = Extractor(small, annotator=annotate).extract_one(path)
    assert res.ok and res.regions is not None and res.regions.shape[0] == 1
    assert res.annotation["seen"][2] == 3


def test_learn_whitening_from_a_collection(small: DescriptorModel) -> None:
    model = DescriptorModel.create("efficientnet_lite0", max_side=160, scales=(1.0,))
    ex = Extractor(model, batch_size=8)
    params = ex.learn_whitening(f.real_photos(12), dim=64)
    # R-MAC whitening is learned on region vectors: many more samples than images
    assert params.n_samples > 12 * 5 and params.weight.shape == (64, 1280)
    model.set_whitening(params, learned_from="test photos")
    out = Extractor(model).extract(f.real_photos(3))
    assert out.shape == (3, 64) and model.meta.dim == 64
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_pause_points_run_before_every_weight_layer_of_a_private_copy(small: DescriptorModel, precision: str) -> None:
    paths = f.real_photos(2)
    plain = Extractor(small, precision=precision, batch_size=2, fuse=False, channels_last=False)
    want = plain.extract(paths)
    hooked = Extractor(small, precision=precision, batch_size=2, fuse=False, channels_last=False)
    calls: list[int] = []
    layers = hooked.add_pause_points(lambda: calls.append(1))
    weighted = [m for m in small.backbone.modules() if not list(m.children()) and list(m.parameters())]
    assert layers == len(weighted) > 20
    got = hooked.extract(paths)
    np.testing.assert_array_equal(got, want)  # pausing changes nothing in the result
    assert len(calls) == layers * hooked.stats["batches"]
    # the model's own network (shared with searches) carries no hook
    calls.clear()
    np.testing.assert_array_equal(plain.extract(paths), want)
    assert calls == []
    assert all(not m._forward_pre_hooks for m in small.backbone.modules())


def test_onnxruntime_engine_equals_the_naive_fp32_reference(small: DescriptorModel) -> None:
    paths = f.real_photos(6, stride=97)
    ex = Extractor(small, engine="onnxruntime", batch_size=4)
    assert ex.engine == "onnxruntime" and ex.dtype == torch.float32
    got = ex.extract(paths)
    want = np.stack([naive_descriptor(small, p) for p in paths])
    cos = (got * want).sum(axis=1)
    assert cos.min() > 0.99999, cos
    # one image on the calling thread (the API's path) gives the same, and so do the feature maps
    alone = ex.extract_one(paths[0])
    np.testing.assert_allclose(alone.descriptor, got[0], atol=2e-5)  # type: ignore[arg-type]
    x = small.normalize(torch.from_numpy(np.asarray(Image.open(paths[0]).convert("RGB").resize((224, 160))).copy())
                        .permute(2, 0, 1)[None])
    with torch.inference_mode():
        torch_maps = small.features(x)
    onnx_maps = ex.run_backbone(x)
    assert onnx_maps.shape == torch_maps.shape == (1, 1280, 5, 7)
    np.testing.assert_allclose(onnx_maps.numpy(), torch_maps.numpy(), atol=1e-3 * float(torch_maps.abs().max()))


def test_onnxruntime_engine_pools_boxes_and_refuses_pause_points(small: DescriptorModel) -> None:
    path = f.real_photos(1)[0]
    w, h = Image.open(path).size
    boxes = [(w * 0.1, h * 0.2, w * 0.6, h * 0.9)]
    want = Extractor(small, precision="fp32").extract_one(path, boxes=boxes)
    ex = Extractor(small, engine="onnxruntime")
    got = ex.extract_one(path, boxes=boxes)
    assert got.regions is not None and want.regions is not None
    assert float(got.regions[0] @ want.regions[0]) > 0.99999
    with pytest.raises(ImsearchError, match="torch engine"):
        ex.add_pause_points(lambda: None)


def test_engine_choice() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_engine("auto", cpu) == "onnxruntime"  # installed with the [onnx] extra, as the tests are
    assert resolve_engine("auto", cuda) == "torch"
    assert resolve_engine("torch", cpu) == "torch"
    with pytest.raises(ImsearchError, match="CPU only"):
        resolve_engine("onnxruntime", cuda)
    with pytest.raises(ImsearchError, match="unknown engine 'tensorrt'"):
        resolve_engine("tensorrt", cpu)


def test_engine_auto_falls_back_to_torch_when_the_export_fails() -> None:
    class Unexportable(torch.nn.Module):  # singular values: an operator ONNX has no translation for
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y: torch.Tensor = self.inner(x)
            return y + 0.0 * torch.linalg.svdvals(y[:, :, :2, :2].float()).sum().to(y.dtype)

    model = DescriptorModel.create("efficientnet_lite0", max_side=128, scales=(1.0,))
    model.backbone.body = Unexportable(model.backbone.body)
    ex = Extractor(model, engine="auto", fuse=False)
    assert ex.engine == "torch" and ex.onnx is None
    assert ex.extract(f.real_photos(1)).shape == (1, 1280)
    with pytest.raises(ImsearchError, match="could not be exported to ONNX"):
        Extractor(model, engine="onnxruntime", fuse=False)


def _in_thread_with_torch_threads(n: int, fn):  # type: ignore[no-untyped-def]
    """``fn()`` on a fresh thread whose torch thread count is ``n`` (torch's setting is per thread)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(n,)) as pool:
        return pool.submit(fn).result()


def test_model_layout_spends_the_calling_threads_budget_on_single_threaded_model_threads(
    small: DescriptorModel,
) -> None:
    ex = Extractor(small, device="cpu")
    assert _in_thread_with_torch_threads(2, ex.model_layout) == (2, 1)
    assert _in_thread_with_torch_threads(4, ex.model_layout) == (4, 1)
    # an index job that gave its thread one torch thread runs its batches on that thread
    assert _in_thread_with_torch_threads(1, ex.model_layout) == (1, 1)
    assert _in_thread_with_torch_threads(4, Extractor(small, device="cpu", model_threads=2).model_layout) == (2, 2)
    with pytest.raises(ImsearchError, match="model_threads must be >= 1"):
        Extractor(small, model_threads=0)


def test_model_threads_give_the_descriptors_of_one_thread(small: DescriptorModel) -> None:
    paths = f.real_photos(10, stride=211)
    one = Extractor(small, precision="fp32", batch_size=2, model_threads=1).extract(paths)
    ex = Extractor(small, precision="fp32", batch_size=2, model_threads=2)
    names: set[str] = set()
    ex.feature_hook = lambda feats, keys, scales: names.add(threading.current_thread().name)
    got = _in_thread_with_torch_threads(2, lambda: ex.extract(paths))
    assert names and all(n.startswith("imsearch-model") for n in names), names  # not the calling thread
    np.testing.assert_allclose(got, one, atol=2e-5)
    want = np.stack([naive_descriptor(small, p) for p in paths[:3]])
    assert float((got[:3] * want).sum(axis=1).min()) > 0.99999


def test_feature_hook_calls_never_overlap_across_model_threads(small: DescriptorModel) -> None:
    ex = Extractor(small, precision="fp32", batch_size=1, model_threads=2)
    active, most, calls = [0], [0], [0]
    lock = threading.Lock()

    def hook(feats: torch.Tensor, keys: list[object], scales: list[int]) -> None:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.02)  # long enough for the other model thread to arrive meanwhile
        with lock:
            active[0] -= 1
            calls[0] += 1

    ex.feature_hook = hook
    ex.extract(f.real_photos(4, stride=89))
    assert calls[0] == 4 * len(small.meta.scales) and most[0] == 1


def test_forward_batches_runs_the_pipelines_batches(small: DescriptorModel) -> None:
    single = DescriptorModel.create("efficientnet_lite0", max_side=160, scales=(1.0,))
    paths = f.real_photos(4, stride=151)
    arrays = []
    for p in paths:  # the pipeline's input: decoded, resized to the model's input size
        img = Image.open(p).convert("RGB")
        arrays.append(np.asarray(img.resize((160, 128), Image.Resampling.BILINEAR)))
    ex = Extractor(single, precision="fp32", model_threads=2)
    out = list(ex.forward_batches([arrays[:3], arrays[3:]]))
    assert [o.shape for o in out] == [(3, 1280), (1, 1280)]
    want = ex.extract(arrays)  # arrays already at the input size: resized to the same 160 x 128
    np.testing.assert_allclose(l2n(torch.cat(out)).numpy(), want, atol=2e-5)
