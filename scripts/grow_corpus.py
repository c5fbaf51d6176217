#!/usr/bin/env python3
"""Grow a corpus of any size from real web pages (../shared/corpora/web-bench.warc.gz by default),
deterministically, with known answers — the input of benchmarks/bench_scale.py.

Round 0 is the source WARC itself, record for record (its first captures only, for --scale < 1).
Each later round derives one response per HTML
page of the source (the last round stops early for a fractional --scale):
  - 80% `mutation`: the page with half of the words of its text replaced by words drawn from the same
    page (same language, same word lengths, same stop-word share), under a new URL — a new document,
    as far as any dedup is concerned (a 5-gram survives with probability 1/32);
  - 10% `near`: a mutation of this round, re-edited at a rate of 0.5-5% (expected word-5-gram
    Jaccard ~0.95-0.63, in `jaccard5_expected`), under a new URL;
  - 5% `exact`: a byte-identical copy of a mutation of this round under a new URL;
  - 5% `recrawl`: a page fetched again at a mutation's URL, with other content (URL dedup's case).
Planted copies only point at mutations of their own round, which the corpus always holds.
A record depends only on (--seed, its round, its page index, the size of its round), so a corpus
is a prefix of every larger one up to its last, partial round. Pages that are not UTF-8 are mutated on their ASCII words only.

Writes OUT/warc/part-00000.warc.gz ... (about --records-per-shard responses each: shards keep the same
size as the corpus grows; give OUT/warc to `falconlm refine`) and OUT/truth.json (each derived record's id, URL, kind, round, the id of the
record it copies and its edit rate; round 0's answers are the source's own truth file). The folder
is written to a temp name and renamed (falconlm.atomic), so a killed run leaves nothing behind.

Usage: python scripts/grow_corpus.py --scale 4 --out /tmp/corpus-4x [--source WARC] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "corpora" / "web-bench.warc.gz"
KINDS = (("mutation", 0.80), ("near", 0.10), ("exact", 0.05), ("recrawl", 0.05))
NEAR_RATES = (0.005, 0.01, 0.02, 0.05)
MUTATION_RATE = 0.5
# Markup whose words are not text: tags, comments, scripts and styles (kept byte for byte).
_MARKUP = re.compile(r"(<script\b.*?</script\s*>|<style\b.*?</style\s*>|<!--.*?-->|<[^>]*>)", re.S | re.I)
_MARKUP_B = re.compile(_MARKUP.pattern.encode(), re.S | re.I)
_WORD = re.compile(r"\w+")
_WORD_B = re.compile(rb"[A-Za-z]+")


def read_records(path: Path) -> Iterator[tuple[dict[str, str], bytes, bytes]]:
    """(lower-cased WARC headers, the record's raw bytes, its block) for every record of a (gzipped) WARC.

    Lossless: the raw bytes of all records put together are the file's (broken records included), so
    round 0 is the source byte for byte."""
    with gzip.open(path, "rb") as f:
        while True:
            raw = []
            line = f.readline()
            while line and not line.strip():  # blank lines before a record travel with it
                raw.append(line)
                line = f.readline()
            if not line:
                if raw:
                    yield {}, b"".join(raw), b""
                return
            raw.append(line)
            headers: dict[str, str] = {}
            while True:
                h = f.readline()
                raw.append(h)
                if h in (b"\r\n", b"\n", b""):
                    break
                key, _, value = h.decode("utf-8", "replace").partition(":")
                headers[key.strip().lower()] = value.strip()
            try:
                length = int(headers.get("content-length", 0))
            except ValueError:
                length = 0
            block = f.read(length)
            raw.append(block)
            while f.peek(1)[:1] in (b"\r", b"\n"):  # the closing CRLF CRLF (not the next record's first line)
                tail = f.readline()
                raw.append(tail)
                if tail.strip():
                    break
            yield headers, b"".join(raw), block


def response_record(url: str, record_id: str, date: str, http_head: bytes, body: bytes) -> bytes:
    """A WARC response record around an HTTP head (status line and headers) and a new body."""
    http = http_head + b"\r\n\r\n" + body
    head = ("WARC/1.0\r\nWARC-Type: response\r\n"
            f"WARC-Record-ID: <urn:uuid:{record_id}>\r\nWARC-Date: {date}\r\nWARC-Target-URI: {url}\r\n"
            "WARC-Identified-Payload-Type: text/html\r\nContent-Type: application/http; msgtype=response\r\n"
            f"Content-Length: {len(http)}\r\n\r\n").encode()
    return head + http + b"\r\n\r\n"


def mutate(body: bytes, rate: float, rng: random.Random) -> bytes:
    """The page with each word of its text replaced, with probability `rate`, by a word of the same page."""
    try:
        text, markup, word = body.decode("utf-8"), _MARKUP, _WORD
    except UnicodeDecodeError:  # another ASCII-compatible charset: change its ASCII words only
        text, markup, word = body, _MARKUP_B, _WORD_B
    parts = markup.split(text)  # even indices: text between markup
    pool = [w for p in parts[::2] for w in word.findall(p)]
    if not pool:
        return body
    sub = lambda m: rng.choice(pool) if rng.random() < rate else m.group()  # noqa: E731
    parts[::2] = [word.sub(sub, p) for p in parts[::2]]
    out = parts[0][:0].join(parts)
    return out.encode("utf-8") if isinstance(out, str) else out


class Grower:
    """Derived records of a source's HTML pages, each a function of (seed, round, page index)."""

    def __init__(self, pages: list[dict], seed: int) -> None:
        self.pages, self.seed = pages, seed

    def record_id(self, rnd: int, i: int) -> str:
        """The WARC-Record-ID (a uuid) of derived record i of round `rnd`."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"falconlm-grow/{self.seed}/{rnd}/{i}"))

    def url(self, rnd: int, i: int) -> str:
        """A new URL on the page's own site (so URL filters judge it as they judge the page)."""
        scheme, _, rest = self.pages[i]["url"].partition("://")
        host, slash, path = rest.partition("/")
        return f"{scheme}://{host}/grown-r{rnd}/{path}" if slash else f"{scheme}://{host}/grown-r{rnd}/"

    def kind(self, rnd: int, i: int) -> str:
        """Which kind of record i of round `rnd` is."""
        u = random.Random(f"{self.seed}/{rnd}/{i}/kind").random()
        for name, share in KINDS:
            if u < share:
                return name
            u -= share
        return KINDS[-1][0]

    def mutation(self, rnd: int, i: int) -> bytes:
        """Page i's body, half of its words replaced."""
        return mutate(self.pages[i]["body"], MUTATION_RATE, random.Random(f"{self.seed}/{rnd}/{i}/mutation"))

    def record(self, rnd: int, i: int, count: int) -> tuple[bytes, dict]:
        """(WARC bytes, truth entry) of record i of round `rnd`, whose round holds `count` records."""
        rng = random.Random(f"{self.seed}/{rnd}/{i}")
        kind = self.kind(rnd, i)
        page = self.pages[i]
        entry = {"record_uuid": self.record_id(rnd, i), "kind": kind, "round": rnd, "page": i}
        url, body = self.url(rnd, i), None
        if kind == "mutation":
            body = self.mutation(rnd, i)
        else:
            j = rng.randrange(count)
            while self.kind(rnd, j) != "mutation":  # copies point at documents the corpus holds
                j = rng.randrange(count)
            entry["dup_of"] = self.record_id(rnd, j)
            if kind == "near":
                rate = rng.choice(NEAR_RATES)
                body = mutate(self.mutation(rnd, j), rate, rng)
                s = (1 - rate) ** 5  # share of 5-grams left untouched
                entry.update(edit_rate=rate, jaccard5_expected=round(s / (2 - s), 3))
            elif kind == "exact":
                body = self.mutation(rnd, j)
            else:  # recrawl: the URL of j, the content of another page
                url, body = self.url(rnd, j), self.mutation(rnd, i)
        entry["url"] = url
        return response_record(url, entry["record_uuid"], page["date"], page["http_head"], body), entry


def grow(source: Path, out: Path, scale: float, seed: int = 0, records_per_shard: int = 500, progress: bool = True) -> dict:
    """Write a corpus of `scale` times the source's responses to `out` (shards + truth.json); returns the truth."""
    from tqdm import tqdm

    from falconlm.atomic import atomic_dir, atomic_write_text

    records = list(read_records(source))
    pages = []
    for headers, _raw, block in records:
        head, _, body = block.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split()
        if headers.get("warc-type") == "response" and b"text/html" in head.lower() and status[1:2] == [b"200"]:
            pages.append({"url": headers.get("warc-target-uri", ""), "date": headers.get("warc-date", ""), "http_head": head, "body": body})
    responses = sum(h.get("warc-type") == "response" for h, _, _ in records)
    wanted = max(1, round(scale * responses))
    derived = max(0, wanted - responses)
    grower = Grower(pages, seed)
    truth = {"source": str(source), "scale": scale, "seed": seed, "source_responses": responses, "html_pages": len(pages), "responses": wanted,
             "round0": "the source, record for record (its own truth file holds the answers)", "records": []}
    with atomic_dir(out) as tmp:
        shard, in_shard, files = None, 0, []

        def next_shard() -> None:
            nonlocal shard, in_shard
            if shard is not None:
                shard.close()
            files.append(tmp / "warc" / f"part-{len(files):05d}.warc.gz")
            shard, in_shard = open(files[-1], "wb"), 0

        (tmp / "warc").mkdir()
        next_shard()
        bar = tqdm(total=len(records) + derived, desc=f"grow x{scale:g}", unit="rec", disable=not progress, mininterval=2)
        copied, previous = 0, None
        for headers, raw, _block in records:
            # a new shard (or the end, for a scale < 1) only where a capture ([request,] response, metadata) begins
            kind = headers.get("warc-type")
            starts = kind in ("request", "warcinfo") or (kind == "response" and previous != "request")
            previous = kind
            if starts:
                if copied >= wanted:
                    break
                if in_shard >= records_per_shard:
                    next_shard()
            shard.write(gzip.compress(raw, mtime=0))  # one gzip member per record, as Common Crawl
            in_shard += headers.get("warc-type") == "response"
            copied += headers.get("warc-type") == "response"
            bar.update()
        rnd, made = 1, 0
        while made < derived:
            count = min(len(pages), derived - made)
            for i in range(count):
                data, entry = grower.record(rnd, i, count)
                if in_shard >= records_per_shard:
                    next_shard()
                shard.write(gzip.compress(data, mtime=0))
                in_shard += 1
                truth["records"].append(entry)
                bar.update()
            made += count
            rnd += 1
        shard.close()
        bar.close()
        truth["shards"] = [str(f.relative_to(tmp)) for f in files]
        atomic_write_text(tmp / "truth.json", json.dumps(truth, indent=1))
    return truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, required=True, help="responses, as a multiple of the source's (1 = the source itself)")
    ap.add_argument("--out", type=Path, required=True, help="output folder (must not exist)")
    ap.add_argument("--source", type=Path, default=SOURCE, help=f"the WARC to grow from (default {SOURCE})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--records-per-shard", type=int, default=500)
    a = ap.parse_args()
    if a.out.exists():
        sys.exit(f"{a.out} exists: give a new folder")
    if not a.source.exists():
        sys.exit(f"{a.source} not found: give --source")
    t = grow(a.source, a.out, a.scale, a.seed, a.records_per_shard)
    kinds: dict[str, int] = {}
    for r in t["records"]:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    print(f"{len(t['shards'])} shards in {a.out / 'warc'}: {t['responses']} responses ({len(t['records'])} derived: {kinds})")


if __name__ == "__main__":
    main()
