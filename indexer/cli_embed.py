"""The embedding-job subcommands of ``posters-index``: ``embed`` (local or Ray) and ``cache import``.

``add_parser(sub)`` registers them on the main parser; ``COMMANDS`` maps each name to its function. TensorFlow
and Ray are imported inside the commands (Ray only by ``embed --engine ray``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from indexer.cli_common import parse_scales

EMBED_EPILOG = """examples:
  posters-index embed --movies ml/movies.csv --links ml/links.csv --posters ml/posters \\
      --pattern '{tmdbId}.jpg' --out shards/ml --engine ray --actors 2          # a local Ray on 127.0.0.1
  posters-index embed ... --out /shared/shards/ml --engine ray --ray-address auto --actors 16   # on a cluster
  posters-index embed --posters some/folder --out shards/folder                 # local engine, no Ray
  posters-index build --embeddings shards/ml --movies ml/movies.csv --out indexes/ml
  posters-index cache import shards/ml --root indexes/ml                        # later builds embed nothing
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written, defaults shown."""


def _add_catalog_options(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("catalog (as posters-index build: a MovieLens catalog or a bare poster folder)")
    src.add_argument("--movies", type=Path, help="movies.csv (movieId,title,genres)")
    src.add_argument("--links", type=Path, help="links.csv (movieId,imdbId,tmdbId)")
    src.add_argument("--ratings", type=Path, help="ratings.csv, for --min-ratings")
    src.add_argument("--min-ratings", type=int, default=0, help="keep movies rated more than N times (0: all)")
    src.add_argument(
        "--posters",
        type=Path,
        required=True,
        help="poster folder; alone (without --movies) a bare folder: id = last digits in the file name",
    )
    src.add_argument("--pattern", default="{movieId}", help="poster file name pattern, e.g. '{tmdbId}.jpg'")
    src.add_argument("--encoding", default="utf-8", help="text encoding of the catalog CSVs")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    from indexer.embed_job import DEFAULT_BATCH_SIZE
    from indexer.embedders.embedder import DEFAULT_GEM_P, POOLINGS, RESIZE_POLICIES, RUNTIMES, SINGLE_SCALE
    from indexer.embedders.registry import backbone_names
    from indexer.images import DEFAULT_MAX_PIXELS

    model = p.add_argument_group("model (as posters-index build)")
    model.add_argument("--model", default="efficientnet_lite0", choices=backbone_names(), help="CNN backbone")
    model.add_argument("--weights", default="imagenet", help="'imagenet', 'none' (seeded random init) or a file")
    model.add_argument("--pooling", default="avg", choices=POOLINGS, help="global pooling of the last feature map")
    model.add_argument("--gem-p", type=float, default=DEFAULT_GEM_P, help="GeM exponent (--pooling gem only)")
    model.add_argument(
        "--scales", type=parse_scales, default=SINGLE_SCALE, metavar="S[,S...]", help="multi-scale input sizes"
    )
    model.add_argument("--resize", default="pad", choices=RESIZE_POLICIES, help="how a poster fits the input")
    model.add_argument("--runtime", default="keras", choices=RUNTIMES, help="keras, or tflite (same vectors, less CPU)")
    model.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per model call")
    model.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="skip images with more pixels (bomb guard)"
    )


def add_parser(sub: Any) -> None:
    """Register ``embed`` and ``cache`` (``cache import``) on ``posters-index``'s subparsers."""
    from indexer.embed_job import DEFAULT_ACTOR_CPUS, DEFAULT_ACTORS, DEFAULT_DECODE_WORKERS, ENGINES
    from indexer.embedding_shards import DEFAULT_ROWS_PER_SHARD

    e = sub.add_parser(
        "embed",
        help="embed a catalog's posters into parquet shards, here or on a Ray cluster",
        description="Run the build's embedder over a catalog and write DIR/part-*.parquet (item_id, content_hash, "
        "embedding; the embedder in the schema metadata), DIR/failures.csv and, last, DIR/_SUCCESS (a JSON "
        "summary). 'posters-index build --embeddings DIR' indexes them; 'posters-index cache import DIR' loads "
        "them into an embedding cache.",
        epilog=EMBED_EPILOG,
        formatter_class=_Formatter,
    )
    _add_catalog_options(e)
    _add_model_options(e)
    eng = e.add_argument_group("engine")
    eng.add_argument(
        "--engine", default="local", choices=ENGINES, help="local: this process; ray: Ray Data (needs the [ray] extra)"
    )
    eng.add_argument("--workers", type=int, default=DEFAULT_DECODE_WORKERS, help="local: decoding threads")
    eng.add_argument("--actors", type=int, default=DEFAULT_ACTORS, help="ray: embedding actors (one model each)")
    eng.add_argument("--actor-cpus", type=float, default=DEFAULT_ACTOR_CPUS, help="ray: CPUs per actor")
    eng.add_argument(
        "--ray-address", help="ray: a running cluster ('auto', 'ray://head:10001'); default: a local Ray on 127.0.0.1"
    )
    eng.add_argument(
        "--num-cpus", type=int, help="ray, local only: logical CPUs (default: cores, or enough for --actors)"
    )
    out = e.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, help="output directory (new or empty)")
    out.add_argument("--rows-per-shard", type=int, default=DEFAULT_ROWS_PER_SHARD, help="rows per parquet shard")
    out.add_argument("--overwrite", action="store_true", help="replace a previous embed output in --out")
    out.add_argument("--quiet", action="store_true", help="no Ray Data progress bars (progress is still logged)")

    c = sub.add_parser("cache", help="embedding cache tools (import shards)")
    csub = c.add_subparsers(dest="cache_command", required=True)
    imp = csub.add_parser(
        "import",
        help="load a shard directory's vectors into an embedding cache",
        description="Store every vector of DIR (posters-index embed's output) in the embedding cache under its "
        "embedder fingerprint and poster content hash, and remember the embedder: a following build of the same "
        "posters with the same model options embeds nothing. Refused when the shards were made by another "
        "Keras major version or weights file than this machine would use.",
    )
    imp.add_argument("shards", type=Path, metavar="DIR", help="shard directory (with _SUCCESS)")
    target = imp.add_mutually_exclusive_group(required=True)
    target.add_argument("--cache", type=Path, help="embedding cache file")
    target.add_argument("--root", type=Path, help="index root: its default cache, ROOT/cache/embeddings.sqlite")


def cmd_embed(args: argparse.Namespace) -> int:
    from indexer.catalog import CatalogConfig
    from indexer.cli_common import embedder_spec
    from indexer.embed_job import EmbedJobConfig, RayOptions, run_embed

    if args.engine == "ray":
        from indexer.extras import require

        require("posters-index embed --engine ray", "ray", ("ray",))
    config = EmbedJobConfig(
        catalog=CatalogConfig(
            posters_dir=args.posters,
            movies_csv=args.movies,
            links_csv=args.links,
            ratings_csv=args.ratings,
            min_ratings=args.min_ratings,
            pattern=args.pattern,
            encoding=args.encoding,
        ),
        out=args.out,
        embedder=embedder_spec(args),
        engine=args.engine,
        batch_size=args.batch_size,
        decode_workers=args.workers,
        rows_per_shard=args.rows_per_shard,
        max_pixels=args.max_pixels,
        overwrite=args.overwrite,
        progress=not args.quiet,
        ray=RayOptions(
            actors=args.actors, actor_cpus=args.actor_cpus, address=args.ray_address, num_cpus=args.num_cpus
        ),
    )
    report = run_embed(config)
    s = report.summary
    stages = ", ".join(f"{n} {stage}" for stage, n in s["failures_by_stage"].items())
    print(
        f"embedded {s['rows']} of {s['catalog_items']} posters into {len(s['shards'])} shards with "
        f"{s['embedder']['model']} ({s['engine']} engine, workers: {len(s['workers'])}) in {s['seconds']:.1f}s "
        f"({s['embeddings_per_second']:.1f}/s); {s['failure_count']} failures{f' ({stages})' if stages else ''}"
    )
    print(f"shards: {report.out}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from indexer.build import CACHE_FILE
    from indexer.cache_import import import_shards

    cache = args.cache if args.cache is not None else args.root / CACHE_FILE
    done = import_shards(args.shards, cache)
    print(
        f"imported {done.rows - done.skipped} of {done.rows} rows from {done.shards} shards into {done.cache} "
        f"(fingerprint {done.fingerprint[:12]}): {done.added} new, {done.cached} cached for this embedder"
        + (f"; {done.skipped} rows skipped (no hash or no usable vector)" if done.skipped else "")
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"embed": cmd_embed, "cache": cmd_cache}
