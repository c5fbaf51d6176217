"""The numba kernels (dedup/compiled.py) give the numpy path's exact bits, and the numpy path still
runs when they are off: shingles, signatures and band keys on the dedup fixtures, on edge cases and
on real pages of ../shared/corpora/web-bench.warc.gz; a whole MinHash run either way."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from falconlm.data.config import DedupConfig, MinHashConfig, RefineConfig, Resources
from falconlm.data.dedup import minhash, minhash_stage
from falconlm.data.dedup import shingles as shingles_mod
from falconlm.data.dedup.minhash import MinHasher
from falconlm.data.dedup.normalize import normalize_unjoined, normalized_bytes
from falconlm.data.dedup.shingles import combine_ngrams, word_unit_hashes
from falconlm.data.executor import ExecConfig
from falconlm.data.refine import run_refine

compiled = pytest.importorskip("falconlm.data.dedup.compiled")
needs_numba = pytest.mark.skipif(not compiled.ENABLED, reason="numba not installed (or FALCONLM_NUMBA=0)")
WEB = Path(__file__).resolve().parents[2].parent / "shared" / "corpora" / "web-bench.warc.gz"


def fixture_texts(corpus: tuple[list[Path], dict]) -> list[str]:
    return [json.loads(line)["text"] for p in corpus[0] for line in open(p, encoding="utf-8")]


def both_ways(texts: list[str], shapes: list[tuple[int, int]], ngram: int = 5) -> None:
    """Assert compiled == numpy for the shingles of `texts` and their signatures and band keys."""
    units = [word_unit_hashes(normalized_bytes(t).split()) for t in texts]
    fast = [combine_ngrams(u, ngram) for u in units]
    slow = [combine_ngrams(u, ngram, compiled=False) for u in units]
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow))
    assert all(a.dtype == np.uint64 for a in fast)
    for bands, rows in shapes:
        cfg = MinHashConfig(bands=bands, rows=rows)
        fast_h, slow_h = MinHasher(cfg), MinHasher(cfg, compiled=False)
        assert fast_h.compiled and not slow_h.compiled
        sig_f, valid_f = fast_h.signatures(fast)
        sig_s, valid_s = slow_h.signatures(fast)
        assert np.array_equal(valid_f, valid_s)
        assert np.array_equal(sig_f, sig_s)
        assert np.array_equal(fast_h.band_keys(sig_f), slow_h.band_keys(sig_s))


@needs_numba
def test_compiled_kernels_equal_numpy_on_the_fixture(fixture_corpus):
    texts = fixture_texts(fixture_corpus)
    both_ways(texts, [(14, 8), (7, 3)])  # datatrove's 112 hashes; an odd shape (tiles not full)
    both_ways(texts[:40], [(450, 20)])  # the paper's 9,000 (numpy is slow there: a few documents)


@needs_numba
def test_compiled_kernels_equal_numpy_on_edge_cases():
    rng = random.Random(5)
    texts = ["", "one", "two words", "a b c d", "a b c d e", "a a a a a a a a a", "x " * 300]
    texts += [" ".join(f"w{rng.randrange(30)}" for _ in range(rng.randint(0, 60))) for _ in range(50)]
    both_ways(texts, [(1, 1), (3, 100), (14, 8)])
    both_ways(texts, [(5, 4)], ngram=1)
    both_ways(texts, [(5, 4)], ngram=9)
    # extreme unit hashes (all bits set, zero) and a batch whose first and last documents are empty
    units = np.array([0, 2**64 - 1, 2**63, 1, 2**61 - 1, 2**61], dtype=np.uint64)
    assert np.array_equal(combine_ngrams(units, 2), combine_ngrams(units, 2, compiled=False))
    cfg = MinHashConfig(bands=30, rows=10)
    batch = [np.empty(0, np.uint64), units, np.empty(0, np.uint64), units[:1], np.empty(0, np.uint64)]
    (sf, vf), (ss, vs) = MinHasher(cfg).signatures(batch), MinHasher(cfg, compiled=False).signatures(batch)
    assert vf.tolist() == [1, 3] and np.array_equal(vf, vs) and np.array_equal(sf, ss)


@needs_numba
@pytest.mark.slow
def test_compiled_kernels_equal_numpy_on_web_bench():
    """Real pages (extracted with resiliparse) at the paper's 9,000 hashes."""
    if not WEB.exists():
        pytest.skip("../shared/corpora/web-bench.warc.gz absent")
    from falconlm.data.extract import ExtractConfig, extract_text
    from falconlm.data.readers import read_documents

    cfg = ExtractConfig(extractor="resiliparse")
    texts = []
    for doc in read_documents(WEB):
        text = extract_text(doc.text, cfg)
        if text:
            texts.append(text)
        if len(texts) == 60:
            break
    assert any(not t.isascii() for t in texts)
    both_ways(texts, [(450, 20), (14, 8)])


def test_normalized_bytes_equals_normalize_unjoined():
    """The byte-table fast path gives normalize_unjoined's bytes: every ASCII character, and mixed text."""
    every_ascii = "".join(chr(i) for i in range(128))
    rng = random.Random(3)
    samples = [every_ascii, "Ça élève İstanbul ﬁ ß ẞ naïve café; x\u037ey \u00a0z — “q” ǅ Ⅷ ① ＡＢＣ 東京 🙂e\u0301"]
    pool = [c for c in map(chr, range(0x3000)) if not 0xD800 <= ord(c) < 0xE000]
    samples += ["".join(rng.choice(pool) for _ in range(200)) for _ in range(30)]
    for s in samples:
        assert normalized_bytes(s) == normalize_unjoined(s).encode("utf-8")


def test_compiled_path_is_taken_when_it_pays_off(monkeypatch):
    """Loading numba costs ~0.5 s once per process: a small task at 112 hashes keeps to numpy, 9,000 do not."""
    monkeypatch.delitem(sys.modules, "falconlm.data.dedup.compiled", raising=False)
    assert not minhash.compiled_pays_off(1_500_000, 112)
    assert minhash.compiled_pays_off(1_500_000, 9000)
    assert minhash.compiled_pays_off(200_000_000, 112)
    assert minhash.compiled_pays_off(0, 112)  # size unknown
    monkeypatch.setitem(sys.modules, "falconlm.data.dedup.compiled", compiled)
    assert minhash.compiled_pays_off(1_000, 112)  # already loaded in this process: nothing left to pay


@needs_numba
@pytest.mark.slow
def test_minhash_run_is_the_same_without_numba(small_corpus, read_output, tmp_path, monkeypatch):
    """A whole MinHash dedup run on the compiled kernels gives the numpy run's output and clusters."""
    shards, _ = small_corpus
    cfg = RefineConfig(dedup=DedupConfig(minhash=MinHashConfig(bands=20, rows=5), exact_substring=None, url=None,
                                         resources=Resources(memory_mb=64)))
    calls = {"signatures": 0}
    real = compiled.signatures

    def counted(*args):
        calls["signatures"] += 1
        return real(*args)

    def run(out: Path) -> tuple[list[dict], bytes]:
        run_refine(shards, out, "dedup", cfg, ExecConfig(progress=False), report=False)
        return read_output(out), (out / "dedup" / "minhash" / "clusters.json").read_bytes()

    monkeypatch.setattr(compiled, "signatures", counted)
    monkeypatch.setattr(minhash_stage, "compiled_pays_off", lambda *a: True)
    fast = run(tmp_path / "fast")
    used = calls["signatures"]
    assert used >= len(shards)  # every shard was signed by the compiled kernel
    monkeypatch.setattr(compiled, "ENABLED", False)
    assert shingles_mod.compiled_kernels() is None and not MinHasher(MinHashConfig()).compiled
    slow = run(tmp_path / "slow")
    assert calls["signatures"] == used and slow == fast  # the numpy path signed this run
    assert len(fast[0]) < sum(1 for p in shards for _ in open(p, encoding="utf-8"))  # it did remove duplicates
