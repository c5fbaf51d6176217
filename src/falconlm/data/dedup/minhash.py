"""MinHash signatures (a compiled numba loop, or vectorised numpy), LSH band keys and the S-curve (settings and presets: data/config.py).

Permutations follow the usual universal-hash scheme h(x) = (a*x + b) mod (2^61 - 1) with
`a, b` drawn from `np.random.RandomState(seed)` like datasketch and datatrove. As in both of
them the product a*x is computed in uint64 and so wraps modulo 2^64 before the Mersenne
reduction; that is a fixed, well-mixed hash family, not an exact mod-p product, and the
estimator is unaffected (tests compare it with the true Jaccard and with datasketch)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from falconlm.data.config import MinHashConfig
from falconlm.data.dedup.shingles import compiled_kernels, mix64

MERSENNE_61 = np.uint64((1 << 61) - 1)
_S61 = np.uint64(61)


def match_probability(similarity: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """LSH S-curve: probability that two documents of Jaccard `similarity` share a band."""
    return 1.0 - (1.0 - np.asarray(similarity, dtype=np.float64) ** rows) ** bands


def s_curve_table(bands: int, rows: int, points: Sequence[float] = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)) -> str:
    """A printable table of the S-curve at similarity 0.5 ... 0.95."""
    lines = [f"MinHash LSH {bands} bands x {rows} rows = {bands * rows} hashes; P(candidate | Jaccard s):"]
    for s in points:
        lines.append(f"  s = {s:.2f}  P = {float(match_probability(s, bands, rows)):.4f}")
    thr = (1.0 / bands) ** (1.0 / rows)
    lines.append(f"  (threshold ~ (1/b)^(1/r) = {thr:.3f})")
    return "\n".join(lines)


# The compiled path costs about half a second once per process (importing numba, loading its cached
# machine code); numpy spends ~3.5 ns more than the fused loop per hash evaluation. A task with less
# work than that keeps to numpy (same bits either way).
COMPILE_STARTUP_S = 0.5
NUMPY_EXTRA_S_PER_HASH = 3.5e-9
BYTES_PER_SHINGLE = 6.5  # about one word-5-gram per word of ~5.5 characters and its separator


def compiled_pays_off(text_bytes: int, num_hashes: int) -> bool:
    """Whether loading the compiled kernels saves time on `text_bytes` of input (0: unknown, assume so)."""
    if not text_bytes or "falconlm.data.dedup.compiled" in sys.modules:  # unknown size, or already paid for
        return True
    return text_bytes / BYTES_PER_SHINGLE * num_hashes * NUMPY_EXTRA_S_PER_HASH > COMPILE_STARTUP_S


class MinHasher:
    """Computes MinHash signatures and LSH band keys for batches of shingle-hash arrays."""

    # Elements of the (shingles x hashes) working block: 512 KiB stays in L2 (4x faster than 8 MiB).
    BLOCK_ELEMENTS = 1 << 16
    BLOCK_COLUMNS = 64

    def __init__(self, config: MinHashConfig, compiled: bool = True):
        config.validate()
        self.config = config
        # The fused numba kernels (compiled.py) when installed; False (or no numba): numpy. Same bits.
        self.compiled = compiled and compiled_kernels() is not None
        rng = np.random.RandomState(config.seed)
        h = config.num_hashes
        # Same draws as datasketch/datatrove: a in [1, p), b in [0, p).
        self.a = rng.randint(1, int(MERSENNE_61), size=h, dtype=np.uint64)
        self.b = rng.randint(0, int(MERSENNE_61), size=h, dtype=np.uint64)
        self.band_seeds = mix64(np.arange(1, config.bands + 1, dtype=np.uint64) * np.uint64(0x632BE59BD9B4E019))

    def signatures(self, shingles: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(signatures[n_valid, H] uint64, valid row indices): documents without shingles get none."""
        lengths = np.fromiter((len(s) for s in shingles), dtype=np.int64, count=len(shingles))
        valid = np.flatnonzero(lengths > 0)
        h = self.config.num_hashes
        out = np.empty((len(valid), h), dtype=np.uint64)
        if len(valid) == 0:
            return out, valid
        if self.compiled:
            x = np.concatenate([shingles[k] for k in valid]).astype(np.uint64, copy=False)
            offsets = np.zeros(len(valid) + 1, dtype=np.int64)
            np.cumsum(lengths[valid], out=offsets[1:])
            compiled_kernels().signatures(x, offsets, self.a, self.b, out)
            return out, valid
        # Tile the (shingles x hashes) product: groups of whole documents (reduceat needs them)
        # times blocks of hash columns, each tile about BLOCK_ELEMENTS so it stays in cache.
        cols = min(h, self.BLOCK_COLUMNS)
        rows_target = max(1, self.BLOCK_ELEMENTS // cols)
        i = 0
        with np.errstate(over="ignore"):
            while i < len(valid):
                j, rows = i, 0
                while j < len(valid) and (rows == 0 or rows + lengths[valid[j]] <= rows_target):
                    rows += int(lengths[valid[j]])
                    j += 1
                x = np.concatenate([shingles[k] for k in valid[i:j]])[:, None]
                offsets = np.concatenate([[0], np.cumsum(lengths[valid[i:j]])[:-1]])
                for c in range(0, h, cols):
                    y = np.multiply(x, self.a[None, c : c + cols])  # wraps mod 2^64 (see module doc)
                    y += self.b[None, c : c + cols]
                    # y mod (2^61 - 1) without a division: fold the top 3 bits back in.
                    r = y & MERSENNE_61
                    y >>= _S61
                    r += y
                    r[r >= MERSENNE_61] -= MERSENNE_61
                    out[i:j, c : c + cols] = np.minimum.reduceat(r, offsets, axis=0)
                i = j
        return out, valid

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """One 64-bit key per (document, band); equal keys <=> equal band rows (up to 2^-64)."""
        n = signatures.shape[0]
        c = self.config
        if self.compiled:
            out = np.empty((n, c.bands), dtype=np.uint64)
            compiled_kernels().band_keys(np.ascontiguousarray(signatures, dtype=np.uint64), self.band_seeds, c.rows, out)
            return out
        sig = signatures.reshape(n, c.bands, c.rows)
        with np.errstate(over="ignore"):
            k = np.broadcast_to(self.band_seeds[None, :], (n, c.bands)).copy()
            for r in range(c.rows):
                k = mix64(k ^ sig[:, :, r])
        return k


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of equal MinHash values: an unbiased estimate of Jaccard similarity."""
    return float(np.mean(sig_a == sig_b))
