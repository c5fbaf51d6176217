"""Parquet: row batches; a row is a record with a text column, like a JSONL line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from falconlm.data.document import Document
from falconlm.data.readers.jsonl import record_to_doc
from falconlm.data.readers.accounting import Skips
from falconlm.data.readers.options import PositionHook, ReaderOptions
from falconlm.errors import FalconError


def read_parquet(
    path: str | os.PathLike, options: ReaderOptions, skips: Skips, on_position: PositionHook
) -> Iterator[Document]:
    """Row batches of a Parquet file; rows without a string text column are counted and skipped."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a bad footer
        skips.corrupt(f"not a readable Parquet file: {exc}")
        return
    if options.text_key not in pf.schema_arrow.names:
        raise FalconError(f"{path} has no column {options.text_key!r} (columns: {', '.join(pf.schema_arrow.names)})")
    row = 0
    total_rows = max(pf.metadata.num_rows, 1)
    size = os.path.getsize(path)
    for batch in pf.iter_batches(batch_size=1024):
        on_position(size * row // total_rows)
        for record in batch.to_pylist():
            doc = record_to_doc(record, options, skips, f"{Path(path).name}:{row}", row + 1)
            row += 1
            if doc is not None:
                yield doc
