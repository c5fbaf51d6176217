"""Read document texts from the corpus files the refine stage writes (JSONL(.gz/.zst), Parquet) or plain text.

Discovery and parsing are the data pipeline's readers (falconlm.data.readers), so tokenizer training
and token sharding skip exactly the records the pipeline would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from falconlm.data.readers import CORPUS_SUFFIXES, ReaderOptions, expand_inputs, read_documents
from falconlm.data.step import StepStats

log = logging.getLogger(__name__)


def expand_paths(paths: list[str]) -> list[Path]:
    """Corpus files named on the command line (files, globs, directories searched recursively), sorted."""
    return expand_inputs(list(paths), suffixes=CORPUS_SUFFIXES)


def iter_texts(paths: list[Path], text_key: str = "text") -> Iterator[str]:
    """Yield each document's text from every file in order; malformed records are counted and skipped.

    A plain text file is one document."""
    options = ReaderOptions(text_key=text_key)
    for path in paths:
        stats = StepStats("read")
        for doc in read_documents(path, options, stats):
            yield doc.text
        skipped = sum(stats.dropped.values())
        if skipped:
            log.warning("%s: skipped %d malformed records without a string '%s' field", path, skipped, text_key)
