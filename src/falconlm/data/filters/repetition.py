"""Repetition removal: the Gopher / MassiveText rules (Rae et al. Table A1), with datatrove's
counting semantics (docs/refinedweb.md) so that decisions agree with `GopherRepetitionFilter`.

All character fractions divide by len(text). Paragraphs = text.strip() split on blank lines;
lines = text split on runs of newlines. "Duplicate" = every occurrence after the first.
Top n-gram: most frequent word n-gram (first-seen wins ties), len(" ".join(ngram)) * count.
Duplicate n-grams (n = 5..10): slide over the words; on an n-gram seen before, add its length
(words joined without separator) and jump n words ahead.

Speed: n-grams are hashed as 64-bit integers over word ids with numpy; when no word 5-gram repeats
(most documents) no larger n-gram can repeat either and the sequential pass is skipped.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from falconlm.data.document import Document
from falconlm.data.filters.words import words_of
from falconlm.data.step import PipelineStep

_PARAGRAPH = re.compile(r"\n{2,}")
_LINE = re.compile(r"\n+")
_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class RepetitionConfig:
    """Gopher Table A1 thresholds: remove a document if a quantity exceeds its threshold."""

    dup_para_frac: float = 0.30  # repeated paragraphs / paragraphs
    dup_para_char_frac: float = 0.20  # characters in repeated paragraphs / characters
    dup_line_frac: float = 0.30  # repeated lines / lines
    dup_line_char_frac: float = 0.20  # characters in repeated lines / characters
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))  # (n, limit): characters of the most frequent word n-gram / characters
    dup_n_grams: tuple[tuple[int, float], ...] = (  # (n, limit): characters inside repeated word n-grams / characters
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10),
    )


def duplicates(elements: list[str]) -> tuple[int, int]:
    """(number of repeated elements, their total characters), first occurrences excluded."""
    seen: set[str] = set()
    n = chars = 0
    for e in elements:
        if e in seen:
            n += 1
            chars += len(e)
        else:
            seen.add(e)
    return n, chars


def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """One 64-bit hash per word n-gram starting at each position (wrapping arithmetic)."""
    m = len(ids) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = (h ^ ids[k : k + m]) * _MIX + np.uint64(k + 1)
    return h


def _hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """n-gram hashes, extended from the (n-1)-gram ones of the same array when cached (the hash
    is defined word by word, so h_n[i] = step(h_{n-1}[i], ids[i+n-1]))."""
    cache = _HASH_CACHE
    if cache.get("ids") is not ids:
        cache.clear()
        cache["ids"] = ids
    if n in cache:
        return cache[n]
    prev = cache.get(n - 1)
    if prev is None:
        h = _ngram_hashes(ids, n)
    else:
        m = len(ids) - n + 1
        with np.errstate(over="ignore"):
            h = (prev[:m] ^ ids[n - 1 : n - 1 + m]) * _MIX + np.uint64(n)
    cache[n] = h
    return h


_HASH_CACHE: dict = {}


def top_ngram_chars(ids: np.ndarray, lengths: np.ndarray, n: int, h: np.ndarray | None = None) -> int:
    """len(" ".join(most common n-gram)) * its count; ties go to the n-gram seen first."""
    if len(ids) < n:
        return 0
    if h is None:
        h = _ngram_hashes(ids, n)
    uniq, counts = np.unique(h, return_counts=True)  # a plain sort: cheaper than return_index
    best = counts.max()
    tied = uniq[counts == best]
    # first position whose n-gram is one of the most frequent = Counter.most_common's tie-break
    start = int(np.argmax(h == tied[0])) if len(tied) == 1 else int(np.flatnonzero(np.isin(h, tied))[0])
    return (int(lengths[start : start + n].sum()) + n - 1) * int(best)


def duplicate_ngram_chars(ids: np.ndarray, lengths: np.ndarray, n: int, h: np.ndarray | None = None) -> int:
    """Characters inside repeated n-grams, datatrove's greedy jump-by-n count.

    Only positions whose n-gram occurs at least twice can change the count (the others just
    advance the cursor by one and add a never-repeated n-gram to the seen set), so the sequential
    loop runs over those positions alone."""
    m = len(ids) - n + 1
    if m <= 1:
        return 0
    if h is None:
        h = _ngram_hashes(ids, n)
    uniq, counts = np.unique(h, return_counts=True)
    repeated = uniq[counts >= 2]
    if len(repeated) == 0:
        return 0
    relevant = np.flatnonzero(np.isin(h, repeated))
    cum = np.concatenate(([0], np.cumsum(lengths)))
    span = (cum[relevant + n] - cum[relevant]).tolist()
    keys = h[relevant].tolist()
    seen: set[int] = set()
    chars = 0
    skip_until = 0
    for p, key, width in zip(relevant.tolist(), keys, span):
        if p < skip_until:
            continue  # jumped over: never visited, never added to the seen set
        if key in seen:
            chars += width
            skip_until = p + n
        else:
            seen.add(key)
    return chars


def repetition_reason(text: str, words: list[str], config: RepetitionConfig) -> str | None:
    """The first Gopher repetition rule the text breaks (datatrove's order and names), or None."""
    c = config
    if not text:
        return "empty"
    L = len(text)
    paragraphs = _PARAGRAPH.split(text.strip())
    n_dup, chars = duplicates(paragraphs)
    if c.dup_para_frac and n_dup / len(paragraphs) > c.dup_para_frac:
        return "dup_para_frac"
    if c.dup_para_char_frac and chars / L > c.dup_para_char_frac:
        return "dup_para_char_frac"
    lines = _LINE.split(text)
    n_dup, chars = duplicates(lines)
    if c.dup_line_frac and n_dup / len(lines) > c.dup_line_frac:
        return "dup_line_frac"
    if c.dup_line_char_frac and chars / L > c.dup_line_char_frac:
        return "dup_line_char_frac"

    if not words:
        return None
    # word ids: equal iff the words are equal (map + setdefault runs in C)
    vocab: dict[str, int] = {}
    ids = np.array(list(map(vocab.setdefault, words, range(1, len(words) + 1))), dtype=np.uint64)
    lengths = np.array(list(map(len, words)), dtype=np.int64)
    for n, frac in c.top_n_grams:
        if len(words) >= n and top_ngram_chars(ids, lengths, n, _hashes(ids, n)) / L > frac:
            return f"top_{n}_gram"
    if not c.dup_n_grams:
        return None
    # If no n-gram of the smallest size repeats, no longer one can: every rule passes.
    n_min = min(n for n, _ in c.dup_n_grams)
    h_min = None
    if len(words) - n_min + 1 > 1:
        h_min = _hashes(ids, n_min)
        if len(np.unique(h_min)) == len(h_min):
            return None
    for n, frac in c.dup_n_grams:
        h = _hashes(ids, n) if len(words) - n + 1 > 1 else None
        if duplicate_ngram_chars(ids, lengths, n, h) / L > frac:
            return f"duplicated_{n}_n_grams"
    return None


class RepetitionFilter(PipelineStep):
    """Drop documents that repeat lines, paragraphs or n-grams too much (Gopher Table A1)."""

    name = "repetition"

    def __init__(self, config: RepetitionConfig | None = None) -> None:
        self.config = config or RepetitionConfig()

    def process(self, doc: Document) -> Document | str:
        """Keep or return the first broken rule."""
        reason = repetition_reason(doc.text, words_of(doc.text), self.config)
        return doc if reason is None else reason


# Kept for readers comparing with datatrove: the plain-Python reference of the top n-gram rule.
def top_ngram_chars_reference(words: list[str], n: int) -> int:
    """Counter-based reference implementation (used in tests)."""
    grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0
    g, cnt = Counter(grams).most_common(1)[0]
    return len(g) * cnt
