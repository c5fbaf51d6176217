"""Packed token shards: documents encoded in parallel, `<|endoftext|>` after each, flat uint16/uint32 files.

Layout of an output directory:
  index.json               dtype, vocab size, eot id, tokenizer hash, per-split list of shards + token counts
  train-00000.bin ...      raw little-endian token ids, whole documents only
  val-00000.bin ...        the held-out split (a fixed fraction of documents, chosen by a hash of the text)
  tokenizer/               a copy of the tokenizer files, so checkpoints can carry them
  progress.json            while running: what is already on disk, so a killed run resumes
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from falconlm.atomic import atomic_open, atomic_write_text, output_dir, remove_stale_temps
from falconlm.errors import FalconError

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
PROGRESS_FILE = "progress.json"


@dataclass
class ShardInfo:
    """One shard file: its name (relative to the index), token and document counts."""

    file: str
    tokens: int
    docs: int


@dataclass
class ShardIndex:
    """The JSON index of a token-shard directory."""

    dtype: str
    vocab_size: int
    eot_id: int
    tokenizer_hash: str
    val_fraction: float
    docs: int = 0
    skipped_docs: int = 0  # unusable records (malformed, no text) plus empty documents
    empty_docs: int = 0  # documents with no text (part of skipped_docs)
    splits: dict[str, list[ShardInfo]] = field(default_factory=lambda: {"train": [], "val": []})
    skipped: dict = field(default_factory=dict)  # the readers' account: per file and reason, with line numbers
    job: dict = field(default_factory=dict)  # what made the shards: inputs (size, mtime), tokenizer, settings

    def tokens(self, split: str) -> int:
        """Total tokens of a split."""
        return sum(s.tokens for s in self.splits.get(split, []))

    def to_dict(self) -> dict:
        """JSON form."""
        d = asdict(self)
        d["tokens"] = {k: self.tokens(k) for k in self.splits}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ShardIndex":
        """Inverse of to_dict."""
        splits = {k: [ShardInfo(**s) for s in v] for k, v in d["splits"].items()}
        keys = {"dtype", "vocab_size", "eot_id", "tokenizer_hash", "val_fraction", "docs", "skipped_docs", "empty_docs", "skipped", "job"}
        return cls(**{k: d[k] for k in keys if k in d}, splits=splits)

    @classmethod
    def load(cls, data_dir: str | os.PathLike) -> "ShardIndex":
        """Read DIR/index.json with a clear error when it is missing or incomplete."""
        path = Path(data_dir) / INDEX_FILE
        if not path.is_file():
            hint = " (tokenization did not finish; rerun `falconlm tokenize` to resume)" if (Path(data_dir) / PROGRESS_FILE).exists() else ""
            raise FalconError(f"{data_dir} is not a token-shard directory: no {INDEX_FILE}{hint}")
        return cls.from_dict(json.loads(path.read_text()))


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (Falcon's 65,024 does), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def is_heldout(text: str, fraction: float) -> bool:
    """Whether a document belongs to the held-out split: a fixed hash of its text, so reruns agree."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "little")
    return h / 2**64 < fraction


# -- worker side -----------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(tokenizer_file: str, dtype: str, val_fraction: float, parent_pid: int | None = None) -> None:
    """Load the tokenizer once per worker process."""
    if parent_pid is not None:  # a pool worker: die with the parent, quietly (falconlm.workers)
        from falconlm.workers import die_with_parent

        die_with_parent(parent_pid)
    from falconlm.tokenizer.falcon import FalconTokenizer

    _WORKER["tok"] = FalconTokenizer.load(tokenizer_file)
    _WORKER["dtype"] = np.dtype(dtype)
    _WORKER["val"] = val_fraction


def _encode_chunk(texts: list[str]) -> list[tuple[np.ndarray, bool]]:
    """Encode a chunk of documents: ids with the end-of-text id appended, and the split flag."""
    tok = _WORKER["tok"]
    out = []
    for text, ids in zip(texts, tok.encode_batch(texts)):
        arr = np.empty(len(ids) + 1, dtype=_WORKER["dtype"])
        arr[:-1] = ids
        arr[-1] = tok.eot_id
        out.append((arr, is_heldout(text, _WORKER["val"])))
    return out


# -- writer ----------------------------------------------------------------------------------------
def _chunks(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_shard(path: Path, arrays: list[np.ndarray]) -> None:
    """One shard file: the arrays' bytes in order, written atomically."""
    with atomic_open(path, "wb") as fh:
        for a in arrays:
            fh.write(a.tobytes())


def write_token_shards(
    corpus: list[str],
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    workers: int = 1,
    shard_tokens: int = 100_000_000,
    val_fraction: float = 0.005,
    text_key: str = "text",
    chunk_docs: int = 256,
    overwrite: bool = False,
    progress: bool = True,
) -> ShardIndex:
    """Tokenize corpus files into packed shards + index.json; resumes a killed run from progress.json."""
    from falconlm.data.readers import ReadReport
    from falconlm.tokenizer.corpus import expand_paths, text_key_hint
    from falconlm.tokenizer.falcon import FalconTokenizer

    if not 0 <= val_fraction < 1:
        raise FalconError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise FalconError("--shard-tokens must be positive")
    files = expand_paths(corpus)
    tok = FalconTokenizer.load(tokenizer_dir)
    tok_file = Path(tokenizer_dir) / "tokenizer.json" if Path(tokenizer_dir).is_dir() else Path(tokenizer_dir)
    dtype = token_dtype(tok.vocab_size)
    out = Path(out_dir)
    job = {
        "files": [str(f.resolve()) for f in files],
        "sizes": [f.stat().st_size for f in files],
        "mtimes": [f.stat().st_mtime_ns for f in files],
        "tokenizer_hash": tok.fingerprint(),
        "val_fraction": val_fraction,
        "shard_tokens": shard_tokens,
        "text_key": text_key,
    }
    index = ShardIndex(dtype=dtype.name, vocab_size=tok.vocab_size, eot_id=tok.eot_id, tokenizer_hash=tok.fingerprint(), val_fraction=val_fraction, job=job)
    if (out / INDEX_FILE).exists() and not overwrite:
        done = ShardIndex.load(out)
        changed = job_differences(done.job, job)
        if not changed:
            log.info("%s already holds a finished tokenization; pass --overwrite to redo it", out)
            print(f"{out} is already complete ({done.tokens('train'):,} train / {done.tokens('val'):,} val tokens); use --overwrite to redo")
            return done
        raise FalconError(f"{out} holds shards made from other inputs or settings ({'; '.join(changed)}); pass --overwrite to redo it or choose another --out")
    with output_dir(out):
        return _tokenize_into(out, files, tok, tok_file, dtype, index, job, workers, shard_tokens, val_fraction, text_key, chunk_docs, overwrite, progress,
                              ReadReport(strict=True), text_key_hint(text_key))


def job_differences(old: dict, new: dict) -> list[str]:
    """What differs between the job a shard directory records and the one asked for now, in words ([] = the same)."""
    if not old:
        return ["its index.json does not record what made it (an older falconlm)"]
    out = []
    if old.get("files") != new["files"]:
        out.append(f"inputs {_names(old.get('files', []))} -> {_names(new['files'])}")
    elif old.get("sizes") != new["sizes"] or old.get("mtimes", new["mtimes"]) != new["mtimes"]:
        changed = [Path(f).name for f, a, b, c, d in zip(new["files"], old.get("sizes", []), new["sizes"], old.get("mtimes", new["mtimes"]), new["mtimes"]) if a != b or c != d]
        out.append(f"input file(s) changed since: {', '.join(changed)}")
    if old.get("tokenizer_hash") != new["tokenizer_hash"]:
        out.append("another tokenizer")
    for key in ("val_fraction", "shard_tokens", "text_key"):
        if old.get(key) != new[key]:
            out.append(f"{key} {old.get(key)!r} -> {new[key]!r}")
    return out


def _names(files: list[str]) -> str:
    shown = ", ".join(Path(f).name for f in files[:3])
    return f"[{shown}{', ...' if len(files) > 3 else ''}]"


def _tokenize_into(out: Path, files: list[Path], tok, tok_file: Path, dtype: np.dtype, index: ShardIndex, job: dict, workers: int, shard_tokens: int,
                   val_fraction: float, text_key: str, chunk_docs: int, overwrite: bool, progress: bool, report, hint: str) -> ShardIndex:
    """The tokenization proper, into an existing `out` (write_token_shards decides whether to run it)."""
    from tqdm import tqdm

    from falconlm.tokenizer.corpus import iter_texts

    docs_done = 0
    prog_path = out / PROGRESS_FILE
    if prog_path.exists() and not overwrite:
        prog = json.loads(prog_path.read_text())
        if prog.get("job") == job:
            saved = ShardIndex.from_dict(prog["index"])
            index.splits, index.docs, index.empty_docs = saved.splits, saved.docs, saved.empty_docs
            docs_done = saved.docs + saved.empty_docs
            print(f"resuming: {docs_done:,} documents already in {sum(len(v) for v in index.splits.values())} shards")
        else:
            log.warning("%s: progress.json is from a different job; starting over", out)
    if overwrite or docs_done == 0:
        for old in list(out.glob("train-*.bin")) + list(out.glob("val-*.bin")) + [out / INDEX_FILE]:
            old.unlink(missing_ok=True)
        index.splits = {"train": [], "val": []}
        index.docs = index.empty_docs = 0
    remove_stale_temps(out)  # shards and progress files a killed run was writing

    buffers: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    counts = {"train": [0, 0], "val": [0, 0]}  # tokens, docs

    def flush() -> None:
        for split in ("train", "val"):
            if not buffers[split]:
                continue
            name = f"{split}-{len(index.splits[split]):05d}.bin"
            _write_shard(out / name, buffers[split])
            index.splits[split].append(ShardInfo(name, counts[split][0], counts[split][1]))
            buffers[split], counts[split] = [], [0, 0]
        atomic_write_text(prog_path, json.dumps({"job": job, "index": index.to_dict()}, indent=2) + "\n")

    def texts() -> Iterator[str]:
        skip = docs_done
        for text in iter_texts(files, text_key=text_key, report=report):
            if skip:
                skip -= 1
                continue
            yield text

    t0 = time.perf_counter()
    new_tokens = 0
    bar = tqdm(desc="tokenize", unit="doc", disable=not progress, initial=docs_done, dynamic_ncols=True)
    ctx = mp.get_context("spawn")
    if workers > 1:
        from falconlm.workers import quiet_resource_tracker

        quiet_resource_tracker()
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(str(tok_file), dtype.name, val_fraction, os.getpid())) if workers > 1 else None
    try:
        if pool is None:
            _init_worker(str(tok_file), dtype.name, val_fraction)
            results = map(_encode_chunk, _chunks(texts(), chunk_docs))
        else:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            results = pool.imap(_encode_chunk, _chunks(texts(), chunk_docs))
        for chunk in results:
            for arr, held in chunk:
                split = "val" if held else "train"
                if len(arr) == 1:  # empty document: nothing but the separator
                    index.empty_docs += 1
                    continue
                buffers[split].append(arr)
                counts[split][0] += len(arr)
                counts[split][1] += 1
                index.docs += 1
                new_tokens += len(arr)
                if counts["train"][0] >= shard_tokens:
                    flush()
            bar.update(len(chunk))
            bar.set_postfix_str(f"{new_tokens / max(time.perf_counter() - t0, 1e-9) / 1e6:.2f} Mtok/s", refresh=False)
        flush()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    report.require_documents(hint=hint)
    if not index.docs:
        raise FalconError(f"every document of the {len(files)} input file(s) is empty: nothing to tokenize")
    index.skipped = report.to_dict()
    index.skipped_docs = report.skipped + index.empty_docs
    tok_copy = out / "tokenizer"
    tok_copy.mkdir(exist_ok=True)
    tok.save(tok_copy)
    atomic_write_text(out / INDEX_FILE, json.dumps(index.to_dict(), indent=2) + "\n")
    prog_path.unlink(missing_ok=True)
    if report.summary():
        print(report.summary())
    if index.empty_docs:
        print(f"skipped {index.empty_docs:,} empty document(s)")
    return index


def shard_path(data_dir: str | os.PathLike, info: ShardInfo) -> Path:
    """Absolute path of a shard listed in an index."""
    return Path(data_dir) / info.file


def load_shard(data_dir: str | os.PathLike, info: ShardInfo, dtype: str) -> np.ndarray:
    """Memory-map one shard read-only, checking its size against the index."""
    path = shard_path(data_dir, info)
    if not path.is_file():
        raise FalconError(f"token shard {path} listed in {INDEX_FILE} is missing")
    arr = np.memmap(path, dtype=np.dtype(dtype), mode="r")
    if len(arr) != info.tokens:
        raise FalconError(f"token shard {path} has {len(arr):,} tokens but {INDEX_FILE} says {info.tokens:,}")
    return arr
