"""Read document texts from the corpus files the refine stage writes (JSONL(.gz/.zst), Parquet) or plain text.

Discovery and parsing are the data pipeline's readers (falconlm.data.readers), so tokenizer training
and token sharding skip exactly the records the pipeline would, and account for them the same way
(a ReadReport: per file and reason, with line numbers; a corrupt file is an error here).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from falconlm.data.readers import CORPUS_SUFFIXES, ReaderOptions, ReadReport, expand_inputs, read_corpus

log = logging.getLogger(__name__)


def expand_paths(paths: list[str]) -> list[Path]:
    """Corpus files named on the command line (files, globs, directories searched recursively), sorted."""
    return expand_inputs(list(paths), suffixes=CORPUS_SUFFIXES)


def iter_texts(paths: list[Path], text_key: str = "text", report: ReadReport | None = None) -> Iterator[str]:
    """Yield each document's text from every file in order; unusable records are skipped and noted in `report`.

    A plain text file is one document. Without a report, the skips are logged as a warning at the end."""
    own = report is None
    report = ReadReport(strict=True) if report is None else report
    for doc in read_corpus(paths, report, ReaderOptions(text_key=text_key)):
        yield doc.text
    if own and report.summary():
        log.warning("%s", report.summary())


def text_key_hint(text_key: str) -> str:
    """What a report of zero usable documents adds: the key it looked for."""
    return f" (records need a string {text_key!r} field: is --text-key right?)"
