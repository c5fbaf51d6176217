"""The filter stage of a recipe: one task per input file (or slice), streaming every document
through the recipe's per-document steps (recipes.py: URL filter -> extraction -> language id ->
repetition -> quality -> line corrections) and writing one shard per task (plus, optionally, a
shard of dropped documents)."""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from falconlm.data.config import RefineConfig
from falconlm.data.document import Document
from falconlm.data.executor import Stage, report_progress, run_stage
from falconlm.data.extract import Extract
from falconlm.data.readers import ALL_SUFFIXES, TEXT_SUFFIXES, ReaderOptions, ReadReport, input_format, read_documents
from falconlm.data.stage import StageContext, StageResult
from falconlm.data.step import PipelineStep, Step, StepStats, run_steps
from falconlm.data.writers import ShardWriter, shard_name

EXAMPLE_CHARS = 600


def build_steps(steps: list[Step], html: bool = True) -> list[PipelineStep]:
    """The working steps; inputs that already hold text (JSONL/Parquet) skip extraction."""
    return [s.build() for s in steps if html or s.kind is not Extract]


def _stem(index: int, path: Path, slice_index: int, num_slices: int) -> str:
    """`00003-name` (plus `-s001of004` for a slice): the input's name without its format suffix, so shards read `name.<output format>`."""
    name = path.name
    suffix = max((s for s in ALL_SUFFIXES + TEXT_SUFFIXES if name.lower().endswith(s)), key=len, default="")
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name[: len(name) - len(suffix)] or name)
    s = f"{index:05d}-{base}"
    return s if num_slices == 1 else f"{s}-s{slice_index:03d}of{num_slices:03d}"


@dataclass(kw_only=True)
class FilterTask:
    """Filter one input (slice) into one output shard."""

    id: str
    input_path: str
    output_path: str
    dropped_path: str | None  # where dropped documents go (keep_dropped), else None
    steps: list[Step]
    reader: ReaderOptions  # with this task's slice of the file
    output_format: str
    examples_per_reason: int
    size_bytes: int = 0

    def run(self) -> dict[str, Any]:
        """Stream the input through the steps; write the shard atomically; return stats."""
        steps = build_steps(self.steps, html=input_format(self.input_path) == "warc")
        read_stats = StepStats("read")
        examples: dict[str, list[dict[str, Any]]] = {}
        per_key: Counter = Counter()
        k = self.examples_per_reason
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
        skipped = ReadReport()  # a damaged crawl file keeps what was read; the summary names it
        docs = read_documents(self.input_path, self.reader, read_stats, position.update, report=skipped)
        docs = _progress(docs, position)
        stream, stats = run_steps(docs, steps, on_drop)
        if dropped_writer is not None:
            dropped_writer.open()
        try:
            with ShardWriter(self.output_path, self.output_format) as out:
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
            "skipped_input": skipped.to_dict()["files"],
            "stats": [read_stats.to_dict()] + [s.to_dict() for s in stats],
            "examples": examples,
        }


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
    """Document preparation and filtering: the recipe's per-document steps, one task per input file or slice."""

    name = "filter"

    def __init__(self, steps: list[Step], config: RefineConfig) -> None:
        self.steps = steps
        self.config = config  # output format, dropped documents, examples, slices

    def tasks(self, inputs: list[Path], ctx: StageContext) -> list[FilterTask]:
        """One FilterTask per input (slice), with deterministic output names."""
        out_dir = ctx.stage_dir(self.name)
        fmt = self.config.output_format
        tasks = []
        n = max(1, self.config.slices_per_file)
        for i, path in enumerate(inputs):
            size = os.path.getsize(path)
            for s in range(n):
                stem = _stem(i, Path(path), s, n)
                tasks.append(
                    FilterTask(
                        id=stem,
                        input_path=str(path),
                        output_path=str(out_dir / shard_name(stem, fmt)),
                        dropped_path=str(ctx.dropped_dir(self.name) / shard_name(stem, "jsonl.zst"))
                        if self.config.keep_dropped
                        else None,
                        steps=self.steps,
                        reader=ctx.reader if n == 1 else replace(ctx.reader, slice_index=s, num_slices=n),
                        output_format=fmt,
                        examples_per_reason=self.config.examples_per_reason,
                        size_bytes=size // n,
                    )
                )
        return tasks

    def build_steps(self) -> list[PipelineStep]:
        """The working steps, as a task over an HTML input runs them."""
        return build_steps(self.steps)

    def run(self, inputs: list[Path], ctx: StageContext) -> StageResult:
        """Run (or resume) the tasks and merge their stats."""
        tasks = self.tasks(inputs, ctx)
        results = run_stage(Stage(self.name, tasks, ctx.marker_dir(self.name)), ctx.exec)
        merged = merge_step_stats([r["stats"] for r in results])
        examples: dict[str, list[dict[str, Any]]] = {}
        for r in results:
            for key, items in r.get("examples", {}).items():
                have = examples.setdefault(key, [])
                have.extend(items[: max(0, self.config.examples_per_reason - len(have))])
        return StageResult(
            outputs=[Path(t.output_path) for t in tasks],
            stats=[{**s.to_dict(), "stage": self.name} for s in merged],
            examples=examples,
            skipped_input=[f for r in results for f in r.get("skipped_input", [])],
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
