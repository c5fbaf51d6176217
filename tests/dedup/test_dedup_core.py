"""Normalisation, shingles, MinHash signatures, the S-curve and union-find."""

from __future__ import annotations

import random
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from falconlm.data.dedup.minhash import MinHashConfig, MinHasher, estimate_jaccard, match_probability, s_curve_table
from falconlm.data.dedup.normalize import normalize_text, reversible_words
from falconlm.data.dedup.shingles import jaccard, ngram_set, word_shingles
from falconlm.data.dedup.unionfind import UnionFind, clusters_from_pairs, connected_roots
from falconlm.errors import FalconError

SHARED_TOKENIZER = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "falcon-tokenizer" / "tokenizer.json"


def test_normalisation_is_refinedweb():
    assert normalize_text("Héllo, WORLD!!  Çà\tva?\n naïve—café") == "hello world ca va naive cafe"
    # Already-decomposed accents and capitals that lower to a letter + mark are stripped too.
    assert normalize_text("Cafe\u0301 İstanbul") == "cafe istanbul"
    assert normalize_text("a_b-c/d $5 «quoted»") == "a b c d 5 quoted"
    assert normalize_text("   ") == ""


def test_reversible_words_map_back_to_original():
    text = "Ünïcode — déjà vu!  e\u0301t\u0301e\u0301, 日本語のテキスト; x"
    rt = reversible_words(text)
    assert rt.tokens == normalize_text(text).split()
    for tok, s, e in zip(rt.tokens, rt.starts, rt.ends):
        assert normalize_text(text[s:e]) == tok
        # spans never start on a combining mark (it would belong to the previous letter)
        assert unicodedata.category(text[s]) != "Mn"


def test_shingles_are_sets_of_word_5grams():
    rng = random.Random(0)
    words = [f"w{rng.randrange(10**9)}" for _ in range(50)]
    a = " ".join(words)
    assert len(word_shingles(a)) == 46
    # punctuation and case do not change the shingles
    assert np.array_equal(word_shingles(a), word_shingles(a.upper().replace(" ", " , ")))
    assert len(word_shingles("one two")) == 1  # shorter than an n-gram: one shingle
    assert len(word_shingles("!!!")) == 0


def test_s_curve_matches_the_paper():
    # RefinedWeb App. G.3.1: 450 bands x 20 rows -> P = 76% at s = 0.75 and 99.4% at s = 0.8.
    assert match_probability(0.75, 450, 20) == pytest.approx(0.7605, abs=5e-4)
    assert match_probability(0.80, 450, 20) == pytest.approx(0.9946, abs=5e-4)
    # datatrove's 14 x 8: P(0.8) ~ 0.92
    assert match_probability(0.80, 14, 8) == pytest.approx(0.9235, abs=5e-4)
    table = s_curve_table(450, 20)
    assert "s = 0.50" in table and "s = 0.95" in table and "9000 hashes" in table
    assert MinHashConfig.preset("refinedweb").num_hashes == 9000
    assert MinHashConfig.preset("fineweb").num_hashes == 112
    with pytest.raises(FalconError, match="unknown MinHash preset"):
        MinHashConfig.preset("nope")


def _pair(rng: random.Random, target: float, n_words: int = 300) -> tuple[str, str, float]:
    words = [f"v{rng.randrange(10**12)}" for _ in range(n_words)]
    m = n_words - 4
    k = round(m * (1 - target) / (5 * (1 + target)))
    other = list(words)
    for pos in rng.sample(range(0, n_words, 5), k):
        other[pos] = f"z{rng.randrange(10**12)}"
    a, b = " ".join(words), " ".join(other)
    return a, b, jaccard(ngram_set(a), ngram_set(b))


def test_minhash_estimate_tracks_true_jaccard_and_datasketch():
    datasketch = pytest.importorskip("datasketch")
    rng = random.Random(1)
    pairs = [_pair(rng, t) for t in np.linspace(0.3, 1.0, 15) for _ in range(2)]
    hasher = MinHasher(MinHashConfig(bands=32, rows=8, seed=3))  # 256 hashes
    sig, valid = hasher.signatures([word_shingles(t) for p in pairs for t in p[:2]])
    assert len(valid) == 2 * len(pairs)
    ours, theirs = [], []
    for i, (a, b, true) in enumerate(pairs):
        ours.append(abs(estimate_jaccard(sig[2 * i], sig[2 * i + 1]) - true))
        ma, mb = datasketch.MinHash(num_perm=256, seed=3), datasketch.MinHash(num_perm=256, seed=3)
        for m, t in ((ma, a), (mb, b)):
            for g in ngram_set(t):
                m.update(" ".join(g).encode())
        theirs.append(abs(ma.jaccard(mb) - true))
    assert np.mean(ours) < 0.05
    assert np.mean(theirs) < 0.05
    # same estimator quality as datasketch (both ~1/sqrt(256) standard error)
    assert np.mean(ours) < np.mean(theirs) + 0.02


def test_signatures_vectorised_equal_per_document_loop():
    rng = random.Random(2)
    docs = [" ".join(f"x{rng.randrange(500)}" for _ in range(rng.randint(0, 80))) for _ in range(40)]
    h = MinHasher(MinHashConfig(bands=10, rows=5))
    sh = [word_shingles(d) for d in docs]
    sig, valid = h.signatures(sh)
    p = np.uint64((1 << 61) - 1)
    for row, i in zip(sig, valid):
        with np.errstate(over="ignore"):
            ref = ((sh[i][:, None] * h.a[None, :] + h.b[None, :]) % p).min(axis=0)
        assert np.array_equal(row, ref)
    assert set(valid) == {i for i, s in enumerate(sh) if len(s)}
    keys = h.band_keys(sig)
    assert keys.shape == (len(valid), 10)
    # equal band rows <=> equal keys
    same = sig.reshape(len(valid), 10, 5)
    for i in range(len(valid)):
        for j in range(i + 1, len(valid)):
            eq_rows = (same[i] == same[j]).all(axis=1)
            assert np.array_equal(eq_rows, keys[i] == keys[j])


def test_token_id_shingles_with_a_real_tokenizer():
    if not SHARED_TOKENIZER.exists():
        pytest.skip("../shared tokenizer absent")
    from falconlm.data.dedup.shingles import token_shingles_batch

    a = "The quick brown fox jumps over the lazy dog near the river bank today."
    out = token_shingles_batch([a, a.upper() + "!!", "something else entirely different here"], str(SHARED_TOKENIZER))
    assert np.array_equal(out[0], out[1]) and len(out[0]) > 5
    assert not set(out[0].tolist()) & set(out[2].tolist())


def test_union_find_roots_are_cluster_minima():
    rng = np.random.default_rng(0)
    n = 300
    u, v = rng.integers(0, n, 400), rng.integers(0, n, 400)
    roots = connected_roots(u, v, n)
    uf = UnionFind()
    for a, b in zip(u.tolist(), v.tolist()):
        uf.union(a, b)
    for x in range(n):
        assert roots[x] == (uf.find(x) if x in uf.parent else x)
    members, r = clusters_from_pairs(np.array([10, 11, 30], np.uint64), np.array([11, 12, 5], np.uint64))
    assert dict(zip(members.tolist(), r.tolist())) == {5: 5, 10: 10, 11: 10, 12: 10, 30: 5}


def test_dedup_package_does_not_import_torch():
    code = (
        "import sys; import falconlm.data.dedup, falconlm.data.dedup.estimate, falconlm.data.dedup.cli, "
        "falconlm.data.dedup.minhash_stage, falconlm.data.dedup.exact_stage, falconlm.data.dedup.url; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_shingle_fast_path_splits_like_normalize_text():
    from falconlm.data.dedup.normalize import normalize_unjoined

    text = "a\u00a0b\u2003c\u2028d\x1ce\u3000f\tg\u0085h Çé—ï"
    assert normalize_unjoined(text).encode().split() == [w.encode() for w in normalize_text(text).split()]
    assert normalize_text(text) == "a b c d e f g h ce i"
