#!/usr/bin/env python3
"""Build the bundled sample WARC: real documentation pages from Debian packages, plus generated
pages that each exercise one filter, plus broken records. Deterministic given its inputs.

Real pages (nobody on the team wrote them; their licences allow redistribution):
  apache2-doc   (Apache License 2.0)  the Apache HTTP Server manual, English, French, German
  maint-guide, maint-guide-de, -fr, -es  (GPL-2.0-or-later)
                the Debian New Maintainers' Guide, English and three translations; paragraphs of
                the English guide are also reused as the prose of the generated pages
  debian-faq    (verbatim copies permitted with its notice, kept in sample.json)
                one chapter of the Debian FAQ, as a changed page at an already-seen URL

Usage (the .deb files come from any Debian mirror; `apt-get download` fetches them):
    apt-get download apache2-doc maint-guide maint-guide-de maint-guide-fr maint-guide-es debian-faq
    for f in *.deb; do dpkg -x "$f" debroot; done
    python scripts/build_sample.py --root debroot --out src/falconlm/assets/sample

Writes sample.warc.gz and sample.json (the truth: each record's URL, kind and, for generated bad
pages and planted duplicates, the step and reason that must drop it).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import uuid
from pathlib import Path

DATE = "2023-02-01T00:00:00Z"

MG = "usr/share/doc/maint-guide{lang}/html/{page}.{code}.html"
AP = "usr/share/doc/apache2-doc/manual/{lang}/{page}.html"

# (path template values, public URL) — English real pages
EN_PAGES = [(MG.format(lang="", page=p, code="en"), f"https://www.debian.org/doc/manuals/maint-guide/{p}.en.html")
            for p in ("index", "start", "first", "modify", "dreq", "dother", "build", "checkit", "upload",
                      "update", "advanced")]
# Apache manual pages (prose guides, plus three configuration-heavy ones that the Gopher
# alpha-word rule is expected to drop). bind/filter/install/invoking are left out: Debian's "en"
# directory serves Portuguese text for them.
EN_PAGES += [(AP.format(lang="en", page=p), f"https://httpd.apache.org/docs/2.4/{p}.html")
             for p in ("caching", "configuring", "content-negotiation", "custom-error", "dns-caveats", "dso", "env",
                       "getting-started", "handler", "logs", "mpm", "server-wide", "stopping", "urlmapping",
                       "suexec", "howto/auth", "howto/cgi", "howto/htaccess", "howto/http2", "howto/public_html",
                       "misc/security_tips", "ssl/ssl_intro", "ssl/ssl_faq", "vhosts/details", "vhosts/name-based",
                       "vhosts/ip-based", "sections", "howto/ssi", "misc/perf-tuning")]
OTHER_PAGES = []
for lang in ("de", "fr", "es"):
    OTHER_PAGES += [(MG.format(lang=f"-{lang}", page=p, code=lang),
                     f"https://www.debian.org/doc/manuals/maint-guide/{p}.{lang}.html")
                    for p in ("start", "first", "modify")]
OTHER_PAGES += [(AP.format(lang="fr", page=p), f"https://httpd.apache.org/docs/2.4/fr/{p}.html")
                for p in ("getting-started", "howto/auth", "howto/htaccess")]
OTHER_PAGES += [(AP.format(lang="de", page=p), f"https://httpd.apache.org/docs/2.4/de/{p}.html")
                for p in ("bind", "stopping")]


def response_record(url: str, body: bytes, content_type: str = "text/html; charset=utf-8", status: str = "200 OK") -> bytes:
    """One WARC response record (uncompressed)."""
    ctype = f"Content-Type: {content_type}\r\n" if content_type else ""
    http = f"HTTP/1.1 {status}\r\n{ctype}Content-Length: {len(body)}\r\n\r\n".encode() + body
    rid = uuid.uuid5(uuid.NAMESPACE_URL, url)
    head = (
        "WARC/1.0\r\nWARC-Type: response\r\n"
        f"WARC-Target-URI: {url}\r\nWARC-Date: {DATE}\r\nWARC-Record-ID: <urn:uuid:{rid}>\r\n"
        "Content-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {len(http)}\r\n\r\n"
    ).encode()
    return head + http + b"\r\n\r\n"


def warcinfo_record() -> bytes:
    """The leading warcinfo record."""
    body = b"software: falconlm scripts/build_sample.py\r\nformat: WARC File Format 1.0\r\n"
    rid = uuid.uuid5(uuid.NAMESPACE_URL, "falconlm-sample-warcinfo")
    head = (
        "WARC/1.0\r\nWARC-Type: warcinfo\r\n"
        f"WARC-Date: {DATE}\r\nWARC-Record-ID: <urn:uuid:{rid}>\r\n"
        f"Content-Type: application/warc-fields\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body + b"\r\n\r\n"


def gz(data: bytes) -> bytes:
    """One gzip member per record, as in Common Crawl (mtime 0: deterministic)."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def paragraphs_from(html: bytes) -> list[str]:
    """Plain-text <p> paragraphs of a page (long prose ones only)."""
    import lxml.html

    tree = lxml.html.fromstring(html)
    out = []
    for p in tree.iter("p"):
        t = " ".join(p.text_content().split())
        if len(t.split()) >= 25 and "http" not in t:
            out.append(t)
    return out


def page(title: str, body_html: str, head_extra: str = "") -> str:
    """A small, plain HTML page around some body HTML."""
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'>{head_extra}<title>{title}</title></head>"
        f"<body><article><h1>{title}</h1>{body_html}</article></body></html>"
    )


def generated_pages(prose: list[str], rng: random.Random) -> list[dict]:
    """Pages written by this script, each meant to be dropped by one rule (or kept)."""
    def article(n: int) -> str:
        return "".join(f"<p>{html_escape(p)}</p>" for p in rng.sample(prose, n))

    pages: list[dict] = []

    def add(url: str, html: str, step: str | None, reason: str | None, kind: str = "generated", **kw) -> None:
        pages.append({"url": url, "html": html, "step": step, "reason": reason, "kind": kind, **kw})

    # URL stage
    add("http://www.pornhub.com/view_video.php?viewkey=sample", page("Video", article(3)), "url_filter", "blocklisted_domain")
    add("http://cdn.rapidgator.net/file/sample.zip", page("Download", article(3)), "url_filter", "blocklisted_domain")
    add("http://freepornvideos.example.net/latest", page("Latest", article(3)), "url_filter", "strict_subword")
    add("http://www.example.com/online-casino/welcome", page("Welcome", article(3)), "url_filter", "hard_word")
    add("http://www.example.com/meet/hot-singles-dating", page("Meet", article(3)), "url_filter", "soft_words")
    add("https://en.wikipedia.org/wiki/Packaging", page("Packaging", article(3)), "url_filter", "hq_domain_excluded")
    add("https://github.com/example/project/blob/main/README.md", page("README", article(3)), "url_filter", "hq_domain_excluded")
    # one soft-list word alone is allowed: this good page must survive the URL stage and the rest
    add("https://health.example.org/guides/adult-vaccination-schedule", page("Guide", article(5)), None, None, kind="generated_good")
    # extraction
    add("http://www.example.org/empty", "<html><head><script>var x = 1;</script></head><body><script>render()</script></body></html>",
        "extract", "empty")
    # language id: low confidence (codes and numbers, no language)
    codes = " ".join(f"{rng.randrange(16**6):06x}-{rng.randrange(10**4):04d}" for _ in range(160))
    add("http://www.example.org/inventory/codes", page("7f3a9c", f"<p>{codes}</p>"), "language", "low_language_score")
    # repetition: one phrase all over the page (every paragraph distinct, so extractors keep them)
    rep = "".join(
        f"<p>Buy cheap shoes online at the best price. Buy cheap shoes online today, item {i}: "
        f"buy cheap shoes online and save.</p>" for i in range(40)
    )
    add("http://shoes.example.com/cheap", page("Cheap shoes", rep), "repetition", "top_2_gram")
    # quality
    short = ("The meeting about the new package moved to Tuesday at noon. Please bring the notes from last "
             "week and the list of open bugs, so that we can decide which ones to fix before the release.")
    add("http://www.example.org/short-note", page("Note", f"<p>{short}</p>"), "quality", "gopher_short_doc")
    firsts = sorted({" ".join(p.split()[:9]).rstrip(",;:") for p in prose})
    # bullets as "•" lines (<br>-separated: resiliparse's main-content mode drops <ul> lists)
    items = "<br>".join(f"• {html_escape(t)}" for t in rng.sample(firsts, 40))
    add("http://www.example.org/checklist", page("Checklist", f"<p>{items}</p>"), "quality", "gopher_too_many_bullets")
    phrases = ["great product", "fast shipping", "excellent support", "fair price", "friendly staff",
               "clean packaging", "solid build", "quiet motor", "long battery life", "easy setup", "clear manual",
               "bright screen", "sturdy case", "smooth buttons", "quick charging", "reliable connection",
               "modern design", "light weight", "warm colours", "strong signal"]
    nostop = "".join(
        f"<p>Review {i} {' '.join(rng.sample(phrases, len(phrases))).capitalize()}.</p>" for i in range(1, 4)
    )
    add("http://shop.example.org/reviews", page("Reviews", nostop), "quality", "gopher_enough_stop_words")
    hashes = " ".join(f"#{w}" for w in rng.sample(WORDS, 60))
    add("http://www.example.org/hashtags", page("Trending", article(3) + f"<p>{hashes}</p>"), "quality", "gopher_too_many_hashes")
    # line-wise corrections: real prose wrapped in page chrome kept inside the article
    chrome = [
        "Sign in to leave a comment", "Share this article on your timeline", "12 likes", "348 views",
        "Posted by the editorial team", "Read more ...", "3 items in your cart", "All rights reserved",
        "Tags: packaging, debian, guide", "NEWSLETTER SIGNUP FORM HERE", "Subscribe", "Back to top",
        "Continue reading", "Add to cart", "Privacy policy and cookie settings", "Follow us for daily updates",
        "Leave a reply below", "42 comments", "Skip to main content", "Powered by our blog engine",
    ]
    body = "".join(f"<p>{c}</p><p>{html_escape(p)}</p>" for c, p in zip(chrome, rng.sample(prose, len(chrome))))
    add("http://blog.example.net/2023/02/packaging-notes", page("Packaging notes", body), "lines", "too_many_removed_lines")
    # charset: ISO-8859-1 declared only in the meta tag (HTTP header has no charset)
    latin = page("Café culture", article(4).replace("the", "the") + "<p>Le café et la crème brûlée, naïve façade.</p>",
                 head_extra="<meta http-equiv='Content-Type' content='text/html; charset=iso-8859-1'>")
    latin = latin.replace("<meta charset='utf-8'>", "")
    pages.append({"url": "https://cafe.example.org/culture", "html": latin, "encoding": "iso-8859-1",
                  "content_type": "text/html", "step": None, "reason": None, "kind": "generated_good"})
    return pages


def planted_duplicates(root: Path) -> list[dict]:
    """Copies of real pages that the dedup stages must remove (the originals come first and stay)."""
    def real(page: str) -> bytes:
        return (root / AP.format(lang="en", page=page)).read_bytes()

    env = real("env")
    # the same page on a mirror: an exact copy, a MinHash cluster of Jaccard 1.0
    exact = {"url": "http://mirror.example.net/httpd/docs/2.4/env.html", "html": env,
             "step": "minhash", "reason": "minhash_duplicate", "kind": "planted_duplicate", "original": "https://httpd.apache.org/docs/2.4/env.html"}
    # a near copy: another title, and the last of its paragraphs gone (word 5-gram Jaccard ~0.95)
    logs = real("logs").replace(b"<title>", b"<title>Mirror: ", 1)
    cut = logs.rfind(b"<p>")
    near = {"url": "https://docs-mirror.example.org/apache/2.4/logs.html", "html": logs[:cut] + logs[logs.find(b"</p>", cut) + 4:],
            "step": "minhash", "reason": "minhash_duplicate", "kind": "planted_duplicate", "original": "https://httpd.apache.org/docs/2.4/logs.html"}
    # a re-crawl of a URL already seen (scheme, tracking parameter and fragment differ) whose page
    # has since changed completely: only URL dedup removes it
    faq = (root / "usr/share/doc/debian/FAQ/basic-defs.en.html").read_bytes()
    recrawl = {"url": "http://httpd.apache.org/docs/2.4/dso.html?utm_source=newsletter#top", "html": faq,
               "step": "url_dedup", "reason": "url_duplicate", "kind": "planted_duplicate", "original": "https://httpd.apache.org/docs/2.4/dso.html"}
    return [exact, near, recrawl]


WORDS = (
    "apple river mountain violet copper lantern harbor meadow pencil garden quartz falcon willow thunder "
    "marble saddle canyon pepper velvet orchard ribbon glacier compass ember nectar prairie walnut cobalt "
    "lagoon timber saffron beacon cavern juniper pebble summit tundra zephyr almond blossom cedar dune "
    "feather granite hazel island jasmine kettle lemon maple nutmeg oyster pine quill raven sparrow tulip "
    "umber valley whistle yarrow zinnia anchor bramble cinder delta ferry gravel heron ivory jetty kiln "
    "ledger mosaic nimbus otter parcel quarry rustic shingle trellis"
).split()


def html_escape(s: str) -> str:
    """Escape text for HTML."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def build(root: Path, out: Path) -> dict:
    """Write sample.warc.gz + sample.json under `out`; returns the manifest."""
    rng = random.Random(20230201)
    records: list[bytes] = [warcinfo_record()]
    manifest: list[dict] = []
    prose: list[str] = []
    for rel, url in EN_PAGES + OTHER_PAGES:
        path = root / rel
        html = path.read_bytes()
        records.append(response_record(url, html))
        lang = "en" if (rel, url) in EN_PAGES else "other"
        manifest.append({"url": url, "kind": f"real_{lang}", "source": rel, "step": None, "reason": None})
        if lang == "en" and "maint-guide" in rel:
            prose.extend(paragraphs_from(html))
    prose = sorted(set(prose))
    for p in generated_pages(prose, rng):
        enc = p.get("encoding", "utf-8")
        records.append(response_record(p["url"], p["html"].encode(enc), p.get("content_type", "text/html; charset=utf-8")))
        manifest.append({k: v for k, v in p.items() if k not in ("html",)})
    for p in planted_duplicates(root):
        records.append(response_record(p["url"], p["html"]))
        manifest.append({k: v for k, v in p.items() if k != "html"})
    # records that must be skipped by the reader
    records.append(response_record("http://www.example.org/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(64)), "image/png"))
    manifest.append({"url": "http://www.example.org/logo.png", "kind": "not_html", "step": "read", "reason": "not_html"})
    records.append(response_record("http://www.example.org/missing", b"<html>Not found</html>", status="404 Not Found"))
    manifest.append({"url": "http://www.example.org/missing", "kind": "http_404", "step": "read", "reason": "http_status"})
    records.append(b"this line is not a WARC header\r\nnor is this one\r\n\r\n")
    manifest.append({"url": None, "kind": "garbage", "step": "read", "reason": "malformed_record"})
    truncated = response_record("http://www.example.org/truncated", page("Truncated", "<p>" + prose[0] + "</p>").encode())
    records.append(truncated[: len(truncated) // 2])  # cut mid-record: its declared length lies
    manifest.append({"url": "http://www.example.org/truncated", "kind": "malformed", "step": "read", "reason": "malformed_record"})
    # a final good record after the damage proves the reader resynchronises
    tail_url = "https://httpd.apache.org/docs/2.4/vhosts/fd-limits.html"
    records.append(response_record(tail_url, (root / AP.format(lang="en", page="vhosts/fd-limits")).read_bytes()))
    manifest.append({"url": tail_url, "kind": "real_en", "source": "after-damage", "step": None, "reason": None})

    out.mkdir(parents=True, exist_ok=True)
    data = b"".join(gz(r) for r in records)
    (out / "sample.warc.gz").write_bytes(data)
    doc = {
        "description": "falconlm bundled sample: real Debian documentation pages + generated filter cases",
        "licences": {
            "apache2-doc (Apache HTTP Server 2.4 manual, httpd.apache.org)": "Apache-2.0",
            "maint-guide, maint-guide-de/-fr/-es (Debian New Maintainers' Guide, Josip Rodin, Osamu Aoki "
            "et al.; its English paragraphs are reused in the generated pages)": "GPL-2.0-or-later",
            "debian-faq (The Debian GNU/Linux FAQ, chapter basic-defs, served as the planted URL re-crawl)": (
                "Copyright (C) 1996-2003 Software in the Public Interest. Permission is granted to make and "
                "distribute verbatim copies of this document provided the copyright notice and this permission "
                "notice are preserved on all copies."
            ),
            "generated pages (scripts/build_sample.py)": "Apache-2.0, as falconlm",
        },
        "records": manifest,
    }
    (out / "sample.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return doc


def main() -> None:
    """CLI entry."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="directory where the .deb files were extracted (dpkg -x)")
    ap.add_argument("--out", default="src/falconlm/assets/sample")
    a = ap.parse_args()
    doc = build(Path(a.root), Path(a.out))
    size = (Path(a.out) / "sample.warc.gz").stat().st_size
    print(f"{len(doc['records'])} records, {size / 1e6:.2f} MB -> {a.out}/sample.warc.gz")


if __name__ == "__main__":
    main()
