"""Bounded-memory k-way merge of sorted record files into blocks of complete key groups."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from falconlm.data.dedup.records import RecordReader


class _Source:
    def __init__(self, reader: RecordReader, chunk: int):
        self.reader = reader
        self.it = reader.chunks(chunk)
        self.buf = np.empty(0, dtype=reader.dtype)
        self.done = False

    def refill(self) -> None:
        """Append the next chunk to the buffer (mark done at the end of the file)."""
        try:
            nxt = next(self.it)
        except StopIteration:
            self.done = True
            return
        self.buf = np.concatenate([self.buf, nxt]) if len(self.buf) else nxt


def _open_sorted(paths: Sequence[Path], dtype: np.dtype, chunk_records: int) -> list[_Source]:
    """A source per file, each checked to be sorted and holding its first chunk."""
    sources = [_Source(RecordReader(p, dtype), chunk_records) for p in paths]
    for s in sources:
        if not s.reader.sorted and len(s.reader):
            raise s.reader.error("expected a sorted record file")
        s.refill()
    return sources


def _take(sources: list[_Source], counts: list[int]) -> np.ndarray:
    """Remove the first counts[i] buffered records of each source; return them together (unsorted)."""
    parts = []
    for s, t in zip(sources, counts):
        if t:
            parts.append(s.buf[:t])
            s.buf = s.buf[t:]
    return np.concatenate(parts)


def merge_groups(paths: Sequence[Path], dtype: np.dtype, chunk_records: int = 1 << 16) -> Iterator[np.ndarray]:
    """Merge sorted files by (first field, second field); yield sorted blocks in which every
    first-field value appears in exactly one block (so groups of equal keys are never split).

    Memory holds about `chunk_records` records per file (more only while one key spans chunks)."""
    key = dtype.names[0]
    second = dtype.names[1]
    sources = _open_sorted(paths, dtype, chunk_records)
    while True:
        live = [s for s in sources if len(s.buf) or not s.done]
        if not live:
            return
        for s in live:
            if not len(s.buf) and not s.done:
                s.refill()
        pending = [s for s in live if not s.done]
        if pending:
            # Every unread record of a pending source is >= the last key in its buffer.
            bound = min(s.buf[key][-1] for s in pending if len(s.buf))
            take = [np.searchsorted(s.buf[key], bound, side="left") for s in live]
        else:
            take = [len(s.buf) for s in live]
        if sum(take) == 0:
            # All buffered keys of some pending source equal the bound: read further there.
            for s in pending:
                if len(s.buf) and s.buf[key][-1] == bound:
                    s.refill()
            continue
        block = _take(live, take)
        yield block[np.lexsort((block[second], block[key]))]


def _take_upto(buf: np.ndarray, k0: str, k1: str, bound: tuple) -> int:
    """How many leading rows of a sorted buffer are <= bound in (k0, k1) order."""
    lo = np.searchsorted(buf[k0], bound[0], side="left")
    hi = np.searchsorted(buf[k0], bound[0], side="right")
    return int(lo + np.searchsorted(buf[k1][lo:hi], bound[1], side="right"))


def merge_sorted(paths: Sequence[Path], dtype: np.dtype, chunk_records: int = 1 << 16) -> Iterator[np.ndarray]:
    """Merge sorted files by (first field, second field) into sorted blocks of bounded size.

    Unlike merge_groups, a group of equal first fields may span blocks (pair this with
    `GroupFirsts`), so memory holds at most about `chunk_records` records per file, always.
    Equal records from different files land in the same block."""
    k0, k1 = dtype.names[0], dtype.names[1]
    sources = _open_sorted(paths, dtype, chunk_records)
    while True:
        for s in sources:
            if not len(s.buf) and not s.done:
                s.refill()
        live = [s for s in sources if len(s.buf)]
        if not live:
            return
        pending = [s for s in live if not s.done]
        if pending:
            # Unread records of a pending source are >= its last buffered one; the smallest such
            # bound is safe to emit up to, and it empties at least one buffer.
            bound = min((s.buf[k0][-1], s.buf[k1][-1]) for s in pending)
            take = [_take_upto(s.buf, k0, k1, bound) for s in live]
        else:
            take = [len(s.buf) for s in live]
        block = _take(live, take)
        yield block[np.lexsort((block[k1], block[k0]))]


class GroupFirsts:
    """Across consecutive sorted blocks: each row's group start flag and the group's first value."""

    def __init__(self) -> None:
        self.key = None
        self.first_value = None

    def __call__(self, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(starts, firsts): starts[i] is True where a new key begins (not a continuation of the
        previous block's last key); firsts[i] is the first value of row i's key group."""
        if not len(keys):
            return np.zeros(0, dtype=bool), values[:0]
        starts = np.ones(len(keys), dtype=bool)
        starts[1:] = keys[1:] != keys[:-1]
        continues = self.key is not None and keys[0] == self.key
        group_firsts = values[starts]
        if continues:
            starts[0] = False
            group_firsts = np.concatenate([np.array([self.first_value], dtype=values.dtype), group_firsts[1:]])
            index = np.cumsum(starts)
        else:
            index = np.cumsum(starts) - 1
        firsts = group_firsts[index]
        self.key, self.first_value = keys[-1], firsts[-1]
        return starts, firsts
