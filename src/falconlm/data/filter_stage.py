"""The filter stage of the recipe: one task per input file (or slice), streaming every document
through URL filter -> extraction -> language id -> repetition -> quality -> line corrections, and
writing one shard per task (plus, optionally, a shard of dropped documents)."""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from falconlm.data.document import Document
from falconlm.data.executor import Stage, StageResult, report_progress, run_stage
from falconlm.data.readers import read_documents
from falconlm.data.step import PipelineStep, StepStats, run_steps
from falconlm.data.writers import ShardWriter, shard_name

if TYPE_CHECKING:  # recipes imports this module lazily; no import cycle at run time
    from falconlm.data.recipes import RefineConfig, StageContext

EXAMPLE_CHARS = 600


def build_filter_steps(config: "RefineConfig") -> list[PipelineStep]:
    """The per-document steps, in RefinedWeb order, built from the config."""
    from falconlm.data.extract import Extract
    from falconlm.data.filters.language import LanguageFilter
    from falconlm.data.filters.lines import LineFilter
    from falconlm.data.filters.quality import QualityFilter
    from falconlm.data.filters.repetition import RepetitionFilter
    from falconlm.data.filters.url import URLFilter

    return [
        URLFilter(config.url),  # on the URL alone, before any heavy work
        Extract(config.extract),  # HTML -> text (JSON/Parquet inputs that are already text: see below)
        LanguageFilter(config.language),  # -> RW-Raw
        RepetitionFilter(config.repetition),
        QualityFilter(config.quality),
        LineFilter(config.lines),  # -> RW-Filtered
    ]


def _stem(index: int, path: Path, slice_index: int, num_slices: int) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name)
    s = f"{index:05d}-{base}"
    return s if num_slices == 1 else f"{s}-s{slice_index:03d}of{num_slices:03d}"


@dataclass
class FilterTask:
    """Filter one input (slice) into one output shard."""

    id: str
    input_path: str
    output_path: str
    dropped_path: str | None
    config: "RefineConfig"
    size_bytes: int = 0

    def run(self) -> dict[str, Any]:
        """Stream the input through the steps; write the shard atomically; return stats."""
        steps = build_filter_steps(self.config)
        if not _is_html_input(self.input_path):
            # JSONL/Parquet inputs already hold text: skip extraction, keep everything else.
            steps = [s for s in steps if s.name != "extract"]
        read_stats = StepStats("read")
        examples: dict[str, list[dict[str, Any]]] = {}
        per_key: Counter = Counter()
        k = self.config.examples_per_reason
        dropped_writer = ShardWriter(self.dropped_path) if self.dropped_path else None

        def on_drop(doc: Document, step: str, reason: str) -> None:
            key = f"{step}/{reason}"
            if per_key[key] < k:
                per_key[key] += 1
                examples.setdefault(key, []).append(
                    {"id": doc.id, "url": doc.url, "text": doc.text[:EXAMPLE_CHARS]}
                )
            if dropped_writer is not None:
                meta = {**doc.metadata, "dropped_step": step, "dropped_reason": reason}
                dropped_writer.write(Document(doc.id, doc.text, doc.url, meta))

        position = _Position(self.size_bytes, os.path.getsize(self.input_path))
        docs = read_documents(self.input_path, self.config.reader, read_stats, position.update)
        docs = _progress(docs, position)
        stream, stats = run_steps(docs, steps, on_drop)
        if dropped_writer is not None:
            dropped_writer.open()
        try:
            with ShardWriter(self.output_path, self.config.output_format) as out:
                for doc in stream:
                    out.write(doc)
            if dropped_writer is not None:
                dropped_writer.close()
        except BaseException:
            if dropped_writer is not None:
                dropped_writer.abort()
            raise
        # Records skipped by the reader (malformed, not HTML...) count as read and dropped.
        read_stats.docs_in = read_stats.docs_out + sum(read_stats.dropped.values())
        return {
            "task": self.id,
            "input": self.input_path,
            "output": self.output_path,
            "docs_read": read_stats.docs_out,
            "stats": [read_stats.to_dict()] + [s.to_dict() for s in stats],
            "examples": examples,
        }


def _is_html_input(path: str) -> bool:
    from falconlm.data.readers import input_format

    return input_format(path) == "warc"


class _Position:
    """Turns the reader's file positions into progress-bar byte increments of this task's share
    (`share_bytes`; a slice of a file reads the whole file but owns only part of its bytes)."""

    def __init__(self, share_bytes: int, file_bytes: int) -> None:
        self.share_bytes = share_bytes
        self.file_bytes = max(file_bytes, 1)
        self.reported = 0

    def update(self, pos: int) -> None:
        """Called by the reader with the bytes of the file consumed so far."""
        share = min(self.share_bytes, self.share_bytes * pos // self.file_bytes)
        if share > self.reported:
            report_progress(nbytes=share - self.reported)
            self.reported = share

    def finish(self) -> None:
        """Account for whatever the last position update did not cover."""
        if self.share_bytes > self.reported:
            report_progress(nbytes=self.share_bytes - self.reported)
            self.reported = self.share_bytes


def _progress(docs: Any, position: _Position) -> Any:
    """Report documents as they stream by; bytes come from the reader's position hook."""
    n = 0
    for doc in docs:
        n += 1
        if n % 64 == 0:
            report_progress(docs=64)
        yield doc
    report_progress(docs=n % 64)
    position.finish()


class FilterStage:
    """RefinedWeb document preparation + filtering, one task per input file or slice."""

    name = "filter"

    def __init__(self, slices_per_file: int = 1) -> None:
        self.slices_per_file = slices_per_file

    def tasks(self, inputs: list[Path], ctx: "StageContext") -> list[FilterTask]:
        """One FilterTask per input (slice), with deterministic output names."""
        out_dir = ctx.stage_dir(self.name)
        fmt = ctx.config.output_format
        tasks = []
        n = max(1, self.slices_per_file)
        for i, path in enumerate(inputs):
            size = os.path.getsize(path)
            for s in range(n):
                stem = _stem(i, Path(path), s, n)
                cfg = ctx.config if n == 1 else replace(
                    ctx.config, reader=replace(ctx.config.reader, slice_index=s, num_slices=n)
                )
                tasks.append(
                    FilterTask(
                        id=stem,
                        input_path=str(path),
                        output_path=str(out_dir / shard_name(stem, fmt)),
                        dropped_path=str(ctx.dropped_dir(self.name) / shard_name(stem, "jsonl.zst"))
                        if ctx.config.keep_dropped
                        else None,
                        config=cfg,
                        size_bytes=size // n,
                    )
                )
        return tasks

    def run(self, inputs: list[Path], ctx: "StageContext") -> StageResult:
        """Run (or resume) the tasks and merge their stats."""
        tasks = self.tasks(inputs, ctx)
        # A killed run can leave temp files behind (never under a final name); clear them.
        for d in (ctx.stage_dir(self.name), ctx.dropped_dir(self.name)):
            if d.is_dir():
                for stale in d.glob("*.tmp-*"):
                    stale.unlink(missing_ok=True)
        results = run_stage(Stage(self.name, tasks, ctx.marker_dir(self.name)), ctx.exec)
        merged = merge_step_stats([r["stats"] for r in results])
        examples: dict[str, list[dict[str, Any]]] = {}
        for r in results:
            for key, items in r.get("examples", {}).items():
                have = examples.setdefault(key, [])
                have.extend(items[: max(0, ctx.config.examples_per_reason - len(have))])
        return StageResult(
            outputs=[Path(t.output_path) for t in tasks],
            stats=[{**s.to_dict(), "stage": self.name} for s in merged],
            examples=examples,
        )


def merge_step_stats(per_task: list[list[dict[str, Any]]]) -> list[StepStats]:
    """Sum each step's counts across tasks (steps matched by name, order of first appearance)."""
    merged: dict[str, StepStats] = {}
    for stats in per_task:
        for d in stats:
            s = StepStats.from_dict(d)
            if s.name in merged:
                merged[s.name].merge(s)
            else:
                merged[s.name] = s
    return list(merged.values())
