"""Out-of-core dedup stages on generated fixtures: accuracy against planted truth, resume,
local vs Ray, corrupted intermediates, URL index across runs, bounded merge, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from falconlm.data.dedup.common import Resources
from falconlm.data.dedup.exact_substring import ExactSubstringConfig
from falconlm.data.dedup.merge import GroupFirsts, merge_groups, merge_sorted
from falconlm.data.dedup.minhash import MinHashConfig
from falconlm.data.dedup.records import HEADER_SIZE, KEY_DOC, RecordReader, write_records
from falconlm.data.config import DedupConfig, RefineConfig
from falconlm.data.dedup.url import UrlDedupConfig, normalize_url
from falconlm.data.executor import ExecConfig
from falconlm.data.refine import run_refine
from falconlm.errors import FalconError

QUIET = ExecConfig(workers=1, progress=False)


def _run(inputs, out, config, exec_config=QUIET):
    return run_refine(inputs, out, "dedup", RefineConfig(dedup=config), exec_config).stats


@pytest.mark.slow
def test_minhash_refinedweb_recall_and_precision(fixture_corpus, tmp_path, read_output):
    shards, truth = fixture_corpus
    cfg = DedupConfig(minhash=MinHashConfig.preset("refinedweb"), exact_substring=None, url=None, resources=Resources(memory_mb=16))
    stats = _run(shards, tmp_path / "run", cfg)
    kept = {d["id"] for d in read_output(tmp_path / "run")}
    pairs = truth["near"] + [dict(p, jaccard5=1.0) for p in truth["exact"]]
    high = [p for p in pairs if p["jaccard5"] >= 0.85]
    low = [p for p in pairs if p["jaccard5"] <= 0.5]
    assert len(high) >= 100 and len(low) >= 50
    # a pair is merged when exactly one of the two survives; the source is first in input order
    recall = np.mean([p["a"] in kept and p["b"] not in kept for p in high])
    merged_low = np.mean([not (p["a"] in kept and p["b"] in kept) for p in low])
    assert recall >= 0.99
    assert merged_low <= 0.01
    step = stats["steps"][0]
    assert step["name"] == "minhash" and step["docs_in"] == truth["documents"]
    assert step["dropped"]["minhash_duplicate"] == truth["documents"] - len(kept)
    assert sum(int(k) * v for k, v in step["cluster_size_histogram"].items()) >= step["clusters"] * 2
    assert stats["examples"]["minhash_duplicate"] and stats["examples"]["minhash_duplicate"][0]["documents"]
    # surviving documents keep id, url and metadata unchanged
    src = {json.loads(line)["id"]: json.loads(line) for p in shards for line in open(p, encoding="utf-8")}
    for d in read_output(tmp_path / "run"):
        assert d == src[d["id"]]


def test_exact_substring_stage_cuts_planted_spans(fixture_corpus, tmp_path, read_output):
    shards, truth = fixture_corpus
    cfg = DedupConfig(minhash=None, exact_substring=ExactSubstringConfig(), url=None, resources=Resources(write_removed=True))
    stats = _run(shards, tmp_path / "run", cfg)
    out = {d["id"]: d["text"] for d in read_output(tmp_path / "run")}
    for g in truth["span"]:
        for did in g["docs"]:
            if g["words"] >= 50:
                assert g["passage"] not in out[did]
                assert g["passage"].split()[0] not in out[did].split()  # cut from every copy
            else:
                assert g["passage"] in out[did]
    step = stats["steps"][0]
    assert step["cut_docs"] >= sum(len(g["docs"]) for g in truth["span"] if g["words"] >= 50)
    removed = [json.loads(x) for p in sorted((tmp_path / "run" / "removed" / "exact_substring").glob("*.jsonl")) for x in open(p)]
    assert removed and all(r["cut_spans"] for r in removed)


def test_exact_substring_parts_bound_memory_and_limit_matches(fixture_corpus, tmp_path):
    shards, truth = fixture_corpus
    small = DedupConfig(minhash=None, exact_substring=ExactSubstringConfig(part_tokens=5000), url=None)
    stats = _run(shards, tmp_path / "small", small)
    assert stats["steps"][0]["parts"] > 10
    big = _run(shards, tmp_path / "big", DedupConfig(minhash=None, url=None))
    assert big["steps"][0]["parts"] == 1
    # smaller parts can only find fewer repeats (copies in different parts are not compared)
    assert stats["steps"][0]["duplicated_tokens"] <= big["steps"][0]["duplicated_tokens"]


def test_url_dedup_first_kept_and_index_across_runs(fixture_corpus, tmp_path, read_output):
    shards, truth = fixture_corpus
    index = tmp_path / "index"
    cfg = DedupConfig(minhash=None, exact_substring=None, url=UrlDedupConfig(index=str(index)))
    _run(shards[:2], tmp_path / "run1", cfg)
    kept1 = {d["id"] for d in read_output(tmp_path / "run1")}
    s2 = _run(shards, tmp_path / "run2", cfg)
    kept2 = {d["id"] for d in read_output(tmp_path / "run2")}
    # every URL kept by run 1 is removed from run 2 ("URLs from earlier parts")
    assert not kept1 & kept2
    assert s2["steps"][0]["dropped"]["url_seen_in_earlier_run"] >= len(kept1)
    # within a run the first document per normalised URL is kept
    alone = _run(shards, tmp_path / "alone", DedupConfig(minhash=None, exact_substring=None, url=UrlDedupConfig()))
    kept = {d["id"] for d in read_output(tmp_path / "alone")}
    for p in truth["urldup"]:
        assert p["a"] in kept and p["b"] not in kept
    assert alone["steps"][0]["dropped"] == {"url_duplicate": len(truth["urldup"])}
    assert normalize_url("HTTPS://WWW.Ex.com:443/a/?utm_source=x&b=1#f") == normalize_url("http://ex.com/a?b=1")
    # resuming run 2 ignores the index file run 2 itself wrote
    s2b = _run(shards, tmp_path / "run2", cfg)
    assert s2b["steps"] == s2["steps"]


STAGES = ["minhash-signatures", "minhash-buckets", "minhash-clusters", "minhash-filter",
          "exact-tokens", "exact-spans", "exact-cut", "url-keys", "url-decide", "url-filter"]


def _full_config(**res):
    return DedupConfig(minhash=MinHashConfig.preset("fineweb"), exact_substring=ExactSubstringConfig(part_tokens=4000),
                       url=UrlDedupConfig(), resources=Resources(memory_mb=16, write_removed=True, **res), bucket_groups=3)


def _tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "data").iterdir())} | {
        str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "removed").rglob("*.jsonl"))}


def test_resume_after_failure_in_every_stage_is_byte_identical(small_corpus, tmp_path, monkeypatch):
    shards, _ = small_corpus
    ref = _run(shards, tmp_path / "ref", _full_config())
    ref_tree = _tree(tmp_path / "ref")
    import falconlm.data.dedup.exact_stage as es
    import falconlm.data.dedup.minhash_stage as ms
    import falconlm.data.dedup.url as us
    import falconlm.data.executor as ex

    real = ex.execute_task
    for stage in STAGES:
        out = tmp_path / stage
        calls = {"n": 0}

        def flaky(task, marker_dir, _stage=stage):
            # The second task of the chosen stage dies after a first one finished (or, for
            # single-task stages, the only one): like a kill in the middle of the stage.
            if Path(marker_dir).name == _stage:
                calls["n"] += 1
                if calls["n"] == min(2, len(list(ms.band_groups(14, 3)))) or _stage in ("minhash-clusters", "url-decide"):
                    # leave a half-written temp file behind, as a killed writer would
                    (out / "data").mkdir(parents=True, exist_ok=True)
                    (out / "data" / ".00001.jsonl.zst.tmp-999").write_bytes(b"partial")
                    raise RuntimeError("simulated crash")
            return real(task, marker_dir)

        monkeypatch.setattr(ex, "execute_task", flaky)
        with pytest.raises(FalconError, match="simulated crash"):
            _run(shards, out, _full_config())
        monkeypatch.setattr(ex, "execute_task", real)
        resumed = _run(shards, out, _full_config())  # also clears the temp file the crash left
        assert _tree(out) == ref_tree, stage
        assert resumed["steps"] == ref["steps"], stage
    del es, us


@pytest.mark.slow
def test_kill_and_resume_cli_is_byte_identical(small_corpus, tmp_path):
    shards, _ = small_corpus
    args = [sys.executable, "-m", "falconlm", "dedup", *map(str, shards), "--minhash", "refinedweb", "--exact-substring",
            "--url", "--no-progress", "--memory-mb", "16"]
    ref = tmp_path / "ref"
    subprocess.run(args + ["--out", str(ref)], check=True, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(args + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list((out / "markers").glob("*/*.json")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "stats.json").exists()
    subprocess.run(args + ["--out", str(out)], check=True, capture_output=True)
    assert _tree_data(out) == _tree_data(ref)


def _tree_data(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").iterdir())}


@pytest.mark.slow
@pytest.mark.distributed
def test_ray_executor_matches_local(small_corpus, tmp_path):
    pytest.importorskip("ray")
    shards, _ = small_corpus
    _run(shards, tmp_path / "local", _full_config(), ExecConfig(workers=2, progress=False))
    _run(shards, tmp_path / "ray", _full_config(), ExecConfig(workers=2, executor="ray", progress=False))
    assert _tree(tmp_path / "ray") == _tree(tmp_path / "local")


@pytest.mark.parametrize("damage", ["flip", "truncate", "unsorted"])
def test_corrupted_intermediate_names_the_file(small_corpus, tmp_path, damage):
    shards, _ = small_corpus
    out = tmp_path / "run"
    cfg = DedupConfig(minhash=MinHashConfig.preset("fineweb"), exact_substring=None, url=None)
    _run(shards, out, cfg)
    victim = sorted((out / "dedup" / "minhash" / "signatures").glob("s00001.g000.*.bin"))[0]
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[-3] ^= 0xFF
    elif damage == "truncate":
        data = data[:-5]
    else:  # swap the first two records: sizes and header stay valid, order does not
        rec = np.frombuffer(bytes(data[HEADER_SIZE:]), dtype=KEY_DOC).copy()
        rec[[0, 1]] = rec[[1, 0]]
        data = data[:HEADER_SIZE] + rec.tobytes()
    victim.write_bytes(bytes(data))
    import shutil

    for stage in ("minhash-buckets", "minhash-clusters", "minhash-filter"):
        shutil.rmtree(out / "markers" / stage)
    with pytest.raises(FalconError) as err:
        _run(shards, out, cfg)
    assert victim.name in str(err.value)
    with pytest.raises(FalconError, match=str(victim).replace(".", r"\.")):
        RecordReader(victim, KEY_DOC).read_all()


def _sorted_key_files(tmp_path, n_files: int, keys: int):
    """Sorted KEY_DOC files with long runs of equal keys, and all their records sorted."""
    rng = np.random.default_rng(0)
    files, allrec = [], []
    for f in range(n_files):
        rec = np.empty(3000, KEY_DOC)
        rec["key"] = rng.integers(0, keys, 3000)  # long runs of equal keys span many chunks
        rec["doc"] = rng.integers(0, 10**6, 3000)
        rec = rec[np.lexsort((rec["doc"], rec["key"]))]
        write_records(tmp_path / f"{f}.bin", rec, sorted_=True)
        files.append(tmp_path / f"{f}.bin")
        allrec.append(rec)
    full = np.concatenate(allrec)
    return files, full[np.lexsort((full["doc"], full["key"]))]


def test_bounded_merge_equals_full_sort(tmp_path):
    files, full = _sorted_key_files(tmp_path, 5, 40)
    blocks = list(merge_groups(files, KEY_DOC, chunk_records=7))
    got = np.concatenate(blocks)
    assert np.array_equal(got, full)
    keys_per_block = [set(b["key"].tolist()) for b in blocks]
    for i in range(len(keys_per_block)):
        for j in range(i + 1, len(keys_per_block)):
            assert not keys_per_block[i] & keys_per_block[j]  # no key group split across blocks


def test_merge_sorted_bounds_blocks_and_group_firsts_span_them(tmp_path):
    files, full = _sorted_key_files(tmp_path, 4, 25)  # groups of ~480 rows: far longer than a block
    blocks = list(merge_sorted(files, KEY_DOC, chunk_records=7))
    assert np.array_equal(np.concatenate(blocks), full)
    assert max(len(b) for b in blocks) <= 4 * 7
    firsts = GroupFirsts()
    got = [firsts(b["key"], b["doc"]) for b in blocks]
    starts = np.concatenate([s for s, _ in got])
    first_doc = np.concatenate([f for _, f in got])
    expect_starts = np.concatenate([[True], full["key"][1:] != full["key"][:-1]])
    assert np.array_equal(starts, expect_starts)
    group_first = {int(k): int(d) for k, d in zip(full["key"][expect_starts], full["doc"][expect_starts])}
    assert first_doc.tolist() == [group_first[int(k)] for k in full["key"]]


def test_signature_spills_keep_output_identical(small_corpus, tmp_path):
    shards, _ = small_corpus
    base = DedupConfig(minhash=MinHashConfig.preset("refinedweb"), exact_substring=None, url=None)
    _run(shards, tmp_path / "big", DedupConfig(minhash=base.minhash, exact_substring=None, url=None, resources=Resources(memory_mb=512)))
    tiny = DedupConfig(minhash=base.minhash, exact_substring=None, url=None, resources=Resources(memory_mb=0.1))
    import falconlm.data.dedup.minhash_stage as ms

    old = ms.BATCH_DOCS
    ms.BATCH_DOCS = 16  # with a 100 KiB budget every batch spills a run
    try:
        _run(shards, tmp_path / "tiny", tiny)
    finally:
        ms.BATCH_DOCS = old
    runs = list((tmp_path / "tiny" / "dedup" / "minhash" / "signatures").glob("s00000.g000.r*.bin"))
    assert len(runs) > 2
    assert _tree_data(tmp_path / "tiny") == _tree_data(tmp_path / "big")


def test_cli_errors_and_estimate(tmp_path, capsys):
    from falconlm.cli import main

    assert main(["dedup", "missing.jsonl", "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["dedup", "x.jsonl", "--out", str(tmp_path / "o"), "--bands", "4"]) == 1
    assert "--bands and --rows" in capsys.readouterr().err
    assert main(["dedup", "x.jsonl", "--out", str(tmp_path / "o"), "--estimate", "1000000", "--minhash", "refinedweb"]) == 0
    text = capsys.readouterr().out
    assert "1,000,000 documents" in text and "disk signatures" in text and "s = 0.75  P = 0.7605" in text
    # 450 bands x 16 bytes per document of signatures
    assert "6.7 GiB" in text


def test_refinedweb_recipe_appends_dedup_stages(small_corpus, tmp_path, read_output):
    from falconlm.data.recipes import build_recipe
    from falconlm.data.stage import StageContext

    cfg = RefineConfig(dedup=DedupConfig(minhash=MinHashConfig(bands=14, rows=8), exact_substring=ExactSubstringConfig(part_tokens=5000)))
    stages = build_recipe("refinedweb", cfg)
    assert [s.name for s in stages][-3:] == ["minhash", "exact_substring", "url_dedup"]
    assert [s.name for s in build_recipe("refinedweb-filter", cfg)] == [s.name for s in stages][:-3]
    # the dedup stages run with the refine pipeline's own StageContext (reading shards with the standard keys)
    shards, _ = small_corpus
    current = list(shards)
    for k, stage in enumerate(stages[-3:]):
        ctx = StageContext(tmp_path, QUIET, last=(k == 2))
        res = stage.run(current, ctx)
        current = res.outputs
        assert res.stats[0]["name"] == stage.name and res.stats[0]["docs_out"] <= res.stats[0]["docs_in"]
    assert read_output(tmp_path)


def test_input_changed_between_stages_is_refused(small_corpus, tmp_path):
    import shutil

    shards, _ = small_corpus
    copies = []
    for p in shards:
        shutil.copy(p, tmp_path / p.name)
        copies.append(tmp_path / p.name)
    cfg = DedupConfig(minhash=MinHashConfig.preset("fineweb"), exact_substring=None, url=None)
    _run(copies, tmp_path / "run", cfg)
    with open(copies[1], "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "late", "text": "a document added later", "url": None}) + "\n")
    shutil.rmtree(tmp_path / "run" / "markers" / "minhash-filter")
    with pytest.raises(FalconError, match=rf"input files changed since \({copies[1].name}\)"):
        _run(copies, tmp_path / "run", cfg)


def test_custom_text_key_through_all_methods(small_corpus, tmp_path, read_output):
    from falconlm.cli import main

    shards, _ = small_corpus
    src = tmp_path / "in.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for p in shards:
            for line in open(p, encoding="utf-8"):
                d = json.loads(line)
                f.write(json.dumps({"doc_id": d["id"], "content": d["text"], "url": d["url"]}) + "\n")
    rc = main(["dedup", str(src), "--out", str(tmp_path / "run"), "--text-key", "content", "--id-key", "doc_id",
               "--minhash", "fineweb", "--exact-substring", "--url", "--no-progress"])
    assert rc == 0
    out = read_output(tmp_path / "run")
    assert out and all(d["id"].startswith("d") and d["text"] for d in out)
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert [s["name"] for s in stats["steps"]] == ["minhash", "exact_substring", "url_dedup"]
    assert stats["steps"][1]["docs_in"] == stats["steps"][0]["docs_out"]
    assert (tmp_path / "run" / "report.html").exists()


def test_dedup_of_an_empty_input_is_an_error_not_zeros(tmp_path, capsys):
    from falconlm.cli import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["dedup", str(empty), "--out", str(tmp_path / "out")]) == 1
    assert "no documents could be read" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
