"""Exact-substring dedup: suffix-array spans = brute force, CUT on fixtures, modes, multi-byte safety."""

from __future__ import annotations

import numpy as np
import pytest

from falconlm.data.dedup.exact_substring import (
    ExactSubstringConfig,
    brute_force_mask,
    char_spans,
    concat_with_separators,
    dedup_texts,
    duplicated_mask,
    token_runs,
)
from falconlm.errors import FalconError


@pytest.mark.parametrize("alphabet", [2, 3, 8])
def test_suffix_array_spans_equal_brute_force(alphabet):
    rng = np.random.default_rng(alphabet)
    for _ in range(60):
        n = int(rng.integers(1, 120))
        L = int(rng.integers(1, 7))
        t = rng.integers(0, alphabet, size=n).astype(np.uint64)
        assert np.array_equal(duplicated_mask(t, L), brute_force_mask(t, L))


def test_spans_never_cross_documents():
    rng = np.random.default_rng(5)
    docs = [rng.integers(0, 4, size=int(rng.integers(0, 40))).astype(np.uint64) for _ in range(30)]
    text, starts = concat_with_separators(docs)
    mask = duplicated_mask(text, 4)
    # brute force over windows that stay inside one document
    counts: dict = {}
    for d in docs:
        for i in range(len(d) - 3):
            w = tuple(d[i : i + 4].tolist())
            counts[w] = counts.get(w, 0) + 1
    for d, s in zip(docs, starts):
        ref = np.zeros(len(d), bool)
        for i in range(len(d) - 3):
            if counts[tuple(d[i : i + 4].tolist())] > 1:
                ref[i : i + 4] = True
        assert np.array_equal(mask[s : s + len(d)], ref)
    assert not mask[starts[1:] - 1].any()  # separators are never part of a match


def test_token_runs_and_char_span_merging():
    assert token_runs(np.array([0, 1, 1, 0, 1], bool)).tolist() == [[1, 3], [4, 5]]
    starts, ends = np.array([0, 6, 12, 20]), np.array([5, 11, 18, 25])
    assert char_spans(np.array([[0, 2], [1, 3]]), starts, ends) == [(0, 18)]
    assert char_spans(np.array([[0, 1], [3, 4]]), starts, ends) == [(0, 5), (20, 25)]


def _passage(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def test_cut_output_on_fixture_texts():
    p60, p30 = _passage(60, "alpha"), _passage(30, "beta")
    texts = [
        "Intro one, here. " + p60 + " Outro of the first document stays here.",
        "Second intro stays intact!! " + p60.upper() + " — and its own ending too.",
        "Short " + p30 + " tail one",
        "Other " + p30 + " tail two",
        "Only " + p60,  # left with fewer than 20 characters -> dropped
        "nothing shared at all",
    ]
    out = dedup_texts(texts, ExactSubstringConfig(min_tokens=50))
    assert out[0][0] == "Intro one, here.  Outro of the first document stays here."
    assert out[1][0] == "Second intro stays intact!!  — and its own ending too."
    assert out[2][0] == texts[2] and out[3][0] == texts[3]  # 30 shared words < 50: kept as is
    assert out[4][0] is None
    assert out[5] == (texts[5], [])
    # the same spans with a lower threshold are cut from every copy
    out = dedup_texts(texts, ExactSubstringConfig(min_tokens=20, min_chars=10))
    assert out[2][0] == "Short  one" and out[3][0] == "Other  two"  # "tail" is shared too
    assert dedup_texts(texts, ExactSubstringConfig(min_tokens=20))[2][0] is None  # 10 chars < 20 left


def test_modes():
    p = _passage(60, "gamma")
    texts = ["A long enough unique prefix of this document. " + p, "x " + p + " " + _passage(400, "own")]
    drop_any = dedup_texts(texts, ExactSubstringConfig(mode="drop-any"))
    assert drop_any[0][0] is None and drop_any[1][0] is None
    partial = dedup_texts(texts, ExactSubstringConfig(mode="drop-partial"))
    assert partial[0][0] is None  # mostly duplicated
    assert partial[1][0] == texts[1]  # ~13% duplicated: kept unchanged
    with pytest.raises(FalconError, match="unknown exact-substring mode"):
        ExactSubstringConfig(mode="mask").validate()


def test_cut_never_splits_a_multibyte_character():
    shared = " ".join(f"ñandú{i} 日本{i} e\u0301té{i}" for i in range(25))  # 75 tokens, accents decomposed
    texts = ["Ça commence ici — " + shared + "\u0301 et ça finit là, avec des accents déjà vus.",
             "Другой текст 😀 " + shared + " 😀 конец документа здесь и сейчас."]
    out = dedup_texts(texts, ExactSubstringConfig(min_tokens=50))
    for (new, spans), old in zip(out, texts):
        assert spans and new is not None
        new.encode("utf-8")  # valid UTF-8 throughout
        for s, e in spans:
            # no span starts on a combining mark or ends just before one
            assert not old[s] in "\u0301" and (e == len(old) or old[e] != "\u0301")
        assert "\u0301" not in new.split("—")[-1][:2]
    assert out[1][0] == "Другой текст 😀  😀 конец документа здесь и сейчас."


def test_tokenizer_json_tokens_map_back_to_original_spans():
    from pathlib import Path

    tok = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "falcon-tokenizer" / "tokenizer.json"
    if not tok.exists():
        pytest.skip("../shared tokenizer absent")
    from falconlm.data.dedup.exact_substring import reversible_tokens
    from falconlm.data.dedup.normalize import normalize_text

    text = "Déjà vu: the QUICK brown fox—jumps over 12,345 lazy dogs!"
    ids, s, e = reversible_tokens([text], str(tok))[0]
    assert len(ids) == len(s) == len(e) > 5
    assert (np.diff(s) >= 0).all() and (e > s).all()
    joined = normalize_text(text)
    # every token's original span normalises to text that contains the token's words
    assert normalize_text(text[s[0] : e[-1]]) == joined
    p = _passage(60, "delta")
    out = dedup_texts(["Intro text for one. " + p + " end one here", "Another intro. " + p + " end two here"],
                      ExactSubstringConfig(tokenizer=str(tok)))
    assert out[0][0] == "Intro text for one.  one here"  # " end" follows the passage in both
