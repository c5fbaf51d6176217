"""Incremental detokenizing with stop strings: the one place that decides what text a row has produced.

Rules, the same for `generate`, `stream_generate`, `chat`, the server and the lm-eval adapter:
- an end-of-text token ends the row and adds no text;
- the text ends just before the earliest occurrence of any stop string (finish reason "stop");
- while the row runs, text that may still change is held back: an incomplete UTF-8 character (the
  decoder shows it as U+FFFD) and a tail that could grow into a stop string;
- at the end everything not cut is released.

Decoding is incremental: only the tokens since the last complete character are decoded again, so a
step costs the same at token 10 and at token 10,000 (byte-level BPE decodes a concatenation of
complete characters piecewise to the same text).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Decode = Callable[[list[int]], str]


def text_decoder(tokenizer: Any) -> Decode:
    """token ids -> text without special tokens, from a tokenizer with `decode(ids, skip_special_tokens=...)` or a plain callable."""
    decode = getattr(tokenizer, "decode", None)
    if decode is None:
        return tokenizer
    return lambda ids: decode(ids, skip_special_tokens=True)


class Detokenizer:
    """The visible text of one row, fed one token at a time."""

    def __init__(self, decode: Decode, stop_strings: list[str] | tuple[str, ...] = (), eos_ids: list[int] | tuple[int, ...] = ()):
        self.decode = decode
        self.stops = [s for s in stop_strings if s]
        self.eos = set(eos_ids)
        self.tokens: list[int] = []  # every token fed, eos included
        self.finish_reason: str | None = None
        self.emitted = ""  # the text handed out so far
        self._done_text = ""  # decoded text of tokens before _start (complete characters only)
        self._start = 0  # first token of the part still decoded again
        self._body: list[int] = []  # tokens that carry text (no eos)
        self._text = ""  # the whole decoded text so far, before any stop cut
        self._searched = 0  # stop strings cannot start before this offset of _text any more

    @property
    def finished(self) -> bool:
        """Whether an end-of-text token or a stop string has ended the row."""
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        """All text released so far (the final text once finished)."""
        return self.emitted

    def add(self, token: int) -> str:
        """Feed the next token; returns the text it releases (possibly empty)."""
        if self.finished:
            return ""
        self.tokens.append(token)
        if token in self.eos:
            self.finish_reason = "stop"
            return self._release(self._text)
        self._body.append(token)
        tail = self.decode(self._body[self._start :])
        self._text = self._done_text + tail
        if not tail.endswith("\ufffd"):  # complete characters: never decode these tokens again
            self._done_text, self._start = self._text, len(self._body)
        cut = self._find_stop()
        if cut is not None:
            self.finish_reason = "stop"
            return self._release(self._text[:cut])
        return self._release(self._visible())

    def finish(self, reason: str = "length") -> str:
        """End the row (out of tokens, cancelled, ...) unless a token already did; returns the held-back text."""
        if self.finished:
            return ""
        self.finish_reason = reason
        return self._release(self._text)

    def _find_stop(self) -> int | None:
        if not self.stops:
            return None
        longest = max(map(len, self.stops))
        start = max(0, self._searched - longest + 1)
        hits = [i for i in (self._text.find(s, start) for s in self.stops) if i >= 0]
        self._searched = len(self._text.rstrip("\ufffd"))  # an incomplete character may still change
        return min(hits) if hits else None

    def _visible(self) -> str:
        text = self._text.rstrip("\ufffd")
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return text[: len(text) - hold]

    def _release(self, visible: str) -> str:
        if not visible.startswith(self.emitted):  # never take back text already handed out
            return ""
        delta, self.emitted = visible[len(self.emitted) :], visible
        return delta
