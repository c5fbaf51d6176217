"""Write files so a reader never sees half of one: write a temp name in the same folder, then rename.

Every output of the project goes through here. The temp name is `.<name>.tmp-<pid>` beside the
target (hidden, and never matched by a reader's glob of real outputs); `commit` fsyncs the data,
renames it onto the target and fsyncs the folder, so after a crash or power loss the target is
either the old file or the whole new one. Directories (a training checkpoint) are committed the
same way: their files are fsynced, then the folder is renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

TEMP_MARK = ".tmp-"


def temp_path(path: str | os.PathLike) -> Path:
    """The temp name a write of `path` uses until it is committed."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def is_temp(path: str | os.PathLike) -> bool:
    """Whether `path` is a temp name left by an unfinished write."""
    name = Path(path).name
    return name.startswith(".") and TEMP_MARK in name


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete the temp files and folders that killed writes left in `folder`; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.iterdir():
        if is_temp(p):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            removed += 1
    return removed


def remove_stale_temps_tree(root: str | os.PathLike) -> int:
    """`remove_stale_temps` in `root` and every folder below it (a resumed run's whole directory)."""
    removed = 0
    for folder, dirs, _files in os.walk(root):
        removed += remove_stale_temps(folder)
        dirs[:] = [d for d in dirs if not is_temp(d)]  # removed just now; nothing to walk into
    return removed


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # a folder that cannot be opened (some platforms): the rename still happens
        return
    try:
        os.fsync(fd)
    except OSError:  # filesystems without fsync on folders
        pass
    finally:
        os.close(fd)


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """fsync `tmp` (a file, or a folder and every file in it), rename it onto `path`, fsync the parent folder."""
    tmp, path = Path(tmp), Path(path)
    if tmp.is_dir():
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                _fsync_path(Path(root) / name)
    _fsync_path(tmp)
    os.replace(tmp, path)
    _fsync_path(path.parent)
    return path


def _discard(tmp: Path) -> None:
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call write(tmp_path), then commit the temp file onto `path`; the temp file never survives a failure."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        commit(tmp, path)
    finally:
        if tmp.exists():
            _discard(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write a binary file atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write JSON (UTF-8, a trailing newline) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temp file for streaming writes; on a clean exit it is committed onto `path`, on an error removed."""
    if not mode.startswith(("w", "x")):
        raise ValueError(f"atomic_open writes a new file; mode {mode!r} is not a write mode")
    path = Path(path)
    tmp = temp_path(path)
    f = open(tmp, mode.replace("x", "w"), **kwargs)
    try:
        yield f
        f.flush()
        f.close()
        commit(tmp, path)
    finally:
        if not f.closed:
            f.close()
        if tmp.exists():
            _discard(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A temp folder to fill; on a clean exit it is committed onto `path` (which must not exist), on an error removed."""
    path = Path(path)
    tmp = temp_path(path)
    _discard(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        commit(tmp, path)
    finally:
        if tmp.exists():
            _discard(tmp)


@contextlib.contextmanager
def output_dir(path: str | os.PathLike) -> Iterator[Path]:
    """`path` as a directory (made if missing); if the block fails and this call made it, it is removed again.

    So a run refused during setup (bad settings, unusable input, a full disk) leaves no half-made
    output directory; an interrupted run (KeyboardInterrupt) keeps what it saved.
    """
    path = Path(path)
    made = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except Exception:
        if made:
            shutil.rmtree(path, ignore_errors=True)
        raise
