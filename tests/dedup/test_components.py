"""Out-of-core connected components (dedup clusters) against a plain union-find, and its memory bound."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from falconlm.data.dedup.components import star_components
from falconlm.data.dedup.records import PAIR, ShardRemovalWriter, read_records
from falconlm.data.dedup.unionfind import UnionFind


def _pairs(a, b) -> np.ndarray:
    out = np.empty(len(a), dtype=PAIR)
    out["a"], out["b"] = a, b
    return out


def _reference(p: np.ndarray) -> dict[int, int]:
    """member -> root (smallest member) for every non-root member."""
    uf = UnionFind()
    for a, b in zip(p["a"].tolist(), p["b"].tolist()):
        uf.union(a, b)
    return {x: uf.find(x) for x in uf.parent if uf.find(x) != x}


def _run(p: np.ndarray, tmp_path, memory_bytes: int, chunk: int = 5000):
    rows = []
    blocks = (p[i : i + chunk] for i in range(0, len(p), chunk))
    found = star_components(blocks, tmp_path / "work", memory_bytes, rows.append, examples=3)
    got = np.concatenate(rows) if rows else np.empty(0, PAIR)
    return found, got


def _graphs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    shard = np.uint64(1 << 32)
    n = 6000
    chain = np.arange(1500, dtype=np.uint64)
    perm = rng.permutation(1500).astype(np.uint64) + np.uint64(10_000)
    star_ids = rng.choice(50_000, size=800, replace=False).astype(np.uint64)
    return {
        "random sparse": _pairs(rng.integers(0, n, 4000, dtype=np.uint64), rng.integers(0, n, 4000, dtype=np.uint64)),
        "long chain (diameter 1499)": _pairs(chain[:-1], chain[1:]),
        "shuffled chain": _pairs(perm[:-1], perm[1:]),
        "stars across shards": _pairs(np.repeat(star_ids[:8], 99) + shard * np.uint64(3), star_ids[8:800] + shard * rng.integers(0, 5, 792, dtype=np.uint64)),
        "cliques with repeats": _pairs(*np.array([(c * 100 + i, c * 100 + j) for c in range(30) for i in range(8) for j in range(8) if i != j], dtype=np.uint64).T),
    }


@pytest.mark.parametrize("budget", [16 << 10, 64 << 20], ids=["spilling", "in-memory"])
def test_components_equal_union_find(tmp_path, budget):
    rng = np.random.default_rng(7)
    for name, p in _graphs(rng).items():
        found, got = _run(p, tmp_path / name.replace(" ", "_"), budget)
        ref = _reference(p)
        assert dict(zip(got["a"].tolist(), got["b"].tolist())) == ref, name
        assert np.all(got["a"][1:] > got["a"][:-1]), "removal rows must come in member order"
        roots = set(ref.values())
        assert found.removed == len(ref) and found.clusters == len(roots), name
        assert found.documents == len(ref) + len(roots)
        assert sum(k * v for k, v in found.size_histogram.items()) == found.documents
        distinct = {(min(a, b), max(a, b)) for a, b in zip(p["a"].tolist(), p["b"].tolist()) if a != b}
        assert found.pairs == len(distinct)
        # the largest clusters, ties broken by the smaller root, with their first members in order
        sizes = {}
        for m, r in ref.items():
            sizes.setdefault(r, [r]).append(m)
        best = sorted(sizes.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:3]
        assert [(e["root"], e["size"], e["members"]) for e in found.examples] == [(r, len(ms), sorted(ms)[:5]) for r, ms in best]
        if budget < 1 << 20 and len(p) > 2000:
            assert found.spilled_runs > 0, f"{name}: the small budget should have spilled runs to disk"


def test_removal_files_per_shard(tmp_path):
    shard = 1 << 32
    p = _pairs(np.array([5, 2 * shard + 1, 7], np.uint64), np.array([shard + 3, 2 * shard + 9, 2 * shard + 8], np.uint64))
    writer = ShardRemovalWriter(tmp_path, 4)
    star_components(iter([p]), tmp_path / "work", 1 << 20, writer)
    writer.close()
    files = [read_records(tmp_path / f"remove.s{s:05d}.bin", PAIR) for s in range(4)]
    assert [len(f) for f in files] == [0, 1, 2, 0]
    assert files[1].tolist() == [(shard + 3, 5)]
    assert files[2].tolist() == [(2 * shard + 8, 7), (2 * shard + 9, 2 * shard + 1)]
    assert not (tmp_path / "work").exists(), "scratch runs are removed"


def _peak_bytes(n_pairs: int, tmp_path, budget: int) -> int:
    rng = np.random.default_rng(n_pairs)
    ids = rng.permutation(n_pairs * 2).astype(np.uint64)

    def blocks():
        # Clusters of 2-9 copies, fed in small chunks as the bucket stage's merge would.
        for i in range(0, n_pairs, 4096):
            a = ids[i : min(i + 4096, n_pairs)]
            yield _pairs(a - a % np.uint64(8), a)

    tracemalloc.start()
    tracemalloc.reset_peak()
    star_components(blocks(), tmp_path / f"w{n_pairs}", budget, lambda rows: None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


@pytest.mark.slow
def test_memory_stays_within_budget_as_pairs_grow(tmp_path):
    budget = 1 << 20
    small = _peak_bytes(25_000, tmp_path, budget)
    large = _peak_bytes(200_000, tmp_path, budget)  # 3.2 MB of pairs, 6.4 MB as directed edges
    assert large < budget, f"peak {large / 1e6:.1f} MB over a {budget / 1e6:.1f} MB budget"
    assert large < 1.5 * small + (256 << 10), f"peak grew with the input: {small / 1e6:.2f} -> {large / 1e6:.2f} MB"

