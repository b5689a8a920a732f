"""Offline poster indexer: catalog -> decoded posters -> CNN embeddings -> FAISS bundle."""

__version__ = "0.1.0"
