"""Named CNN backbones turning a batch of decoded posters into embedding vectors."""
from indexer.embedders.embedder import Embedder, EmbedderSpec, POOLINGS, WEIGHTS_IMAGENET, WEIGHTS_NONE
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
