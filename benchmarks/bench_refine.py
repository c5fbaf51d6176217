#!/usr/bin/env python3
"""falconlm's refinement filter stage vs datatrove's equivalent pipeline, one worker each, same WARC.

    python benchmarks/bench_refine.py --warc ../shared/corpora/web-bench.warc.gz
    python benchmarks/bench_refine.py --warc ../shared/corpora/web-bench.warc.gz --quick

Pipelines (each in this process, one core, one after the other). Time = CPU seconds of this
process plus its children (datatrove extracts in a sandbox subprocess), so the figures are per
core and robust to other jobs sharing the machine; wall-clock seconds are recorded too.
  falconlm   read (own WARC parser) -> URLFilter -> Extract -> LanguageFilter (LID-176)
             -> RepetitionFilter -> QualityFilter -> LineFilter   (the refinedweb-filter recipe)
  datatrove  WarcReader -> URLFilter (its bundled UT1 list; tldextract's offline snapshot)
             -> Trafilatura(favour_precision=True) or a resiliparse BaseExtractor (same sandboxed
             subprocess as its Trafilatura; datatrove ships no resiliparse extractor)
             -> LID-176 as a datatrove filter (its LanguageFilter downloads lid.176.bin at run time,
             impossible offline; we plug in the same model file ours reads, keep = en and > 0.65)
             -> GopherRepetitionFilter -> GopherQualityFilter
Configurations: trafilatura on both sides, resiliparse on both sides. Printed: documents/s of
each, the ratio, the keep/drop agreement of the two pipelines, and the agreement of the Gopher
filters alone on identical texts (our extracted, English texts fed to both implementations).
Results go to benchmarks/results/refine.json with the machine noted.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from falconlm.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def ours(warc: Path, extractor: str, limit: int | None) -> dict:
    """Run falconlm's filter steps; returns timing, kept ids and the English texts before Gopher."""
    from falconlm.data.config import RefineConfig
    from falconlm.data.extract import ExtractConfig
    from falconlm.data.readers import ReaderOptions, read_documents
    from falconlm.data.recipes import build_recipe
    from falconlm.data.step import StepStats, run_steps

    cfg = replace(RefineConfig(), extract=ExtractConfig(extractor=extractor), reader=ReaderOptions(limit=limit))
    steps = build_recipe("refinedweb-filter", cfg)[0].build_steps()  # models and lists load here, outside the timed region
    english: list[tuple[str, str]] = []

    class Tap:
        name = "tap"

        def run(self, docs, stats, on_drop=None):
            for d in docs:
                english.append((d.id, d.text))
                yield d

    read = StepStats("read")
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    docs = read_documents(warc, cfg.reader, read)
    stream, stats = run_steps(docs, steps[:3], None)
    stream = Tap().run(stream, None)
    stream, stats2 = run_steps(stream, steps[3:], None)
    kept = [d.id for d in stream]
    dt = time.perf_counter() - t0
    return {"seconds": cpu_seconds() - c0, "wall": dt, "docs": read.docs_out, "kept": kept, "english": english,
            "steps": [read.to_dict()] + [s.to_dict() for s in stats + stats2]}


def datatrove_pipeline(warc: Path, extractor: str, limit: int | None) -> dict:
    """Run datatrove's equivalent steps in-process; returns timing and kept ids."""
    from datatrove.data import Document as DTDocument
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.extractors.base import BaseExtractor
    from datatrove.pipeline.filters import (
        GopherQualityFilter,
        GopherRepetitionFilter,
        URLFilter,
    )
    from datatrove.pipeline.filters.base_filter import BaseFilter
    from datatrove.pipeline.readers import WarcReader
    from tldextract import TLDExtract

    from falconlm.data.filters.language import load_model, predict_language

    class ResiliparseExtractor(BaseExtractor):
        name = "resiliparse"

        def __init__(self, timeout: float = 1) -> None:
            super().__init__(timeout)

        def extract(self, text: str) -> str:
            from resiliparse.extract.html2text import extract_plain_text

            return extract_plain_text(text, main_content=True, preserve_formatting=True, alt_texts=False,
                                      list_bullets=True)

    class LID176(BaseFilter):
        name = "lid176"

        def filter(self, doc: DTDocument) -> bool | tuple[bool, str]:
            lang, score = predict_language(doc.text, load_model())
            doc.metadata["language"], doc.metadata["language_score"] = lang, score
            return (lang == "en" and score > 0.65) or (False, "language")

    url_filter = URLFilter()
    url_filter.tldextractor = TLDExtract(suffix_list_urls=())  # offline: the bundled snapshot
    url_filter.download_data()  # unpack its UT1 list before timing
    extract = Trafilatura(favour_precision=True, timeout=1) if extractor == "trafilatura" else ResiliparseExtractor(timeout=1)
    lid = LID176()
    lid.filter(DTDocument(text="warm up", id="0"))
    steps = [url_filter, extract, lid, GopherRepetitionFilter(), GopherQualityFilter()]
    steps[3].filter(DTDocument(text="Loads the spaCy tokenizer before timing.", id="0"))  # one-time cost
    reader = WarcReader(data_folder=str(warc.parent), glob_pattern=warc.name, limit=limit if limit else -1)

    c0 = cpu_seconds()
    t0 = time.perf_counter()
    n_read = 0

    def counted(docs):
        nonlocal n_read
        for d in docs:
            n_read += 1
            yield d

    data = counted(reader.run(None, 0, 1))
    for s in steps:
        data = s.run(data, 0, 1)
    kept = [_norm_id(d.id) for d in data]
    dt = time.perf_counter() - t0
    return {"seconds": cpu_seconds() - c0, "wall": dt, "docs": n_read, "kept": kept}


def _norm_id(rid: str) -> str:
    return rid.strip("<>").removeprefix("urn:uuid:")


def gopher_agreement(texts: list[tuple[str, str]]) -> dict:
    """Both Gopher implementations on the same texts: fraction of identical keep/drop decisions."""
    from datatrove.data import Document as DTDocument
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter

    from falconlm.data.filters.quality import QualityConfig, quality_reason
    from falconlm.data.filters.repetition import RepetitionConfig, repetition_reason
    from falconlm.data.filters.words import split_words

    rep, qual = GopherRepetitionFilter(), GopherQualityFilter()
    agree_rep = agree_qual = agree = 0
    t_ours = t_dt = 0.0
    disagreements = []
    for i, t in texts:
        a = time.process_time()
        d_rep = rep.filter(DTDocument(text=t, id=i)) is True
        d_qual = qual.filter(DTDocument(text=t, id=i)) is True
        b = time.process_time()
        w = split_words(t)
        o_rep = repetition_reason(t, w, RepetitionConfig()) is None
        o_qual = quality_reason(t, w, QualityConfig()) is None
        c = time.process_time()
        t_dt += b - a
        t_ours += c - b
        agree_rep += d_rep == o_rep
        agree_qual += d_qual == o_qual
        same = (d_rep and d_qual) == (o_rep and o_qual)
        agree += same
        if not same:
            disagreements.append(i)
    n = max(len(texts), 1)
    return {"docs": len(texts), "repetition": agree_rep / n, "quality": agree_qual / n, "both": agree / n,
            "disagreeing_ids": disagreements[:20], "seconds_ours": t_ours, "seconds_datatrove": t_dt}


def main() -> int:
    """Run both configurations and print/save the comparison."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warc", required=True, type=Path)
    ap.add_argument("--quick", action="store_true", help="first 150 documents only")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--extractors", default="resiliparse,trafilatura")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "refine.json")
    a = ap.parse_args()
    limit = 150 if a.quick else a.limit
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = tempfile.mkdtemp()
    os.environ.setdefault("HF_HOME", tmp)  # datatrove unpacks its URL list into the HF assets cache

    results: dict = {
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
                    "note": "one worker per pipeline; shared 2-core machine, so compare ratios"},
        "warc": str(a.warc), "limit": limit, "runs": {},
    }
    for ex in a.extractors.split(","):
        o = ours(a.warc, ex, limit)
        d = datatrove_pipeline(a.warc, ex, limit)
        o_rate, d_rate = o["docs"] / o["seconds"], d["docs"] / d["seconds"]
        ko, kd = set(o["kept"]), set(d["kept"])
        n = o["docs"]
        both, only_o, only_d = len(ko & kd), len(ko - kd), len(kd - ko)
        g = gopher_agreement(o["english"])
        results["runs"][ex] = {
            "falconlm": {"docs": o["docs"], "cpu_seconds": round(o["seconds"], 2), "wall_seconds": round(o["wall"], 2),
                         "docs_per_s": round(o_rate, 1),
                         "kept": len(ko), "steps": o["steps"]},
            "datatrove": {"docs": d["docs"], "cpu_seconds": round(d["seconds"], 2), "wall_seconds": round(d["wall"], 2),
                          "docs_per_s": round(d_rate, 1),
                          "kept": len(kd)},
            "speedup": round(o_rate / d_rate, 2),
            "pipelines": {"kept_by_both": both, "only_falconlm": only_o, "only_datatrove": only_d,
                          "same_decision": round(1 - (only_o + only_d) / max(n, 1), 4)},
            "gopher_same_texts": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in g.items()},
        }
        r = results["runs"][ex]
        print(f"\n== extractor: {ex} ({n} documents)")
        print(f"  falconlm : {o_rate:8.1f} docs/s per core  ({o['seconds']:.1f} CPU s, {o['wall']:.1f} wall s, kept {len(ko)})")
        print(f"  datatrove: {d_rate:8.1f} docs/s per core  ({d['seconds']:.1f} CPU s, {d['wall']:.1f} wall s, kept {len(kd)})")
        print(f"  speed-up : {r['speedup']:.2f}x")
        print(f"  pipelines: kept by both {both}, only falconlm {only_o}, only datatrove {only_d}; "
              f"same decision on {100 * r['pipelines']['same_decision']:.1f}% of documents")
        print(f"  Gopher filters on the same {g['docs']} texts: same decision {100 * g['both']:.2f}% "
              f"(repetition {100 * g['repetition']:.2f}%, quality {100 * g['quality']:.2f}%); "
              f"time {g['seconds_ours']:.2f} s vs {g['seconds_datatrove']:.2f} s")
    runs = results["runs"]
    if "resiliparse" in runs and "trafilatura" in runs:
        x = runs["resiliparse"]["falconlm"]["docs_per_s"] / runs["trafilatura"]["datatrove"]["docs_per_s"]
        results["falconlm_resiliparse_vs_datatrove_trafilatura"] = round(x, 2)
        print(f"\nfalconlm (resiliparse) vs datatrove (trafilatura): {x:.1f}x")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, results)
    print(f"saved {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
