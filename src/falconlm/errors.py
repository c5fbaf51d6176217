"""The one exception type users see: a clear sentence, never a traceback.

`user_message` is the one place where a failure that is not a FalconError but has a known cause a
user can act on (a full disk, an output path that is a file, a process group torchrun did not set up)
becomes such a sentence; `falconlm.cli` prints it. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os

# OSError numbers that mean "the disk cannot take more", whoever raised them.
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
# What libraries that hide the OSError put in their message when a write hit a full disk.
_FULL_TEXT = ("no space left on device", "disk quota exceeded", "file too large")


class FalconError(Exception):
    """A user-facing error whose message names the problem in one sentence."""


class CorruptInputError(FalconError):
    """An input file whose bytes cannot be decoded (a damaged or truncated compressed stream, not the format its name says)."""


def _where(exc: BaseException) -> str:
    name = getattr(exc, "filename", None)
    return f" writing {name}" if name else ""


def _free_space_note(path: str | None) -> str:
    """' (N MB free on PATH)' for the folder of `path`, or '' when it cannot be told."""
    import shutil

    folder = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" ({free / 1e6:,.0f} MB free in {folder})"


def disk_full_message(path: str | os.PathLike | None = None) -> str:
    """The sentence for a write that ran out of disk space."""
    if not path:  # free space of an unknown folder would mislead
        return "the disk is full; free some space or choose another --out, then rerun"
    return f"the disk is full writing {path}{_free_space_note(str(path))}; free some space or choose another --out, then rerun"


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (an OSError, or a library error wrapping one: safetensors, torch.save) reports a full disk."""
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    text = str(exc).lower()
    if "enforce fail at inline_container" in text:  # torch.save's writer hides the errno; check the disk itself
        return True
    return any(t in text for t in _FULL_TEXT) or any(is_disk_full(e) for e in (exc.__cause__, exc.__context__) if e is not None and e is not exc)


def user_message(exc: BaseException) -> str | None:
    """A one-sentence explanation of a failure with a known cause the user can fix, or None (a bug: keep the traceback)."""
    if isinstance(exc, FalconError):
        return str(exc)
    if is_disk_full(exc):
        return disk_full_message(getattr(exc, "filename", None))
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and getattr(exc, "filename", None):
        # mkdir of an output directory (or of a folder inside it) whose name is taken by a file
        name = exc.filename
        culprit = next((p for p in _parents(name) if os.path.isfile(p)), name)
        return f"{culprit} is a file, not a directory; choose another output path or remove the file"
    if isinstance(exc, PermissionError):
        return f"permission denied{_where(exc)}; choose a path you can write to"
    if isinstance(exc, ValueError) and "environment variable RANK expected" in str(exc):
        return "this strategy runs several processes: launch it with torchrun (e.g. torchrun --nproc-per-node 2 -m falconlm ...), or use --strategy single"
    return None


def _parents(path: str) -> list[str]:
    """`path` and the folders above it, nearest first."""
    out, p = [], os.path.abspath(path)
    while p and p != os.path.dirname(p):
        out.append(p)
        p = os.path.dirname(p)
    return out
