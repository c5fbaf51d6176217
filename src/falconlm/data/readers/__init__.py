"""Readers: Documents from WARC / WARC.gz, JSONL (.gz/.zst), Parquet and plain text, plus input expansion.

`read_documents(path, ...)` is the one entry point; every reader counts what it skips (malformed
records, non-HTML responses, undecodable lines) in a `StepStats` named "read" instead of raising,
so one bad record never stops a file. One module per format: warc.py (with http.py for the HTTP
payload and its charset), jsonl.py, parquet.py, text.py; discover.py tells formats and expands
inputs, compression.py opens .gz / .zst.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from falconlm.data.document import Document
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
    "WARC_SUFFIXES", "PositionHook", "ReaderOptions", "TolerantGzip", "decode_html", "expand_inputs",
    "input_format", "open_with_raw", "read_documents",
]

_READERS = {"warc": read_warc, "jsonl": read_jsonl, "parquet": read_parquet, "text": read_text}


def read_documents(
    path: str | os.PathLike,
    options: ReaderOptions | None = None,
    stats: StepStats | None = None,
    on_position: PositionHook | None = None,
) -> Iterator[Document]:
    """Iterate the documents of one input file; skipped records are counted in `stats`;
    `on_position(bytes_read)` is called now and then (for progress bars)."""
    options = options or ReaderOptions()
    stats = stats if stats is not None else StepStats("read")
    fmt = input_format(path)
    # Every slice reads the whole file; only slice 0 counts the records the reader skips.
    skip_stats = stats if options.slice_index == 0 else StepStats("read")
    hook = on_position or (lambda n: None)
    inner = _READERS[fmt](path, options, skip_stats, hook)
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
        n += 1
        yield doc
