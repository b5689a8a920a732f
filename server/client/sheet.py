"""Contact sheets: the query poster and its neighbours, with titles and scores, as one PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image

from indexer.contact_sheet import DEFAULT_COLUMNS, Tile, render_sheet
from server.types import Hit


def contact_sheet(
    query_title: str,
    query_image: bytes | Path | None,
    hits: Sequence[Hit],
    posters_dir: Path | None,
    columns: int = DEFAULT_COLUMNS,
    thumbnails: Mapping[int, bytes] | None = None,
) -> Image.Image:
    """Render the query (framed, first) followed by its neighbours (drawing: indexer/contact_sheet.py).

    Each neighbour's picture comes from ``thumbnails`` (item id -> JPEG, e.g. ``PosterClient.posters``: what a
    client on another host has) or else from ``posters_dir`` (the catalog's folder); a grey tile otherwise.
    """
    tiles = [Tile(query_image, query_title, "query", highlight=True)]
    for hit in hits:
        picture: bytes | Path | None = (thumbnails or {}).get(hit.item.item_id)
        if picture is None and posters_dir is not None and hit.item.poster:
            picture = posters_dir / hit.item.poster
        tiles.append(Tile(picture, hit.item.title, f"{hit.score:.3f}  #{hit.item.item_id}"))
    return render_sheet(tiles, columns)
