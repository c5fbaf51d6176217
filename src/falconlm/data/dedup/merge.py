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


def merge_groups(paths: Sequence[Path], dtype: np.dtype, chunk_records: int = 1 << 16) -> Iterator[np.ndarray]:
    """Merge sorted files by (first field, second field); yield sorted blocks in which every
    first-field value appears in exactly one block (so groups of equal keys are never split).

    Memory holds about `chunk_records` records per file (more only while one key spans chunks)."""
    key = dtype.names[0]
    second = dtype.names[1]
    sources = [_Source(RecordReader(p, dtype), chunk_records) for p in paths]
    for s in sources:
        if not s.reader.sorted and len(s.reader):
            raise s.reader.error("expected a sorted record file")
        s.refill()
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
        parts = []
        for s, t in zip(live, take):
            if t:
                parts.append(s.buf[:t])
                s.buf = s.buf[t:]
        block = np.concatenate(parts)
        order = np.lexsort((block[second], block[key]))
        yield block[order]
