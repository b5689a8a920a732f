"""The files of an evaluation: eval.json, eval.md, charts, duplicates and contact sheets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.contact_sheet import Tile, render_sheet
from indexer.quality import charts
from indexer.quality.duplicates import write_duplicates
from indexer.quality.report import fmt, md_table, write_json

if TYPE_CHECKING:
    from indexer.quality.copy_detection import CopyQueries
    from indexer.quality.eval_config import Loaded

EXAMPLE_COLUMNS = 6
CURVE_K = 10  # the recall shown on the recall/latency chart, beside the largest k


def merged_curve(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The fidelity curve's recalls (metrics) joined with its latencies (timings), per nprobe."""
    timings = {str(t["nprobe"]): t for t in payload["timings"]["fidelity_curve"]}
    return [{**p, **timings.get(str(p["nprobe"]), {})} for p in payload["metrics"]["fidelity"].get("curve", [])]


def write_eval_outputs(
    out: Path,
    payload: dict[str, Any],
    data: Loaded,
    copies: CopyQueries | None,
    pairs: list,
    edit_cosines: dict[str, np.ndarray],
    nearest: np.ndarray,
    charts_on: bool = True,
) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    m = payload["metrics"]
    files = {f"duplicates_{k}": v for k, v in write_duplicates(pairs, data.bundle.items, out, data.posters_dir).items()}
    if copies is not None and copies.example:
        row = int(copies.rows[0])
        title = str(data.bundle.items["title"].iat[row])
        render_sheet(
            [Tile(b, title, kind, highlight=kind == "identity") for kind, b in copies.example], EXAMPLE_COLUMNS
        ).save(out / "edits.png")
        files["edits_sheet"] = "edits.png"
    if not charts_on:
        return files
    curve = merged_curve(payload)
    if curve:
        ks = sorted({min(CURVE_K, max(m["fidelity"]["ks"])), max(m["fidelity"]["ks"])})
        files["fidelity_chart"] = charts.fidelity_chart(
            curve,
            ks,
            out / "fidelity.png",
            f"served index vs exact search ({m['fidelity']['index']['type']}, {data.facts.item_count} items)",
        )
    if m["genres"]:
        files["genres_chart"] = charts.genre_chart(m["genres"], out / "genres.png")
    if m["copy_detection"]:
        files["copy_chart"] = charts.copy_chart(m["copy_detection"]["edits"], out / "copy_detection.png")
    files["latency_chart"] = charts.latency_chart(
        {k: v for k, v in payload["timings"]["latency"].items() if isinstance(v, dict)}, out / "latency.png"
    )
    if edit_cosines or len(nearest):
        files["cosine_chart"] = charts.cosine_chart(
            edit_cosines, nearest, m["duplicates"]["threshold"], out / "duplicate_cosines.png"
        )
    return files


def write_json_and_markdown(out: Path, payload: dict[str, Any]) -> None:
    write_json(out / "eval.json", payload)
    (out / "eval.md").write_text(eval_markdown(payload))


def copy_table(copy: dict[str, Any]) -> str:
    """Per edit: model recall@1/@5/mAP beside pHash, and the cosine of copies to their originals."""
    has_phash = bool(copy["edits"] and copy["edits"][0].get("phash"))
    headers = ["edit", "queries", "model R@1", "model R@5", "model mAP"]
    if has_phash:
        headers += ["pHash R@1", "pHash R@5", "pHash mAP"]
    headers += ["cosine to original (median)"]
    localised = copy.get("query_mode", "whole") != "whole"
    if localised:
        headers += ["windows (mean)", "localised", "top from a window"]
    rows = []
    for e in copy["edits"] + [{"edit": "**all edits** (identity excluded)", **copy["all_edits"]}]:
        row = [e["edit"], e["queries"], e["model"]["recall@1"], e["model"]["recall@5"], e["model"]["mAP"]]
        if has_phash:
            row += [e["phash"]["recall@1"], e["phash"]["recall@5"], e["phash"]["mAP"]]
        row.append(e.get("cosine_to_original", {}).get("median"))
        if localised:
            w = e.get("windows", {})
            row += [w.get("mean"), w.get("localised"), w.get("top_from_window")]
        rows.append(row)
    return md_table(headers, rows)


def eval_markdown(payload: dict[str, Any]) -> str:
    b, m, t = payload["bundle"], payload["metrics"], payload["timings"]
    lines = [
        f"# Evaluation of bundle {b['build_id']}",
        "",
        f"{b['item_count']:,} items, model `{b['model']}`, dim {b['dim']}, index {b['index_type']}"
        + (f" (nlist {b['nlist']}, stored nprobe {b['nprobe']})" if b["index_type"] == "ivf" else "")
        + f", seed {payload['config']['seed']}.",
        "",
    ]
    if payload.get("query_path"):
        qp = payload["query_path"]
        lines += [
            f"Image queries (mode `{qp.get('mode', 'whole')}`): {' → '.join(qp['steps'])} "
            f"(resize `{qp['decode']['resize']}`, {qp['decode']['size']} px; query path v{qp['version']}).",
            "",
        ]
    for note in payload.get("notes", []):
        lines.append(f"- {note}")
    f = m["fidelity"]
    if "curve" in f:
        lines += [
            "",
            "## Search fidelity (served index vs exact search)",
            "",
            f"{f['item_queries']} item queries, {f['vector_queries']} held-out vector queries "
            f"({f['vector_query_source']}). Served item path: {f['served_item_path']['path']}.",
            "",
        ]
        ks = f["ks"]
        timings = {str(x["nprobe"]): x for x in t["fidelity_curve"]}
        headers = (
            ["nprobe"] + [f"item R@{k}" for k in ks] + [f"vector R@{k}" for k in ks] + ["item p50 ms", "vector p50 ms"]
        )
        rows = [
            [p["nprobe"]]
            + [p.get(f"item_recall@{k}") for k in ks]
            + [p.get(f"vector_recall@{k}") for k in ks]
            + [
                timings.get(str(p["nprobe"]), {}).get("item_p50_ms"),
                timings.get(str(p["nprobe"]), {}).get("vector_p50_ms"),
            ]
            for p in f["curve"]
        ]
        rows.append(
            ["served item path"]
            + [f["served_item_path"].get(f"item_recall@{k}") for k in ks]
            + [None] * len(ks)
            + [None, None]
        )
        lines += [md_table(headers, rows), "", "![fidelity](fidelity.png)"]
    g = m["genres"]
    if g:
        lines += [
            "",
            f"## Genre agreement (k = {g['k']}, {g['queries']} queries)",
            "",
            "Genres are a weak label of visual similarity: a poster service is not asked to find the "
            "same genre, but agreement above the baselines says the embedding carries genre cues.",
            "",
            md_table(
                ["neighbours", f"precision@{g['k']}", f"Jaccard@{g['k']}"],
                [[name, g[name]["precision"], g[name]["jaccard"]] for name in ("model", "random", "prior")],
            ),
            "",
            "Per query genre (precision@k; share of neighbours with the same genre):",
            "",
            md_table(
                ["genre", "queries", "model", "random", "prior", "model same genre", "random same genre"],
                [
                    [
                        x["genre"],
                        x["queries"],
                        x["model_precision"],
                        x["random_precision"],
                        x["prior_precision"],
                        x["model_same_genre"],
                        x["random_same_genre"],
                    ]
                    for x in g["per_genre"]
                ],
            ),
            "",
            "![genres](genres.png)",
        ]
    c = m["copy_detection"]
    if c:
        lines += [
            "",
            f"## Copy detection ({c['originals']} originals, search depth {c['depth']})",
            "",
            "Each edited copy is a query through the SearchByImage path; its original is the one relevant "
            "item in the whole catalog. " + c["ties"] + ".",
            "",
            copy_table(c),
            "",
            "![copy detection](copy_detection.png)  ![edits](edits.png)",
        ]
    col = m["collections"]
    if col:
        ks = [k for k in col if k.startswith(("recall@", "mAP"))]
        lines += [
            "",
            f"## Collections ({col.get('queries', 0)} items in {col.get('collections', 0)} collections, "
            f"from `{col['source']}`)",
            "",
            md_table(ks, [[col[k] for k in ks]]) if ks else "(none)",
        ]
    d = m["duplicates"]
    lines += [
        "",
        "## Near-duplicate posters",
        "",
        f"{d['pairs']} pairs with cosine > {d['threshold']:.3f} (duplicates.csv"
        + (", duplicates.png" if d["pairs"] else "")
        + "). Nearest other item cosine: p50 "
        f"{fmt(d['nearest_other_item_cosine']['p50'])}, p99 {fmt(d['nearest_other_item_cosine']['p99'])}, "
        f"max {fmt(d['nearest_other_item_cosine']['max'])}.",
    ]
    if "suggested_threshold" in d:
        s = d["suggested_threshold"]
        lines.append(f"Suggested threshold {s['value']:.3f} ({s['rule']}): {s['pairs_at_value']} pairs.")
    lines += ["", "![cosines](duplicate_cosines.png)"]
    lat = t["latency"]
    lines += [
        "",
        f"## Latency (in-process, FAISS on 1 thread, k = {lat['k']})",
        "",
        md_table(
            ["query", "count", "p50 ms", "p99 ms"],
            [[k, v["count"], v["p50_ms"], v["p99_ms"]] for k, v in lat.items() if isinstance(v, dict)],
        ),
        "",
        "![latency](latency.png)",
        "",
        "Phase seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in t["seconds"].items()),
        "",
    ]
    return "\n".join(lines)
