"""What a dedup run will need, before it starts: disk and memory by stage, from the document count."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from falconlm.data.config import DedupConfig
from falconlm.data.dedup.exact_substring import BYTES_PER_TOKEN, part_tokens_for
from falconlm.data.dedup.minhash import MinHasher
from falconlm.data.readers import ReaderOptions


def estimate(config: DedupConfig, n_docs: int, avg_chars: float = 3000.0, workers: int = 1) -> dict[str, Any]:
    """Disk and memory a run over n_docs documents will need (bytes), by stage."""
    words = avg_chars / 6.0  # ~6 characters per word with its separator on web text
    res = config.resources
    est: dict[str, Any] = {"documents": n_docs, "avg_chars": avg_chars, "workers": workers, "stages": {}}
    corpus = n_docs * avg_chars * 0.35  # jsonl.zst output, ~0.35 byte per character
    if config.minhash is not None:
        m = config.minhash
        batch = max(8, min(256, res.memory_bytes // (4 * 8 * m.num_hashes)))
        sig_batch = batch * m.num_hashes * 8 + MinHasher.BLOCK_ELEMENTS * 8 * 3
        est["stages"]["minhash"] = {
            "disk_signatures": n_docs * m.bands * 16,
            "memory_per_task": min(res.memory_bytes, max(1 << 16, res.memory_bytes // 2) + n_docs * m.bands * 16) + sig_batch,
            "memory_clusters_per_duplicate_doc": 16 * 6,
            "disk_output": corpus,
        }
    if config.exact_substring is not None:
        pt = config.exact_substring.part_tokens or part_tokens_for(res.memory_bytes)
        tokens = n_docs * words
        est["stages"]["exact_substring"] = {
            "disk_tokens": tokens * 8 + n_docs * 8,
            "parts": max(1, int(-(-tokens // pt))),
            "part_tokens": pt,
            "memory_per_task": min(tokens, pt) * BYTES_PER_TOKEN,
            "disk_output": corpus,
        }
    if config.url is not None:
        est["stages"]["url_dedup"] = {"disk_keys": n_docs * 16, "memory_per_task": res.memory_bytes, "disk_output": corpus}
    st = est["stages"].values()
    est["peak_disk"] = sum(sum(v for k, v in s.items() if k.startswith("disk")) for s in st)
    est["peak_memory"] = workers * max([s["memory_per_task"] for s in st] or [0])
    return est


def _h(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def format_estimate(est: dict[str, Any]) -> str:
    """Human-readable form of `estimate`."""
    lines = [f"Estimate for {est['documents']:,} documents of ~{est['avg_chars']:,.0f} characters, {est['workers']} worker(s):"]
    for name, s in est["stages"].items():
        parts = ", ".join(f"{k.replace('_', ' ')} {_h(v) if k.startswith(('disk', 'memory')) else f'{v:,}'}" for k, v in s.items())
        lines.append(f"  {name}: {parts}")
    lines.append(f"  total: disk ~{_h(est['peak_disk'])}, memory ~{_h(est['peak_memory'])} at peak")
    return "\n".join(lines)


def count_documents(inputs: list[Path], reader: ReaderOptions, sample: int = 2000) -> tuple[int, float]:
    """(documents, average characters) estimated from the first shard and the input sizes."""
    from falconlm.data.dedup.common import iter_shard

    if not inputs:
        return 0, 0.0
    n = chars = 0
    for doc in iter_shard(inputs[0], reader):
        n += 1
        chars += len(doc.text)
        if n >= sample:
            break
    if n == 0:
        return 0, 0.0
    total = sum(os.path.getsize(p) for p in inputs)
    if n < sample:  # the whole first shard was read: scale by file size
        docs = int(n * total / max(1, os.path.getsize(inputs[0])))
    else:  # bytes per document from the average text length and the compression
        compressed = str(inputs[0]).endswith((".gz", ".zst", ".parquet"))
        docs = int(total / max(1.0, chars / n * (0.35 if compressed else 1.1)))
    return max(n, docs), chars / n
