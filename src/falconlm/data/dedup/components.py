"""Connected components of a duplicate-pair graph in bounded memory (sorted runs on disk).

The graph is rewritten by alternating the large-star and small-star operations of Kiveris et
al., "Connected Components in MapReduce and Beyond" (SoCC 2014), until every component is a star
whose centre is its smallest node: then each leaf's one edge names its cluster root, the
component's first document in input order. Each operation is one streaming pass over the edges
sorted by (node, neighbour), in which a node's smallest neighbour is the first row of its group
(carried across blocks by GroupFirsts), so no node's neighbourhood ever has to fit in memory; the
rewritten edges go through an external sort. Memory is bounded by the budget whatever the corpus
or cluster sizes. The number of passes is O(log^2 n) in the worst case and a handful on
duplicate clusters.
"""

from __future__ import annotations

import heapq
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from falconlm.data.dedup.external_sort import ExternalSorter
from falconlm.data.dedup.merge import GroupFirsts
from falconlm.data.dedup.records import PAIR


def _both_directions(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Undirected edges {a, b} as directed rows (a, b) and (b, a), self-loops dropped."""
    keep = a != b
    a, b = a[keep], b[keep]
    out = np.empty(2 * len(a), dtype=PAIR)
    out["a"][: len(a)], out["b"][: len(a)] = a, b
    out["a"][len(a) :], out["b"][len(a) :] = b, a
    return out


def _rows(sorter: ExternalSorter) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(u, v, starts, m) per block of directed edges: m = min(u, u's smallest neighbour)."""
    firsts = GroupFirsts()
    for block in sorter.blocks():
        u, v = block["a"], block["b"]
        starts, vfirst = firsts(u, v)
        yield u, v, starts, np.minimum(u, vfirst)


def _large_star(u: np.ndarray, v: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Link every larger neighbour of each node to the smallest member of the node's neighbourhood."""
    up = v > u
    return _both_directions(v[up], m[up])


def _small_star(u: np.ndarray, v: np.ndarray, starts: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Link each node and its smaller neighbours to the smallest of them."""
    down = v < u
    own = starts & down  # a node's smaller neighbours come first in its group
    return _both_directions(np.concatenate([v[down], u[own]]), np.concatenate([m[down], m[own]]))


def _not_star(u: np.ndarray, v: np.ndarray, m: np.ndarray) -> bool:
    """True if some node has smaller and larger neighbours, or two smaller ones."""
    below = m < u  # the node has a smaller neighbour, m the smallest
    return bool(((v > u) & below).any() or ((v < u) & (v != m)).any())


@dataclass
class Components:
    """What `star_components` found, besides the removal rows it handed on."""

    pairs: int = 0  # distinct input pairs
    clusters: int = 0
    documents: int = 0  # documents in some cluster
    removed: int = 0  # leaves: every member but the root
    rounds: int = 0
    spilled_runs: int = 0
    size_histogram: Counter = field(default_factory=Counter)
    examples: list[dict] = field(default_factory=list)  # the largest clusters: root, size, first members


class _Clusters:
    """Sizes and first members of the star centres, fed block by block (a centre may span blocks)."""

    def __init__(self, examples: int) -> None:
        self.examples = examples
        self.best: list[tuple[int, int, list[int]]] = []  # min-heap of (size, -root, members)
        self.open: tuple[int, int, list[int]] | None = None  # the centre the last block ended in
        self.hist: Counter = Counter()

    def _close(self, root: int, size: int, members: list[int]) -> None:
        self.hist[size] += 1
        if self.examples:
            item = (size, -root, members)
            if len(self.best) < self.examples:
                heapq.heappush(self.best, item)
            elif item[:2] > self.best[0][:2]:
                heapq.heapreplace(self.best, item)

    def add(self, u: np.ndarray, v: np.ndarray, starts: np.ndarray, is_root_row: np.ndarray) -> None:
        """Count the rows of centres (rows whose node has only larger neighbours)."""
        ru, rv, rs = u[is_root_row], v[is_root_row], starts[is_root_row]
        if not len(ru):
            return
        i = 0
        if self.open is not None:
            if not rs[0]:  # the previous block's last centre goes on here
                i = int(np.argmax(rs)) if rs.any() else len(ru)
                root, size, members = self.open
                self.open = (root, size + i, members + rv[: max(0, 5 - len(members))].tolist())
            if i < len(ru):  # a new centre starts: the open one is complete
                self._close(*self.open)
                self.open = None
        bounds = (np.flatnonzero(rs[i:]) + i).tolist() + [len(ru)]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            entry = (int(ru[lo]), hi - lo + 1, [int(ru[lo])] + rv[lo : min(hi, lo + 4)].tolist())
            if hi == len(ru):
                self.open = entry  # may go on in the next block
            else:
                self._close(*entry)

    def finish(self) -> tuple[Counter, list[dict]]:
        """The size histogram and the largest clusters (ties: smallest root first)."""
        if self.open is not None:
            self._close(*self.open)
            self.open = None
        ordered = sorted(self.best, key=lambda t: (-t[0], -t[1]))
        return self.hist, [{"root": -nr, "size": s, "members": m} for s, nr, m in ordered]


def star_components(
    pair_blocks: Iterator[np.ndarray],
    work: Path,
    memory_bytes: int,
    removal_writer: Callable[[np.ndarray], None],
    examples: int = 3,
) -> Components:
    """Cluster the pairs; hand removal_writer (member, root) rows in member order.

    `pair_blocks` yields PAIR arrays (a, b) of duplicate documents; `work` is a scratch directory
    (emptied first, removed at the end). Two sorters are live at a time, half the budget each."""
    if work.exists():
        shutil.rmtree(work)
    result = Components()
    names = iter(range(1 << 30))

    def sorter() -> ExternalSorter:
        return ExternalSorter(work / f"sort{next(names):04d}", memory_bytes // 2)

    current = sorter()
    for block in pair_blocks:
        current.add(_both_directions(block["a"], block["b"]))
    while True:
        star = True
        nxt = sorter()
        for u, v, starts, m in _rows(current):
            if result.rounds == 0:
                result.pairs += int((u < v).sum())  # each distinct pair once, as (smaller, larger)
            star = star and not _not_star(u, v, m)
            nxt.add(_large_star(u, v, m))
        result.spilled_runs += current.spilled
        if star:
            break
        after = sorter()
        for u, v, starts, m in _rows(nxt):
            after.add(_small_star(u, v, starts, m))
        result.spilled_runs += nxt.spilled
        shutil.rmtree(current.run_dir, ignore_errors=True)
        shutil.rmtree(nxt.run_dir, ignore_errors=True)
        current = after
        result.rounds += 1

    # A star forest: a leaf's one neighbour is its root (smaller); a root's neighbours are its leaves.
    clusters = _Clusters(examples)
    for u, v, starts, m in _rows(current):
        leaf = m < u
        rows = starts & leaf
        rem = np.empty(int(rows.sum()), dtype=PAIR)
        rem["a"], rem["b"] = u[rows], v[rows]
        if len(rem):
            removal_writer(rem)
        result.removed += len(rem)
        clusters.add(u, v, starts, ~leaf)
    shutil.rmtree(work, ignore_errors=True)
    result.size_histogram, result.examples = clusters.finish()
    result.clusters = sum(result.size_histogram.values())
    result.documents = sum(k * n for k, n in result.size_histogram.items())
    return result
