"""The browse, quality and API pages in a real browser (issue #14): headless Chromium (Debian's package,
installed by scripts/install_browser.sh; nothing downloaded at run time) driven by Playwright, against a real
posters-serve and a real posters-web (uvicorn) on loopback.

Oracle: every grid the page shows lists the same ids, in the same order, as the gRPC answer to the same
request. The catalog has a title and a genre made of HTML (``<img src=x onerror=alert(1)>``): they must
render as text. Screenshots of every step are saved (``$POSTERS_SCREENSHOT_DIR`` or the test's tmp folder).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from PIL import Image
from playwright.sync_api import Page, sync_playwright

from indexer.build import BuildConfig, build
from indexer.embedders import Embedder
from server.client.api import Box, LocatedResult
from server.types import Filter, SearchOptions
from server.web.app import create_app
from server.web.cli import bind
from server.web.config import UpstreamConfig, WebConfig
from server.web.models import SearchOut
from tests.conftest import QUIET, demo_catalog_config
from tests.grpc_helpers import serve

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(
        f"{CHROMIUM} is not installed: run scripts/install_browser.sh (apt-get install chromium; CI does)",
        allow_module_level=True,
    )
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS_TITLE = "<img src=x onerror=alert(1)> (1999)"
XSS_GENRE = "<script>alert(2)</script>"
XSS_ITEM = 5
K = 12  # the page's default number of results
VIEWPORT = {"width": 1200, "height": 820}
STEP_TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def xss_catalog(tmp_path_factory: pytest.TempPathFactory, demo_catalog: Path) -> Path:
    """The demo catalog with one title and one genre made of HTML."""
    out = tmp_path_factory.mktemp("xss") / "catalog"
    shutil.copytree(demo_catalog, out)
    with (out / "movies.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        if int(row["movieId"]) == XSS_ITEM:
            row["title"], row["genres"] = XSS_TITLE, f"Comedy|{XSS_GENRE}"
    with (out / "movies.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


@pytest.fixture(scope="module")
def xss_root(tmp_path_factory: pytest.TempPathFactory, xss_catalog: Path, lite_embedder: Embedder) -> Path:
    root = tmp_path_factory.mktemp("xss-index")
    build(
        BuildConfig(index_root=root, catalog=demo_catalog_config(xss_catalog), pipeline=QUIET, neighbours_k=20),
        embedder=lite_embedder,
    )
    return root


@contextlib.contextmanager
def run_gateway(config: WebConfig) -> Iterator[str]:
    """posters-web (uvicorn) on 127.0.0.1:<free port> in a thread; the socket listens before uvicorn runs, so
    a request made at once waits in the backlog instead of failing."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="posters-web", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop"


def quality_reports(root: Path, version: str) -> Path:
    """A small eval report (fixed file names) for the served bundle."""
    folder = root / version / "eval"
    folder.mkdir(parents=True)
    (folder / "eval.md").write_text(
        "# Evaluation of bundle x\n\n## Copy detection\n\n| edit | model R@1 |\n|---|---|\n"
        "| crop | 0.250 |\n| <b>bold</b> | 1.000 |\n"
    )
    chart = Image.new("RGB", (320, 200), (240, 240, 240))
    for x in range(40, 280, 40):
        chart.paste((31, 95, 191), (x, 200 - x // 2, x + 24, 190))
    chart.save(folder / "fidelity.png")
    return root


def grid_ids(page: Page) -> list[int]:
    return [int(v) for v in page.locator("#grid .card").evaluate_all("cards => cards.map(c => c.dataset.itemId)")]


def wait_render(page: Page, before: int, view: str) -> int:
    """Wait until the grid is rendered again (its seq passes ``before``) for ``view``; return the new seq."""
    page.wait_for_function(
        "([before, view]) => { const g = document.getElementById('grid');"
        " return Number(g.dataset.seq) > before && g.dataset.view === view; }",
        arg=[before, view],
        timeout=STEP_TIMEOUT_MS,
    )
    return int(page.locator("#grid").get_attribute("data-seq") or 0)


def screenshot(page: Page, path: Path, full_page: bool = False) -> None:
    """After every image in view has loaded (thumbnails load lazily)."""
    page.wait_for_function(
        "() => [...document.images].filter(i => i.getBoundingClientRect().top < innerHeight)"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    assert page.locator(".placeholder").count() == 0, "a thumbnail failed to load"
    page.screenshot(path=str(path), full_page=full_page)


def seq(page: Page) -> int:
    return int(page.locator("#grid").get_attribute("data-seq") or 0)


def _unexpected(message) -> bool:
    """A console error other than the browser's note on an HTTP error status (step 8 asks for a 404 on
    purpose; missing thumbnails are caught by checking every image loaded)."""
    return message.type == "error" and not message.text.startswith("Failed to load resource")


def ids(result) -> list[int]:
    return [h.item.item_id for h in result.hits]


def shots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("POSTERS_SCREENSHOT_DIR", tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_browse_search_neighbours_filter_selection_upload_xss_quality_docs(
    xss_root: Path, xss_catalog: Path, tmp_path: Path
) -> None:
    shots = shots_dir(tmp_path)
    with serve(xss_root, image_search=True) as served:
        grpc = served.client
        version = grpc.info()["bundle_version"]
        config = WebConfig(
            upstream=UpstreamConfig(target=served.target),
            quality_dir=quality_reports(tmp_path / "quality", version),
            allowed_hosts=("127.0.0.1",),
        )
        with run_gateway(config) as base, sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"),
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport=VIEWPORT,
            )
            problems: list[str] = []
            page = context.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if _unexpected(m) else None)
            try:
                _browse(page, base, grpc, xss_catalog, shots, tmp_path)
                _quality_and_docs(page, base, shots)
            finally:
                context.close()
            assert not problems, problems


def _browse(page: Page, base: str, grpc, catalog: Path, shots: Path, work: Path) -> None:
    page.goto(base + "/")
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#bundle").inner_text().startswith("bundle ")

    # 1. search a title: the cards are FindItems' answer, in order
    title = grpc.items([1])[0].title  # e.g. "Savage River (1975)"
    words = title.rsplit(" (", 1)[0].lower()
    page.fill("#q", words)
    page.press("#q", "Enter")
    wait_render(page, 0, "find:" + words)
    found = grpc.find_page(words, page_size=48)
    assert grid_ids(page) == [i.item_id for i in found.items] and 1 in grid_ids(page)
    screenshot(page, shots / "01-title-search.png")

    # 2. click a poster: its neighbours in the gRPC order, with the gRPC scores
    before = seq(page)
    page.locator("#grid .card[data-item-id='1'] button.poster").click()
    wait_render(page, before, "item:1")
    expected = grpc.similar(1, SearchOptions(k=K))
    assert grid_ids(page) == ids(expected)
    scores = page.locator("#grid .card .score").all_inner_texts()
    assert scores == [f"{h.score:.3f}" for h in expected.hits]
    assert page.locator("#query .title").inner_text() == title
    assert page.url.endswith("#item/1")
    screenshot(page, shots / "02-neighbours.png")

    # 3. a filter: the answer of the same search with the filter, every card of that genre
    unfiltered = ids(expected)
    genre = next(
        g
        for g in grpc.info()["genres"]
        if g != "Comedy"
        and ids(grpc.similar(1, SearchOptions(k=K, filter=Filter(genres_any=(g,))))) != unfiltered
        and g != XSS_GENRE
    )
    before = seq(page)
    page.locator(f"#genres input[value='{genre}']").check()
    wait_render(page, before, "item:1")
    filtered = grpc.similar(1, SearchOptions(k=K, filter=Filter(genres_any=(genre,))))
    assert grid_ids(page) == ids(filtered) != unfiltered
    assert all(genre in meta for meta in page.locator("#grid .card .meta").all_inner_texts())
    screenshot(page, shots / "03-filter.png")
    before = seq(page)
    page.click("#clear-filters")
    wait_render(page, before, "item:1")
    assert grid_ids(page) == unfiltered

    # 4. more like these, less like that
    liked, disliked = unfiltered[0], unfiltered[1]
    page.locator(f"#grid .card[data-item-id='{liked}'] button.like").click()
    page.locator(f"#grid .card[data-item-id='{disliked}'] button.dislike").click()
    assert page.locator(f"#grid .card[data-item-id='{liked}'] button.like").get_attribute("aria-pressed") == "true"
    assert page.locator("#selection").is_visible()
    before = seq(page)
    page.click("#like-search")
    wait_render(page, before, "like")
    assert grid_ids(page) == ids(grpc.like([(liked, 1.0)], [(disliked, 1.0)], SearchOptions(k=K)))
    screenshot(page, shots / "04-like-these.png")
    page.click("#clear-selection")
    assert page.locator("#selection").is_hidden()

    # 5. upload a photo of a poster (cropped, re-encoded): the right poster first, as the gRPC answer
    target = grpc.items([7])[0]
    with Image.open(catalog / "posters" / target.poster) as poster:
        w, h = poster.size
        buf = io.BytesIO()
        poster.convert("RGB").crop((6, 6, w - 6, h - 6)).save(buf, "JPEG", quality=80)
    upload = work / "photo.jpg"
    upload.write_bytes(buf.getvalue())
    before = seq(page)
    page.set_input_files("#file", str(upload))
    wait_render(page, before, "image:photo.jpg")
    answer = grpc.image_located(upload.read_bytes(), SearchOptions(k=K), "auto")
    assert grid_ids(page)[0] == target.item_id == ids(answer.result)[0]
    assert grid_ids(page) == ids(answer.result)
    assert page.locator("#query .frame img").evaluate("img => img.naturalWidth") == w - 12
    boxed = [n for n, box in enumerate(answer.boxes) if box is not None]
    assert page.locator("#grid .card.located").count() == len(boxed)
    assert page.locator("#query .box").is_visible() == bool(boxed)
    screenshot(page, shots / "05-upload.png")

    # 6. the box drawn where the service says the poster was found: the answer is stubbed with a query_box in
    # pixels of the upload (posters-serve fills query_box once localisation lands)
    stub_box = Box(20, 30, 120, 180)
    located = LocatedResult(answer.result, (stub_box,) + (None,) * (len(answer.result.hits) - 1))
    stub = SearchOut.of(located).model_dump_json()

    def fulfil(route) -> None:
        route.fulfill(status=200, content_type="application/json", body=stub)

    page.route("**/api/v1/search/image", fulfil)
    page.select_option("#mode", "locate")
    before = seq(page)
    page.set_input_files("#file", str(upload))
    wait_render(page, before, "image:photo.jpg")
    page.unroute("**/api/v1/search/image")
    page.wait_for_function("() => !document.querySelector('#query .box').hidden")
    frame = page.locator("#query .frame img").bounding_box()
    box = page.locator("#query .box").bounding_box()
    assert frame and box
    scale = frame["width"] / (w - 12)
    border = 3  # the overlay's border is drawn inside its box (box-sizing: border-box)
    assert abs(box["x"] - (frame["x"] + stub_box.x0 * scale)) <= border
    assert abs(box["y"] - (frame["y"] + stub_box.y0 * scale)) <= border
    assert abs(box["width"] - (stub_box.x1 - stub_box.x0) * scale) <= 2 * border
    assert abs(box["height"] - (stub_box.y1 - stub_box.y0) * scale) <= 2 * border
    assert page.locator("#grid .card.located .badge").first.inner_text() == "found in photo"
    screenshot(page, shots / "06-located-box.png")
    page.select_option("#mode", "auto")

    # 7. HTML in a title and a genre renders as text (no element, no script, no dialog)
    before = seq(page)
    page.fill("#q", "onerror")
    page.press("#q", "Enter")
    wait_render(page, before, "find:onerror")
    assert grid_ids(page)[0] == XSS_ITEM
    card = page.locator(f"#grid .card[data-item-id='{XSS_ITEM}']")
    assert card.locator(".title").inner_text() == XSS_TITLE
    assert XSS_GENRE in card.locator(".meta").inner_text()
    assert page.locator("img[src='x']").count() == 0 and page.locator("#grid script").count() == 0
    assert page.locator("#genres label", has_text=XSS_GENRE).count() == 1
    assert page.locator("#genres script").count() == 0
    assert page.evaluate("() => document.querySelectorAll('script:not([src])').length") == 0
    screenshot(page, shots / "07-html-title-as-text.png")
    before = seq(page)
    card.locator("button.poster").click()
    wait_render(page, before, f"item:{XSS_ITEM}")
    assert page.locator("#query .title").inner_text() == XSS_TITLE
    assert page.locator("#heading").inner_text() == f"Posters like “{XSS_TITLE}”"

    # 8. an error is a message on the page
    page.goto(base + "/#item/987654")
    page.wait_for_selector("#error:not([hidden])")
    assert page.locator("#error").inner_text().startswith("NOT_FOUND (404): item 987654")


def _quality_and_docs(page: Page, base: str, shots: Path) -> None:
    page.goto(base + "/quality")
    page.wait_for_selector("body[data-ready='1']")
    report = page.locator(".report[data-section='eval']")
    assert report.locator("table td").all_inner_texts() == ["crop", "0.250", "<b>bold</b>", "1.000"]
    assert report.locator("table b").count() == 0
    page.wait_for_function("() => { const i = document.querySelector('.charts img'); return i && i.naturalWidth; }")
    screenshot(page, shots / "08-quality.png", full_page=True)

    page.goto(base + "/docs")
    page.wait_for_selector("body[data-ready='1']")
    op = page.locator("details.op[data-path='/api/v1/search/item']")
    op.locator("summary").first.click()
    op.locator("textarea").fill('{"item_id": 1, "options": {"k": 3}}')
    op.locator("button", has_text="Send").click()
    op.locator(".status-ok").wait_for()
    assert op.locator(".response pre").inner_text().count('"item_id"') == 3
    screenshot(page, shots / "09-api-docs.png")
