"""The bundle manifest: the typed, versioned contract between the indexer and the server.

``manifest.json`` records everything the server needs to reproduce the build
exactly (model, weights, preprocessing, pooling, dimension, metric, index type and
parameters) plus provenance (timings, counts, library versions) and a checksum of
every file in the bundle. It is a pydantic model: unknown keys, missing keys and
wrong types are refused with a message naming the field.

Format history (``format_version``):

- 1: the first release; IVF recall stored as ``index.recall_at_10`` (measured on
  items querying themselves).
- 2: typed manifest; ``index.recall`` with ``recall_k`` and ``recall_queries``
  (how the recall was measured). Format-1 bundles are read and converted.
- 3: optional ``transform`` (PCA-whitening between the embedder and the index, in
  ``transform.npz``) and the embedder's ``gem_p`` / ``scales``. Format 1 and 2 bundles
  have neither and read unchanged.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from indexer.errors import BundleError

FORMAT_VERSION = 3
OLDEST_READABLE_FORMAT = 1
SHA256_PATTERN = r"^[0-9a-f]{64}$"
V1_RECALL_KEY = "recall_at_10"
V1_RECALL_K = 10


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileEntry(_Frozen):
    """Size and SHA-256 of one file of the bundle."""

    sha256: str = Field(pattern=SHA256_PATTERN)
    bytes: int = Field(ge=0)


class EmbedderInfo(_Frozen):
    """How posters became vectors: enough to rebuild the exact embedder for image queries."""

    model: str
    weights: str
    pooling: str
    resize: str
    init_seed: int = 0
    input_size: int = Field(gt=0)
    preprocessing: str
    dim: int = Field(gt=0)
    fingerprint: str
    gem_p: float | None = None  # pooling "gem": the generalized-mean exponent
    scales: list[float] | None = None  # multi-scale: input sizes (x input_size) whose descriptors are averaged


class TransformInfo(_Frozen):
    """The step between the embedder's L2-normalized vectors and the index (``transform.npz``), applied to the
    catalog at build time and to every query vector from outside the index: L2 -> PCA-whiten -> L2."""

    kind: Literal["pca-whiten"] = "pca-whiten"
    steps: list[str] = Field(default_factory=lambda: ["l2", "subtract-mean", "project-whiten", "l2"])
    in_dim: int = Field(gt=0)  # the embedder's dimension (what SearchByVector takes)
    out_dim: int = Field(gt=0)  # the index's dimension
    shrinkage: float = Field(ge=0)
    trained_on: int = Field(gt=0)
    file: str
    sha256: str = Field(pattern=SHA256_PATTERN)


class IndexParams(_Frozen):
    """The FAISS index type and its default search parameters, with the recall they measured."""

    type: str
    exact: bool
    nlist: int = Field(default=0, ge=0)
    nprobe: int = Field(default=0, ge=0)
    trained_on: int = Field(default=0, ge=0)
    target_recall: float | None = None
    recall: float | None = None  # recall@recall_k of the default parameters against exact search
    recall_k: int = Field(default=0, ge=0)
    recall_queries: str = ""  # how recall was measured: "held-in" (indexed items) or "held-out"
    build_seconds: float = 0.0
    # format 3: the other index families and how they were chosen
    ef_search: int = Field(default=0, ge=0)  # HNSW: default efSearch
    hnsw_m: int = Field(default=0, ge=0)
    ef_construction: int = Field(default=0, ge=0)
    pq_m: int = Field(default=0, ge=0)  # IVF-PQ: sub-quantizers (4-bit fast scan)
    refine: str = ""  # IVF-PQ: the stored vectors candidates are re-ranked against ("sq8", "fp16", "flat")
    k_factor: int = Field(default=0, ge=0)  # IVF-PQ: candidates re-ranked = k x k_factor
    factory: str = ""  # the FAISS index factory string
    latency_p50_ms: float | None = None  # one query at a time, one thread, at the default parameters
    memory_bytes: int = Field(default=0, ge=0)  # estimated resident size of the index
    chosen_by: str = ""  # --index auto: why this type
    held_out_queries: int = Field(default=0, ge=0)


class ThumbnailsInfo(_Frozen):
    """Poster thumbnails stored in the bundle (posters.bin + poster_offsets.npy), served by GetPosters."""

    width: int = Field(gt=0)  # the box thumbnails fit in (aspect kept)
    height: int = Field(gt=0)
    quality: int = Field(gt=0, le=100)  # JPEG quality
    count: int = Field(ge=0)  # items that have one


class NeighboursInfo(_Frozen):
    """The precomputed item-to-item neighbour table (k = 0: none)."""

    k: int = Field(default=0, ge=0)
    exact: bool = True  # False: searched in the (approximate) index, recall measured on a sample
    recall: float | None = None  # recall@k of the table against exact search (None: exact)
    source: str = "exact"  # "exact" (blocked brute force) or "index"


class Manifest(_Frozen):
    format_version: int = FORMAT_VERSION
    build_id: str = Field(min_length=1)
    created_at: str
    model: str  # backbone name, or the name given to precomputed vectors
    embedder: EmbedderInfo | None  # None: built from precomputed vectors (no image search)
    dim: int = Field(gt=0)  # the index's dimension (transform.out_dim when there is a transform)
    metric: Literal["inner_product"] = "inner_product"
    normalization: Literal["l2"] = "l2"
    index: IndexParams
    neighbours: NeighboursInfo = NeighboursInfo()
    item_count: int = Field(ge=0)
    failure_count: int = Field(ge=0)
    near_duplicate_pairs: int | None = None  # pairs above the near-duplicate cosine (None: not checked)
    thumbnails: ThumbnailsInfo | None = None  # None: the bundle stores no thumbnails
    transform: TransformInfo | None = None  # None: the index holds the embedder's vectors as they are
    files: dict[str, FileEntry] = Field(default_factory=dict)
    source: dict[str, dict[str, str] | None] = Field(default_factory=dict)
    embedding_counts: dict[str, int] = Field(default_factory=dict)
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)

    @property
    def query_dim(self) -> int:
        """The dimension of vectors from outside the index (SearchByVector): the embedder's."""
        return self.transform.in_dim if self.transform is not None else self.dim

    @property
    def vector_space(self) -> str:
        """Identity of the space the index's vectors live in: the embedder's fingerprint (or the precomputed
        model name) plus the transform's checksum. Two bundles answer a vector alike only if these match."""
        base = self.embedder.fingerprint if self.embedder is not None else f"precomputed:{self.model}:{self.dim}"
        if self.transform is None:
            return base
        return hashlib.sha256(f"{base}|{self.transform.kind}|{self.transform.sha256}".encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Format 1 -> 2: the IVF recall key became typed fields."""
    index = dict(data.get("index") or {})
    if V1_RECALL_KEY in index:
        index["recall"] = index.pop(V1_RECALL_KEY)
        index["recall_k"] = V1_RECALL_K
        index["recall_queries"] = "held-in"
    return {**data, "index": index, "format_version": FORMAT_VERSION}


def parse_manifest(raw: bytes, where: str) -> Manifest:
    """Parse manifest bytes (any readable format version); BundleError naming ``where`` otherwise."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where} is corrupt: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{where} is corrupt: expected a JSON object, got {type(data).__name__}")
    version = data.get("format_version")
    if not isinstance(version, int) or not OLDEST_READABLE_FORMAT <= version <= FORMAT_VERSION:
        raise BundleError(
            f"{where}: format_version expected {OLDEST_READABLE_FORMAT}..{FORMAT_VERSION}, "
            f"got {version!r} (a newer posters-index wrote it? upgrade this server)"
        )
    if version == 1:
        data = _upgrade_v1(data)
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BundleError(f"{where} is corrupt: {problems}") from None


def manifest_digest(raw: bytes) -> str:
    """Content identity of a bundle: the SHA-256 of its manifest (which holds every file's SHA-256)."""
    return hashlib.sha256(raw).hexdigest()
