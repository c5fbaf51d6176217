"""Instruction data: JSONL conversations -> chat-template text -> token ids with a loss mask on the assistant tokens.

Each line is one JSON object in one of three shapes:

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
    {"instruction": "...", "input": "..." (optional), "output": "..."}      (Alpaca)
    {"prompt": "...", "response": "..."}

(the last two may carry a "system" string too). The conversation is rendered with the checkpoint's
ChatTemplate, the same one `falconlm serve` and `falconlm chat` prompt with. The text of each
assistant turn is what the template adds between the generation prompt that precedes the turn and
the end of the turn, so it includes the turn's end (the newline of the default template); the
conversation ends with the eos token, part of the last assistant turn, so the model learns to stop.
Text is encoded segment by segment (prompt, answer, prompt, ...), so the answer tokens are exactly
what generation produces after the prompt's tokens. Only assistant tokens are trained on.

Bad lines (not JSON, an unknown shape, malformed messages, no assistant turn) and samples longer than
a training sequence are reported with file:line and a reason, then skipped or truncated as configured.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from falconlm.errors import CorruptInputError, FalconError
from falconlm.tokenizer.chat_template import ROLES, ChatTemplate, message_text

OVERLONG_ACTIONS = ("truncate", "skip")
BAD_ACTIONS = ("skip", "error")


class BadSample(ValueError):
    """A line that cannot become a training sample; the message is the reason shown to the user."""


@dataclass
class Sample:
    """One conversation as token ids and a same-length mask of the tokens trained on."""

    ids: np.ndarray  # int64
    mask: np.ndarray  # bool: True = an assistant token (a target)
    where: str  # file:line


@dataclass
class Issue:
    """A reported line: where, why, and what was done (skipped / truncated)."""

    where: str
    reason: str
    action: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason} ({self.action})"


@dataclass
class DataReport:
    """What reading the data did: counts, every issue, token totals."""

    files: list[str] = field(default_factory=list)
    lines: int = 0
    samples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    issues: list[Issue] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """Lines that produced no sample."""
        return sum(1 for i in self.issues if i.action == "skipped")

    @property
    def truncated(self) -> int:
        """Samples cut to the sequence length."""
        return sum(1 for i in self.issues if i.action == "truncated")

    def reasons(self) -> Counter:
        """Issue counts by (reason kind, action), the kind being the reason up to its first ':'."""
        return Counter((i.reason.split(":")[0], i.action) for i in self.issues)

    def summary(self) -> str:
        """One line: lines -> samples, skipped and truncated by reason, tokens."""
        parts = [f"{self.lines:,} lines in {len(self.files)} file(s) -> {self.samples:,} samples"]
        if self.issues:
            detail = ", ".join(f"{n} {action} ({kind})" for (kind, action), n in sorted(self.reasons().items()))
            parts.append(detail)
        share = self.trained_tokens / self.tokens if self.tokens else 0.0
        parts.append(f"{self.tokens:,} tokens, {self.trained_tokens:,} trained on ({share:.0%})")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, every issue included."""
        return {
            "files": self.files, "lines": self.lines, "samples": self.samples, "skipped": self.skipped, "truncated": self.truncated,
            "tokens": self.tokens, "trained_tokens": self.trained_tokens,
            "issues": [{"where": i.where, "reason": i.reason, "action": i.action} for i in self.issues],
        }


# ----------------------------------------------------------------------------- shapes


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadSample(f"bad field: {what} must be a string, got {type(value).__name__}")
    return value


def to_messages(record: Any) -> list[dict[str, str]]:
    """The conversation of one JSON record in any of the three shapes; raises BadSample with the reason."""
    if not isinstance(record, dict):
        raise BadSample(f"not a JSON object: got {type(record).__name__}")
    system = [{"role": "system", "content": _text(record["system"], "system")}] if record.get("system") else []
    if "messages" in record:
        raw = record["messages"]
        if not isinstance(raw, list) or not raw:
            raise BadSample("bad messages: must be a non-empty list")
        messages = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise BadSample(f"bad messages: messages[{i}] needs a role of {', '.join(ROLES)}")
            try:
                messages.append({"role": m["role"], "content": message_text(m.get("content"))})
            except FalconError as exc:
                raise BadSample(f"bad messages: messages[{i}]: {exc}") from None
    elif "instruction" in record and "output" in record:
        user = _text(record["instruction"], "instruction")
        extra = _text(record.get("input") or "", "input")
        messages = [*system, {"role": "user", "content": f"{user}\n\n{extra}" if extra else user},
                    {"role": "assistant", "content": _text(record["output"], "output")}]
    elif "prompt" in record and "response" in record:
        messages = [*system, {"role": "user", "content": _text(record["prompt"], "prompt")},
                    {"role": "assistant", "content": _text(record["response"], "response")}]
    else:
        keys = ", ".join(sorted(record)[:6]) or "none"
        raise BadSample(f"unknown shape: keys {keys}; expected messages, instruction/output or prompt/response")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadSample("no assistant turn: nothing to train on")
    if messages[0]["role"] == "assistant":
        raise BadSample("starts with an assistant turn: the chat never prompts with an empty history")
    return messages


def segments(messages: list[dict[str, str]], template: ChatTemplate) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is_assistant) pieces; trailing non-assistant turns are dropped.

    An assistant turn's text is what the template adds after the generation prompt of the history
    before it, up to the end of the turn (e.g. " Paris.\\n" after "...Assistant:").
    """
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    messages = messages[: last + 1]
    full = template.render(messages, add_generation_prompt=False)
    out: list[tuple[str, bool]] = []
    pos = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = template.render(messages[:i], add_generation_prompt=True)
        upto = template.render(messages[: i + 1], add_generation_prompt=False)
        if not (full.startswith(prompt) and full.startswith(upto) and pos <= len(prompt) <= len(upto)):
            raise BadSample(f"template mismatch: the chat template ({template.origin}) does not render this conversation turn by turn, so its assistant text cannot be located")
        out.append((full[pos : len(prompt)], False))
        out.append((full[len(prompt) : len(upto)], True))
        pos = len(upto)
    if pos < len(full):
        out.append((full[pos:], False))
    return [(text, is_assistant) for text, is_assistant in out if text]


# ----------------------------------------------------------------------------- reading


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes) of a .jsonl, .jsonl.gz or .jsonl.zst file; a corrupt stream is a FalconError naming the file."""
    from falconlm.data.readers import open_with_raw

    if path.suffix == ".zst":
        try:
            import zstandard  # noqa: F401
        except ImportError:
            raise FalconError(f"{path} is zstd-compressed; install zstandard (the `data` extra) or decompress it") from None
    fh, _ = open_with_raw(path)  # the data readers' decoders: damage is told apart from the end of the file
    with fh:
        try:
            yield from enumerate(io.BufferedReader(fh) if not isinstance(fh, io.BufferedReader) else fh, start=1)
        except (OSError, EOFError) as exc:  # a damaged gzip/zstd stream
            raise CorruptInputError(f"{path} is corrupt ({exc}); replace it or leave it out of --data") from None


@dataclass
class DataOptions:
    """How samples are made and what happens to bad or overlong ones."""

    max_tokens: int  # tokens one training sequence holds (seq_len + 1)
    on_overlong: str = "truncate"  # truncate | skip
    on_bad: str = "skip"  # skip | error

    def validate(self) -> None:
        """Raise FalconError on unknown choices."""
        if self.on_overlong not in OVERLONG_ACTIONS:
            raise FalconError(f"--on-overlong must be one of {', '.join(OVERLONG_ACTIONS)}, got {self.on_overlong!r}")
        if self.on_bad not in BAD_ACTIONS:
            raise FalconError(f"--on-bad must be one of {', '.join(BAD_ACTIONS)}, got {self.on_bad!r}")


def encode_segments(pieces: list[tuple[str, bool]], encode: Callable[[str], list[int]], eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and target mask of (text, is_assistant) pieces; eos closes a conversation that ends on an answer."""
    ids: list[int] = []
    mask: list[bool] = []
    for text, is_assistant in pieces:
        piece = encode(text)
        ids.extend(piece)
        mask.extend([is_assistant] * len(piece))
    if pieces and pieces[-1][1] and (not ids or ids[-1] != eos_id):
        ids.append(eos_id)
        mask.append(True)
    return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool)


def read_samples(
    files: list[str],
    template: ChatTemplate,
    encode: Callable[[str], list[int]],
    eos_id: int,
    options: DataOptions,
    on_issue: Callable[[Issue], None] | None = None,
) -> tuple[list[Sample], DataReport]:
    """Every usable sample of the files, in order, and the report of what was skipped or truncated."""
    options.validate()
    report = DataReport(files=[str(f) for f in files])
    samples: list[Sample] = []

    def flag(where: str, reason: str, action: str, bad: bool = True) -> None:
        if bad and options.on_bad == "error":
            raise FalconError(f"{where}: {reason} (--on-bad error stops at the first bad line; --on-bad skip reports and skips them)")
        issue = Issue(where, reason, action)
        report.issues.append(issue)
        if on_issue is not None:
            on_issue(issue)

    for name in files:
        path = Path(name)
        if not path.is_file():
            raise FalconError(f"data file {path} does not exist")
        for number, raw in _lines(path):
            where = f"{path}:{number}"
            if not raw.strip():
                continue  # blank lines are not records
            report.lines += 1
            try:
                try:
                    record = json.loads(raw.rstrip(b"\r\n"))
                except UnicodeDecodeError:
                    raise BadSample("not UTF-8 text") from None
                except json.JSONDecodeError as exc:
                    raise BadSample(f"not JSON: {exc.msg} at column {exc.colno}") from None
                ids, mask = encode_segments(segments(to_messages(record), template), encode, eos_id)
            except BadSample as exc:
                flag(where, str(exc), "skipped")
                continue
            except FalconError as exc:  # the template refused the conversation
                flag(where, f"cannot render: {exc}", "skipped")
                continue
            if len(ids) > options.max_tokens:
                reason = f"too long: {len(ids)} tokens, a sequence holds {options.max_tokens}"
                if options.on_overlong == "skip":
                    flag(where, reason, "skipped", bad=False)
                    continue
                ids, mask = ids[: options.max_tokens], mask[: options.max_tokens]
                if not mask[1:].any():
                    flag(where, reason + ", and no answer token is left after truncation", "skipped", bad=False)
                    continue
                flag(where, reason, "truncated", bad=False)
            samples.append(Sample(ids, mask, where))
            report.samples += 1
            report.tokens += len(ids)
            report.trained_tokens += int(mask[1:].sum())  # the first token of a sequence is never a target
    return samples, report
