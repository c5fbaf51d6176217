"""The compiled inner loops of MinHash dedup (numba), each bit-identical to its numpy reference.

- `signatures`: one fused loop per (shingle, hash) — multiply, add, Mersenne fold, running minimum —
  where the numpy path (minhash.py) makes seven passes over a (shingles x hashes) block;
- `band_keys`: the splitmix64 chain over each band's rows (MinHasher.band_keys);
- `ngram_hashes`: chained unit hashes -> splitmix64 -> sorted unique (shingles.combine_ngrams).

Same uint64 wrapping arithmetic and constants as the numpy code, so old signature runs and resumed
runs stay valid; tests compare both paths on the dedup fixtures. minhash.py and shingles.py import
this module on first use and take the numpy path when `ENABLED` is False: numba is not installed,
or FALCONLM_NUMBA=0. numba caches the machine code on disk (`cache=True`), so a worker process
compiles nothing after the first run on a machine.
"""

from __future__ import annotations

import os

import numpy as np

from falconlm.data.dedup.minhash import MERSENNE_61
from falconlm.data.dedup.shingles import _M1, _M2, _MUL

try:
    import numba
except ImportError:  # the `data` extra installs it; without it every caller takes the numpy path
    numba = None

ENV = "FALCONLM_NUMBA"  # "0": use the numpy kernels even when numba is installed
ENABLED = numba is not None and os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")
# Hash columns per tile: the tile's a, b and running minima (3 x 2 KiB) stay in L1 while every
# shingle of a document streams past them.
TILE = 256

# The numpy code's constants, as uint64 scalars (numba would turn uint64 (op) int64 into float64).
_P = MERSENNE_61
_S61 = np.uint64(61)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)

if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def mix64(z: np.uint64) -> np.uint64:
        """splitmix64 finaliser of one uint64 (shingles.mix64, scalar)."""
        z = z ^ (z >> _S30)
        z = z * _M1
        z = z ^ (z >> _S27)
        z = z * _M2
        return z ^ (z >> _S31)

    @numba.njit(cache=True, nogil=True)
    def signatures(x: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        """out[d, j] = min over shingles x[offsets[d]:offsets[d+1]] of the (a[j], b[j]) permutation."""
        # Tiles of TILE hash columns are copied to small local arrays: LLVM then sees no aliasing
        # with `out` and vectorises the j loop (4 lanes of 64-bit multiply on AVX-512, 16x numpy).
        n_docs = offsets.shape[0] - 1
        h = a.shape[0]
        acc = np.empty(TILE, np.uint64)
        ta = np.empty(TILE, np.uint64)
        tb = np.empty(TILE, np.uint64)
        for c0 in range(0, h, TILE):
            w = min(TILE, h - c0)
            for j in range(w):
                ta[j] = a[c0 + j]
                tb[j] = b[c0 + j]
            for d in range(n_docs):
                for j in range(w):
                    acc[j] = _P
                for i in range(offsets[d], offsets[d + 1]):
                    xi = x[i]
                    for j in range(w):
                        y = xi * ta[j] + tb[j]  # wraps mod 2^64, as numpy's uint64 product does
                        r = (y & _P) + (y >> _S61)
                        r = r - _P if r >= _P else r
                        acc[j] = min(acc[j], r)
                for j in range(w):
                    out[d, c0 + j] = acc[j]

    @numba.njit(cache=True, nogil=True)
    def band_keys(sig: np.ndarray, seeds: np.ndarray, rows: int, out: np.ndarray) -> None:
        """out[d, band] = the mix64 chain of seeds[band] over the band's `rows` signature values."""
        n, bands = out.shape
        for d in range(n):
            for band in range(bands):
                k = seeds[band]
                base = band * rows
                for r in range(rows):
                    k = mix64(k ^ sig[d, base + r])
                out[d, band] = k

    @numba.njit(cache=True, nogil=True)
    def ngram_hashes(units: np.ndarray, n: int) -> np.ndarray:
        """Sorted unique mix64 of every chained run of n unit hashes (len(units) >= n >= 1)."""
        m = units.shape[0] - n + 1
        h = np.empty(m, np.uint64)
        for i in range(m):
            v = units[i]
            for k in range(1, n):
                v = (v * _MUL) ^ units[i + k]
            h[i] = mix64(v)
        h.sort()
        keep = 1
        for i in range(1, m):
            if h[i] != h[keep - 1]:
                h[keep] = h[i]
                keep += 1
        return h[:keep].copy()
