"""The quality subcommands of ``posters-index``: eval, compare, analyze, photo-catalog.

``add_subcommands(sub)`` registers them on the main parser; ``COMMANDS`` maps each name to its function.
Heavy imports (TensorFlow, matplotlib, scikit-learn) happen inside the commands.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

EVAL_EPILOG = """examples:
  posters-index eval indexes/posters                          # -> indexes/posters/quality/<build>/eval/
  posters-index eval idx --out reports/eval --copy-sample 200 --edits crop,jpeg,wall,screenshot
  posters-index eval photo-idx --copy-items photo-catalog/photos.csv   # copy detection on the real photos
  posters-index eval photo-idx --copy-items photo-catalog/photos.csv --query-mode whole   # no localisation
"""
COMPARE_EPILOG = """examples:
  posters-index compare --movies ml/movies.csv --links ml/links.csv --posters ml/posters \\
      --pattern '{tmdbId}.jpg' --out reports/compare                  # efficientnet_lite0 variants (offline)
  posters-index compare ... --models vgg16,resnet50,inception_v3 --poolings avg --resizes pad,stretch
  posters-index compare ... --config model=efficientnet_lite0,pooling=max --config model=vgg16,pooling=flatten
  posters-index compare ... --config pooling=avg --config pooling=gem,gem_p=3 --config pooling=avg,whiten=1
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written, defaults shown."""


def _require_eval_extra(args: argparse.Namespace) -> None:
    """One line naming the [eval] extra when a module this command will use is missing."""
    from indexer.extras import require

    modules: list[str] = []
    if args.command in ("eval", "compare"):
        modules += [] if args.no_charts else ["matplotlib"]
        modules += [] if args.no_phash else ["imagehash"]
        modules += [] if args.query_mode == "whole" else ["cv2"]
    elif args.command == "analyze":
        modules += ["sklearn"] + ([] if args.no_charts else ["matplotlib"])
    elif args.command == "photo-catalog":
        modules += ["skimage", "sklearn"]
    require(f"posters-index {args.command}", "eval", tuple(modules))


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in _csv_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _k_range(text: str) -> tuple[int, ...]:
    """'5-25' or '5,10,15'."""
    if "-" in text and "," not in text:
        lo, _, hi = text.partition("-")
        try:
            return tuple(range(int(lo), int(hi) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a range like 5-25, got {text!r}") from None
    return _int_list(text)


def _add_eval_options(p: argparse.ArgumentParser, posters_option: bool = True) -> None:
    from indexer.quality import eval_config as ev
    from indexer.quality.duplicates import DEFAULT_DUPLICATE_THRESHOLD
    from indexer.quality.edits import EDIT_KINDS
    from indexer.query_image import DEFAULT_QUERY_MODE, QueryMode

    g = p.add_argument_group("evaluation")
    g.add_argument(
        "--copy-sample",
        type=int,
        default=ev.DEFAULT_COPY_SAMPLE,
        help="posters to edit for copy detection (0: skip copy detection)",
    )
    g.add_argument("--edits", type=_csv_list, default=",".join(EDIT_KINDS), help="comma-separated edit kinds")
    g.add_argument(
        "--copy-items",
        type=Path,
        help="draw copy-detection originals only from the movieId column of "
        "this CSV (e.g. a photo catalog's photos.csv)",
    )
    g.add_argument("--copy-depth", type=int, default=ev.DEFAULT_COPY_DEPTH, help="results searched per copy query")
    if posters_option:
        g.add_argument(
            "--posters",
            dest="eval_posters",
            metavar="DIR",
            type=Path,
            help="poster folder (default: the folder the bundle was built from)",
        )
    g.add_argument(
        "--collections",
        type=Path,
        help="CSV with movieId and a collection column (default: "
        "families.csv beside the catalog's movies.csv, if present)",
    )
    g.add_argument("--collection-column", default="family", help="the collection column of --collections")
    g.add_argument("--fidelity-ks", type=_int_list, default=ev.DEFAULT_FIDELITY_KS, help="recall@k of the index")
    g.add_argument(
        "--fidelity-queries",
        type=int,
        default=ev.DEFAULT_FIDELITY_QUERIES,
        help="item and held-out vector queries for search fidelity",
    )
    g.add_argument("--nprobes", type=_int_list, help="IVF nprobe values (default: powers of two up to nlist)")
    g.add_argument("--genre-k", type=int, default=ev.DEFAULT_GENRE_K, help="neighbours per genre query")
    g.add_argument("--genre-queries", type=int, default=ev.DEFAULT_GENRE_QUERIES, help="items used as genre queries")
    g.add_argument(
        "--latency-queries",
        type=int,
        default=ev.DEFAULT_LATENCY_QUERIES,
        help="queries timed per item/vector latency figure",
    )
    g.add_argument(
        "--image-latency-queries",
        type=int,
        default=ev.DEFAULT_IMAGE_LATENCY_QUERIES,
        help="image queries timed (decode + embed + search)",
    )
    g.add_argument(
        "--duplicate-threshold",
        type=float,
        default=DEFAULT_DUPLICATE_THRESHOLD,
        help="cosine above which two items are reported as near-duplicates",
    )
    g.add_argument("--no-phash", action="store_true", help="skip the perceptual-hash baseline")
    g.add_argument("--batch-size", type=int, default=ev.DEFAULT_BATCH_SIZE, help="images per model call")
    g.add_argument(
        "--query-mode",
        choices=[m.value for m in QueryMode],
        default=DEFAULT_QUERY_MODE.value,
        help="image queries as SearchByImage runs them: whole image, locate the poster (whole + windows), "
        "or auto (windows only when the whole image is not a confident match)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of every sample and baseline")
    g.add_argument("--no-charts", action="store_true", help="JSON and Markdown only")


def _eval_config(args: argparse.Namespace, root: Path, out: Path | None) -> Any:
    from indexer.quality.evaluate import EvalConfig

    return EvalConfig(
        root=root,
        out=out,
        posters_dir=getattr(args, "eval_posters", None),
        collections_csv=args.collections,
        collection_column=args.collection_column,
        copy_items_csv=args.copy_items,
        copy_sample=args.copy_sample,
        edit_kinds=tuple(args.edits),
        copy_depth=args.copy_depth,
        fidelity_ks=tuple(args.fidelity_ks),
        fidelity_queries=args.fidelity_queries,
        nprobes=tuple(args.nprobes) if args.nprobes else None,
        genre_k=args.genre_k,
        genre_queries=args.genre_queries,
        latency_queries=args.latency_queries,
        image_latency_queries=args.image_latency_queries,
        duplicate_threshold=args.duplicate_threshold,
        phash=not args.no_phash,
        batch_size=args.batch_size,
        query_mode=args.query_mode,
        seed=args.seed,
        charts=not args.no_charts,
    )


def add_subcommands(sub: Any) -> None:
    """Register eval, compare, analyze and photo-catalog on ``posters-index``'s subparsers."""
    e = sub.add_parser(
        "eval",
        help="measure a published bundle: fidelity, genres, copy detection, collections, latency, duplicates",
        epilog=EVAL_EPILOG,
        formatter_class=_Formatter,
    )
    e.add_argument("root", type=Path, help="index root (its CURRENT bundle) or a bundle directory")
    e.add_argument("--out", type=Path, help="output folder (default: ROOT/quality/<build id>/eval)")
    _add_eval_options(e)

    c = sub.add_parser(
        "compare",
        help="build and evaluate the same catalog under several embedding configurations",
        epilog=COMPARE_EPILOG,
        formatter_class=_Formatter,
    )
    src = c.add_argument_group("catalog (as for build)")
    src.add_argument("--movies", type=Path, help="movies.csv (movieId,title,genres)")
    src.add_argument("--links", type=Path, help="links.csv (movieId,imdbId,tmdbId)")
    src.add_argument("--posters", type=Path, required=True, help="poster folder of the catalog")
    src.add_argument("--pattern", default="{movieId}", help="poster file name pattern, e.g. '{tmdbId}.jpg'")
    cfg = c.add_argument_group(
        "configurations (--config repeated, or the grid --models x --poolings x --resizes; "
        "default: efficientnet_lite0 avg, max, gem, avg at scales 1+0.75 and avg whitened (all pad), "
        "avg/stretch, avg/center-crop)"
    )
    cfg.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE,...",
        help="one configuration over EmbedderSpec fields and the whitening options, e.g. "
        "model=vgg16,pooling=max,resize=stretch or pooling=gem,gem_p=4,scales=1+0.75,whiten=1,whiten_dim=256",
    )
    cfg.add_argument("--models", type=_csv_list, help="comma-separated models for the grid")
    cfg.add_argument("--poolings", type=_csv_list, default=["avg"], help="comma-separated poolings for the grid")
    cfg.add_argument("--resizes", type=_csv_list, default=["pad"], help="comma-separated resize policies")
    cfg.add_argument(
        "--weights", default=None, help="weights for every configuration: imagenet, none or a file (default imagenet)"
    )
    c.add_argument("--out", type=Path, required=True, help="output folder (bundles/, cache/, eval/, compare.*)")
    c.add_argument("--index", default="auto", help="index type of every bundle (flat, ivf, auto)")
    c.add_argument("--neighbours", type=int, default=100, help="neighbour table k of every bundle")
    c.add_argument("--throughput-images", type=int, default=64, help="posters timed for embedding images/s")
    c.add_argument("--eval-charts", action="store_true", help="also draw each configuration's eval charts")
    _add_eval_options(c, posters_option=False)

    a = sub.add_parser(
        "analyze",
        help="k-means, silhouette, PCA and per-cluster genre composition and contact sheets of a bundle's vectors",
        formatter_class=_Formatter,
    )
    a.add_argument("root", type=Path, help="index root (its CURRENT bundle) or a bundle directory")
    a.add_argument("--out", type=Path, help="output folder (default: ROOT/quality/<build id>/analyze)")
    a.add_argument("--ks", type=_k_range, default="5-25", help="k values: a range 5-25 or a list 5,10,20")
    a.add_argument("--k", type=int, help="clusters for composition and sheets (default: best silhouette)")
    a.add_argument("--silhouette-sample", type=int, default=5000, help="points sampled for each silhouette")
    a.add_argument("--pca-components", type=int, default=256, help="PCA components on the curve")
    a.add_argument("--sheet-posters", type=int, default=12, help="posters per cluster contact sheet")
    a.add_argument("--posters", type=Path, help="poster folder (default: the folder the bundle was built from)")
    a.add_argument("--seed", type=int, default=0, help="k-means and sampling seed")
    a.add_argument("--no-charts", action="store_true", help="JSON, Markdown and sheets only")

    p = sub.add_parser(
        "photo-catalog",
        help="a MovieLens-layout catalog of the real photos bundled with "
        "scikit-image/scikit-learn, among synthetic distractors",
        formatter_class=_Formatter,
    )
    p.add_argument("out", type=Path, help="output folder (movies.csv, links.csv, families.csv, photos.csv, posters/)")
    p.add_argument("--distractors", type=int, default=200, help="synthetic distractor posters")
    p.add_argument("--seed", type=int, default=7, help="seed of the distractors")


def cmd_eval(args: argparse.Namespace) -> int:
    _require_eval_extra(args)
    from indexer.quality.evaluate import evaluate

    payload = evaluate(_eval_config(args, args.root, args.out))
    m = payload["metrics"]
    print(f"eval of {payload['bundle']['build_id']} -> {payload['out']}")
    if m["copy_detection"]:
        overall = m["copy_detection"]["all_edits"]
        line = f"copy detection (all edits): recall@1 {overall['model']['recall@1']:.3f}"
        if overall.get("phash"):
            line += f" (pHash {overall['phash']['recall@1']:.3f})"
        print(line)
    if m["genres"]:
        g = m["genres"]
        print(
            f"genre precision@{g['k']}: {g['model']['precision']:.3f} (random {g['random']['precision']:.3f}, "
            f"prior {g['prior']['precision']:.3f})"
        )
    print(f"near-duplicate pairs (cosine > {m['duplicates']['threshold']:.3f}): {m['duplicates']['pairs']}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    _require_eval_extra(args)
    from indexer.catalog import CatalogConfig
    from indexer.index import IndexSpec
    from indexer.quality.compare import DEFAULT_SPECS, CompareConfig, compare, grid_specs, parse_spec

    weights = args.weights
    if args.config:
        specs = tuple(parse_spec(c, weights) for c in args.config)
    elif args.models:
        specs = grid_specs(args.models, args.poolings, args.resizes, weights or "imagenet")
    else:
        import dataclasses

        specs = tuple(
            dataclasses.replace(v, spec=dataclasses.replace(v.spec, weights=weights)) if weights else v
            for v in DEFAULT_SPECS
        )
    catalog = CatalogConfig(
        posters_dir=args.posters, movies_csv=args.movies, links_csv=args.links, pattern=args.pattern
    )
    result = compare(
        CompareConfig(
            catalog=catalog,
            out=args.out,
            specs=specs,
            index=IndexSpec(kind=args.index),
            neighbours_k=args.neighbours,
            eval=_eval_config(args, args.out, None),
            throughput_images=args.throughput_images,
            batch_size=args.batch_size,
            charts=not args.no_charts,
            eval_charts=args.eval_charts,
        )
    )
    print(f"compared {len(result['configs'])} configurations -> {args.out / 'compare.md'}")
    for row in result["configs"]:
        print(
            f"  {row['config']}: copy recall@1 {row.get('copy_recall@1', float('nan')):.3f}, "
            f"genre precision {row.get('genre_precision', float('nan')):.3f}, dim {row['dim']}"
        )
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    _require_eval_extra(args)
    from indexer.quality.analyze import AnalyzeConfig, analyze

    result = analyze(
        AnalyzeConfig(
            root=args.root,
            out=args.out,
            ks=tuple(args.ks),
            k=args.k,
            silhouette_sample=args.silhouette_sample,
            pca_components=args.pca_components,
            sheet_posters=args.sheet_posters,
            seed=args.seed,
            posters_dir=args.posters,
            charts=not args.no_charts,
        )
    )
    m = result["metrics"]
    print(
        f"analysis -> {result['out']}: chosen k = {m['chosen_k']} ({m['chosen_by']}); "
        f"PCA: {m['pca']['components_for_90pct']} components for 90 % of the variance"
    )
    return 0


def cmd_photo_catalog(args: argparse.Namespace) -> int:
    _require_eval_extra(args)
    from indexer.quality.photo_catalog import write_photo_catalog

    s = write_photo_catalog(args.out, distractors=args.distractors, seed=args.seed)
    print(
        f"photo catalog: {s.photos} real photos ({s.crops} of them crops) + {s.distractors} synthetic "
        f"distractors -> {s.out}"
    )
    for name, reason in s.skipped:
        print(f"  skipped {name}: {reason}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "eval": cmd_eval,
    "compare": cmd_compare,
    "analyze": cmd_analyze,
    "photo-catalog": cmd_photo_catalog,
}
