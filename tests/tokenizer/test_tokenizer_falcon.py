"""Falcon tokenizer: training, pre-tokenisation, special tokens, files and transformers parity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from falconlm.cli import main as cli_main
from falconlm.tokenizer import SPECIAL_TOKENS, FalconTokenizer, train_tokenizer
from falconlm.tokenizer.falcon import _empty_falcon_tokenizer

FIXTURE = Path(__file__).resolve().parents[1] / "train" / "fixtures" / "sample_corpus.jsonl"
REAL = Path(__file__).resolve().parents[3] / "shared" / "reference" / "falcon-tokenizer"
needs_real = pytest.mark.skipif(not (REAL / "tokenizer.json").is_file(), reason="../shared/reference/falcon-tokenizer absent")

SAMPLE = (
    "Hello, world! It's 2023: 1234567 apples cost $12.50 (or 3,141,592 ¥)... e-mail: a.b@c.org #tag\n"
    "C'est déjà l'été — naïve café, Ünïcödé, 日本語のテキスト, Привет мир!!! emoji 😀👍🏽\n"
    "\tTabs\tand   multiple   spaces;  x=y+z^2 ~ a|b `code` <html></html> [link](http://x.y/z?q=1&r=2)\n"
    "Numbers: 0 12 123 1234 12345 123456 3.14159 1e10 0x1F 9999999999\n  trailing  \n\n"
)


def corpus_texts() -> list[str]:
    return [json.loads(line)["text"] for line in FIXTURE.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[FalconTokenizer, Path]:
    texts = corpus_texts() + [SAMPLE] * 3
    tok = train_tokenizer(texts, vocab_size=600, show_progress=False)
    out = tmp_path_factory.mktemp("tok")
    tok.save(out)
    return tok, out


def test_special_tokens_have_falcon_ids(trained):
    tok, _ = trained
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.tokenizer.token_to_id(t) == i
    assert tok.eot_id == 11
    assert tok.vocab_size == 600


def test_special_tokens_are_atomic(trained):
    tok, _ = trained
    ids = tok.encode("Q: >>QUESTION<<what?<|endoftext|>>>ANSWER<<no")
    assert 6 in ids and 11 in ids and 5 in ids
    # never split into pieces, and the text around them is encoded as usual
    assert tok.decode(ids) == "Q: >>QUESTION<<what?<|endoftext|>>>ANSWER<<no"
    assert tok.encode("<|endoftext|>") == [11]


def test_digits_split_in_threes_and_punctuation_isolated(trained):
    tok, _ = trained
    pieces = tok.pre_tokenize("1234567 abc,def!!")
    assert pieces[:3] == ["123", "456", "7"]
    assert "," in pieces and "!!" in pieces
    # punctuation never merges with letters, even after training on text full of "word," patterns
    for piece in (tok.tokenizer.id_to_token(i) for i in tok.encode("boat, bridge. house!")):
        assert not (any(c.isalpha() for c in piece) and any(c in ",.!" for c in piece))
    # no token holds more than three digits
    vocab = tok.tokenizer.get_vocab()
    assert all(sum(c.isdigit() for c in t) <= 3 for t in vocab)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80))
def test_round_trip_arbitrary_unicode(trained, text):
    tok, _ = trained
    assert tok.decode(tok.encode(text)) == text


def test_transformers_loads_files_and_gives_same_ids(trained):
    transformers = pytest.importorskip("transformers")
    tok, out = trained
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == 11
    hf2 = transformers.PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    for text in [SAMPLE, *corpus_texts()[:50], ">>TITLE<<A title<|endoftext|>", "  x  ", "1234567890"]:
        ours = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ours
        assert hf(text)["input_ids"] == ours  # Falcon adds no bos/eos by default
        assert hf2.encode(text) == ours
        assert hf.decode(ours) == tok.decode(ours)


def test_reload_is_identical(trained):
    tok, out = trained
    again = FalconTokenizer.load(out)
    assert again.fingerprint() == tok.fingerprint()
    assert again.encode(SAMPLE) == tok.encode(SAMPLE)


def test_train_tokenizer_cli(tmp_path, capsys):
    out = tmp_path / "tok"
    assert cli_main(["train-tokenizer", str(FIXTURE), "--vocab-size", "400", "--out", str(out)]) == 0
    tok = FalconTokenizer.load(out)
    assert tok.vocab_size == 400 and tok.eot_id == 11
    assert json.loads((out / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"
    assert "trained on 1,200 documents" in capsys.readouterr().out
    assert cli_main(["train-tokenizer", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 1
    assert cli_main(["train-tokenizer", str(FIXTURE), "--vocab-size", "100", "--out", str(out)]) == 1


@needs_real
def test_pipeline_json_matches_released_falcon_tokenizer():
    real = json.loads((REAL / "tokenizer.json").read_text())
    ours = json.loads(_empty_falcon_tokenizer().to_str())
    for key in ("normalizer", "pre_tokenizer", "decoder", "post_processor"):
        assert ours[key] == real[key], key
    real_specials = [(t["id"], t["content"], t["special"]) for t in real["added_tokens"]]
    assert real_specials == [(i, t, True) for i, t in enumerate(SPECIAL_TOKENS)]


@needs_real
def test_pre_tokenisation_matches_released_falcon_tokenizer(trained):
    from tokenizers import Tokenizer

    real = Tokenizer.from_file(str(REAL / "tokenizer.json"))
    tok, _ = trained
    texts = [SAMPLE, *corpus_texts()[:30], "'s 've 're 'll 'd 'm 't I'm", "   leading", "a\r\nb\u00a0c\u2028d"]
    for text in texts:
        assert tok.tokenizer.pre_tokenizer.pre_tokenize_str(text) == real.pre_tokenizer.pre_tokenize_str(text)


@needs_real
def test_released_tokenizer_loads_and_round_trips_through_our_code():
    real = FalconTokenizer.load(REAL)
    assert real.vocab_size == 65024 and real.eot_id == 11
    ids = real.encode(SAMPLE)
    assert real.decode(ids) == SAMPLE
    assert real.encode("<|endoftext|>") == [11]
    assert real.pre_tokenize("12345")[:2] == ["123", "45"]
