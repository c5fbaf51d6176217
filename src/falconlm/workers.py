"""Worker processes that die with their parent, quietly.

A pool's workers (refine's tasks, tokenize's encoders) are spawned processes. If the parent is
killed (kill -9, the OOM killer), Python's pools cannot clean up: the workers keep running and print
BrokenPipeError tracebacks when they report back, and multiprocessing's resource tracker warns about
"leaked semaphore objects". `die_with_parent` (called first in a worker's initializer) has the kernel
kill the worker with its parent; `quiet_resource_tracker` (called in the parent before its first
pool) keeps the tracker's warning about the dead parent's semaphores, which it then frees, unsaid.
"""

from __future__ import annotations

import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_TRACKER_FILTER = "ignore:resource_tracker:UserWarning"


def die_with_parent(parent_pid: int | None = None) -> None:
    """Have the kernel send this process SIGKILL when its parent exits (Linux); elsewhere do nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl (an unusual libc): workers then outlive a killed parent as before
        return
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def quiet_resource_tracker() -> None:
    """Start processes (the resource tracker first of all) with its "leaked semaphore" warning filtered out."""
    if _TRACKER_FILTER not in sys.warnoptions:
        # Child interpreters, the tracker included, get the parent's -W options (subprocess._args_from_interpreter_flags).
        sys.warnoptions.append(_TRACKER_FILTER)
