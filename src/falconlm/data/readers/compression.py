"""Opening compressed inputs: .gz (tolerant of damaged members, ISA-L when installed) and .zst."""

from __future__ import annotations

import io
import os
import zlib
from typing import IO, Any

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


def open_with_raw(path: str | os.PathLike) -> tuple[IO[bytes], IO[bytes]]:
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

