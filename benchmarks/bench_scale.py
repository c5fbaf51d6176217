#!/usr/bin/env python3
"""Scale benchmark: the full RefinedWeb recipe (filters, MinHash 450 x 20, exact substring, URL dedup)
on corpora grown from ../shared/corpora/web-bench.warc.gz by scripts/grow_corpus.py at 1x and 4x.

Each size runs in its own process on one core (`--workers 1`) with the same memory budget per task.
For every stage it prints the documents read, wall and CPU seconds, documents per CPU second (the
throughput per core) and peak resident memory — VmHWM, reset at the stage's start — with its growth
over the stage's starting RSS, which for a dedup stage must stay within the budget. Heavy libraries
(numba's kernels, the fastText model) load before the stages are measured, so the growth is the
stage's own. It then prints the 4x / 1x time ratios (linear: 4 +- 15%) and, from the planted records
of grow_corpus.py whose two documents both reached dedup, what each dedup stage removed.
No peer runs here (bench_dedup.py and bench_refine.py compare with datatrove); results go to
benchmarks/results/scale.json with the machine and its load noted.

Usage: python benchmarks/bench_scale.py [--quick] [--sizes 1 4] [--memory-mb 128] [--extractor resiliparse]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SOURCE = ROOT.parent / "shared" / "corpora" / "web-bench.warc.gz"
CACHE = Path(os.environ.get("FALCONLM_BENCH_CACHE", "/tmp/falconlm-bench-scale"))
DEDUP_STAGE_MODULES = ("falconlm.data.dedup.minhash_stage", "falconlm.data.dedup.exact_stage", "falconlm.data.dedup.url")


def grown(scale: float, seed: int = 0) -> Path:
    """The corpus of `scale` x web-bench (made once, cached)."""
    out = CACHE / f"grown-x{scale:g}-seed{seed}"
    if not out.exists():
        spec = importlib.util.spec_from_file_location("grow_corpus", ROOT / "scripts" / "grow_corpus.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        t = time.time()
        mod.grow(SOURCE, out, scale, seed)
        print(f"grew x{scale:g} in {time.time() - t:.0f} s ({out})", flush=True)
    return out


# ------------------------------------------------------------------------------ the worker process


def _rss_kib(field: str) -> int:
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux: clear_refs 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(corpus: Path, out: Path, extractor: str, memory_mb: float, result: Path) -> None:
    """Run the recipe on `corpus`, measuring every stage; write the measurements to `result`."""
    from falconlm.data import filter_stage
    from falconlm.data.config import DedupConfig, MinHashConfig, RefineConfig, Resources
    from falconlm.data.dedup.minhash import MinHasher
    from falconlm.data.dedup.shingles import word_shingles
    from falconlm.data.executor import ExecConfig
    from falconlm.data.extract import ExtractConfig
    from falconlm.data.filters.language import LanguageConfig, load_model
    from falconlm.data.refine import run_refine

    # Loaded before measuring: the fastText model, and numba with its cached kernels (first call).
    load_model(LanguageConfig().model_path)
    MinHasher(MinHashConfig()).signatures([word_shingles("warm up the compiled kernels once")])
    stages: list[dict] = []
    exact_peaks = _reset_peak()
    modules = [filter_stage] + [importlib.import_module(m) for m in DEDUP_STAGE_MODULES]
    for mod in modules:
        real = mod.run_stage

        def measured(stage, cfg, _real=real):
            start_rss = _rss_kib("VmRSS")
            _reset_peak()
            t, c = time.perf_counter(), time.process_time()
            res = _real(stage, cfg)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            stages.append({"stage": stage.name, "tasks": len(res), "docs": sum(int(r.get("docs_read", 0) or 0) for r in res),
                           "bytes": sum(int(getattr(x, "size_bytes", 0) or 0) for x in stage.tasks),
                           "wall_s": wall, "cpu_s": cpu, "start_rss_mib": start_rss / 1024, "peak_rss_mib": _rss_kib("VmHWM") / 1024})
            return res

        mod.run_stage = measured
    cfg = RefineConfig(extract=ExtractConfig(extractor=extractor), dedup=DedupConfig(resources=Resources(memory_mb=memory_mb, write_removed=True)))
    t, c = time.perf_counter(), time.process_time()
    run_refine([corpus / "warc"], out, "refinedweb", cfg, ExecConfig(workers=1, progress=False), report=False)
    total = {"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c}
    result.write_text(json.dumps({"stages": stages, "total": total, "peaks_per_stage": exact_peaks}))  # read once by the parent


# ------------------------------------------------------------------------------------ the parent


def run_size(scale: float, extractor: str, memory_mb: float) -> dict:
    """Grow (or reuse) the corpus, run the recipe on it in a one-core subprocess, evaluate the planted records."""
    corpus = grown(scale)
    out = CACHE / "work" / f"x{scale:g}"
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = out.with_suffix(".json")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "_worker", str(corpus), str(out), extractor, str(memory_mb), str(res)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"x{scale:g} failed:\n{p.stderr[-3000:]}")
    r = json.loads(res.read_text())
    r["responses"] = json.loads((corpus / "truth.json").read_text())["responses"]
    r["planted"] = evaluate(corpus, out)
    shutil.rmtree(out, ignore_errors=True)
    return r


def evaluate(corpus: Path, out: Path) -> dict:
    """Of the derived records whose document and source both reached dedup: what dedup removed, by kind
    (a pair counts as found when either document was removed; a mutation nothing copies should stay)."""
    import zstandard

    truth = json.loads((corpus / "truth.json").read_text())["records"]
    kept = set()
    for p in (out / "data").glob("*.jsonl.zst"):
        with open(p, "rb") as f:
            kept |= {json.loads(line)["id"] for line in zstandard.ZstdDecompressor().stream_reader(f).read().decode().splitlines() if line}
    removed: dict[str, str] = {}
    for p in sorted((out / "removed").rglob("*.jsonl")):
        for line in open(p, encoding="utf-8"):
            rec = json.loads(line)
            if rec.get("stage") != "exact_substring" or rec.get("dropped"):
                removed.setdefault(rec["id"], rec.get("stage", p.parent.name))
    reached = kept | set(removed)
    copied = {r["dup_of"] for r in truth if "dup_of" in r}  # mutations with a planted copy: counted through the copy
    out_: dict[str, dict] = {}
    for r in truth:
        if r["record_uuid"] not in reached or ("dup_of" in r and r["dup_of"] not in reached) or r["record_uuid"] in copied:
            continue
        kind = r["kind"] if r["kind"] != "near" else ("near J>=0.8" if r["jaccard5_expected"] >= 0.8 else "near J<0.8")
        if r["kind"] != "mutation":  # one of the pair removed = the pair found
            hit = r["record_uuid"] in removed or r["dup_of"] in removed
        else:
            hit = r["record_uuid"] in removed
        slot = out_.setdefault(kind, {"pairs" if r["kind"] != "mutation" else "documents": 0, "removed": 0, "by": {}})
        slot["pairs" if r["kind"] != "mutation" else "documents"] += 1
        slot["removed"] += hit
        if hit:
            stage = removed.get(r["record_uuid"]) or removed[r["dup_of"]]
            slot["by"][stage] = slot["by"].get(stage, 0) + 1
    return out_


def report(sizes: list[float], runs: dict[float, dict], memory_mb: float) -> dict:
    """Print the per-stage table, the time ratios and the memory check; return the figures."""
    lo, hi = sizes[0], sizes[-1]
    print(f"\n== per stage, one core, budget {memory_mb:g} MiB per task ==")
    print(f"  {'stage':<20}" + "".join(f" | x{s:g}: {'docs':>6} {'wall s':>7} {'cpu s':>7} {'docs/cpu-s':>10} {'peak RSS':>9} {'growth':>7}" for s in sizes))
    names = [st["stage"] for st in runs[lo]["stages"]]
    checks = {}
    for name in names:
        row = f"  {name:<20}"
        for s in sizes:
            st = next(x for x in runs[s]["stages"] if x["stage"] == name)
            growth = st["peak_rss_mib"] - st["start_rss_mib"]
            st["growth_mib"] = growth
            rate = st["docs"] / st["cpu_s"] if st["cpu_s"] > 0 and st["docs"] else float("nan")
            row += f" | {'':>4}{st['docs']:>8,} {st['wall_s']:>7.2f} {st['cpu_s']:>7.2f} {rate:>10,.0f} {st['peak_rss_mib']:>6.0f} MB {growth:>4.0f} MB"
        print(row)
        if name != "filter":
            worst = max(next(x for x in runs[s]["stages"] if x["stage"] == name)["growth_mib"] for s in sizes)
            checks[name] = {"growth_mib_max": round(worst, 1), "within_budget": worst <= memory_mb}
    ratio = hi / lo
    figures = {"time_ratio_wall": runs[hi]["total"]["wall_s"] / runs[lo]["total"]["wall_s"],
               "time_ratio_cpu": runs[hi]["total"]["cpu_s"] / runs[lo]["total"]["cpu_s"],
               "responses_ratio": runs[hi]["responses"] / runs[lo]["responses"]}
    print("\n  totals: " + ", ".join(f"x{s:g} {runs[s]['responses']:,} responses {runs[s]['total']['wall_s']:.1f} s wall / {runs[s]['total']['cpu_s']:.1f} s CPU" for s in sizes))
    for k in ("time_ratio_wall", "time_ratio_cpu"):
        v = figures[k]
        figures[k.replace("ratio", "linear")] = abs(v / ratio - 1) <= 0.15
        print(f"  {k.replace('_', ' ')} x{hi:g} / x{lo:g}: {v:.2f} (linear: {ratio:g} +- 15% -> {'yes' if figures[k.replace('ratio', 'linear')] else 'NO'})")
    peak = {s: max(st["peak_rss_mib"] for st in runs[s]["stages"]) for s in sizes}
    print("  peak RSS of the whole run: " + ", ".join(f"x{s:g} {peak[s]:.0f} MB" for s in sizes))
    bad = [k for k, v in checks.items() if not v["within_budget"]]
    print(f"  dedup stages' memory growth within the {memory_mb:g} MiB budget at every size: {'yes' if not bad else 'NO: ' + ', '.join(bad)}")
    for s in sizes:
        print(f"  planted records at x{s:g} (both documents reached dedup): {runs[s]['planted']}")
    figures["memory"] = checks
    figures["peak_rss_mib"] = {f"x{s:g}": round(v, 1) for s, v in peak.items()}
    return figures


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        _, _, corpus, out, extractor, memory_mb, result = sys.argv
        worker(Path(corpus), Path(out), extractor, float(memory_mb), Path(result))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1, 4], help="corpus sizes in multiples of web-bench (smallest first)")
    ap.add_argument("--quick", action="store_true", help="sizes 0.25 and 1 (a smoke run)")
    ap.add_argument("--memory-mb", type=float, default=128, help="memory budget per task (Resources.memory_mb)")
    ap.add_argument("--extractor", default="resiliparse", help="resiliparse (default here: the run stays short) or trafilatura (the paper's)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    a = ap.parse_args()
    if not SOURCE.exists():
        raise SystemExit(f"{SOURCE} not found: this benchmark grows its corpora from it")
    sizes = [0.25, 1.0] if a.quick else sorted(a.sizes)
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)", flush=True)
    runs = {}
    for s in sizes:
        print(f"running x{s:g} ...", flush=True)
        runs[s] = run_size(s, a.extractor, a.memory_mb)
    figures = report(sizes, runs, a.memory_mb)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average_start": load, "load_average_end": os.getloadavg(),
                          "note": "one core per run; shared machine: compare ratios, not absolute figures"},
              "command": " ".join(["python", "benchmarks/bench_scale.py", *sys.argv[1:]]),
              "settings": {"sizes": sizes, "memory_mb": a.memory_mb, "extractor": a.extractor, "workers": 1},
              "runs": {f"x{s:g}": r for s, r in runs.items()}, "figures": figures}
    from falconlm.atomic import atomic_write_json

    out = Path(a.out if not a.quick else str(a.out).replace(".json", "-quick.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result, indent=1)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
