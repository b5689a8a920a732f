"""EfficientNet-Lite0: the .pth reader, the weight mapping (real ImageNet classes) and embeddings."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from indexer.embedders import Embedder, EmbedderSpec
from indexer.embedders import efficientnet_lite as lite
from indexer.embedders.torch_legacy import LEGACY_MAGIC, read_legacy_state_dict
from indexer.errors import ModelError, WeightsFormatError
from indexer.images import DecodeConfig, decode_image
from tests.conftest import jpeg_bytes

ESPRESSO, DAISY = 967, 985
CAT_CLASSES = set(range(281, 286))
MOTORBIKE_CLASSES = {665, 670}  # moped, motor scooter


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return read_legacy_state_dict(lite.packaged_weights_path())


def test_reads_every_tensor_of_the_real_file(state: dict[str, np.ndarray]) -> None:
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (lite.NUM_CLASSES, lite.HEAD_CHANNELS)
    assert all(v.dtype == np.float32 for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert (state["_bn1.running_var"] > 0).all()


def test_refuses_pickled_code(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    with path.open("wb") as fh:
        pickle.dump(LEGACY_MAGIC, fh)
        pickle.dump(1001, fh)
        pickle.dump({}, fh)
        pickle.dump({"x": Evil()}, fh)
    with pytest.raises(WeightsFormatError, match="refusing to load global"):
        read_legacy_state_dict(path)


@pytest.mark.parametrize("cut", [0.3, 0.9, 0.99999])
def test_truncated_file_names_the_file(tmp_path, cut: float) -> None:
    data = lite.packaged_weights_path().read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(WeightsFormatError, match="cut.pth"):
        read_legacy_state_dict(path)


def test_not_a_torch_file(tmp_path) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(b"hello")
    with pytest.raises(WeightsFormatError, match="x.pth"):
        read_legacy_state_dict(path)


def _classify_input(arr: np.ndarray) -> np.ndarray:
    im = Image.fromarray(arr).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC)
    w, h = im.size
    left, top = (w - 224) // 2, (h - 224) // 2
    return np.asarray(im.crop((left, top, left + 224, top + 224)), np.float32)


def test_real_weights_classify_real_photos(photos) -> None:
    model = lite.build(include_top=True)
    lite.load_torch_weights(model, lite.packaged_weights_path())
    names = ["coffee", "chelsea", "flower", "motorcycle"]
    logits = model.predict(lite.preprocess(np.stack([_classify_input(photos[n]) for n in names])), verbose=0)
    top = dict(zip(names, logits.argmax(axis=1)))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    assert top["coffee"] == ESPRESSO and probs[0, ESPRESSO] > 0.8
    assert top["chelsea"] in CAT_CLASSES
    assert top["flower"] == DAISY
    assert top["motorcycle"] in MOTORBIKE_CLASSES


@pytest.fixture(scope="module")
def feature_model():
    return lite.build(include_top=False)


def _edited(state: dict[str, np.ndarray], remove: tuple[str, ...], replace: dict[str, np.ndarray]) -> dict:
    return {**{k: v for k, v in state.items() if k not in remove}, **replace}


STEM_5X5 = np.zeros((32, 3, 5, 5), np.float32)  # the real stem is 3x3


@pytest.mark.parametrize(
    "remove,replace,match",
    [
        (
            (),
            {"_conv_stem.weight": STEM_5X5},
            r"_conv_stem shapes expected \[\(3, 3, 3, 32\)\], got \[\(5, 5, 3, 32\)\]",
        ),
        (("_bn0.running_var",), {}, r"weight '_bn0.running_var' expected but missing"),
        ((), {"_conv_stem.bias": np.zeros(32, np.float32)}, r"not mapped onto the model: \['_conv_stem.bias'\]"),
        ((), {"_head_extra.weight": np.zeros((4, 4, 1, 1), np.float32)}, r"no layer for weights '_head_extra'"),
    ],
    ids=["wrong-shape", "missing-tensor", "leftover-tensor", "unknown-layer"],
)
def test_mismatched_weights_are_refused(feature_model, state, monkeypatch, remove, replace, match: str) -> None:
    """The real file maps onto the model; the same file with one tensor of the wrong shape, missing, extra or
    for a layer the model lacks is refused with a ModelError naming the file and the tensor."""
    path = lite.packaged_weights_path()
    monkeypatch.setattr(lite, "read_legacy_state_dict", lambda _: _edited(state, remove, replace))
    with pytest.raises(ModelError, match=match) as info:
        lite.load_torch_weights(feature_model, path)
    assert str(path) in str(info.value)
    monkeypatch.setattr(lite, "read_legacy_state_dict", lambda _: dict(state))
    lite.load_torch_weights(feature_model, path)  # control: the unedited weights load


def test_weights_for_layers_the_model_lacks_are_refused() -> None:
    full = lite.build(include_top=True)
    truncated = full.__class__(full.input, full.get_layer("bn0").output)  # stops after the stem
    with pytest.raises(ModelError, match="no layer for weights '_blocks"):
        lite.load_torch_weights(truncated, lite.packaged_weights_path())


def test_embedding_dimension_is_read_from_the_model(lite_embedder: Embedder) -> None:
    assert lite_embedder.dim == lite.HEAD_CHANNELS
    assert lite_embedder.input_size == lite.INPUT_SIZE


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_edited_copy_is_closer_than_other_photos(lite_embedder: Embedder, photos) -> None:
    cfg = DecodeConfig(size=lite_embedder.input_size, resize="pad")
    names = list(photos)
    originals = np.stack([decode_image(jpeg_bytes(photos[n]), cfg) for n in names])
    copies = []
    for n in names:
        im = Image.fromarray(photos[n])
        w, h = im.size
        dx, dy = w * 3 // 100, h * 3 // 100  # crop 3% per side, re-encode at JPEG quality 75
        copies.append(decode_image(jpeg_bytes(im.crop((dx, dy, w - dx, h - dy)), quality=75), cfg))
    e_orig, e_copy = lite_embedder.embed(originals), lite_embedder.embed(np.stack(copies))
    same = [_cos(e_orig[i], e_copy[i]) for i in range(len(names))]
    different = [_cos(e_orig[i], e_orig[j]) for i in range(len(names)) for j in range(len(names)) if i != j]
    print("cosine same:", dict(zip(names, np.round(same, 3))), "max different:", round(max(different), 3))
    assert min(same) >= 0.9, dict(zip(names, same))
    assert min(same) > max(different) + 0.05, (min(same), max(different))


def test_batched_equals_single(lite_embedder: Embedder, photos) -> None:
    cfg = DecodeConfig(size=lite_embedder.input_size)
    batch = np.stack([decode_image(jpeg_bytes(photos[n]), cfg) for n in ("coffee", "rocket", "china")])
    together = lite_embedder.embed(batch)
    alone = np.stack([lite_embedder.embed(batch[i : i + 1])[0] for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-4)


def test_random_init_is_deterministic_across_instances() -> None:
    spec = EmbedderSpec(model="efficientnet_lite0", weights="none", pooling="max")
    a, b = Embedder(spec), Embedder(spec)
    x = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(a.embed(x), b.embed(x))
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != Embedder(EmbedderSpec(weights="none", pooling="avg")).fingerprint


@pytest.mark.parametrize("model,pooling,dim", [("vgg16", "flatten", 7 * 7 * 512), ("vgg16", "avg", 512)])
def test_keras_application_backbones_offline(model: str, pooling: str, dim: int) -> None:
    emb = Embedder(EmbedderSpec(model=model, weights="none", pooling=pooling))
    assert emb.dim == dim  # the notebooks' 25088-d VGG16 features, read from the model
    out = emb.embed(np.zeros((1, emb.input_size, emb.input_size, 3), np.uint8))
    assert out.shape == (1, dim) and np.isfinite(out).all()


def test_local_weights_file_round_trip(tmp_path, lite_embedder: Embedder, photos) -> None:
    path = tmp_path / "lite.weights.h5"
    lite_embedder.model.save_weights(str(path))
    # a keras weights file for the feature model: load it into a fresh backbone
    emb = Embedder(EmbedderSpec(weights=str(path)))
    x = decode_image(jpeg_bytes(photos["coffee"]), DecodeConfig(size=224))[None]
    np.testing.assert_allclose(emb.embed(x), lite_embedder.embed(x), rtol=1e-5, atol=1e-5)
    assert emb.fingerprint != lite_embedder.fingerprint  # a different weights source is a different cache key


def test_unknown_model_and_missing_weights_file() -> None:
    with pytest.raises(ModelError, match="expected one of"):
        EmbedderSpec(model="alexnet").validate()
    with pytest.raises(ModelError, match="existing file"):
        EmbedderSpec(weights="/nonexistent/w.h5").validate()
