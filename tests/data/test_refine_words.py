"""The Gopher word tokenizer reproduces spaCy's blank English tokenizer (datatrove's choice)."""

from __future__ import annotations

import pytest

from falconlm.data.filters.words import split_words, words_of

TRICKY = [
    "Hello, world! It's a test-case; don't you think? U.S.A. e.g. 3.14 $5 (foo) \"bar\" end… #tag",
    "I'm we'll they've Mr. Smith's 12:30pm 1,000,000 A/B e-mail ''quoted'' --dash—em 10km 5-year-old",
    "can't won't gonna Let's it’s o'clock rock'n'roll dont im youre here were its",
    "below). z.B. 1.5°C pic.twitter.com sources.list a): etc.). dst>. ÄB. co-op. x... and/or",
    "있습니다. Привет. Straße. über. π. 10pm. binascii.Error pickle.Pickler.dump :) ;-) <3",
    "Smith’s dogs' (U.K.) [1] {x} «quote» „deutsch“ 50% +3 -4 5+6 2^8 a=b a:b 'em 'Cause",
]


def test_matches_spacy_on_tricky_strings():
    spacy = pytest.importorskip("spacy")
    nlp = spacy.blank("en")
    for text in TRICKY:
        expected = [t.text for t in nlp(text) if t.text.strip()]
        assert split_words(text) == expected, text


def test_words_of_caches_the_last_text():
    t = "Some text, tokenised once."
    assert words_of(t) is words_of(t)
    assert words_of(t) == ["Some", "text", ",", "tokenised", "once", "."]
