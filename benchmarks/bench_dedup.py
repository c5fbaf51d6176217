#!/usr/bin/env python3
"""Dedup benchmark: falconlm vs datatrove's MinHash stages vs datasketch's MinHashLSH, same texts, one run.

For each corpus — the project's generated fixture (planted near-duplicates with known 5-gram
Jaccard, exact copies, shared spans, URL duplicates) and, when present,
../shared/corpora/web-bench.warc.gz (real pages with planted exact/near/URL duplicates listed in
web-bench.truth.json; text extracted once with trafilatura(favor_precision=True,
deduplicate=False), as its truth was computed, and cached outside the repo) — it runs, each in
its own subprocess (so peak RSS is per method) and on one core:
  - falconlm MinHash end to end at datatrove's settings (14 x 8 = 112 hashes, word 5-grams) and
    with the paper's 450 x 20 = 9,000 hashes, timing every stage;
  - datatrove MinhashDedupSignature -> Buckets -> Cluster -> Filter (same 112 hashes, 5-grams),
    and again at 450 x 20 (`--no-paper-peer` skips that slow run);
  - datasketch MinHash(num_perm=112) + MinHashLSH(params=(14, 8)) over the same normalised 5-grams;
  - falconlm exact-substring and URL dedup (no peer in-process: datatrove's exact-substring
    stage needs an external Rust binary);
and reports documents/s per core for each stage and end to end, the speed ratios, peak memory,
and recall/precision against the planted duplicates. At 9,000 hashes it also prints the bound of
the signature stage — hashes/s of the compiled fused loop (dedup/compiled.py) on a synthetic block,
measured first — and the stage's hashes/s (shingles x hashes / time) against it; and it checks that
the compiled signatures equal the numpy path's on every corpus. `--baseline-src DIR` also runs the
falconlm MinHash of another source tree (e.g. `git archive` of an older commit's src/) for a
before/after figure. `--memory-scaling` also measures each falconlm stage's peak traced memory at N
and 4N documents under a fixed budget.

Usage: python benchmarks/bench_dedup.py [--quick] [--no-web] [--memory-scaling] [--no-paper-peer] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# FALCONLM_BENCH_SRC: the source tree a worker imports falconlm from (--baseline-src runs)
sys.path.insert(0, os.environ.get("FALCONLM_BENCH_SRC") or str(ROOT / "src"))
WEB = ROOT.parent / "shared" / "corpora" / "web-bench.warc.gz"
WEB_TRUTH = ROOT.parent / "shared" / "corpora" / "web-bench.truth.json"
CACHE = Path(os.environ.get("FALCONLM_BENCH_CACHE", "/tmp/falconlm-bench-dedup"))


# ------------------------------------------------------------------------------------ corpora


def fixture_corpus(bases: int, out: Path) -> tuple[list[Path], list[dict], list[dict]]:
    """Generated corpus: (shards, similarity pairs, url pairs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mk", ROOT / "scripts" / "make_dedup_fixtures.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    if out.exists():
        shutil.rmtree(out)
    truth = mk.build(out, bases=bases, words=400, shards=4, seed=7, span_groups=max(6, bases // 20))
    pairs = [{"a": p["a"], "b": p["b"], "jaccard": p["jaccard5"]} for p in truth["near"]]
    pairs += [{"a": p["a"], "b": p["b"], "jaccard": 1.0} for p in truth["exact"]]
    return sorted(out.glob("shard-*.jsonl")), pairs, truth["urldup"]


def web_corpus(limit: int | None) -> tuple[list[Path], list[dict], list[dict]]:
    """web-bench.warc.gz extracted once to JSONL (cached); (shards, similarity pairs, url pairs)."""
    from falconlm.data.readers import read_documents

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "web-bench.jsonl"
    if not path.exists():
        import trafilatura

        from falconlm.atomic import atomic_open

        t0 = time.time()
        n = 0
        with atomic_open(path, "w", encoding="utf-8") as f:
            for doc in read_documents(WEB):
                text = trafilatura.extract(doc.text, favor_precision=True, deduplicate=False)
                if text:
                    f.write(json.dumps({"id": doc.id, "text": text, "url": doc.url}, ensure_ascii=False) + "\n")
                    n += 1
        print(f"extracted {n} web-bench pages in {time.time() - t0:.0f} s (cached in {path})", flush=True)
    truth = json.loads(WEB_TRUTH.read_text())["records"]
    ids = [json.loads(line)["id"] for line in open(path, encoding="utf-8")]
    if limit:
        ids = ids[:limit]
    present = set(ids)
    pairs = [{"a": r["dup_of"], "b": r["record_uuid"], "jaccard": float(r.get("jaccard5", 1.0))}
             for r in truth if r["kind"] in ("near", "exact") and r["record_uuid"] in present and r["dup_of"] in present]
    urls = [{"a": r["dup_of"], "b": r["record_uuid"]} for r in truth if r["kind"] == "urldup" and r["record_uuid"] in present and r["dup_of"] in present]
    # 4 shards, like the fixture
    shards_dir = CACHE / f"web-shards-{limit or 'all'}"
    if not shards_dir.exists():
        from falconlm.atomic import atomic_dir

        lines = open(path, encoding="utf-8").read().splitlines()[: len(ids)]
        per = -(-len(lines) // 4)
        with atomic_dir(shards_dir) as tmp:
            for s in range(4):
                (tmp / f"shard-{s:02d}.jsonl").write_text("".join(x + "\n" for x in lines[s * per : (s + 1) * per]), encoding="utf-8")
    return sorted(shards_dir.glob("shard-*.jsonl")), pairs, urls


# ------------------------------------------------------------------------------------ methods


def _docs(shards: list[Path]) -> list[dict]:
    return [json.loads(line) for p in shards for line in open(p, encoding="utf-8")]


def method_falconlm(shards: list[Path], work: Path, preset: str, extra: str) -> dict:
    """falconlm MinHash (or exact/url with extra) with per-stage timings."""
    import falconlm.data.dedup.exact_stage as es
    import falconlm.data.dedup.minhash_stage as ms
    import falconlm.data.dedup.url as us
    from falconlm.data.config import (
        DedupConfig,
        ExactSubstringConfig,
        MinHashConfig,
        RefineConfig,
        Resources,
        UrlDedupConfig,
    )
    from falconlm.data.executor import ExecConfig
    from falconlm.data.refine import run_refine

    times: dict[str, float] = {}
    shingles = []
    for mod in (ms, es, us):
        real = mod.run_stage

        def timed(stage, cfg, _real=real):
            t = time.perf_counter()
            r = _real(stage, cfg)
            times[stage.name] = time.perf_counter() - t
            if stage.name == "minhash-signatures":
                shingles.extend(x.get("shingles") for x in r)  # None from a --baseline-src tree without the count
            return r

        mod.run_stage = timed
    cfg = DedupConfig(minhash=None, exact_substring=None, url=None, resources=Resources(memory_mb=1024, write_removed=True))
    if extra == "minhash":
        cfg.minhash = MinHashConfig.preset(preset)
    elif extra == "exact":
        cfg.exact_substring = ExactSubstringConfig()
    else:
        cfg.url = UrlDedupConfig()
    t0 = time.perf_counter()
    # report=False: the HTML/PNG report (matplotlib) is not dedup work and the peers make none
    run_refine(shards, work, "dedup", RefineConfig(dedup=cfg), ExecConfig(workers=1, progress=False), report=False)
    total = time.perf_counter() - t0
    removed, cut = [], 0
    for p in sorted((work / "removed").rglob("*.jsonl")):
        for line in open(p, encoding="utf-8"):
            r = json.loads(line)
            if r.get("stage") == "exact_substring" and not r.get("dropped"):
                cut += 1
            else:
                removed.append(r["id"])
    signed = sum(shingles) if shingles and None not in shingles else None
    return {"stages": times, "total": total, "removed": removed, "cut_docs": cut, "shingles": signed}


def method_datatrove(shards: list[Path], work: Path, bands: int = 14, rows: int = 8) -> dict:
    """datatrove's four MinHash stages (default 14 x 8), 5-grams, 64-bit xxhash, one task/worker."""
    import logging

    from datatrove.executor.local import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    logging.disable(logging.WARNING)
    try:
        from loguru import logger

        logger.remove()
    except ImportError:
        pass
    cfg = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows, seed=1, hash_config=HashConfig(precision=64, hash_fc="xxhash"))
    inp = str(shards[0].parent)
    glob = shards[0].name.split("-")[0] + "-*.jsonl"

    def reader():
        return JsonlReader(inp, glob_pattern=glob, doc_progress=False)

    stages = {
        "signatures": ([reader(), MinhashDedupSignature(output_folder=str(work / "sigs"), config=cfg)], 1),
        "buckets": ([MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=cfg)], cfg.num_buckets),
        "clusters": ([MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove"), config=cfg)], 1),
        "filter": ([reader(), MinhashDedupFilter(input_folder=str(work / "remove"), exclusion_writer=JsonlWriter(str(work / "removed"), compression=None)),
                    JsonlWriter(str(work / "out"), compression=None)], 1),
    }
    times = {}
    t0 = time.perf_counter()
    for name, (pipe, tasks) in stages.items():
        t = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipe, tasks=tasks, workers=1, logging_dir=str(work / "logs" / name), skip_completed=False).run()
        times[name] = time.perf_counter() - t
    total = time.perf_counter() - t0
    removed = [json.loads(line)["id"] for p in sorted((work / "removed").glob("*.jsonl")) for line in open(p, encoding="utf-8")]
    return {"stages": times, "total": total, "removed": removed}


def method_datasketch(shards: list[Path], work: Path) -> dict:
    """datasketch MinHash(112) + MinHashLSH(14 x 8) on the same normalised word 5-grams; keep the first per cluster."""
    from datasketch import MinHash, MinHashLSH

    from falconlm.data.dedup.normalize import normalize_text
    from falconlm.data.dedup.unionfind import UnionFind

    docs = _docs(shards)
    t0 = time.perf_counter()
    sigs = []
    for d in docs:
        w = normalize_text(d["text"]).split()
        grams = {" ".join(w[i : i + 5]) for i in range(max(1, len(w) - 4))} if w else set()
        m = MinHash(num_perm=112, seed=1)
        m.update_batch([g.encode("utf-8") for g in grams])
        sigs.append(m if grams else None)
    t1 = time.perf_counter()
    lsh = MinHashLSH(num_perm=112, params=(14, 8))
    uf = UnionFind()
    for i, m in enumerate(sigs):
        if m is None:
            continue
        for j in lsh.query(m):
            uf.union(int(j), i)
        lsh.insert(i, m)
    removed = [docs[i]["id"] for i in range(len(docs)) if i in uf.parent and uf.find(i) != i]
    t2 = time.perf_counter()
    return {"stages": {"signatures": t1 - t0, "lsh+clusters": t2 - t1}, "total": t2 - t0, "removed": removed}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it is not inherited from the
    parent across fork + exec)."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> None:
    """Subprocess entry: run one method, print a JSON line with its peak RSS."""
    shards = [Path(p) for p in args.shards]
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if args.method == "datatrove":
        r = method_datatrove(shards, work)
    elif args.method == "datatrove:refinedweb":
        r = method_datatrove(shards, work, 450, 20)
    elif args.method == "datasketch":
        r = method_datasketch(shards, work)
    else:
        _, preset, extra = args.method.split(":")  # falconlm:... or baseline:... (another source tree)
        r = method_falconlm(shards, work, preset, extra)
    r["peak_rss_mb"] = peak_rss_mb()
    Path(args.result).write_text(json.dumps(r))  # read once by the parent; a baseline tree may predate falconlm.atomic


def run_method(method: str, shards: list[Path], work: Path, baseline_src: str | None = None) -> dict | None:
    """Run a method in its own process (baseline:... with falconlm from `baseline_src`); None (with the reason printed) if it is unavailable."""
    res = work.with_suffix(".json")
    cmd = [sys.executable, __file__, "_worker", method, str(work), str(res), *map(str, shards)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    if method.startswith("baseline:"):
        env["FALCONLM_BENCH_SRC"] = str(baseline_src)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        print(f"  {method}: failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
        return None
    return json.loads(res.read_text())


# --------------------------------------------------------------------------------- evaluation


def isolated_pairs(pairs: list[dict]) -> list[dict]:
    """Pairs whose two documents belong to no other planted pair. Only for those does "one of
    the two was removed" mean "the two were merged" (a source with several planted copies can
    be removed because of another copy), so recall and false merges are measured on them."""
    from collections import Counter

    seen = Counter(d for p in pairs for d in (p["a"], p["b"]))
    return [p for p in pairs if seen[p["a"]] == 1 and seen[p["b"]] == 1]


def evaluate(removed: list[str], all_pairs: list[dict]) -> dict:
    """Recall per similarity bin (an isolated pair counts as found when one of its documents was
    removed), false-merge rate of pairs <= 0.5, and precision (removed documents that are planted)."""
    rem = set(removed)
    pairs = isolated_pairs(all_pairs)
    bins = {">=0.85": (0.85, 1.01), "0.75-0.85": (0.75, 0.85), "0.5-0.75": (0.5000001, 0.75), "<=0.5": (-1, 0.5000001)}
    out = {}
    for name, (lo, hi) in bins.items():
        sel = [p for p in pairs if lo <= p["jaccard"] < hi]
        if sel:
            out[f"found {name}"] = round(sum((p["a"] in rem) or (p["b"] in rem) for p in sel) / len(sel), 4)
            out[f"pairs {name}"] = len(sel)
    planted = {d for p in all_pairs if p["jaccard"] > 0.5 for d in (p["a"], p["b"])}
    out["precision"] = round(sum(r in planted for r in rem) / max(1, len(rem)), 4)
    out["removed"] = len(rem)
    return out


def bench_corpus(name: str, shards: list[Path], pairs: list[dict], urls: list[dict], quick: bool, paper_peer: bool = True,
                 bound: dict | None = None, baseline_src: str | None = None) -> dict:
    """All methods on one corpus."""
    n_docs = sum(1 for p in shards for _ in open(p, encoding="utf-8"))
    print(f"\n== {name}: {n_docs} documents, {len(pairs)} planted similarity pairs, {len(urls)} URL duplicates ==", flush=True)
    work = CACHE / "work" / name
    work.mkdir(parents=True, exist_ok=True)
    methods = ["falconlm:fineweb:minhash", "datatrove", "datasketch", "falconlm:refinedweb:minhash",
               "falconlm:-:exact", "falconlm:-:url"] + (["datatrove:refinedweb"] if paper_peer else [])
    if baseline_src:
        methods += ["baseline:fineweb:minhash", "baseline:refinedweb:minhash"]
    results = {}
    for m in methods:
        r = run_method(m, shards, work / m.replace(":", "_"), baseline_src)
        if r is None:
            continue
        r["docs_per_s"] = n_docs / r["total"]
        r["stage_docs_per_s"] = {k: n_docs / v for k, v in r["stages"].items() if v > 0}
        if m.endswith("url"):
            rem = set(r["removed"])
            # found: exactly one of the two captures survives (the first in input order)
            r["accuracy"] = {"url recall": round(sum((u["a"] in rem) != (u["b"] in rem) for u in urls) / max(1, len(urls)), 4),
                             "removed": len(rem), "planted": len(urls)}
        elif not m.endswith("exact"):
            r["accuracy"] = evaluate(r["removed"], pairs)
        del r["removed"]
        results[m] = r
        stages = ", ".join(f"{k} {v:,.0f}" for k, v in r["stage_docs_per_s"].items())
        print(f"  {m:<28} {r['docs_per_s']:>9,.0f} docs/s end to end  (per stage docs/s: {stages}); peak RSS {r['peak_rss_mb']:,.0f} MB", flush=True)
        if "accuracy" in r:
            print(f"  {'':<28} {r['accuracy']}", flush=True)
    ours = results.get("falconlm:fineweb:minhash")
    ratios = {}
    for peer in ("datatrove", "datasketch"):
        if ours and peer in results:
            ratios[f"falconlm/{peer} end to end"] = round(ours["docs_per_s"] / results[peer]["docs_per_s"], 2)
            if "signatures" in results[peer]["stage_docs_per_s"]:
                ratios[f"falconlm/{peer} signatures"] = round(ours["stage_docs_per_s"]["minhash-signatures"] / results[peer]["stage_docs_per_s"]["signatures"], 2)
    paper = results.get("falconlm:refinedweb:minhash")
    if paper and "datatrove:refinedweb" in results:
        peer = results["datatrove:refinedweb"]
        ratios["falconlm/datatrove end to end, 450 x 20"] = round(paper["docs_per_s"] / peer["docs_per_s"], 2)
        ratios["falconlm/datatrove signatures, 450 x 20"] = round(paper["stage_docs_per_s"]["minhash-signatures"] / peer["stage_docs_per_s"]["signatures"], 2)
    for preset in ("fineweb", "refinedweb"):
        now, before = results.get(f"falconlm:{preset}:minhash"), results.get(f"baseline:{preset}:minhash")
        if now and before:
            ratios[f"falconlm/baseline end to end, {preset}"] = round(now["docs_per_s"] / before["docs_per_s"], 2)
    for k, v in ratios.items():
        print(f"  ratio {k}: {v}x")
    out = {"documents": n_docs, "methods": results, "ratios": ratios}
    if paper and paper.get("shingles") and bound:
        # hash evaluations of the signature stage per second, everything in it included (reading,
        # normalising, shingling, band keys, sorting and writing runs), against the fused loop alone
        rate = paper["shingles"] * 9000 / paper["stages"]["minhash-signatures"]
        out["signature_hashes_per_s"] = rate
        out["signature_fraction_of_bound"] = round(rate / bound["hashes_per_s"], 3)
        print(f"  signature stage at 450 x 20: {paper['shingles']:,} shingles x 9,000 hashes = {rate / 1e9:.2f} G hashes/s, "
              f"{out['signature_fraction_of_bound']:.2f} of the bound ({bound['hashes_per_s'] / 1e9:.2f} G hashes/s)", flush=True)
    return out


def signature_bound(docs: int = 64, shingles: int = 400, repeats: int = 5) -> dict | None:
    """Hashes/s of the compiled fused loop alone on a synthetic block (random shingles, 450 x 20 hashes): the
    signature stage's ceiling on this core. None without numba."""
    import numpy as np

    from falconlm.data.config import MinHashConfig
    from falconlm.data.dedup import compiled
    from falconlm.data.dedup.minhash import MinHasher

    if not compiled.ENABLED:
        print("\n(no bound: numba is not installed, the numpy kernel runs)")
        return None
    h = MinHasher(MinHashConfig.preset("refinedweb"))
    x = np.random.default_rng(0).integers(0, 2**64 - 1, size=docs * shingles, dtype=np.uint64, endpoint=True)
    offsets = np.arange(0, docs * shingles + 1, shingles, dtype=np.int64)
    out = np.empty((docs, len(h.a)), dtype=np.uint64)
    compiled.signatures(x[:shingles], offsets[:2], h.a, h.b, out[:1])  # load the cached machine code first
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        compiled.signatures(x, offsets, h.a, h.b, out)
        best = min(best, time.perf_counter() - t)
    rate = docs * shingles * len(h.a) / best
    print(f"\nbound: the fused loop on a {docs} x {shingles} shingle x {len(h.a):,} hash block: {rate / 1e9:.2f} G hashes/s "
          f"(best of {repeats})", flush=True)
    return {"hashes_per_s": rate, "block": [docs, shingles, len(h.a)]}


def check_identical(shards: list[Path], limit: int | None) -> dict:
    """Compiled vs numpy on every document (the first `limit`): shingles, 450 x 20 signatures, band keys."""
    import numpy as np

    from falconlm.data.config import MinHashConfig
    from falconlm.data.dedup import compiled
    from falconlm.data.dedup.minhash import MinHasher
    from falconlm.data.dedup.normalize import normalized_bytes
    from falconlm.data.dedup.shingles import combine_ngrams, word_unit_hashes

    if not compiled.ENABLED:
        return {"checked": 0}
    docs = _docs(shards)[:limit]
    fast_h, slow_h = MinHasher(MinHashConfig.preset("refinedweb")), MinHasher(MinHashConfig.preset("refinedweb"), compiled=False)
    same = True
    t0 = time.perf_counter()
    for i in range(0, len(docs), 64):
        units = [word_unit_hashes(normalized_bytes(d["text"]).split()) for d in docs[i : i + 64]]
        fast = [combine_ngrams(u, 5) for u in units]
        slow = [combine_ngrams(u, 5, compiled=False) for u in units]
        same &= all(np.array_equal(a, b) for a, b in zip(fast, slow))
        (sf, vf), (ss, vs) = fast_h.signatures(fast), slow_h.signatures(slow)
        same &= np.array_equal(vf, vs) and np.array_equal(sf, ss) and np.array_equal(fast_h.band_keys(sf), slow_h.band_keys(ss))
    print(f"  compiled == numpy (shingles, 9,000-hash signatures, band keys) on {len(docs)} documents: {same} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"checked": len(docs), "identical": bool(same)}


def estimate_accuracy(shards: list[Path], pairs: list[dict]) -> dict:
    """Mean |MinHash estimate - true 5-gram Jaccard| over the planted pairs: falconlm at 112 and
    9,000 hashes, datasketch at 112 (same normalised shingles)."""
    import numpy as np
    from datasketch import MinHash

    from falconlm.data.dedup.minhash import MinHashConfig, MinHasher, estimate_jaccard
    from falconlm.data.dedup.normalize import normalize_text
    from falconlm.data.dedup.shingles import word_shingles

    text = {d["id"]: d["text"] for d in _docs(shards)}
    out = {}
    for name, (b, r) in {"falconlm 112": (14, 8), "falconlm 9000": (450, 20)}.items():
        h = MinHasher(MinHashConfig(bands=b, rows=r))
        errs = []
        for p in pairs:
            sig, _ = h.signatures([word_shingles(text[p["a"]]), word_shingles(text[p["b"]])])
            errs.append(abs(estimate_jaccard(sig[0], sig[1]) - p["jaccard"]))
        out[name] = round(float(np.mean(errs)), 4)
    errs = []
    for p in pairs:
        ms = []
        for d in (p["a"], p["b"]):
            w = normalize_text(text[d]).split()
            m = MinHash(num_perm=112, seed=1)
            m.update_batch([" ".join(w[i : i + 5]).encode() for i in range(max(1, len(w) - 4))])
            ms.append(m)
        errs.append(abs(ms[0].jaccard(ms[1]) - p["jaccard"]))
    out["datasketch 112"] = round(float(np.mean(errs)), 4)
    print(f"  mean |estimate - true Jaccard| over {len(pairs)} pairs: {out}", flush=True)
    return out


def memory_scaling(quick: bool) -> dict:
    """Peak traced memory per falconlm stage at N and 4N documents, budget fixed at 8 MiB."""
    import tracemalloc

    import falconlm.data.dedup.exact_stage as es
    import falconlm.data.dedup.minhash_stage as ms
    import falconlm.data.dedup.url as us
    from falconlm.data.config import (
        DedupConfig,
        ExactSubstringConfig,
        MinHashConfig,
        RefineConfig,
        Resources,
    )
    from falconlm.data.executor import ExecConfig
    from falconlm.data.refine import run_refine


    current: dict[str, float] = {}
    for mod in (ms, es, us):
        real = mod.run_stage

        def traced(stage, cfg, _real=real):
            tracemalloc.reset_peak()
            r = _real(stage, cfg)
            current[stage.name] = tracemalloc.get_traced_memory()[1] / 2**20
            return r

        mod.run_stage = traced
    out = {}
    base = 150 if quick else 600
    for mult in (1, 4):
        shards, _, _ = fixture_corpus(base * mult, CACHE / f"scale-{mult}")
        cfg = DedupConfig(minhash=MinHashConfig.preset("refinedweb"), exact_substring=ExactSubstringConfig(), resources=Resources(memory_mb=8))
        current.clear()
        tracemalloc.start()
        run_refine(shards, CACHE / "work" / f"scale-{mult}", "dedup", RefineConfig(dedup=cfg), ExecConfig(workers=1, progress=False))
        tracemalloc.stop()
        n = sum(1 for p in shards for _ in open(p, encoding="utf-8"))
        out[str(n)] = {k: round(v, 1) for k, v in current.items()}
        shutil.rmtree(CACHE / "work" / f"scale-{mult}", ignore_errors=True)
    print("\n== peak traced memory per stage (MiB), --memory-mb 8 ==")
    sizes = list(out)
    for stage in out[sizes[0]]:
        print(f"  {stage:<22} " + "  ".join(f"{n} docs: {out[n].get(stage, 0):7.1f}" for n in sizes))
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        ap = argparse.ArgumentParser()
        ap.add_argument("cmd")
        ap.add_argument("method")
        ap.add_argument("work")
        ap.add_argument("result")
        ap.add_argument("shards", nargs="+")
        worker(ap.parse_args())
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small corpora (smoke run)")
    ap.add_argument("--no-web", action="store_true", help="skip ../shared/corpora/web-bench.warc.gz")
    ap.add_argument("--memory-scaling", action="store_true", help="also measure per-stage memory at N and 4N documents")
    ap.add_argument("--no-paper-peer", dest="paper_peer", action="store_false", help="skip datatrove at the paper's 450 x 20 (its slowest run)")
    ap.add_argument("--paper-peer", action="store_true", default=True, help=argparse.SUPPRESS)  # the default now; old commands still parse
    ap.add_argument("--baseline-src", help="also run the falconlm MinHash of this source tree (a src/ folder), e.g. an older commit's")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dedup.json"))
    a = ap.parse_args()
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "note": "one core per method; shared machine: compare ratios, not absolute figures"},
        "command": " ".join(["python", "benchmarks/bench_dedup.py", *sys.argv[1:]]),
        "corpora": {},
    }
    report["machine"]["load_average"] = os.getloadavg()
    report["bound"] = bound = signature_bound()
    shards, pairs, urls = fixture_corpus(150 if a.quick else 1000, CACHE / "fixture")
    report["corpora"]["fixture"] = bench_corpus("fixture", shards, pairs, urls, a.quick, a.paper_peer, bound, a.baseline_src)
    report["corpora"]["fixture"]["estimate_error"] = estimate_accuracy(shards, pairs)
    report["corpora"]["fixture"]["compiled_equals_numpy"] = check_identical(shards, 200 if a.quick else None)
    if not a.no_web and WEB.exists():
        shards, pairs, urls = web_corpus(300 if a.quick else None)
        report["corpora"]["web-bench"] = bench_corpus("web-bench", shards, pairs, urls, a.quick, a.paper_peer, bound, a.baseline_src)
        report["corpora"]["web-bench"]["compiled_equals_numpy"] = check_identical(shards, 100 if a.quick else None)
    elif not a.no_web:
        print(f"\n(skipping web-bench: {WEB} not found)")
    if a.memory_scaling:
        report["memory_scaling_mib"] = memory_scaling(a.quick)
    out = Path(a.out if not a.quick else str(a.out).replace(".json", "-quick.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    from falconlm.atomic import atomic_write_json

    atomic_write_json(out, report, indent=1)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
