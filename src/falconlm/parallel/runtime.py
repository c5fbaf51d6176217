"""One rank's side of a tensor-parallel model: the ops every rank runs, and how rank 0's model announces them.

`Rank` holds the ops (forward, the decode steps, the picks across vocabulary shards, KV caches by
handle). On rank 0, `Rank.drive` points the model's own methods at the Driver, so every caller
(generate, the engine, evaluation) uses the model as it would a whole one; the other ranks `follow`.
"""

from __future__ import annotations

import dataclasses
import itertools
import signal
import threading
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from falconlm.decoding.head_screen import screen_for
from falconlm.decoding.sampling import TokenPicker
from falconlm.decoding.settings import GenerationConfig
from falconlm.errors import FalconError
from falconlm.model.falcon import FalconForCausalLM
from falconlm.model.kv_cache import KVCache
from falconlm.model.paged_cache import PagedKVCache
from falconlm.parallel.driver import PING, Driver, follow
from falconlm.parallel.layers import gather_argmax, gather_vocab
from falconlm.parallel.plan import ShardPlan

class CacheRef(NamedTuple):
    """A KV cache (contiguous or paged) named across ranks: its handle and, for a contiguous one, its fill pointer."""

    handle: int
    length: int


class MirroredCache(KVCache):
    """Rank 0's contiguous KV cache (its own KV heads); the followers hold theirs under the same handle."""

    handle: int


class MirroredPagedCache(PagedKVCache):
    """Rank 0's paged KV pool (its own KV heads); a block copy is queued for the followers' pools."""

    handle: int
    driver: Driver

    def copy_block(self, source: int, dest: int) -> None:
        super().copy_block(source, dest)
        self.driver.record("copy_block", self.handle, source, dest)


class Rank:
    """This rank's shard of the model and the ops all ranks run together."""

    def __init__(self, model: FalconForCausalLM, plan: ShardPlan, group: Any = None, control: Any = None):
        self.model, self.plan, self.group, self.control = model, plan, group, control
        self.rank, self.world = plan.rank, plan.world
        self.driver: Driver | None = None
        self.caches: dict[int, KVCache | PagedKVCache] = {}  # a follower's caches, by rank 0's handles
        self._handles = itertools.count()
        self.handlers: dict[str, Callable[..., Any]] = {
            "forward": self.forward, "hidden_states": self.hidden_states, "decode_hidden": self.decode_hidden,
            "paged_hidden": self.paged_hidden, "logits": self.logits, "argmax": self.argmax,
            "new_cache": self._new_cache, "new_paged_cache": self._new_paged_cache, "copy_block": self._copy_block,
            "release": lambda handle: self.caches.pop(handle, None), PING: lambda: None,
        }

    # ----- the ops (the same on every rank; the model's class methods, not rank 0's announcing ones) -----
    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor | None:
        """Full logits on rank 0 (None on the others): each rank's vocabulary slice, gathered."""
        local = FalconForCausalLM.forward(self.model, *args, **kwargs)
        return gather_vocab(local, self.plan.vocab_per_rank, self.plan.config.vocab_size, self.group)

    def hidden_states(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """FalconForCausalLM.hidden_states on this rank's shard (the result is the same on every rank)."""
        return FalconForCausalLM.hidden_states(self.model, *args, **kwargs)

    def decode_hidden(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """FalconForCausalLM.decode_hidden on this rank's shard."""
        return FalconForCausalLM.decode_hidden(self.model, *args, **kwargs)

    def paged_hidden(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """FalconForCausalLM.paged_hidden on this rank's shard (each rank's pool holds its own KV heads)."""
        return FalconForCausalLM.paged_hidden(self.model, *args, **kwargs)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Full fp32 logits (B, vocab) of final hidden states on rank 0, None on the others."""
        local = self.model.lm_head(hidden).float()
        return gather_vocab(local, self.plan.vocab_per_rank, self.plan.config.vocab_size, self.group)

    def argmax(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Greedy tokens (B,) on rank 0 without gathering logits: each rank's best (value, id) is gathered instead."""
        weight = self.model.lm_head.weight
        start = self.plan.vocab.start
        if weight.shape[0] == 0:  # a rank past the end of a tiny vocabulary
            values = torch.full((hidden.shape[0],), float("-inf"), device=hidden.device)
            ids = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)
            return gather_argmax(values, ids, self.group)
        screen = screen_for(self.model)  # the exact int8 screen of this rank's rows, where it applies
        ids = screen.argmax(hidden) if screen is not None else None
        if ids is None:
            values, ids = self.model.lm_head(hidden).float().max(dim=-1)
        else:
            values = torch.cat([F.linear(hidden[i : i + 1], weight[j : j + 1]).float()[0] for i, j in enumerate(ids.tolist())])
        return gather_argmax(values, ids + start, self.group)

    def _new_cache(self, handle: int, batch: int, length: int) -> None:
        self.caches[handle] = FalconForCausalLM.new_cache(self.model, batch, length)

    def _new_paged_cache(self, handle: int, num_blocks: int, block_size: int) -> None:
        self.caches[handle] = FalconForCausalLM.new_paged_cache(self.model, num_blocks, block_size)

    def _copy_block(self, handle: int, source: int, dest: int) -> None:
        self.caches[handle].copy_block(source, dest)

    # ----- rank 0 -----
    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """Run an op on every rank (announced by rank 0); the ranks' results, as rank 0 sees them."""
        if self.driver is None:
            raise FalconError("only rank 0 starts tensor-parallel ops; the other ranks follow it")
        return self.driver.call(op, *args, **kwargs)

    def new_cache(self, batch: int, length: int) -> MirroredCache:
        """A KV cache of this rank's KV heads, created on every rank under one handle."""
        base = FalconForCausalLM.new_cache(self.model, batch, length)
        cache = MirroredCache.__new__(MirroredCache)
        cache.__dict__.update(vars(base))
        cache.handle = next(self._handles)
        self.driver.record("new_cache", cache.handle, batch, length)
        weakref.finalize(cache, self.driver.record, "release", cache.handle)
        return cache

    def new_paged_cache(self, num_blocks: int, block_size: int) -> MirroredPagedCache:
        """A paged KV pool of this rank's KV heads, created on every rank under one handle."""
        base = FalconForCausalLM.new_paged_cache(self.model, num_blocks, block_size)
        cache = MirroredPagedCache.__new__(MirroredPagedCache)
        cache.__dict__.update(vars(base))
        cache.handle, cache.driver = next(self._handles), self.driver
        self.driver.record("new_paged_cache", cache.handle, num_blocks, block_size)
        weakref.finalize(cache, self.driver.record, "release", cache.handle)
        return cache

    def drive(self, on_failure: Callable[[], None] | None = None, ping_interval: float = 30.0) -> Driver:
        """Make rank 0's model announce every op to the followers; the model is then used as a whole one."""
        self.driver = Driver(self.handlers, self.encode, self.control, ping_interval=ping_interval, on_failure=on_failure)
        m = self.model
        for op in ("forward", "hidden_states", "decode_hidden", "paged_hidden"):
            setattr(m, op, _announcing(self.driver, op))
        m.new_cache = self.new_cache
        m.new_paged_cache = self.new_paged_cache
        m.make_picker = lambda: ParallelPicker(m, self)
        return self.driver

    def follow(self) -> None:
        """A follower: run rank 0's ops until it stops."""
        # Ctrl-C reaches every rank of a terminal's torchrun; rank 0 decides what it means and then says stop.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            with torch.inference_mode():
                follow(self.handlers, self.decode, self.control)
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
            self.caches.clear()

    # ----- messages -----
    def encode(self, value: Any) -> Any:
        """What rank 0 sends for an argument: tensors on the CPU, KV caches by reference."""
        if isinstance(value, torch.Tensor):
            return value.detach().cpu()
        if isinstance(value, (KVCache, PagedKVCache)):
            if not isinstance(value, (MirroredCache, MirroredPagedCache)):
                raise FalconError("under tensor parallelism a KV cache must come from model.new_cache or model.new_paged_cache (each rank holds its own part)")
            return CacheRef(value.handle, getattr(value, "length", 0))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a step's PagedLayout
            return dataclasses.replace(value, **{f.name: self.encode(getattr(value, f.name)) for f in dataclasses.fields(value)})
        if isinstance(value, (list, tuple)) and not isinstance(value, CacheRef):
            return type(value)(self.encode(v) for v in value)
        if isinstance(value, dict):
            return {k: self.encode(v) for k, v in value.items()}
        return value

    def decode(self, value: Any) -> Any:
        """A follower's argument from rank 0's message: tensors on this rank's device, this rank's caches."""
        if isinstance(value, torch.Tensor):
            return value.to(self.model.device)
        if isinstance(value, CacheRef):
            cache = self.caches[value.handle]
            if isinstance(cache, KVCache):
                cache.length = value.length
            return cache
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.replace(value, **{f.name: self.decode(getattr(value, f.name)) for f in dataclasses.fields(value)})
        if isinstance(value, (list, tuple)):
            return type(value)(self.decode(v) for v in value)
        if isinstance(value, dict):
            return {k: self.decode(v) for k, v in value.items()}
        return value


def _announcing(driver: Driver, op: str) -> Callable[..., Any]:
    def method(*args: Any, **kwargs: Any) -> Any:
        return driver.call(op, *args, **kwargs)

    method.__name__ = op
    method.__doc__ = getattr(FalconForCausalLM, op).__doc__
    return method


class ParallelPicker(TokenPicker):
    """TokenPicker over vocabulary shards: greedy rows by a gathered argmax (exact, B x 2 numbers per rank), the rest from gathered logits."""

    def __init__(self, model: FalconForCausalLM, rank: Rank):
        super().__init__(model)
        self.rank = rank

    @property
    def screen(self) -> "ParallelPicker":
        """The greedy fast path: the argmax across ranks (each rank screens its own rows), which never gives up."""
        return self

    def screens(self, cfg: GenerationConfig) -> bool:
        """Plain greedy rows take the gathered argmax (unless the screen is turned off: then full logits, as in one process)."""
        return cfg.screen_head and not cfg.needs_full_logits

    def argmax(self, hidden: torch.Tensor) -> torch.Tensor:
        """Greedy tokens (B,) of final hidden states, reduced across the vocabulary shards."""
        return self.rank.call("argmax", hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full fp32 logits (B, vocab), gathered from every rank's rows."""
        return self.rank.call("logits", hidden)


def resident_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the storages behind a model's parameters and buffers, each counted once: what the rank really holds."""
    seen: dict[int, int] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())

