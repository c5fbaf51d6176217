"""Read document texts from the corpus files the refine stage writes (JSONL(.gz/.zst), Parquet, text).

Uses the data pipeline's readers when they are installed; this small fallback only extracts the
text field, which is all tokenizer training and token sharding need.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from falconlm.errors import FalconError

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.zst", ".json.gz", ".json", ".parquet", ".txt", ".txt.gz", ".txt.zst")


def expand_paths(paths: list[str]) -> list[Path]:
    """Files named on the command line, with directories expanded to their corpus files, sorted."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(SUFFIXES) and not f.name.startswith("."))
            if not found:
                raise FalconError(f"directory {p} holds no corpus files ({', '.join(SUFFIXES)})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FalconError(f"corpus path {p} does not exist")
    return out


def _open_text(path: Path) -> io.TextIOBase:
    """Open a possibly compressed text file for reading."""
    name = path.name
    if name.endswith(".zst"):
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
        return io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
    if name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _data_readers():
    """The refine stage's readers (falconlm.data.readers), or None when that package is not available."""
    try:
        from falconlm.data import readers
    except ImportError:  # pragma: no cover - the data pipeline is part of the package
        return None
    return readers


def iter_texts(paths: list[Path], text_key: str = "text") -> Iterator[str]:
    """Yield each document's text from every file in order; malformed records are counted and skipped.

    JSONL and Parquet go through the refine stage's readers (same parsing and skip rules as the
    pipeline that wrote them); plain text files are one document each.
    """
    readers = _data_readers()
    for path in paths:
        skipped = 0
        name = path.name
        if readers is not None and ".txt" not in name and readers.input_format(path) in ("jsonl", "parquet"):
            from falconlm.data.step import StepStats

            stats = StepStats("read")
            for doc in readers.read_documents(path, readers.ReaderOptions(text_key=text_key), stats):
                yield doc.text
            continue
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            if text_key not in pf.schema_arrow.names:
                raise FalconError(f"{path} has no '{text_key}' column (columns: {', '.join(pf.schema_arrow.names)})")
            for batch in pf.iter_batches(columns=[text_key]):
                for text in batch.column(0).to_pylist():
                    if isinstance(text, str):
                        yield text
                    else:
                        skipped += 1
        elif ".json" in name:
            with _open_text(path) as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)[text_key]
                    except (ValueError, KeyError, TypeError):
                        skipped += 1
                        continue
                    if isinstance(text, str):
                        yield text
                    else:
                        skipped += 1
        else:
            # Plain text: one document per file, as a text corpus is usually laid out.
            with _open_text(path) as fh:
                yield fh.read()
        if skipped:
            log.warning("%s: skipped %d malformed records without a string '%s' field", path, skipped, text_key)
