"""Engines that run the indexer's embedder beyond one process (``ray_embed``: Ray Data)."""
