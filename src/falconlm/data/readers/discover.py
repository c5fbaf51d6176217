"""Which files are inputs: formats told by file name, and files / globs / directories expanded."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from falconlm.errors import FalconError

WARC_SUFFIXES = (".warc", ".warc.gz", ".arc.gz", ".warc.zst")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")  # one document per file
ALL_SUFFIXES = WARC_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES  # what `refine` reads
# What corpus readers (tokenizer training, token shards) read: the text shards refine writes, and plain text.
CORPUS_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES


def input_format(path: str | os.PathLike) -> str:
    """'warc', 'jsonl', 'parquet' or 'text' from the file name."""
    name = str(path).lower()
    if name.endswith(WARC_SUFFIXES):
        return "warc"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    raise FalconError(f"cannot tell the format of {path}: expected one of {', '.join(ALL_SUFFIXES + TEXT_SUFFIXES)}")


def _check_suffix(path: str, suffixes: tuple[str, ...]) -> None:
    if not path.lower().endswith(suffixes):
        raise FalconError(f"cannot tell the format of {path}: expected one of {', '.join(suffixes)}")


def expand_inputs(inputs: list[str | os.PathLike], suffixes: tuple[str, ...] = ALL_SUFFIXES) -> list[Path]:
    """Files, globs and directories (searched recursively for `suffixes`) -> sorted unique files.

    Hidden files are skipped in directories: they are unfinished writes (`.name.tmp-<pid>`) or
    other tools' sidecars, never inputs."""
    found: list[Path] = []
    for item in inputs:
        s = str(item)
        if os.path.isdir(s):
            hits = [
                Path(root) / f
                for root, _, files in os.walk(s)
                for f in files
                if f.lower().endswith(suffixes) and not f.startswith(".")
            ]
            if not hits:
                raise FalconError(f"directory {s} holds no input files ({', '.join(suffixes)})")
            found.extend(hits)
        elif os.path.isfile(s):
            _check_suffix(s, suffixes)  # fail early on an unknown suffix
            found.append(Path(s))
        elif glob.has_magic(s):
            hits = [Path(p) for p in glob.glob(s, recursive=True) if os.path.isfile(p)]
            if not hits:
                raise FalconError(f"the pattern {s} matches no file")
            for p in hits:
                _check_suffix(str(p), suffixes)
            found.extend(hits)
        else:
            raise FalconError(f"input {s} does not exist")
    return sorted(set(found), key=lambda p: str(p))
