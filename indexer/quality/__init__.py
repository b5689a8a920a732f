"""Measuring answer quality: search fidelity, genre agreement, copy detection, collections, latency,
near-duplicates (``evaluate``), configuration comparison (``compare``) and clustering (``analyze``).

Metric functions are pure NumPy (``metrics``); everything that reads a bundle goes through ``bundle_view``.
"""

from indexer.errors import IndexerError


class QualityError(IndexerError):
    """An evaluation cannot run (missing posters, no embedder for image queries, bad options)."""


__all__ = ["QualityError"]
