"""Every Gopher repetition and quality rule at its threshold: just below/at keeps, just above drops.
Each rule is tested alone (the others switched off) so the boundary is the rule's own."""

from __future__ import annotations

import pytest

from falconlm.data.filters.quality import QualityConfig, quality_reason
from falconlm.data.filters.repetition import (
    RepetitionConfig,
    duplicate_ngram_chars,
    repetition_reason,
    top_ngram_chars,
    top_ngram_chars_reference,
)
from falconlm.data.filters.words import split_words

import numpy as np

OFF = dict(dup_para_frac=0, dup_para_char_frac=0, dup_line_frac=0, dup_line_char_frac=0, top_n_grams=(), dup_n_grams=())


def rep(text: str, **only) -> str | None:
    return repetition_reason(text, split_words(text), RepetitionConfig(**{**OFF, **only}))


def filler(n_chars: int) -> str:
    """A single word of exactly n_chars letters (unique, so it repeats nothing)."""
    return "q" * n_chars


# ------------------------------------------------------------------ repetition


def test_dup_paragraph_fraction_boundary():
    keep = "\n\n".join(["dup"] * 31 + [f"p{i}" for i in range(69)])  # 30 repeats / 100 paragraphs = 0.30
    drop = "\n\n".join(["dup"] * 32 + [f"p{i}" for i in range(68)])  # 31 / 100
    assert rep(keep, dup_para_frac=0.3) is None
    assert rep(drop, dup_para_frac=0.3) == "dup_para_frac"


def test_dup_paragraph_char_fraction_boundary():
    a = "x" * 100
    keep = f"{a}\n\n{a}\n\n{filler(296)}"  # 100 dup chars / 500
    drop = f"{a}\n\n{a}\n\n{filler(295)}"  # 100 / 499
    assert len(keep) == 500
    assert rep(keep, dup_para_char_frac=0.2) is None
    assert rep(drop, dup_para_char_frac=0.2) == "dup_para_char_frac"


def test_dup_line_fraction_boundary():
    keep = "\n".join(["dup"] * 31 + [f"l{i}" for i in range(69)])
    drop = "\n".join(["dup"] * 32 + [f"l{i}" for i in range(68)])
    assert rep(keep, dup_line_frac=0.3) is None
    assert rep(drop, dup_line_frac=0.3) == "dup_line_frac"


def test_dup_line_char_fraction_boundary():
    a = "y" * 100
    keep = f"{a}\n{a}\n{filler(298)}"
    drop = f"{a}\n{a}\n{filler(297)}"
    assert len(keep) == 500
    assert rep(keep, dup_line_char_frac=0.2) is None
    assert rep(drop, dup_line_char_frac=0.2) == "dup_line_char_frac"


@pytest.mark.parametrize("n,frac", [(2, 0.20), (3, 0.18), (4, 0.16)])
def test_top_ngram_boundary(n, frac):
    gram = " ".join(["ab"] * n)  # "ab ab" ... but as one n-gram repeated
    words = [f"w{i}" for i in range(n)]
    unit = " ".join(words)  # n distinct words -> the n-gram "w0 w1 ..." repeats k times
    k = 10
    body = " ".join([unit] * k)
    top = len(unit) * k
    # smallest text length with top/len <= frac keeps; one char shorter drops
    keep_len = int(np.ceil(top / frac - 1e-9))
    assert top / keep_len <= frac < top / (keep_len - 1)
    def make(total):
        pad = total - len(body) - 1
        return body + " " + filler(pad)
    keep, drop = make(keep_len), make(keep_len - 1)
    assert top_ngram_chars_reference(split_words(keep), n) == top
    assert rep(keep, top_n_grams=((n, frac),)) is None
    assert rep(drop, top_n_grams=((n, frac),)) == f"top_{n}_gram"
    del gram


@pytest.mark.parametrize("n,frac", [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)])
def test_duplicate_ngram_boundary(n, frac):
    words = [f"v{i}" for i in range(n)]
    body = " ".join(words + words)  # the n-gram appears twice -> n*2 chars ("v0" = 2 chars) repeated once
    dup = len("".join(words))
    keep_len = int(np.ceil(dup / frac - 1e-9))
    def make(total):
        return body + " " + filler(total - len(body) - 1)
    keep, drop = make(keep_len), make(keep_len - 1)
    assert rep(keep, dup_n_grams=((n, frac),)) is None
    assert rep(drop, dup_n_grams=((n, frac),)) == f"duplicated_{n}_n_grams"


def _reference_dup(words: list[str], n: int) -> int:
    """The rule as written in falcon-facts A.4 (datatrove's loop), for comparison."""
    seen, chars, i = set(), 0, 0
    while i < len(words) - n + 1:
        g = "".join(words[i : i + n])
        if g in seen:
            chars += len(g)
            i += n
        else:
            seen.add(g)
            i += 1
    return chars


def test_duplicate_ngram_counting_matches_reference_on_random_texts():
    rng = np.random.default_rng(0)
    vocab = [f"t{i}" for i in range(6)] + ["alpha", "beta", "gamma"]
    for _ in range(200):
        words = [vocab[j] for j in rng.integers(0, len(vocab), size=int(rng.integers(1, 60)))]
        vocab_ids: dict[str, int] = {}
        ids = np.array([vocab_ids.setdefault(w, len(vocab_ids) + 1) for w in words], dtype=np.uint64)
        lengths = np.array([len(w) for w in words])
        for n in (2, 3, 5, 7):
            assert duplicate_ngram_chars(ids, lengths, n) == _reference_dup(words, n)
            if len(words) >= n:
                assert top_ngram_chars(ids, lengths, n) == top_ngram_chars_reference(words, n)


def test_jump_ahead_semantics():
    words = "a b c d e a b c d e a b c d e".split()
    assert _reference_dup(words, 5) == 10  # two repeats, each 5 chars, no double counting
    ids = np.array([ord(w) for w in words], dtype=np.uint64)
    assert duplicate_ngram_chars(ids, np.ones(len(words), dtype=np.int64), 5) == 10


# -------------------------------------------------------------------- quality

QOFF = dict(min_doc_words=None, max_doc_words=None, min_avg_word_length=None, max_avg_word_length=None,
            max_symbol_word_ratio=None, max_bullet_lines_ratio=None, max_ellipsis_lines_ratio=None,
            min_alpha_words_ratio=None, min_stop_words=None)


def qual(text: str, **only) -> str | None:
    return quality_reason(text, split_words(text), QualityConfig(**{**QOFF, **only}))


def test_word_count_bounds():
    assert qual(" ".join(["word"] * 50), min_doc_words=50) is None
    assert qual(" ".join(["word"] * 49), min_doc_words=50) == "gopher_short_doc"
    # symbol-only tokens do not count as words
    assert qual(" ".join(["word"] * 49 + ["!!"]), min_doc_words=50) == "gopher_short_doc"
    assert qual(" ".join(["word"] * 100), max_doc_words=100) is None
    assert qual(" ".join(["word"] * 101), max_doc_words=100) == "gopher_long_doc"


def test_mean_word_length_bounds():
    assert qual(" ".join(["abc"] * 50), min_avg_word_length=3) is None
    assert qual(" ".join(["abc"] * 49 + ["ab"]), min_avg_word_length=3) == "gopher_below_avg_threshold"
    assert qual(" ".join(["a" * 10] * 50), max_avg_word_length=10) is None
    assert qual(" ".join(["a" * 10] * 49 + ["a" * 11]), max_avg_word_length=10) == "gopher_above_avg_threshold"


def test_hash_and_ellipsis_ratios():
    # '#' alone is a token: 10 of 100 tokens -> 0.10 keeps, 11 -> drops
    assert qual(" ".join(["word"] * 90 + ["#"] * 10), max_symbol_word_ratio=0.1) is None
    assert qual(" ".join(["word"] * 89 + ["#"] * 11), max_symbol_word_ratio=0.1) == "gopher_too_many_hashes"
    assert qual(" ".join(["word"] * 90 + ["..."] * 10), max_symbol_word_ratio=0.1) is None
    assert qual(" ".join(["word"] * 89 + ["…"] * 11), max_symbol_word_ratio=0.1) == "gopher_too_many_ellipsis"


def test_bullet_and_end_ellipsis_lines():
    lines = [f"- item {i}" for i in range(90)] + [f"line {i}" for i in range(10)]
    assert qual("\n".join(lines), max_bullet_lines_ratio=0.9) is None
    lines = [f"• item {i}" for i in range(91)] + [f"line {i}" for i in range(9)]
    assert qual("\n".join(lines), max_bullet_lines_ratio=0.9) == "gopher_too_many_bullets"
    lines = [f"and so on {i}..." for i in range(30)] + [f"line {i}" for i in range(70)]
    assert qual("\n".join(lines), max_ellipsis_lines_ratio=0.3) is None
    lines = [f"and so on {i}…" for i in range(31)] + [f"line {i}" for i in range(69)]
    assert qual("\n".join(lines), max_ellipsis_lines_ratio=0.3) == "gopher_too_many_end_ellipsis"


def test_alpha_word_ratio():
    assert qual(" ".join(["word"] * 80 + ["42"] * 20), min_alpha_words_ratio=0.8) is None
    assert qual(" ".join(["word"] * 79 + ["42"] * 21), min_alpha_words_ratio=0.8) == "gopher_below_alpha_threshold"


def test_stop_words():
    assert qual("the cat sat on a mat with a hat", min_stop_words=2) is None
    assert qual("the cat sat on a mat", min_stop_words=2) == "gopher_enough_stop_words"
    assert qual("The cat sat on a mat With a hat", min_stop_words=2) == "gopher_enough_stop_words"  # case-sensitive
