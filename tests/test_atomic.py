"""falconlm.atomic: a write is committed whole on success, leaves nothing on error, and what a killed
write left behind is found and removed."""

from __future__ import annotations

import json
import os

import pytest

from falconlm.atomic import (
    atomic_dir,
    atomic_open,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    commit,
    is_temp,
    remove_stale_temps,
    remove_stale_temps_tree,
    temp_path,
)


def test_temp_name_is_hidden_beside_the_target_and_recognised(tmp_path):
    tmp = temp_path(tmp_path / "shard.jsonl.zst")
    assert tmp.parent == tmp_path and tmp.name.startswith(".shard.jsonl.zst") and str(os.getpid()) in tmp.name
    assert is_temp(tmp) and not is_temp(tmp_path / "shard.jsonl.zst") and not is_temp(tmp_path / ".hidden")
    assert not tmp.name.endswith(".jsonl.zst")  # a reader's glob of real outputs never matches it


def test_writes_commit_on_success(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "héllo")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "c.json", {"k": "é", "n": [1, 2]})
    atomic_write(tmp_path / "d.txt", lambda tmp: tmp.write_text("via callback"))
    with atomic_open(tmp_path / "e.txt", "w", encoding="utf-8") as f:
        f.write("streamed ")
        f.write("lines")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.json").read_text(encoding="utf-8") == json.dumps({"k": "é", "n": [1, 2]}, indent=2, ensure_ascii=False) + "\n"
    assert (tmp_path / "d.txt").read_text() == "via callback"
    assert (tmp_path / "e.txt").read_text() == "streamed lines"
    assert not [p for p in tmp_path.iterdir() if is_temp(p)]


def test_a_rewrite_replaces_the_old_file_whole(tmp_path):
    target = tmp_path / "stats.json"
    atomic_write_text(target, "old")
    with atomic_open(target, "w") as f:
        f.write("new, half")
        assert target.read_text() == "old"  # until the commit a reader sees the old file
    assert target.read_text() == "new, half"


def test_error_removes_the_temp_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")

    def fail(tmp):
        tmp.write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(target, fail)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(target, "wb") as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(tmp_path / "new.txt", "w") as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with pytest.raises(ValueError, match="not a write mode"):
        with atomic_open(target, "r"):
            pass


def test_folder_commit(tmp_path):
    target = tmp_path / "checkpoint"
    with atomic_dir(target) as tmp:
        assert is_temp(tmp) and not target.exists()
        (tmp / "sub").mkdir()
        (tmp / "model.bin").write_bytes(b"weights")
        (tmp / "sub" / "meta.json").write_text("{}")
    assert (target / "model.bin").read_bytes() == b"weights" and (target / "sub" / "meta.json").read_text() == "{}"
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "failed") as tmp:
            (tmp / "x").write_text("partial")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    # commit() works on a folder made by hand too
    manual = tmp_path / ".manual.tmp-1"
    manual.mkdir()
    (manual / "f").write_text("x")
    commit(manual, tmp_path / "manual")
    assert (tmp_path / "manual" / "f").read_text() == "x" and not manual.exists()


def test_stale_temps_of_killed_writes_are_removed(tmp_path):
    (tmp_path / "keep.json").write_text("{}")
    (tmp_path / ".hidden-but-final").write_text("not a temp")
    (tmp_path / ".part.jsonl.zst.tmp-999").write_bytes(b"partial")  # a killed writer's file
    (tmp_path / ".ckpt.tmp-999").mkdir()  # a killed writer's folder
    (tmp_path / ".ckpt.tmp-999" / "model.bin").write_bytes(b"half")
    deep = tmp_path / "markers" / "stage"
    deep.mkdir(parents=True)
    (deep / ".t1.json.tmp-4242").write_text("{")
    (deep / "t0.json").write_text("{}")
    assert remove_stale_temps(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden-but-final", "keep.json", "markers"]
    assert remove_stale_temps_tree(tmp_path) == 1
    assert [p.name for p in deep.iterdir()] == ["t0.json"]
    assert remove_stale_temps(tmp_path / "missing") == 0 and remove_stale_temps_tree(tmp_path) == 0
