"""URL dedup: keep the first document of each normalised URL across shards, and drop URLs kept by
earlier runs through a persistent index (RefinedWeb's "URLs of samples kept from earlier parts").

Stages: keys (per shard: sorted (url hash, doc) records) -> decide (one task: bounded k-way merge
of all shards and of the index; first document per URL kept; new index file written) -> filter.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import xxhash

from falconlm.atomic import atomic_write_text
from falconlm.data.config import Resources, UrlDedupConfig
from falconlm.data.dedup.common import (
    DedupTask,
    OutputTask,
    ShardTask,
    global_id,
    output_path,
    removed_dir,
    size_of,
    stats_dict,
    work_dir,
)
from falconlm.data.dedup.merge import merge_groups
from falconlm.data.dedup.external_sort import ExternalSorter
from falconlm.data.dedup.records import KEY_DOC, PAIR, RecordWriter, ShardRemovalWriter, write_records
from falconlm.data.executor import Stage, report_progress, run_stage
from falconlm.data.stage import StageContext, StageResult
from falconlm.data.step import StepStats

INDEX_DOC = np.uint64(2**64 - 1)  # "doc" of index records: sorts after every real document
_TRACKING = ("utm_", "fbclid", "gclid", "mc_cid", "mc_eid")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def normalize_url(url: str) -> str:
    """Canonical form for URL dedup: scheme-less, lowercase host without www. and default port,
    no fragment, no tracking parameters, sorted query, no trailing slash."""
    url = url.strip()
    try:
        parts = urlsplit(url if "://" in url else "http://" + url)
        host = (parts.hostname or "").rstrip(".")
        port = parts.port
    except ValueError:  # a malformed port or IPv6 literal: compare the raw string
        return url.lower()
    if host.startswith("www."):
        host = host[4:]
    scheme = parts.scheme.lower()
    netloc = host if port is None or str(port) == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not k.lower().startswith(_TRACKING))
    path = parts.path.rstrip("/") or ""
    return urlunsplit(("", netloc, path, urlencode(query), ""))[2:]


def url_key(url: str) -> int:
    """64-bit hash of the normalised URL."""
    return xxhash.xxh64_intdigest(normalize_url(url).encode("utf-8"))


@dataclass(kw_only=True)
class UrlKeyTask(ShardTask):
    """Hash one shard's URLs into sorted (key, doc) records."""

    def run(self) -> dict[str, Any]:
        keys, docs = [], []
        n = 0
        for i, doc in enumerate(self.documents()):
            n += 1
            if doc.url:
                keys.append(url_key(doc.url))
                docs.append(global_id(self.shard, i))
        rec = np.empty(len(keys), KEY_DOC)
        rec["key"], rec["doc"] = keys, docs
        rec = rec[np.lexsort((rec["doc"], rec["key"]))]
        write_records(Path(self.work) / "keys" / f"s{self.shard:05d}.bin", rec, sorted_=True)
        report_progress(docs=n, nbytes=self.size_bytes)
        return {"docs_read": n, "with_url": len(keys)}


def index_files(index: str | None, exclude_run: str) -> list[Path]:
    """Index files of earlier runs (this run's own file excluded, so a resumed run is unaffected)."""
    if not index or not os.path.isdir(index):
        return []
    return sorted(p for p in Path(index).glob("urls-*.bin") if p.name != f"urls-{exclude_run}.bin")


@dataclass(kw_only=True)
class UrlDecideTask(DedupTask):
    """Merge all shards' keys with the index: first document per URL wins."""

    n_shards: int
    config: UrlDedupConfig
    run_id: str  # names this run's file in the index (so a resumed run ignores what it wrote itself)

    def run(self) -> dict[str, Any]:
        cfg = self.config
        work = Path(self.work)
        files = [work / "keys" / f"s{s:05d}.bin" for s in range(self.n_shards)] + index_files(cfg.index, self.run_id)
        chunk = max(1024, self.res.memory_bytes // (3 * KEY_DOC.itemsize * max(1, len(files))))
        # Removal rows (doc, 1 if seen in an earlier run) sorted by document on disk: memory stays
        # within the budget however many URLs repeat.
        shutil.rmtree(work / "removed-sort", ignore_errors=True)  # a killed attempt's runs
        removed = ExternalSorter(work / "removed-sort", self.res.memory_bytes // 2)
        new_index = None
        if cfg.index and cfg.update_index:
            Path(cfg.index).mkdir(parents=True, exist_ok=True)
            new_index = RecordWriter(Path(cfg.index) / f"urls-{self.run_id}.bin", KEY_DOC, sorted_=True)
        seen_before = dup = kept = 0
        for block in merge_groups(files, KEY_DOC, chunk):
            k, d = block["key"], block["doc"]
            first = np.concatenate([[True], k[1:] != k[:-1]])
            grp = np.cumsum(first) - 1
            # A group containing an index record: every real document of it was kept earlier.
            in_index = np.zeros(int(grp[-1]) + 1 if len(grp) else 0, dtype=bool)
            in_index[grp[d == INDEX_DOC]] = True
            real = d != INDEX_DOC
            drop_old = real & in_index[grp]
            drop_dup = real & ~first & ~in_index[grp]
            seen_before += int(drop_old.sum())
            dup += int(drop_dup.sum())
            keep = real & first & ~in_index[grp]
            kept += int(keep.sum())
            drop = drop_old | drop_dup
            r = np.empty(int(drop.sum()), PAIR)
            r["a"], r["b"] = d[drop], np.where(drop_old[drop], 1, 0)
            removed.add(r)
            if new_index is not None and keep.any():
                rec = np.empty(int(keep.sum()), KEY_DOC)
                rec["key"], rec["doc"] = k[keep], INDEX_DOC
                new_index.write(rec)
        writer = ShardRemovalWriter(work / "remove", self.n_shards, "s{:05d}.bin")
        for rows in removed.blocks():
            writer(rows)
        writer.close()
        shutil.rmtree(work / "removed-sort", ignore_errors=True)
        if new_index is not None:
            new_index.close()  # last: a crash before this leaves the index untouched
        return {"kept_urls": kept, "duplicates": dup, "seen_in_earlier_runs": seen_before}


@dataclass(kw_only=True)
class UrlFilterTask(OutputTask):
    """Copy one shard without its URL duplicates."""

    def run(self) -> dict[str, Any]:
        examples = []
        log = self.removed_log()

        def removed(doc, earlier_run: int) -> str:
            reason = "url_seen_in_earlier_run" if earlier_run else "url_duplicate"
            log.add({"id": doc.id, "stage": "url_dedup", "reason": reason, "url": doc.url})
            if len(examples) < self.res.examples:
                examples.append({"id": doc.id, "url": doc.url, "reason": reason, "text": doc.text[:300]})
            return reason

        removals = Path(self.work) / "remove" / f"s{self.shard:05d}.bin"
        st = self.copy_without_removed("url_dedup", removals, removed, counted_by="url-keys")
        log.close()
        report_progress(docs=st.docs_in, nbytes=self.size_bytes)
        return {"docs_read": st.docs_in, "stats": st.to_dict(), "examples": examples}


class UrlDedupStage:
    """URL dedup as a recipe stage."""

    name = "url_dedup"

    def __init__(self, config: UrlDedupConfig | None = None, res: Resources | None = None,
                 output_format: str = "jsonl.zst") -> None:
        self.config = config or UrlDedupConfig()
        self.res = res or Resources()
        self.output_format = output_format

    def run(self, inputs: list[Path], ctx: StageContext) -> StageResult:
        """Run the three stages (each resumable) and return a StageResult."""
        from falconlm.data.dedup.minhash_stage import check_settings

        work = work_dir(ctx, self.name)
        check_settings(work, {"url": asdict(self.config), "inputs": [str(p) for p in inputs]})
        rid_path = work / "run_id"
        if not rid_path.exists():
            atomic_write_text(rid_path, uuid.uuid4().hex)
        run_id = rid_path.read_text(encoding="utf-8").strip()
        out_dir = ctx.stage_dir(self.name)
        out_dir.mkdir(parents=True, exist_ok=True)
        common = {"work": str(work), "res": self.res}
        shards = [{"id": f"s{i:05d}", "shard": i, "path": str(p), "reader": ctx.reader, "size_bytes": size_of(p), **common}
                  for i, p in enumerate(inputs)]
        keys = [UrlKeyTask(**s) for s in shards]
        key_res = run_stage(Stage("url-keys", keys, ctx.marker_dir("url-keys")), ctx.exec)
        decide = UrlDecideTask(id="decide", n_shards=len(inputs), config=self.config, run_id=run_id, **common)
        [decision] = run_stage(Stage("url-decide", [decide], ctx.marker_dir("url-decide")), ctx.exec)
        outs = [output_path(out_dir, i, self.output_format) for i in range(len(inputs))]
        filt = [
            UrlFilterTask(out=str(outs[i]), output_format=self.output_format, removed_dir=removed_dir(ctx, self.name, self.res),
                          expected_docs=key_res[i]["docs_read"], **s)
            for i, s in enumerate(shards)
        ]
        results = run_stage(Stage("url-filter", filt, ctx.marker_dir("url-filter")), ctx.exec)
        total = StepStats(self.name)
        for r in results:
            total.merge(StepStats.from_dict(r["stats"]))
        examples = [e for r in results for e in r["examples"]][: self.res.examples]
        return StageResult(outputs=outs, stats=[stats_dict(total, **decision)], examples={"url_dedup": examples})
