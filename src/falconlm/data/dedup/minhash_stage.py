"""MinHash dedup out of core, in four resumable stages (like datatrove's):

1. signatures (one task per shard): shingles -> MinHash -> one 64-bit key per LSH band, written as
   sorted (key, doc) runs per band group; a run is spilled whenever the buffer reaches half the
   memory budget, so memory never depends on the shard size;
2. buckets (one task per band group): k-way merge of every shard's runs, bounded by the budget;
   documents sharing a key become pairs (first document, other document);
3. clusters (one task): connected components of the pair graph out of core (components.py:
   star contraction over sorted runs, memory within the budget); every non-root member is
   removed, the root — the cluster's first document in input order — is kept;
4. filter (one task per shard): copy the shard without its removed documents.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from falconlm.atomic import atomic_write_text
from falconlm.data.config import MinHashConfig, Resources
from falconlm.data.dedup.common import (
    DedupTask,
    OutputTask,
    ShardTask,
    global_id,
    output_path,
    removed_dir,
    size_of,
    split_id,
    stats_dict,
    work_dir,
)
from falconlm.data.dedup.merge import GroupFirsts, merge_sorted
from falconlm.data.dedup.minhash import MinHasher, compiled_pays_off, s_curve_table
from falconlm.data.dedup.records import KEY_DOC, PAIR, ShardRemovalWriter, write_records
from falconlm.data.dedup.shingles import shingles_batch
from falconlm.data.dedup.components import star_components
from falconlm.data.executor import Stage, report_progress, run_stage
from falconlm.data.stage import StageContext, StageResult
from falconlm.data.step import StepStats
from falconlm.errors import FalconError

BATCH_DOCS = 256  # documents signed together (amortises numpy call overhead)


def band_groups(bands: int, groups: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) band ranges, one per bucket task."""
    groups = max(1, min(groups, bands))
    edges = np.linspace(0, bands, groups + 1).round().astype(int)
    return [(int(edges[i]), int(edges[i + 1])) for i in range(groups)]


def _sort_key_doc(rec: np.ndarray) -> np.ndarray:
    return rec[np.lexsort((rec["doc"], rec["key"]))]


@dataclass(kw_only=True)
class SignatureTask(ShardTask):
    """Sign one shard and write its sorted band-key runs."""

    config: MinHashConfig
    groups: int  # band groups (one bucket task each)

    def run(self) -> dict[str, Any]:
        cfg = self.config
        compiled = compiled_pays_off(self.size_bytes, cfg.num_hashes)
        hasher = MinHasher(cfg, compiled)
        sig_dir = Path(self.work) / "signatures"
        sig_dir.mkdir(parents=True, exist_ok=True)
        prefix = f"s{self.shard:05d}."
        for stale in sig_dir.glob(prefix + "*"):  # a killed attempt's runs: rewrite from scratch
            stale.unlink()
        ranges = band_groups(cfg.bands, self.groups)
        buffers: list[list[np.ndarray]] = [[] for _ in ranges]
        buffered = 0
        runs = 0
        limit = max(1 << 16, self.res.memory_bytes // 2)

        def spill() -> None:
            nonlocal buffered, runs
            for g, parts in enumerate(buffers):
                rec = _sort_key_doc(np.concatenate(parts)) if parts else np.empty(0, KEY_DOC)
                write_records(sig_dir / f"{prefix}g{g:03d}.r{runs:04d}.bin", rec, sorted_=True)
                parts.clear()
            buffered = 0
            runs += 1

        n = unsigned = shingles = 0
        texts: list[str] = []
        # Documents signed together: up to BATCH_DOCS, fewer when their signature matrix
        # (docs x hashes x 8 bytes) would take more than a quarter of the budget.
        batch = max(8, min(BATCH_DOCS, self.res.memory_bytes // (4 * 8 * cfg.num_hashes)))

        def flush() -> None:
            nonlocal buffered, unsigned, shingles
            sh = shingles_batch(texts, cfg.ngram, cfg.tokenizer, compiled=compiled)
            shingles += sum(len(s) for s in sh)
            sigs, valid = hasher.signatures(sh)
            unsigned += len(texts) - len(valid)
            keys = hasher.band_keys(sigs)
            docs = np.asarray([global_id(self.shard, n - len(texts) + int(i)) for i in valid], dtype=np.uint64)
            for g, (lo, hi) in enumerate(ranges):
                rec = np.empty(len(valid) * (hi - lo), dtype=KEY_DOC)
                rec["key"] = keys[:, lo:hi].reshape(-1)
                rec["doc"] = np.repeat(docs, hi - lo)
                buffers[g].append(rec)
                buffered += rec.nbytes
            report_progress(docs=len(texts))
            texts.clear()
            if buffered >= limit:
                spill()

        for doc in self.documents():
            texts.append(doc.text)
            n += 1
            if len(texts) >= batch:
                flush()
        if texts:
            flush()
        if buffered or runs == 0:
            spill()
        report_progress(nbytes=self.size_bytes)
        # shingles x hashes = the hash evaluations of this task (the benchmark's throughput figure)
        return {"docs_read": n, "docs": n, "unsigned": unsigned, "runs": runs, "shingles": shingles}


@dataclass(kw_only=True)
class BucketTask(DedupTask):
    """Merge one band group across shards and write its duplicate pairs."""

    group: int

    def run(self) -> dict[str, Any]:
        work = Path(self.work)
        sig_dir = work / "signatures"
        out_dir = work / "buckets"
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(f"g{self.group:03d}.r*.bin"):  # a killed attempt's runs
            stale.unlink()
        files = sorted(sig_dir.glob(f"s*.g{self.group:03d}.r*.bin"))
        # Budget: an eighth read ahead by the merge (a merged block and its sorted copy take about
        # twice that again), up to an eighth of pairs buffered (their unique copy, as much again).
        chunk = max(1024, self.res.memory_bytes // (8 * KEY_DOC.itemsize * max(1, len(files))))
        pairs: list[np.ndarray] = []
        held = runs = written = 0

        def flush() -> None:
            # Unique pairs of this buffer become one sorted run: memory stays under the budget
            # (a pair found in several bands of the group is written once per run at most).
            nonlocal pairs, held, runs, written
            out = np.unique(np.concatenate(pairs)) if pairs else np.empty(0, PAIR)
            write_records(out_dir / f"g{self.group:03d}.r{runs:04d}.bin", out, sorted_=True)
            written += len(out)
            runs += 1
            pairs, held = [], 0

        firsts = GroupFirsts()  # a bucket (key) may span merged blocks
        for block in merge_sorted(files, KEY_DOC, chunk):
            k, d = block["key"], block["doc"]
            starts, first_doc = firsts(k, d)
            # Pair every document of a bucket but its first with the first one.
            later = ~starts
            if not later.any():
                continue
            p = np.empty(int(later.sum()), dtype=PAIR)
            p["a"] = first_doc[later]
            p["b"] = d[later]
            pairs.append(p)
            held += p.nbytes
            if held > self.res.memory_bytes // 8:
                pairs = [np.unique(np.concatenate(pairs))]
                held = pairs[0].nbytes
                if held > self.res.memory_bytes // 16:
                    flush()
        if pairs or runs == 0:
            flush()
        return {"pairs": written, "runs": runs, "files": len(files)}


@dataclass(kw_only=True)
class ClusterTask(DedupTask):
    """Union-find over all pairs; write per-shard removal lists and the cluster summary."""

    n_shards: int

    def run(self) -> dict[str, Any]:
        work = Path(self.work)
        # All groups' pair runs merged, then connected components out of core: memory stays
        # within the budget however many documents are duplicated.
        files = sorted((work / "buckets").glob("g*.r*.bin"))
        chunk = max(1024, self.res.memory_bytes // (8 * PAIR.itemsize * max(1, len(files))))
        removals = ShardRemovalWriter(work / "clusters", self.n_shards)
        found = star_components(merge_sorted(files, PAIR, chunk), work / "components", self.res.memory_bytes, removals, self.res.examples)
        removals.close()
        hist = found.size_histogram
        summary = {
            "pairs": found.pairs,
            "clusters": found.clusters,
            "documents_in_clusters": found.documents,
            "removed": found.removed,
            "cluster_size_histogram": {str(k): hist[k] for k in sorted(hist)},
            "examples": found.examples,
            "rounds": found.rounds,
            "spilled_runs": found.spilled_runs,
        }
        atomic_write_text(work / "clusters.json", json.dumps(summary, indent=1, sort_keys=True))
        return summary


@dataclass(kw_only=True)
class FilterTask(OutputTask):
    """Copy one shard without the documents its removal list names."""

    example_docs: list[int]  # global ids of this shard's documents shown in the report's example clusters

    def run(self) -> dict[str, Any]:
        wanted = {int(x) for x in self.example_docs}
        examples = []
        log = self.removed_log()

        def seen(gid: int, doc) -> None:
            if gid in wanted:
                examples.append({"doc": gid, "id": doc.id, "url": doc.url, "text": doc.text[:300]})

        def removed(doc, root: int) -> str:
            log.add({"id": doc.id, "stage": "minhash", "cluster": root, "kept": _ref(root)})
            return "minhash_duplicate"

        removals = Path(self.work) / "clusters" / f"remove.s{self.shard:05d}.bin"
        st = self.copy_without_removed("minhash", removals, removed, seen, counted_by="minhash-signatures")
        log.close()
        report_progress(docs=st.docs_in, nbytes=self.size_bytes)
        return {"docs_read": st.docs_in, "stats": st.to_dict(), "examples": examples}


def _ref(gid: int) -> str:
    s, i = split_id(gid)
    return f"shard {s} doc {i}"


class MinHashStage:
    """Fuzzy dedup as a recipe stage: inputs -> shards without near-duplicates."""

    name = "minhash"

    def __init__(self, config: MinHashConfig, res: Resources | None = None, bucket_groups: int = 0,
                 output_format: str = "jsonl.zst") -> None:
        config.validate()
        self.config = config
        self.res = res or Resources()
        self.bucket_groups = bucket_groups
        self.output_format = output_format

    def groups(self) -> int:
        """Bucket tasks: the setting, else 16 (<= bands). Not derived from the worker count, so
        a run can be resumed with another --workers."""
        return min(self.config.bands, self.bucket_groups or 16)

    def run(self, inputs: list[Path], ctx: StageContext) -> StageResult:
        """Run the four stages (each resumable) and return a StageResult."""
        work = work_dir(ctx, self.name)
        groups = self.groups()
        check_settings(work, {"minhash": asdict(self.config), "groups": groups, "inputs": [str(p) for p in inputs]})
        if ctx.exec.progress:
            print(s_curve_table(self.config.bands, self.config.rows), flush=True)
        out_dir = ctx.stage_dir(self.name)
        out_dir.mkdir(parents=True, exist_ok=True)
        common = {"work": str(work), "res": self.res}
        shards = [{"id": f"s{i:05d}", "shard": i, "path": str(p), "reader": ctx.reader, "size_bytes": size_of(p), **common}
                  for i, p in enumerate(inputs)]
        sig = [SignatureTask(config=self.config, groups=groups, **s) for s in shards]
        sig_res = run_stage(Stage("minhash-signatures", sig, ctx.marker_dir("minhash-signatures")), ctx.exec)
        buckets = [BucketTask(id=f"g{g:03d}", group=g, **common) for g in range(groups)]
        run_stage(Stage("minhash-buckets", buckets, ctx.marker_dir("minhash-buckets")), ctx.exec)
        [summary] = run_stage(
            Stage("minhash-clusters", [ClusterTask(id="clusters", n_shards=len(inputs), **common)], ctx.marker_dir("minhash-clusters")),
            ctx.exec,
        )
        example_docs = [m for ex in summary["examples"] for m in ex["members"]]
        outs = [output_path(out_dir, i, self.output_format) for i in range(len(inputs))]
        filt = [
            FilterTask(out=str(outs[i]), output_format=self.output_format, removed_dir=removed_dir(ctx, self.name, self.res),
                       expected_docs=sig_res[i]["docs"], example_docs=[d for d in example_docs if split_id(d)[0] == i], **s)
            for i, s in enumerate(shards)
        ]
        results = run_stage(Stage("minhash-filter", filt, ctx.marker_dir("minhash-filter")), ctx.exec)
        total = StepStats("minhash")
        by_doc = {}
        for r in results:
            total.merge(StepStats.from_dict(r["stats"]))
            for e in r["examples"]:
                by_doc[e["doc"]] = e
        examples = []
        for ex in summary["examples"]:
            docs = [by_doc[m] for m in ex["members"] if m in by_doc]
            if not docs:
                continue
            # The report shows id / url / text: the kept document first, then the removed copies.
            body = "\n\n".join(f"[{'kept' if k == 0 else 'removed'}] {d['id']} {d['url'] or ''}\n{d['text']}" for k, d in enumerate(docs))
            examples.append({"id": docs[0]["id"], "url": docs[0]["url"], "cluster": ex["root"], "size": ex["size"],
                             "text": f"cluster of {ex['size']} documents\n\n{body}", "documents": docs})
        extra = {
            "clusters": summary["clusters"],
            "pairs": summary["pairs"],
            "cluster_size_histogram": summary["cluster_size_histogram"],
            "settings": {"bands": self.config.bands, "rows": self.config.rows, "ngram": self.config.ngram},
        }
        return StageResult(outputs=outs, stats=[stats_dict(total, **extra)], examples={"minhash_duplicate": examples})


def check_settings(work: Path, settings: dict) -> None:
    """Refuse to resume a run directory made with other settings (its markers would lie)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "settings.json"
    text = json.dumps(settings, sort_keys=True, indent=1, default=str)
    if path.exists():
        if path.read_text(encoding="utf-8") != text:
            raise FalconError(f"{work} holds a run with other dedup settings or inputs; use a new --out directory or delete it")
        return
    atomic_write_text(path, text)
