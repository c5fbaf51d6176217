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
  - datatrove MinhashDedupSignature -> Buckets -> Cluster -> Filter (same 112 hashes, 5-grams);
  - datasketch MinHash(num_perm=112) + MinHashLSH(params=(14, 8)) over the same normalised 5-grams;
  - falconlm exact-substring and URL dedup (no peer in-process: datatrove's exact-substring
    stage needs an external Rust binary);
and reports documents/s per core for each stage and end to end, the speed ratios, peak memory,
and recall/precision against the planted duplicates. `--memory-scaling` also measures each
falconlm stage's peak traced memory at N and 4N documents under a fixed budget.

Usage: python benchmarks/bench_dedup.py [--quick] [--no-web] [--memory-scaling] [--paper-peer]
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
sys.path.insert(0, str(ROOT / "src"))
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
    for mod in (ms, es, us):
        real = mod.run_stage

        def timed(stage, cfg, _real=real):
            t = time.perf_counter()
            r = _real(stage, cfg)
            times[stage.name] = time.perf_counter() - t
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
    return {"stages": times, "total": total, "removed": removed, "cut_docs": cut}


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
        _, preset, extra = args.method.split(":")
        r = method_falconlm(shards, work, preset, extra)
    r["peak_rss_mb"] = peak_rss_mb()
    Path(args.result).write_text(json.dumps(r))


def run_method(method: str, shards: list[Path], work: Path) -> dict | None:
    """Run a method in its own process; None (with the reason printed) if it is unavailable."""
    res = work.with_suffix(".json")
    cmd = [sys.executable, __file__, "_worker", method, str(work), str(res), *map(str, shards)]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
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


def bench_corpus(name: str, shards: list[Path], pairs: list[dict], urls: list[dict], quick: bool, paper_peer: bool = False) -> dict:
    """All methods on one corpus."""
    n_docs = sum(1 for p in shards for _ in open(p, encoding="utf-8"))
    print(f"\n== {name}: {n_docs} documents, {len(pairs)} planted similarity pairs, {len(urls)} URL duplicates ==", flush=True)
    work = CACHE / "work" / name
    work.mkdir(parents=True, exist_ok=True)
    methods = ["falconlm:fineweb:minhash", "datatrove", "datasketch", "falconlm:refinedweb:minhash",
               "falconlm:-:exact", "falconlm:-:url"] + (["datatrove:refinedweb"] if paper_peer else [])
    results = {}
    for m in methods:
        r = run_method(m, shards, work / m.replace(":", "_"))
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
    for k, v in ratios.items():
        print(f"  ratio {k}: {v}x")
    return {"documents": n_docs, "methods": results, "ratios": ratios}


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
    ap.add_argument("--paper-peer", action="store_true", help="also run datatrove at the paper's 450 x 20 (slow)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dedup.json"))
    a = ap.parse_args()
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "note": "one core per method; shared machine: compare ratios, not absolute figures"},
        "command": " ".join(["python", "benchmarks/bench_dedup.py", *sys.argv[1:]]),
        "corpora": {},
    }
    shards, pairs, urls = fixture_corpus(150 if a.quick else 1000, CACHE / "fixture")
    report["corpora"]["fixture"] = bench_corpus("fixture", shards, pairs, urls, a.quick, a.paper_peer)
    report["corpora"]["fixture"]["estimate_error"] = estimate_accuracy(shards, pairs)
    if not a.no_web and WEB.exists():
        shards, pairs, urls = web_corpus(300 if a.quick else None)
        report["corpora"]["web-bench"] = bench_corpus("web-bench", shards, pairs, urls, a.quick, a.paper_peer)
    elif not a.no_web:
        print(f"\n(skipping web-bench: {WEB} not found)")
    if a.memory_scaling:
        report["memory_scaling_mib"] = memory_scaling(a.quick)
    out = Path(a.out if not a.quick else str(a.out).replace(".json", "-quick.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
