"""Vectorised union-find over integer node ids: clusters from duplicate pairs.

Roots are always the smallest id of their cluster, which makes the kept document of each
cluster deterministic: the first one in input order (shard order, then position in shard)."""

from __future__ import annotations

import numpy as np


def _compress(parent: np.ndarray) -> np.ndarray:
    """Pointer jumping until every node points at its root."""
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent = grand


def connected_roots(u: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """Root (smallest member) of each of n nodes after uniting every pair (u[i], v[i]).

    Hook-and-compress: each round hooks the larger root of every still-split pair under the
    smaller one (np.minimum.at keeps the smallest candidate), then compresses; the number of
    rounds is logarithmic in practice and every operation is a numpy pass over the pairs."""
    parent = np.arange(n, dtype=np.int64)
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    while len(u):
        ru, rv = parent[u], parent[v]
        split = ru != rv
        if not split.any():
            break
        ru, rv = ru[split], rv[split]
        u, v = u[split], v[split]
        lo, hi = np.minimum(ru, rv), np.maximum(ru, rv)
        np.minimum.at(parent, hi, lo)
        parent = _compress(parent)
    return parent


def clusters_from_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(members, roots): every id that appears in a pair and the smallest id of its cluster."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    roots = connected_roots(inv[: len(a)], inv[len(a) :], len(nodes))
    return nodes, nodes[roots]


class UnionFind:
    """A small scalar union-find (for streaming use and as the reference in tests)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        """Root of x, with path halving."""
        p = self.parent
        p.setdefault(x, x)
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, x: int, y: int) -> None:
        """Merge the clusters of x and y; the smaller root wins."""
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            lo, hi = (rx, ry) if rx < ry else (ry, rx)
            self.parent[hi] = lo
