"""What the three dedup methods share: settings, run context, document ids, shard I/O."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falconlm.data.document import Document
from falconlm.data.executor import ExecConfig
from falconlm.data.readers import ReaderOptions, read_documents
from falconlm.data.step import StepStats

SHARD_BITS = 32  # global document id = shard index << 32 | position in shard


def global_id(shard: int, index: int) -> int:
    """The corpus-wide id of the index-th document of a shard (orders documents as read)."""
    return (shard << SHARD_BITS) | index


def split_id(gid: int) -> tuple[int, int]:
    """(shard, index) of a global id."""
    return gid >> SHARD_BITS, gid & ((1 << SHARD_BITS) - 1)


@dataclass
class Resources:
    """Memory budget and I/O settings every dedup stage obeys."""

    memory_mb: float = 2048  # per task (worker); sizes spill buffers, merge chunks and exact-substring parts
    output_format: str = "jsonl.zst"
    write_removed: bool = False  # per-document record of what was removed, beside the output
    examples: int = 3  # example clusters / cuts kept for the report
    text_key: str = "text"
    id_key: str = "id"

    @property
    def memory_bytes(self) -> int:
        """The budget in bytes."""
        return int(self.memory_mb * (1 << 20))

    def reader(self) -> ReaderOptions:
        """Reader options for the input shards."""
        return ReaderOptions(text_key=self.text_key, id_key=self.id_key)


@dataclass
class DedupContext:
    """A run directory and executor settings (the same surface as recipes.StageContext)."""

    out_dir: Path
    exec: ExecConfig = field(default_factory=ExecConfig)
    last: bool = False

    def stage_dir(self, name: str) -> Path:
        """Where a stage writes its shards: DIR/data for the last stage, else DIR/work/<name>."""
        return self.out_dir / "data" if self.last else self.out_dir / "work" / name

    def marker_dir(self, name: str) -> Path:
        """Completion markers of a stage's tasks."""
        return self.out_dir / "markers" / name


def work_dir(ctx: Any, name: str) -> Path:
    """Intermediate files of a dedup stage (signatures, buckets, spans, ...)."""
    return Path(ctx.out_dir) / "dedup" / name


def removed_dir(ctx: Any, name: str, res: Resources) -> str:
    """DIR/removed/<stage> when per-document removal records are wanted, else ""."""
    return str(Path(ctx.out_dir) / "removed" / name) if res.write_removed else ""


def iter_shard(path: str | os.PathLike, res: Resources) -> Iterator[Document]:
    """Documents of one shard in file order (counted skips go to a throwaway StepStats)."""
    return read_documents(path, res.reader(), StepStats("read"))


def output_path(stage_dir: Path, shard: int, res: Resources) -> Path:
    """Output shard i of a stage (index-based names: inputs from several folders never collide)."""
    from falconlm.data.writers import shard_name

    return stage_dir / shard_name(f"{shard:05d}", res.output_format)


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
        """Write the file (temp name, then rename)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in self.lines), encoding="utf-8")
        os.replace(tmp, self.path)


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


def copy_without_removed(
    stage: str,
    shard: int,
    path: str | os.PathLike,
    out: str | os.PathLike,
    removals: Path,
    res: Resources,
    log: "RemovedLog",
    on_removed: Callable[[Document, int], str],
    on_document: Callable[[int, Document], None] | None = None,
    expected_docs: int = -1,
    counted_by: str = "",
) -> StepStats:
    """Copy a shard to `out` without the documents its removal list names; count what went where.

    `removals` is a sorted PAIR file (global document id, a value handed to on_removed, which logs
    the document and returns the drop reason); it is read alongside the shard a chunk at a time,
    so memory does not grow with the number of removals. on_document sees every document first.
    A shard that no longer holds the `expected_docs` the stage `counted_by` read is refused before
    anything is written."""
    from falconlm.data.dedup.records import PAIR, RecordReader
    from falconlm.data.writers import ShardWriter

    def rows() -> Iterator[tuple[int, int]]:
        for block in RecordReader(removals, PAIR).chunks(max(1024, res.memory_bytes // (8 * PAIR.itemsize))):
            yield from zip(block["a"].tolist(), block["b"].tolist())

    pending = rows()
    nxt = next(pending, None)
    st = StepStats(stage)
    with ShardWriter(out, res.output_format) as w:
        for i, doc in enumerate(iter_shard(path, res)):
            st.docs_in += 1
            st.chars_in += len(doc.text)
            gid = global_id(shard, i)
            if on_document is not None:
                on_document(gid, doc)
            if nxt is not None and nxt[0] == gid:
                st.dropped[on_removed(doc, nxt[1])] += 1
                nxt = next(pending, None)
                continue
            st.docs_out += 1
            st.chars_out += len(doc.text)
            w.write(doc)
        check_unchanged(path, st.docs_in, expected_docs, counted_by)
    log.close()
    return st
