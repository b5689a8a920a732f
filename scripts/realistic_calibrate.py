"""``python scripts/realistic_vectors.py calibrate``: real embeddings -> realistic_calibration.json.

1. Embed the calibration images (``real_embeddings``; or reuse the kept embeddings with ``--reuse``).
2. Measure the targets (``embedding_stats.summarize`` of the normalized real rows).
3. Fit the analytic part of the model (``realistic_fit.fit_model``: mean, spectrum, between-family share,
   family table).
4. By simulation, with the generator itself at the calibration set's size: the view decay and edit power,
   on a grid, matching the nearest- and 10th-neighbour cosine quantiles (and, with small weights, hubness).

The spectrum is *not* corrected for the calibration set's few sources: the generator's population spectrum
is the real sample spectrum, so that its samples at the calibration size are more concentrated on the top
axes than the real sample (a sample of ~20 big families puts more variance on ~20 directions than its
population), and approach the real sample spectrum as N grows (see realistic_vectors' docstring).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import embedding_stats
import numpy as np
import real_embeddings
import realistic_fit
from realistic_vectors import Calibration, RealisticGenerator

log = logging.getLogger(__name__)

VIEW_DECAYS = (1.0, 1.5, 2.0, 3.0)
EDIT_POWERS = (2.0, 4.0, 8.0)
FIT_SEEDS = (101, 102)
FIT_QUANTILES = ("q10", "q25", "q50", "q75", "q90")
# loss per unit of k-occurrence skewness and of anti-hub share, against 1 per unit of mean quantile error
HUBNESS_WEIGHT = 0.02
ANTIHUB_WEIGHT = 0.05


def _samples(model: dict[str, Any], n: int) -> list[np.ndarray]:
    calibration = Calibration.from_model(model)
    return [RealisticGenerator(model["dim"], seed, calibration).vectors(n) for seed in FIT_SEEDS]


def view_loss(x: np.ndarray, targets: dict[str, Any]) -> float:
    k = targets["hubness"]["k"]
    sims, ids = embedding_stats.knn(x, k)
    loss = 0.0
    for column, key in ((0, "nn_cosine"), (k - 1, f"nn{k}_cosine")):
        measured = embedding_stats.quantiles(sims[:, column])
        loss += float(np.mean([abs(measured[q] - targets[key][q]) for q in FIT_QUANTILES]))
    hub, target = embedding_stats.hubness(ids, len(x)), targets["hubness"]
    return (
        loss
        + HUBNESS_WEIGHT * abs(hub["skewness"] - target["skewness"])
        + ANTIHUB_WEIGHT * abs(hub["antihub_share"] - target["antihub_share"])
    )


def fit_views(model: dict[str, Any], targets: dict[str, Any]) -> dict[str, Any]:
    """The grid point (view decay, edit power) whose generated data best matches the targets."""
    losses = {}
    for decay in VIEW_DECAYS:
        for power in EDIT_POWERS:
            trial = {**model, "views": {"decay": decay, "edit_power": power}}
            losses[(decay, power)] = float(np.mean([view_loss(x, targets) for x in _samples(trial, targets["n"])]))
            log.info("views: decay %s, edit power %s: loss %.4f", decay, power, losses[(decay, power)])
    (decay, power), loss = min(losses.items(), key=lambda item: item[1])
    return {"decay": decay, "edit_power": power, "loss": round(loss, 4)}


def calibrate(out: Path, embeddings: Path, reuse: bool) -> dict[str, Any]:
    if reuse and embeddings.exists():
        real = real_embeddings.load(embeddings)
        log.info("reusing %d embeddings from %s", len(real.vectors), embeddings)
    else:
        real = real_embeddings.real_embedding_set()
        real_embeddings.save(real, embeddings)
    norms = np.linalg.norm(real.vectors.astype(np.float64), axis=1)
    unit = (real.vectors / norms[:, None]).astype(np.float32)
    kinds, counts = np.unique([f.split(":")[0] for f in real.families], return_counts=True)
    targets = embedding_stats.summarize(unit)
    model = realistic_fit.fit_model(real.vectors, real.families)
    model["views"] = fit_views(model, targets)
    payload = {
        "about": "Calibration of scripts/realistic_vectors.py on real efficientnet_lite0 embeddings "
        "(made by `python scripts/realistic_vectors.py calibrate`).",
        "source": {
            "model": "efficientnet_lite0, ImageNet weights, avg pooling, pad resize (the offline default)",
            "images": {str(k): int(c) for k, c in zip(kinds, counts)},
            "families": len(set(real.families)),
            "crops_per_photo": real_embeddings.CROPS_PER_PHOTO,
            "demo_posters": real_embeddings.DEMO_POSTERS,
            "seed": real_embeddings.SEED,
            "embed_seconds": round(real.seconds, 1),
            "norm_before_normalization": {"mean": round(float(norms.mean()), 3), "std": round(float(norms.std()), 3)},
            "zero_share": round(float(np.mean(real.vectors <= 0)), 4),
        },
        "model": model,
        "targets": targets,
    }
    out.write_text(json.dumps(payload, indent=1) + "\n")
    return payload
