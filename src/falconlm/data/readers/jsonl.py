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
from falconlm.data.readers.accounting import Skips
from falconlm.data.readers.compression import recovered_damage
from falconlm.data.readers.options import PositionHook, ReaderOptions


def read_jsonl(path: str | os.PathLike, options: ReaderOptions, skips: Skips, on_position: PositionHook) -> Iterator[Document]:
    """One JSON object per line; undecodable lines and records without text are counted (with their line) and skipped."""
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
                    skips.skip("malformed_json", lineno + 1)
                    continue
                doc = record_to_doc(record, options, skips, f"{Path(path).name}:{lineno}", lineno + 1)
                if doc is not None:
                    yield doc
            for _ in range(recovered_damage(raw)):
                skips.skip("corrupt_compression")
    except (OSError, EOFError) as exc:
        skips.corrupt(str(exc))


def record_to_doc(record: Any, options: ReaderOptions, skips: Skips, fallback_id: str, line: int | None = None) -> Document | None:
    """A Document from a JSON / Parquet record, or None (counted) when it has no string text."""
    if not isinstance(record, dict) or not isinstance(record.get(options.text_key), str):
        skips.skip("missing_text", line)
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
