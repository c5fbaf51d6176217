"""Helpers shared by the refine tests: tiny WARC records and English text written for the tests."""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path

ENGLISH = (
    "The river valley has a long history of farming, and the villages along its banks still keep many of "
    "their old customs. Visitors come to see the mills and the bridges that were built with local stone. "
    "In the spring the water rises and the meadows flood, which is why most houses stand on higher ground. "
    "The small museum in the main square explains how people adapted to the changing seasons and what "
    "tools they used to manage the floods. Children from the schools nearby often visit it with their "
    "teachers to learn about the region and its past. "
)


def english(words: int) -> str:
    """About `words` words of plain English prose (the paragraph above, cycled with variations)."""
    base = ENGLISH.split()
    out = []
    i = 0
    while len(out) < words:
        w = base[i % len(base)]
        out.append(w if i < len(base) else f"{w}")
        i += 1
    return " ".join(out)


def record(url: str, body: bytes, content_type: str | None = "text/html; charset=utf-8", status: str = "200 OK",
           rec_type: str = "response") -> bytes:
    """One uncompressed WARC record."""
    ctype = f"Content-Type: {content_type}\r\n" if content_type else ""
    http = f"HTTP/1.1 {status}\r\n{ctype}Content-Length: {len(body)}\r\n\r\n".encode() + body
    rid = uuid.uuid5(uuid.NAMESPACE_URL, url)
    head = (
        f"WARC/1.0\r\nWARC-Type: {rec_type}\r\nWARC-Target-URI: {url}\r\nWARC-Date: 2023-01-01T00:00:00Z\r\n"
        f"WARC-Record-ID: <urn:uuid:{rid}>\r\nContent-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {len(http)}\r\n\r\n"
    ).encode()
    return head + http + b"\r\n\r\n"


def html_page(title: str, paragraphs: list[str]) -> bytes:
    """A small HTML page."""
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body><article><h1>{title}</h1>{body}</article></body></html>").encode()


def write_warc(path: Path, records: list[bytes], gz: bool = True) -> Path:
    """Write records, one gzip member each when `gz`."""
    data = b"".join(gzip.compress(r, mtime=0) for r in records) if gz else b"".join(records)
    path.write_bytes(data)
    return path
