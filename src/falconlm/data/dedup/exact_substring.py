"""Exact-substring dedup (Lee et al. 2022, as RefinedWeb used it): suffix array over a reversible
tokenisation, every span of >= `min_tokens` tokens that occurs more than once, merged and CUT
from all copies (or the document dropped, in the paper's other modes).

Why the LCP rule finds exactly the duplicated spans: a substring of length >= L occurring at p and
q means suffixes p and q share a prefix >= L, so every adjacent pair of suffixes between them in
the suffix array has LCP >= L; in particular p's neighbour does. Marking [sa[i], sa[i] + lcp) for
both suffixes of every adjacent pair with lcp >= L therefore covers precisely the token positions
that lie inside some repeated substring of length >= L (tests check this against brute force)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xxhash

from falconlm.data.config import ExactSubstringConfig
from falconlm.data.dedup.normalize import reversible_words

SEPARATOR_BASE = np.uint64(1 << 32)  # token ids are < 2^32; each document end gets a unique id above

# Bytes per token of a part in memory: the uint64 text, the int32 suffix array, the int32 LCP
# array, kasai's int32 rank array and the coverage count, with headroom for numpy temporaries
# (measured: 58 bytes per token at the peak of the spans stage, benchmarks/bench_dedup.py --memory-scaling).
BYTES_PER_TOKEN = 64


def part_tokens_for(memory_bytes: int) -> int:
    """Largest part (in tokens) whose suffix array fits the memory budget."""
    return max(1 << 12, memory_bytes // BYTES_PER_TOKEN)


def token_ids(tokens: Sequence[str]) -> np.ndarray:
    """32-bit ids of word tokens (xxh32; a collision can only merge two words, never split a match)."""
    f = xxhash.xxh32_intdigest
    return np.fromiter((f(t.encode("utf-8")) for t in tokens), dtype=np.uint64, count=len(tokens))


def reversible_tokens(texts: Sequence[str], tokenizer: str | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(ids, char starts, char ends) per text: words by default, else tokenizer.json ids.

    With a tokenizer, the normalised words are joined by single spaces and encoded with offsets;
    each token maps back to the original span from its first to its last word."""
    words = [reversible_words(t) for t in texts]
    if not tokenizer:
        return [(token_ids(w.tokens), w.starts, w.ends) for w in words]
    from falconlm.data.dedup.shingles import load_tokenizer

    tok = load_tokenizer(tokenizer)
    joined = [" ".join(w.tokens) for w in words]
    encs = tok.encode_batch(joined, add_special_tokens=False)
    out = []
    for w, s, enc in zip(words, joined, encs):
        if not w.tokens:
            out.append((np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(0, np.int64)))
            continue
        # word index of every character of the joined string; the space before a word belongs
        # to it, as byte-level BPE attaches that space to the word's first token
        lens = np.fromiter((len(t) + 1 for t in w.tokens), dtype=np.int64, count=len(w.tokens))
        lens[0] -= 1
        word_of_char = np.repeat(np.arange(len(w.tokens)), lens)
        offs = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        keep = offs[:, 1] > offs[:, 0]
        offs = offs[keep]
        ids = np.asarray(enc.ids, dtype=np.uint64)[keep]
        first = word_of_char[np.clip(offs[:, 0], 0, len(s) - 1)]
        last = word_of_char[np.clip(offs[:, 1] - 1, 0, len(s) - 1)]
        out.append((ids, w.starts[first], w.ends[last]))
    return out


def concat_with_separators(docs: Sequence[np.ndarray], first_separator: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(text, doc start offsets): documents joined with a unique separator after each one."""
    lengths = np.fromiter((len(d) + 1 for d in docs), dtype=np.int64, count=len(docs))
    text = np.empty(int(lengths.sum()), dtype=np.uint64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    for k, (d, s) in enumerate(zip(docs, starts)):
        text[s : s + len(d)] = d
        text[s + len(d)] = SEPARATOR_BASE + np.uint64(first_separator + k)
    return text, starts


def duplicated_mask(text: np.ndarray, min_tokens: int) -> np.ndarray:
    """Boolean mask of the positions inside a substring of >= min_tokens tokens occurring twice or more."""
    from pydivsufsort import divsufsort, kasai

    n = len(text)
    if n <= min_tokens:  # (overlapping repeats need only min_tokens + 1 tokens)
        return np.zeros(n, dtype=bool)
    sa = divsufsort(text)  # int32 below 2^31 tokens: half the memory of int64
    lcp = kasai(text, sa)  # lcp[i] = LCP(suffix sa[i], suffix sa[i+1]); the last entry is 0
    hit = np.flatnonzero(lcp[:-1] >= min_tokens)
    if not len(hit):
        return np.zeros(n, dtype=bool)
    starts = np.concatenate([sa[hit], sa[hit + 1]]).astype(np.int64)
    lengths = np.concatenate([lcp[hit], lcp[hit]]).astype(np.int64)
    del sa, lcp  # free the big arrays before the coverage pass
    # Coverage count by a difference array: +1 at each start, -1 at each end.
    diff = np.bincount(starts, minlength=n + 1)
    diff[: n + 1] -= np.bincount(starts + lengths, minlength=n + 1)[: n + 1]
    return np.cumsum(diff[:n]) > 0


def brute_force_mask(text: Sequence[int], min_tokens: int) -> np.ndarray:
    """Reference implementation for tests: mark every length-L window that occurs twice."""
    t = [int(x) for x in text]
    seen: dict[tuple, int] = {}
    for i in range(len(t) - min_tokens + 1):
        w = tuple(t[i : i + min_tokens])
        seen[w] = seen.get(w, 0) + 1
    mask = np.zeros(len(t), dtype=bool)
    for i in range(len(t) - min_tokens + 1):
        if seen[tuple(t[i : i + min_tokens])] > 1:
            mask[i : i + min_tokens] = True
    return mask


def token_runs(mask: np.ndarray) -> np.ndarray:
    """[start, end) pairs of the True runs of a boolean mask, shape (k, 2)."""
    if not len(mask):
        return np.empty((0, 2), dtype=np.int64)
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.stack([np.flatnonzero(d == 1), np.flatnonzero(d == -1)], axis=1).astype(np.int64)


def char_spans(token_spans: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> list[tuple[int, int]]:
    """Map [start, end) token ranges to merged [start, end) character ranges of the original text."""
    spans = sorted((int(starts[a]), int(ends[b - 1])) for a, b in token_spans if b > a)
    merged: list[tuple[int, int]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def cut_text(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """The text without the given character spans (Python str offsets: never inside a code point)."""
    out, prev = [], 0
    for s, e in spans:
        out.append(text[prev:s])
        prev = e
    out.append(text[prev:])
    return "".join(out)


def apply_mode(text: str, spans: Sequence[tuple[int, int]], config: ExactSubstringConfig) -> tuple[str | None, str]:
    """(new text or None to drop, reason): the paper's CUT, DROP-ANY and DROP-PARTIAL rules."""
    if not spans:
        return text, "kept"
    dup_chars = sum(e - s for s, e in spans)
    if config.mode == "drop-any":
        return None, "exact_substring_drop_any"
    if config.mode == "drop-partial":
        if dup_chars > config.max_duplicate_fraction * max(1, len(text)):
            return None, "exact_substring_drop_partial"
        return text, "kept"
    new = cut_text(text, spans)
    if len(new.strip()) < config.min_chars:
        return None, "exact_substring_too_short"
    return new, "cut"


def dedup_texts(texts: Sequence[str], config: ExactSubstringConfig | None = None) -> list[tuple[str | None, list[tuple[int, int]]]]:
    """In-memory exact-substring dedup of a list of texts: (new text or None, cut spans) each."""
    config = config or ExactSubstringConfig()
    config.validate()
    toks = reversible_tokens(texts, config.tokenizer)
    text, offsets = concat_with_separators([t[0] for t in toks])
    mask = duplicated_mask(text, config.min_tokens)
    out = []
    for (ids, s, e), off, t in zip(toks, offsets, texts):
        spans = char_spans(token_runs(mask[off : off + len(ids)]), s, e)
        new, _ = apply_mode(t, spans, config)
        out.append((new, spans))
    return out
