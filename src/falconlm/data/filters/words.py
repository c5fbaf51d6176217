"""Word tokenisation shared by the repetition and quality filters (tokenised once per document).

datatrove tokenises English with spaCy's blank `en` tokenizer. Loading spaCy is slow and its
tokenizer dominates the Gopher filters' cost, so this is one compiled regex that reproduces the
splits that matter for the Gopher rules: punctuation split from words, hyphens/slashes between
letters split out, English clitics split ("do" + "n't", "it" + "'s"), while numbers with
separators (3.14, 1,000, 12:30), dotted abbreviations (U.S.A., e.g.) and inner apostrophes
(o'clock) stay one token. Agreement with datatrove's decisions is measured in
tests/data/test_refine_gopher_agreement.py and benchmarks/bench_refine.py.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(
    r"""
      \w+(?=[nN]['’][tT]\b)                  # "do" of "don't", "ca" of "can't"
    | [nN]['’][tT]\b                         # the "n't" itself
    | (?<=\w)['’](?:s|S|m|M|d|D|ll|LL|ve|VE|re|RE)\b   # clitics 's 'm 'd 'll 've 're
    | (?:[^\W\d_]\.){2,}                     # U.S.A.  e.g.
    | \d+(?:[.,:/]\d+)*(?:[^\W\d_]{1,2}\b)?  # 3.14  1,000,000  12:30  12:30pm  1/2
    | [^\W_](?:[\w]|['’](?=\w))*             # words, o'clock, rock'n'roll
    | _+
    | \.{2,}                                 # ellipsis as one token
    | -{2,}
    | ['`]{2}
    | [^\w\s]                                # any other symbol on its own
    """,
    re.VERBOSE,
)

_last_text: str | None = None
_last_words: list[str] = []


def split_words(text: str) -> list[str]:
    """Word tokens of `text` (whitespace never part of a token)."""
    return _TOKEN.findall(text)


def words_of(text: str) -> list[str]:
    """`split_words` with a one-entry cache: consecutive filters on the same text share the work."""
    global _last_text, _last_words
    if text is not _last_text:
        _last_words = _TOKEN.findall(text)
        _last_text = text
    return _last_words
