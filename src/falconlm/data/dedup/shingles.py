"""5-gram shingles as 64-bit hashes: over normalised words, or over the ids of any tokenizer.json.

Each word (or token id) is hashed once with xxhash64; the n consecutive unit hashes are then
combined with vectorised numpy arithmetic, so a document costs one C-level hash per word rather
than one per joined n-gram string."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from types import ModuleType

import numpy as np
import xxhash

from falconlm.data.dedup.normalize import normalize_text, normalized_bytes
from falconlm.errors import FalconError

_MUL = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio odd constant: spreads bits when chaining
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def compiled_kernels() -> ModuleType | None:
    """dedup/compiled.py when its numba kernels are enabled, else None: take the numpy path.

    Imported on first use, not with this module: numba takes a quarter of a second to import."""
    from falconlm.data.dedup import compiled

    return compiled if compiled.ENABLED else None


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser over a uint64 array (wrapping arithmetic): a cheap avalanche."""
    z = z ^ (z >> np.uint64(30))
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def combine_ngrams(units: np.ndarray, n: int, compiled: bool = True) -> np.ndarray:
    """Unique hashes of every run of `n` consecutive unit hashes (one shingle if fewer than n).

    `compiled`: the numba kernel when installed (same values, one pass); False: numpy."""
    m = len(units)
    if m == 0:
        return np.empty(0, dtype=np.uint64)
    if m < n:
        # A document shorter than one n-gram still gets one shingle (its whole text), so short
        # exact duplicates are found too; datatrove gives such documents no signature at all.
        n = m
    kernels = compiled_kernels() if compiled else None
    if kernels is not None:
        return kernels.ngram_hashes(np.ascontiguousarray(units, dtype=np.uint64), n)
    with np.errstate(over="ignore"):
        h = units[: m - n + 1].copy()
        for k in range(1, n):
            h *= _MUL
            h ^= units[k : m - n + 1 + k]
        return np.unique(mix64(h))


def word_unit_hashes(words: Sequence[bytes], seed: int = 0) -> np.ndarray:
    """xxhash64 of each (UTF-8 encoded) word."""
    f = xxhash.xxh64_intdigest
    if seed == 0:  # map() over the C function: ~25% faster than a generator with a seed argument
        return np.fromiter(map(f, words), dtype=np.uint64, count=len(words))
    return np.fromiter((f(w, seed) for w in words), dtype=np.uint64, count=len(words))


def word_shingles(text: str, n: int = 5, seed: int = 0, compiled: bool = True) -> np.ndarray:
    """Unique hashed word n-grams of the RefinedWeb-normalised text (`compiled`: see combine_ngrams)."""
    # Split the normalised UTF-8 bytes: xxhash wants bytes, and one encode beats one per word.
    return combine_ngrams(word_unit_hashes(normalized_bytes(text).split(), seed), n, compiled)


@lru_cache(maxsize=4)
def load_tokenizer(path: str):
    """A `tokenizers.Tokenizer` from a tokenizer.json file (cached per process)."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises bare Exceptions with long messages
        raise FalconError(f"cannot load tokenizer {path}: {str(exc).splitlines()[0]}") from None


def token_shingles_batch(texts: Sequence[str], tokenizer_path: str, n: int = 5, compiled: bool = True) -> list[np.ndarray]:
    """Unique hashed n-grams of token ids (the paper's GPT-2-token shingles) for a batch of texts."""
    tok = load_tokenizer(tokenizer_path)
    encs = tok.encode_batch([normalize_text(t) for t in texts], add_special_tokens=False)
    out = []
    for enc in encs:
        ids = np.asarray(enc.ids, dtype=np.uint64)
        out.append(combine_ngrams(mix64(ids + np.uint64(1)), n, compiled))
    return out


def shingles_batch(texts: Sequence[str], n: int = 5, tokenizer_path: str | None = None, seed: int = 0,
                   compiled: bool = True) -> list[np.ndarray]:
    """Shingle hashes for many texts: word n-grams, or token-id n-grams when a tokenizer is given."""
    if tokenizer_path:
        return token_shingles_batch(texts, tokenizer_path, n, compiled)
    return [word_shingles(t, n, seed, compiled) for t in texts]


def ngram_set(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """The exact set of word n-grams of the normalised text (ground truth for tests/benchmarks)."""
    w = normalize_text(text).split()
    if 0 < len(w) < n:
        return {tuple(w)}
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """Jaccard similarity of two sets (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
