"""Atomic shard writers: jsonl.zst (default), jsonl.gz, jsonl, Parquet.

A `ShardWriter` writes to the temp name of `falconlm.atomic` and commits it (fsync, rename) only on a
clean close, so a killed run never leaves a half-written shard under its final name. Output bytes are a pure function
of the documents written (fixed compression level, no timestamps), which is what makes a resumed
run byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from falconlm.atomic import commit, temp_path
from falconlm.data.document import Document
from falconlm.errors import FalconError

FORMATS = ("jsonl.zst", "jsonl.gz", "jsonl", "parquet")
ZSTD_LEVEL = 3


def shard_name(stem: str, fmt: str) -> str:
    """File name of a shard: `<stem>.<fmt>`."""
    if fmt not in FORMATS:
        raise FalconError(f"unknown output format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return f"{stem}.{fmt}"


def doc_to_json(doc: Document) -> str:
    """One JSON line for a document (stable key order, UTF-8 kept as is)."""
    return json.dumps(doc.to_dict(), ensure_ascii=False, sort_keys=False)


class ShardWriter:
    """Write documents to one shard file atomically; use as a context manager.

    On an exception inside the `with` block the temp file is removed and nothing is renamed.
    """

    def __init__(self, path: str | os.PathLike, fmt: str | None = None, parquet_batch: int = 1000) -> None:
        self.path = Path(path)
        self.fmt = fmt or _fmt_from_name(self.path)
        if self.fmt not in FORMATS:
            raise FalconError(f"unknown output format {self.fmt!r}: choose one of {', '.join(FORMATS)}")
        self.tmp_path = temp_path(self.path)
        self.count = 0
        self.bytes_text = 0
        self._parquet_batch = parquet_batch
        self._rows: list[dict[str, Any]] = []
        self._pq_writer: Any = None
        self._fh: IO[bytes] | None = None
        self._text: io.TextIOWrapper | None = None
        self._closed = False

    # -- lifecycle
    def open(self) -> "ShardWriter":
        """Create the temp file (parent directories included)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        raw = open(self.tmp_path, "wb")
        self._fh = raw
        if self.fmt == "jsonl.zst":
            import zstandard

            stream: IO[bytes] = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).stream_writer(raw, closefd=False)  # damage is detected on read
        elif self.fmt == "jsonl.gz":
            # mtime=0 and no file name: identical bytes for identical content
            stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
        elif self.fmt == "jsonl":
            stream = raw
        else:
            stream = raw
        if self.fmt != "parquet":
            self._text = io.TextIOWrapper(stream, encoding="utf-8", newline="\n", write_through=False)
        return self

    def __enter__(self) -> "ShardWriter":
        return self.open()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if et is None:
            self.close()
        else:
            self.abort()

    def write(self, doc: Document) -> None:
        """Append one document."""
        self.count += 1
        self.bytes_text += len(doc.text)
        if self.fmt == "parquet":
            d = doc.to_dict()
            d["metadata"] = json.dumps(d["metadata"], ensure_ascii=False, sort_keys=True)
            self._rows.append(d)
            if len(self._rows) >= self._parquet_batch:
                self._flush_parquet()
        else:
            assert self._text is not None, "open() the writer first"
            self._text.write(doc_to_json(doc))
            self._text.write("\n")

    def close(self) -> Path:
        """Finish the file and commit it (fsync, rename into place); returns the final path."""
        if self._closed:
            return self.path
        if self.fmt == "parquet":
            self._flush_parquet(final=True)
        elif self._text is not None:
            self._text.flush()
            self._text.close()  # closes the compressor stream (closefd=False keeps raw open)
        if self._fh is not None and not self._fh.closed:
            self._fh.close()
        commit(self.tmp_path, self.path)
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Drop the temp file; the final name is never created."""
        self._closed = True
        try:
            if self._pq_writer is not None:
                self._pq_writer.close()
            if self._fh is not None and not self._fh.closed:
                self._fh.close()
        finally:
            if self.tmp_path.exists():
                self.tmp_path.unlink()

    # -- parquet
    def _flush_parquet(self, final: bool = False) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema(
            [("id", pa.string()), ("text", pa.string()), ("url", pa.string()), ("metadata", pa.string())]
        )
        if self._rows or (final and self._pq_writer is None):
            table = pa.Table.from_pylist(self._rows, schema=schema)
            if self._pq_writer is None:
                assert self._fh is not None
                self._pq_writer = pq.ParquetWriter(self._fh, schema, compression="zstd")
            self._pq_writer.write_table(table)
            self._rows = []
        if final and self._pq_writer is not None:
            self._pq_writer.close()


def _fmt_from_name(path: Path) -> str:
    name = path.name
    for fmt in FORMATS:
        if name.endswith("." + fmt):
            return fmt
    raise FalconError(f"cannot tell the output format of {path}: use a name ending in one of {', '.join(FORMATS)}")
