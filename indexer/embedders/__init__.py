"""Named CNN backbones turning a batch of decoded posters into embedding vectors."""

from indexer.embedders.embedder import POOLINGS, WEIGHTS_IMAGENET, WEIGHTS_NONE, Embedder, EmbedderSpec
from indexer.embedders.registry import BACKBONES, backbone_names

__all__ = [
    "BACKBONES",
    "Embedder",
    "EmbedderSpec",
    "POOLINGS",
    "WEIGHTS_IMAGENET",
    "WEIGHTS_NONE",
    "backbone_names",
]
