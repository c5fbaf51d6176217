"""Readers: Documents from WARC / WARC.gz, JSONL (.gz/.zst), Parquet and plain text, plus input expansion.

`read_documents(path, ...)` is the one entry point; every reader counts what it skips (malformed
records, non-HTML responses, undecodable lines) in a `StepStats` named "read" instead of raising,
so one bad record never stops a file, and, given a `ReadReport` (accounting.py), notes it per file
with line numbers; `read_corpus` reads a list of files that way for the commands that consume
text. One module per format: warc.py (with http.py for the HTTP payload and its charset),
jsonl.py, parquet.py, text.py; discover.py tells formats and expands inputs, compression.py opens
.gz / .zst.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from falconlm.data.document import Document
from falconlm.data.readers.accounting import FileSkips, ReadReport, Skips
from falconlm.data.readers.compression import TolerantGzip, open_with_raw
from falconlm.data.readers.discover import (
    ALL_SUFFIXES,
    CORPUS_SUFFIXES,
    JSONL_SUFFIXES,
    PARQUET_SUFFIXES,
    TEXT_SUFFIXES,
    WARC_SUFFIXES,
    expand_inputs,
    input_format,
)
from falconlm.data.readers.http import HTML_TYPES, decode_html
from falconlm.data.readers.jsonl import read_jsonl
from falconlm.data.readers.options import PositionHook, ReaderOptions
from falconlm.data.readers.parquet import read_parquet
from falconlm.data.readers.text import read_text
from falconlm.data.readers.warc import read_warc
from falconlm.data.step import StepStats

__all__ = [
    "ALL_SUFFIXES", "CORPUS_SUFFIXES", "HTML_TYPES", "JSONL_SUFFIXES", "PARQUET_SUFFIXES", "TEXT_SUFFIXES",
    "WARC_SUFFIXES", "FileSkips", "PositionHook", "ReadReport", "ReaderOptions", "Skips", "TolerantGzip", "decode_html",
    "expand_inputs", "input_format", "open_with_raw", "read_corpus", "read_documents",
]

_READERS = {"warc": read_warc, "jsonl": read_jsonl, "parquet": read_parquet, "text": read_text}


def read_documents(
    path: str | os.PathLike,
    options: ReaderOptions | None = None,
    stats: StepStats | None = None,
    on_position: PositionHook | None = None,
    report: ReadReport | None = None,
) -> Iterator[Document]:
    """Iterate the documents of one input file; skipped records are counted in `stats` (and noted in
    `report`, whose `strict` makes a corrupt file an error); `on_position(bytes_read)` is called now
    and then (for progress bars)."""
    options = options or ReaderOptions()
    stats = stats if stats is not None else StepStats("read")
    fmt = input_format(path)
    # Every slice reads the whole file; only slice 0 counts the records the reader skips.
    first = options.slice_index == 0
    record = report.file(path) if report is not None else None
    skips = Skips(path, stats if first else StepStats("read"), record if first else None, report.strict if report else False)
    hook = on_position or (lambda n: None)
    inner = _READERS[fmt](path, options, skips, hook)
    n = 0
    for i, doc in enumerate(inner):
        if options.num_slices > 1 and i % options.num_slices != options.slice_index:
            continue
        if options.limit is not None and n >= options.limit:
            break
        stats.docs_in += 1
        stats.chars_in += len(doc.text)
        stats.docs_out += 1
        stats.chars_out += len(doc.text)
        if record is not None:
            record.documents += 1
        n += 1
        yield doc


def read_corpus(paths: list[Path], report: ReadReport, options: ReaderOptions | None = None) -> Iterator[Document]:
    """Every document of the files in order, each file's skips noted in `report` (the caller prints its summary)."""
    for path in paths:
        report.file(path)  # an empty file is listed too
        yield from read_documents(path, options, StepStats("read"), report=report)
