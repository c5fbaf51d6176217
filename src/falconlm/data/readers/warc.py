"""WARC records: response records with an HTML payload become Documents; a malformed record is
counted and skipped, and reading resynchronises at the next `WARC/1.x` header."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from typing import IO, Any

from falconlm.data.document import Document
from falconlm.data.readers.accounting import Skips
from falconlm.data.readers.compression import open_with_raw, recovered_damage
from falconlm.data.readers.http import HTML_TYPES, decode_html, parse_http
from falconlm.data.readers.options import PositionHook, ReaderOptions

_WARC_HEADER = re.compile(rb"WARC/1\.[01]\r?\n")


def read_warc(
    path: str | os.PathLike, options: ReaderOptions, skips: Skips, on_position: PositionHook
) -> Iterator[Document]:
    """Response records with an HTML content type; malformed records are counted and skipped."""
    try:
        raw, fileobj = open_with_raw(path)
        with raw:
            stream = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw, 1 << 20)
            for i, doc in enumerate(_warc_documents(_resilient_records(stream, skips), path, skips)):
                if i % 16 == 0:
                    on_position(fileobj.tell())
                yield doc
            on_position(os.path.getsize(path))
            for _ in range(recovered_damage(stream)):
                skips.skip("corrupt_compression")
    except (OSError, EOFError, ValueError) as exc:
        # A corrupt compression layer ends the file; what was read stays valid.
        skips.corrupt(str(exc))


def _warc_documents(records: Iterator[tuple], path: Any, skips: Skips) -> Iterator[Document]:
    for headers, block in records:
        if headers.get("warc-type") != "response":
            continue
        url = headers.get("warc-target-uri")
        parsed = parse_http(block)
        if parsed is None or not url:
            skips.skip("malformed_record")
            continue
        status, ctype, charset, body = parsed
        if status != 200:
            skips.skip("http_status")
            continue
        if ctype not in HTML_TYPES:
            skips.skip("not_html")
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


def _resilient_records(stream: IO[bytes], skips: Skips) -> Iterator[tuple[dict[str, str], bytes]]:
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
            skips.skip("malformed_record")
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
            skips.skip("malformed_record")
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
