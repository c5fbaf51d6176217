"""What every reader shares: how to read (keys, limit, slice) and the progress hook."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

PositionHook = Callable[[int], None]  # receives the bytes of the input file consumed so far


@dataclass(frozen=True)
class ReaderOptions:
    """How to read inputs: keys for JSON/Parquet records, limits, which slice of a file."""

    text_key: str = "text"  # the JSON/Parquet field holding the text
    id_key: str = "id"  # the JSON/Parquet field holding the document id
    limit: int | None = None  # at most this many documents per input (slice), for quick trials
    slice_index: int = 0  # with num_slices > 1 this reader keeps records i where i % num_slices == slice_index
    num_slices: int = 1  # how many readers share the file

