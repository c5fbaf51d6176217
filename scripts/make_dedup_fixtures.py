#!/usr/bin/env python3
"""Deterministic dedup fixtures with planted duplicates and their ground truth.

Writes JSONL shards plus `truth.json`:
- `near` pairs: a copy of a base document with k single-word substitutions spaced >= 5 words
  apart, so exactly 5k of the m word 5-grams change and the Jaccard of the 5-gram sets is
  (m - 5k) / (m + 5k); k is chosen for a target similarity in 0.3 ... 1.0 and the true value
  (computed on the sets) is stored per pair;
- `exact` copies (Jaccard 1.0) under another URL;
- `span` groups: documents sharing one exact passage of a known number of words;
- `urldup`: a second document with the same URL (after normalisation) as an earlier one.
Vocabulary words are random letter strings, so unrelated documents share no 5-gram.

Usage: python scripts/make_dedup_fixtures.py OUT_DIR [--bases 300] [--words 200] [--shards 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from falconlm.data.dedup.shingles import jaccard, ngram_set  # noqa: E402

TARGETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
ACCENTED = "àéîõüçñ"


def _word(rng: random.Random) -> str:
    n = rng.randint(3, 9)
    w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))
    if rng.random() < 0.03:  # a few accented words exercise the NFD path
        i = rng.randrange(n)
        w = w[:i] + rng.choice(ACCENTED) + w[i + 1 :]
    return w


def _render(words: list[str], rng: random.Random) -> str:
    """Words -> text with some capitals and punctuation (removed again by normalisation)."""
    out = []
    for i, w in enumerate(words):
        if i % 13 == 0:
            w = w.capitalize()
        if i % 11 == 10:
            w += rng.choice([",", ".", ";", "!"])
        out.append(w)
    return " ".join(out)


def near_copy(words: list[str], target: float, rng: random.Random) -> list[str]:
    """Substitute k words >= 5 apart so the 5-gram Jaccard is (m - 5k)/(m + 5k) ~ target."""
    m = len(words) - 4
    k = round(m * (1 - target) / (5 * (1 + target)))
    slots = list(range(0, len(words), 5))
    rng.shuffle(slots)
    out = list(words)
    for pos in sorted(slots[:k]):
        out[pos] = "zz" + _word(rng)  # "zz" prefix: never a vocabulary word
    return out


def build(out: Path, bases: int = 300, words: int = 200, shards: int = 3, seed: int = 0, span_groups: int = 20) -> dict:
    """Write the fixture shards and truth.json under `out`; return the truth."""
    rng = random.Random(seed)
    vocab = list(dict.fromkeys(_word(rng) for _ in range(50000)))  # ordered: no hash seed dependence
    docs: list[dict] = []
    truth: dict = {"near": [], "exact": [], "span": [], "urldup": [], "params": {"bases": bases, "words": words, "seed": seed}}

    def add(text: str, url: str, kind: str) -> str:
        did = f"d{len(docs):06d}"
        docs.append({"id": did, "text": text, "url": url, "metadata": {"kind": kind}})
        return did

    base_words = []
    for b in range(bases):
        ws = [rng.choice(vocab) for _ in range(words)]
        base_words.append(ws)
        add(_render(ws, rng), f"https://site{b % 37}.example.com/page/{b}", "base")
    for b in range(bases):
        ws = base_words[b]
        target = TARGETS[b % len(TARGETS)]
        if target == 1.0:
            cid = add(docs[b]["text"], f"https://mirror{b}.example.org/copy", "exact")
            truth["exact"].append({"a": docs[b]["id"], "b": cid})
            continue
        cw = near_copy(ws, target, rng)
        cid = add(_render(cw, rng), f"https://other{b}.example.net/near", "near")
        j = jaccard(ngram_set(" ".join(ws)), ngram_set(" ".join(cw)))
        truth["near"].append({"a": docs[b]["id"], "b": cid, "target": target, "jaccard5": round(j, 6)})
    # Shared exact passages of known length in otherwise unrelated documents.
    for g in range(span_groups):
        length = (30, 60, 120)[g % 3]
        passage = [rng.choice(vocab) for _ in range(length)]
        members = []
        for _ in range(2 + g % 2):
            pre = [rng.choice(vocab) for _ in range(rng.randint(20, 60))]
            post = [rng.choice(vocab) for _ in range(rng.randint(20, 60))]
            members.append(add(_render(pre, rng) + "\n" + " ".join(passage) + "\n" + _render(post, rng), f"https://span{g}-{len(docs)}.example.com/", "span"))
        truth["span"].append({"words": length, "docs": members, "passage": " ".join(passage)})
    # URL duplicates: same page under a URL that differs only in case of host, fragment, default port.
    for u in range(max(1, bases // 20)):
        src = docs[u * 3]
        url = src["url"].replace("https://", "HTTPS://").replace(".com/", ".com:443/") + "#section"
        ws = [rng.choice(vocab) for _ in range(words)]
        did = add(_render(ws, rng), url, "urldup")
        truth["urldup"].append({"a": src["id"], "b": did})
    # Deterministic shuffle into shards; bases keep first positions within their shard order.
    order = list(range(len(docs)))
    random.Random(seed + 1).shuffle(order)
    # Keep every source before its copy globally so "first kept" is the source.
    pos = {d: k for k, d in enumerate(order)}
    order.sort(key=lambda i: (docs[i]["metadata"]["kind"] not in ("base", "span"), pos[i]))
    out.mkdir(parents=True, exist_ok=True)
    per = -(-len(order) // shards)
    for s in range(shards):
        with open(out / f"shard-{s:02d}.jsonl", "w", encoding="utf-8") as f:
            for i in order[s * per : (s + 1) * per]:
                f.write(json.dumps(docs[i], ensure_ascii=False) + "\n")
    truth["documents"] = len(docs)
    (out / "truth.json").write_text(json.dumps(truth, indent=1), encoding="utf-8")
    return truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--bases", type=int, default=300)
    ap.add_argument("--words", type=int, default=200)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t = build(a.out, a.bases, a.words, a.shards, a.seed)
    print(f"wrote {t['documents']} documents to {a.out} ({len(t['near'])} near, {len(t['exact'])} exact, {len(t['span'])} span groups, {len(t['urldup'])} urldup)")


if __name__ == "__main__":
    main()
