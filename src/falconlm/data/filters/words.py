"""Word tokenisation shared by the repetition and quality filters (tokenised once per document).

datatrove tokenises English with spaCy's blank `en` tokenizer, and the Gopher rules count its
tokens, so our decisions only agree with datatrove's if our tokens do. Loading spaCy costs seconds
and its tokenizer dominates the Gopher filters' run time, so this module re-implements the same
*algorithm* with a small rule set written from spaCy's documented behaviour:

1. split on whitespace;
2. peel prefixes (opening punctuation, quotes, currency) and suffixes (closing punctuation,
   quotes, "'s", units after numbers, a final period after a lower-case letter or digit) one at
   a time, stopping when the rest is a special case;
3. split the core on infixes (hyphens and / : = < > between letters, commas between letters,
   ellipses, "." between a lower- and an upper-case letter, arithmetic between digits);
4. special cases: English contractions ("don't" -> do n't, "im" -> i m), abbreviations that keep
   their period ("Dr.", "e.g.", "a."), clock times ("10am" -> 10 am).

Most chunks are plain words and take a fast path. Agreement of the resulting Gopher decisions
with datatrove's is measured in tests/data/test_refine_gopher_agreement.py and in
benchmarks/bench_refine.py.
"""

from __future__ import annotations

from collections import OrderedDict

import re
from itertools import chain

_LOWER = "a-zß-öø-ÿ"
_UPPER = "A-ZÀ-ÖØ-Þ"
_PUNCT = r",:;!?¿؟¡()\[\]{}<>_#*&。？！，、；：～·।،۔؛٪"
_QUOTES = r"'\"”“`‘´’‚„»«「」『』（）〔〕【】《》〈〉⟦⟧"
_CURRENCY = r"$£€¥฿₽₴₠-₿"


def _category_class(cat: str, limit: int = 0x20000) -> str:
    """A regex character-class body with every code point of a Unicode category."""
    import unicodedata

    ranges: list[tuple[int, int]] = []
    for cp in range(limit):
        if unicodedata.category(chr(cp)) == cat:
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)


_ICONS = _category_class("So")  # spaCy's LIST_ICONS: other symbols (°, ®, ™, emoji...)
_UNITS = (
    "km|km²|km³|m|m²|m³|dm|cm|cm²|cm³|mm|mm²|ha|µm|nm|yd|in|ft|kg|g|mg|µg|t|lb|oz|m/s|km/h|kmh|mph|"
    "hPa|Pa|mbar|mb|MB|kb|KB|gb|GB|tb|TB|T|G|M|K|%"
)

_PREFIX = re.compile(
    rf"^(?:§|%|=|—|–|\+(?![0-9])|…|……|\.\.+|[{_PUNCT}]|[{_QUOTES}]|US\$|C\$|A\$|[{_CURRENCY}]|[{_ICONS}])"
)
_SUFFIX = re.compile(
    rf"(?:…|……|\.\.+|[{_PUNCT}]|[{_QUOTES}]|['’][sS]|—|–|[{_ICONS}]"
    rf"|(?<=[0-9])\+|(?<=°[FfCcKk])\.|(?<=[0-9])[{_CURRENCY}]|(?<=[0-9])(?:{_UNITS}))$"
)
_PERIOD_AFTER = set("%²-+…") | set(_QUOTES.replace("\\", "")) | set(_PUNCT.replace("\\", ""))
_INFIX = re.compile(
    rf"…|\.\.+|[{_ICONS}]|(?<=[0-9])[+\-*^](?=[0-9-])"
    rf"|(?<=[^\W\d_{_UPPER}]|[{_QUOTES}])\.(?=[{_UPPER}{_QUOTES}])"
    rf"|(?<=[^\W\d_]),(?=[^\W\d_])"
    rf"|(?<=[^\W_])(?:-|–|—|--|---|——|~)(?=[^\W\d_])"
    rf"|(?<=[^\W_])[:<>=/](?=[^\W\d_])"
)
_URL = re.compile(
    r"^(?:[\w+\-.]{2,}://)?(?:\S+(?::\S*)?@)?"
    r"(?:(?:[A-Za-z0-9\u00a1-\uffff][A-Za-z0-9\u00a1-\uffff_-]{0,62})?[A-Za-z0-9\u00a1-\uffff]\.)+"
    r"([^\W\d_]{2,63})(?::\d{2,5})?(?:[/?#]\S*)?$"
)


def _is_url(s: str) -> bool:
    """spaCy's URL_MATCH in spirit: dotted host names whose last label is lower-case letters."""
    m = _URL.match(s)
    return bool(m) and not any(ch.isupper() for ch in m.group(1))




def _build_specials() -> dict[str, list[str]]:
    """Contractions and abbreviations that the affix rules alone would split wrongly."""
    sp: dict[str, list[str]] = {}

    def add(word: str, parts: list[str]) -> None:
        for w, p in ((word, parts), (word[:1].upper() + word[1:], [parts[0][:1].upper() + parts[0][1:]] + parts[1:])):
            sp.setdefault(w, p)

    # "n't" verbs: stem as spaCy splits it ("ca" n't, "wo" n't)
    nt = ("do", "does", "did", "is", "are", "was", "were", "have", "has", "had", "could", "would", "should",
          "must", "might", "need", "ought", "may", "dare", "ai", "ca", "wo", "sha")
    for stem in nt:
        for ap in ("'", "’"):
            add(f"{stem}n{ap}t", [stem, f"n{ap}t"])
            add(f"{stem}n{ap}t{ap}ve", [stem, f"n{ap}t", f"{ap}ve"])
        add(f"{stem}nt", [stem, "nt"])
        add(f"{stem}ntve", [stem, "nt", "ve"])
    # pronoun + clitic, with and without the apostrophe ("you're"/"youre" -> you re); which pairs
    # exist follows English usage, and bare forms that are ordinary words ("were", "its", "here",
    # "well", "hell", "shell", "ill", "shed", "whore") are never split.
    everyone = ["i", "you", "he", "she", "it", "we", "they", "that", "there", "these", "those", "this",
                "what", "when", "where", "who", "why", "how"]
    takes = {
        "d": everyone,
        "ll": everyone,
        "dve": everyone,
        "llve": everyone,
        "re": ["you", "we", "they", "there", "these", "those", "what", "when", "where", "who", "why", "how"],
        "ve": ["i", "you", "we", "they", "there", "these", "those", "what", "when", "where", "who", "why", "how"],
        "s": ["he", "she", "it", "that", "there", "this", "what", "when", "where", "who", "why", "how"],
    }
    real_words = {"were", "its", "here", "well", "hell", "shell", "ill", "shed", "whore"}
    for c, ps in takes.items():
        for p in ps:
            parts = [c] if len(c) <= 2 else [c[:-2], "ve"]
            for ap in ("'", "’"):
                add(p + ap + ap.join(parts), [p] + [ap + x for x in parts])
            if p + c not in real_words:
                add(p + c, [p] + parts)
    for ap in ("'", "’"):
        add(f"i{ap}m", ["i", f"{ap}m"])
        add(f"i{ap}ma", ["i", f"{ap}ma"])
    sp["I'm"] = ["I", "'m"]
    sp["I’m"] = ["I", "’m"]
    add("im", ["i", "m"])
    add("ima", ["i", "ma"])
    add("cannot", ["can", "not"])
    add("gonna", ["gon", "na"])
    add("gotta", ["got", "ta"])
    add("yall", ["y", "all"])
    for ap in ("'", "’"):
        add(f"y{ap}all", [f"y{ap}", "all"])
        add(f"let{ap}s", ["let", f"{ap}s"])
    # abbreviations keeping their period
    for ch in "abcdefghijklmnopqrstuvwxyzäöü":
        sp[ch + "."] = [ch + "."]
    abbrevs = (
        "Mr. Mrs. Ms. Dr. Prof. St. Mt. Jr. Sr. Inc. Ltd. Co. co. Corp. Bros. Gen. Gov. Rep. Sen. Rev. Adm. "
        "Messrs. vs. v.s. e.g. i.e. E.g. I.e. E.G. I.E. a.m. p.m. Ph.D. D.C. N.Y. "
        "Jan. Feb. Mar. Apr. Jun. Jul. Aug. Sep. Sept. Oct. Nov. Dec. "
        "Ala. Ariz. Ark. Calif. Colo. Conn. Del. Fla. Ga. Ia. Id. Ill. Ind. Kan. Kans. Ky. La. Mass. Md. "
        "Mich. Minn. Miss. Mo. Mont. Neb. Nebr. Nev. Okla. Ore. Pa. Tenn. Va. Wash. Wis."
    )
    for a in abbrevs.split():
        sp[a] = [a]
    return sp


SPECIALS = _build_specials()
EMOTICONS = (
    ":) :-) :)) :( :-( :(( ): )-: (: (-: :D :-D :P :-P :p :-p :/ :-/ ;) ;-) ;D (= =) =( =/ 8) 8-) <3 </3 "
    ":o :O :-o :-O :| :-| :] :[ =] =[ :* :-* ^_^ -_- o.O O.o 0.0 :3 :1 :0 :x :X :> >:( xD XD"
)
for _e in EMOTICONS.split():
    SPECIALS.setdefault(_e, [_e])
SPECIALS.setdefault("and/or", ["and/or"])
for _q in ("''", "’’", "'Cause", "'cause", "'Cos", "'cos", "'bout", "'em"):
    SPECIALS.setdefault(_q, [_q])
for _h in range(1, 13):
    for _ap in ("am", "pm", "a.m.", "p.m."):
        SPECIALS.setdefault(f"{_h}{_ap}", [str(_h), _ap])
MERGE_SPECIALS = frozenset(k for k, v in SPECIALS.items() if len(v) == 1 and not k.isalnum())


def _suffix_len(s: str) -> int:
    """Length of the suffix to peel off `s` (0: none)."""
    m = _SUFFIX.search(s)
    if m:
        return len(s) - m.start()
    if len(s) >= 2 and s[-1] == ".":
        prev = s[-2]
        # a final period leaves a lower-case (or uncased) letter, a digit or punctuation,
        # or two upper-case letters ("USA."), but stays on "S." (initials)
        if prev.isdigit() or (prev.isalpha() and not prev.isupper()) or prev in _PERIOD_AFTER:
            return 1
        if prev.isupper() and len(s) >= 3 and s[-3].isupper():
            return 1
    return 0


def _split_affixes(chunk: str) -> tuple[list[str], str, list[str]]:
    """spaCy's affix loop: (prefixes, core, suffixes in reading order)."""
    specials = SPECIALS
    prefixes: list[str] = []
    suffixes: list[str] = []
    s = chunk
    last = -1
    while s and len(s) != last:
        if s in specials:
            break
        last = len(s)
        mp = _PREFIX.search(s)
        pre = mp.end() if mp else 0
        if pre and s[pre:] and s[pre:] in specials:
            prefixes.append(s[:pre])
            s = s[pre:]
            break
        suf = _suffix_len(s[pre:])
        if suf and s[: len(s) - suf] and s[: len(s) - suf] in specials:
            suffixes.append(s[len(s) - suf :])
            s = s[: len(s) - suf]
            break
        if pre and suf and pre + suf <= len(s):
            prefixes.append(s[:pre])
            suffixes.append(s[len(s) - suf :])
            s = s[pre : len(s) - suf]
        elif pre:
            prefixes.append(s[:pre])
            s = s[pre:]
        elif suf:
            suffixes.append(s[len(s) - suf :])
            s = s[: len(s) - suf]
        if s in specials:
            break
    suffixes.reverse()
    return prefixes, s, suffixes


def _tokenize_chunk(chunk: str, out: list[str]) -> None:
    """Tokens of one whitespace-free chunk, appended to `out`."""
    prefixes, s, suffixes = _split_affixes(chunk)
    toks = prefixes
    if s:
        if s in SPECIALS:
            toks.extend(SPECIALS[s])
        elif _is_url(s):
            toks.append(s)
        else:
            start = 0
            for mi in _INFIX.finditer(s):
                if mi.end() == mi.start():
                    continue
                if mi.start() > start:
                    toks.append(s[start : mi.start()])
                toks.append(s[mi.start() : mi.end()])
                start = mi.end()
            if start < len(s):
                toks.append(s[start:])
    toks.extend(suffixes)
    if len(toks) > 1:
        toks = _merge_specials(toks)
    out.extend(toks)


def _merge_specials(toks: list[str]) -> list[str]:
    """Adjacent tokens of one chunk that spell a special case with punctuation ("z" "." -> "z.",
    ")" ":" -> "):") become that special, as spaCy's special-case matcher does."""
    merged: list[str] = []
    i = 0
    n = len(toks)
    while i < n:
        for width in (3, 2):
            if i + width <= n:
                cand = "".join(toks[i : i + width])
                if cand in MERGE_SPECIALS:
                    merged.append(cand)
                    i += width
                    break
        else:
            merged.append(toks[i])
            i += 1
    return merged


_WORD_PUNCT = re.compile(r"([^\W\d_]+)([,;:!?)\]}\"”’]|\.)\Z")


class _ChunkCache(dict):
    """chunk -> its tokens; a miss tokenises the chunk (the dict lookup itself runs in C)."""

    def __missing__(self, chunk: str) -> tuple[str, ...]:
        m = None
        if (chunk.isalpha() or chunk.isdigit()) and chunk not in SPECIALS:
            toks: tuple[str, ...] = (chunk,)
        elif (m := _WORD_PUNCT.match(chunk)) and m.group(1) not in SPECIALS and chunk not in SPECIALS and (
            m.group(2) != "." or m.group(1)[-1].islower()
        ):
            # the commonest shape, "word," / "word." / "word)": one suffix off a plain word
            toks = (m.group(1), m.group(2))
        else:
            buf: list[str] = []
            _tokenize_chunk(chunk, buf)
            toks = tuple(buf)
        self[chunk] = toks
        return toks


_CACHE = _ChunkCache()
_CACHE_MAX = 1_000_000  # chunks repeat (Zipf); cleared when full to bound memory


def split_words(text: str) -> list[str]:
    """Word tokens of `text`, spaCy-`en`-like (whitespace never part of a token)."""
    if len(_CACHE) > _CACHE_MAX:
        _CACHE.clear()
    return list(chain.from_iterable(map(_CACHE.__getitem__, text.split())))


# Recent texts' words, by object identity (the text is held so its id stays unique). Steps run on
# batches of documents (PipelineStep.batch_size), so the repetition and quality filters see the
# same text a batch apart: the cache holds a few batches.
_RECENT: OrderedDict[int, tuple[str, list[str]]] = OrderedDict()
_RECENT_MAX = 512


def words_of(text: str) -> list[str]:
    """`split_words` with a small cache: filters that follow one another on the same text share the work."""
    hit = _RECENT.get(id(text))
    if hit is not None and hit[0] is text:
        return hit[1]
    words = split_words(text)
    _RECENT[id(text)] = (text, words)
    if len(_RECENT) > _RECENT_MAX:
        _RECENT.popitem(last=False)
    return words
