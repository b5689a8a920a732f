"""The quality reports of the served bundle (``posters-index eval`` / ``analyze`` outputs), read by fixed names.

Nothing here takes a path from a request: the folder is the ``--quality-dir`` option, the bundle is the build
id posters-serve reports (checked to be a plain name), and a request only selects one of the fixed file names
below; the file is then opened from the report folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SECTIONS = ("eval", "analyze")
MARKDOWN = {"eval": "eval.md", "analyze": "analysis.md"}
CHARTS: dict[str, tuple[str, ...]] = {
    "eval": (
        "fidelity.png",
        "genres.png",
        "copy_detection.png",
        "duplicate_cosines.png",
        "latency.png",
        "edits.png",
        "duplicates.png",
    ),
    "analyze": ("kmeans.png", "pca.png", "genre_composition.png"),
}
MAX_CLUSTER_SHEETS = 100  # analyze writes clusters/cluster_NN.png, one per cluster of the best k
CLUSTER_SHEETS = tuple(f"cluster_{c:02d}.png" for c in range(MAX_CLUSTER_SHEETS))
CLUSTER_FOLDER = "clusters"
MAX_MARKDOWN_BYTES = 1024 * 1024  # a report's Markdown is a few KB; never read a huge file into a response
BUILD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
HOW_TO = (
    "posters-index eval ROOT && posters-index analyze ROOT   # write ROOT/quality/<build id>/{eval,analyze}/, "
    "then start posters-web with --quality-dir ROOT/quality"
)


def relative_file(section: str, name: str) -> str | None:
    """The report-relative path of a fixed file name, or None if ``name`` is not one of them."""
    if section not in SECTIONS:
        return None
    if name == MARKDOWN[section] or name in CHARTS[section]:
        return name
    if section == "analyze" and name in CLUSTER_SHEETS:
        return f"{CLUSTER_FOLDER}/{name}"
    return None


@dataclass(frozen=True)
class Section:
    name: str
    folder: Path
    markdown: str
    charts: tuple[str, ...]  # names of the chart files that exist
    modified_at: float


class QualityReports:
    """Reports under ``root`` (ROOT/quality, or the index ROOT itself) for a bundle's build id."""

    def __init__(self, root: Path | None) -> None:
        self.root = root.resolve() if root is not None else None

    @property
    def configured(self) -> bool:
        return self.root is not None

    def bundle_folder(self, build_id: str) -> Path | None:
        if self.root is None or not BUILD_ID.match(build_id):
            return None
        for folder in (self.root / build_id, self.root / "quality" / build_id):
            if folder.is_dir():
                return folder
        return None

    def sections(self, build_id: str) -> list[Section]:
        folder = self.bundle_folder(build_id)
        if folder is None:
            return []
        out = []
        for section in SECTIONS:
            markdown_file = folder / section / MARKDOWN[section]
            if not self._inside(markdown_file) or not markdown_file.is_file():
                continue
            charts = [*CHARTS[section], *(CLUSTER_SHEETS if section == "analyze" else ())]
            present = tuple(n for n in charts if self.file(build_id, section, n) is not None)
            with markdown_file.open("rb") as fh:
                text = fh.read(MAX_MARKDOWN_BYTES).decode("utf-8", errors="replace")
            out.append(Section(section, folder / section, text, present, markdown_file.stat().st_mtime))
        return out

    def file(self, build_id: str, section: str, name: str) -> Path | None:
        """The file of a fixed name in the bundle's report, if it exists (inside the quality folder)."""
        relative = relative_file(section, name)
        folder = self.bundle_folder(build_id)
        if relative is None or folder is None:
            return None
        path = folder / section / relative
        return path if self._inside(path) and path.is_file() else None

    def _inside(self, path: Path) -> bool:
        """False for a file that is a link leading out of the quality folder."""
        assert self.root is not None
        return path.resolve().is_relative_to(self.root)
