"""Readers (WARC charset handling, malformed records, JSONL/Parquet, input expansion) and the
atomic writers."""

from __future__ import annotations

import gzip
import json

import pytest

from falconlm.data.document import Document
from falconlm.data.readers import ReaderOptions, decode_html, expand_inputs, read_documents
from falconlm.data.step import StepStats
from falconlm.data.writers import ShardWriter
from falconlm.errors import FalconError

from refine_helpers import html_page, record, write_warc


def read_all(path, **kw):
    st = StepStats("read")
    return list(read_documents(path, ReaderOptions(**kw), st)), st


# ------------------------------------------------------------------ charsets


def test_charset_from_http_header_wins():
    body = "<html><head><meta charset='utf-8'></head><body>café</body></html>".encode("cp1252")
    text, source = decode_html(body, "windows-1252")
    assert "café" in text and source == "http"


def test_charset_from_meta_tag_when_header_has_none():
    body = "<html><head><meta http-equiv='Content-Type' content='text/html; charset=ISO-8859-1'></head><body>naïve façade</body></html>".encode("latin-1")
    text, source = decode_html(body, None)
    assert "naïve façade" in text and source == "meta"


def test_lying_header_falls_back_to_meta_then_detection():
    body = "<html><head><meta charset='koi8-r'></head><body>Привет, мир! Это проверка кодировки текста.</body></html>".encode("koi8-r")
    text, source = decode_html(body, "utf-8")  # the header lies: not valid UTF-8
    assert "Привет" in text and source == "meta"


def test_charset_detection_without_any_declaration():
    body = ("<html><body>" + "Съешь же ещё этих мягких французских булок, да выпей чаю. " * 20 + "</body></html>").encode("cp1251")
    text, source = decode_html(body, None)
    assert "французских" in text and source == "detected"


def test_unknown_charset_name_is_ignored():
    text, source = decode_html("<p>plain</p>".encode(), "no-such-charset")
    assert text == "<p>plain</p>"


# ----------------------------------------------------------------------- WARC


@pytest.mark.parametrize("gz", [True, False])
def test_malformed_records_are_counted_and_skipped(tmp_path, gz):
    good1 = record("http://a.example/1", html_page("A", ["first page"]))
    truncated = record("http://a.example/2", html_page("B", ["second page"]))[:-80]
    garbage = b"not a warc header at all\r\n\r\n"
    png = record("http://a.example/img.png", b"\x89PNG....", "image/png")
    missing = record("http://a.example/404", b"gone", status="404 Not Found")
    request = record("http://a.example/req", b"GET / HTTP/1.1", rec_type="request")
    no_length = b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: http://a.example/x\r\n\r\nbody\r\n\r\n"
    good2 = record("http://a.example/3", html_page("C", ["third page"]))
    path = write_warc(tmp_path / ("t.warc.gz" if gz else "t.warc"),
                      [good1, truncated, garbage, png, missing, request, no_length, good2], gz=gz)
    docs, st = read_all(path)
    assert [d.url for d in docs] == ["http://a.example/1", "http://a.example/3"]
    assert st.dropped["malformed_record"] >= 2
    assert st.dropped["not_html"] == 1 and st.dropped["http_status"] == 1
    assert docs[0].id and docs[0].metadata["date"] == "2023-01-01T00:00:00Z"


def test_truncated_gzip_keeps_what_was_read(tmp_path):
    recs = [record(f"http://a.example/{i}", html_page("T", [f"page {i}"])) for i in range(5)]
    data = b"".join(gzip.compress(r, mtime=0) for r in recs)
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(data[: len(data) - 30])  # the last member is cut
    docs, st = read_all(path)
    assert [d.url for d in docs] == [f"http://a.example/{i}" for i in range(4)]
    assert sum(st.dropped.values()) >= 1


def test_slices_partition_a_file(tmp_path):
    recs = [record(f"http://a.example/{i}", html_page("S", [f"page {i}"])) for i in range(7)]
    path = write_warc(tmp_path / "s.warc.gz", recs)
    seen = []
    for k in range(3):
        docs, _ = read_all(path, slice_index=k, num_slices=3)
        seen += [d.url for d in docs]
    assert sorted(seen) == sorted(f"http://a.example/{i}" for i in range(7))
    docs, _ = read_all(path, limit=2)
    assert len(docs) == 2


# --------------------------------------------------------------- JSONL / Parquet


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"])
def test_writer_reader_roundtrip(tmp_path, fmt):
    docs = [Document(f"d{i}", f"text {i} ünïcode", f"http://x/{i}", {"k": i}) for i in range(2500)]
    path = tmp_path / f"out.{fmt}"
    with ShardWriter(path) as w:
        for d in docs:
            w.write(d)
    assert path.exists() and not list(tmp_path.glob("*.tmp-*"))
    back, st = read_all(path)
    assert [(d.id, d.text, d.url, d.metadata["k"]) for d in back] == [(d.id, d.text, d.url, i) for i, d in enumerate(docs)]


def test_writer_output_is_deterministic(tmp_path):
    docs = [Document(f"d{i}", "same text " * i, None, {}) for i in range(50)]
    for name in ("a", "b"):
        with ShardWriter(tmp_path / f"{name}.jsonl.zst") as w:
            for d in docs:
                w.write(d)
    assert (tmp_path / "a.jsonl.zst").read_bytes() == (tmp_path / "b.jsonl.zst").read_bytes()


def test_writer_is_atomic_on_error(tmp_path):
    path = tmp_path / "x.jsonl.zst"
    with pytest.raises(RuntimeError):
        with ShardWriter(path) as w:
            w.write(Document("1", "a"))
            raise RuntimeError("boom")
    assert not path.exists() and not list(tmp_path.iterdir())


def test_jsonl_text_key_and_bad_lines(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(
        json.dumps({"content": "hello", "id": 7, "lang": "en"}) + "\n{broken json\n"
        + json.dumps({"other": 1}) + "\n\n" + json.dumps({"content": "world"}) + "\n"
    )
    docs, st = read_all(path, text_key="content")
    assert [d.text for d in docs] == ["hello", "world"]
    assert docs[0].id == "7" and docs[0].metadata["lang"] == "en"
    assert docs[1].id == "in.jsonl:4"  # no id: file and line
    assert st.dropped == {"malformed_json": 1, "missing_text": 1}


def test_parquet_missing_column_is_a_clear_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(FalconError, match="no column 'text'"):
        read_all(tmp_path / "p.parquet")


def test_expand_inputs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/a.jsonl", "d/sub/b.warc.gz", "d/notes.txt", "c.parquet"):
        (tmp_path / name).write_bytes(b"")
    got = expand_inputs([str(tmp_path / "d"), str(tmp_path / "*.parquet"), str(tmp_path / "d" / "a.jsonl")])
    assert [p.relative_to(tmp_path).as_posix() for p in got] == ["c.parquet", "d/a.jsonl", "d/sub/b.warc.gz"]
    with pytest.raises(FalconError, match="does not exist"):
        expand_inputs([str(tmp_path / "nope.warc")])
    with pytest.raises(FalconError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.zzz")])
    with pytest.raises(FalconError, match="cannot tell the format"):
        expand_inputs([str(tmp_path / "d" / "notes.txt")])


def test_corrupt_gzip_member_in_the_middle_is_skipped(tmp_path):
    members = [gzip.compress(record(f"http://a.example/{i}", html_page("G", [f"page {i}"])), mtime=0) for i in range(4)]
    bad = bytearray(members[1])
    bad[20:40] = b"\x00" * 20  # damage the deflate stream of member 1
    path = tmp_path / "mid.warc.gz"
    path.write_bytes(members[0] + bytes(bad) + members[2] + members[3])
    docs, st = read_all(path)
    assert [d.url for d in docs] == ["http://a.example/0", "http://a.example/2", "http://a.example/3"]
    assert st.dropped["corrupt_compression"] >= 1


def test_slices_count_skipped_records_once(tmp_path):
    recs = [record(f"http://a.example/{i}", html_page("S", [f"page {i}"])) for i in range(4)]
    recs.insert(2, b"garbage line\r\n\r\n")
    path = write_warc(tmp_path / "s.warc.gz", recs)
    total = StepStats("read")
    for k in range(3):
        list(read_documents(path, ReaderOptions(slice_index=k, num_slices=3), total))
    assert total.dropped["malformed_record"] == 1 and total.docs_out == 4


def test_expand_inputs_skips_hidden_files_and_reads_corpus_text(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"text": "one"}\n')
    (tmp_path / "d" / ".a.jsonl.tmp-12").write_text("partial")  # an unfinished write
    (tmp_path / "d" / "._b.jsonl").write_text("sidecar")
    (tmp_path / "d" / "notes.txt").write_text("a whole\nfile")
    assert [p.name for p in expand_inputs([str(tmp_path / "d")])] == ["a.jsonl"]
    from falconlm.data.readers import CORPUS_SUFFIXES

    files = expand_inputs([str(tmp_path / "d")], suffixes=CORPUS_SUFFIXES)
    assert [p.name for p in files] == ["a.jsonl", "notes.txt"]
    docs, st = read_all(files[1])
    assert [(d.id, d.text) for d in docs] == [("notes.txt", "a whole\nfile")] and st.docs_out == 1
