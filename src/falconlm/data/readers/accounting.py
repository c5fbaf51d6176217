"""The one account of what reading inputs skipped: per file, per reason, with line (record) numbers.

Every reader reports through a `Skips`: `skip(reason, line)` for a record it cannot use (counted in
the step's StepStats and, when a `ReadReport` listens, noted per file with its first line numbers),
`corrupt(why)` for a file whose bytes stop decoding. Commands print `ReadReport.summary()` and call
`require_documents()`, so skipped input is never silent and zero usable documents is an error.
Whether a corrupt file stops the command is the report's `strict`: commands whose result would
silently shrink (tokenize, train-tokenizer, evaluate, dedup) are strict; refine keeps what it read
from a damaged web crawl file and counts it, as RefinedWeb's pipeline does.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falconlm.data.step import StepStats
from falconlm.errors import CorruptInputError, FalconError

LINES_SHOWN = 5  # line numbers kept per file and reason (the count is always complete)
log = logging.getLogger("falconlm.data")


@dataclass
class FileSkips:
    """What one input file gave and skipped."""

    path: str
    documents: int = 0
    reasons: Counter = field(default_factory=Counter)
    lines: dict[str, list[int]] = field(default_factory=dict)  # reason -> first LINES_SHOWN line/record numbers
    corrupt: str | None = None  # why the file stopped decoding, if it did

    @property
    def skipped(self) -> int:
        """Records skipped, a corrupt tail counting as one."""
        return sum(self.reasons.values())

    def describe(self) -> str:
        """`name: 3 malformed_json (lines 3, 6, 11), 1 corrupt_file (...)`."""
        parts = []
        for reason, n in sorted(self.reasons.items()):
            where = self.lines.get(reason)
            more = ", ..." if where and n > len(where) else ""
            at = f" (line{'s' * (n > 1)} {', '.join(map(str, where))}{more})" if where else ""
            parts.append(f"{n} {reason}{at}")
        if self.corrupt:
            parts.append(f"corrupt: {self.corrupt}")
        return f"{Path(self.path).name}: {', '.join(parts)}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stats.json, index.json, markers)."""
        return {"path": self.path, "documents": self.documents, "reasons": dict(self.reasons), "lines": self.lines, "corrupt": self.corrupt}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FileSkips":
        """Inverse of to_dict."""
        return cls(d["path"], d.get("documents", 0), Counter(d.get("reasons", {})), {k: list(v) for k, v in d.get("lines", {}).items()}, d.get("corrupt"))


@dataclass
class ReadReport:
    """What reading a list of inputs yielded and skipped, file by file."""

    strict: bool = False  # a corrupt file raises CorruptInputError instead of being counted
    files: dict[str, FileSkips] = field(default_factory=dict)

    def file(self, path: Any) -> FileSkips:
        """The record of one file (created on first use)."""
        key = str(path)
        if key not in self.files:
            self.files[key] = FileSkips(key)
        return self.files[key]

    @property
    def documents(self) -> int:
        """Documents yielded from every file."""
        return sum(f.documents for f in self.files.values())

    @property
    def skipped(self) -> int:
        """Records skipped in every file."""
        return sum(f.skipped for f in self.files.values())

    def reasons(self) -> Counter:
        """Skip counts by reason over every file."""
        total: Counter = Counter()
        for f in self.files.values():
            total.update(f.reasons)
        return total

    def summary(self) -> str:
        """One line for a command's output: '' when nothing was skipped."""
        bad = [f for f in self.files.values() if f.skipped or f.corrupt]
        if not bad:
            return ""
        return f"skipped {self.skipped:,} unusable record(s): " + "; ".join(f.describe() for f in bad)

    def require_documents(self, what: str = "usable documents", hint: str = "") -> None:
        """FalconError when no file gave a document, naming the files and what was skipped in them."""
        if self.documents:
            return
        names = ", ".join(Path(p).name for p in list(self.files)[:3]) + (", ..." if len(self.files) > 3 else "")
        detail = self.summary() or "the files hold no records"
        raise FalconError(f"no {what} in {len(self.files)} input file(s) ({names}): {detail}{hint}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the totals and every file with a skip."""
        return {"documents": self.documents, "skipped": self.skipped, "reasons": dict(self.reasons()),
                "files": [f.to_dict() for f in self.files.values() if f.skipped or f.corrupt]}


class Skips:
    """A reader's handle on the accounting of one file: counts in the step's StepStats, notes in the ReadReport."""

    def __init__(self, path: Any, stats: StepStats, record: FileSkips | None = None, strict: bool = False) -> None:
        self.path = path
        self.stats = stats
        self.record = record
        self.strict = strict

    def skip(self, reason: str, line: int | None = None) -> None:
        """One record skipped for `reason` (line: its 1-based line or record number)."""
        self.stats.dropped[reason] += 1
        if self.record is not None:
            self.record.reasons[reason] += 1
            if line is not None:
                where = self.record.lines.setdefault(reason, [])
                if len(where) < LINES_SHOWN:
                    where.append(line)

    def corrupt(self, why: str) -> None:
        """The file stops decoding here: an error when strict, else counted and the rest of the file skipped."""
        if self.strict:
            raise CorruptInputError(f"{self.path} is corrupt ({why}); replace it or leave it out of the inputs")
        self.skip("corrupt_file")
        if self.record is not None:
            self.record.corrupt = why
        log.warning("%s is corrupt (%s); the rest of this file is skipped", self.path, why)
