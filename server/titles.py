"""Title search that fits MovieLens: articles, accents, punctuation, years, alternative titles, typos.

MovieLens writes ``Godfather, The (1972)``, ``Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)`` and
``Léon: The Professional (a.k.a. The Professional) (Léon) (1994)``. Each title is parsed once into its
*names* (the main name and every parenthesised alternative, ``a.k.a.`` dropped) and its year; each name
gives one or two normalised *keys*:

- normalisation (:func:`normalize`, the same for titles and queries): Unicode NFKD with combining marks
  dropped (``Amélie`` = ``amelie``), case folding, a few letters NFKD keeps (``œ æ ø ł ß``…) spelled out,
  ``&`` = ``and``, dotted acronyms joined (``L.A.`` = ``la``, ``E.T.`` = ``et``), elided articles split
  (``L'Armée`` = ``l armee``, ``d'Amélie`` = ``d amelie``), other apostrophes dropped (``Schindler's`` =
  ``schindlers``), every other non-alphanumeric run a single space;
- a trailing article (``, The``; ``, Le``/``, La``/``, Les``/``, L'``; ``, Die``/``, Der``/``, Das``;
  ``, El``/``, Los``; ``, Il``/``, Gli``; ``, O``/``, Os``; ``, Det``/``, Den``…, :data:`TRAILING_ARTICLES`)
  is moved to the front, and the name without it is a key too: ``Godfather, The`` gives ``the godfather``
  and ``godfather``;
- a name that already starts with an English article (``A Quiet Place``) also gives the name without it.
  Foreign leading articles are kept (``Die Hard`` must not become ``hard``).

Ranking (:meth:`TitleIndex.search`). The query is parsed and normalised the same way (``Godfather, The
(1972)`` pasted from the catalog works too). A year at its end (``godfather 1972``, ``godfather (1972)``)
restricts the matches to that year; when that finds nothing the query is retried with the digits as title
text (``blade runner 2049``). Each row takes the best :class:`MatchKind` over its keys:

1. ``EXACT``     the query equals a key;
2. ``PREFIX``    a key starts with the query;
3. ``WORD``      the query starts at a word of a key (``boot`` in ``das boot``);
4. ``SUBSTRING`` the query occurs inside a key (queries of at least :data:`SUBSTRING_MIN_CHARS` characters);
5. ``FUZZY``     only when 1-4 found nothing for either reading of the query (so the total does not depend
   on the page): each of the first :data:`FUZZY_MAX_WORDS` query words is compared with the catalog's
   words by ``rapidfuzz`` ratio (at least :data:`WORD_CUTOFF`; words shorter than
   :data:`FUZZY_MIN_WORD_CHARS` must match exactly), a row scores the length-weighted mean over the query
   words of its best word similarity, and rows scoring at least :data:`ROW_CUTOFF` match (``godfathr``,
   ``amelei``, ``redemption shawshank``). Nonsense matches nothing.

Order: kind, then (fuzzy only) score descending and the ratio between the whole query and the row's
closest key descending, then title (the main name without its article, then the year), then row.

Scores: 100 for kinds 1-4, the fuzzy score otherwise.

Memory (about 105 MB of arrays, 140 MB of RSS for 1M synthetic MovieLens-like titles,
``scripts/bench_memory.py``): every key in one ``\\x00``-separated UTF-8 ``bytes`` (searched with
``bytes.find``; queries shorter than :data:`SUBSTRING_MIN_CHARS` are compared at every word start at
once with NumPy), NumPy arrays (int32 while the keys fit in 2 GiB) for key offsets, word starts, rows,
years and sort ranks, and the word vocabulary with its posting lists (CSR); no per-title Python objects.
The vocabulary's words are copied into fresh memory after the build, so they do not pin the heap pages of
the build's millions of temporary strings (without that copy the index held 400 MB of RSS at 1M titles).
Immutable once built: one instance serves every request thread.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from bisect import bisect_left
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from rapidfuzz import fuzz, process

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 20
SUBSTRING_MIN_CHARS = 3  # shorter queries match at word starts only ("a" is inside half the catalog)
FUZZY_MIN_WORD_CHARS = 4  # shorter query words ("of", "the", "ii") must match a catalog word exactly
FUZZY_MAX_WORDS = 8  # the fuzzy pass looks at the query's first words only (bounded cost)
WORD_CUTOFF = 75.0  # rapidfuzz ratio (0-100) for a query word to match a catalog word: "amelei"/"amelie" = 83
ROW_CUTOFF = 75.0  # length-weighted mean word similarity for a row to match
LITERAL_SCORE = 100.0  # the score reported for exact/prefix/word/substring matches
YEAR_MIN, YEAR_MAX = 1870, 2100  # a 4-digit number in this range at the end of a query is a year
SEPARATOR = b"\x00"  # between keys: never survives normalisation, so it cannot occur inside one
SPACE = ord(" ")
NO_YEAR = 0
INT32_MAX = int(np.iinfo(np.int32).max)  # hay offsets and key counts up to this are stored as int32
WORD_JOINER = SEPARATOR.decode()  # never inside a normalised word
SORT_YEAR_SEPARATOR = "\x01"  # sorts before any character of a key, so "hamlet" < "hamlet 2"

ENGLISH_ARTICLES = ("the", "a", "an")
# Articles MovieLens moves to the end of a name (", The"), by language; elided forms end with an apostrophe.
TRAILING_ARTICLES = frozenset(
    {
        *ENGLISH_ARTICLES,
        *("le", "la", "les", "l'", "un", "une"),  # French
        *("der", "die", "das", "ein", "eine"),  # German
        *("el", "los", "las", "una"),  # Spanish
        *("il", "lo", "i", "gli", "uno"),  # Italian
        *("o", "os", "as", "um", "uma"),  # Portuguese
        *("det", "den", "de", "en", "ett", "et"),  # Danish, Norwegian, Swedish
        *("het", "een"),  # Dutch
        *("az",),  # Hungarian ("a" above)
    }
)
_APOSTROPHES = "'’‘`ʼ"
_APOSTROPHE_TO_ASCII = str.maketrans({c: "'" for c in _APOSTROPHES})
_YEAR_GROUP = re.compile(r"\(\s*(\d{4})\s*(?:[-–]\s*(?:\d{4})?\s*)?\)")  # (1994), (1975-1979), (2006– )
_QUERY_YEAR = re.compile(r"^(?P<text>.*\S)\s+(?P<year>\d{4})$")
_AKA = re.compile(r"^\s*a\.?\s?k\.?\s?a\.?\s+", re.IGNORECASE)
# run after folding: text is case-folded and every apostrophe is "'"
_ACRONYM = re.compile(r"\b(?:[^\W\d_]\.){2,}")
_ELISION = re.compile(r"\b(qu|[cdjlmnst])'(?=\w)")  # French/Italian elisions, not English I'm, O'Brien
# Letters NFKD leaves alone, spelled the way people type them (case-folded forms).
_LETTERS = {"æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i", "ħ": "h"}
FOLD_CACHE_MAX = 65_536  # distinct characters remembered by the folding table (queries bring arbitrary ones)
# bytes.translate table: ASCII letters (already lower case), digits, newlines and UTF-8 bytes of other
# alphanumerics stay, any other ASCII character becomes a space
_WORD_BYTES = bytes(c if chr(c).isalnum() or c == ord("\n") or c >= 0x80 else ord(" ") for c in range(256))


def _fold_char(char: str) -> str:
    """A character as people type it: accents dropped (NFKD; it works per character), case folded, a few
    letters spelled out, apostrophe-like marks as ``'``; a non-ASCII symbol or space becomes a space."""
    if char in _APOSTROPHES:
        return "'"
    folded = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c)).casefold()
    return "".join(_LETTERS.get(c, c) if c.isascii() or c.isalnum() else " " for c in folded)


class _FoldTable(dict[int, str]):
    """``str.translate`` table that folds each character on first sight (values never change: thread-safe)."""

    def __missing__(self, code: int) -> str:
        folded = _fold_char(chr(code))
        if len(self) < FOLD_CACHE_MAX:
            self[code] = folded
        return folded


_FOLD = _FoldTable()


class MatchKind(IntEnum):
    """How a row matched, best first."""

    EXACT = 0
    PREFIX = 1
    WORD = 2
    SUBSTRING = 3
    FUZZY = 4


@dataclass(frozen=True)
class ParsedTitle:
    """A catalog title broken into searchable keys (normalised, deduplicated), its year and its sort name."""

    keys: tuple[str, ...]
    year: int | None
    sort_name: str


@dataclass(frozen=True)
class TitleMatches:
    """One page of matches: ``rows[i]`` matched as ``kinds[i]`` with ``scores[i]`` (0-100).

    ``total`` counts every match of the query (all pages); ``year`` is the year the matches were
    restricted to (None: no year filter was applied).
    """

    rows: tuple[int, ...]
    kinds: tuple[MatchKind, ...]
    scores: tuple[float, ...]
    total: int
    offset: int
    year: int | None

    @property
    def next_offset(self) -> int | None:
        """Where the next page starts, or None when this page is the last."""
        end = self.offset + len(self.rows)
        return end if end < self.total else None


@dataclass(frozen=True)
class _Interpretation:
    text: str  # normalised
    year: int | None


@dataclass(frozen=True)
class _Ranked:
    rows: np.ndarray  # int64, in rank order
    kinds: np.ndarray  # int8
    scores: np.ndarray  # float64


def _normalize_many(texts: Sequence[str]) -> list[str]:
    """:func:`normalize` of each text; the common steps run once over all texts joined by newlines."""
    if not texts:
        return []
    joined = "\n".join(t if t.isascii() else t.translate(_FOLD) for t in texts)
    if joined.count("\n") != len(texts) - 1:  # a text with its own newline: make it a space first
        joined = "\n".join((t if t.isascii() else t.translate(_FOLD)).replace("\n", " ") for t in texts)
    joined = joined.casefold().replace("&", " and ").replace("`", "'")
    if "." in joined or "'" in joined:
        lines = joined.split("\n")
        for i, line in enumerate(lines):
            if "." in line:
                line = _ACRONYM.sub(lambda m: m.group(0).replace(".", ""), line)
            if "'" in line:
                line = _ELISION.sub(r"\1 ", line).replace("'", "")
            lines[i] = line
        joined = "\n".join(lines)
    joined = joined.encode().translate(_WORD_BYTES).decode()
    return [" ".join(line.split()) for line in joined.split("\n")]


def normalize(text: str) -> str:
    """Case-, accent- and punctuation-insensitive form of a title or query (see the module docstring)."""
    return _normalize_many([text])[0]


_ARTICLE_KEYS = {a: normalize(a) for a in TRAILING_ARTICLES}  # "l'" -> "l"


def _split_names(title: str) -> tuple[list[str], int | None]:
    """``Main (Alt 1) (a.k.a. Alt 2) (1994)`` -> (["Main", "Alt 1", "Alt 2"], 1994)."""
    title = title.strip()
    if not title.endswith(")"):
        return [title], None
    year = None
    digits = title[-5:-1]
    if title[-6:-5] == "(" and digits.isascii() and digits.isdigit():  # the usual " (1994)", without a regex
        year, title = int(digits), title[:-6].rstrip()
    else:
        open_at = title.rfind("(")
        m = _YEAR_GROUP.fullmatch(title, open_at) if open_at >= 0 else None
        if m:
            year, title = int(m.group(1)), title[:open_at].rstrip()
    aliases: list[str] = []
    while title.endswith(")"):
        open_at = title.rfind("(")
        if ")" in title[open_at + 1 : -1]:  # nested parentheses: find the group's own opening one
            depth = 0
            for open_at in range(len(title) - 1, -1, -1):
                depth += {")": 1, "(": -1}.get(title[open_at], 0)
                if depth == 0:
                    break
            else:
                open_at = -1
        if open_at <= 0:  # unbalanced, or the whole name is in parentheses: keep it as the name
            break
        aliases.append(_AKA.sub("", title[open_at + 1 : -1]))
        title = title[:open_at].rstrip()
    return [title, *reversed(aliases)], year


def _split_article(name: str) -> tuple[str, str]:
    """(normalised trailing article or "", the name without it): ``Godfather, The`` -> ("the", "Godfather")."""
    comma = name.rfind(",")
    if comma > 0:
        article = _ARTICLE_KEYS.get(name[comma + 1 :].strip().casefold().translate(_APOSTROPHE_TO_ASCII))
        rest = name[:comma].strip()
        if article and rest:
            return article, rest
    return "", name


def _name_keys(article: str, rest: str) -> tuple[str, str]:
    """(key with the article in front, key without an article) from a normalised name; equal when none."""
    if article:
        return (f"{article} {rest}" if rest else article), rest
    first, _, bare = rest.partition(" ")
    return rest, bare if bare and first in ENGLISH_ARTICLES else rest


def _parse_many(titles: Collection[str]) -> tuple[list[tuple[str, ...]], list[int | None], list[str]]:
    """Keys, year and sort name of each title (see :func:`parse_title`), normalising all names in one pass."""
    years: list[int | None] = []
    counts: list[int] = []
    articles: list[str] = []
    rests: list[str] = []
    for title in titles:
        names, year = _split_names(title)
        years.append(year)
        counts.append(len(names))
        for name in names:
            article, rest = _split_article(name)
            articles.append(article)
            rests.append(rest)
    normalised = _normalize_many(rests)
    keys: list[tuple[str, ...]] = []
    sort_names: list[str] = []
    at = 0
    for count in counts:
        own: list[str] = []
        for i in range(at, at + count):
            for key in _name_keys(articles[i], normalised[i]):
                if key and key not in own:
                    own.append(key)
        sort_names.append(_name_keys(articles[at], normalised[at])[1])
        keys.append(tuple(own))
        at += count
    return keys, years, sort_names


def parse_title(title: str) -> ParsedTitle:
    """Keys, year and sort name of one catalog title (``Godfather, The (1972)`` -> the godfather, godfather)."""
    keys, years, sort_names = _parse_many([title])
    return ParsedTitle(keys[0], years[0], sort_names[0])


def _postings(keys: list[str], key_rows: np.ndarray, n: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The words of all keys sorted by (length, word), and for each word the sorted rows holding it (CSR)."""
    tokens = " ".join(keys).split(" ") if keys else []
    ids: dict[str, int] = {}
    token_ids = np.fromiter((ids.setdefault(w, len(ids)) for w in tokens), dtype=np.int64, count=len(tokens))
    vocab = sorted(ids, key=lambda w: (len(w), w))
    position = np.empty(len(vocab), dtype=np.int64)
    position[np.fromiter((ids[w] for w in vocab), dtype=np.int64, count=len(vocab))] = np.arange(len(vocab))
    words_per_key = np.fromiter((k.count(" ") + 1 for k in keys), dtype=np.int64, count=len(keys))
    pairs = np.sort(position[token_ids] * n + np.repeat(key_rows.astype(np.int64), words_per_key))
    pairs = pairs[np.concatenate([pairs[:1] == pairs[:1], pairs[1:] != pairs[:-1]])]  # np.unique, without hashing
    ptr = np.searchsorted(pairs // max(n, 1), np.arange(len(vocab) + 1)).astype(np.int64)
    return vocab, ptr, (pairs % max(n, 1)).astype(np.int32)


def _compact(words: list[str]) -> list[str]:
    """The same words as new string objects allocated together (``words`` is emptied on the way)."""
    if not words:
        return []
    joined = WORD_JOINER.join(words)
    words.clear()  # the old objects go before the new ones are made
    return joined.split(WORD_JOINER)


def _interpretations(query: str) -> list[_Interpretation]:
    """Readings of a query, tried in order: its trailing year as a filter, then the year as title text.

    Parsed like a catalog title, so a pasted ``Godfather, The (1972)`` reads as ``the godfather`` in 1972;
    parenthesised alternative titles in the query are ignored.
    """
    names, year = _split_names(query)
    main = names[0]
    if year is None:
        m = _QUERY_YEAR.match(main)
        if m and YEAR_MIN <= int(m.group("year")) <= YEAR_MAX:
            year, main = int(m.group("year")), m.group("text")
    elif not YEAR_MIN <= year <= YEAR_MAX:  # "(0000)": no film's year, and 0 would mean "no year"
        year = None
    article, rest = _split_article(main)
    # only alternative titles typed ("(Léon)" is a name too; "!!! (Léon)" has nothing else)
    text = _name_keys(article, normalize(rest))[0] or normalize(" ".join(names[1:]))
    if year is None:
        return [_Interpretation(text, None)] if text else []
    if not text:  # the query is only a year: search it as text ("1984")
        return [_Interpretation(str(year), None)]
    return [_Interpretation(text, year), _Interpretation(f"{text} {year}", None)]


def _empty(offset: int) -> TitleMatches:
    return TitleMatches((), (), (), 0, offset, None)


class TitleIndex:
    """Search structure over a bundle's titles (row ``i`` = ``titles[i]``), built once per bundle."""

    def __init__(self, titles: Collection[str]) -> None:
        vocabulary = self._build(titles)
        # the build's millions of temporary strings are gone now: copy the vocabulary into fresh memory,
        # so its words do not pin the heap pages those temporaries were scattered over
        self._vocab = _compact(vocabulary)

    def _build(self, titles: Collection[str]) -> list[str]:
        """Every structure but the vocabulary (sorted by length, then word), which it returns."""
        n = len(titles)
        title_keys, title_years, sort_names = _parse_many(titles)
        keys = [k for own in title_keys for k in own]
        key_rows = np.repeat(np.arange(n, dtype=np.int32), [len(own) for own in title_keys])
        years = np.fromiter((y or NO_YEAR for y in title_years), dtype=np.int32, count=n)
        self._n = n
        encoded = [k.encode() for k in keys]
        # every key in UTF-8 between separators: a UTF-8 query only matches at character boundaries
        self._hay = SEPARATOR + SEPARATOR.join(encoded) + SEPARATOR
        self._bytes = np.frombuffer(self._hay, dtype=np.uint8)
        offset = np.int32 if len(self._hay) <= INT32_MAX else np.int64
        lengths = np.fromiter((len(k) for k in encoded), dtype=np.int64, count=len(encoded))
        # hay offset of each key's first byte, and where a next key would start (key k ends at start[k + 1] - 1)
        self._key_start = np.append(np.cumsum(lengths + 1) - lengths, len(self._hay)).astype(offset)
        before = self._bytes[:-1]
        self._word_starts = (np.flatnonzero((before == SEPARATOR[0]) | (before == SPACE)) + 1).astype(offset)
        self._key_row = np.asarray(key_rows, dtype=np.int32)
        counts = np.int32 if len(keys) <= INT32_MAX else np.int64
        self._row_keys = np.searchsorted(self._key_row, np.arange(n + 1)).astype(counts)  # CSR: row -> keys
        self._years = years
        # ties go to the main name without its article, then the year, then the row (a stable sort)
        sort_keys = [f"{name}{SORT_YEAR_SEPARATOR}{year:04d}" for name, year in zip(sort_names, years.tolist())]
        self._rank = np.empty(n, dtype=np.int32)
        self._rank[np.asarray(sorted(range(n), key=sort_keys.__getitem__), dtype=np.int64)] = np.arange(n)
        vocabulary, self._post_ptr, self._post_rows = _postings(keys, self._key_row, n)
        word_lengths = np.fromiter((len(w) for w in vocabulary), dtype=np.int64, count=len(vocabulary))
        # vocabulary index of the first word of each length 0..longest+1 (the last one: len(vocabulary))
        self._vocab_len_start = np.searchsorted(word_lengths, np.arange(int(word_lengths.max(initial=0)) + 2))
        log.debug("title index: %d titles, %d keys, %d words", n, len(keys), len(vocabulary))
        return vocabulary

    def __len__(self) -> int:
        return self._n

    def search(self, query: str, offset: int = 0, limit: int = DEFAULT_LIMIT) -> TitleMatches:
        """Rows matching ``query``, best first (module docstring), from ``offset``, at most ``limit`` of them.

        Raises ValueError for an empty or whitespace-only query, one without a letter or digit, a negative
        offset or a limit below 1.
        """
        if not query.strip():
            raise ValueError(f"query expected a non-empty title, got {query!r}")
        if offset < 0:
            raise ValueError(f"offset expected >= 0, got {offset}")
        if limit < 1:
            raise ValueError(f"limit expected >= 1, got {limit}")
        readings = _interpretations(query)
        if not readings:
            raise ValueError(f"query expected at least one letter or digit, got {query!r}")
        for match in (self._literal, self._fuzzy):
            for reading in readings:
                ranked = match(reading)
                if len(ranked.rows):
                    page = slice(offset, offset + limit)
                    return TitleMatches(
                        tuple(int(r) for r in ranked.rows[page]),
                        tuple(MatchKind(int(k)) for k in ranked.kinds[page]),
                        tuple(float(s) for s in ranked.scores[page]),
                        len(ranked.rows),
                        offset,
                        reading.year,
                    )
        return _empty(offset)

    def find(self, text: str, limit: int) -> list[int]:
        """The first ``limit`` rows of :meth:`search` (no match, or nothing searchable in ``text``: [])."""
        try:
            return list(self.search(text, 0, limit).rows)
        except ValueError:
            return []

    def _year_mask(self, rows: np.ndarray, year: int | None) -> np.ndarray:
        return np.ones(len(rows), dtype=bool) if year is None else self._years[rows] == year

    def _positions(self, query: bytes, anywhere: bool) -> np.ndarray:
        """Hay offsets where ``query`` occurs: anywhere, or only at the start of a word."""
        if anywhere:
            found: list[int] = []
            at = self._hay.find(query)
            while at >= 0:
                found.append(at)
                at = self._hay.find(query, at + 1)
            return np.asarray(found, dtype=np.int64)
        # a few bytes: compare them at every word start at once; a query has no zero byte, so the reads
        # stop at the separator that ends every key
        starts = self._word_starts
        for i, byte in enumerate(query):
            starts = starts[self._bytes[starts + i] == byte]
        return starts

    def _literal(self, reading: _Interpretation) -> _Ranked:
        query = reading.text.encode()
        pos = self._positions(query, anywhere=len(reading.text) >= SUBSTRING_MIN_CHARS)
        if not len(pos):
            return _Ranked(np.empty(0, np.int64), np.empty(0, np.int8), np.empty(0))
        key = np.searchsorted(self._key_start, pos, side="right") - 1
        at_start = pos == self._key_start[key]
        kinds = np.select(
            [at_start & (pos + len(query) == self._key_start[key + 1] - 1), at_start, self._bytes[pos - 1] == SPACE],
            [MatchKind.EXACT, MatchKind.PREFIX, MatchKind.WORD],
            MatchKind.SUBSTRING,
        ).astype(np.int8)
        best = np.full(self._n, len(MatchKind), dtype=np.int8)  # per row, the best kind over its keys
        np.minimum.at(best, self._key_row[key], kinds)
        rows = np.flatnonzero(best < len(MatchKind))
        rows = rows[self._year_mask(rows, reading.year)]
        kinds = best[rows]
        order = np.lexsort((self._rank[rows], kinds))
        return _Ranked(rows[order], kinds[order], np.full(len(rows), LITERAL_SCORE))

    def _length_range(self, shortest: int, longest: int) -> tuple[int, int]:
        """The slice of the (length, word)-sorted vocabulary holding words of ``shortest..longest`` characters."""
        top = len(self._vocab_len_start) - 1  # its last entry is len(vocabulary): no word is longer
        return int(self._vocab_len_start[min(shortest, top)]), int(self._vocab_len_start[min(longest + 1, top)])

    def _exact_word(self, word: str) -> int | None:
        lo, hi = self._length_range(len(word), len(word))
        i = bisect_left(self._vocab, word, lo, hi)
        return i if i < hi and self._vocab[i] == word else None

    def _word_matches(self, words: list[str]) -> list[list[tuple[int, float]]]:
        """For each query word, (vocabulary index, similarity) of the catalog words it matches."""
        out: list[list[tuple[int, float]]] = []
        for word in words:
            i = self._exact_word(word) if len(word) < FUZZY_MIN_WORD_CHARS else None
            out.append([] if i is None else [(i, LITERAL_SCORE)])
        fuzzy = [j for j, w in enumerate(words) if len(w) >= FUZZY_MIN_WORD_CHARS]
        if not fuzzy:
            return out
        # ratio = 2*common/(la+lb) >= c/100 needs lb within [la*c/(200-c), la*(200-c)/c]: only those lengths
        sizes = [len(words[j]) for j in fuzzy]
        lo, hi = self._length_range(
            math.ceil(min(sizes) * WORD_CUTOFF / (200 - WORD_CUTOFF)),
            int(max(sizes) * (200 - WORD_CUTOFF) / WORD_CUTOFF),
        )
        # one call for all the words: rapidfuzz compares them in parallel (SIMD) over the vocabulary slice
        similarity = process.cdist(
            [words[j] for j in fuzzy],
            self._vocab[lo:hi],
            scorer=fuzz.ratio,
            processor=None,
            score_cutoff=WORD_CUTOFF,
            dtype=np.float64,
        )
        for pos, i in zip(*np.nonzero(similarity)):
            out[fuzzy[pos]].append((lo + int(i), float(similarity[pos, i])))
        return out

    def _fuzzy(self, reading: _Interpretation) -> _Ranked:
        words = reading.text.split(" ")[:FUZZY_MAX_WORDS]
        if not self._n or all(len(w) < FUZZY_MIN_WORD_CHARS for w in words):
            return _Ranked(np.empty(0, np.int64), np.empty(0, np.int8), np.empty(0))
        total = np.zeros(self._n)
        for word, matches in zip(words, self._word_matches(words)):
            best = np.zeros(self._n)
            for i, score in matches:
                rows = self._post_rows[self._post_ptr[i] : self._post_ptr[i + 1]]
                best[rows] = np.maximum(best[rows], score)
            total += len(word) * best
        scores = total / sum(len(w) for w in words)
        rows = np.flatnonzero(scores >= ROW_CUTOFF)
        rows = rows[self._year_mask(rows, reading.year)]
        closeness = np.array(
            [
                max(fuzz.ratio(reading.text, self._key(k)) for k in range(self._row_keys[r], self._row_keys[r + 1]))
                for r in rows
            ]
        )
        order = np.lexsort((self._rank[rows], -closeness, -scores[rows]))
        rows = rows[order]
        return _Ranked(rows, np.full(len(rows), MatchKind.FUZZY, dtype=np.int8), scores[rows])

    def _key(self, k: int) -> str:
        return self._hay[self._key_start[k] : self._key_start[k + 1] - 1].decode()
