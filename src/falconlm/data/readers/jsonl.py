"""JSON Lines (.jsonl, .gz, .zst): one record per line; a record is a JSON object with a text field."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from falconlm.data.document import Document
from falconlm.data.readers.compression import open_with_raw
from falconlm.data.readers.options import PositionHook, ReaderOptions, log_skip
from falconlm.data.step import StepStats


def read_jsonl(
    path: str | os.PathLike, options: ReaderOptions, stats: StepStats, on_position: PositionHook
) -> Iterator[Document]:
    """One JSON object per line; undecodable lines and records without text are counted and skipped."""
    try:
        raw, fileobj = open_with_raw(path)
        with raw:
            for lineno, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8", errors="replace")):
                if lineno % 256 == 0:
                    on_position(fileobj.tell())
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    stats.dropped["malformed_json"] += 1
                    continue
                doc = record_to_doc(record, options, stats, f"{Path(path).name}:{lineno}")
                if doc is not None:
                    yield doc
    except (OSError, EOFError) as exc:
        stats.dropped["corrupt_file"] += 1
        log_skip(path, f"unreadable stream ({exc}); the rest of this file is skipped")


def record_to_doc(record: Any, options: ReaderOptions, stats: StepStats, fallback_id: str) -> Document | None:
    """A Document from a JSON / Parquet record, or None (counted) when it has no string text."""
    if not isinstance(record, dict) or not isinstance(record.get(options.text_key), str):
        stats.dropped["missing_text"] += 1
        return None
    if isinstance(record.get("metadata"), str):
        try:
            record = {**record, "metadata": json.loads(record["metadata"])}
        except json.JSONDecodeError:
            record = {**record, "metadata": {"raw": record["metadata"]}}
    doc = Document.from_dict(record, text_key=options.text_key, id_key=options.id_key)
    if not doc.id:
        doc.id = fallback_id
    return doc
