"""Write tests/train/fixtures/sample_corpus.jsonl: a small deterministic English-like corpus.

The text comes from a seeded template grammar (subjects, verbs, objects, numbers, punctuation),
so it has real structure for a tiny model to learn (bigram/trigram regularities) and a known
unigram entropy to beat; it also exercises digits, punctuation and a little non-ASCII text.
Run: python scripts/make_train_sample.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SUBJECTS = ["the falcon", "a small bird", "the old farmer", "my neighbour", "the river", "our team", "the city council",
            "every student", "the engineer", "a quiet village", "the market", "the young doctor"]
VERBS = ["watched", "built", "crossed", "painted", "found", "carried", "opened", "described", "measured", "followed"]
OBJECTS = ["the bridge", "a wooden boat", "the northern valley", "three red apples", "the morning train", "a long letter",
           "the stone wall", "an empty house", "the summer festival", "a blue kite"]
ADVERBS = ["slowly", "carefully", "again", "yesterday", "at dawn", "without a word", "before noon", "with great care"]
CLOSERS = ["It was a fine day.", "Nobody expected that.", "The story ends here.", "Café owners smiled.",
           "Everyone went home.", "That is how it happened!", "Was it worth it?"]


def sentence(rng: random.Random) -> str:
    """One templated sentence, sometimes with a number or a closing remark."""
    s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ADVERBS)}"
    if rng.random() < 0.3:
        s += f", paying {rng.randint(1, 99999)} coins"
    s = s[0].upper() + s[1:] + "."
    if rng.random() < 0.2:
        s += " " + rng.choice(CLOSERS)
    return s


def main(n_docs: int = 1200, seed: int = 1234) -> None:
    """Write the fixture file."""
    rng = random.Random(seed)
    out = Path(__file__).resolve().parents[1] / "tests" / "train" / "fixtures" / "sample_corpus.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        for i in range(n_docs):
            text = " ".join(sentence(rng) for _ in range(rng.randint(2, 6)))
            fh.write(json.dumps({"id": f"doc-{i:05d}", "text": text}, ensure_ascii=False) + "\n")
    print(f"wrote {n_docs} documents to {out}")


if __name__ == "__main__":
    main()
