"""Operations commands of posters-index: list, rollback, build --summary-json, failures by reason class."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer import bundle as bundles
from indexer.build import BuildConfig, build
from indexer.bundle.layout import build_lock, describe_builds
from indexer.catalog import CatalogConfig, load_catalog
from indexer.cli import main as index_main
from indexer.errors import ImageError
from indexer.failure_reasons import OTHER, count_reasons, reason_class
from indexer.images import DecodeConfig, decode_image
from indexer.index import IndexSpec
from indexer.precomputed import PrecomputedConfig, load_precomputed
from tests.conftest import QUIET, clustered_vectors
from tests.grpc_helpers import serve

ROOT_DIR = Path(__file__).resolve().parent.parent
DIM = 8
SIZES = (30, 40, 50)  # three builds, told apart by their item counts
CLI_TIMEOUT = 300


def _cli(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "indexer.cli", *args], cwd=ROOT_DIR, capture_output=True, text=True, timeout=CLI_TIMEOUT
    )
    assert "Traceback" not in out.stderr, out.stderr
    return out


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """posters-index in-process (fast): exit code, stdout, stderr without log records."""
    code = index_main(list(args))
    out, err = capsys.readouterr()
    return code, out, "".join(line for line in err.splitlines(keepends=True) if " INFO " not in line)


def _build(root: Path, tmp: Path, count: int) -> str:
    x = clustered_vectors(count, DIM, clusters=4, seed=count)
    np.save(tmp / f"v{count}.npy", x)
    np.save(tmp / f"ids{count}.npy", np.arange(count, dtype=np.int64) + 1)
    report = build(
        BuildConfig(
            index_root=root,
            precomputed=PrecomputedConfig(tmp / f"v{count}.npy", tmp / f"ids{count}.npy"),
            index=IndexSpec(kind="flat"),
            pipeline=QUIET,
            neighbours_k=5,
            keep_builds=len(SIZES),
        )
    )
    return report.build_id


@pytest.fixture()
def three_builds(tmp_path: Path) -> tuple[Path, list[str]]:
    """A root with three published builds (30, 40, 50 items), oldest first; CURRENT = the newest."""
    root = tmp_path / "root"
    built = [_build(root, tmp_path, n) for n in SIZES]
    assert bundles.list_builds(root) == built  # build ids sort by time
    return root, built


def _flip_byte(path: Path) -> None:
    """Change one byte, keeping the size: only a checksum sees it."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _tree_bytes(path: Path) -> int:
    return sum((Path(d) / f).stat().st_size for d, _, files in os.walk(path) for f in files)


# ---- failure reason classes ----------------------------------------------------------------------------------------


def test_reason_classes_of_the_reasons_the_indexer_really_writes(tmp_path: Path) -> None:
    """Each sentence comes from the code that writes failures.csv; the class expected for it is fixed here."""
    cat = tmp_path / "cat"
    (cat / "posters").mkdir(parents=True)
    (cat / "posters" / "11.jpg").write_bytes(b"x")
    (cat / "movies.csv").write_text(
        "movieId,title,genres\n1,A,Action\n2,B,Drama\n3,C,Drama\nabc,D,Drama\n1,A again,Action\n4,Too,Many,Fields\n"
    )
    (cat / "links.csv").write_text("movieId,imdbId,tmdbId\n1,111,11\n2,x,12\n3,113,\n")
    catalog = load_catalog(
        CatalogConfig(cat / "posters", cat / "movies.csv", cat / "links.csv", pattern="{tmdbId}.jpg")
    )
    x = np.ones((5, 4), np.float32)
    x[3] = np.nan
    np.save(cat / "v.npy", x)
    (cat / "ids.txt").write_text("1\nabc\n2\n3\n1\n")
    _, _, precomputed = load_precomputed(PrecomputedConfig(cat / "v.npy", cat / "ids.txt"))
    png = io.BytesIO()
    Image.new("RGB", (40, 40)).save(png, "PNG")
    decode_reasons = []
    for data, config in (
        (b"", DecodeConfig(size=32)),
        (b"not an image at all", DecodeConfig(size=32)),
        (png.getvalue(), DecodeConfig(size=32, max_pixels=100)),
        (png.getvalue()[:60], DecodeConfig(size=32)),
    ):
        with pytest.raises(ImageError) as caught:
            decode_image(data, config)
        decode_reasons.append(str(caught.value))
    reasons = [p.reason for p in catalog.problems + precomputed] + decode_reasons
    assert [reason_class(r) for r in reasons] == [
        "ragged CSV row",
        "invalid id",  # movieId 'abc'
        "duplicate id",
        "invalid id",  # imdbId 'x'
        "poster not found",
        "id needed by pattern is blank",
        "invalid id",  # item id 'abc' in ids.txt
        "bad vector",
        "duplicate id",
        "empty file",
        "not an image",
        "image too large",
        "corrupt image",
    ], reasons
    assert reason_class("a reason nobody wrote yet") == OTHER
    assert count_reasons(reasons) == {
        "invalid id": 3,
        "duplicate id": 2,
        "bad vector": 1,
        "corrupt image": 1,
        "empty file": 1,
        "id needed by pattern is blank": 1,
        "image too large": 1,
        "not an image": 1,
        "poster not found": 1,
        "ragged CSV row": 1,
    }  # most frequent first, then by name


# ---- build --summary-json ------------------------------------------------------------------------------------------


def _flawed_inputs(tmp: Path) -> list[str]:
    """Precomputed vectors + movies.csv with one failure of each of four classes; the build's arguments."""
    x = clustered_vectors(20, DIM, seed=2)
    x[4] = np.nan  # bad vector
    np.save(tmp / "v.npy", x)
    ids = [str(i + 1) for i in range(20)]
    ids[7] = "abc"  # invalid id
    ids[9] = "3"  # duplicate id
    (tmp / "ids.txt").write_text("\n".join(ids) + "\n")
    rows = [f"{i + 1},Film {i + 1},Drama" for i in range(20)] + ["99,Too,Many,Fields"]  # ragged CSV row
    (tmp / "movies.csv").write_text("movieId,title,genres\n" + "\n".join(rows) + "\n")
    return ["--embeddings", str(tmp / "v.npy"), "--ids", str(tmp / "ids.txt"), "--movies", str(tmp / "movies.csv")]


def test_build_summary_json_on_stdout_and_in_a_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    inputs = _flawed_inputs(tmp_path)
    out = _cli("build", *inputs, "--out", str(root), "--quiet", "--neighbours", "5", "--summary-json", "-")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)  # stdout holds only the JSON; the human summary went to stderr
    manifest = bundles.read_manifest(bundles.current_path(root))
    failures = bundles.load_failures(bundles.current_path(root))
    assert summary == {
        "ok": True,
        "root": str(root),
        "build_id": manifest.build_id,
        "path": str(bundles.current_path(root)),
        "item_count": manifest.item_count,
        "failure_count": 4,
        "failures_by_stage": dict(sorted(Counter(failures["stage"]).items())),
        "failures_by_reason": {"bad vector": 1, "duplicate id": 1, "invalid id": 1, "ragged CSV row": 1},
        "embedded": 0,
        "from_cache": 0,
        "near_duplicate_pairs": manifest.near_duplicate_pairs,
        "phase_seconds": summary["phase_seconds"],
        "error": None,
    }
    assert summary["failures_by_stage"] == {"catalog": 1, "precomputed": 3}
    assert manifest.item_count == 20 - 3 and manifest.failure_count == 4
    # the manifest is written before the write phase ends
    assert set(summary["phase_seconds"]) == set(manifest.phase_seconds) | {"write", "total"}
    line = (
        f"published {manifest.build_id}: 17 items, 4 failures (catalog: 1 ragged CSV row; precomputed: "
        "1 bad vector, 1 duplicate id, 1 invalid id); 0 embedded, 0 from cache; "
    )
    assert line in out.stderr

    path = tmp_path / "summary.json"
    again = _cli("build", *inputs, "--out", str(root), "--quiet", "--neighbours", "5", "--summary-json", str(path))
    assert again.returncode == 0, again.stderr
    written = json.loads(path.read_text())
    assert written["ok"] and written["build_id"] == bundles.read_current(root) != summary["build_id"]
    assert again.stdout.startswith(f"published {written['build_id']}: 17 items, 4 failures (catalog: ")
    assert not list(tmp_path.glob(".summary.json.tmp-*"))


def test_failed_build_writes_ok_false_and_the_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    before = _build(root, tmp_path, 30)
    path = tmp_path / "summary.json"
    args = ["--ids", str(tmp_path / "ids30.npy"), "--out", str(root), "--quiet", "--summary-json", str(path)]
    out = _cli("build", "--embeddings", str(tmp_path / "missing.npy"), *args)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
    summary = json.loads(path.read_text())
    assert summary["ok"] is False and summary["build_id"] is None and summary["item_count"] is None
    assert out.stderr == f"posters-index: error: {summary['error']}\n" and "missing.npy" in summary["error"]
    assert bundles.read_current(root) == before
    with build_lock(root):  # a build already running in the root
        code, _, err = _run(capsys, "build", "--embeddings", str(tmp_path / "v30.npy"), *args)
    summary = json.loads(path.read_text())
    assert (code, summary["ok"]) == (2, False) and "another build is running" in summary["error"]
    assert err == f"posters-index: error: {summary['error']}\n"
    nowhere = tmp_path / "no" / "such" / "dir" / "s.json"
    code, _, err = _run(capsys, "build", "--posters", str(tmp_path), "--out", str(root), "--summary-json", str(nowhere))
    assert code == 2 and err.startswith("posters-index: error: --summary-json expected a file in an existing directory")


# ---- list ---------------------------------------------------------------------------------------------------------


def test_list_shows_every_build_marks_current_and_checks_them(
    three_builds: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, (a, b, c) = three_builds
    _flip_byte(root / "builds" / a / bundles.ITEMS_FILE)  # same size: only checksums see it
    with (root / "builds" / b / bundles.FAILURES_FILE).open("ab") as fh:
        fh.write(b"x")  # one byte more: even the quick check sees it
    staging = root / "builds" / f"{bundles.STAGING_PREFIX}20990101T000000.000000Z-abcdef"
    staging.mkdir()
    (staging / "index.faiss").write_bytes(b"\0" * 1000)

    out = _cli("list", str(root))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["build", "id", "created", "items", "failures", "index", "size", "MB", "checks"]
    rows = lines[1:4]
    assert [r.split()[0] for r in rows] == [a, b, "*"] and rows[2].split()[1] == c
    assert [r.split()[2 if n < 2 else 3] for n, r in enumerate(rows)] == ["30", "40", "50"]
    assert "INVALID: " in rows[0] and "SHA-256 does not match" in rows[0]
    assert "INVALID: " in rows[1] and f"expected {_size_in_manifest(root, b)} bytes" in rows[1]
    assert rows[2].endswith("  ok")
    assert lines[4].startswith("checks: full") and len(lines) == 5  # no staging line without --all

    code, text, _ = _run(capsys, "list", str(root), "--quick", "--all")
    assert code == 0
    quick = text.splitlines()
    assert quick[1].endswith("  ok")  # the flipped byte is invisible to the quick check
    assert "INVALID: " in quick[2] and quick[3].startswith("*")
    assert quick[4].split()[0] == "20990101T000000.000000Z-abcdef" and quick[4].endswith("unfinished")
    assert quick[5].startswith("checks: quick")

    code, text, _ = _run(capsys, "list", str(root), "--json", "--all")
    doc = json.loads(text)
    assert (code, doc["current"], doc["current_problem"], doc["checks"]) == (0, c, None, "full")
    assert [(r["build_id"], r["is_current"], r["ok"], r["finished"]) for r in doc["builds"]] == [
        (a, False, False, True),
        (b, False, False, True),
        (c, True, True, True),
        ("20990101T000000.000000Z-abcdef", False, False, False),
    ]
    assert [r["size_bytes"] for r in doc["builds"]] == [
        _tree_bytes(root / "builds" / n) for n in (a, b, c, staging.name)
    ]
    assert [r["item_count"] for r in doc["builds"]] == [*SIZES, None]


def _size_in_manifest(root: Path, build_id: str) -> int:
    return bundles.read_manifest(root / "builds" / build_id).files[bundles.FAILURES_FILE].bytes


def test_list_exits_2_when_current_is_not_a_good_published_build(
    three_builds: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root, (_, _, c) = three_builds
    _flip_byte(root / "builds" / c / bundles.INDEX_FILE)
    code, text, err = _run(capsys, "list", str(root))
    assert code == 2 and text.splitlines()[3].startswith("*") and "INVALID" in text.splitlines()[3]
    assert err == f"posters-index: error: the CURRENT build {c} fails its checks\n"
    (root / bundles.CURRENT).unlink()
    code, _, err = _run(capsys, "list", str(root), "--quick")
    assert code == 2 and err == f"posters-index: error: {root / bundles.CURRENT} does not exist: nothing is published\n"
    code, _, err = _run(capsys, "list", str(tmp_path / "nowhere"))
    assert code == 2 and "is not an index root" in err


def test_describe_builds_rows(three_builds: tuple[Path, list[str]]) -> None:
    root, built = three_builds
    rows = describe_builds(root)
    assert [(r.build_id, r.item_count, r.is_current, r.ok, r.checked) for r in rows] == [
        (b, n, b == built[-1], True, "full") for b, n in zip(built, SIZES)
    ]
    assert all(r.index_type == "flat" and r.failure_count == 0 and r.created_at for r in rows)


# ---- rollback -----------------------------------------------------------------------------------------------------


def test_rollback_verifies_switches_and_the_server_follows(
    three_builds: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, (a, b, c) = three_builds
    with serve(root) as served:
        assert served.client.info()["bundle_version"] == c
        out = _cli("rollback", str(root))
        assert out.returncode == 0, out.stderr
        assert out.stdout == f"CURRENT before: {c}\nCURRENT after:  {b} (verified)\n"
        assert bundles.read_current(root) == b
        assert bundles.load_bundle(bundles.current_path(root)).manifest.item_count == SIZES[1]
        assert served.manager.reload()  # what the server's CURRENT poller runs
        info = served.client.info()
        assert (info["bundle_version"], info["item_count"]) == (b, SIZES[1])
        assert len(served.client.similar(1).hits) > 0

    assert _run(capsys, "rollback", str(root)) == (0, f"CURRENT before: {b}\nCURRENT after:  {a} (verified)\n", "")
    code, _, err = _run(capsys, "rollback", str(root))
    assert code == 2 and bundles.read_current(root) == a
    nothing = f"nothing to roll back to: no published build in {root / 'builds'} is older than {a}"
    assert err == f"posters-index: error: {nothing}\n"
    assert _run(capsys, "rollback", str(root), c) == (0, f"CURRENT before: {a}\nCURRENT after:  {c} (verified)\n", "")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("20990101T000000.000000Z-ffffff", "unknown build '20990101T000000.000000Z-ffffff': expected one of the"),
        ("../root", "unknown build '../root': expected one of the"),
        (".staging-x", "unknown build '.staging-x': expected one of the"),
        ("CURRENT-BUILD", "is already CURRENT in"),
        ("CORRUPT-BUILD", "fails verification, CURRENT unchanged: "),
        ("LOCKED", "another build is running in"),
    ],
)
def test_rollback_refusals_leave_current_unchanged(
    three_builds: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    root, (a, b, c) = three_builds
    (root / "builds" / ".staging-x").mkdir()
    if target == "CORRUPT-BUILD":
        _flip_byte(root / "builds" / b / bundles.INDEX_FILE)
        target = b
    target = {"CURRENT-BUILD": c}.get(target, target)
    if target == "LOCKED":
        with build_lock(root):
            code, out, err = _run(capsys, "rollback", str(root))
    else:
        code, out, err = _run(capsys, "rollback", str(root), target)
    assert (code, out) == (2, "")
    assert err.startswith("posters-index: error: ") and message in err and len(err.splitlines()) == 1, err
    assert bundles.read_current(root) == c


def test_rollback_by_name_repairs_a_corrupt_current(
    three_builds: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, (a, _, _) = three_builds
    (root / bundles.CURRENT).write_bytes(b"\xff\xfe not a build id")
    code, _, err = _run(capsys, "rollback", str(root))
    assert code == 2 and "CURRENT is corrupt" in err
    assert _run(capsys, "rollback", str(root), a) == (
        0,
        f"CURRENT before: (missing or unreadable)\nCURRENT after:  {a} (verified)\n",
        "",
    )
    assert bundles.read_current(root) == a


@pytest.mark.parametrize("command", ["list", "rollback", "build", None])
def test_help_documents_the_operations_options(command: str | None) -> None:
    text = _cli(*([command] if command else []), "--help").stdout
    assert "``" not in text and "%(" not in text
    expected = {
        "list": ["ROOT", "--quick", "--all", "--json"],
        "rollback": ["ROOT [BUILD]", "CURRENT"],
        "build": ["--summary-json PATH"],
        None: ["posters-index list", "posters-index rollback"],
    }
    for word in expected[command]:
        assert word in text, word
