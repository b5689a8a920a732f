"""Argument conversions shared by the ``posters-index`` subcommands that embed (build, embed)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the model code is imported when a command runs, after its extras are checked
    from indexer.embedders import EmbedderSpec


def parse_scales(text: str) -> tuple[float, ...]:
    """--scales: comma-separated multiples of the model's input size."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 1,0.75, got {text!r}") from None


def embedder_spec(args: argparse.Namespace) -> EmbedderSpec:
    """The EmbedderSpec of the model options (--model, --weights, --pooling, --gem-p, --resize, --scales,
    --runtime)."""
    from indexer.embedders import EmbedderSpec

    return EmbedderSpec(
        model=args.model,
        weights=args.weights,
        pooling=args.pooling,
        resize=args.resize,
        gem_p=args.gem_p,
        scales=args.scales,
        runtime=args.runtime,
    )
