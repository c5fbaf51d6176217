"""Sort PAIR records larger than memory: sorted runs spilled to disk, merged with a bounded fan-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from falconlm.data.dedup.merge import merge_sorted
from falconlm.data.dedup.records import PAIR, RecordWriter, write_records

# Bytes of memory per record held: the buffer, lexsort's order and the sorted copy, plus the
# per-row arrays the caller derives from a merged block.
BYTES_PER_RECORD = 128
_READ = 4096  # records per file read during a merge (64 KiB), less for tiny budgets


def drop_repeats(rows: np.ndarray) -> np.ndarray:
    """Sorted rows without adjacent repeats."""
    if len(rows) < 2:
        return rows
    keep = np.ones(len(rows), dtype=bool)
    keep[1:] = (rows["a"][1:] != rows["a"][:-1]) | (rows["b"][1:] != rows["b"][:-1])
    return rows if keep.all() else rows[keep]


def sorted_unique(rows: np.ndarray) -> np.ndarray:
    """PAIR rows sorted by (a, b) without repeats (lexsort: faster than np.unique on records)."""
    return drop_repeats(rows[np.lexsort((rows["b"], rows["a"]))])


class ExternalSorter:
    """Collect PAIR records; read them back sorted by (a, b), without repeats, within a memory budget.

    Half the budget buffers records (spilled as a sorted run when full); the other half serves
    the merge, which combines a bounded number of runs at once (reading 4,096 records of each) and merges runs in
    rounds beforehand when there are more. Blocks read back are bounded in size; a group of equal
    `a` may span blocks."""

    def __init__(self, run_dir: Path, memory_bytes: int) -> None:
        self.run_dir = run_dir
        self.in_flight = max(256, memory_bytes // (2 * BYTES_PER_RECORD))
        self.read = max(64, min(_READ, self.in_flight // 8))
        self.buffer: list[np.ndarray] = []
        self.held = 0
        self.runs: list[Path] = []
        self.spilled = 0  # runs written, merged ones included
        self.final: np.ndarray | None = None  # the sorted records when they never left memory

    def add(self, records: np.ndarray) -> None:
        """Queue records (any order, repeats allowed)."""
        if not len(records):
            return
        self.buffer.append(records)
        self.held += len(records)
        if self.held >= self.in_flight:
            self._spill()

    def _take_buffer(self) -> np.ndarray:
        data = np.concatenate(self.buffer) if self.buffer else np.empty(0, PAIR)
        self.buffer, self.held = [], 0
        return sorted_unique(data)

    def _new_run(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.spilled += 1
        return self.run_dir / f"run{self.spilled:06d}.bin"

    def _spill(self) -> None:
        path = self._new_run()
        write_records(path, self._take_buffer(), sorted_=True)
        self.runs.append(path)

    def _fan_in(self) -> int:
        return max(2, self.in_flight // self.read)

    def blocks(self) -> Iterator[np.ndarray]:
        """Sorted, repeat-free blocks of records (re-readable)."""
        if not self.runs:
            if self.buffer or self.final is None:
                self.final = self._take_buffer()  # it fits in the budget: kept in memory
            for i in range(0, len(self.final), self.in_flight):
                yield self.final[i : i + self.in_flight]
            return
        if self.buffer:
            self._spill()
        while len(self.runs) > self._fan_in():
            group, self.runs = self.runs[: self._fan_in()], self.runs[self._fan_in() :]
            path = self._new_run()
            with RecordWriter(path, PAIR, sorted_=True) as out:
                for block in self._merge(group):
                    out.write(block)
            for p in group:
                p.unlink()
            self.runs.append(path)
        yield from self._merge(self.runs)

    def _merge(self, runs: list[Path]) -> Iterator[np.ndarray]:
        chunk = max(self.read, self.in_flight // len(runs))
        last = None
        for block in merge_sorted(runs, PAIR, chunk):
            block = drop_repeats(block)
            if last is not None and len(block) and block[0] == last:
                block = block[1:]  # a repeat straddling two blocks
            if len(block):
                last = block[-1]
                yield block
