"""Line-wise corrections (RefinedWeb §3.2, App. G.2).

Per line, REMOVE it when it is mostly upper case, only numbers, a counter ("3 likes") or a single
word; EDIT it when it is short (<= 10 words) and starts with, ends with or contains a boilerplate
pattern (the pattern is cut out; a line left empty is removed). When the words removed this way are
more than 5% of the document's words, DROP the whole document (it is mostly page chrome).

The paper did not publish its patterns or cut-offs; the lists below are ours, kept readable on
purpose: add a pattern by adding a line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from falconlm.data.document import Document
from falconlm.data.step import PipelineStep

# Boilerplate at the START of a short line ("Sign in to comment", "Share this: ...").
START_PATTERNS = [
    r"sign[ -]?in",
    r"sign[ -]?up",
    r"log[ -]?in",
    r"log[ -]?out",
    r"register",
    r"subscribe",
    r"share (?:this|on)",
    r"follow us",
    r"posted (?:by|in|on)",
    r"written by",
    r"published (?:by|on)",
    r"last (?:updated|modified)",
    r"skip to (?:main )?content",
    r"jump to",
    r"back to top",
    r"home ?[>»/|]",
    r"you are here",
    r"tags?:",
    r"categor(?:y|ies):",
    r"filed under",
    r"advertisement",
    r"sponsored",
    r"related (?:posts|articles|stories)",
    r"previous (?:post|article)",
    r"next (?:post|article)",
    r"leave a (?:comment|reply)",
    r"click here",
    r"photo(?:graph)?:",
    r"image:",
    r"source:",
]

# Boilerplate at the END of a short line ("... Read more", "... (Continue reading)").
END_PATTERNS = [
    r"read more ?(?:\.{3}|…|»|>+)?",
    r"continue reading ?(?:\.{3}|…|»|>+)?",
    r"click here(?: to [\w ]+)?",
    r"learn more",
    r"see more",
    r"show more",
    r"view (?:all|more)",
    r"\(?\d+ comments?\)?",
    r"reply",
    r"permalink",
    r"share",
    r"tweet",
]

# Boilerplate ANYWHERE in a short line ("3 items in cart", "All rights reserved").
ANYWHERE_PATTERNS = [
    r"items? in (?:your )?(?:cart|basket|bag)",
    r"add to (?:cart|basket|bag|wishlist)",
    r"shopping (?:cart|basket|bag)",
    r"all rights reserved",
    r"copyright ©?",
    r"©",
    r"privacy policy",
    r"cookie (?:policy|settings|preferences)",
    r"terms (?:of (?:use|service)|and conditions|& conditions)",
    r"we use cookies",
    r"accept (?:all )?cookies",
    r"powered by",
    r"javascript (?:is )?(?:disabled|required)",
    r"enable javascript",
    r"free shipping",
    r"newsletter",
]

# "12 likes", "1.2K views", "3 comments", "Comments (4)", "♥ 25".
COUNTER_PATTERN = (
    r"^\W*(?:\d[\d,.]*\s*[kKmM]?\+?\s*"
    r"(?:likes?|views?|shares?|comments?|repl(?:y|ies)|retweets?|followers?|following|votes?|"
    r"points?|reviews?|answers?|downloads?|reads?|hits?|favou?rites?|reactions?|subscribers?|stars?|forks?)"
    r"|(?:likes?|views?|shares?|comments?|repl(?:y|ies)|votes?|reviews?|answers?)\s*[:(]?\s*\d[\d,.]*\s*[kKmM]?\)?)\W*$"
)


@dataclass(frozen=True)
class LineConfig:
    """Cut-offs of the line-wise stage (the paper's 5% rule; the rest are our choices)."""

    max_removed_word_frac: float = 0.05  # drop the document above this
    max_uppercase_frac: float = 0.5  # a line is "mostly upper case" above this share of its letters
    min_letters_for_uppercase: int = 4  # shorter lines ("OK", "FAQ") are not judged by case
    short_line_words: int = 10  # boilerplate patterns only edit lines of at most this many words
    remove_single_word_lines: bool = True  # a line of one word is removed


_START = re.compile(r"^\W*(?:" + "|".join(START_PATTERNS) + r")\b\W*", re.IGNORECASE)
_END = re.compile(r"\s*\b(?:" + "|".join(END_PATTERNS) + r")\W*$", re.IGNORECASE)
_ANY = re.compile(r"(?:" + "|".join(ANYWHERE_PATTERNS) + r")", re.IGNORECASE)
_COUNTER = re.compile(COUNTER_PATTERN, re.IGNORECASE)
_NUMERIC = re.compile(r"^[\W\d_]*\d[\W\d_]*$")  # digits and punctuation only, at least one digit


_ASCII_LETTERS = str.maketrans("", "", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_ASCII_UPPER = str.maketrans("", "", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _letter_counts(line: str) -> tuple[int, int]:
    """(letters, upper-case letters) in the line; str.translate does ASCII lines in C."""
    if line.isascii():
        n = len(line)
        return n - len(line.translate(_ASCII_LETTERS)), n - len(line.translate(_ASCII_UPPER))
    letters = "".join(filter(str.isalpha, line))
    return len(letters), sum(map(str.isupper, letters))


def line_removal_reason(line: str, words: list[str], config: LineConfig) -> str | None:
    """Why a whole line is removed (uppercase / numeric / counter / single_word), or None."""
    stripped = line.strip()
    if _NUMERIC.match(stripped):
        return "numeric"
    if _COUNTER.match(stripped):
        return "counter"
    n_letters, n_upper = _letter_counts(stripped)
    if n_letters >= config.min_letters_for_uppercase and n_upper / n_letters > config.max_uppercase_frac:
        return "uppercase"
    if config.remove_single_word_lines and len(words) == 1:
        return "single_word"
    return None


def edit_line(line: str, config: LineConfig) -> str:
    """Cut boilerplate patterns out of a short line (returns the line unchanged otherwise)."""
    if len(line.split()) > config.short_line_words:
        return line
    out = _START.sub("", line, count=1)
    out = _END.sub("", out, count=1)
    out = _ANY.sub("", out)
    return " ".join(out.split()) if out != line else line


def correct_lines(text: str, config: LineConfig) -> tuple[str, int, int, dict[str, int]]:
    """(corrected text, words removed, total words, removed lines per reason)."""
    kept: list[str] = []
    removed_words = 0
    total_words = 0
    reasons: dict[str, int] = {}
    for line in text.split("\n"):
        words = line.split()
        total_words += len(words)
        if not words:
            kept.append(line)
            continue
        why = line_removal_reason(line, words, config)
        if why is None:
            edited = edit_line(line, config)
            if edited is not line:
                n_left = len(edited.split())
                removed_words += len(words) - n_left
                if n_left == 0:
                    why = "boilerplate"
                else:
                    kept.append(edited)
                    reasons["edited"] = reasons.get("edited", 0) + 1
                    continue
            else:
                kept.append(line)
                continue
        else:
            removed_words += len(words)
        reasons[why] = reasons.get(why, 0) + 1
    out = "\n".join(kept)
    out = re.sub(r"\n{3,}", "\n\n", out).strip()
    return out, removed_words, total_words, reasons


class LineFilter(PipelineStep):
    """Remove or edit boilerplate lines; drop the document when they hold > 5% of its words."""

    name = "lines"

    def __init__(self, config: LineConfig | None = None) -> None:
        self.config = config or LineConfig()

    def process(self, doc: Document) -> Document | str:
        """Correct the lines, or drop the document past the removed-words cut."""
        text, removed, total, _ = correct_lines(doc.text, self.config)
        if total == 0 or not text:
            return "empty_after_lines"
        if removed / total > self.config.max_removed_word_frac:
            return "too_many_removed_lines"
        doc.text = text
        return doc
