"""Intermediate record files: a small header, fixed-size records, atomically written, validated on read.

Layout: magic `FLDEDUP1` | uint32 record size | uint32 flags (bit 0: sorted) | uint64 count |
uint64 xxh64 of the payload | payload. Reading checks the size against the header, the sort
order of every chunk and across chunks, and the checksum at the end, and names the file in any
error, so a truncated or corrupted intermediate never turns silently into wrong output."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xxhash

from falconlm.atomic import atomic_open, commit, temp_path
from falconlm.errors import FalconError

MAGIC = b"FLDEDUP1"
_HEADER = struct.Struct("<8sIIQQ")
HEADER_SIZE = _HEADER.size

# (key, doc): an LSH band key and a global document id (shard << 32 | index).
KEY_DOC = np.dtype([("key", "<u8"), ("doc", "<u8")])
# (a, b): a duplicate pair of global document ids, or (doc, cluster root) in removal lists.
PAIR = np.dtype([("a", "<u8"), ("b", "<u8")])


def write_records(path: str | os.PathLike, records: np.ndarray, sorted_: bool = False) -> None:
    """Write a structured array atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = np.ascontiguousarray(records).tobytes()
    header = _HEADER.pack(MAGIC, records.dtype.itemsize, 1 if sorted_ else 0, len(records), xxhash.xxh64_intdigest(payload))
    with atomic_open(path, "wb") as f:
        f.write(header)
        f.write(payload)


def _sorted_ok(chunk: np.ndarray) -> bool:
    if len(chunk) < 2:
        return True
    names = chunk.dtype.names
    k0 = chunk[names[0]]
    if len(names) == 1:
        return bool(np.all(k0[1:] >= k0[:-1]))
    k1 = chunk[names[1]]
    return bool(np.all((k0[1:] > k0[:-1]) | ((k0[1:] == k0[:-1]) & (k1[1:] >= k1[:-1]))))


class RecordReader:
    """Validated, chunked reading of one record file (memory bounded by the chunk size)."""

    def __init__(self, path: str | os.PathLike, dtype: np.dtype):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(HEADER_SIZE)
        except OSError as exc:
            raise FalconError(f"cannot read intermediate file {self.path}: {exc.strerror}") from None
        if len(head) < HEADER_SIZE:
            raise self.error("shorter than its header")
        magic, recsize, flags, count, checksum = _HEADER.unpack(head)
        if magic != MAGIC:
            raise self.error("not a falconlm dedup record file (bad magic)")
        if recsize != self.dtype.itemsize:
            raise self.error(f"record size {recsize} != expected {self.dtype.itemsize}")
        if size != HEADER_SIZE + count * recsize:
            raise self.error(f"size {size} bytes does not match its header ({count} records of {recsize} bytes)")
        self.count = count
        self.sorted = bool(flags & 1)
        self.checksum = checksum

    def error(self, what: str) -> FalconError:
        """A FalconError naming this file."""
        return FalconError(
            f"corrupt intermediate file {self.path}: {what}; delete it (and its stage's .done markers) to recompute it"
        )

    def __len__(self) -> int:
        return self.count

    def chunks(self, chunk_records: int = 1 << 20) -> Iterator[np.ndarray]:
        """Yield the records in chunks, checking sort order and finally the checksum."""
        h = xxhash.xxh64()
        last = None
        with open(self.path, "rb") as f:
            f.seek(HEADER_SIZE)
            left = self.count
            while left:
                n = min(left, chunk_records)
                buf = f.read(n * self.dtype.itemsize)
                if len(buf) != n * self.dtype.itemsize:
                    raise self.error("truncated while reading")
                h.update(buf)
                chunk = np.frombuffer(buf, dtype=self.dtype)
                if self.sorted:
                    if not _sorted_ok(chunk) or (last is not None and not _sorted_ok(np.concatenate([last, chunk[:1]]))):
                        raise self.error("records are not in sorted order")
                    last = chunk[-1:].copy()
                left -= n
                if not left and h.intdigest() != self.checksum:
                    raise self.error("checksum mismatch")
                yield chunk

    def read_all(self) -> np.ndarray:
        """All records (validated)."""
        parts = list(self.chunks())
        return np.concatenate(parts) if parts else np.empty(0, dtype=self.dtype)


def read_records(path: str | os.PathLike, dtype: np.dtype) -> np.ndarray:
    """Read and validate a whole record file."""
    return RecordReader(path, dtype).read_all()


class RecordWriter:
    """Streaming, atomic writer: append chunks, then `close()` writes the header and commits the file."""

    def __init__(self, path: str | os.PathLike, dtype: np.dtype, sorted_: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self.sorted = sorted_
        self.tmp = temp_path(self.path)
        self.f = open(self.tmp, "wb")
        self.f.write(b"\0" * HEADER_SIZE)
        self.h = xxhash.xxh64()
        self.count = 0

    def write(self, chunk: np.ndarray) -> None:
        """Append records."""
        buf = np.ascontiguousarray(chunk.astype(self.dtype, copy=False)).tobytes()
        self.h.update(buf)
        self.f.write(buf)
        self.count += len(chunk)

    def close(self) -> None:
        """Write the header and commit the file (fsync, rename into place)."""
        self.f.seek(0)
        self.f.write(_HEADER.pack(MAGIC, self.dtype.itemsize, 1 if self.sorted else 0, self.count, self.h.intdigest()))
        self.f.close()
        commit(self.tmp, self.path)

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.f.close()
            self.tmp.unlink(missing_ok=True)


class ShardRemovalWriter:
    """Route PAIR rows, arriving sorted by document (a), to one sorted file per shard.

    `name` formats a shard number into the file name, e.g. "remove.s{:05d}.bin"."""

    def __init__(self, directory: Path, n_shards: int, name: str = "remove.s{:05d}.bin") -> None:
        self.directory = directory
        self.n_shards = n_shards
        self.name = name
        self.shard = 0
        self.writer = RecordWriter(directory / name.format(0), PAIR, sorted_=True)

    def _advance_to(self, shard: int) -> None:
        while self.shard < shard:
            self.writer.close()
            self.shard += 1
            self.writer = RecordWriter(self.directory / self.name.format(self.shard), PAIR, sorted_=True)

    def __call__(self, rows: np.ndarray) -> None:
        shard_of = (rows["a"] >> np.uint64(32)).astype(np.int64)
        present, starts = np.unique(shard_of, return_index=True)  # rows come sorted by shard
        ends = np.append(starts[1:], len(rows))
        for s, lo, hi in zip(present.tolist(), starts.tolist(), ends.tolist()):
            self._advance_to(s)
            self.writer.write(rows[lo:hi])

    def close(self) -> None:
        """Write the remaining (possibly empty) files."""
        self._advance_to(self.n_shards - 1)
        self.writer.close()
