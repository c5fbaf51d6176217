"""RefinedWeb text normalisation for dedup: lowercase, punctuation removed, NFD with accents
stripped, whitespace collapsed — plus a reversible word tokenisation that maps every
normalised token back to its character span in the original text."""

from __future__ import annotations

import re
import sys
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_RUN_RE = re.compile(r"\S+")


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[int, str | None], dict[int, str]]:
    """Translation tables built once per process from this Python's Unicode database.

    Built from unicodedata rather than hard-coded so they always agree with the NFD tables
    that `unicodedata.normalize` uses (one scan of the code space, ~0.2 s). `str.translate`
    is used instead of regex character classes: it is 5-100x faster on web text."""
    strip: dict[int, str | None] = {}
    separators: dict[int, str] = {}
    for cp in range(sys.maxunicode + 1):
        cat = unicodedata.category(chr(cp))
        if cat == "Mn":
            strip[cp] = None  # combining marks (accents after NFD) are removed
        elif cat[0] in "PS" or cat == "Cc":
            # Punctuation, symbols and control characters all become word separators.
            strip[cp] = " "
            separators[cp] = " "
    return strip, separators


def normalize_text(text: str) -> str:
    """RefinedWeb normalisation: lowercase, NFD, accents stripped, punctuation removed, whitespace collapsed."""
    strip, _ = _tables()
    # Lowercase first: some capitals (e.g. U+0130) lower to a letter plus a combining mark.
    text = text.lower()
    if not text.isascii():
        text = unicodedata.normalize("NFD", text)
    return " ".join(text.translate(strip).split())


def normalized_words(text: str) -> list[str]:
    """The normalised text split into words (the units of word shingles)."""
    return normalize_text(text).split()


@dataclass
class ReversibleTokens:
    """Normalised tokens with the [start, end) character span of each in the original text."""

    tokens: list[str]
    starts: np.ndarray  # int64, original character offsets
    ends: np.ndarray


def reversible_words(text: str) -> ReversibleTokens:
    """Tokenise `text` into normalised words, remembering where each came from.

    Normalisation is folded into tokenisation (as RefinedWeb did for exact-substring dedup):
    a raw word is a maximal run of characters that survive normalisation, and its normalised
    form is `normalize_text(run)`. The token sequence equals `normalized_words(text)`."""
    _, separators = _tables()
    tokens: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    # Separators map 1:1 to a space, so spans in the translated text are spans in the original.
    for m in _RUN_RE.finditer(text.translate(separators)):
        run = m.group()
        norm = normalize_text(run) if not (run.isascii() and run.isalnum()) else run.lower()
        if not norm:
            continue  # a run of lone combining marks: dropped by normalisation
        s, e = m.span()
        for tok in norm.split():
            tokens.append(tok)
            starts.append(s)
            ends.append(e)
    return ReversibleTokens(tokens, np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64))
