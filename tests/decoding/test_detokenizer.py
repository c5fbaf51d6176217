"""The detokenizer: one rule for EOS, stop strings and partial UTF-8, and incremental text equal to a full decode."""

from __future__ import annotations

import random

import pytest

from falconlm.decoding.detokenizer import Detokenizer


def _chars(text: str) -> tuple[list[int], callable]:
    """A byte-level 'tokenizer': one token per UTF-8 byte, so multi-byte characters arrive in pieces."""
    ids = list(text.encode("utf-8"))
    return ids, lambda toks: bytes(toks).decode("utf-8", errors="replace")


def _feed(text: str, stops: list[str], eos: list[int] = ()) -> tuple[Detokenizer, list[str]]:
    ids, decode = _chars(text)
    d = Detokenizer(decode, stops, eos)
    deltas = [d.add(t) for t in ids]
    deltas.append(d.finish("length"))
    return d, deltas


def test_stop_string_cuts_and_partial_one_is_held_back():
    d, _ = _feed(" Paris.\nUser: x", ["\nUser:"])
    assert d.text == " Paris." and d.finish_reason == "stop"
    ids, decode = _chars(" Paris.\nUs")
    d = Detokenizer(decode, ["\nUser:"])
    for t in ids:
        d.add(t)
    assert d.text == " Paris."  # "\nUs" may become the stop string: not shown yet
    assert d.finish() == "\nUs" and d.text == " Paris.\nUs" and d.finish_reason == "length"
    d, _ = _feed(" Paris.\nUsa", ["\nUser:"])
    assert d.text == " Paris.\nUsa" and d.finish_reason == "length"
    d, _ = _feed(" Paris.", [])
    assert d.text == " Paris."


def test_earliest_of_several_stop_strings_wins():
    d, _ = _feed("one two three four", ["four", "two", "three"])
    assert d.text == "one " and d.finish_reason == "stop"


def test_eos_ends_without_text_and_releases_the_held_tail():
    ids, decode = _chars("ab\nU")
    d = Detokenizer(decode, ["\nUser:"], eos_ids=[0])
    for t in ids:
        d.add(t)
    assert d.text == "ab"
    assert d.add(0) == "\nU" and d.finish_reason == "stop" and d.tokens[-1] == 0
    assert d.add(ord("x")) == "" and d.text == "ab\nU"  # nothing after the end


def test_multibyte_characters_are_never_split():
    d, deltas = _feed("héllo wörld ✓ 日本", [])
    assert d.text == "héllo wörld ✓ 日本"
    assert all("\ufffd" not in x for x in deltas) and "".join(deltas) == d.text


def test_stop_string_made_of_multibyte_characters():
    d, _ = _feed("prix: 5€ et ✓ fin", ["✓"])
    assert d.text == "prix: 5€ et " and d.finish_reason == "stop"


@pytest.mark.parametrize("seed", range(5))
def test_incremental_text_equals_full_decode_on_a_real_tokenizer(seed, tiny_ckpt):
    from falconlm.decoding.detokenizer import text_decoder
    from falconlm.tokenizer.falcon import FalconTokenizer

    tok = FalconTokenizer.load(tiny_ckpt)
    rng = random.Random(seed)
    ids = [rng.randrange(tok.vocab_size) for _ in range(300)]
    decode = text_decoder(tok)
    d = Detokenizer(decode, [])
    deltas = [d.add(t) for t in ids] + [d.finish()]
    assert d.text == decode(ids) == "".join(deltas)
