"""URL filtering (RefinedWeb §3.1, App. G.1): domain blocklist, URL word scores, excluded
high-quality domains. Works on the URL alone, before any content is touched."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from falconlm.data.document import Document
from falconlm.data.step import PipelineStep
from falconlm.errors import FalconError

# The UT1 categories RefinedWeb kept (its Table 13; docs/refinedweb.md).
UT1_CATEGORIES = (
    "adult", "phishing", "dating", "gambling", "filehosting", "ddos", "agressif", "chat", "mixed_adult", "arjel",
)
_SPLIT = re.compile(r"[^a-z0-9]+")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_HOST = re.compile(r"[^\s/\\@<>\"']+")


@dataclass(frozen=True)
class URLFilterConfig:
    """Lists and thresholds of the URL stage (None = the bundled default list)."""

    blocklist_dir: str | None = None  # a UT1-format directory (<category>/domains) or a file of domains
    categories: tuple[str, ...] = UT1_CATEGORIES  # UT1 blocklist categories that ban a domain
    use_default_blocklist: bool = True  # use the bundled UT1 snapshot when blocklist_dir is not given
    strict_subwords_file: str | None = None  # words banned anywhere in the URL, one per line (None: the bundled list)
    hard_words_file: str | None = None  # words banning a URL as one of its tokens (None: the bundled list)
    soft_words_file: str | None = None  # words of which soft_threshold ban a URL (None: the bundled list)
    soft_threshold: int = 2  # soft-list hits needed to ban
    exclude_hq_domains: bool = True  # RefinedWeb Table 14
    extra_blocked_domains: tuple[str, ...] = field(default_factory=tuple)  # more domains to ban, e.g. a.com,b.org


def _read_list(path: str | os.PathLike | None, default: str) -> list[str]:
    """One entry a line; '#' comments and blank lines ignored; lower-cased."""
    if path is None:
        text = resources.files("falconlm.assets").joinpath("url", default).read_text(encoding="utf-8")
    else:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise FalconError(f"cannot read the list {path}: {exc.strerror}") from exc
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip().lower()
        if line:
            out.append(line)
    return out


def load_ut1_domains(path: str | os.PathLike, categories: tuple[str, ...] = UT1_CATEGORIES) -> set[str]:
    """Domains of a UT1 blacklist directory (`<category>/domains` files) or of a plain file."""
    p = Path(path)
    if p.is_file():
        return set(_read_list(p, ""))
    if not p.is_dir():
        raise FalconError(f"--url-blocklist {path} is neither a UT1 directory nor a file")
    domains: set[str] = set()
    found = False
    for cat in categories:
        f = p / cat / "domains"
        if f.is_file():
            found = True
            domains.update(_read_list(f, ""))
    if not found:
        raise FalconError(
            f"{path} holds none of the UT1 category files <category>/domains for {', '.join(categories)}"
        )
    return domains


def host_of(url: str) -> str:
    """Lower-cased host name of a URL, without port, credentials or a trailing dot."""
    try:
        host = urlsplit(url if "//" in url else "//" + url).hostname or ""
    except ValueError:
        return ""
    host = host.rstrip(".").lower()
    return host if _HOST.fullmatch(host) else ""


def domain_suffixes(host: str) -> list[str]:
    """'a.b.example.com' -> ['a.b.example.com', 'b.example.com', 'example.com', 'com']."""
    parts = host.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]


class URLFilter(PipelineStep):
    """Drop a document whose URL is blocklisted, scores as adult/spam, or is a high-quality domain."""

    name = "url_filter"

    def __init__(self, config: URLFilterConfig | None = None) -> None:
        self.config = c = config or URLFilterConfig()
        self.blocked: set[str] = set(_read_list(None, "blocklist_domains.txt")) if c.use_default_blocklist else set()
        if c.blocklist_dir:
            self.blocked |= load_ut1_domains(c.blocklist_dir, c.categories)
        self.blocked |= {d.lower() for d in c.extra_blocked_domains}
        self.hq = set(_read_list(None, "hq_domains.txt")) if c.exclude_hq_domains else set()
        self.hard = frozenset(_read_list(c.hard_words_file, "hard_words.txt"))
        self.soft = frozenset(_read_list(c.soft_words_file, "soft_words.txt"))
        strict = sorted(set(_read_list(c.strict_subwords_file, "strict_subwords.txt")), key=len, reverse=True)
        self._strict = _compile_subwords(tuple(strict))

    def check(self, url: str) -> str | None:
        """The drop reason for a URL, or None to keep it."""
        host = host_of(url)
        if not host:
            return "bad_url"
        suffixes = domain_suffixes(host)
        if any(s in self.blocked for s in suffixes):
            return "blocklisted_domain"
        if any(s in self.hq for s in suffixes):
            return "hq_domain_excluded"
        low = url.lower()
        if self._strict is not None and self._strict.search(_NON_ALNUM.sub("", low)):
            return "strict_subword"
        words = [w for w in _SPLIT.split(low) if w]
        if any(w in self.hard for w in words):
            return "hard_word"
        if sum(w in self.soft for w in words) >= self.config.soft_threshold:
            return "soft_words"
        return None

    def process(self, doc: Document) -> Document | str:
        """Keep or drop on the URL alone."""
        if not doc.url:
            return "no_url"
        reason = self.check(doc.url)
        return doc if reason is None else reason


@lru_cache(maxsize=8)
def _compile_subwords(words: tuple[str, ...]) -> re.Pattern[str] | None:
    if not words:
        return None
    return re.compile("|".join(re.escape(w) for w in words))
