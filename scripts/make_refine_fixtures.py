#!/usr/bin/env python3
"""Deterministic texts for the Gopher agreement test (tests/data/test_refine_gopher_agreement.py):
English-like documents written from a seeded generator, many of them pushed close to a Gopher
threshold (repeated lines/paragraphs/phrases, short documents, bullets, hashes, ellipses, numbers)
and full of the token shapes where word tokenisers differ (contractions, abbreviations, hyphens,
dotted names, units, emoticons).

    python scripts/make_refine_fixtures.py --out /tmp/gopher_texts.jsonl --n 400
"""

from __future__ import annotations

import argparse
import json
import random

SUBJECTS = ["The committee", "Our team", "The river", "A small village", "The new library", "Dr. Smith",
            "The U.S. office", "My neighbour's dog", "The co-op", "Each student", "The server"]
VERBS = ["reviewed", "explained", "built", "can't ignore", "didn't expect", "won't accept", "described",
         "re-opened", "measured", "it's about", "they've seen"]
OBJECTS = ["the annual report", "a 10km route", "the e-mail archive", "12:30pm meetings", "the pickle.Pickler API",
           "the mid-term results", "a 3.5-star review", "the sources.list file", "old photos (1990s)",
           "the data/config folder", "a well-known problem"]
TAILS = ["in the spring", "with great care", "before the deadline", "after the storm", "for the first time",
         "at the end of the day", "and/or later", "e.g. on Mondays", "as expected :)", "without any help"]


def sentence(rng: random.Random) -> str:
    """One sentence from the pools."""
    s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}"
    return s + rng.choice([".", ".", ".", "!", "?", "...", ";", " —"])


def paragraph(rng: random.Random, n: int) -> str:
    """n sentences."""
    return " ".join(sentence(rng) for _ in range(n))


def document(rng: random.Random) -> str:
    """One document of a randomly chosen shape."""
    kind = rng.randrange(9)
    paras = [paragraph(rng, rng.randint(1, 6)) for _ in range(rng.randint(1, 8))]
    if kind == 0:  # repeated paragraphs
        paras += [rng.choice(paras)] * rng.randint(0, 4)
        rng.shuffle(paras)
        return "\n\n".join(paras)
    if kind == 1:  # repeated lines
        lines = [sentence(rng) for _ in range(rng.randint(3, 20))]
        lines += [rng.choice(lines)] * rng.randint(0, 8)
        rng.shuffle(lines)
        return "\n".join(lines)
    if kind == 2:  # a phrase repeated through the text
        phrase = " ".join(rng.choice(OBJECTS).split()[:3])
        return " ".join(f"{sentence(rng)} {phrase}" if rng.random() < 0.5 else sentence(rng)
                        for _ in range(rng.randint(5, 40)))
    if kind == 3:  # short documents near 50 words
        words = paragraph(rng, 8).split()
        return " ".join(words[: rng.randint(35, 70)])
    if kind == 4:  # bullets
        return "\n".join(("- " if rng.random() < 0.92 else "") + sentence(rng) for _ in range(rng.randint(5, 30)))
    if kind == 5:  # hashes and ellipses
        words = paragraph(rng, 6).split()
        out = []
        for w in words:
            out.append(w)
            r = rng.random()
            if r < 0.06:
                out.append("#" + rng.choice(["news", "data", "tbt"]))
            elif r < 0.1:
                out.append("...")
        return " ".join(out)
    if kind == 6:  # numbers and symbols
        words = paragraph(rng, 6).split()
        return " ".join(w if rng.random() > 0.22 else str(rng.randint(1, 9999)) for w in words)
    if kind == 7:  # lines ending with an ellipsis
        return "\n".join(sentence(rng).rstrip(".!?;—") + ("..." if rng.random() < 0.3 else ".")
                         for _ in range(rng.randint(5, 25)))
    return "\n\n".join(paras)


def build(n: int = 400, seed: int = 0) -> list[str]:
    """n documents."""
    rng = random.Random(seed)
    return [document(rng) for _ in range(n)]


def main() -> None:
    """CLI entry."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    with open(a.out, "w", encoding="utf-8") as f:
        for t in build(a.n, a.seed):
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
