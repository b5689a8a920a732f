"""Typed errors raised by the indexer library (the CLI turns them into messages)."""

from __future__ import annotations


class IndexerError(Exception):
    """Base class for every error the indexer reports to its user."""


class CatalogError(IndexerError):
    """The catalog (CSVs, poster folder, precomputed vectors) cannot be used."""


class ModelError(IndexerError):
    """An embedding model cannot be built or its weights cannot be loaded."""


class WeightsFormatError(ModelError):
    """A weights file is not in the expected format (or asks for forbidden objects)."""


class ImageError(IndexerError):
    """One image cannot be used; ``reason`` is recorded in the failures report."""


class ImageTooLargeError(ImageError):
    """An image exceeds the pixel or byte limit (decompression-bomb guard)."""


class BundleError(IndexerError):
    """A bundle on disk is missing, truncated, corrupt or inconsistent."""


class BuildError(IndexerError):
    """A build could not complete; the published bundle is unchanged."""
