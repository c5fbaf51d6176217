"""Document-wise quality filters: the Gopher quality rules (Rae et al. App. A.1.1) with
datatrove's semantics (docs/refinedweb.md), so decisions agree with `GopherQualityFilter`."""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass, replace
from functools import lru_cache

from falconlm.data.document import Document
from falconlm.data.filters.words import words_of
from falconlm.data.step import PipelineStep

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


@dataclass(frozen=True)
class QualityConfig:
    """Gopher thresholds; set one to None to switch its rule off."""

    min_doc_words: int | None = 50  # fewer words: dropped
    max_doc_words: int | None = 100_000  # more words: dropped
    min_avg_word_length: float | None = 3  # mean word length below this: dropped
    max_avg_word_length: float | None = 10  # mean word length above this: dropped
    max_symbol_word_ratio: float | None = 0.1  # '#' and ellipsis, each, per word
    max_bullet_lines_ratio: float | None = 0.9  # share of lines starting with a bullet above this: dropped
    max_ellipsis_lines_ratio: float | None = 0.3  # share of lines ending in an ellipsis above this: dropped
    min_alpha_words_ratio: float | None = 0.8  # share of words with a letter below this: dropped
    min_stop_words: int | None = 2  # fewer distinct stop words present: dropped
    stop_words: tuple[str, ...] = STOP_WORDS  # the stop words counted (Gopher's eight)
    # Languages the stop words are of: Gopher's list is English, so a document the language step
    # labelled otherwise skips the stop-word rule instead of being dropped for not writing English.
    stop_words_languages: tuple[str, ...] = ("en",)

    def stop_word_rule_skipped(self, languages: tuple[str, ...] | list[str]) -> list[str]:
        """Which of `languages` the stop-word rule does not apply to (no list for them)."""
        return [lang for lang in languages if self.min_stop_words and lang not in self.stop_words_languages]


@lru_cache(maxsize=65536)
def is_symbol_char(ch: str) -> bool:
    """Punctuation or symbol (Unicode categories P* and S*) or a control character."""
    cat = unicodedata.category(ch)
    return cat[0] in "PS" or cat == "Cc"


def is_symbol_word(word: str) -> bool:
    """A token made only of punctuation/symbols (datatrove: no char outside its punctuation set)."""
    return not word.isalnum() and all(is_symbol_char(ch) for ch in word)


def quality_reason(text: str, words: list[str], config: QualityConfig) -> str | None:
    """The first Gopher quality rule the text breaks (datatrove's order and names), or None."""
    c = config
    n_words = len(words)
    # Per distinct word, not per occurrence: natural text repeats its words a lot.
    counts = Counter(words)
    n_content = content_chars = alpha = 0
    for w, k in counts.items():
        if not is_symbol_word(w):
            n_content += k
            content_chars += len(w) * k
        if _has_alpha(w):
            alpha += k
    if c.min_doc_words and n_content < c.min_doc_words:
        return "gopher_short_doc"
    if c.max_doc_words and n_content > c.max_doc_words:
        return "gopher_long_doc"
    if n_content:
        avg = content_chars / n_content
        if c.min_avg_word_length and avg < c.min_avg_word_length:
            return "gopher_below_avg_threshold"
        if c.max_avg_word_length and avg > c.max_avg_word_length:
            return "gopher_above_avg_threshold"
    if n_words == 0:
        return "gopher_short_doc"
    if c.max_symbol_word_ratio and text.count("#") / n_words > c.max_symbol_word_ratio:
        return "gopher_too_many_hashes"
    if c.max_symbol_word_ratio and (text.count("...") + text.count("…")) / n_words > c.max_symbol_word_ratio:
        return "gopher_too_many_ellipsis"
    lines = text.splitlines() or [""]
    if c.max_bullet_lines_ratio:
        bullets = sum(1 for s in lines if s.lstrip().startswith(("•", "-")))
        if bullets / len(lines) > c.max_bullet_lines_ratio:
            return "gopher_too_many_bullets"
    if c.max_ellipsis_lines_ratio:
        ell = sum(1 for s in lines if s.rstrip().endswith(("...", "…")))
        if ell / len(lines) > c.max_ellipsis_lines_ratio:
            return "gopher_too_many_end_ellipsis"
    if c.min_alpha_words_ratio and alpha / n_words < c.min_alpha_words_ratio:
        return "gopher_below_alpha_threshold"
    if c.min_stop_words:
        if len(set(c.stop_words).intersection(counts)) < c.min_stop_words:
            return "gopher_enough_stop_words"
    return None


def _has_alpha(word: str) -> bool:
    return word.isalpha() or any(ch.isalpha() for ch in word)


class QualityFilter(PipelineStep):
    """Drop documents failing the Gopher quality heuristics."""

    name = "quality"

    def __init__(self, config: QualityConfig | None = None) -> None:
        self.config = config or QualityConfig()
        self._without_stop_words = replace(self.config, min_stop_words=None)

    def process(self, doc: Document) -> Document | str:
        """Keep or return the first broken rule (the stop-word rule only for the languages its list is of)."""
        lang = doc.metadata.get("language")
        config = self.config if lang is None or lang in self.config.stop_words_languages else self._without_stop_words
        reason = quality_reason(doc.text, words_of(doc.text), config)
        return doc if reason is None else reason
