"""What the three dedup methods share: document ids, the fields of their tasks, shard I/O."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falconlm.atomic import atomic_write_text
from falconlm.data.config import Resources
from falconlm.data.document import Document
from falconlm.data.readers import ReaderOptions, read_documents
from falconlm.data.step import StepStats

SHARD_BITS = 32  # global document id = shard index << 32 | position in shard


def global_id(shard: int, index: int) -> int:
    """The corpus-wide id of the index-th document of a shard (orders documents as read)."""
    return (shard << SHARD_BITS) | index


def split_id(gid: int) -> tuple[int, int]:
    """(shard, index) of a global id."""
    return gid >> SHARD_BITS, gid & ((1 << SHARD_BITS) - 1)


def work_dir(ctx: Any, name: str) -> Path:
    """Intermediate files of a dedup stage (signatures, buckets, spans, ...)."""
    return Path(ctx.out_dir) / "dedup" / name


def removed_dir(ctx: Any, name: str, res: Resources) -> str:
    """DIR/removed/<stage> when per-document removal records are wanted, else ""."""
    return str(Path(ctx.out_dir) / "removed" / name) if res.write_removed else ""


def iter_shard(path: str | os.PathLike, reader: ReaderOptions) -> Iterator[Document]:
    """Documents of one shard in file order (counted skips go to a throwaway StepStats)."""
    return read_documents(path, reader, StepStats("read"))


def output_path(stage_dir: Path, shard: int, fmt: str) -> Path:
    """Output shard i of a stage (index-based names: inputs from several folders never collide)."""
    from falconlm.data.writers import shard_name

    return stage_dir / shard_name(f"{shard:05d}", fmt)


def size_of(path: str | os.PathLike) -> int:
    """File size in bytes, 0 if it vanished."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


class RemovedLog:
    """Optional JSONL of removed/cut documents beside the output, written atomically."""

    def __init__(self, path: Path | None):
        self.path = path
        self.lines: list[str] = []

    def add(self, record: dict[str, Any]) -> None:
        """Remember one record (no-op when disabled)."""
        if self.path is not None:
            self.lines.append(json.dumps(record, ensure_ascii=False, sort_keys=True))

    def close(self) -> None:
        """Write the file atomically."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, "".join(line + "\n" for line in self.lines))


def check_unchanged(path: str | os.PathLike, read: int, expected: int, stage: str) -> None:
    """Raise if a shard holds another number of documents than an earlier stage saw in it
    (document ids are positions, so a changed input would silently misalign them)."""
    from falconlm.errors import FalconError

    if expected >= 0 and read != expected:
        raise FalconError(
            f"{path} holds {read} documents but held {expected} when the {stage} stage read it; "
            "it changed during the run: start again with a new --out"
        )


def stats_dict(stats: StepStats, **extra: Any) -> dict[str, Any]:
    """StepStats.to_dict() plus stage-specific extras (ignored by StepStats.from_dict)."""
    d = stats.to_dict()
    d.update(extra)
    return d


@dataclass(kw_only=True)
class DedupTask:
    """What every dedup task carries (`id` and `size_bytes` are what the executor needs)."""

    id: str  # names the task's completion marker; stable across runs
    work: str  # the stage's folder of intermediate files
    res: Resources  # memory budget and side outputs
    size_bytes: int = 0  # input bytes, for the progress bar


@dataclass(kw_only=True)
class ShardTask(DedupTask):
    """A task over one input shard of the stage."""

    shard: int  # the shard's index among the stage's inputs: the high bits of its documents' global ids
    path: str  # the shard file
    reader: ReaderOptions = field(default_factory=ReaderOptions)  # how to read it

    def documents(self) -> Iterator[Document]:
        """The shard's documents in file order."""
        return iter_shard(self.path, self.reader)


@dataclass(kw_only=True)
class OutputTask(ShardTask):
    """The last task of a stage for one shard: writes the documents the stage keeps (cut where it cuts)."""

    out: str  # the output shard
    output_format: str = "jsonl.zst"
    removed_dir: str = ""  # where the per-document removal record goes ("" = nowhere)
    expected_docs: int = -1  # documents an earlier task of the stage read from this shard (-1: unknown)

    def removed_log(self) -> RemovedLog:
        """The per-document removal record of this shard (a no-op without removed_dir)."""
        return RemovedLog(Path(self.removed_dir) / f"{self.shard:05d}.jsonl" if self.removed_dir else None)

    def check_unchanged(self, read: int, counted_by: str) -> None:
        """Raise if the shard now holds another number of documents than `counted_by` read."""
        check_unchanged(self.path, read, self.expected_docs, counted_by)

    def copy_without_removed(
        self,
        stage: str,
        removals: Path,
        on_removed: Callable[[Document, int], str],
        on_document: Callable[[int, Document], None] | None = None,
        counted_by: str = "",
    ) -> StepStats:
        """Copy the shard to `out` without the documents its removal list names; count what went where.

        `removals` is a sorted PAIR file (global document id, a value handed to on_removed, which
        logs the document and returns the drop reason); it is read alongside the shard a chunk at a
        time, so memory does not grow with the number of removals. on_document sees every document
        first. A shard that no longer holds the documents `counted_by` read is refused before
        anything is written."""
        from falconlm.data.dedup.records import PAIR, RecordReader
        from falconlm.data.writers import ShardWriter

        def rows() -> Iterator[tuple[int, int]]:
            for block in RecordReader(removals, PAIR).chunks(max(1024, self.res.memory_bytes // (8 * PAIR.itemsize))):
                yield from zip(block["a"].tolist(), block["b"].tolist())

        pending = rows()
        nxt = next(pending, None)
        st = StepStats(stage)
        with ShardWriter(self.out, self.output_format) as w:
            for i, doc in enumerate(self.documents()):
                st.docs_in += 1
                st.chars_in += len(doc.text)
                gid = global_id(self.shard, i)
                if on_document is not None:
                    on_document(gid, doc)
                if nxt is not None and nxt[0] == gid:
                    st.dropped[on_removed(doc, nxt[1])] += 1
                    nxt = next(pending, None)
                    continue
                st.docs_out += 1
                st.chars_out += len(doc.text)
                w.write(doc)
            self.check_unchanged(st.docs_in, counted_by)
        return st
