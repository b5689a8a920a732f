"""Title lookup over a bundle's titles: case-insensitive substring, exact matches first."""
from __future__ import annotations

from typing import Sequence

YEAR_SUFFIX = " ("  # MovieLens titles end with " (year)"


class TitleIndex:
    def __init__(self, titles: Sequence[str]) -> None:
        self._lower = [t.lower() for t in titles]

    def find(self, text: str, limit: int) -> list[int]:
        """Rows whose title contains ``text`` (case-insensitive): exact, then prefix, then other matches."""
        needle = text.strip().lower()
        exact: list[int] = []
        prefix: list[int] = []
        other: list[int] = []
        for row, title in enumerate(self._lower):
            if needle in title:
                bare = title.rsplit(YEAR_SUFFIX, 1)[0]
                (exact if needle in (title, bare) else prefix if title.startswith(needle) else other).append(row)
        return (exact + prefix + other)[:limit]
