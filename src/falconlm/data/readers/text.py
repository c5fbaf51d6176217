"""Plain text (.txt, .gz, .zst): the whole file is one document, as a text corpus is usually laid out."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

from falconlm.data.document import Document
from falconlm.data.readers.compression import open_with_raw
from falconlm.data.readers.accounting import Skips
from falconlm.data.readers.options import PositionHook, ReaderOptions


def read_text(
    path: str | os.PathLike, options: ReaderOptions, skips: Skips, on_position: PositionHook
) -> Iterator[Document]:
    """One document: the file's text (undecodable bytes replaced), its name as id."""
    try:
        raw, _ = open_with_raw(path)
        with raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace").read()
    except (OSError, EOFError) as exc:
        skips.corrupt(str(exc))
        return
    on_position(os.path.getsize(path))
    name = Path(path).name
    yield Document(id=name, text=text, url=None, metadata={"source": name})
