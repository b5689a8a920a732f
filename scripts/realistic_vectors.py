#!/usr/bin/env python3
"""Synthetic benchmark vectors with the statistics of real EfficientNet-Lite0 embeddings.

Why: the old benchmark data (``bench_common.clustered_vectors``: isotropic blobs around random centres) is
so clustered that IVF reaches recall@10 = 1.0 at nprobe = 1; real CNN embeddings are not like that, so
parameters tuned and figures measured on it do not transfer.

The model (fitted by ``realistic_fit.py`` on ~2,200 real embeddings; targets in realistic_calibration.json)
----------------------------------------------------------------------------------------------------------
A vector is the L2 normalization of ``y = Q (s·μ + c_f + e)``:

- ``Q`` is a random orthonormal basis of R^d (seeded); all other terms are coordinates on its axes.
- ``s·μ`` is the common mean direction: |mean| of the real normalized embeddings is s ≈ 0.56 (features after
  ReLU and average pooling are all non-negative), so random pairs have cosine ≈ 0.3 and the data lives
  in a cone. μ's energy on axis j is ∝ λ_j^β (β ≈ 0.6: the mean leans towards the high-variance axes, as
  measured).
- The variance on axis j follows the real PCA spectrum λ_j, fitted as a continuous three-piece power law
  (flat head, steep middle, power-law tail; scaled so that s² + Σλ = 1, as for unit vectors).
- Rows come in *families* (views of one source: crops/edits of one photo, sequels of one poster). A family
  has a centre ``c_f ~ N(0, diag(b_j λ_j))``; b_j, the between-family share of λ_j, was measured ≈ 0.83 on
  the first ~20 axes and ≈ 0 beyond ~40 (fitted as b0 / (1 + (j / j_c)^γ)). A member adds a deviation
  ``e = sqrt(t_f) · W^½ (sqrt(1 - η) · G_f u + sqrt(η) · z)`` with W = diag((1 - b_j) λ_j):
  ``G_f u`` is a *view*, a point of a low-dimensional Gaussian of the family (G_f: random d x 16,
  u ~ N(0, diag(i^-decay)), i = 1..16, normalized; crops and zooms of one photo vary along few directions, which is
  what makes a real view's nearest neighbour far closer than a typical sibling), and ``z ~ N(0, I_d)`` an
  *edit*, isotropic, taking a share η = U^p (U uniform) of the deviation. decay (≈ 2) and p (≈ 4) are
  fitted by simulation to the real nearest- and 10th-neighbour cosine quantiles and, with small weights,
  hubness (realistic_calibrate.py). Family size and spread t_f are drawn together from the calibration
  set's own families (20 photos x 90 views with t ≈ 1; ~190 poster families of 1-4 with t ≈ 0.05).
- ``families="none"`` drops families: every row is an independent draw from N(s·μ, diag(λ)) — same
  spectrum and mean, no near-duplicates (much harder for IVF: a bound from the hard side).

Generation is in blocks of ``BLOCK_ROWS`` rows; each block holds whole families and draws from generators
seeded by (seed, block), so any block can be made alone: 1,000,000 x 1280 (4.9 GiB of output, ~1.5 min on
2 cores) needs ~0.2 GB besides the output (pass ``out=`` a memmap, or iterate ``RealisticGenerator.blocks``).
Row i of the stream does not depend on how many rows are asked for. Held-out queries are new members of
the families of uniformly chosen index rows (as for the real calibration set's held-out images, a query's
relatives are in the index but the query is not).

Measured against the calibration set (N = 2,200, seeds 0-4; scripts/bench_data.py compares more):
nearest-neighbour cosine quantiles within 0.02, 10th-neighbour within 0.04, random-pair within 0.08, mean
strength within 0.03, k-occurrence skewness 1.0 against 0.86. IVF (nlist ≈ √N, held-out queries) finds
recall@10 0.80 / 0.96 / 1.00 at nprobe 1 / 4 / 16 where the real set gives 0.91 / 1.00 / 1.00: a little
harder than real data at this size, where the old clustered data is trivial at scale (1.00 at nprobe 1 at
N = 50,000; realistic: 0.80 / 0.91 / 0.97).

What it does NOT reproduce
--------------------------
- Sparsity and non-negativity: real features are ~49 % exact zeros and all ≥ 0; the model is Gaussian.
  Cosine geometry (what indexes see) is matched, coordinate-wise statistics are not — do not benchmark
  coordinate-quantization tricks (SQ8 ranges, PQ codebooks) on it without care.
- The spectrum *of a small sample*: the generator's population spectrum is the real sample spectrum, so a
  sample as small as the calibration set (a few big families) puts more variance on its top axes (top 10
  axes hold ~0.51 of the variance at N = 2,200 against 0.42 real; 0.44 at N = 20,000).
- Within-family shape: a real photo family spreads over ~10-18 effective dimensions (participation ratio);
  a generated one over ~2-3 plus isotropic edits — the compromise a Gaussian view model needs to match the
  real nearest-neighbour cosines. Anti-hubs (rows nobody has among its 10 nearest) are ~13 % against 1 %.
- The between-family spectrum beyond ~40 axes: the calibration set has only 20 real photos and 8 poster
  drawing styles, so distinct sources span few directions; a real catalog of 60,000 posters surely spreads
  over more. Its family structure (big families of 90 views) is the calibration set's, not a catalog's; and
  the posters' 8 drawing styles (clusters of families) are not modelled. The first two make the calibrated
  data likely *easier* for IVF than a large real catalog; ``families="none"`` brackets it from the hard side.
- The shape of the random-pair cosine distribution: real is skewed (mode ~0.24, long right tail), generated
  is near-symmetric around ~0.32 (same 10th and 90th percentiles within ~0.05).
- The norm before normalization (real: ~16 ± 2) is not modelled: rows are unit vectors.
- d other than the calibration dimension (1280): the fitted spectrum is truncated (d < 1280) or its tail
  extended (d > 1280), then rescaled so that s² + Σλ = 1.

Use
---
  from realistic_vectors import realistic_vectors, held_out_queries       # (scripts/ on sys.path)
  x = realistic_vectors(60_000, 1280, seed=0)                               # (n, d) float32, unit rows
  q = held_out_queries(1000, 60_000, 1280, seed=0)                          # queries for that index

  python scripts/realistic_vectors.py calibrate            # embed the real images, refit, write the JSON (~4 min)
  python scripts/realistic_vectors.py calibrate --reuse    # refit on the kept embeddings (~30 s)
  python scripts/realistic_vectors.py generate --n 1000000 --dim 1280 --queries 1000 --out vectors.npy
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from realistic_fit import between_share_curve, piecewise_power_law

log = logging.getLogger(__name__)

CALIBRATION_PATH = Path(__file__).resolve().with_name("realistic_calibration.json")
DEFAULT_EMBEDDINGS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "calibration-embeddings.npz"
BLOCK_ROWS = 4096  # part of the stream's definition: changing it changes every generated vector
FAMILY_MODES = ("calibrated", "none")
LAYOUT_SALT, CENTRE_SALT, LOADING_SALT, MEMBER_SALT, BASIS_SALT, QUERY_SALT = 0x1A7, 0xCE7, 0x10AD, 0x3E3, 0xBA5, 0x9E7
FAMILY_DRAW_MARGIN = 2.0  # draw this many times the expected number of families per block at once
VIEW_DIMS = 16  # latent dimensions of a family's views (their variances decay as i^-view_decay)


@dataclass(frozen=True)
class Calibration:
    """The fitted model (the ``model`` object of realistic_calibration.json)."""

    dim: int
    mean_strength: float
    mean_beta: float
    spectrum_breaks: tuple[float, ...]
    spectrum_slopes: tuple[float, ...]
    spectrum_log_a: float
    between_b0: float
    between_j_c: float
    between_gamma: float
    family_sizes: tuple[int, ...]
    family_spreads: tuple[float, ...]
    view_decay: float
    edit_power: float

    @classmethod
    def from_model(cls, model: dict[str, Any]) -> Calibration:
        spectrum, between, families = model["spectrum"], model["between"], model["families"]
        if len(families["sizes"]) != len(families["spreads"]) or not families["sizes"]:
            raise ValueError(
                f"families expected as many sizes as spreads (non-empty), got {len(families['sizes'])} "
                f"and {len(families['spreads'])}"
            )
        return cls(
            dim=int(model["dim"]),
            mean_strength=float(model["mean_strength"]),
            mean_beta=float(model["mean_beta"]),
            spectrum_breaks=tuple(spectrum["breaks"]),
            spectrum_slopes=tuple(spectrum["slopes"]),
            spectrum_log_a=float(spectrum["log_a"]),
            between_b0=float(between["b0"]),
            between_j_c=float(between["j_c"]),
            between_gamma=float(between["gamma"]),
            family_sizes=tuple(int(s) for s in families["sizes"]),
            family_spreads=tuple(float(s) for s in families["spreads"]),
            view_decay=float(model["views"]["decay"]),
            edit_power=float(model["views"]["edit_power"]),
        )


def read_calibration_file(path: Path = CALIBRATION_PATH) -> dict[str, Any]:
    """The whole calibration file: ``source``, ``model`` and the measured ``targets``."""
    return json.loads(path.read_text())


@functools.lru_cache(maxsize=4)
def load_calibration(path: Path = CALIBRATION_PATH) -> Calibration:
    return Calibration.from_model(read_calibration_file(path)["model"])


@functools.lru_cache(maxsize=4)
def _basis(dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A Haar-random orthonormal basis (rows = axes, float32) and random signs for the mean's coordinates."""
    rng = np.random.default_rng([seed, dim, BASIS_SALT])
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    basis_t = np.ascontiguousarray((q * np.sign(np.diag(r))).T, dtype=np.float32)
    basis_t.flags.writeable = False
    return basis_t, np.where(rng.uniform(size=dim) < 0.5, -1.0, 1.0)


class RealisticGenerator:
    """One seeded stream of realistic vectors of dimension ``dim`` (see the module docstring)."""

    def __init__(self, dim: int, seed: int, calibration: Calibration, families: str = "calibrated") -> None:
        if families not in FAMILY_MODES:
            raise ValueError(f"families expected one of {FAMILY_MODES}, got {families!r}")
        if dim < 2:
            raise ValueError(f"dim expected >= 2, got {dim}")
        self.dim, self.seed, self.calibration, self.families = dim, seed, calibration, families
        c = calibration
        ranks = np.arange(1, dim + 1)
        lam = piecewise_power_law(ranks, list(c.spectrum_breaks), list(c.spectrum_slopes), c.spectrum_log_a)
        lam *= (1.0 - c.mean_strength**2) / lam.sum()
        between = between_share_curve(ranks, c.between_b0, c.between_j_c, c.between_gamma)
        self.eigenvalues = lam
        self.sd_total = np.sqrt(lam).astype(np.float32)
        self.sd_between = np.sqrt(lam * between).astype(np.float32)
        self.sd_within = np.sqrt(lam * (1.0 - between)).astype(np.float32)
        self.basis_t, signs = _basis(dim, seed)
        energy = lam**c.mean_beta
        self.mean_coords = (c.mean_strength * signs * np.sqrt(energy / energy.sum())).astype(np.float32)
        self.table_sizes = np.asarray(c.family_sizes, dtype=np.int64)
        self.table_spreads = np.asarray(c.family_spreads, dtype=np.float32)
        profile = np.arange(1, VIEW_DIMS + 1, dtype=np.float64) ** -c.view_decay
        self.view_sd = np.sqrt(profile / profile.sum()).astype(np.float32)  # latent sds; variances sum to 1
        self.edit_power = c.edit_power

    # ---- one block ---------------------------------------------------------------------------------------------
    def _layout(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(family index of each row of the block, spread of each family); a family's rows are contiguous."""
        rng = np.random.default_rng([self.seed, block, LAYOUT_SALT])
        draw = int(FAMILY_DRAW_MARGIN * BLOCK_ROWS / self.table_sizes.mean()) + 1
        picks = np.empty(0, np.int64)
        while self.table_sizes[picks].sum() < BLOCK_ROWS:
            picks = np.concatenate([picks, rng.integers(len(self.table_sizes), size=draw)])
        sizes = self.table_sizes[picks]
        count = int(np.searchsorted(np.cumsum(sizes), BLOCK_ROWS) + 1)  # the last family is cut at the block end
        return np.repeat(np.arange(count), sizes[:count])[:BLOCK_ROWS], self.table_spreads[picks[:count]]

    def _families(self, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(family of each row, spreads, centres (F, d)) of one block."""
        family_of_row, spreads = self._layout(block)
        rng = np.random.default_rng([self.seed, block, CENTRE_SALT])
        centres = rng.standard_normal((len(spreads), self.dim), dtype=np.float32) * self.sd_between
        return family_of_row, spreads, centres

    def _loadings(self, block: int, family: int) -> np.ndarray:
        """The (VIEW_DIMS, d) view loadings of one family (own generator: queries need only their families')."""
        rng = np.random.default_rng([self.seed, block, int(family), LOADING_SALT])
        return rng.standard_normal((VIEW_DIMS, self.dim), dtype=np.float32)

    def _members(
        self,
        block: int,
        family_of_row: np.ndarray,
        spreads: np.ndarray,
        centres: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Coordinates of new members: centre + sqrt(spread)·within-scale·(view part + edit part)."""
        count = len(family_of_row)
        latent = rng.standard_normal((count, VIEW_DIMS), dtype=np.float32) * self.view_sd
        edit = rng.uniform(size=count).astype(np.float32) ** self.edit_power  # share of the deviation that is "edit"
        noise = rng.standard_normal((count, self.dim), dtype=np.float32)
        view = np.empty((count, self.dim), np.float32)
        order = np.argsort(family_of_row, kind="stable")
        families, starts = np.unique(family_of_row[order], return_index=True)
        for family, rows in zip(families, np.split(order, starts[1:])):
            view[rows] = latent[rows] @ self._loadings(block, family)
        scale = np.sqrt(spreads)[family_of_row, None] * self.sd_within
        deviation = np.sqrt(1.0 - edit)[:, None] * view + np.sqrt(edit)[:, None] * noise
        return centres[family_of_row] + scale * deviation

    def _finish(self, coords: np.ndarray) -> np.ndarray:
        coords += self.mean_coords
        y = coords @ self.basis_t
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        return y

    def block(self, block: int) -> np.ndarray:
        """Rows ``block * BLOCK_ROWS`` .. ``(block + 1) * BLOCK_ROWS - 1`` of the stream, float32 unit vectors."""
        rng = np.random.default_rng([self.seed, block, MEMBER_SALT])
        if self.families == "none":
            return self._finish(rng.standard_normal((BLOCK_ROWS, self.dim), dtype=np.float32) * self.sd_total)
        family_of_row, spreads, centres = self._families(block)
        return self._finish(self._members(block, family_of_row, spreads, centres, rng))

    # ---- many rows -------------------------------------------------------------------------------------------
    def blocks(self, n: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) covering rows 0 .. n-1, one block at a time (bounded memory)."""
        for b in range(math.ceil(n / BLOCK_ROWS)):
            rows = self.block(b)
            yield b * BLOCK_ROWS, rows[: n - b * BLOCK_ROWS]

    def vectors(self, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows 0 .. n-1 of the stream, written into ``out`` (e.g. a memmap) if given."""
        if n < 1:
            raise ValueError(f"n expected >= 1, got {n}")
        if out is None:
            out = np.empty((n, self.dim), np.float32)
        elif out.shape != (n, self.dim):
            raise ValueError(f"out expected shape {(n, self.dim)}, got {out.shape}")
        for start, rows in self.blocks(n):
            out[start : start + len(rows)] = rows
        return out

    def queries(self, count: int, n: int) -> np.ndarray:
        """``count`` held-out queries for the index ``vectors(n)``: new members of the families of uniformly
        chosen index rows (families="none": independent draws). None of them is an index row."""
        if count < 1 or n < 1:
            raise ValueError(f"count and n expected >= 1, got {count} and {n}")
        rng = np.random.default_rng([self.seed, n, QUERY_SALT])
        if self.families == "none":
            return self._finish(rng.standard_normal((count, self.dim), dtype=np.float32) * self.sd_total)
        parents = rng.integers(n, size=count)
        coords = np.empty((count, self.dim), np.float32)
        for block in np.unique(parents // BLOCK_ROWS):
            mine = np.flatnonzero(parents // BLOCK_ROWS == block)
            family_of_row, spreads, centres = self._families(int(block))
            fam = family_of_row[parents[mine] % BLOCK_ROWS]
            coords[mine] = self._members(int(block), fam, spreads, centres, rng)
        return self._finish(coords)


@functools.lru_cache(maxsize=8)
def generator(
    dim: int, seed: int, calibration: Calibration | None = None, families: str = "calibrated"
) -> RealisticGenerator:
    """A cached RealisticGenerator (the basis is a d x d QR: worth keeping between calls)."""
    return RealisticGenerator(dim, seed, calibration or load_calibration(), families)


def realistic_vectors(
    n: int,
    d: int,
    seed: int = 0,
    calibration: Calibration | None = None,
    families: str = "calibrated",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """(n, d) float32 L2-normalized vectors with the calibrated statistics (rows 0..n-1 of the seeded stream)."""
    return generator(d, seed, calibration, families).vectors(n, out)


def held_out_queries(
    count: int, n: int, d: int, seed: int = 0, calibration: Calibration | None = None, families: str = "calibrated"
) -> np.ndarray:
    """(count, d) float32 queries from the same distribution as ``realistic_vectors(n, d, seed)``, not in it."""
    return generator(d, seed, calibration, families).queries(count, n)


# ---- CLI ------------------------------------------------------------------------------------------------------
def generate(n: int, dim: int, seed: int, families: str, queries: int, out: Path) -> None:
    gen = generator(dim, seed, None, families)
    began = time.perf_counter()
    target = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, dim))
    gen.vectors(n, target)
    target.flush()
    if queries:
        np.save(out.with_name(out.stem + "-queries.npy"), gen.queries(queries, n))
    log.info("%d x %d vectors in %.1f s -> %s", n, dim, time.perf_counter() - began, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("calibrate", help="embed the real images, fit the model, write the calibration JSON")
    c.add_argument("--out", type=Path, default=CALIBRATION_PATH)
    c.add_argument("--embeddings", type=Path, default=DEFAULT_EMBEDDINGS, help="where the real embeddings are kept")
    c.add_argument("--reuse", action="store_true", help="refit on the kept embeddings instead of re-embedding")
    g = sub.add_parser("generate", help="write realistic vectors to a .npy file (memory-mapped, block by block)")
    g.add_argument("--n", type=int, required=True)
    g.add_argument("--dim", type=int, default=1280)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--families", choices=FAMILY_MODES, default="calibrated")
    g.add_argument("--queries", type=int, default=0, help="also write this many held-out queries to OUT-queries.npy")
    g.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "calibrate":
        from realistic_calibrate import calibrate

        payload = calibrate(args.out, args.embeddings, args.reuse)
        load_calibration.cache_clear()
        generator.cache_clear()
        print(json.dumps({k: payload[k] for k in ("source", "targets")}, indent=1))
        print(f"calibration: {args.out}")
    else:
        generate(args.n, args.dim, args.seed, args.families, args.queries, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
