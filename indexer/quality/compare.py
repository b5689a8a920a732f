"""``posters-index compare``: the same catalog under several embedding configurations, side by side.

For each configuration (model x weights x pooling x resize policy x any other ``EmbedderSpec`` field, plus
the optional whitening: ``whiten``, ``whiten_dim``, ``whiten_shrinkage``) a
bundle is built into ``OUT/bundles/<name>`` (embeddings come from one shared cache, ``OUT/cache``, so a
rerun embeds nothing), evaluated with the same seed and options (``OUT/eval/<name>``), and its
embedding throughput measured. Writes compare.json, compare.md and bar charts.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.catalog import CatalogConfig
from indexer.embedders import Embedder, EmbedderSpec
from indexer.index import IndexSpec
from indexer.quality import QualityError, charts
from indexer.quality.bundle_view import open_bundle
from indexer.quality.evaluate import EvalConfig, evaluate
from indexer.quality.query_path import embed_image_bytes
from indexer.quality.report import md_table, write_json
from indexer.transform import WhitenSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One configuration: how posters become vectors (the embedder) and the optional whitening after it."""

    spec: EmbedderSpec
    whiten: WhitenSpec = field(default_factory=WhitenSpec)


# Offline, only efficientnet_lite0 has real weights: compare its descriptor variants.
DEFAULT_SPECS = (
    Variant(EmbedderSpec(pooling="avg", resize="pad")),
    Variant(EmbedderSpec(pooling="max", resize="pad")),
    Variant(EmbedderSpec(pooling="gem", resize="pad")),
    Variant(EmbedderSpec(pooling="avg", resize="pad", scales=(1.0, 0.75))),
    Variant(EmbedderSpec(pooling="avg", resize="pad"), WhitenSpec(enabled=True)),
    Variant(EmbedderSpec(pooling="avg", resize="stretch")),
    Variant(EmbedderSpec(pooling="avg", resize="center-crop")),
)
WHITEN_FIELDS = ("whiten", "whiten_dim", "whiten_shrinkage")
SCALE_SEPARATOR = "+"  # scales=1+0.75 (the comma separates fields)
DEFAULT_THROUGHPUT_IMAGES = 64
DEFAULT_NEIGHBOURS = 100
FLOAT32_BYTES = 4
SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(EmbedderSpec))
NAME_FIELDS = ("model", "weights", "pooling", "resize")
CHART_METRICS = (
    ("copy_recall@1", "copy detection recall@1 (all edits)"),
    ("copy_mAP", "copy detection mAP (all edits)"),
    ("genre_precision", "genre precision@k"),
    ("collection_recall@1", "collection recall@1"),
    ("vector_recall@10", "vector recall@10 (served vs exact)"),
    ("dim", "dimension"),
    ("bytes_per_vector", "bytes per vector (float32)"),
    ("images_per_second", "embedding images/s"),
    ("build_seconds", "build seconds"),
)


@dataclass(frozen=True)
class CompareConfig:
    catalog: CatalogConfig
    out: Path
    specs: tuple[Variant, ...] = DEFAULT_SPECS
    index: IndexSpec = field(default_factory=IndexSpec)
    neighbours_k: int = DEFAULT_NEIGHBOURS
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(root=Path(".")))  # root/out are set per config
    throughput_images: int = DEFAULT_THROUGHPUT_IMAGES
    batch_size: int = 32
    charts: bool = True  # the comparison's bar charts
    eval_charts: bool = False  # each configuration's own eval charts too (eval.json/eval.md are always written)


def _spec_value(key: str, value: str) -> Any:
    try:
        if key == "init_seed":
            return int(value)
        if key == "gem_p":
            return float(value)
        if key == "scales":
            return tuple(float(v) for v in value.split(SCALE_SEPARATOR))
    except ValueError:
        raise QualityError(f"configuration {key} expected a number (scales: 1+0.75), got {value!r}") from None
    return value


def _whiten_spec(values: dict[str, str]) -> WhitenSpec:
    try:
        enabled = values.get("whiten", "0").lower() in ("1", "true", "yes", "on")
        dim = int(values["whiten_dim"]) if "whiten_dim" in values else None
        shrinkage = float(values["whiten_shrinkage"]) if "whiten_shrinkage" in values else WhitenSpec().shrinkage
    except ValueError as exc:
        raise QualityError(f"configuration whitening options expected numbers: {exc}") from None
    return WhitenSpec(enabled=enabled or dim is not None, dim=dim, shrinkage=shrinkage)


def parse_spec(text: str, weights: str | None = None) -> Variant:
    """``model=vgg16,pooling=gem,gem_p=4,scales=1+0.75,whiten=1,whiten_dim=256`` (any EmbedderSpec field and
    the whitening options) -> a validated configuration."""
    values: dict[str, Any] = {}
    whiten: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if sep and key in WHITEN_FIELDS:
            whiten[key] = value
            continue
        if not sep or key not in SPEC_FIELDS:
            allowed = ", ".join((*SPEC_FIELDS, *WHITEN_FIELDS))
            raise QualityError(f"configuration expected key=value pairs over {allowed}, got {part!r}")
        values[key] = _spec_value(key, value)
    if weights is not None and "weights" not in values:
        values["weights"] = weights
    spec = EmbedderSpec(**values)
    spec.validate()
    variant = Variant(spec, _whiten_spec(whiten))
    variant.whiten.validate()
    return variant


def grid_specs(
    models: Sequence[str], poolings: Sequence[str], resizes: Sequence[str], weights: str
) -> tuple[Variant, ...]:
    specs = tuple(
        EmbedderSpec(model=m, weights=weights, pooling=p, resize=r) for m in models for p in poolings for r in resizes
    )
    for s in specs:
        s.validate()
    return tuple(Variant(s) for s in specs)


def spec_name(variant: Variant) -> str:
    """A folder-safe name listing the fields that identify the configuration."""
    spec = variant.spec
    parts = [str(getattr(spec, f)) for f in NAME_FIELDS]
    parts[1] = Path(parts[1]).stem if parts[1] not in ("imagenet", "none") else parts[1]
    extras = {**spec.to_dict(), "init_seed": spec.init_seed}
    default = EmbedderSpec().to_dict()
    parts += [
        f"{f}{SCALE_SEPARATOR.join(f'{v:g}' for v in value) if isinstance(value, list) else value}"
        for f, value in extras.items()
        if f not in NAME_FIELDS and value != default.get(f)
    ]
    if variant.whiten.enabled:
        parts.append(f"whiten{variant.whiten.dim or ''}s{variant.whiten.shrinkage:g}")
    return "-".join(p.replace("/", "_") for p in parts)


def measure_throughput(embedder: Embedder, files: Sequence[Path], batch_size: int) -> float:
    """Images/s of decode + embed through the query path (one thread), after one warm-up batch."""
    data = [p.read_bytes() for p in files]
    if not data:
        return float("nan")
    embed_image_bytes(embedder, data[:batch_size])
    t = time.perf_counter()
    for start in range(0, len(data), batch_size):
        embed_image_bytes(embedder, data[start : start + batch_size])
    return len(data) / (time.perf_counter() - t)


def _row(
    name: str, variant: Variant, report: Any, payload: dict[str, Any], images_per_second: float, index_bytes: int
) -> dict[str, Any]:
    spec = variant.spec
    m, t = payload["metrics"], payload["timings"]
    copy, genres, col = m["copy_detection"], m["genres"], m["collections"]
    stored: dict[str, Any] = next((p for p in m["fidelity"].get("curve", []) if p.get("stored")), {})
    dim = payload["bundle"]["dim"]
    row: dict[str, Any] = {
        "config": name,
        **{f: getattr(spec, f) for f in NAME_FIELDS},
        "gem_p": spec.gem_p if spec.pooling == "gem" else None,
        "scales": list(spec.scales),
        "whiten": variant.whiten.enabled,
        "dim": dim,
        "bytes_per_vector": dim * FLOAT32_BYTES,
        "index_bytes_per_item": index_bytes / max(1, payload["bundle"]["item_count"]),
        "images_per_second": images_per_second,
        "build_seconds": report.phases.get("total"),
        "embedded": report.embedded,
        "from_cache": report.from_cache,
        "vector_recall@10": stored.get("vector_recall@10"),
        "item_recall@10": stored.get("item_recall@10"),
        "latency_item_p50_ms": t["latency"]["item"]["p50_ms"],
        "latency_vector_p50_ms": t["latency"]["vector"]["p50_ms"],
        "latency_image_p50_ms": (t["latency"].get("image") or {}).get("p50_ms"),
    }
    if copy:
        row.update(
            {
                "copy_recall@1": copy["all_edits"]["model"]["recall@1"],
                "copy_recall@5": copy["all_edits"]["model"]["recall@5"],
                "copy_mAP": copy["all_edits"]["model"]["mAP"],
                "phash_recall@1": (copy["all_edits"].get("phash") or {}).get("recall@1"),
                "per_edit_recall@1": {e["edit"]: e["model"]["recall@1"] for e in copy["edits"]},
            }
        )
    if genres:
        row.update(
            {
                "genre_precision": genres["model"]["precision"],
                "genre_jaccard": genres["model"]["jaccard"],
                "genre_precision_random": genres["random"]["precision"],
                "genre_precision_prior": genres["prior"]["precision"],
            }
        )
    if col and col.get("queries"):
        row.update({k.replace("recall", "collection_recall"): v for k, v in col.items() if k.startswith("recall@")})
    return row


def compare(config: CompareConfig) -> dict[str, Any]:
    """Build, evaluate and time every configuration; write the comparison; return compare.json's content."""
    from indexer.build import BuildConfig, build
    from indexer.pipeline import PipelineConfig

    if not config.specs:
        raise QualityError("compare expected at least one configuration, got none")
    names = [spec_name(s) for s in config.specs]
    if len(set(names)) != len(names):
        raise QualityError(f"compare expected distinct configurations, got {names}")
    cache = config.out / "cache" / "embeddings.sqlite"
    rows, evals = [], {}
    for name, variant in zip(names, config.specs, strict=True):
        log.info("configuration %s", name)
        spec = variant.spec
        embedder = Embedder(spec)
        root = config.out / "bundles" / name
        report = build(
            BuildConfig(
                index_root=root,
                catalog=config.catalog,
                embedder=spec,
                index=config.index,
                pipeline=PipelineConfig(batch_size=config.batch_size, progress=False),
                neighbours_k=config.neighbours_k,
                cache_path=cache,
                whiten=variant.whiten,
            ),
            embedder=embedder,
        )
        bundle = open_bundle(root, verify=False)
        files = [config.catalog.posters_dir / p for p in bundle.items["poster"].head(config.throughput_images)]
        rate = measure_throughput(embedder, files, config.batch_size)
        eval_config = dataclasses.replace(
            config.eval,
            root=root,
            out=config.out / "eval" / name,
            charts=config.eval_charts,
            posters_dir=config.eval.posters_dir or config.catalog.posters_dir,
        )
        payload = evaluate(eval_config, embedder=embedder)
        evals[name] = payload["out"]
        index_bytes = (report.path / "index.faiss").stat().st_size
        rows.append(_row(name, variant, report, payload, rate, index_bytes))
        del embedder, bundle
        gc.collect()
    result = {
        "tool": "posters-index compare",
        "catalog": dataclasses.asdict(config.catalog),
        "eval_options": dataclasses.asdict(config.eval),
        "configs": rows,
        "eval_dirs": evals,
    }
    result["files"] = write_compare(config.out, rows, config.charts)
    write_json(config.out / "compare.json", result)
    return result


def write_compare(out: Path, rows: list[dict[str, Any]], charts_on: bool) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    headers = [
        "config",
        "dim",
        "bytes/vector",
        "img/s",
        "build s",
        "copy R@1",
        "copy R@5",
        "copy mAP",
        "pHash R@1",
        "genre P@k",
        "(random)",
        "(prior)",
        "genre J@k",
        "collection R@1",
        "collection R@10",
        "vector R@10",
        "image p50 ms",
    ]
    keys = [
        "config",
        "dim",
        "bytes_per_vector",
        "images_per_second",
        "build_seconds",
        "copy_recall@1",
        "copy_recall@5",
        "copy_mAP",
        "phash_recall@1",
        "genre_precision",
        "genre_precision_random",
        "genre_precision_prior",
        "genre_jaccard",
        "collection_recall@1",
        "collection_recall@10",
        "vector_recall@10",
        "latency_image_p50_ms",
    ]
    lines = ["# Configuration comparison", "", md_table(headers, [[r.get(k) for k in keys] for r in rows]), ""]
    edits = list(dict.fromkeys(e for r in rows for e in r.get("per_edit_recall@1", {})))
    if edits:
        lines += [
            "Copy detection recall@1 per edit:",
            "",
            md_table(
                ["config", *edits], [[r["config"], *(r["per_edit_recall@1"].get(e) for e in edits)] for r in rows]
            ),
            "",
        ]
    files = {"markdown": "compare.md"}
    if charts_on:
        files["chart"] = charts.bars_grid(
            rows, "config", CHART_METRICS, out / "compare.png", "the same catalog under each configuration"
        )
        lines += ["![comparison](compare.png)"]
        if edits:
            files["edits_chart"] = charts.grouped_bars(
                edits,
                {r["config"]: [r["per_edit_recall@1"].get(e) for e in edits] for r in rows},
                "copy detection recall@1 per edit",
                out / "compare_edits.png",
            )
            lines += ["![per edit](compare_edits.png)"]
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    return files
