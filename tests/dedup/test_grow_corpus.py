"""scripts/grow_corpus.py (the input of benchmarks/bench_scale.py), grown here from the bundled sample:
deterministic, round 0 = the source, planted copies as its truth file says."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from falconlm.data.cli import sample_path
from falconlm.data.dedup.shingles import jaccard, ngram_set
from falconlm.data.extract import ExtractConfig, extract_text
from falconlm.data.readers import read_documents

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def grow():
    spec = importlib.util.spec_from_file_location("grow_corpus", ROOT / "scripts" / "grow_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.grow


def texts(folder: Path) -> dict[str, str]:
    """id -> extracted text of every document of the grown shards."""
    cfg = ExtractConfig(extractor="resiliparse")
    return {d.id: extract_text(d.text, cfg) or "" for p in sorted((folder / "warc").glob("*.warc.gz")) for d in read_documents(p)}


@pytest.mark.slow
def test_grown_corpus_is_deterministic_with_the_planted_answers(grow, tmp_path):
    truth = grow(sample_path(), tmp_path / "a", 3.5, seed=4, records_per_shard=40, progress=False)
    again = grow(sample_path(), tmp_path / "b", 3.5, seed=4, records_per_shard=40, progress=False)
    shards = sorted((tmp_path / "a" / "warc").glob("*.warc.gz"))
    assert [p.read_bytes() for p in shards] == [p.read_bytes() for p in sorted((tmp_path / "b" / "warc").glob("*.warc.gz"))]
    assert truth == {**again, "source": truth["source"]} and len(shards) > 3
    assert truth["responses"] == round(3.5 * truth["source_responses"]) == truth["source_responses"] + len(truth["records"])
    # round 0 is the source, byte for byte
    source = gzip.open(sample_path()).read()
    assert b"".join(gzip.open(p).read() for p in shards)[: len(source)] == source
    kinds = {r["kind"] for r in truth["records"]}
    assert kinds == {"mutation", "near", "exact", "recrawl"}
    assert json.loads((tmp_path / "a" / "truth.json").read_text()) == truth

    docs = texts(tmp_path / "a")
    by_id = {r["record_uuid"]: r for r in truth["records"]}
    assert set(by_id) <= set(docs)  # every derived record reads back, under its id
    pages = {d.url: extract_text(d.text, ExtractConfig(extractor="resiliparse")) or "" for d in read_documents(sample_path())}
    grams = {k: ngram_set(v) for k, v in docs.items()}
    checked = {"mutation": 0, "near": 0, "exact": 0}
    for r in truth["records"]:
        mine = grams[r["record_uuid"]]
        if len(mine) < 30:
            continue  # a page with (almost) no text: nothing to compare
        if r["kind"] == "mutation":  # a new document: far from the page it came from
            original = "/".join(r["url"].split("/")[:3] + r["url"].split("/")[4:])
            assert jaccard(mine, ngram_set(pages[original])) < 0.2
        elif r["kind"] == "exact":
            assert docs[r["record_uuid"]] == docs[r["dup_of"]]
        elif r["kind"] == "near":
            assert abs(jaccard(mine, grams[r["dup_of"]]) - r["jaccard5_expected"]) < 0.15
        elif r["kind"] == "recrawl":
            assert r["url"] == by_id[r["dup_of"]]["url"] and docs[r["record_uuid"]] != docs[r["dup_of"]]
        checked[r["kind"]] = checked.get(r["kind"], 0) + 1
    assert all(checked[k] > 0 for k in ("mutation", "near", "exact"))


def test_a_smaller_corpus_is_the_start_of_the_source(grow, tmp_path):
    truth = grow(sample_path(), tmp_path / "q", 0.5, progress=False)
    assert truth["records"] == [] and 0 < truth["responses"] < truth["source_responses"]
    (shard,) = (tmp_path / "q" / "warc").glob("*.warc.gz")
    data = gzip.open(shard).read()
    assert gzip.open(sample_path()).read().startswith(data) and data.count(b"WARC-Type: response") == truth["responses"]
