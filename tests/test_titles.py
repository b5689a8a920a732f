"""MovieLens-aware title search (issue #12, item 4): real MovieLens titles with the expected rows in order,
and the fast index against a brute-force oracle on a seeded synthetic catalog."""

from __future__ import annotations

import math
import random
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rapidfuzz import fuzz

from server.titles import (
    FUZZY_MAX_WORDS,
    FUZZY_MIN_WORD_CHARS,
    ROW_CUTOFF,
    SUBSTRING_MIN_CHARS,
    WORD_CUTOFF,
    YEAR_MAX,
    YEAR_MIN,
    MatchKind,
    ParsedTitle,
    TitleIndex,
    TitleMatches,
    normalize,
    parse_title,
)
from tests.title_catalog import synthetic_titles

E, P, W, S, F = MatchKind.EXACT, MatchKind.PREFIX, MatchKind.WORD, MatchKind.SUBSTRING, MatchKind.FUZZY

LEON = "Léon: The Professional (a.k.a. The Professional) (Léon) (1994)"
AMELIE = "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)"
LOST_CHILDREN = "City of Lost Children, The (Cité des enfants perdus, La) (1995)"
BICYCLE = "Bicycle Thieves (a.k.a. The Bicycle Thief) (a.k.a. The Bicycle Thieves) (Ladri di biciclette) (1948)"

# Real MovieLens titles (movies.csv spelling), one of each quirk; row = position.
MOVIELENS = [
    "Toy Story (1995)",
    "Toy Story 2 (1999)",
    "Godfather, The (1972)",
    "Godfather: Part II, The (1974)",
    "Godfather: Part III, The (1990)",
    AMELIE,
    LOST_CHILDREN,
    "Shawshank Redemption, The (1994)",
    "Das Boot (Boat, The) (1981)",
    LEON,
    "Hamlet (2000)",
    "Hamlet (1990)",
    "Hamlet (1948)",
    "Hamlet (1996)",
    "Die Hard (1988)",
    "Die Hard 2 (1990)",
    "Hard Target (1993)",
    "Blade Runner (1982)",
    "Blade Runner 2049 (2017)",
    "Seventh Seal, The (Sjunde inseglet, Det) (1957)",
    "Pan's Labyrinth (Laberinto del fauno, El) (2006)",
    "Life Is Beautiful (La Vita è bella) (1997)",
    "Misérables, Les (1995)",
    "Haine, La (1995)",
    "Postman, The (Postino, Il) (1994)",
    "Avventura, L' (Adventure, The) (1960)",
    "Lives of Others, The (Das leben der Anderen) (2006)",
    "Tin Drum, The (Blechtrommel, Die) (1979)",
    "Twelve Monkeys (a.k.a. 12 Monkeys) (1995)",
    "Sunset Blvd. (a.k.a. Sunset Boulevard) (1950)",
    "Schindler's List (1993)",
    "L.A. Confidential (1997)",
    "E.T. the Extra-Terrestrial (1982)",
    "Fish Called Wanda, A (1988)",
    "Bug's Life, A (1998)",
    "Matrix, The (1999)",
    "Spirited Away (Sen to Chihiro no kamikakushi) (2001)",
    "Seven Samurai (Shichinin no samurai) (1954)",
    "Battle of Algiers, The (La battaglia di Algeri) (1966)",
    "Celebration, The (Festen) (1998)",
    "Star Wars: Episode V - The Empire Strikes Back (1980)",
    "Star Wars: Episode IV - A New Hope (1977)",
    "Lord of the Rings: The Two Towers, The (2002)",
    "Lord of the Rings: The Fellowship of the Ring, The (2001)",
    "Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb (1964)",
    "Monty Python and the Holy Grail (1975)",
    "Crouching Tiger, Hidden Dragon (Wo hu cang long) (2000)",
    "Three Colors: Red (Trois couleurs: Rouge) (1994)",
    "Wallace & Gromit: The Wrong Trousers (1993)",
    "Jules and Jim (Jules et Jim) (1961)",
    BICYCLE,
    "Fawlty Towers (1975-1979)",
    "Babylon 5",
    "(500) Days of Summer (2009)",
    "Run Lola Run (Lola rennt) (1998)",
    "Intouchables (2011)",
    "Dolce Vita, La (1960)",
    "Cinema Paradiso (Nuovo cinema Paradiso) (1989)",
    "Strada, La (1954)",
    "Salò, or The 120 Days of Sodom (Salò o le 120 giornate di Sodoma) (1976)",
    "Ocean's Eleven (2001)",
    "Ocean's Eleven (a.k.a. Ocean's 11) (1960)",
    "A Quiet Place (2018)",
    "Girl with the Dragon Tattoo, The (Män som hatar kvinnor) (2009)",
    "Wild Strawberries (Smultronstället) (1957)",
    "Good, the Bad and the Ugly, The (Buono, il brutto, il cattivo, Il) (1966)",
    "Hunt, The (Jagten) (2012)",
    "Children of Paradise (Les enfants du paradis) (1945)",
    "Alien (1979)",
    "Aliens (1986)",
    "Alien³ (a.k.a. Alien 3) (1992)",
    "Æon Flux (2005)",
    "Crimson Rivers, The (Rivières pourpres, Les) (2000)",
    "Big Bang Theory, The (2007-)",
    "Rocky Horror Picture Show, The (1975)",
]
ROW = {t: r for r, t in enumerate(MOVIELENS)}
assert len(ROW) == len(MOVIELENS)


@pytest.fixture(scope="module")
def movielens() -> TitleIndex:
    return TitleIndex(MOVIELENS)


def found(m: TitleMatches) -> list[tuple[str, MatchKind]]:
    return [(MOVIELENS[r], k) for r, k in zip(m.rows, m.kinds)]


GODFATHERS = [
    ("Godfather, The (1972)", E),
    ("Godfather: Part II, The (1974)", P),
    ("Godfather: Part III, The (1990)", P),
]
HAMLETS = [("Hamlet (1948)", E), ("Hamlet (1990)", E), ("Hamlet (1996)", E), ("Hamlet (2000)", E)]

CASES = {
    # trailing articles, both directions; case, spaces and punctuation
    "the godfather": GODFATHERS,
    "godfather": GODFATHERS,
    "  GODFATHER,   the ": GODFATHERS,
    "the-godfather!": GODFATHERS,
    "the matrix": [("Matrix, The (1999)", E)],
    "matrix": [("Matrix, The (1999)", E)],
    "a fish called wanda": [("Fish Called Wanda, A (1988)", E)],
    "a bug's life": [("Bug's Life, A (1998)", E)],
    "quiet place": [("A Quiet Place (2018)", E)],
    "a quiet place": [("A Quiet Place (2018)", E)],
    "the good the bad and the ugly": [("Good, the Bad and the Ugly, The (Buono, il brutto, il cattivo, Il) (1966)", E)],
    # foreign articles: French, Italian (with elision), German, Spanish, Swedish
    "les miserables": [("Misérables, Les (1995)", E)],
    "la haine": [("Haine, La (1995)", E)],
    "haine": [("Haine, La (1995)", E)],
    "la dolce vita": [("Dolce Vita, La (1960)", E)],
    "la strada": [("Strada, La (1954)", E)],
    "il postino": [("Postman, The (Postino, Il) (1994)", E)],
    "the postman": [("Postman, The (Postino, Il) (1994)", E)],
    "l'avventura": [("Avventura, L' (Adventure, The) (1960)", E)],
    "L’Avventura": [("Avventura, L' (Adventure, The) (1960)", E)],
    "avventura": [("Avventura, L' (Adventure, The) (1960)", E)],
    "die blechtrommel": [("Tin Drum, The (Blechtrommel, Die) (1979)", E)],
    "el laberinto del fauno": [("Pan's Labyrinth (Laberinto del fauno, El) (2006)", E)],
    "det sjunde inseglet": [("Seventh Seal, The (Sjunde inseglet, Det) (1957)", E)],
    "il buono il brutto il cattivo": [("Good, the Bad and the Ugly, The (Buono, il brutto, il cattivo, Il) (1966)", E)],
    "les rivieres pourpres": [("Crimson Rivers, The (Rivières pourpres, Les) (2000)", E)],
    # a leading foreign article stays: "Die Hard" is not "Hard", and "Das Boot" is not "Boot"
    "hard": [("Hard Target (1993)", P), ("Die Hard (1988)", W), ("Die Hard 2 (1990)", W)],
    "die hard": [("Die Hard (1988)", E), ("Die Hard 2 (1990)", P)],
    "das boot": [("Das Boot (Boat, The) (1981)", E)],
    "boot": [("Das Boot (Boat, The) (1981)", W)],
    # accents and letters NFKD keeps
    "amelie": [(AMELIE, E)],
    "AMÉLIE": [(AMELIE, E)],
    "aeon flux": [("Æon Flux (2005)", E)],
    "Æon Flux": [("Æon Flux (2005)", E)],
    "man som hatar kvinnor": [("Girl with the Dragon Tattoo, The (Män som hatar kvinnor) (2009)", E)],
    "smultronstallet": [("Wild Strawberries (Smultronstället) (1957)", E)],
    "alien": [("Alien (1979)", E), ("Alien³ (a.k.a. Alien 3) (1992)", P), ("Aliens (1986)", P)],
    "alien 3": [("Alien³ (a.k.a. Alien 3) (1992)", E)],
    # alternative titles, a.k.a.
    "city of lost children": [(LOST_CHILDREN, E)],
    "la cité des enfants perdus": [(LOST_CHILDREN, E)],
    "cite des enfants perdus": [(LOST_CHILDREN, E)],
    "le fabuleux destin d'amelie poulain": [(AMELIE, E)],
    "fabuleux destin": [(AMELIE, P)],
    "the boat": [("Das Boot (Boat, The) (1981)", E)],
    "leon": [(LEON, E)],
    "leon: the professional": [(LEON, E)],
    "the professional": [(LEON, E)],
    "12 monkeys": [("Twelve Monkeys (a.k.a. 12 Monkeys) (1995)", E)],
    "sunset boulevard": [("Sunset Blvd. (a.k.a. Sunset Boulevard) (1950)", E)],
    "the bicycle thief": [(BICYCLE, E)],  # also a prefix of "the bicycle thieves": the best kind counts
    "ladri di biciclette": [(BICYCLE, E)],
    "lola rennt": [("Run Lola Run (Lola rennt) (1998)", E)],
    "jagten": [("Hunt, The (Jagten) (2012)", E)],
    "les enfants du paradis": [("Children of Paradise (Les enfants du paradis) (1945)", E)],
    "ocean's 11": [("Ocean's Eleven (a.k.a. Ocean's 11) (1960)", E)],
    "salo": [("Salò, or The 120 Days of Sodom (Salò o le 120 giornate di Sodoma) (1976)", P)],
    # punctuation: apostrophes, dotted acronyms, ampersands, colons, parentheses
    "schindlers list": [("Schindler's List (1993)", E)],
    "Schindler’s List": [("Schindler's List (1993)", E)],
    "pans labyrinth": [("Pan's Labyrinth (Laberinto del fauno, El) (2006)", E)],
    "la confidential": [("L.A. Confidential (1997)", E)],
    "L.A. Confidential": [("L.A. Confidential (1997)", E)],
    "e.t. the extra terrestrial": [("E.T. the Extra-Terrestrial (1982)", E)],
    "wallace and gromit": [("Wallace & Gromit: The Wrong Trousers (1993)", P)],
    "wallace & gromit": [("Wallace & Gromit: The Wrong Trousers (1993)", P)],
    "dr strangelove": [("Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb (1964)", P)],
    "500 days of summer": [("(500) Days of Summer (2009)", E)],
    # prefix / word / substring tiers; ties by title (article dropped), then year
    "star wars": [
        ("Star Wars: Episode IV - A New Hope (1977)", P),
        ("Star Wars: Episode V - The Empire Strikes Back (1980)", P),
    ],
    "the lord of the rings": [
        ("Lord of the Rings: The Fellowship of the Ring, The (2001)", P),
        ("Lord of the Rings: The Two Towers, The (2002)", P),
    ],
    "empire strikes": [("Star Wars: Episode V - The Empire Strikes Back (1980)", W)],
    "ouchables": [("Intouchables (2011)", S)],
    "hamlet": HAMLETS,
    "oceans eleven": [("Ocean's Eleven (a.k.a. Ocean's 11) (1960)", E), ("Ocean's Eleven (2001)", E)],
    "toy story": [("Toy Story (1995)", E), ("Toy Story 2 (1999)", P)],
    # a year restricts; "(year)" or a bare trailing year; digits that are no year of a match are title text
    "Godfather, The (1972)": [("Godfather, The (1972)", E)],
    "godfather 1974": [("Godfather: Part II, The (1974)", P)],
    "hamlet 1990": [("Hamlet (1990)", E)],
    "hamlet (1996)": [("Hamlet (1996)", E)],
    "oceans eleven 1960": [("Ocean's Eleven (a.k.a. Ocean's 11) (1960)", E)],
    "fawlty towers 1975": [("Fawlty Towers (1975-1979)", E)],
    "big bang theory (2007)": [("Big Bang Theory, The (2007-)", E)],
    "blade runner 2049": [("Blade Runner 2049 (2017)", E)],
    "blade runner": [("Blade Runner (1982)", E), ("Blade Runner 2049 (2017)", P)],
    "babylon 5": [("Babylon 5", E)],
    # typos: fuzzy, only when nothing matches literally
    "godfathr": [
        ("Godfather, The (1972)", F),
        ("Godfather: Part II, The (1974)", F),
        ("Godfather: Part III, The (1990)", F),
    ],
    "amelei": [(AMELIE, F)],
    "shawshenk redemtion": [("Shawshank Redemption, The (1994)", F)],
    "redemption shawshank": [("Shawshank Redemption, The (1994)", F)],
    "lavventura": [("Avventura, L' (Adventure, The) (1960)", F)],
    "hamlte 1990": [("Hamlet (1990)", F)],
    "lord of the rigns": [
        ("Lord of the Rings: The Two Towers, The (2002)", F),  # closer to the whole query than the longer one
        ("Lord of the Rings: The Fellowship of the Ring, The (2001)", F),
    ],
    # nothing: nonsense, a year no Hamlet has, only short unknown words
    "xqzvbnm": [],
    "qwpzk vbnxt": [],
    "hamlet 1991": [],
    "!!! (Léon)": [(LEON, E)],
    "hamlet (0000)": HAMLETS,  # no year: no filter (0 must not select the titles without a year)
    "5 (0000)": [("(500) Days of Summer (2009)", P), ("Babylon 5", W)],
    "the of": [],
}


@pytest.mark.parametrize("query", CASES)
def test_movielens_queries(movielens: TitleIndex, query: str) -> None:
    result = movielens.search(query, 0, 50)
    assert found(result) == CASES[query]
    assert result.total == len(CASES[query])


def test_scores_and_year_reported(movielens: TitleIndex) -> None:
    exact = movielens.search("hamlet 1990")
    assert exact.year == 1990 and exact.scores == (100.0,)
    assert movielens.search("blade runner 2049").year is None  # no 2049 film: the digits were title text
    typo = movielens.search("amelei")
    assert typo.scores == (pytest.approx(fuzz.ratio("amelei", "amelie")),)
    assert typo.scores[0] < 100
    godfathers = movielens.search("godfathr")
    assert godfathers.scores == (pytest.approx(fuzz.ratio("godfathr", "godfather")),) * 3


def test_fuzzy_row_takes_its_best_word(movielens: TitleIndex) -> None:
    # "alienn" is closer to "alien" than to "alien3"/"aliens": Alien³ (words alien3, alien, 3) scores by "alien"
    result = movielens.search("alienn")
    assert found(result) == [("Alien (1979)", F), ("Alien³ (a.k.a. Alien 3) (1992)", F), ("Aliens (1986)", F)]
    best, second = fuzz.ratio("alienn", "alien"), fuzz.ratio("alienn", "aliens")
    assert best > second and result.scores == pytest.approx((best, best, second))


def test_pages_concatenate_to_the_whole_result(movielens: TitleIndex) -> None:
    whole = movielens.search("hamlet", 0, 50)
    first, second = movielens.search("hamlet", 0, 3), movielens.search("hamlet", 3, 3)
    assert first.rows + second.rows == whole.rows and first.total == second.total == whole.total == 4
    assert (first.offset, first.next_offset, second.offset, second.next_offset) == (0, 3, 3, None)
    beyond = movielens.search("hamlet", 10, 3)
    assert beyond.rows == () and beyond.total == 4 and beyond.next_offset is None
    fuzzy = [movielens.search("godfathr", i, 1) for i in range(3)]
    assert tuple(p.rows[0] for p in fuzzy) == movielens.search("godfathr", 0, 3).rows
    assert {p.total for p in fuzzy} == {3}


@pytest.mark.parametrize("query", ["", "   ", "\t\n", "!!!", "()", "“”", ")"])
def test_empty_or_unsearchable_query_is_a_value_error(movielens: TitleIndex, query: str) -> None:
    with pytest.raises(ValueError, match="query expected"):
        movielens.search(query)
    assert movielens.find(query, 5) == []  # the searcher's current call never raises


@pytest.mark.parametrize(("offset", "limit", "message"), [(-1, 5, "offset expected >= 0, got -1"), (0, 0, "limit")])
def test_bad_page_is_a_value_error(movielens: TitleIndex, offset: int, limit: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        movielens.search("hamlet", offset, limit)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=60), st.integers(0, 8), st.integers(1, 8))
@example("!!! (Léon)", 0, 1)
@example("-- (1994)", 0, 1)
def test_any_text_gives_a_consistent_page_or_a_value_error(
    movielens: TitleIndex, query: str, offset: int, limit: int
) -> None:
    try:
        page = movielens.search(query, offset, limit)
    except ValueError:
        assert not normalize(query)  # raised only when nothing in it is searchable
        return
    assert normalize(query)
    whole = movielens.search(query, 0, len(MOVIELENS))
    assert page.rows == whole.rows[offset : offset + limit] and page.total == whole.total == len(whole.rows)
    assert len(set(whole.rows)) == len(whole.rows) and all(0 <= r < len(MOVIELENS) for r in whole.rows)
    assert list(whole.kinds) == sorted(whole.kinds)


def test_find_is_the_first_page_of_search(movielens: TitleIndex) -> None:
    assert movielens.find("the godfather", 2) == list(movielens.search("the godfather", 0, 2).rows)
    assert [MOVIELENS[r] for r in movielens.find("the godfather", 2)] == [t for t, _ in GODFATHERS[:2]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Amélie", "amelie"),
        ("  Crouching   Tiger,\tHidden Dragon!  ", "crouching tiger hidden dragon"),
        ("L’Armée des ombres", "l armee des ombres"),
        ("d'Amélie Poulain", "d amelie poulain"),
        ("Schindler's List", "schindlers list"),
        ("I'm Not There", "im not there"),
        ("Rock 'n' Roll High School", "rock n roll high school"),
        ("L.A. Confidential", "la confidential"),
        ("Dr. Strangelove", "dr strangelove"),
        ("Wallace & Gromit", "wallace and gromit"),
        ("Straße", "strasse"),
        ("Æon Flux", "aeon flux"),
        ("Œdipe roi", "oedipe roi"),
        ("Smørblomst", "smorblomst"),
        ("Alien³", "alien3"),
        ("ﬁn", "fin"),
        ("Летят журавли", "летят журавли"),
        ("千と千尋の神隠し", "千と千尋の神隠し"),
        ("Ζ", "ζ"),
        ("a\nb", "a b"),
        ("é\nb", "e b"),
        ("snake_case", "snake case"),
        ("«Ça»", "ca"),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(
    ("title", "keys", "year", "sort_name"),
    [
        ("Godfather, The (1972)", ("the godfather", "godfather"), 1972, "godfather"),
        (
            LOST_CHILDREN,
            (
                "the city of lost children",
                "city of lost children",
                "la cite des enfants perdus",
                "cite des enfants perdus",
            ),
            1995,
            "city of lost children",
        ),
        (LEON, ("leon the professional", "the professional", "professional", "leon"), 1994, "leon the professional"),
        (
            "Avventura, L' (Adventure, The) (1960)",
            ("l avventura", "avventura", "the adventure", "adventure"),
            1960,
            "avventura",
        ),
        ("Das Boot (Boat, The) (1981)", ("das boot", "the boat", "boat"), 1981, "das boot"),
        ("A Quiet Place (2018)", ("a quiet place", "quiet place"), 2018, "quiet place"),
        ("Fawlty Towers (1975-1979)", ("fawlty towers",), 1975, "fawlty towers"),
        ("Big Bang Theory, The (2007-)", ("the big bang theory", "big bang theory"), 2007, "big bang theory"),
        ("Babylon 5", ("babylon 5",), None, "babylon 5"),
        ("(500) Days of Summer (2009)", ("500 days of summer",), 2009, "500 days of summer"),
        ("(Untitled)", ("untitled",), None, "untitled"),
        ("Hamlet (Gamlet (Part 1)) (1964)", ("hamlet", "gamlet part 1"), 1964, "hamlet"),
        ("Broken (Paren (1999)", ("broken paren",), 1999, "broken paren"),
        ("Me, Myself & I (1992)", ("me myself and i",), 1992, "me myself and i"),
        ("Hi, Mom! (1970)", ("hi mom",), 1970, "hi mom"),
        ("", (), None, ""),
    ],
)
def test_parse_title(title: str, keys: tuple[str, ...], year: int | None, sort_name: str) -> None:
    parsed = parse_title(title)
    assert (parsed.keys, parsed.year, parsed.sort_name) == (keys, year, sort_name)


def test_odd_catalogs() -> None:
    assert TitleIndex([]).search("godfather").total == 0
    assert TitleIndex([]).search("a").total == 0
    odd = TitleIndex(["", "()", "Godfather, The (1972)", "Godfather, The (1972)"])  # blanks and a duplicate
    assert odd.search("godfather").rows == (2, 3)
    assert odd.search("godfathr").rows == (2, 3)
    assert len(odd) == 4


# ---- the fast index against a brute-force oracle on a seeded synthetic catalog --------------------------

NON_LATIN = ["Летят журавли (1957)", "千と千尋の神隠し (2001)", "Ζ (1969)", "Ζωή (1990)"]
ORACLE_TITLES = synthetic_titles(2000, seed=3) + NON_LATIN
QUERY_YEAR = re.compile(r"^(.*\S) (\d{4})$")
SKELETON_MIN_CHARS = 8


def _readings(query: str) -> list[tuple[str, int | None]]:
    """The oracle's readings, for the query shapes generated below (no commas, no parentheses)."""
    m = QUERY_YEAR.match(query)
    if m and YEAR_MIN <= int(m.group(2)) <= YEAR_MAX:
        return [(normalize(m.group(1)), int(m.group(2))), (normalize(query), None)]
    return [(normalize(query), None)]


def _literal_kind(q: str, key: str) -> MatchKind | None:
    if q == key:
        return E
    if key.startswith(q):
        return P
    if f" {q}" in f" {key}":
        return W
    if len(q) >= SUBSTRING_MIN_CHARS and q in key:
        return S
    return None


def _similarity(word: str, other: str) -> float:
    if len(word) < FUZZY_MIN_WORD_CHARS:
        return 100.0 if word == other else 0.0
    score = fuzz.ratio(word, other)
    return score if score >= WORD_CUTOFF else 0.0


def brute_force(parsed: list[ParsedTitle], query: str) -> tuple[list[int], list[MatchKind], list[float]]:
    """Every row against every key and every word, in plain Python: the documented rules, nothing more."""

    def order(row: int) -> tuple[str, int]:
        return parsed[row].sort_name, parsed[row].year or 0

    for q, year in _readings(query):
        hits = []
        for row, p in enumerate(parsed):
            kinds = [k for k in (_literal_kind(q, key) for key in p.keys) if k is not None]
            if kinds and (year is None or p.year == year):
                hits.append((min(kinds), *order(row), row))
        if hits:
            hits.sort()
            return [h[-1] for h in hits], [h[0] for h in hits], [100.0] * len(hits)
    for q, year in _readings(query):
        words = q.split(" ")[:FUZZY_MAX_WORDS]
        if all(len(w) < FUZZY_MIN_WORD_CHARS for w in words):
            continue
        scored = []
        similarity: dict[tuple[str, str], float] = {}  # memo: the same word pairs recur across rows
        for row, p in enumerate(parsed):
            own = {w for key in p.keys for w in key.split(" ")}
            for pair in ((w, o) for w in words for o in own):
                if pair not in similarity:
                    similarity[pair] = _similarity(*pair)
            total = sum(len(w) * max((similarity[w, o] for o in own), default=0.0) for w in words)
            score = total / sum(len(w) for w in words)
            if score >= ROW_CUTOFF and (year is None or p.year == year):
                closeness = max(fuzz.ratio(q, key) for key in p.keys)
                scored.append((-score, -closeness, *order(row), row))
        if scored:
            scored.sort()
            return [s[-1] for s in scored], [F] * len(scored), [-s[0] for s in scored]
    return [], [], []


def _typo(rng: random.Random, word: str) -> str:
    at = rng.randrange(1, len(word) - 1)
    edit = rng.choice(["drop", "swap", "double", "replace"])
    if edit == "drop":
        return word[:at] + word[at + 1 :]
    if edit == "swap":
        return word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    if edit == "double":
        return word[:at] + word[at] + word[at:]
    return word[:at] + rng.choice("aeiouy") + word[at + 1 :]


def oracle_queries(count: int, seed: int) -> list[str]:
    """Seeded queries of every shape: whole keys, prefixes, inner words, substrings, 1-2 letters, years, typos."""
    rng = random.Random(seed)
    parsed = [parse_title(t) for t in ORACLE_TITLES]
    out = ["ζ", "журавли", "千尋", "Ζω"]
    while len(out) < count:
        p = parsed[rng.randrange(len(parsed))]
        if not p.keys:
            continue
        key = rng.choice(p.keys)
        words = key.split(" ")
        shape = rng.randrange(9)
        if shape == 0:
            q = key
        elif shape == 1:
            q = key[: rng.randrange(1, len(key) + 1)]
        elif shape == 2:
            q = " ".join(words[rng.randrange(len(words)) :])[: rng.randrange(1, 12)]
        elif shape == 3:
            at = rng.randrange(len(key))
            q = key[at : at + rng.randrange(3, 9)]
        elif shape == 4:
            q = words[rng.randrange(len(words))][:2]
        elif shape == 5:
            q = f"{key} {p.year or 1999}"
        elif shape == 8:  # a scattered 60% of a long word's letters: a fuzzy match at the longest length kept
            long = [w for w in words if len(w) >= SKELETON_MIN_CHARS]
            if not long:
                continue
            word = rng.choice(long)
            keep = sorted(rng.sample(range(len(word)), math.ceil(len(word) * WORD_CUTOFF / (200 - WORD_CUTOFF))))
            q = "".join(word[i] for i in keep)
        else:
            long = [i for i, w in enumerate(words) if len(w) >= FUZZY_MIN_WORD_CHARS + 1]
            if not long:
                continue
            i = rng.choice(long)
            q = " ".join(words[:i] + [_typo(rng, words[i])] + words[i + 1 :])
            if shape == 7:
                q = f"{q} {p.year or 1999}"
        if q.strip() and normalize(q):
            out.append(q)
    return out


@pytest.fixture(scope="module")
def synthetic() -> TitleIndex:
    return TitleIndex(ORACLE_TITLES)


def test_index_equals_brute_force_oracle(synthetic: TitleIndex) -> None:
    kinds_seen: set[MatchKind] = set()
    parsed = [parse_title(t) for t in ORACLE_TITLES]
    for query in oracle_queries(120, seed=11):
        rows, kinds, scores = brute_force(parsed, query)
        got = synthetic.search(query, 0, len(ORACLE_TITLES))
        assert (list(got.rows), list(got.kinds), got.total) == (rows, kinds, len(rows)), query
        assert list(got.scores) == pytest.approx(scores, abs=1e-9), query
        kinds_seen.update(kinds)
    assert kinds_seen == set(MatchKind)  # the queries reached every tier
