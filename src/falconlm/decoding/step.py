"""The decode step: one new token per row through the model, from a preallocated KV cache.

Three ways to run the same step, chosen by `mode`:
- "eager": `model.hidden_states` over the filled part of the cache. The fastest on CPU, where
  attention then reads only the slots in use and the matmuls are oneDNN GEMVs.
- "static": `model.decode_hidden`: every shape fixed by the cache, the slot index and positions on
  the device, no host synchronisation. Gives the tokens of "eager".
- "graph": the static step captured once per batch size in a CUDA graph and replayed, so a decode
  step costs one launch instead of a few hundred (batch-1 decode on a GPU is launch-bound).
"auto" is "graph" on CUDA and "eager" elsewhere. A mode whose preconditions fail falls back to
"eager" (CUDA graphs need a CUDA device; the static step needs a RoPE that is not dynamic NTK),
except that a tensor-parallel model's "graph" runs "static" (its rank 0 announces each step to the others).
"""

from __future__ import annotations

from typing import Any

import torch

from falconlm.errors import FalconError
from falconlm.model.kv_cache import KVCache
from falconlm.model.paged_cache import PagedLayout

MODES = ("auto", "eager", "static", "graph")


def choose_mode(model: Any, mode: str = "auto") -> str:
    """The mode that will actually run for this model: the requested one where its preconditions hold, else eager."""
    if mode not in MODES:
        raise FalconError(f"decode step mode must be one of {', '.join(MODES)}, got {mode!r}")
    cuda = model.device.type == "cuda" and torch.cuda.is_available()
    if mode == "auto":
        mode = "graph" if cuda else "eager"
    if mode == "graph" and not cuda:
        mode = "eager"
    if mode == "graph" and getattr(model, "tp", None) is not None:
        mode = "static"  # a tensor-parallel rank 0 announces every step to the other ranks; a replayed graph would not

    if mode in ("static", "graph") and not model.has_static_decode:
        mode = "eager"
    return mode


def _warm_up(fn: Any) -> None:
    """Run fn twice on a side stream (allocator, cuBLAS workspaces), as CUDA graph capture requires."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)


def _capture(fn: Any, pool: Any) -> tuple[Any, torch.Tensor]:
    """Record fn's kernels in a CUDA graph; returns the graph and fn's output tensor, which each replay refills."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


class _CapturedStep:
    """One CUDA graph of the static step for one batch size over one cache's storage."""

    def __init__(self, model: Any, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor, pool: Any):
        self.tokens, self.positions, self.slot = tokens.clone(), positions.clone(), slot.clone()

        def step() -> torch.Tensor:
            return model.decode_hidden(self.tokens, self.positions, cache, self.slot)

        # The warm-up runs with this step's real inputs: its cache writes are the ones the step
        # makes anyway, so repeating them is harmless.
        _warm_up(step)
        self.graph, self.hidden = _capture(step, pool)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.positions.copy_(positions)
        self.slot.copy_(slot)
        self.graph.replay()
        return self.hidden


def _graph_pool() -> Any:
    """A memory pool the graphs of one step share (their buffers are never live at once)."""
    return torch.cuda.graph_pool_handle()


class DecodeStep:
    """Feeds one token per row, (B, 1) ids at (B, 1) positions, into the next cache slot; returns final hidden states (B, hidden)."""

    def __init__(self, model: Any, mode: str = "auto"):
        self.model = model
        self.mode = choose_mode(model, mode)
        self._graphs: dict[tuple[Any, ...], _CapturedStep] = {}
        self._pool: Any = None

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        if self.mode == "eager":
            return self.model.hidden_states(tokens, position_ids=positions, cache=cache)[:, -1]
        if cache.length >= cache.max_length:
            raise FalconError(f"KV cache is full: {cache.length} + 1 tokens exceed its {cache.max_length} slots")
        slot = torch.full((1,), cache.length, dtype=torch.long, device=tokens.device)
        cache.length += 1
        if self.mode == "static":
            return self.model.decode_hidden(tokens, positions, cache, slot)
        key = (tokens.shape[0], cache.keys.data_ptr(), tuple(cache.keys.shape), cache.valid.data_ptr())
        captured = self._graphs.get(key)
        if captured is None:
            if self._pool is None:
                self._pool = _graph_pool()
            captured = self._graphs[key] = _CapturedStep(self.model, cache, tokens, positions, slot, self._pool)
        return captured(tokens, positions, slot)


_LENGTH_BUCKET = 256  # graph-mode caches are allocated in steps of this many slots, so calls of similar length share graphs
_KEPT_SESSIONS = 4


def decode_session(model: Any, batch: int, length: int, mode: str = "auto") -> tuple[KVCache, DecodeStep]:
    """A fresh (empty) KV cache for `batch` rows of `length` tokens and the decode step to run over it.

    In graph mode the cache and its step (with the graphs it has captured) are kept on the model,
    per batch size and length bucket, and handed out again emptied: a later call of the same shape
    replays graphs already captured instead of capturing new ones. Elsewhere both are new.
    """
    step = DecodeStep(model, mode)
    if step.mode != "graph":
        return model.new_cache(batch, length), step
    slots = -(-length // _LENGTH_BUCKET) * _LENGTH_BUCKET
    sessions: dict[tuple[int, int], tuple[KVCache, DecodeStep]] = model.__dict__.setdefault("_decode_sessions", {})
    key = (batch, slots)
    if key not in sessions:
        if len(sessions) >= _KEPT_SESSIONS:
            sessions.pop(next(iter(sessions)))
        sessions[key] = (model.new_cache(batch, slots), step)
    cache, step = sessions.pop(key)
    sessions[key] = (cache, step)  # most recently used last
    cache.valid.zero_()
    cache.length = 0
    return cache, step


class PagedDecodeStep:
    """The engine's decode-only steps (one token per sequence) over the paged cache, with static shapes.

    Inputs are (B, 1) tokens and positions and (B, max_blocks) block tables, all on the device;
    the slots to write and the keys to read are derived from the tables inside the step, and
    attention spans every slot a table can address under a length mask. So nothing is read back
    to the host, and in "graph" mode the step is captured once per row count and replayed with
    the block tables as a graph input. Steps that prefill run eagerly (model.paged_hidden).
    """

    def __init__(self, model: Any, cache: Any, max_blocks: int, mode: str = "auto"):
        self.model, self.cache, self.mode = model, cache, choose_mode(model, mode)
        self.span = torch.arange(max_blocks * cache.block_size, device=model.device)
        self._graphs: dict[int, Any] = {}
        self._pool: Any = None

    def run(self, tokens: torch.Tensor, positions: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, hidden) of the step, run directly."""
        bs = self.cache.block_size
        pos = positions[:, 0]
        slots = tables.gather(1, (pos // bs)[:, None])[:, 0] * bs + pos % bs
        keys = tables[:, self.span // bs] * bs + self.span % bs
        lengths = pos + 1
        keys = torch.where(self.span[None, :] < lengths[:, None], keys, keys[:, :1])
        layout = PagedLayout(slots, keys, lengths)
        return self.model.paged_hidden(tokens.view(1, -1), positions.view(1, -1), self.cache, layout)[0]

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        if self.mode != "graph":
            return self.run(tokens, positions, tables)
        captured = self._graphs.get(tokens.shape[0])
        if captured is None:
            if self._pool is None:
                self._pool = _graph_pool()
            captured = self._graphs[tokens.shape[0]] = _CapturedPagedStep(self, tokens, positions, tables, self._pool)
        return captured(tokens, positions, tables)


class _CapturedPagedStep:
    """One CUDA graph of the paged decode step for one row count."""

    def __init__(self, step: PagedDecodeStep, tokens: torch.Tensor, positions: torch.Tensor, tables: torch.Tensor, pool: Any):
        self.inputs = (tokens.clone(), positions.clone(), tables.clone())

        def run() -> torch.Tensor:
            return step.run(*self.inputs)

        # The warm-up writes this step's real keys and values to the slots the step writes anyway.
        _warm_up(run)
        self.graph, self.hidden = _capture(run, pool)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        for buffer, value in zip(self.inputs, (tokens, positions, tables)):
            buffer.copy_(value)
        self.graph.replay()
        return self.hidden
