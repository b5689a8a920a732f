"""PCA-whitening learned on a catalog's own vectors: the optional step between the embedder and the index.

Whitening rescales the principal directions of the catalog's (L2-normalized) vectors to equal variance, so
that the few directions every poster shares (a dominant "mean poster" component, see the realistic-data
report) stop dominating the cosine; dimension reduction keeps the first ``dim`` directions. It is learned
at build time, stored in the bundle (``transform.npz``: mean, projection, eigenvalues) and applied
**identically** to the catalog vectors before indexing and to every query vector from outside the index
(SearchByVector, BatchSearch vectors, SearchByImage's embedded windows, ``posters-index eval``'s copy
queries). Item queries use stored vectors, which are already in the index's space.

``y = normalize((normalize(x) - mean) @ projection.T)`` with ``projection = diag((eigenvalue + shrinkage *
mean eigenvalue) ** -0.5) @ eigenvectors.T`` — the shrinkage keeps a small catalog's tiny eigenvalues from
blowing up noise (a sample covariance of N vectors has rank at most N - 1, and ``dim`` is capped there).
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.errors import BuildError, BundleError

log = logging.getLogger(__name__)

TRANSFORM_FILE = "transform.npz"
DEFAULT_SHRINKAGE = 0.1  # eigenvalue floor as a fraction of the mean eigenvalue (chosen by eval: README)
MAX_TRAIN_VECTORS = 100_000  # a covariance from 100k vectors is as good as from all of them, and 1M x D is not copied
MIN_TRAIN_VECTORS = 2
_ARRAYS = ("mean", "projection", "eigenvalues")


@dataclass(frozen=True)
class WhitenSpec:
    """``enabled``: learn and apply whitening; ``dim``: output dimension (None: all the catalog supports, capped
    at the input dimension and at N - 1); ``shrinkage``: the eigenvalue floor; ``seed``: the training sample."""

    enabled: bool = False
    dim: int | None = None
    shrinkage: float = DEFAULT_SHRINKAGE
    max_train: int = MAX_TRAIN_VECTORS
    seed: int = 1234

    def validate(self) -> None:
        if self.dim is not None and self.dim < 1:
            raise BuildError(f"whitening dimension expected >= 1, got {self.dim}")
        if not self.shrinkage >= 0:
            raise BuildError(f"whitening shrinkage expected >= 0, got {self.shrinkage}")


@dataclass(frozen=True)
class Whitening:
    """A learned whitening: ``apply`` maps L2-normalized (n, in_dim) vectors to L2-normalized (n, out_dim)."""

    mean: np.ndarray  # (in_dim,) float32
    projection: np.ndarray  # (out_dim, in_dim) float32
    eigenvalues: np.ndarray  # (out_dim,) float64, the kept eigenvalues (before shrinkage), descending
    shrinkage: float
    trained_on: int

    @property
    def in_dim(self) -> int:
        return int(self.projection.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.projection.shape[0])

    def apply(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(whitened L2-normalized float32 (n, out_dim), ok mask): rows that whiten to zero are not ok."""
        from indexer.index import normalize  # index imports nothing from here; keep the module graph acyclic

        x = np.asarray(vectors, np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise BuildError(f"vectors to whiten expected shape (n, {self.in_dim}), got {x.shape}")
        projected = (x - self.mean) @ self.projection.T
        return normalize(projected)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            mean=self.mean,
            projection=self.projection,
            eigenvalues=self.eigenvalues,
            shrinkage=np.float64(self.shrinkage),
            trained_on=np.int64(self.trained_on),
        )
        return buffer.getvalue()

    def digest(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()


def learn_whitening(vectors: np.ndarray, spec: WhitenSpec) -> Whitening:
    """PCA-whitening of L2-normalized ``vectors`` (n, d), learned on at most ``spec.max_train`` of them."""
    spec.validate()
    n, d = vectors.shape
    if n < MIN_TRAIN_VECTORS:
        raise BuildError(f"whitening needs at least {MIN_TRAIN_VECTORS} vectors to learn from, got {n}")
    rng = np.random.default_rng(spec.seed)
    sample = vectors if n <= spec.max_train else vectors[np.sort(rng.choice(n, spec.max_train, replace=False))]
    x = np.asarray(sample, np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    if len(x) < d:  # fewer vectors than dimensions: the thin SVD of the data is cheaper than the D x D covariance
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        eigenvalues, eigenvectors = singular**2 / max(1, len(x) - 1), vt.T
    else:
        eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / max(1, len(x) - 1))  # ascending
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = np.clip(eigenvalues[order], 0.0, None), eigenvectors[:, order]
    supported = min(d, len(x) - 1)
    out_dim = min(spec.dim or supported, supported)
    if spec.dim is not None and spec.dim > supported:
        log.warning("whitening dimension %d capped at %d (N - 1 or the input dimension)", spec.dim, supported)
    floor = spec.shrinkage * float(eigenvalues[:supported].mean())
    kept = eigenvalues[:out_dim]
    scale = 1.0 / np.sqrt(kept + floor) if floor > 0 else 1.0 / np.sqrt(np.maximum(kept, np.finfo(np.float64).tiny))
    projection = (eigenvectors[:, :out_dim] * scale).T
    log.info("whitening learned on %d vectors: %d -> %d dims, shrinkage %.3g", len(x), d, out_dim, spec.shrinkage)
    return Whitening(
        mean=mean.astype(np.float32),
        projection=np.ascontiguousarray(projection, np.float32),
        eigenvalues=kept,
        shrinkage=float(spec.shrinkage),
        trained_on=len(x),
    )


def read_whitening(path: Path, in_dim: int, out_dim: int) -> Whitening:
    """Load ``transform.npz`` and check it against the manifest's dimensions; BundleError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in (*_ARRAYS, "shrinkage", "trained_on")}
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise BundleError(f"{path} is corrupt: {exc}") from exc
    mean, projection = arrays["mean"], arrays["projection"]
    if projection.dtype != np.float32 or projection.shape != (out_dim, in_dim) or mean.shape != (in_dim,):
        raise BundleError(
            f"{path}: projection expected float32 ({out_dim}, {in_dim}) and mean ({in_dim},) as the manifest says, "
            f"got {projection.dtype} {projection.shape} and {mean.shape}"
        )
    if not (np.isfinite(projection).all() and np.isfinite(mean).all()):
        raise BundleError(f"{path}: the whitening holds non-finite values")
    return Whitening(
        mean=mean.astype(np.float32),
        projection=projection,
        eigenvalues=np.asarray(arrays["eigenvalues"], np.float64),
        shrinkage=float(arrays["shrinkage"]),
        trained_on=int(arrays["trained_on"]),
    )
