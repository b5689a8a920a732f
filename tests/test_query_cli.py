"""posters-query as a user runs it (a subprocess against a real in-process server) and PosterClient.batch splitting.

Every failure is one line and an exit code, never a traceback; connection options go before or after the command;
id lists cannot swallow the positional id; the table names the query; times are ISO-8601.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.build import BuildConfig, build
from indexer.catalog import CatalogConfig
from indexer.index import IndexSpec
from indexer.precomputed import PrecomputedConfig
from server.client import PosterClient
from server.searcher import SearchLimits
from server.types import ItemQuery, SearchOptions
from tests.conftest import QUIET, clustered_vectors
from tests.grpc_helpers import Served, serve

ROOT_DIR = Path(__file__).resolve().parent.parent
COUNT, DIM = 120, 16
MAX_BATCH = 4  # the served limit, small so that batch splitting is exercised
CLI_TIMEOUT = 120


def _title(item_id: int) -> str:
    return f"Film {item_id} Story ({1950 + item_id % 60})"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """An index root from precomputed vectors with titles (flat: exact answers); (root, ids, vectors)."""
    tmp = tmp_path_factory.mktemp("query_cli")
    x = clustered_vectors(COUNT, DIM, clusters=8, seed=11)
    ids = np.arange(COUNT, dtype=np.int64) * 7 + 5
    np.save(tmp / "v.npy", x)
    np.save(tmp / "ids.npy", ids)
    genres = ("Action", "Comedy|Drama", "Sci-Fi")
    rows = [f'{i},"{_title(int(i))}",{genres[int(i) % 3]}' for i in ids]
    (tmp / "movies.csv").write_text("movieId,title,genres\n" + "\n".join(rows) + "\n")
    root = tmp / "root"
    build(
        BuildConfig(
            index_root=root,
            precomputed=PrecomputedConfig(tmp / "v.npy", tmp / "ids.npy"),
            catalog=CatalogConfig(posters_dir=tmp, movies_csv=tmp / "movies.csv"),
            index=IndexSpec(kind="flat"),
            pipeline=QUIET,
            neighbours_k=0,
        )
    )
    return root, ids, x


@pytest.fixture(scope="module")
def served(catalog) -> Iterator[Served]:
    root, _, _ = catalog
    with serve(root, limits=SearchLimits(max_batch=MAX_BATCH)) as s:
        yield s


def _query(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "server.client.cli", *args],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert "Traceback" not in out.stderr, out.stderr
    return out


def _oracle(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, exclude: set[int]) -> list[int]:
    sims = x.astype(np.float64) @ (q / np.linalg.norm(q)).astype(np.float64)
    order = [int(ids[r]) for r in np.argsort(-sims, kind="stable") if int(ids[r]) not in exclude]
    return order[:k]


def _json_hits(out: subprocess.CompletedProcess) -> tuple[np.ndarray, np.ndarray, dict]:
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    hits = doc["neighbors"]
    return np.array([[h["item_id"] for h in hits]]), np.array([[h["score"] for h in hits]]), doc


def test_similar_names_the_query_item_and_answers_exactly(served: Served, catalog) -> None:
    _, ids, x = catalog
    item = int(ids[7])
    table = _query("similar", str(item), "-k", "5", "--target", served.target)  # connection option after
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == f'query: similar to #{item} "{_title(item)}"'
    assert lines[1].split() == ["rank", "score", "id", "title", "[genres]"]
    shown = [int(line.split()[2]) for line in lines[2:7]]
    found, scores, doc = _json_hits(_query("--target", served.target, "similar", str(item), "-k", "5", "--json"))
    assert found[0].tolist() == shown
    assert doc["query"] == {"kind": "similar", "item_id": item, "title": _title(item)}
    assert found[0].tolist() == _oracle(x, ids, x[7], 5, {item})
    row = {int(i): n for n, i in enumerate(ids)}
    np.testing.assert_allclose(scores[0], [float(x[row[i]] @ x[7]) for i in found[0]], atol=1e-5)


def test_exclude_and_candidates_take_lists_and_never_swallow_the_id(served: Served, catalog) -> None:
    _, ids, x = catalog
    item = int(ids[3])
    top = _oracle(x, ids, x[3], 8, {item})
    # old bug: nargs='+' made "--exclude a b ITEM" eat ITEM; now comma lists and repeats, ITEM stays positional
    exclude = ["--exclude", f"{top[0]},{top[1]}", "--exclude", str(top[2])]
    out = _query("similar", *exclude, str(item), "-k", "5", "--json", "--target", served.target)
    found, _, _ = _json_hits(out)
    assert found[0].tolist() == top[3:8]
    pool = [int(ids[n]) for n in (50, 60, 70, 80)]
    candidates = ["--candidates", f"{pool[0]},{pool[1]}", "--candidates", str(pool[2]), "--candidates", str(pool[3])]
    out = _query("similar", *candidates, str(item), "-k", "3", "--json", "--target", served.target)
    found, _, _ = _json_hits(out)
    sims = {i: float(x[list(ids).index(i)] @ x[3]) for i in pool}
    assert found[0].tolist() == sorted(pool, key=lambda i: -sims[i])[:3]


def test_like_header_lists_items_with_weights_and_answers_exactly(served: Served, catalog) -> None:
    _, ids, x = catalog
    a, b, c = (int(ids[n]) for n in (10, 20, 30))
    table = _query("like", str(a), f"{b}:0.5", "--not", str(c), "-k", "4", "--target", served.target)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0] == (
        f'query: like #{a} "{_title(a)}", #{b} "{_title(b)}" (weight 0.5); not #{c} "{_title(c)}"'
    )
    found, _, doc = _json_hits(
        _query("like", str(a), f"{b}:0.5", "--not", str(c), "-k", "4", "--json", "--target", served.target)
    )
    q = x[10] / np.linalg.norm(x[10]) + 0.5 * x[20] / np.linalg.norm(x[20]) - x[30] / np.linalg.norm(x[30])
    assert found[0].tolist() == _oracle(x, ids, q, 4, {a, b, c})
    assert doc["query"]["positive"] == [
        {"item_id": a, "title": _title(a), "weight": 1.0},
        {"item_id": b, "title": _title(b), "weight": 0.5},
    ]
    assert doc["query"]["negative"] == [{"item_id": c, "title": _title(c), "weight": 1.0}]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["like", "abc"], "item id expected an integer, got 'abc'"),
        (["similar", "abc"], "item id expected an integer, got 'abc'"),
        (["similar", "1.5"], "item id expected an integer, got '1.5'"),
        (["similar", "-3"], "item id expected an integer, got '-3'"),
        (["similar", str(2**63)], f"item id expected an integer from 0 to {2**63 - 1}, got '{2**63}'"),
        (["similar", "5", "--exclude", "3,x"], "exclude id expected an integer, got 'x'"),
        (["similar", "5", "--candidates", "3,"], "candidate id expected an integer, got ''"),
        (["like", "5:abc"], "weight expected a finite number, got 'abc' (in '5:abc')"),
        (["like", "5", "--not", "6:nan"], "weight expected a finite number, got 'nan' (in '6:nan')"),
        (["image", "/missing.jpg"], "cannot read image file /missing.jpg: No such file or directory"),
        (["--token-file", "/no-token", "info"], "cannot read token file /no-token: No such file or directory"),
        (["info", "--tls-ca", "/missing.pem"], "cannot read --tls-ca file /missing.pem: No such file or directory"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_bad_input_is_one_line_and_exit_2(served: Served, args: list[str], line: str) -> None:
    out = _query(*args, "--target", served.target)
    assert (out.returncode, out.stderr, out.stdout) == (2, f"posters-query: error: {line}\n", "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["similar", "5", "-k", str(2**31)], f"-k: -k expected an integer from 0 to {2**31 - 1}, got {2**31}"),
        (["similar", "5", "--nprobe", "x"], "--nprobe: --nprobe expected an integer, got 'x'"),
        (["info", "--timeout", "0"], "--timeout: --timeout expected a finite positive number, got '0'"),
        (["similar", "5", "--min-score", "inf"], "--min-score: --min-score expected a finite number, got 'inf'"),
    ],
)
def test_bad_option_values_are_usage_errors(args: list[str], message: str) -> None:
    out = _query(*args)
    assert out.returncode == 2 and out.stderr.splitlines()[-1].endswith(f"error: argument {message}"), out.stderr


def test_rpc_errors_keep_status_and_details_exit_1(served: Served, tmp_path: Path) -> None:
    out = _query("similar", "4", "--target", served.target)  # ids are 7n+5: 4 is not an item
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith("posters-query: NOT_FOUND: ") and "4" in out.stderr
    assert len(out.stderr.splitlines()) == 1
    image = tmp_path / "poster.png"
    from PIL import Image

    Image.new("RGB", (30, 45), (200, 30, 30)).save(image)
    out = _query("image", str(image), "--target", served.target)  # a bundle of precomputed vectors: no image search
    assert out.returncode == 1 and out.stderr.startswith("posters-query: FAILED_PRECONDITION: "), out.stderr
    assert len(out.stderr.splitlines()) == 1


def test_connection_options_before_or_after_the_command(served: Served) -> None:
    before = _query("--target", served.target, "--timeout", "20", "info")
    after = _query("info", "--timeout", "20", "--target", served.target)
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr

    def steady(out: str) -> list[str]:  # the server process's RSS moves between two calls
        return [line for line in out.splitlines() if not line.startswith("process_rss_bytes")]

    assert steady(before.stdout) == steady(after.stdout)
    # given before the command, an option is not reset by the command's parser to its default
    wrong_after = _query("--target", served.target, "info", "--target", "127.0.0.1:1", "--timeout", "3")
    assert wrong_after.returncode == 1 and wrong_after.stderr.startswith("posters-query: "), wrong_after.stderr


def test_info_prints_times_as_iso_dates(served: Served) -> None:
    out = _query("info", "--target", served.target)
    assert out.returncode == 0, out.stderr
    fields = dict(line.split(None, 1) for line in out.stdout.splitlines() if len(line.split(None, 1)) == 2)
    loaded = dt.datetime.fromisoformat(fields["loaded_at"])
    assert loaded.tzinfo is not None and loaded.utcoffset() == dt.timedelta(0)
    assert abs(loaded.timestamp() - served.client.info()["loaded_at"]) < 1.0
    created = dt.datetime.fromisoformat(fields["created_at"])
    assert created.tzinfo is not None and created <= loaded + dt.timedelta(seconds=1)  # both shown to the second
    as_json = _query("info", "--json", "--target", served.target)
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)  # machine form: Unix seconds stay numbers
    assert doc["loaded_at"] == served.client.info()["loaded_at"] and doc["manifest"]["created_at"]


def test_title_without_a_match_says_so_and_exits_0(served: Served, catalog) -> None:
    out = _query("title", "zqxwvj", "--target", served.target)
    assert (out.returncode, out.stdout, out.stderr) == (0, "no titles match 'zqxwvj'\n", "")
    out = _query("title", "zqxwvj", "--json", "--target", served.target)
    assert (out.returncode, json.loads(out.stdout)) == (0, [])
    _, ids, _ = catalog
    hit = _query("title", _title(int(ids[4])), "--target", served.target)
    assert hit.returncode == 0 and hit.stdout.split()[0] == str(ids[4]), hit.stdout


@pytest.mark.parametrize("command", [None, "similar", "like", "image", "title", "info"])
def test_help_has_no_raw_markup_and_lists_connection_options(command: str | None) -> None:
    out = _query(*([command] if command else []), "--help")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for artefact in ("``", "%(", "\\", "(default None)", "(default: None)"):
        assert artefact not in text, (artefact, text)
    for option in ("--target HOST:PORT", "--timeout SECONDS", "--token-file FILE", "--tls-ca PEM"):
        assert option in text, option
    if command in ("similar", "like", "image"):
        assert "--exclude ID[,ID...]" in text and "--candidates ID[,ID...]" in text


def test_batch_splits_lists_longer_than_max_batch(served: Served, catalog) -> None:
    _, ids, _ = catalog
    calls: dict[str, int] = {"BatchSearch": 0, "GetIndexInfo": 0}
    with PosterClient(served.target) as client:
        for name in calls:
            rpc = getattr(client._stub, name)

            def counted(*a, _rpc=rpc, _name=name, **kw):
                calls[_name] += 1
                return _rpc(*a, **kw)

            setattr(client._stub, name, counted)
        queries = [ItemQuery(int(i), SearchOptions(k=3)) for i in ids[: 2 * MAX_BATCH + 1]]
        results = client.batch(queries)
        assert calls == {"BatchSearch": 3, "GetIndexInfo": 1}  # 4 + 4 + 1, the limit asked once
        expected = [client.similar(q.item_id, q.options) for q in queries]
        assert [[h.item.item_id for h in r.hits] for r in results] == [
            [h.item.item_id for h in r.hits] for r in expected
        ]
        client.batch(queries[:MAX_BATCH])
        assert calls == {"BatchSearch": 4, "GetIndexInfo": 1}  # at the limit: one call, the limit cached


def test_sheet_without_a_poster_folder_uses_the_servers_thumbnails(demo_root: Path, tmp_path: Path) -> None:
    """`--sheet` from another host: no --posters, the pictures come from GetPosters, not grey placeholders."""
    import numpy as np
    from PIL import Image

    from tests.grpc_helpers import serve

    with serve(demo_root) as served:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "server.client.cli",
                "similar",
                "1",
                "-k",
                "4",
                "--target",
                served.target,
                "--sheet",
                str(tmp_path / "api.png"),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT_DIR,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
    from server.client.sheet import contact_sheet
    from server.types import Hit, Item

    grey = contact_sheet("q", None, [Hit(Item(i, "t", (), ""), 0.5) for i in range(4)], None)
    with Image.open(tmp_path / "api.png") as sheet:
        assert sheet.size == grey.size
        # real posters in every tile, the query's included: far more detail than placeholder tiles
        assert np.asarray(sheet.convert("L")).std() > np.asarray(grey.convert("L")).std() + 10
