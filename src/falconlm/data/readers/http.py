"""The HTTP response inside a WARC record: status, media type, charset, de-chunked and inflated
body, and the HTML decoded with the charset from the header, the meta tag or detection."""

from __future__ import annotations

import codecs
import re
import zlib

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# <meta charset="x"> and <meta http-equiv="Content-Type" content="text/html; charset=x">
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.IGNORECASE)


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


def parse_http(block: bytes) -> tuple[int, str, str | None, bytes] | None:
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
