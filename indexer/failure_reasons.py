"""Reason classes for the rows of a bundle's ``failures.csv``: a few stable names for summaries and pipelines.

The ``reason`` column is a sentence written for a person ("poster file not found: expected 862.jpg",
"image is 9000x9000 = 81000000 pixels, limit is 50000000"); ``reason_class`` maps it to a short class name
("poster not found", "image too large") so a build summary can say *why* items were skipped, in counts.
Unknown sentences fall into ``OTHER``: a new reason never breaks a summary, it just is not broken down.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

OTHER = "other"

# (class, pattern searched in the reason), first match wins: the specific before the general.
REASON_CLASSES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("poster not found", r"^poster file not found"),
        ("id needed by pattern is blank", r"is blank; poster pattern"),
        ("pattern cannot format id", r"cannot format this row's ids"),
        ("ragged CSV row", r"expected \d+ fields .*; row skipped"),
        ("duplicate id", r"duplicate (movieId|item id)"),
        ("invalid ratings", r"ratings with an invalid movieId"),
        ("no id in file name", r"no digits in the file name"),
        ("invalid id", r"(movieId|imdbId|tmdbId|item id|id) '.*' (is|from the file name)"),
        ("image too large", r"limit is \d+|decompression bomb|bytes, the limit"),
        ("empty file", r"^empty file"),
        ("not an image", r"^not a recognised image"),
        ("unreadable file", r"^cannot read file"),
        ("corrupt image", r"^cannot decode image|^image has no pixels"),
        ("bad vector", r"NaN or Inf|beyond the float32 range|zero or not finite"),
        ("bad vector row", r"^row \d+: .*; row skipped"),
    )
)


def reason_class(reason: str) -> str:
    """The class of one ``failures.csv`` reason (``OTHER`` if none matches)."""
    for name, pattern in REASON_CLASSES:
        if pattern.search(reason):
            return name
    return OTHER


def count_reasons(reasons: Iterable[str]) -> dict[str, int]:
    """Failures per reason class, most frequent first (ties by name)."""
    counts = Counter(reason_class(str(r)) for r in reasons)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
