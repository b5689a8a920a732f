"""Issue #8 "Reliability II", indexer side: cache poisoning, the id domain, the .pth reader's bounds,
reasons instead of tracebacks, and normalization of huge vectors."""

from __future__ import annotations

import errno
import io
import math
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from indexer import bundle as bundles
from indexer import cli, pipeline
from indexer.cache import EmbeddingCache, content_hash
from indexer.catalog import CatalogConfig, load_catalog
from indexer.embedders.torch_legacy import LEGACY_MAGIC, LEGACY_PROTOCOL, read_legacy_state_dict
from indexer.errors import BuildError, CatalogError, WeightsFormatError
from indexer.ids import MAX_EXACT_FLOAT_ID, MAX_ITEM_ID, parse_id_array, parse_id_series, parse_id_text
from indexer.images import DecodeConfig, decode_image
from indexer.index import normalize
from indexer.pipeline import PipelineConfig, embed_files
from indexer.precomputed import PrecomputedConfig, load_precomputed

ROOT_DIR = Path(__file__).resolve().parent.parent
BIG = 2**60 + 1  # not representable in float64: a float on its way turns it into 2**60
BIG18 = 10**17 + 3  # 18 digits, above 2**53: not representable in float64 either
DECODE = DecodeConfig(size=16)
QUIET = PipelineConfig(batch_size=4, decode_workers=2, progress=False)


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 30), colour).save(buf, "PNG")
    return buf.getvalue()


def _mean_colour(images: np.ndarray) -> np.ndarray:
    """A deterministic stand-in for the CNN: the mean colour of each decoded poster."""
    return images.reshape(len(images), -1, 3).mean(axis=1).astype(np.float32)


# --- 5. embedding cache poisoning -------------------------------------------------------------------------------


def test_poster_replaced_during_the_build_cannot_poison_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    red, blue, green = _png((200, 0, 0)), _png((0, 0, 200)), _png((0, 200, 0))
    paths = [tmp_path / "a.png", tmp_path / "flip.png", tmp_path / "c.png"]
    for path, data in zip(paths, (green, red, green)):
        path.write_bytes(data)
    # flip.png is red on disk; any read after the first sees it replaced by blue (it is restored afterwards)
    reads: dict[str, int] = {}
    real_read = pipeline._read

    def replaced_after_first_read(path: Path, *args: object) -> bytes:
        reads[path.name] = reads.get(path.name, 0) + 1
        if path.name == "flip.png" and reads[path.name] > 1:
            return blue
        return real_read(path, *args)

    monkeypatch.setattr(pipeline, "_read", replaced_after_first_read)
    oracle = {content_hash(d): _mean_colour(decode_image(d, DECODE)[None])[0] for d in (red, blue, green)}
    with EmbeddingCache(tmp_path / "cache.sqlite", "fake", 3) as cache:
        first = embed_files(paths, _mean_colour, DECODE, QUIET, cache)
        assert reads == {"a.png": 1, "flip.png": 1, "c.png": 1}  # each file read once
        stored = cache.items()
        assert stored, "nothing cached"
        for key, vector in stored.items():  # every cached vector is the embedding of the bytes hashed as its key
            np.testing.assert_array_equal(vector, oracle[key])
        monkeypatch.setattr(pipeline, "_read", real_read)  # the file is back to red
        second = embed_files(paths, _mean_colour, DECODE, QUIET, cache)
    np.testing.assert_array_equal(second.vectors[1], oracle[content_hash(red)])
    np.testing.assert_array_equal(first.vectors[1], second.vectors[1])
    assert (second.embedded, second.from_cache) == (0, 3)


def test_identical_posters_are_embedded_once_and_failures_keep_their_reason(tmp_path: Path) -> None:
    files = {
        "1.png": _png((10, 20, 30)),
        "2.png": _png((10, 20, 30)),
        "3.png": b"not an image",
        "4.png": _png((90, 80, 70)),
        "5.png": b"x" * 2_000,
    }
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    calls: list[int] = []

    def embed(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return _mean_colour(images)

    out = embed_files(
        paths + [tmp_path / "missing.png"],
        embed,
        DecodeConfig(size=16, max_bytes=1_000),
        PipelineConfig(batch_size=1, progress=False),
    )
    assert sum(calls) == 2  # two distinct readable contents
    np.testing.assert_array_equal(out.vectors[0], out.vectors[1])
    assert (out.embedded, out.from_cache) == (3, 0)
    assert set(out.failures) == {2, 4, 5}
    assert "not a recognised image" in out.failures[2]
    assert "1000 bytes" in out.failures[4]
    assert "cannot read file" in out.failures[5]


def test_corrupt_cache_file_is_a_build_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.sqlite"
    path.write_bytes(b"not a database " * 100)
    with pytest.raises(BuildError, match=f"embedding cache {path} is unusable: file is not a database"):
        EmbeddingCache(path, "fake", 3)


# --- 7. the id domain -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("862", 862),
        ("862.0", 862),
        (" 862 ", 862),
        ("+7", 7),
        ("8.620000000000000000e+02", 862),
        ("1e3", 1000),
        ("0", 0),
        ("-0", 0),
        ("000000000000000000000012", 12),
        (str(MAX_ITEM_ID), MAX_ITEM_ID),
        (str(BIG), BIG),
        (f"{BIG}.000", BIG),
    ],
    ids=lambda v: str(v)[:24],
)
def test_id_text_accepted_exactly(text: str, expected: int) -> None:
    assert parse_id_text(text) == (expected, None)


@pytest.mark.parametrize(
    "text,reason",
    [
        ("", "blank"),
        ("  ", "blank"),
        ("-5", "negative"),
        ("1e20", "above 2**63-1"),
        (str(2**63), "above 2**63-1"),
        (str(2**63 + 5), "above 2**63-1"),
        ("2^63+5", "not an integer"),
        ("abc", "not an integer"),
        ("862.5", "not an integer"),
        ("0x10", "not an integer"),
        ("1_000", "not an integer"),
        ("nan", "not an integer"),
        ("inf", "not an integer"),
        ("٣", "not an integer"),
        ("9" * 5000, "characters"),
    ],
    ids=lambda v: str(v)[:24],
)
def test_id_text_rejected_with_a_reason(text: str, reason: str) -> None:
    value, why = parse_id_text(text)
    assert value is None and reason in why


def test_id_arrays_never_pass_through_float() -> None:
    parsed = parse_id_series(pd.Series([str(BIG), "abc", "862.0", None, str(MAX_ITEM_ID), str(BIG18)], dtype=object))
    assert parsed.ids[parsed.ok].tolist() == [BIG, 862, MAX_ITEM_ID, BIG18]  # one bad value changes no other id
    assert parsed.reasons == {1: "is not an integer", 3: "is blank"}
    unsigned = parse_id_array(np.array([2**63 + 5, 2**63 - 1, 3], np.uint64))
    assert unsigned.ok.tolist() == [False, True, True] and unsigned.ids[1] == MAX_ITEM_ID
    assert parse_id_array(np.array([-1, 5], np.int8)).ok.tolist() == [False, True]
    floats = parse_id_array(np.array([1.0, 2.5, np.nan, -1.0, float(MAX_EXACT_FLOAT_ID), MAX_EXACT_FLOAT_ID + 2.0]))
    assert floats.ok.tolist() == [True, False, False, False, True, False]
    assert "2**53" in floats.reasons[5]
    mixed = parse_id_array(np.array([BIG, None, "7", 2**64, 3.0, True], dtype=object))
    assert mixed.ids[mixed.ok].tolist() == [BIG, 7, 3]
    with pytest.raises(TypeError, match="bool"):
        parse_id_array(np.array([True]))


def test_catalog_rejects_ids_outside_the_domain_with_reasons(tmp_path: Path) -> None:
    posters = tmp_path / "posters"
    posters.mkdir()
    for name in ("1.jpg", f"{BIG}.jpg", "862.jpg", "9.jpg", f"{BIG18}.jpg"):
        (posters / name).write_bytes(b"x")
    (tmp_path / "movies.csv").write_text(
        "movieId,title\n1,One\n-5,Negative\n1e20,Huge\n"
        f"{2**63 + 5},Wraps\n2^63+5,Text\n{BIG},Big\n862.0,Float\n"
        "9,Nine\n"
        f"{BIG18},Big18\n"
    )
    (tmp_path / "links.csv").write_text("movieId,imdbId,tmdbId\n1,1,abc\n9,9,-3\n")
    cat = load_catalog(CatalogConfig(posters, tmp_path / "movies.csv", tmp_path / "links.csv"))
    assert cat.items["item_id"].tolist() == [1, 9, 862, BIG18, BIG]
    assert cat.items["poster"].tolist() == ["1.jpg", "9.jpg", "862.jpg", f"{BIG18}.jpg", f"{BIG}.jpg"]
    reasons = [p.reason for p in cat.problems]
    for raw, why, line in (
        ("'-5'", "negative", 3),
        ("'1e20'", "above 2**63-1", 4),
        (f"'{2**63 + 5}'", "above", 5),
        ("'2^63+5'", "not an integer", 6),
    ):
        assert any(r.startswith(f"movieId {raw} is {why}") and f"(line {line})" in r for r in reasons), (raw, reasons)
    assert any("tmdbId 'abc' is not an integer; left blank" in r for r in reasons)
    assert any("tmdbId '-3' is negative" in r for r in reasons)
    assert {p.file for p in cat.problems if "Id '" in p.reason and "left blank" in p.reason} == {
        str(tmp_path / "links.csv")
    }
    assert {p.file for p in cat.problems if p.reason.startswith("movieId")} == {str(tmp_path / "movies.csv")}


def test_bare_folder_file_named_with_20_digits_is_a_failure_row(tmp_path: Path) -> None:
    for name in ("12345678901234567890.jpg", f"poster {MAX_ITEM_ID}.png", "7.jpg"):
        (tmp_path / name).write_bytes(b"x")
    cat = load_catalog(CatalogConfig(tmp_path))
    assert cat.items["item_id"].tolist() == [7, MAX_ITEM_ID]
    [problem] = cat.problems
    assert problem.file == "12345678901234567890.jpg" and "above 2**63-1" in problem.reason


def _vectors(n: int, d: int = 4) -> np.ndarray:
    return np.random.default_rng(n).normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("kind", ["txt", "csv", "npy-uint64", "npy-float", "npz-int", "parquet-nullable"])
def test_precomputed_ids_outside_the_domain_are_rows_in_problems(tmp_path: Path, kind: str) -> None:
    x = _vectors(4)
    np.save(tmp_path / "v.npy", x)
    if kind == "txt":
        (tmp_path / "ids.txt").write_text(f"{BIG}\nabc\n-5\n7\n")
        config, good, bad = PrecomputedConfig(tmp_path / "v.npy", tmp_path / "ids.txt"), [BIG, 7], [1, 2]
    elif kind == "csv":
        (tmp_path / "ids.csv").write_text(f"item_id,note\n{BIG},a\n1e20\n{2**63 + 5},c\n7.0,d\n")
        config, good, bad = PrecomputedConfig(tmp_path / "v.npy", tmp_path / "ids.csv"), [BIG, 7], [1, 2]
    elif kind == "npy-uint64":
        np.save(tmp_path / "ids.npy", np.array([BIG, 2**63 + 5, 2**64 - 1, 7], np.uint64))
        config, good, bad = PrecomputedConfig(tmp_path / "v.npy", tmp_path / "ids.npy"), [BIG, 7], [1, 2]
    elif kind == "npy-float":
        np.save(tmp_path / "ids.npy", np.array([3.0, 2.5, 2.0**60, 7.0]))
        config, good, bad = PrecomputedConfig(tmp_path / "v.npy", tmp_path / "ids.npy"), [3, 7], [1, 2]
    elif kind == "npz-int":
        np.savez(tmp_path / "v.npz", ids=np.array([BIG, -1, -(2**63), 7]), vectors=x)
        config, good, bad = PrecomputedConfig(tmp_path / "v.npz"), [BIG, 7], [1, 2]
    else:
        embeddings = list(x)
        embeddings[2] = np.array([1.0, 2.0], np.float32)  # ragged: wrong length
        pd.DataFrame(
            {"item_id": pd.array([BIG, None, 2**62 + 3, 7], dtype="Int64"), "embedding": embeddings}
        ).to_parquet(tmp_path / "v.parquet")
        config, good, bad = PrecomputedConfig(tmp_path / "v.parquet"), [BIG, 7], [1, 2]
    ids, vectors, problems = load_precomputed(config)
    assert ids.tolist() == good
    rows = [pos for pos in range(4) if pos not in bad]
    np.testing.assert_array_equal(vectors, x[rows])
    assert len(problems) == len(bad) and all(p.stage == "precomputed" and "row skipped" in p.reason for p in problems)


@pytest.mark.parametrize(
    "case,match",
    [
        ("text-ids", "ids.txt: no valid item id in 3 rows"),
        ("binary-ids", "ids.txt: line 1 .* is not UTF-8"),
        ("string-vectors", "v.npy: vectors expected a numeric array"),
        ("bool-ids", "ids.npy: item ids expected integers"),
        ("parquet-string-vectors", "v.parquet: row 0: vector expected a list of numbers"),
    ],
)
def test_unusable_precomputed_files_are_catalog_errors_naming_the_file(tmp_path: Path, case: str, match: str) -> None:
    x = _vectors(3)
    np.save(tmp_path / "v.npy", x.astype(str) if case == "string-vectors" else x)
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n2\n3\n")
    if case == "text-ids":
        ids.write_text("one\ntwo\nthree\n")
    elif case == "binary-ids":
        ids.write_bytes(b"\x93NUMPY\x01\x00\xff\xfe")
    elif case == "bool-ids":
        ids = tmp_path / "ids.npy"
        np.save(ids, np.array([True, False, True]))
    config = PrecomputedConfig(tmp_path / "v.npy", ids)
    if case == "parquet-string-vectors":
        pd.DataFrame({"item_id": [1, 2], "embedding": [["a", "b"], ["c", "d"]]}).to_parquet(tmp_path / "v.parquet")
        config = PrecomputedConfig(tmp_path / "v.parquet")
    with pytest.raises(CatalogError, match=match):
        load_precomputed(config)


# --- 8. the restricted .pth reader ------------------------------------------------------------------------------


class _Global:
    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class _Call:
    def __init__(self, func: _Global, args: tuple) -> None:
        self.func, self.args = func, args


class _PersistentId:
    def __init__(self, pid: tuple) -> None:
        self.pid = pid


class _OrderedDict:
    def __init__(self, items: list[tuple[str, object]]) -> None:
        self.items = items


def _opcodes(obj: object) -> bytes:
    """Pickle opcodes (protocol 2) for the few shapes a legacy state dict uses, written by hand so that
    any offset, size or stride (negative, huge) can be encoded without torch."""
    if isinstance(obj, bool):
        return pickle.NEWTRUE if obj else pickle.NEWFALSE
    if obj is None:
        return pickle.NONE
    if isinstance(obj, int):
        n = (obj.bit_length() + 8) // 8
        return pickle.LONG1 + bytes([n]) + obj.to_bytes(n, "little", signed=True)
    if isinstance(obj, float):
        return pickle.BINFLOAT + struct.pack(">d", obj)
    if isinstance(obj, str):
        data = obj.encode()
        return pickle.BINUNICODE + struct.pack("<I", len(data)) + data
    if isinstance(obj, tuple):
        return pickle.MARK + b"".join(_opcodes(x) for x in obj) + pickle.TUPLE
    if isinstance(obj, _Global):
        return pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode()
    if isinstance(obj, _Call):
        return _opcodes(obj.func) + _opcodes(obj.args) + pickle.REDUCE
    if isinstance(obj, _PersistentId):
        return _opcodes(obj.pid) + pickle.BINPERSID
    if isinstance(obj, _OrderedDict):
        return _opcodes(_Call(_Global("collections", "OrderedDict"), ())) + b"".join(
            _opcodes(k) + _opcodes(v) + pickle.SETITEM for k, v in obj.items
        )
    raise TypeError(obj)


def legacy_pth(
    data: np.ndarray,
    offset: int,
    size: tuple,
    stride: tuple,
    storage_type: str = "FloatStorage",
    pid_numel: int | None = None,
    header_numel: int | None = None,
) -> bytes:
    """A legacy .pth with one tensor ``w`` viewing one storage holding ``data``."""
    numel = len(data)
    storage = _PersistentId(
        ("storage", _Global("torch", storage_type), "0", "cpu", numel if pid_numel is None else pid_numel)
    )
    tensor = _Call(
        _Global("torch._utils", "_rebuild_tensor_v2"), (storage, offset, size, stride, False, _OrderedDict([]))
    )
    return b"".join(
        [
            pickle.dumps(LEGACY_MAGIC, protocol=2),
            pickle.dumps(LEGACY_PROTOCOL, protocol=2),
            pickle.dumps({"protocol_version": LEGACY_PROTOCOL, "little_endian": True}, protocol=2),
            pickle.PROTO + b"\x02" + _opcodes(_OrderedDict([("w", tensor)])) + pickle.STOP,
            pickle.dumps(["0"], protocol=2),
            struct.pack("<q", numel if header_numel is None else header_numel),
            data.tobytes(),
        ]
    )


def view_oracle(storage: np.ndarray, offset: int, size: tuple, stride: tuple) -> np.ndarray | None:
    """What a valid view reads, element by element in Python; None for a view the reader must refuse."""
    if len(size) != len(stride) or offset < 0 or any(v < 0 for v in size + stride):
        return None
    if any(v > 2**63 - 1 for v in (offset, *size, *stride)):  # torch's fields are int64
        return None
    count = math.prod(size)
    if count > len(storage) or any(s > 2**31 - 1 for s in size):
        return None
    if count == 0:
        return np.zeros(size, storage.dtype) if offset <= len(storage) else None
    out = np.empty(size, storage.dtype)
    for index in np.ndindex(*size):
        flat = offset + sum(i * s for i, s in zip(index, stride))
        if flat >= len(storage):
            return None
        out[index] = storage[flat]
    return out


def test_a_correct_view_reads_like_numpy(tmp_path: Path) -> None:
    data = np.arange(24, dtype="<f4")
    path = tmp_path / "t.pth"
    path.write_bytes(legacy_pth(data, 1, (3, 2, 2), (1, 8, 4)))  # a permuted, offset view
    got = read_legacy_state_dict(path)["w"]
    np.testing.assert_array_equal(got, view_oracle(data, 1, (3, 2, 2), (1, 8, 4)))
    np.testing.assert_array_equal(got, np.lib.stride_tricks.as_strided(data[1:], (3, 2, 2), (4, 32, 16)))


@pytest.mark.parametrize(
    "offset,size,stride,match",
    [
        (0, (4,), (-3,), "non-negative"),  # leaked process memory into the weights
        (0, (4,), (-(10**12),), "non-negative"),  # segfaulted
        (-1, (2,), (1,), "non-negative"),
        (0, (3, 4), (4, 1), "more than its storage"),
        (9, (2,), (1,), "reaches element 10"),
        (0, (2, 2), (1,), "one stride per dimension"),
        (0, (2,), (2**70,), "64-bit"),
        (0, (2,), (1.5,), "64-bit"),
        (0, (0, 2**40), (1, 1), "sizes expected at most"),
        (11, (), (), "reaches element 11"),
    ],
)
def test_hostile_views_are_refused(tmp_path: Path, offset: int, size: tuple, stride: tuple, match: str) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(legacy_pth(np.arange(10, dtype="<f4"), offset, size, stride))
    with pytest.raises(WeightsFormatError, match=f"bad.pth.*{match}"):
        read_legacy_state_dict(path)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"pid_numel": -1}, "element count expected"),
        ({"pid_numel": 2**62}, "element count expected"),
        ({"header_numel": 2**62}, "its header says"),
        ({"header_numel": -5}, "its header says"),
        ({"storage_type": "ComplexFloatStorage"}, "refusing to load global torch.ComplexFloatStorage"),
    ],
)
def test_hostile_storage_headers_are_refused(tmp_path: Path, kw: dict, match: str) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(legacy_pth(np.arange(10, dtype="<f4"), 0, (10,), (1,), **kw))
    with pytest.raises(WeightsFormatError, match=match):
        read_legacy_state_dict(path)


_EDGE = st.sampled_from([-(2**63), -(10**12), -1, 2**31, 2**62, 2**63 - 1, 2**64])
_SMALL = st.integers(-3, 12)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(
    numel=st.integers(0, 24),
    offset=_SMALL,
    ndim=st.integers(0, 3),
    sizes=st.lists(st.integers(-1, 4), min_size=4, max_size=4),
    strides=st.lists(st.integers(-2, 12), min_size=4, max_size=4),
    stride_dims=st.sampled_from([0, 0, 0, -1, 1]),
    near_end=st.none() | st.integers(-2, 2),
    edge=st.none() | st.tuples(st.sampled_from(["offset", "size", "stride"]), st.integers(0, 3), _EDGE),
)
def test_fuzzed_views_load_like_the_oracle_or_are_refused(
    tmp_path: Path,
    numel: int,
    offset: int,
    ndim: int,
    sizes: list[int],
    strides: list[int],
    stride_dims: int,
    near_end: int | None,
    edge: tuple | None,
) -> None:
    data = (np.arange(numel, dtype="<f4") + 1) * 1.5
    if edge is not None:  # one extreme value: negative, beyond int64, far past the storage
        where, dim, value = edge
        if where == "offset":
            offset = value
        else:
            (sizes if where == "size" else strides)[dim] = value
    size, stride = tuple(sizes[:ndim]), tuple(strides[: max(0, ndim + stride_dims)])
    if near_end is not None and edge is None:  # the last reachable element just before, at or just after the end
        offset = numel - 1 - sum((s - 1) * t for s, t in zip(size, stride)) + near_end
    path = tmp_path / "fuzz.pth"
    path.write_bytes(legacy_pth(data, offset, size, stride))
    expected = view_oracle(data, offset, size, stride)
    if expected is None:
        with pytest.raises(WeightsFormatError):
            read_legacy_state_dict(path)
    else:
        got = read_legacy_state_dict(path)["w"]
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


@FUZZ
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.none() | st.integers(0, 10**6),
)
def test_fuzzed_bytes_load_or_are_refused(tmp_path: Path, flips: list[tuple[int, int]], cut: int | None) -> None:
    raw = bytearray(legacy_pth(np.arange(6, dtype="<f4"), 0, (2, 3), (3, 1)))
    for pos, value in flips:
        raw[pos % len(raw)] = value
    path = tmp_path / "mutated.pth"
    path.write_bytes(bytes(raw[: cut % len(raw)] if cut is not None else raw))
    try:
        state = read_legacy_state_dict(path)
    except WeightsFormatError:
        return
    assert all(isinstance(v, np.ndarray) for v in state.values())


def test_crafted_weights_end_the_build_with_a_reason_not_a_segfault(tmp_path: Path) -> None:
    """The issue's crash: `posters-index build --weights crafted.pth` exited 139 (SIGSEGV)."""
    crafted = tmp_path / "crafted.pth"
    crafted.write_bytes(legacy_pth(np.arange(10, dtype="<f4"), 0, (4,), (-(10**12),)))
    posters = tmp_path / "posters"
    posters.mkdir()
    (posters / "1.png").write_bytes(_png((1, 2, 3)))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "indexer.cli",
            "build",
            "--posters",
            str(posters),
            "--out",
            str(tmp_path / "root"),
            "--weights",
            str(crafted),
            "--quiet",
        ],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("posters-index: error: ") and "crafted.pth" in last and "non-negative" in last


# --- 11. reasons instead of tracebacks ----------------------------------------------------------------------------


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("posters-index: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture()
def pre(tmp_path: Path) -> Path:
    """Precomputed vectors for ids 1..4 (no model needed) plus a poster folder."""
    np.savez(tmp_path / "v.npz", ids=np.arange(1, 5), vectors=_vectors(4))
    (tmp_path / "posters").mkdir()
    return tmp_path


def test_ragged_csv_row_goes_to_failures_csv(pre: Path, capsys: pytest.CaptureFixture) -> None:
    (pre / "movies.csv").write_text(
        'movieId,title,genres\n1,One,Drama\n2,"Two, The",Drama,EXTRA\n3,Three\n4,"Four\nlines",Drama,X\n'
    )
    code, _ = _run(
        [
            "build",
            "--embeddings",
            str(pre / "v.npz"),
            "--movies",
            str(pre / "movies.csv"),
            "--out",
            str(pre / "root"),
            "--quiet",
            "--neighbours",
            "0",
        ],
        capsys,
    )
    assert code == 0
    failures = bundles.load_failures(bundles.current_path(pre / "root"))
    reasons = failures.loc[failures["file"] == str(pre / "movies.csv"), "reason"].tolist()
    assert reasons == [
        "line 3: expected 3 fields (movieId,title,genres), got 4; row skipped",
        "line 4: expected 3 fields (movieId,title,genres), got 2; row skipped",
        "lines 5-6: expected 3 fields (movieId,title,genres), got 4; row skipped",
    ]


def test_latin1_catalog_needs_encoding_and_names_the_line(pre: Path, capsys: pytest.CaptureFixture) -> None:
    data = "movieId,title\n1,One\n2,Amélie (2001)\n".encode("latin-1")
    (pre / "movies.csv").write_bytes(data)
    argv = [
        "build",
        "--embeddings",
        str(pre / "v.npz"),
        "--movies",
        str(pre / "movies.csv"),
        "--out",
        str(pre / "root"),
        "--quiet",
        "--neighbours",
        "0",
    ]
    code, err = _run(argv, capsys)
    line = _error_line(err)
    assert code == 2
    offset = data.index("é".encode("latin-1"))
    assert f"{pre / 'movies.csv'}: line 3 (byte {offset}) is not valid utf-8" in line and "--encoding latin-1" in line
    code, _ = _run([*argv, "--encoding", "latin-1"], capsys)
    assert code == 0
    items = bundles.load_bundle(bundles.current_path(pre / "root")).items
    assert items.loc[items["item_id"] == 2, "title"].tolist() == ["Amélie (2001)"]
    code, err = _run([*argv, "--encoding", "klingon"], capsys)
    assert code == 2 and "got 'klingon'" in _error_line(err)


@pytest.mark.parametrize(
    "case,expected",
    [
        ("pattern", "poster pattern '{tmdbId:s}' cannot format an integer id"),
        ("text-ids", "ids.txt: no valid item id in 4 rows"),
        ("string-vectors", "vs.npy: vectors expected a numeric array"),
        ("no-input", "build needs --posters"),
    ],
)
def test_fatal_input_problems_end_in_one_line_and_exit_2(
    pre: Path, capsys: pytest.CaptureFixture, case: str, expected: str
) -> None:
    (pre / "movies.csv").write_text("movieId,title\n1,One\n")
    (pre / "ids.txt").write_text("a\nb\nc\nd\n")
    np.save(pre / "vs.npy", _vectors(4).astype(str))
    np.save(pre / "v.npy", _vectors(4))
    argv = {
        "pattern": ["--movies", str(pre / "movies.csv"), "--posters", str(pre / "posters"), "--pattern", "{tmdbId:s}"],
        "text-ids": ["--embeddings", str(pre / "v.npy"), "--ids", str(pre / "ids.txt")],
        "string-vectors": ["--embeddings", str(pre / "vs.npy"), "--ids", str(pre / "ids.txt")],
        "no-input": [],
    }[case]
    if case == "string-vectors":
        (pre / "ids.txt").write_text("1\n2\n3\n4\n")
    code, err = _run(["build", *argv, "--out", str(pre / "root"), "--quiet"], capsys)
    assert code == 2
    assert expected in _error_line(err)


def test_twenty_digit_file_name_is_a_failure_row_not_a_crash(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    posters = tmp_path / "posters"
    posters.mkdir()
    (posters / "12345678901234567890.png").write_bytes(_png((1, 2, 3)))
    (posters / "5.png").write_bytes(_png((200, 100, 0)))
    code, _ = _run(
        [
            "build",
            "--posters",
            str(posters),
            "--out",
            str(tmp_path / "root"),
            "--weights",
            "none",
            "--quiet",
            "--neighbours",
            "0",
        ],
        capsys,
    )
    assert code == 0
    path = bundles.current_path(tmp_path / "root")
    assert bundles.load_bundle(path).items["item_id"].tolist() == [5]
    [row] = bundles.load_failures(path).itertuples(index=False)
    assert row.file == "12345678901234567890.png" and "above 2**63-1" in row.reason


def test_unwritable_index_root_is_one_line(pre: Path, capsys: pytest.CaptureFixture) -> None:
    """Tests run as root, which ignores permission bits, so a read-only root is stood in for by a path that
    cannot be created for real: --out below a regular file (ENOTDIR, like EROFS/EACCES an OSError)."""
    (pre / "file").write_text("x")
    code, err = _run(
        ["build", "--embeddings", str(pre / "v.npz"), "--out", str(pre / "file" / "root"), "--quiet"], capsys
    )
    assert code == 2
    assert str(pre / "file") in _error_line(err)


def test_disk_full_is_mapped_to_one_line_and_exit_2(
    pre: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the CLI's mapping of OSError(ENOSPC) is covered here (the bundle writer is tested by its owner)."""
    import indexer.build

    where = str(pre / "root" / "builds" / ".staging-x" / "index.faiss")

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", where)

    monkeypatch.setattr(indexer.build, "build", full)
    argv = ["build", "--embeddings", str(pre / "v.npz"), "--out", str(pre / "root"), "--quiet"]
    code, err = _run(argv, capsys)
    assert code == 2
    assert _error_line(err) == f"posters-index: error: No space left on device (ENOSPC): {where}"
    code = cli.main(["-v", *argv])
    assert code == 2 and "Traceback" in capsys.readouterr().err  # -v shows where it came from


def test_interrupt_exits_130_without_traceback(
    pre: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import indexer.build

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(indexer.build, "build", interrupted)
    code, err = _run(["build", "--embeddings", str(pre / "v.npz"), "--out", str(pre / "root"), "--quiet"], capsys)
    assert code == 130 and "interrupted" in err


# --- 12. normalization of huge values ---------------------------------------------------------------------------


def test_normalize_rows_near_the_float32_limits() -> None:
    x = np.array(
        [[3e38, 3e38, 1.0], [-3e38, 0, 0], [1e-40, 1e-40, 0], [3, 4, 0], [0, 0, 0], [np.nan, 1, 1], [np.inf, 0, 0]],
        np.float32,
    )
    out, ok = normalize(x)
    assert ok.tolist() == [True, True, True, True, False, False, False]
    exact = x[:4].astype(np.float64)
    scale = np.abs(exact).max(axis=1, keepdims=True)
    expected = (exact / scale) / np.linalg.norm(exact / scale, axis=1, keepdims=True)  # float64 oracle
    np.testing.assert_allclose(out[:4], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(out[:4].astype(np.float64), axis=1), 1.0, rtol=1e-6)
    assert not out[4:].any()
    rng = np.random.default_rng(0)
    y = rng.normal(size=(300, 16)).astype(np.float32) * rng.uniform(1e-30, 1e30, size=(300, 1)).astype(np.float32)
    out, ok = normalize(y)
    assert ok.all()
    y64 = y.astype(np.float64)
    np.testing.assert_allclose(out, y64 / np.linalg.norm(y64, axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
