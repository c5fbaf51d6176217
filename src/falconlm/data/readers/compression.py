"""Opening compressed inputs: .gz (tolerant of damaged members, ISA-L when installed) and .zst.

A stream that cannot be decoded from some point on (not the compression its name says, a damaged
block with nothing readable after it, a truncated end) raises `DecodeError`, an OSError the readers
turn into `Skips.corrupt`; a damaged gzip member followed by good ones is skipped and counted in
`TolerantGzip.errors` instead, so the rest of a multi-member web crawl file is still read.
"""

from __future__ import annotations

import io
import os
import zlib
from typing import IO, Any

try:  # ISA-L inflates about twice as fast as zlib, with identical output
    from isal import isal_zlib as _inflate_mod
except ImportError:  # pragma: no cover - optional speed-up
    _inflate_mod = zlib


class DecodeError(OSError):
    """The compressed stream of an input stops decoding here; the message says how."""


class TolerantGzip(io.RawIOBase):
    """Multi-member gzip reader that survives damage: a corrupt member is skipped (reading resumes
    at the next gzip header) and counted in `errors`; damage with no member after it, a truncated
    tail, or bytes that are no gzip at all raise DecodeError once the data before them is read."""

    _MAGIC = b"\x1f\x8b\x08"

    def __init__(self, path: str | os.PathLike, chunk: int = 1 << 16) -> None:
        self._f = open(path, "rb")
        self._is_gzip = self._f.read(3) == self._MAGIC
        self._f.seek(0)
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
                self._eof = True
                if self._d.unconsumed_tail or not self._d.eof and self._started:
                    raise DecodeError("the gzip stream is truncated")
                return
            try:
                self._out = self._d.decompress(data)
                self._started = True
            except _inflate_mod.error as exc:
                if not self._resync(data):
                    what = f"damaged gzip data with no readable member after it: {exc}" if self._is_gzip else "not gzip data"
                    raise DecodeError(what) from None
                self.errors += 1
                continue
            if self._d.eof:
                rest = self._d.unused_data
                self._d = _inflate_mod.decompressobj(31)
                self._started = False
                self._pending = rest

    _started = False

    def _resync(self, data: bytes) -> bool:
        """Skip to the next gzip member header after a corrupt one; False (at the end) when there is none."""
        buf = data[1:]
        while True:
            i = buf.find(self._MAGIC)
            if i >= 0:
                self._pending = buf[i:]
                self._d = _inflate_mod.decompressobj(31)
                self._started = False
                return True
            more = self._f.read(self._chunk)
            if not more:
                self._eof = True
                return False
            buf = buf[-2:] + more

    def readinto(self, b: Any) -> int:
        self._fill()
        n = min(len(b), len(self._out))
        b[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


class CheckedZstd(io.RawIOBase):
    """A .zst stream of one or more frames whose decoding errors and truncated end raise DecodeError (zstandard reads a cut frame as a short one)."""

    def __init__(self, path: str | os.PathLike, chunk: int = 1 << 16) -> None:
        import zstandard

        self._zstd = zstandard
        self._f = open(path, "rb")
        self._chunk = chunk
        self._d = zstandard.ZstdDecompressor().decompressobj()
        self._out = b""
        self._pending = b""
        self._fed = False  # bytes of the current frame fed

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._f.close()
        super().close()

    def readinto(self, b: Any) -> int:
        while not self._out:
            data = self._pending or self._f.read(self._chunk)
            self._pending = b""
            if not data:
                if self._fed and not self._d.eof:
                    raise DecodeError("the zstd stream is truncated")
                return 0
            try:
                self._out = self._d.decompress(data)
            except self._zstd.ZstdError as exc:
                raise DecodeError(f"not readable zstd data: {exc}") from None
            self._fed = True
            if self._d.eof:  # a frame ended: the next one (if any) starts in its unused data
                self._pending = self._d.unused_data
                self._d = self._zstd.ZstdDecompressor().decompressobj()
                self._fed = False
        n = min(len(b), len(self._out))
        b[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


def open_with_raw(path: str | os.PathLike) -> tuple[IO[bytes], IO[bytes]]:
    """(decompressed stream, the underlying file) -- the file's position measures progress."""
    name = str(path).lower()
    if name.endswith(".gz"):
        gz = TolerantGzip(path)
        return io.BufferedReader(gz, 1 << 16), gz._f
    if name.endswith(".zst"):
        zst = CheckedZstd(path)
        return io.BufferedReader(zst, 1 << 16), zst._f
    f = open(path, "rb")
    return f, f



def recovered_damage(stream: Any) -> int:
    """Damaged gzip members skipped so far by the TolerantGzip under `stream` (a buffered reader or the raw stream); 0 for others."""
    raw = getattr(stream, "raw", stream)
    return raw.errors if isinstance(raw, TolerantGzip) else 0
