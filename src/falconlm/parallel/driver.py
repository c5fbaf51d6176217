"""Rank 0 drives, the other ranks follow: each call that runs collectives is announced to them first.

Only rank 0 runs the caller's code (a CLI command, the server's engine). Every model call it makes
that has collectives inside (a forward, a pick across vocabulary shards) is broadcast as a message
(op name and arguments) over a CPU (gloo) group, and the followers run the same op on their
shards, so all ranks enter the same collectives in the same order. Calls without collectives that
change state the followers mirror (a new KV cache, a block copied inside a paged one) are queued and ride
along with the next message. When rank 0 has sent nothing for `ping_interval` seconds it sends a
ping, so an idle server's followers never reach the process group's timeout. `close` sends "stop".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from falconlm.errors import FalconError

log = logging.getLogger("falconlm.parallel")

STOP, PING = "stop", "ping"
# What a follower may see fail exactly as rank 0 does (a full cache, a bad shape): it carries on, as rank 0 does.
ERRORS_RANK0_SEES_TOO = (FalconError, ValueError)


class RankFailed(FalconError):
    """A collective with the other ranks failed: one of them is gone."""


class Driver:
    """Rank 0's side: `call` announces an op and runs it here; `record` queues a state change for the followers."""

    def __init__(self, handlers: dict[str, Callable[..., Any]], encode: Callable[[Any], Any], group: Any = None,
                 ping_interval: float = 30.0, on_failure: Callable[[], None] | None = None):
        self.handlers, self.encode, self.group = handlers, encode, group
        self.on_failure = on_failure
        self.broken: str | None = None
        self._pending: list[tuple[str, Any]] = []
        self._lock = threading.RLock()
        self._depth = 0
        self._sent = time.monotonic()
        self._closed = threading.Event()
        self._pinger = threading.Thread(target=self._ping, args=(ping_interval,), name="falconlm-tp-ping", daemon=True)
        self._pinger.start()

    def record(self, op: str, *args: Any) -> None:
        """Queue an op without collectives; the followers run it before the next announced op."""
        item = (op, self.encode(args))
        with self._lock:  # the engine thread, the pinger and garbage-collection finalizers all record or send
            self._pending.append(item)

    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """Announce `op` (unless this thread is already inside an announced op), then run it on this rank."""
        with self._lock:  # only the thread holding the lock reads or writes _depth
            if self._depth:  # nested: the followers run it as part of the outer op
                return self.handlers[op](*args, **kwargs)
            self._send(op, self.encode(args), self.encode(kwargs))
            self._depth = 1
            try:
                return self._run(self.handlers[op], args, kwargs)
            finally:
                self._depth = 0

    def _run(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        try:
            with torch.inference_mode():  # as on the followers: tensor parallelism here is inference only
                return fn(*args, **kwargs)
        except RuntimeError as exc:
            if not is_comm_failure(exc):
                raise
            self._fail(exc)
            raise RankFailed(f"a tensor-parallel rank stopped answering ({exc})") from None

    def _send(self, op: str, args: Any, kwargs: Any) -> None:
        if self.broken:
            raise RankFailed(f"tensor parallelism is down: {self.broken}")
        message, self._pending = [(self._pending, op, args, kwargs)], []
        try:
            dist.broadcast_object_list(message, src=_global(self.group, 0), group=self.group)
        except RuntimeError as exc:  # broadcasts fail only when a peer is gone
            self._fail(exc)
            raise RankFailed(f"a tensor-parallel rank stopped answering ({exc})") from None
        self._sent = time.monotonic()

    def _fail(self, exc: BaseException) -> None:
        if self.broken is None:
            self.broken = str(exc)
            log.error("tensor-parallel rank failed: %s", exc)
            if self.on_failure is not None:
                self.on_failure()

    def _ping(self, interval: float) -> None:
        while not self._closed.wait(min(interval, 1.0)):
            if time.monotonic() - self._sent >= interval and self.broken is None:
                try:
                    self.call(PING)
                except FalconError:
                    return

    def close(self) -> None:
        """Tell the followers to stop (once; quietly when they are already gone)."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            if self.broken is None:
                try:
                    self._send(STOP, (), {})
                except FalconError:
                    pass
        self._pinger.join(timeout=5)


def follow(handlers: dict[str, Callable[..., Any]], decode: Callable[[Any], Any], group: Any = None) -> None:
    """A follower's loop: run every op rank 0 announces (and the queued state changes before it) until "stop"."""
    src = _global(group, 0)
    while True:
        message: list[Any] = [None]
        dist.broadcast_object_list(message, src=src, group=group)
        pending, op, args, kwargs = message[0]
        for queued, queued_args in pending:
            handlers[queued](*decode(queued_args))
        if op == STOP:
            return
        try:
            handlers[op](*decode(args), **decode(kwargs))
        except ERRORS_RANK0_SEES_TOO as exc:
            log.debug("op %s failed here as on rank 0: %s", op, exc)


def is_comm_failure(exc: BaseException) -> bool:
    """Whether an error comes from a collective whose peer is gone (gloo: a closed connection, NCCL: an aborted communicator)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return any(s in text for s in ("Connection closed", "Connection reset", "gloo", "NCCL"))


def _global(group: Any, rank: int) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)
