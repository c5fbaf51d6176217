"""Repetition removal: the Gopher / MassiveText rules (Rae et al. Table A1), with datatrove's
counting semantics (falcon-facts A.4) so that decisions agree with `GopherRepetitionFilter`.

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

    dup_para_frac: float = 0.30
    dup_para_char_frac: float = 0.20
    dup_line_frac: float = 0.30
    dup_line_char_frac: float = 0.20
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    dup_n_grams: tuple[tuple[int, float], ...] = (
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


def top_ngram_chars(ids: np.ndarray, lengths: np.ndarray, n: int) -> int:
    """len(" ".join(most common n-gram)) * its count; ties go to the n-gram seen first."""
    if len(ids) < n:
        return 0
    h = _ngram_hashes(ids, n)
    _, first, counts = np.unique(h, return_index=True, return_counts=True)
    best = counts.max()
    start = int(first[counts == best].min())
    return (int(lengths[start : start + n].sum()) + n - 1) * int(best)


def duplicate_ngram_chars(ids: np.ndarray, lengths: np.ndarray, n: int, h: np.ndarray | None = None) -> int:
    """Characters inside repeated n-grams, datatrove's greedy jump-by-n count."""
    m = len(ids) - n + 1
    if m <= 1:
        return 0
    if h is None:
        h = _ngram_hashes(ids, n)
    hl = h.tolist()
    cum = np.concatenate(([0], np.cumsum(lengths))).tolist()
    seen: set[int] = set()
    add = seen.add
    chars = 0
    i = 0
    while i < m:
        x = hl[i]
        if x in seen:
            chars += cum[i + n] - cum[i]
            i += n
        else:
            add(x)
            i += 1
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
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(w, len(vocab) + 1) for w in words), dtype=np.uint64, count=len(words))
    lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
    for n, frac in c.top_n_grams:
        if len(words) >= n and top_ngram_chars(ids, lengths, n) / L > frac:
            return f"top_{n}_gram"
    if not c.dup_n_grams:
        return None
    # If no n-gram of the smallest size repeats, no longer one can: every rule passes.
    n_min = min(n for n, _ in c.dup_n_grams)
    if len(words) - n_min + 1 > 1:
        h_min = _ngram_hashes(ids, n_min)
        if len(np.unique(h_min)) == len(h_min):
            return None
    for n, frac in c.dup_n_grams:
        if duplicate_ngram_chars(ids, lengths, n) / L > frac:
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
