"""A seeded synthetic catalog of MovieLens-style titles, for title-search tests and ``scripts/bench_titles.py``.

Words are made of syllables (so they are not real titles, and typos of them are not other words by
accident); the shapes are MovieLens's: trailing English and foreign articles (``Name, The (1994)``),
parenthesised alternative titles with their own articles, ``a.k.a.`` alternatives, accented letters,
apostrophes, colons, dotted acronyms, sequels, titles without a year and year ranges.
"""

from __future__ import annotations

import random

SYLLABLES = [
    "ka",
    "ro",
    "mi",
    "be",
    "an",
    "dor",
    "ish",
    "um",
    "pa",
    "ter",
    "lo",
    "vin",
    "sa",
    "qu",
    "est",
    "ar",
    "on",
    "ly",
    "ne",
    "tal",
    "gor",
    "fen",
    "hu",
    "rac",
    "sil",
    "vor",
    "em",
    "bra",
    "kel",
    "dun",
    "mar",
    "pel",
    "tos",
    "wick",
    "zan",
]
ACCENTED = ("é", "è", "ü", "ö", "ñ", "ç", "å", "ø", "ã", "í")
FUNCTION_WORDS = ("of", "the", "and", "in", "to", "a", "for", "with")
ENGLISH_TRAILING = ("The", "A", "An")
FOREIGN_TRAILING = ("Le", "La", "Les", "L'", "Die", "Der", "Das", "El", "Los", "Il", "Gli", "O", "Os", "Det", "Den")
NUMERALS = ("II", "III", "IV", "2", "3")
VOCABULARY_SIZE = 6000
YEARS = (1910, 2024)
# shares of titles with each quirk
P_TRAILING_ENGLISH = 0.22
P_TRAILING_FOREIGN = 0.05
P_ALIAS = 0.12
P_AKA = 0.03
P_ACCENT = 0.08
P_SEQUEL = 0.06
P_COLON = 0.08
P_APOSTROPHE = 0.05
P_ACRONYM = 0.01
P_NO_YEAR = 0.01
P_YEAR_RANGE = 0.005


def vocabulary(size: int = VOCABULARY_SIZE, seed: int = 0) -> list[str]:
    """``size`` distinct pseudo-words of 1-4 syllables (capitalised), seeded."""
    rng = random.Random(seed)
    words: dict[str, None] = {}
    while len(words) < size:
        words["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))).capitalize()] = None
    return list(words)


def _name(rng: random.Random, words: list[str]) -> str:
    parts: list[str] = []
    for i in range(rng.randint(1, 4)):
        if i and rng.random() < 0.3:
            parts.append(rng.choice(FUNCTION_WORDS))
        word = rng.choice(words)
        if rng.random() < P_ACCENT:
            at = rng.randrange(1, len(word))
            word = word[:at] + rng.choice(ACCENTED) + word[at + 1 :]
        if rng.random() < P_APOSTROPHE:
            word += "'s"
        parts.append(word)
    name = " ".join(parts)
    if rng.random() < P_COLON:
        name += ": " + rng.choice(words)
    if rng.random() < P_ACRONYM:
        name = ".".join(name[:3].upper()) + ". " + name
    return name


def _with_article(rng: random.Random, name: str, foreign: bool = False) -> str:
    if foreign or rng.random() < P_TRAILING_FOREIGN:
        return f"{name}, {rng.choice(FOREIGN_TRAILING)}"
    if rng.random() < P_TRAILING_ENGLISH:
        return f"{name}, {rng.choice(ENGLISH_TRAILING)}"
    return name


def synthetic_titles(count: int, seed: int = 0) -> list[str]:
    """``count`` MovieLens-style titles, seeded (duplicates possible, as remakes are in MovieLens)."""
    rng = random.Random(seed)
    words = vocabulary(seed=seed)
    titles: list[str] = []
    for _ in range(count):
        name = _name(rng, words)
        if rng.random() < P_SEQUEL:
            name += " " + rng.choice(NUMERALS)
        title = _with_article(rng, name)
        if rng.random() < P_ALIAS:
            title += f" ({_with_article(rng, _name(rng, words), foreign=rng.random() < 0.5)})"
        if rng.random() < P_AKA:
            title += f" (a.k.a. {_name(rng, words)})"
        year = rng.randint(*YEARS)
        if rng.random() < P_YEAR_RANGE:
            title += f" ({year}-{year + rng.randint(1, 5)})"
        elif rng.random() >= P_NO_YEAR:
            title += f" ({year})"
        titles.append(title)
    return titles
