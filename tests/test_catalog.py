"""Catalogs: MovieLens CSVs with messy ids, poster patterns, popularity filter, bare folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.catalog import CatalogConfig, load_catalog
from indexer.errors import CatalogError


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture()
def ml(tmp_path: Path) -> Path:
    posters = tmp_path / "posters"
    posters.mkdir()
    for name in ("862.jpg", "8844.png", "15602.JPG", "31357.webp", "111.jpg", "0114709.jpg", "1.png"):
        (posters / name).write_bytes(b"x")
    _write(
        tmp_path / "movies.csv",
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children\n"
        "2,Jumanji (1995),Adventure|Children\n"
        '3,"Grumpier Old Men, The (1995)",Comedy|Romance\n'
        "4,Waiting to Exhale (1995),(no genres listed)\n"
        "5,No Poster (1995),Drama\n"
        "abc,Broken Id,Drama\n"
        "2,Jumanji duplicate,Adventure\n"
        "6,Blank Tmdb (1995),Drama\n",
    )
    _write(
        tmp_path / "links.csv",
        "movieId,imdbId,tmdbId\n1,0114709,862.0\n2,0113497,8844.0\n3,0113228,15602\n4,0114885,31357.0\n"
        "5,0113041,999999.0\n6,0113277,\n",
    )
    _write(
        tmp_path / "ratings.csv",
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},1,4.0,0\n{u},2,3.0,0\n" for u in range(10)) + "1,3,5.0,0\n",
    )
    return tmp_path


def test_movielens_with_tmdb_pattern(ml: Path) -> None:
    cat = load_catalog(CatalogConfig(ml / "posters", ml / "movies.csv", ml / "links.csv", pattern="{tmdbId}"))
    assert cat.items["item_id"].tolist() == [1, 2, 3, 4]
    assert cat.items["poster"].tolist() == ["862.jpg", "8844.png", "15602.JPG", "31357.webp"]
    assert cat.items.loc[2, "title"] == "Grumpier Old Men, The (1995)"
    assert cat.items.loc[3, "genres"] == ""
    assert int(cat.items.loc[0, "imdb_id"]) == 114709 and int(cat.items.loc[0, "tmdb_id"]) == 862
    reasons = {(p.item_id, p.reason.split(":")[0].split(";")[0]) for p in cat.problems}
    assert (5, "poster file not found") in reasons
    assert (6, "tmdbId is blank") in reasons
    assert (2, "duplicate movieId in movies.csv") in reasons
    assert any(p.item_id is None and "'abc' is not an integer" in p.reason for p in cat.problems)


def test_explicit_extension_and_format_spec(ml: Path) -> None:
    cat = load_catalog(CatalogConfig(ml / "posters", ml / "movies.csv", ml / "links.csv", pattern="{imdbId:07d}.jpg"))
    assert cat.items["item_id"].tolist() == [1]
    assert cat.items["poster"].tolist() == ["0114709.jpg"]


def test_movie_id_pattern_any_extension(ml: Path) -> None:
    cat = load_catalog(CatalogConfig(ml / "posters", ml / "movies.csv", None, pattern="{movieId}"))
    assert cat.items["item_id"].tolist() == [1]
    assert cat.items["poster"].tolist() == ["1.png"]


def test_min_ratings_filter(ml: Path) -> None:
    cat = load_catalog(
        CatalogConfig(
            ml / "posters", ml / "movies.csv", ml / "links.csv", ml / "ratings.csv", min_ratings=5, pattern="{tmdbId}"
        )
    )
    assert cat.items["item_id"].tolist() == [1, 2]  # rated 10 times each; movie 3 once


def test_min_ratings_needs_ratings(ml: Path) -> None:
    with pytest.raises(CatalogError, match="ratings"):
        load_catalog(CatalogConfig(ml / "posters", ml / "movies.csv", min_ratings=5))


def test_bad_pattern_and_missing_columns(ml: Path) -> None:
    with pytest.raises(CatalogError, match="fields expected"):
        load_catalog(CatalogConfig(ml / "posters", ml / "movies.csv", pattern="{title}.jpg"))
    _write(ml / "bad.csv", "id,name\n1,x\n")
    with pytest.raises(CatalogError, match="missing \\['movieId', 'title'\\]"):
        load_catalog(CatalogConfig(ml / "posters", ml / "bad.csv"))
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(CatalogConfig(ml / "nope", ml / "movies.csv"))


def test_bare_folder(tmp_path: Path) -> None:
    for name in ("tt0114709.jpg", "Heat 949.png", "nodigits.jpg", "949.gif", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    cat = load_catalog(CatalogConfig(tmp_path))
    assert cat.items["item_id"].tolist() == [949, 114709]
    assert cat.items["poster"].tolist() == ["949.gif", "tt0114709.jpg"]
    reasons = [p.reason for p in cat.problems]
    assert any("no digits" in r for r in reasons)
    assert any("duplicate item id 949" in r for r in reasons)
