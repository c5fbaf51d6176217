"""Token shards: exact content, held-out split, dtype, resume after a kill, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from falconlm.atomic import is_temp, temp_path
from falconlm.cli import main as cli_main
from falconlm.errors import FalconError
from falconlm.tokenizer import FalconTokenizer, train_tokenizer
from falconlm.train import shards as shards_mod
from falconlm.train.shards import ShardIndex, is_heldout, load_shard, token_dtype, write_token_shards

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "sample_corpus.jsonl"


def texts() -> list[str]:
    return [json.loads(line)["text"] for line in FIXTURE.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts(), vocab_size=500, show_progress=False).save(out)
    return out


def read_split(out: Path, split: str) -> np.ndarray:
    index = ShardIndex.load(out)
    parts = [np.asarray(load_shard(out, s, index.dtype)) for s in index.splits[split]]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def expected(tok_dir: Path, frac: float) -> dict[str, list[int]]:
    tok = FalconTokenizer.load(tok_dir)
    exp: dict[str, list[int]] = {"train": [], "val": []}
    for t in texts():
        exp["val" if is_heldout(t, frac) else "train"] += tok.encode(t) + [11]
    return exp


@pytest.mark.parametrize("workers", [1, 2])
def test_shards_hold_every_document_in_order(tmp_path, tok_dir, workers):
    out = tmp_path / "shards"
    index = write_token_shards([str(FIXTURE)], tok_dir, out, workers=workers, shard_tokens=20_000, val_fraction=0.1, progress=False)
    exp = expected(tok_dir, 0.1)
    assert index.dtype == "uint16" and index.eot_id == 11 and index.docs == 1200
    assert read_split(out, "train").tolist() == exp["train"]
    assert read_split(out, "val").tolist() == exp["val"]
    n_val_docs = sum(s.docs for s in index.splits["val"])
    assert 60 <= n_val_docs <= 180  # ~10% of 1200 documents
    assert len(index.splits["train"]) >= 3  # split into several shards
    assert all(s.tokens < 20_000 + 400 for s in index.splits["train"])  # whole docs, never far past the limit
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    assert not (out / "progress.json").exists() and not [p for p in out.iterdir() if is_temp(p)]


def test_dtype_choice():
    assert token_dtype(65024) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_killed_run_resumes_to_identical_output(tmp_path, tok_dir, monkeypatch):
    ref = tmp_path / "ref"
    write_token_shards([str(FIXTURE)], tok_dir, ref, shard_tokens=15_000, val_fraction=0.05, progress=False)
    out = tmp_path / "killed"
    real_write = shards_mod._write_shard
    calls = {"n": 0}

    def dying_write(path, arrays):
        calls["n"] += 1
        if calls["n"] == 4:  # die while writing the second flush, after one complete flush
            temp_path(path).write_bytes(b"partial")
            raise KeyboardInterrupt
        real_write(path, arrays)

    monkeypatch.setattr(shards_mod, "_write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        write_token_shards([str(FIXTURE)], tok_dir, out, shard_tokens=15_000, val_fraction=0.05, progress=False)
    monkeypatch.setattr(shards_mod, "_write_shard", real_write)
    assert not (out / "index.json").exists() and (out / "progress.json").exists()
    assert [p for p in out.iterdir() if is_temp(p)]  # the killed write left its temp file
    with pytest.raises(FalconError, match="did not finish"):
        ShardIndex.load(out)
    index = write_token_shards([str(FIXTURE)], tok_dir, out, shard_tokens=15_000, val_fraction=0.05, progress=False)
    assert index.to_dict() == ShardIndex.load(ref).to_dict()
    for f in sorted(ref.glob("*.bin")):
        assert (out / f.name).read_bytes() == f.read_bytes()
    assert not [p for p in out.iterdir() if is_temp(p)]


def test_tokenize_cli_and_errors(tmp_path, tok_dir, capsys):
    out = tmp_path / "s"
    assert cli_main(["tokenize", str(FIXTURE), "--tokenizer", str(tok_dir), "--out", str(out), "--workers", "1", "--val-fraction", "0.02"]) == 0
    assert "1,200 documents" in capsys.readouterr().out
    assert cli_main(["tokenize", str(FIXTURE), "--tokenizer", str(tok_dir), "--out", str(out), "--workers", "1", "--val-fraction", "0.02"]) == 0
    assert "already complete" in capsys.readouterr().out
    # Another setting than the one that made the shards: refused, naming the difference, shards kept.
    assert cli_main(["tokenize", str(FIXTURE), "--tokenizer", str(tok_dir), "--out", str(out), "--workers", "1"]) == 1
    assert "val_fraction 0.02 -> 0.005" in capsys.readouterr().err
    assert ShardIndex.load(out).val_fraction == 0.02
    assert cli_main(["tokenize", str(tmp_path / "nope"), "--tokenizer", str(tok_dir), "--out", str(out)]) == 1
    assert cli_main(["tokenize", str(FIXTURE), "--tokenizer", str(tmp_path), "--out", str(out)]) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "good doc"}\nnot json\n{"other": 1}\n{"text": ""}\n')
    assert cli_main(["tokenize", str(bad), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "b"), "--workers", "1", "--val-fraction", "0"]) == 0
    idx = ShardIndex.load(tmp_path / "b")
    # Two unusable records (line 2 not JSON, line 3 no text) and one empty document, all counted.
    assert idx.docs == 1 and idx.skipped_docs == 3 and idx.empty_docs == 1
    assert idx.skipped["reasons"] == {"malformed_json": 1, "missing_text": 1}
    assert idx.skipped["files"][0]["lines"] == {"malformed_json": [2], "missing_text": [3]}
    assert "bad.jsonl: 1 malformed_json (line 2), 1 missing_text (line 3)" in capsys.readouterr().out


def test_reads_jsonl_zst_parquet_and_text(tmp_path, tok_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    docs = texts()[:30]
    (tmp_path / "in").mkdir()
    payload = "".join(json.dumps({"text": t}) + "\n" for t in docs[:10]).encode()
    (tmp_path / "in" / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    pq.write_table(pa.table({"text": docs[10:20]}), tmp_path / "in" / "b.parquet")
    for i, t in enumerate(docs[20:30]):
        (tmp_path / "in" / f"c{i:02d}.txt").write_text(t, encoding="utf-8")
    index = write_token_shards([str(tmp_path / "in")], tok_dir, tmp_path / "out", val_fraction=0.0, progress=False)
    tok = FalconTokenizer.load(tok_dir)
    exp = [i for t in docs for i in tok.encode(t) + [11]]
    assert index.docs == 30 and read_split(tmp_path / "out", "train").tolist() == exp
