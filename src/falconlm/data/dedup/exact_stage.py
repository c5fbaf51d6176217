"""Exact-substring dedup out of core, in three resumable stages:

1. tokens (one task per shard): reversible tokenisation -> token ids + per-document lengths;
2. spans (one task per part): documents are grouped, in input order, into parts of at most
   `part_tokens` tokens; each part's suffix array finds every repeated span of >= min_tokens
   tokens, written as (doc, token start, token end) records. LIMIT: repeats are found only within
   a part (RefinedWeb likewise deduplicated each of its 100 parts separately), so a passage whose
   copies fall in different parts is not removed; a larger memory budget means larger parts;
3. cut (one task per shard): spans -> character spans of the original text, then CUT/drop.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from falconlm.atomic import atomic_write_text
from falconlm.data.config import ExactSubstringConfig, Resources
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
from falconlm.data.dedup.exact_substring import (
    apply_mode,
    char_spans,
    concat_with_separators,
    duplicated_mask,
    part_tokens_for,
    reversible_tokens,
    token_runs,
)
from falconlm.data.dedup.records import HEADER_SIZE, RecordReader, read_records, write_records
from falconlm.data.executor import Stage, report_progress, run_stage
from falconlm.data.stage import StageContext, StageResult
from falconlm.data.step import StepStats

TOKEN = np.dtype([("tok", "<u8")])
LENGTH = np.dtype([("len", "<u8")])
SPAN = np.dtype([("doc", "<u8"), ("start", "<u8"), ("end", "<u8")])
BATCH = 256


@dataclass(kw_only=True)
class TokenTask(ShardTask):
    """Tokenise one shard reversibly; write its token ids and document lengths."""

    config: ExactSubstringConfig

    def run(self) -> dict[str, Any]:
        from falconlm.data.dedup.records import RecordWriter

        cfg = self.config
        d = Path(self.work) / "tokens"
        n = total = 0
        with RecordWriter(d / f"s{self.shard:05d}.tok.bin", TOKEN) as tw, RecordWriter(d / f"s{self.shard:05d}.len.bin", LENGTH) as lw:
            texts: list[str] = []

            def flush() -> None:
                nonlocal total
                toks = reversible_tokens(texts, cfg.tokenizer)
                lens = np.fromiter((len(t[0]) for t in toks), dtype=np.uint64, count=len(toks))
                if len(toks):
                    tw.write(np.concatenate([t[0] for t in toks]).view(TOKEN) if lens.sum() else np.empty(0, TOKEN))
                lw.write(lens.view(LENGTH))
                total += int(lens.sum())
                report_progress(docs=len(texts))
                texts.clear()

            # A batch's tokens with their offsets take about 32 bytes per character of text.
            max_chars = max(1 << 16, self.res.memory_bytes // 32)
            chars = 0
            for doc in self.documents():
                texts.append(doc.text)
                n += 1
                chars += len(doc.text)
                if len(texts) >= BATCH or chars >= max_chars:
                    flush()
                    chars = 0
            if texts:
                flush()
        report_progress(nbytes=self.size_bytes)
        return {"docs_read": n, "docs": n, "tokens": total}


def plan_parts(work: Path, n_shards: int, part_tokens: int) -> list[list[tuple[int, int, int]]]:
    """Split the corpus, in input order, into parts of <= part_tokens tokens.

    A part is a list of (shard, first doc, end doc) ranges. A single document longer than a
    part gets a part of its own (the only case where a part exceeds the budget)."""
    parts: list[list[tuple[int, int, int]]] = []
    cur: list[tuple[int, int, int]] = []
    cur_tokens = 0
    for s in range(n_shards):
        lens = read_records(work / "tokens" / f"s{s:05d}.len.bin", LENGTH)["len"].astype(np.int64)
        start = 0
        i = 0
        while i < len(lens):
            if cur_tokens and cur_tokens + lens[i] > part_tokens:
                if i > start:
                    cur.append((s, start, i))
                parts.append(cur)
                cur, cur_tokens, start = [], 0, i
            cur_tokens += int(lens[i])
            i += 1
        if len(lens) > start:
            cur.append((s, start, len(lens)))
    if cur:
        parts.append(cur)
    return parts


@dataclass(kw_only=True)
class SpanTask(DedupTask):
    """Suffix array over one part; write its duplicated token spans."""

    part: int
    ranges: list[tuple[int, int, int]]  # (shard, first document, end document) of each slice of the part
    config: ExactSubstringConfig

    def run(self) -> dict[str, Any]:
        cfg = self.config
        work = Path(self.work)
        docs: list[np.ndarray] = []
        gids: list[int] = []
        for s, a, b in self.ranges:
            lens = read_records(work / "tokens" / f"s{s:05d}.len.bin", LENGTH)["len"].astype(np.int64)
            offs = np.concatenate([[0], np.cumsum(lens)])
            path = work / "tokens" / f"s{s:05d}.tok.bin"
            rd = RecordReader(path, TOKEN)  # validates magic, record size and file size
            if rd.count != offs[-1]:
                raise rd.error(f"holds {rd.count} tokens but its lengths file says {offs[-1]}")
            # Map, don't load: only this part's documents are paged in (bounded memory).
            toks = np.memmap(path, dtype="<u8", mode="r", offset=HEADER_SIZE, shape=(rd.count,)) if rd.count else np.empty(0, "<u8")
            for i in range(a, b):
                docs.append(np.asarray(toks[offs[i] : offs[i + 1]]))
                gids.append(global_id(s, i))
        text, starts = concat_with_separators(docs)
        lengths = [len(d) for d in docs]
        del docs  # the concatenation holds them; keep one copy while the suffix array is built
        mask = duplicated_mask(text, cfg.min_tokens)
        n_text = len(text)
        del text
        recs = []
        for n, off, g in zip(lengths, starts, gids):
            for a, b in token_runs(mask[off : off + n]):
                recs.append((g, a, b))
        out = np.array(recs, dtype=SPAN) if recs else np.empty(0, SPAN)
        write_records(work / "spans" / f"p{self.part:05d}.bin", out, sorted_=True)
        report_progress(docs=len(lengths))
        return {"docs": len(lengths), "tokens": int(n_text - len(lengths)), "spans": len(out),
                "duplicated_tokens": int(mask.sum())}


@dataclass(kw_only=True)
class CutTask(OutputTask):
    """Cut (or drop) one shard's duplicated spans."""

    parts: list[int]  # the parts holding documents of this shard
    config: ExactSubstringConfig

    def run(self) -> dict[str, Any]:
        from falconlm.data.writers import ShardWriter

        cfg = self.config
        spans_by_doc: dict[int, list[tuple[int, int]]] = {}
        lo, hi = global_id(self.shard, 0), global_id(self.shard + 1, 0)
        for p in self.parts:
            recs = read_records(Path(self.work) / "spans" / f"p{p:05d}.bin", SPAN)
            recs = recs[(recs["doc"] >= lo) & (recs["doc"] < hi)]
            for g, a, b in zip(recs["doc"].tolist(), recs["start"].tolist(), recs["end"].tolist()):
                spans_by_doc.setdefault(g - lo, []).append((a, b))
        st = StepStats("exact_substring")
        log = self.removed_log()
        examples: list[dict] = []
        cut_docs = 0
        with ShardWriter(self.out, self.output_format) as w:
            for i, doc in enumerate(self.documents()):
                st.docs_in += 1
                st.chars_in += len(doc.text)
                tspans = spans_by_doc.get(i)
                if tspans:
                    ids, s, e = reversible_tokens([doc.text], cfg.tokenizer)[0]
                    spans = char_spans(np.array(tspans, dtype=np.int64), s, e)
                    new, reason = apply_mode(doc.text, spans, cfg)
                    log.add({"id": doc.id, "stage": "exact_substring", "cut_spans": spans, "dropped": new is None})
                    if len(examples) < self.res.examples:
                        cuts = [doc.text[a:b][:200] for a, b in spans[:3]]
                        examples.append({"id": doc.id, "url": doc.url, "spans": spans[:5], "removed": cuts,
                                         "text": "\n---\n".join(f"[cut {a}:{b}] {c}" for (a, b), c in zip(spans, cuts))})
                    if new is None:
                        st.dropped[reason] += 1
                        continue
                    if new is not doc.text:
                        cut_docs += 1
                        doc.text = new
                st.docs_out += 1
                st.chars_out += len(doc.text)
                w.write(doc)
            self.check_unchanged(st.docs_in, "exact-tokens")
        log.close()
        report_progress(docs=st.docs_in, nbytes=self.size_bytes)
        return {"docs_read": st.docs_in, "stats": st.to_dict(), "cut_docs": cut_docs, "examples": examples}


class ExactSubstringStage:
    """Exact-substring dedup as a recipe stage."""

    name = "exact_substring"

    def __init__(self, config: ExactSubstringConfig, res: Resources | None = None, output_format: str = "jsonl.zst") -> None:
        config.validate()
        self.config = config
        self.res = res or Resources()
        self.output_format = output_format

    def part_tokens(self) -> int:
        """Tokens per part: the setting, else what the memory budget allows."""
        return self.config.part_tokens or part_tokens_for(self.res.memory_bytes)

    def run(self, inputs: list[Path], ctx: StageContext) -> StageResult:
        """Run the three stages (each resumable) and return a StageResult."""
        from falconlm.data.dedup.minhash_stage import check_settings

        work = work_dir(ctx, self.name)
        check_settings(work, {"exact_substring": asdict(self.config), "part_tokens": self.part_tokens(), "inputs": [str(p) for p in inputs]})
        out_dir = ctx.stage_dir(self.name)
        out_dir.mkdir(parents=True, exist_ok=True)
        common = {"work": str(work), "res": self.res, "config": self.config}
        shards = [{"id": f"s{i:05d}", "shard": i, "path": str(p), "reader": ctx.reader, "size_bytes": size_of(p), **common}
                  for i, p in enumerate(inputs)]
        tok = [TokenTask(**s) for s in shards]
        tok_res = run_stage(Stage("exact-tokens", tok, ctx.marker_dir("exact-tokens")), ctx.exec)
        parts = plan_parts(work, len(inputs), self.part_tokens())
        atomic_write_text(work / "parts.json", json.dumps(parts))
        spans = [SpanTask(id=f"p{k:05d}", part=k, ranges=r, **common) for k, r in enumerate(parts)]
        span_res = run_stage(Stage("exact-spans", spans, ctx.marker_dir("exact-spans")), ctx.exec)
        parts_of = {i: sorted({k for k, r in enumerate(parts) for s, _, _ in r if s == i}) for i in range(len(inputs))}
        outs = [output_path(out_dir, i, self.output_format) for i in range(len(inputs))]
        cut = [
            CutTask(out=str(outs[i]), output_format=self.output_format, removed_dir=removed_dir(ctx, self.name, self.res),
                    expected_docs=tok_res[i]["docs"], parts=parts_of[i], **s)
            for i, s in enumerate(shards)
        ]
        results = run_stage(Stage("exact-cut", cut, ctx.marker_dir("exact-cut")), ctx.exec)
        total = StepStats(self.name)
        for r in results:
            total.merge(StepStats.from_dict(r["stats"]))
        extra = {
            "parts": len(parts),
            "part_tokens": self.part_tokens(),
            "duplicated_tokens": sum(r["duplicated_tokens"] for r in span_res),
            "cut_docs": sum(r["cut_docs"] for r in results),
            "settings": {"min_tokens": self.config.min_tokens, "mode": self.config.mode, "min_chars": self.config.min_chars},
        }
        examples = [e for r in results for e in r["examples"]][: self.res.examples]
        return StageResult(outputs=outs, stats=[stats_dict(total, **extra)], examples={"exact_substring": examples})
