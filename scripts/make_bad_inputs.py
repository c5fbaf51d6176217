#!/usr/bin/env python3
"""A deterministic corpus of bad inputs for the CLI misuse tests (tests/cli/): every way an input
file can be wrong that a new user meets, each next to a good file of the same format.

    python scripts/make_bad_inputs.py --out /tmp/bad_inputs

writes, in OUT:
    good.jsonl            40 English documents (one JSON object per line, a "text" field)
    good.jsonl.zst        the same, zstd-compressed          good.jsonl.gz  the same, gzip-compressed
    broken_lines.jsonl    good lines with 3 lines that are not JSON and 2 objects without "text"
    empty.jsonl           0 bytes                            blank.jsonl    only blank lines
    corrupt.jsonl.zst     a zstd frame (with its checksum) whose middle is overwritten
    truncated.jsonl.zst   a zstd frame cut short
    corrupt.jsonl.gz      a gzip member whose deflate stream is overwritten
    random.jsonl.gz       random bytes with a .gz name       random.jsonl.zst  random bytes with a .zst name
    empty.warc.gz         a gzip file holding nothing        random.warc.gz    random bytes
    french.jsonl          40 French documents (stop-word rule test)
    chat.jsonl            8 chat conversations (finetune)
    bad.yaml              a YAML syntax error                wrong_type.yaml   a field of the wrong type
Stdlib plus zstandard (the `data` extra) only; the same files on every run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

EN = ("the of and to in is that it was for on are with as this by be at from have or one had not but "
      "what all were when we there can an your which their said if do will each about how up out them "
      "falcon desert river model token web page data search light water people history city").split()
FR = ("le la les de des du et en un une est que qui dans pour pas sur au avec ce il elle nous vous ils "
      "sont plus par mais comme tout faire sans leur aussi bien fait été être cette ville rivière "
      "modèle histoire données lumière eau gens maison jardin").split()


def _doc(rng: random.Random, words: list[str], sentences: int = 6) -> str:
    out = []
    for _ in range(sentences):
        s = " ".join(rng.choice(words) for _ in range(rng.randint(8, 14)))
        out.append(s[0].upper() + s[1:] + ".")
    return " ".join(out)


def _lines(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def _damage(data: bytes, start: int, n: int = 64) -> bytes:
    """`data` with n bytes from `start` replaced by a fixed pattern (past any header)."""
    b = bytearray(data)
    b[start : start + n] = bytes((i * 37 + 11) % 256 for i in range(n))
    return bytes(b)


def build(out: Path) -> dict[str, Path]:
    """Write every fixture into `out`; returns name -> path."""
    import zstandard

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(18)
    good = [{"id": f"en-{i}", "url": f"https://news.example.org/en/{i}", "text": _doc(rng, EN)} for i in range(40)]
    files: dict[str, bytes] = {}
    files["good.jsonl"] = _lines(good)
    files["good.jsonl.zst"] = zstandard.ZstdCompressor(level=3).compress(files["good.jsonl"])
    files["good.jsonl.gz"] = gzip.compress(files["good.jsonl"], mtime=0)
    broken = [json.dumps(r) for r in good[:10]]
    broken[2:2] = ['{"text": "unterminated']
    broken[5:5] = ["not json at all"]
    broken[7:7] = ['{"body": "no text field here"}']
    broken.append("[1, 2, 3")
    broken.append('{"text": 42}')
    files["broken_lines.jsonl"] = ("\n".join(broken) + "\n").encode()
    files["empty.jsonl"] = b""
    files["blank.jsonl"] = b"\n\n  \n"
    # Big enough that the damage sits inside the compressed body, not the frame header.
    big = _lines(good * 8)
    files["corrupt.jsonl.zst"] = _damage(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(big), 200)
    files["truncated.jsonl.zst"] = zstandard.ZstdCompressor(level=3).compress(big)[:-300]
    files["corrupt.jsonl.gz"] = _damage(gzip.compress(big, mtime=0), 200)
    files["random.jsonl.gz"] = rng.randbytes(4096)
    files["random.jsonl.zst"] = rng.randbytes(4096)
    files["empty.warc.gz"] = gzip.compress(b"", mtime=0)
    files["random.warc.gz"] = rng.randbytes(4096)
    files["french.jsonl"] = _lines([{"id": f"fr-{i}", "url": f"https://journal.example.fr/{i}", "text": _doc(rng, FR, 8)} for i in range(40)])
    chats = [{"messages": [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": _doc(rng, EN, 1)}]} for i in range(8)]
    files["chat.jsonl"] = _lines(chats)
    files["bad.yaml"] = b"quality:\n  min_doc_words: [1, 2\n"
    files["wrong_type.yaml"] = b"quality:\n  min_doc_words: many\n"
    paths = {}
    for name, data in files.items():
        (out / name).write_bytes(data)
        paths[name] = out / name
    return paths


def main() -> None:
    """Command line: --out DIR."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    paths = build(args.out)
    print(f"wrote {len(paths)} files to {args.out}")


if __name__ == "__main__":
    main()
