"""Readers: Documents from WARC / WARC.gz, JSONL (.gz/.zst) and Parquet, plus input expansion.

`read_documents(path, ...)` is the one entry point; every reader counts what it skips (malformed
records, non-HTML responses, undecodable lines) in a `StepStats` named "read" instead of raising,
so one bad record never stops a file.
"""

from __future__ import annotations

import codecs
import glob
import io
import json
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from falconlm.data.document import Document
from falconlm.data.step import StepStats
from falconlm.errors import FalconError

WARC_SUFFIXES = (".warc", ".warc.gz", ".arc.gz", ".warc.zst")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
ALL_SUFFIXES = WARC_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# <meta charset="x"> and <meta http-equiv="Content-Type" content="text/html; charset=x">
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.IGNORECASE)
_WARC_HEADER = re.compile(rb"WARC/1\.[01]\r?\n")


@dataclass(frozen=True)
class ReaderOptions:
    """How to read inputs: keys for JSON/Parquet records, limits, which slice of a file."""

    text_key: str = "text"
    id_key: str = "id"
    limit: int | None = None  # at most this many documents per input (slice), for quick trials
    slice_index: int = 0  # with num_slices > 1 this reader keeps records i where i % num_slices == slice_index
    num_slices: int = 1


def input_format(path: str | os.PathLike) -> str:
    """'warc', 'jsonl' or 'parquet' from the file name."""
    name = str(path).lower()
    if name.endswith(WARC_SUFFIXES):
        return "warc"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise FalconError(f"cannot tell the format of {path}: expected one of {', '.join(ALL_SUFFIXES)}")


def expand_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files, globs and directories (searched recursively for known suffixes) -> sorted unique files."""
    found: list[Path] = []
    for item in inputs:
        s = str(item)
        if os.path.isdir(s):
            hits = [
                Path(root) / f
                for root, _, files in os.walk(s)
                for f in files
                if f.lower().endswith(ALL_SUFFIXES)
            ]
            if not hits:
                raise FalconError(f"directory {s} holds no WARC, JSONL or Parquet files")
            found.extend(hits)
        elif os.path.isfile(s):
            input_format(s)  # fail early on an unknown suffix
            found.append(Path(s))
        elif glob.has_magic(s):
            hits = [Path(p) for p in glob.glob(s, recursive=True) if os.path.isfile(p)]
            if not hits:
                raise FalconError(f"the pattern {s} matches no file")
            found.extend(hits)
        else:
            raise FalconError(f"input {s} does not exist")
    return sorted(set(found), key=lambda p: str(p))


try:  # ISA-L inflates about twice as fast as zlib, with identical output
    from isal import isal_zlib as _inflate_mod
except ImportError:  # pragma: no cover - optional speed-up
    _inflate_mod = zlib


class TolerantGzip(io.RawIOBase):
    """Multi-member gzip reader that survives damage: a corrupt member is skipped (reading resumes
    at the next gzip header) and a truncated tail ends the stream; both are counted in `errors`
    instead of raising and losing the data decompressed so far."""

    _MAGIC = b"\x1f\x8b\x08"

    def __init__(self, path: str | os.PathLike, chunk: int = 1 << 16) -> None:
        self._f = open(path, "rb")
        self._chunk = chunk
        self._d = _inflate_mod.decompressobj(31)
        self._pending = b""  # compressed bytes not yet fed
        self._out = b""
        self._eof = False
        self.errors = 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._f.close()
        super().close()

    def _fill(self) -> None:
        while not self._out and not self._eof:
            data = self._pending or self._f.read(self._chunk)
            self._pending = b""
            if not data:
                if self._d.unconsumed_tail or not self._d.eof and self._started:
                    self.errors += 1  # truncated last member
                self._eof = True
                return
            try:
                self._out = self._d.decompress(data)
                self._started = True
            except _inflate_mod.error:
                self.errors += 1
                self._resync(data)
                continue
            if self._d.eof:
                rest = self._d.unused_data
                self._d = _inflate_mod.decompressobj(31)
                self._started = False
                self._pending = rest

    _started = False

    def _resync(self, data: bytes) -> None:
        """Skip to the next gzip member header after a corrupt one."""
        buf = data[1:]
        while True:
            i = buf.find(self._MAGIC)
            if i >= 0:
                self._pending = buf[i:]
                self._d = _inflate_mod.decompressobj(31)
                self._started = False
                return
            more = self._f.read(self._chunk)
            if not more:
                self._eof = True
                return
            buf = buf[-2:] + more

    def readinto(self, b: Any) -> int:
        self._fill()
        n = min(len(b), len(self._out))
        b[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """Open a file for reading bytes, decompressing .gz and .zst transparently (.gz tolerantly)."""
    return _open_with_raw(path)[0]


def _open_with_raw(path: str | os.PathLike) -> tuple[IO[bytes], IO[bytes]]:
    """(decompressed stream, the underlying file) -- the file's position measures progress."""
    name = str(path).lower()
    if name.endswith(".gz"):
        gz = TolerantGzip(path)
        return io.BufferedReader(gz, 1 << 16), gz._f
    if name.endswith(".zst"):
        import zstandard

        f = open(path, "rb")
        return zstandard.ZstdDecompressor().stream_reader(f, closefd=True), f
    f = open(path, "rb")
    return f, f


PositionHook = Callable[[int], None]  # receives the bytes of the input file consumed so far


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
    inner = {"warc": _read_warc, "jsonl": _read_jsonl, "parquet": _read_parquet}[fmt](path, options, skip_stats, hook)
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


# --------------------------------------------------------------------------------------- WARC


def decode_html(body: bytes, http_charset: str | None) -> tuple[str, str]:
    """Decode an HTML payload: charset from the HTTP header, then the meta tag, then detection."""
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    for source, enc in (("http", http_charset), ("meta", _meta_charset(body))):
        if enc and _known_codec(enc):
            try:
                return body.decode(enc), source
            except (UnicodeDecodeError, LookupError):
                pass  # a lying header: fall through to the next source
    enc = detect_encoding(body)
    return bytes_to_str(body, enc), "detected"


def _meta_charset(body: bytes) -> str | None:
    m = _META_CHARSET.search(body, 0, 4096)
    return m.group(1).decode("ascii", "ignore") if m else None


def _known_codec(name: str) -> bool:
    try:
        codecs.lookup(name)
        return True
    except LookupError:
        return False


def _read_warc(
    path: str | os.PathLike, options: ReaderOptions, stats: StepStats, on_position: PositionHook
) -> Iterator[Document]:
    """Response records with an HTML content type; malformed records are counted and skipped."""
    try:
        raw, fileobj = _open_with_raw(path)
        with raw:
            stream = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw, 1 << 20)
            for i, doc in enumerate(_warc_documents(_resilient_records(stream, stats), path, stats)):
                if i % 16 == 0:
                    on_position(fileobj.tell())
                yield doc
            on_position(os.path.getsize(path))
            raw_gz = getattr(stream, "raw", None)
            if isinstance(raw_gz, TolerantGzip) and raw_gz.errors:
                stats.dropped["corrupt_compression"] += raw_gz.errors
                _log_skip(path, f"{raw_gz.errors} damaged gzip member(s) skipped")
    except (OSError, EOFError, ValueError) as exc:
        # A corrupt compression layer ends the file; what was read stays valid.
        stats.dropped["corrupt_file"] += 1
        _log_skip(path, f"unreadable compressed stream ({exc}); the rest of this file is skipped")


def _warc_documents(records: Iterator[tuple], path: Any, stats: StepStats) -> Iterator[Document]:
    for headers, block in records:
        if headers.get("warc-type") != "response":
            continue
        url = headers.get("warc-target-uri")
        parsed = _parse_http(block)
        if parsed is None or not url:
            stats.dropped["malformed_record"] += 1
            continue
        status, ctype, charset, body = parsed
        if status != 200:
            stats.dropped["http_status"] += 1
            continue
        if ctype not in HTML_TYPES:
            stats.dropped["not_html"] += 1
            continue
        text, source = decode_html(body, charset)
        rec_id = headers.get("warc-record-id", "").strip("<>").removeprefix("urn:uuid:")
        yield Document(
            id=rec_id,
            text=text,
            url=url,
            metadata={"date": headers.get("warc-date"), "charset_source": source, "source": os.path.basename(str(path))},
        )


class _PushbackStream:
    """A byte stream with a pushback buffer, so a resync never has to seek backwards (which would
    re-decompress a .gz from its start)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._s = stream
        self._buf = b""

    def unread(self, data: bytes) -> None:
        self._buf = data + self._buf

    def readline(self) -> bytes:
        if self._buf:
            i = self._buf.find(b"\n")
            if i >= 0:
                line, self._buf = self._buf[: i + 1], self._buf[i + 1 :]
                return line
            line, self._buf = self._buf, b""
            return line + self._s.readline()
        return self._s.readline()

    def read(self, n: int) -> bytes:
        if self._buf:
            out, self._buf = self._buf[:n], self._buf[n:]
            if len(out) < n:
                out += self._s.read(n - len(out))
            return out
        return self._s.read(n)


def _resilient_records(stream: IO[bytes], stats: StepStats) -> Iterator[tuple[dict[str, str], bytes]]:
    """(lower-cased WARC headers, content block) for every well-formed record. A record is
    well-formed when its header parses, its block has the declared length and the block is followed
    by the CRLF CRLF separator; otherwise it is counted as malformed and reading resumes at the next
    'WARC/1.x' header line (which may sit inside the bad record's block, if its length lied)."""
    s = _PushbackStream(stream)
    while True:
        line = s.readline()
        if not line:
            return
        if not line.strip():
            continue
        if not _WARC_HEADER.fullmatch(line):
            stats.dropped["malformed_record"] += 1
            if not _resync(s, line):
                return
            continue
        headers: dict[str, str] = {}
        raw_header = [line]
        while True:
            h = s.readline()
            raw_header.append(h)
            if not h or not h.strip():
                break
            name, sep, value = h.decode("utf-8", "replace").partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        try:
            length = int(headers.get("content-length", ""))
        except ValueError:
            length = -1
        block = s.read(length) if length >= 0 else b""
        trailer = s.read(4) if length >= 0 and len(block) == length else b""
        if length < 0 or len(block) != length or trailer != b"\r\n\r\n":
            stats.dropped["malformed_record"] += 1
            # Look for the next header inside what we consumed after this record's first line.
            if not _resync(s, b"".join(raw_header[1:]) + block + trailer):
                return
            continue
        yield headers, block


def _resync(s: _PushbackStream, consumed: bytes) -> bool:
    """Push back everything from the next WARC header on (searching `consumed`, then the stream)."""
    m = _WARC_HEADER.search(consumed)
    if m:
        s.unread(consumed[m.start() :])
        return True
    tail = consumed[-12:]
    while True:
        chunk = s.read(1 << 20)
        if not chunk:
            return False
        buf = tail + chunk
        m = _WARC_HEADER.search(buf)
        if m:
            s.unread(buf[m.start() :])
            return True
        tail = buf[-12:]


def _parse_http(block: bytes) -> tuple[int, str, str | None, bytes] | None:
    """(status, media type, charset, decoded body) of an HTTP response block, or None if malformed."""
    head, sep, body = block.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = block.partition(b"\n\n")
        if not sep:
            return None
    lines = head.decode("latin-1").splitlines()
    parts = lines[0].split(None, 2) if lines else []
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return None
    fields: dict[str, str] = {}
    for h in lines[1:]:
        name, _, value = h.partition(":")
        fields[name.strip().lower()] = value.strip()
    media, _, params = fields.get("content-type", "").partition(";")
    charset = None
    for p in params.split(";"):
        k, _, v = p.partition("=")
        if k.strip().lower() == "charset":
            charset = v.strip().strip("\"'") or None
    if "chunked" in fields.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    enc = fields.get("content-encoding", "").lower()
    if enc in ("gzip", "x-gzip", "deflate"):
        try:
            body = zlib.decompress(body, 47 if "gzip" in enc else 15)
        except zlib.error:
            pass  # crawlers often store the payload already decoded while keeping the header
    return int(parts[1]), media.strip().lower(), charset, body


def _dechunk(body: bytes) -> bytes:
    out, pos = [], 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return body  # not really chunked: keep it as it is
        try:
            size = int(body[pos:eol].split(b";")[0], 16)
        except ValueError:
            return body
        if size == 0:
            return b"".join(out)
        out.append(body[eol + 2 : eol + 2 + size])
        pos = eol + 2 + size + 2


def _log_skip(path: Any, why: str) -> None:
    import logging

    logging.getLogger("falconlm.data").warning("%s: %s", path, why)


# -------------------------------------------------------------------------------------- JSONL


def _read_jsonl(
    path: str | os.PathLike, options: ReaderOptions, stats: StepStats, on_position: PositionHook
) -> Iterator[Document]:
    """One JSON object per line; undecodable lines and records without text are counted and skipped."""
    try:
        raw, fileobj = _open_with_raw(path)
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
                doc = _record_to_doc(record, options, stats, f"{Path(path).name}:{lineno}")
                if doc is not None:
                    yield doc
    except (OSError, EOFError) as exc:
        stats.dropped["corrupt_file"] += 1
        _log_skip(path, f"unreadable stream ({exc}); the rest of this file is skipped")


def _record_to_doc(record: Any, options: ReaderOptions, stats: StepStats, fallback_id: str) -> Document | None:
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


# ------------------------------------------------------------------------------------ Parquet


def _read_parquet(
    path: str | os.PathLike, options: ReaderOptions, stats: StepStats, on_position: PositionHook
) -> Iterator[Document]:
    """Row batches of a Parquet file; rows without a string text column are counted and skipped."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a bad footer
        stats.dropped["corrupt_file"] += 1
        _log_skip(path, f"not a readable Parquet file ({exc})")
        return
    if options.text_key not in pf.schema_arrow.names:
        raise FalconError(f"{path} has no column {options.text_key!r} (columns: {', '.join(pf.schema_arrow.names)})")
    row = 0
    total_rows = max(pf.metadata.num_rows, 1)
    size = os.path.getsize(path)
    for batch in pf.iter_batches(batch_size=1024):
        on_position(size * row // total_rows)
        for record in batch.to_pylist():
            doc = _record_to_doc(record, options, stats, f"{Path(path).name}:{row}")
            row += 1
            if doc is not None:
                yield doc
