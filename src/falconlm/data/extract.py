"""HTML -> text: trafilatura (the paper's choice) or resiliparse (much faster), then RefinedWeb's
post-processing (at most two consecutive newlines, URLs removed), under a per-document time limit."""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from falconlm.data.document import Document
from falconlm.data.step import PipelineStep
from falconlm.errors import FalconError

EXTRACTORS = ("trafilatura", "resiliparse")

# Absolute URLs (scheme or www.), e-mail-free: RefinedWeb removes "all URLs" from the text.
_URL = re.compile(r"(?:\b[a-zA-Z][a-zA-Z0-9+.-]{1,10}://|\bwww\.)[^\s<>\"'\u00a0]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")


@dataclass(frozen=True)
class ExtractConfig:
    """Which extractor, its time limit, and the paper's post-processing switches."""

    extractor: str = "trafilatura"  # trafilatura (the paper's) or resiliparse (several times faster)
    timeout_s: float = 1.0  # CPU seconds per document; 0 disables (datatrove: 1 s of wall time)
    max_newlines: int = 2  # longer runs of newlines are cut to this many
    remove_urls: bool = True  # strip URLs from the extracted text
    # trafilatura settings as in datatrove's RefinedWeb-style example (the paper does not give them)
    favor_precision: bool = True  # trafilatura: prefer leaving text out to taking boilerplate in
    include_comments: bool = False  # trafilatura: keep the comment sections of pages
    deduplicate: bool = True  # trafilatura: drop text repeated within a page


class ExtractTimeout(Exception):
    """Raised inside the extractor when the per-document alarm fires."""


# The limit is a CPU-time ticker: while the step runs, ITIMER_PROF fires every limit / _TICKS_PER_LIMIT
# CPU seconds, and a document still extracting after _TICKS_PER_LIMIT + 1 ticks is stopped (so
# after 1 to 1.25 times the limit). Arming a timer per document would cost two system calls each.
_TICKS_PER_LIMIT = 4
_watch = {"active": False, "ticks": 0}


def _on_tick(signum: int, frame: object) -> None:
    if _watch["active"]:
        _watch["ticks"] += 1
        if _watch["ticks"] > _TICKS_PER_LIMIT:
            _watch["active"] = False
            raise ExtractTimeout()


def postprocess(text: str, max_newlines: int = 2, remove_urls: bool = True) -> str:
    """RefinedWeb's regex clean-up: drop URLs, collapse runs of newlines, strip."""
    # Substring tests first: most texts hold no URL, and a regex scan costs ten times a `in`.
    if remove_urls and ("://" in text or "www." in text):
        text = _URL.sub("", text)
    if " \n" in text or "\t\n" in text:
        text = _TRAILING_SPACE.sub("\n", text)
    if max_newlines > 0 and "\n" * (max_newlines + 1) in text:
        pattern = _MANY_NEWLINES if max_newlines == 2 else re.compile("\n{%d,}" % (max_newlines + 1))
        text = pattern.sub("\n" * max_newlines, text)
    return text.strip()


def extract_text(html: str, config: ExtractConfig) -> str | None:
    """Main text of an HTML page with the configured extractor (no post-processing, no limit)."""
    if config.extractor == "trafilatura":
        import trafilatura

        return trafilatura.extract(
            html,
            favor_precision=config.favor_precision,
            include_comments=config.include_comments,
            deduplicate=config.deduplicate,
        )
    if config.extractor == "resiliparse":
        from resiliparse.extract.html2text import extract_plain_text

        return extract_plain_text(
            html, main_content=True, preserve_formatting=True, alt_texts=False, list_bullets=True
        )
    raise FalconError(f"unknown extractor {config.extractor!r}: choose one of {', '.join(EXTRACTORS)}")


@contextlib.contextmanager
def _ticker(limit_s: float) -> Iterator[None]:
    """SIGPROF every limit / _TICKS_PER_LIMIT CPU seconds while the block runs."""
    old = signal.signal(signal.SIGPROF, _on_tick)
    interval = limit_s / _TICKS_PER_LIMIT
    signal.setitimer(signal.ITIMER_PROF, interval, interval)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)
        _watch["active"] = False


def _watched(fn, *args):
    """fn(*args), stopped by ExtractTimeout after the limit's worth of ticks."""
    _watch["ticks"], _watch["active"] = 0, True
    try:
        return fn(*args)
    finally:
        _watch["active"] = False


class Extract(PipelineStep):
    """Replace the HTML in `doc.text` by its extracted, post-processed main text."""

    name = "extract"

    def __init__(self, config: ExtractConfig | None = None) -> None:
        self.config = config or ExtractConfig()
        if self.config.extractor not in EXTRACTORS:
            raise FalconError(f"unknown extractor {self.config.extractor!r}: choose one of {', '.join(EXTRACTORS)}")
        # A signal-based limit costs nothing per document (no sandbox process, no pickling), but
        # only works in a process's main thread; elsewhere the limit is skipped. It counts CPU
        # time (ITIMER_PROF), not wall time, so a loaded machine does not change which pages
        # time out (and with them the output of a resumed run).
        self._use_alarm = self.config.timeout_s > 0 and threading.current_thread() is threading.main_thread()
        if self.config.extractor == "trafilatura" and self.config.deduplicate:
            # trafilatura's deduplication remembers text segments across calls in a process-wide
            # LRU; a fresh step (one per task) starts it empty, so a task's output depends on its
            # own input only -- whatever ran before in the process, and after a resume.
            from trafilatura.deduplication import LRU_TEST

            LRU_TEST.clear()

    def run(self, docs, stats, on_drop=None):  # noqa: D102 (PipelineStep.run with the ticker armed once)
        if not self._use_alarm:
            yield from super().run(docs, stats, on_drop)
            return
        with _ticker(self.config.timeout_s):
            yield from super().run(docs, stats, on_drop)

    def process(self, doc: Document) -> Document | str:
        """Extract; drop on timeout, error or empty result."""
        try:
            if not self._use_alarm:
                text = extract_text(doc.text, self.config)
            elif signal.getsignal(signal.SIGPROF) is _on_tick:  # armed by run()
                text = _watched(extract_text, doc.text, self.config)
            else:  # called on its own
                with _ticker(self.config.timeout_s):
                    text = _watched(extract_text, doc.text, self.config)
        except ExtractTimeout:
            return "timeout"
        except FalconError:
            raise
        except Exception:  # lxml/resiliparse raise assorted errors on broken markup
            return "extract_error"
        if not text:
            return "empty"
        text = postprocess(text, self.config.max_newlines, self.config.remove_urls)
        if not text:
            return "empty"
        doc.text = text
        return doc
