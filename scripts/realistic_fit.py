"""Fit the parameters of the realistic-vector model (scripts/realistic_vectors.py) to real embeddings.

Input: raw embeddings (as the model outputs them) and a family label per row (rows of one family are views
of one source: crops and edits of one photo, or sequels of one synthetic poster). The fit, on the
L2-normalized rows v (mean m, centred covariance C = U diag(λ) Uᵀ):

- ``mean_strength`` = |m| less the part expected from a finite sample of families; ``mean_beta``: the
  mean's energy over the principal axes, (Uᵀm)_j², is modelled as proportional to λ_j^β (the mean leans
  towards the high-variance axes), β fitted to the cumulative energy curve.
- ``spectrum``: a continuous piecewise power law log λ_j = a + slope_s · log j (``SEGMENTS`` segments,
  breakpoints chosen by least squares over log-spaced ranks up to ``FIT_MAX_RANK_SHARE`` of the dimension).
- ``between``: the share of λ_j that lies *between* family centres rather than within families (the
  item-weighted covariance of family means projected on U, corrected for the noise in the means of small
  families), modelled as b0 / (1 + (j / j_c)^γ).
- ``families``: the calibration set's families as (size, spread) pairs, where spread = the family's
  within-family variance over the pooled within-family variance (singletons: 1), scaled so that its
  item-weighted mean is 1. The generator draws whole families from this table.

The view rank and edit power of the family members are fitted afterwards by simulation
(``realistic_vectors.fit_views``): they need the generator itself.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SEGMENTS = 3
FIT_POINTS = 60  # log-spaced ranks the power law is fitted on
FIT_MAX_RANK_SHARE = 0.5  # beyond this share of the dimension, sample eigenvalues are mostly estimation noise
BREAK_CANDIDATES = 40  # log-spaced candidate breakpoints
MIN_SEGMENT_RATIO = 1.5  # a segment spans at least this factor in rank
BETA_GRID = np.linspace(0.0, 2.0, 201)
BETWEEN_FIT_MAX_RANK = 400
SPREAD_DECIMALS = 4


def piecewise_power_law(ranks: np.ndarray, breaks: list[float], slopes: list[float], log_a: float) -> np.ndarray:
    """λ(j) of a continuous piecewise power law: slope ``slopes[s]`` (in log-log) between breaks[s-1] and breaks[s]."""
    log_j = np.log(np.asarray(ranks, dtype=np.float64))
    out = np.full_like(log_j, log_a)
    edges = [0.0, *np.log(breaks), np.inf]
    for s, slope in enumerate(slopes):
        out += slope * (np.clip(log_j, edges[s], edges[s + 1]) - edges[s])
    return np.exp(out)


def _fit_segments(log_j: np.ndarray, log_l: np.ndarray, log_breaks: tuple[float, ...]) -> tuple[np.ndarray, float]:
    """Least-squares intercept and slopes of a continuous piecewise-linear function with given breaks."""
    edges = [0.0, *log_breaks, np.inf]
    design = np.column_stack(
        [np.ones_like(log_j)] + [np.clip(log_j, edges[s], edges[s + 1]) - edges[s] for s in range(len(edges) - 1)]
    )
    coef, *_ = np.linalg.lstsq(design, log_l, rcond=None)
    return coef, float(np.sqrt(np.mean((design @ coef - log_l) ** 2)))


def fit_spectrum(eigenvalues: np.ndarray, max_rank: int) -> dict[str, Any]:
    """Fit a SEGMENTS-piece continuous power law to eigenvalues[0:max_rank] on log-spaced ranks."""
    ranks = np.unique(np.geomspace(1, max_rank, FIT_POINTS).round().astype(int))
    log_j, log_l = np.log(ranks), np.log(eigenvalues[ranks - 1])
    candidates = np.log(np.geomspace(2, max_rank / 2, BREAK_CANDIDATES))
    best: tuple[float, tuple[float, ...], np.ndarray] | None = None
    for log_breaks in itertools.combinations(candidates, SEGMENTS - 1):
        gaps = np.diff([0.0, *log_breaks, np.log(max_rank)])
        if np.any(gaps < np.log(MIN_SEGMENT_RATIO)):
            continue
        coef, rms = _fit_segments(log_j, log_l, log_breaks)
        if best is None or rms < best[0]:
            best = (rms, log_breaks, coef)
    if best is None:
        raise ValueError(f"spectrum fit expected room for {SEGMENTS} segments, got max_rank {max_rank}")
    rms, log_breaks, coef = best
    return {
        "breaks": [round(float(np.exp(b)), 2) for b in log_breaks],
        "slopes": [round(float(s), 4) for s in coef[1:]],
        "log_a": round(float(coef[0]), 4),
        "fit_max_rank": int(max_rank),
        "rms_log_error": round(rms, 4),
    }


def fit_mean_beta(eigenvalues: np.ndarray, mean_energy: np.ndarray) -> float:
    """β such that λ_j^β (normalized) best follows the cumulative energy of the mean over the principal axes."""
    target = np.cumsum(mean_energy) / mean_energy.sum()
    ranks = np.unique(np.geomspace(1, len(eigenvalues), FIT_POINTS).round().astype(int)) - 1
    positive = np.clip(eigenvalues, eigenvalues[eigenvalues > 0].min(), None)
    errors = []
    for beta in BETA_GRID:
        w = positive**beta
        errors.append(np.mean((np.cumsum(w)[ranks] / w.sum() - target[ranks]) ** 2))
    return round(float(BETA_GRID[int(np.argmin(errors))]), 3)


def between_share_curve(ranks: np.ndarray, b0: float, j_c: float, gamma: float) -> np.ndarray:
    return b0 / (1.0 + (np.asarray(ranks, dtype=np.float64) / j_c) ** gamma)


def fit_between(share: np.ndarray) -> dict[str, float]:
    from scipy.optimize import least_squares

    max_rank = min(BETWEEN_FIT_MAX_RANK, len(share))
    ranks = np.unique(np.geomspace(1, max_rank, FIT_POINTS).round().astype(int))
    target = np.clip(share[ranks - 1], 0.0, 1.0)
    fit = least_squares(
        lambda p: between_share_curve(ranks, *p) - target,
        x0=[float(target[:5].mean()), 20.0, 3.0],
        bounds=([0.0, 1.0, 0.5], [1.0, float(max_rank), 20.0]),
    )
    b0, j_c, gamma = fit.x
    return {"b0": round(float(b0), 4), "j_c": round(float(j_c), 3), "gamma": round(float(gamma), 3)}


def fit_model(vectors: np.ndarray, families: np.ndarray) -> dict[str, Any]:
    """The model parameters (see the module docstring) from raw embeddings and their family labels."""
    x = vectors.astype(np.float64)
    v = x / np.linalg.norm(x, axis=1, keepdims=True)
    n, dim = v.shape
    mean = v.mean(axis=0)
    centred = v - mean
    eigenvalues, axes = np.linalg.eigh(centred.T @ centred / n)
    eigenvalues, axes = np.clip(eigenvalues[::-1], 0.0, None), axes[:, ::-1]

    names, family_of, sizes = np.unique(families, return_inverse=True, return_counts=True)
    family_means = np.zeros((len(names), dim))
    np.add.at(family_means, family_of, v)
    family_means /= sizes[:, None]
    deviations = v - family_means[family_of]
    within_per_family = np.zeros(len(names))
    np.add.at(within_per_family, family_of, np.sum(deviations**2, axis=1))
    multi = sizes > 1
    pooled_within = within_per_family[multi].sum() / (sizes[multi] - 1).sum()
    spreads = np.ones(len(names))
    spreads[multi] = within_per_family[multi] / (sizes[multi] - 1) / pooled_within
    spreads /= np.sum(sizes * spreads) / n  # item-weighted mean 1

    within_axis = np.sum((deviations @ axes) ** 2, axis=0) / (sizes[multi] - 1).sum()  # pooled, per principal axis
    between_axis = (sizes[:, None] * ((family_means - mean) @ axes) ** 2).sum(axis=0) / n
    between_axis -= within_axis * np.sum(spreads) / n  # noise of each family mean: spread·within / size, item-weighted
    share = np.clip(between_axis / np.maximum(eigenvalues, np.finfo(float).tiny), 0.0, 1.0)

    # a sample's mean also holds the average of its family centres and deviations: remove that expected excess
    between_total = float(np.sum(np.clip(between_axis, 0.0, None)))
    excess = float(np.sum((sizes / n) ** 2)) * between_total + (float(eigenvalues.sum()) - between_total) / n
    model = {
        "dim": dim,
        "mean_strength": round(math.sqrt(max(float(mean @ mean) - excess, 0.0)), 4),
        "measured_mean_strength": round(float(np.linalg.norm(mean)), 4),
        "mean_beta": fit_mean_beta(eigenvalues, (axes.T @ mean) ** 2),
        "spectrum": fit_spectrum(eigenvalues, int(dim * FIT_MAX_RANK_SHARE)),
        "between": fit_between(share),
        "families": {
            "sizes": [int(s) for s in sizes],
            "spreads": [round(float(s), SPREAD_DECIMALS) for s in spreads],
        },
    }
    log.info("fitted model: %s", {k: model[k] for k in ("mean_strength", "mean_beta", "spectrum", "between")})
    return model
