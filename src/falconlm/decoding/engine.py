"""Continuous batching over a paged KV cache: one engine thread owns the model, the block pool and the schedule.

Each step the engine (1) drops cancelled sequences and returns their blocks, (2) schedules a token
budget (`max_num_batched_tokens`) first come, first served: one token for every decoding sequence,
then chunks of prompts being prefilled, then new requests, each of which first takes the cached
blocks of its longest cached prefix and computes only the rest, (3) runs every scheduled token of
every sequence in one packed forward pass (model/paged_cache.py), and (4) picks the next token of
each sequence whose tokens are all computed, with the picking and detokenizing `generate` uses,
each sequence's own GenerationConfig and seeded generator. A sequence's tokens are therefore the
tokens it would get alone, whatever it is batched with and however its prompt is chunked.

Memory is a pool of fixed-size blocks (decoding/blocks.py): a sequence holds only the blocks its
tokens fill. When the pool runs out, the most recently admitted sequence is preempted (its blocks
released, its tokens recomputed when it is admitted again). The n choices of one request prefill
the prompt once and fork: they share its blocks, and a shared block is copied when first written.

Requests talk to the engine through `Sequence` objects; events reach the asyncio side through
`loop.call_soon_threadsafe`, so HTTP handlers never block on the model.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from falconlm.decoding.detokenizer import Detokenizer, text_decoder
from falconlm.decoding.sampling import greedy_tokens, next_tokens, picker_for, row_generator
from falconlm.decoding.settings import GenerationConfig
from falconlm.decoding.blocks import ROOT, BlockPool
from falconlm.decoding.step import PagedDecodeStep
from falconlm.errors import FalconError
from falconlm.memory import available_bytes
from falconlm.model.falcon import FalconForCausalLM
from falconlm.model.paged_cache import PagedKVCache, PagedLayout, blocks_for

log = logging.getLogger("falconlm.serve")

DEFAULT_BATCHED_TOKENS = 256  # tokens per step: a longer prompt is prefilled over several steps, between decode steps
DEFAULT_POOL_SHARE = 0.3  # of the memory left on the device, when --kv-cache-memory is not given


def pool_blocks(model: FalconForCausalLM, block_size: int, max_batch_size: int, max_length: int, memory_gb: float | None = None) -> int:
    """Blocks in the KV pool: `memory_gb` worth, or by default room for every row at full length twice over (prefixes stay cached), within a share of free memory."""
    per = PagedKVCache.bytes_per_block(model.config, block_size, model.dtype)
    if memory_gb is not None:
        if memory_gb <= 0:
            raise FalconError(f"--kv-cache-memory must be > 0 GB, got {memory_gb}")
        return max(1, int(memory_gb * 2**30 // per))
    wanted = 2 * max_batch_size * blocks_for(max_length, block_size)
    free = available_bytes(str(model.device))
    if free is not None:
        wanted = min(wanted, max(blocks_for(max_length, block_size), int(free[0] * DEFAULT_POOL_SHARE // per)))
    return wanted


class QueueFull(Exception):
    """The waiting queue is at its bound; the caller answers 503."""


@dataclass
class TokenInfo:
    """One generated token with its log-probability and the top alternatives (log_softmax of the raw logits)."""

    id: int
    text: str
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Event:
    """What the engine reports after a step: new tokens, visible text, and the finish reason at the end."""

    tokens: list[TokenInfo]
    text: str
    finish_reason: str | None = None
    error: str | None = None
    prompt_logprobs: list[TokenInfo] | None = None


class Sequence:
    """One request's state: prompt, settings, generated tokens, its row, and its event sink."""

    def __init__(
        self,
        prompt_ids: list[int],
        params: GenerationConfig,
        loop: asyncio.AbstractEventLoop | None = None,
        queue: "asyncio.Queue[tuple[int, Event]] | None" = None,
        index: int = 0,
        sample: int = 0,
    ):
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.loop = loop
        self.index = index  # which choice of the response this is; events go to the queue as (index, event)
        self.sample = sample  # which sample of its prompt this is: it draws with seed + sample
        self.queue = queue if queue is not None else (asyncio.Queue() if loop is not None else None)
        self.events: list[Event] = []  # when there is no loop (direct use from threads/tests)
        self.done = threading.Event()
        self.cancelled = False
        self.generated: list[int] = []
        self.finish_reason: str | None = None
        self.cfg: GenerationConfig | None = None
        self.detokenizer: Detokenizer | None = None
        self.generator: torch.Generator | None = None
        self.seen: torch.Tensor | None = None
        self.ids = list(prompt_ids)  # prompt + generated: what the sequence's KV blocks are filled from
        self.computed = 0  # tokens of `ids` whose keys and values are in the cache
        self.table: list[int] = []  # its KV blocks, in order
        self.chain: list[int] = []  # content ids of its full blocks (the prefix cache's keys)
        self.siblings: list[Sequence] = []  # the other choices of its request, which fork from it once the prompt is computed
        self.prompt_lp: list[TokenInfo] | None = None
        self.submitted = time.perf_counter()
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.outbox: list[Sequence] | None = None  # set by the engine while it steps
        self.pending: list[tuple[int, Event]] = []

    @property
    def prompt_tokens(self) -> int:
        """Number of prompt tokens."""
        return len(self.prompt_ids)

    @property
    def remaining(self) -> int:
        """Tokens still to generate (each needs one decode step and one cache slot)."""
        return self.params.max_new_tokens - len(self.generated)

    def _emit(self, event: Event) -> None:
        if event.finish_reason is not None or event.error is not None:
            self.done.set()
        if self.loop is None:
            self.events.append(event)
        elif self.outbox is not None:  # inside an engine step: delivered with the step's other events
            self.outbox.append(self)
            self.pending.append((self.index, event))
        else:
            self.deliver([(self.index, event)])

    def deliver(self, items: list[tuple[int, Event]]) -> None:
        """Hand events to the request's event loop (one wake-up for all of them)."""
        try:
            self.loop.call_soon_threadsafe(_put_all, self.queue, items)
        except RuntimeError:  # the loop is gone (client and server shut down)
            self.cancelled = True


def _put_all(queue: "asyncio.Queue[tuple[int, Event]]", items: list[tuple[int, Event]]) -> None:
    for item in items:
        queue.put_nowait(item)


def _put_many(batch: list[tuple["asyncio.Queue[tuple[int, Event]]", list[tuple[int, Event]]]]) -> None:
    for queue, items in batch:
        _put_all(queue, items)


class Engine:
    """The batching engine; `submit` a Sequence, read its events, `cancel` it when the client leaves."""

    def __init__(
        self,
        model: FalconForCausalLM,
        tokenizer: Any,
        max_batch_size: int = 8,
        max_queue: int = 64,
        max_length: int | None = None,
        start: bool = True,
        step_mode: str = "auto",
        block_size: int = 16,
        kv_cache_memory: float | None = None,
        num_blocks: int | None = None,
        max_num_batched_tokens: int | None = None,
        prefix_caching: bool = True,
        observer: Any = None,
    ):
        if max_batch_size < 1:
            raise FalconError(f"--max-batch-size must be >= 1, got {max_batch_size}")
        if max_queue < 1:
            raise FalconError(f"--max-queue must be >= 1, got {max_queue}")
        if block_size < 1:
            raise FalconError(f"--block-size must be >= 1, got {block_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_length = max_length or model.config.max_position_embeddings
        budget = max_num_batched_tokens or max(DEFAULT_BATCHED_TOKENS, max_batch_size)
        if budget < max_batch_size:
            raise FalconError(f"--max-num-batched-tokens ({budget}) must be at least --max-batch-size ({max_batch_size}): every decoding row takes one token per step")
        self.max_num_batched_tokens = budget
        # Dynamic NTK RoPE rotates a prompt by its own length: a prompt is then prefilled whole, never in chunks.
        self.chunked_prefill = model.has_static_decode
        eos = model.config.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.block_size = block_size
        blocks = num_blocks or pool_blocks(model, block_size, max_batch_size, self.max_length, kv_cache_memory)
        if blocks_for(self.max_length, block_size) > blocks:
            per = PagedKVCache.bytes_per_block(model.config, block_size, model.dtype) / 2**30
            raise FalconError(
                f"the KV cache pool ({blocks} blocks of {block_size} tokens, {blocks * per:.3g} GB) cannot hold one request of "
                f"{self.max_length} tokens; raise --kv-cache-memory to at least {blocks_for(self.max_length, block_size) * per:.3g} or lower --max-length"
            )
        self.cache = model.new_paged_cache(blocks, block_size)
        self.pool = BlockPool(blocks, block_size, prefix_caching)
        self.observer = observer  # receives first-token and inter-token latencies and step times (the server's /metrics)
        self.picker = picker_for(model)
        self.max_blocks = blocks_for(self.max_length, block_size)
        # Decode-only steps with static shapes (a CUDA graph per row count on a GPU); eager steps read only the slots in use, faster on the CPU.
        step = PagedDecodeStep(model, self.cache, self.max_blocks, step_mode)
        self.step_mode = step.mode
        self.decode_step = step if step.mode != "eager" else None
        self.decode = text_decoder(tokenizer)
        self.active: list[Sequence] = []  # admitted sequences, oldest first (prefilling or decoding)
        self.waiting: deque[Sequence] = deque()  # each with the siblings that will fork from it
        self.cond = threading.Condition()
        self.stopped = False
        self.stats = {
            "steps": 0, "max_active": 0, "admitted": 0, "finished": 0, "cancelled": 0, "preempted": 0,
            "prompt_tokens": 0, "cached_tokens": 0, "computed_tokens": 0, "generated_tokens": 0, "forks": 0,
        }
        self.thread = threading.Thread(target=self.run, name="falconlm-engine", daemon=True)
        if start:  # start=False: the caller drives `step()` (tests: deterministic interleavings) or `run()` itself
            self.thread.start()

    # ----- the public side (called from the HTTP event loop) -----
    def submit(self, seqs: list[Sequence]) -> None:
        """Queue sequences (all or none); raises QueueFull when they do not fit in the waiting queue.

        Consecutive sequences of one prompt and one settings object (the n choices of a request)
        are prefilled once: the first computes the prompt and the others fork from its blocks.
        """
        for s in seqs:
            if not s.prompt_ids or s.prompt_tokens + s.params.max_new_tokens > self.max_length:
                raise FalconError(f"prompt ({s.prompt_tokens} tokens) + max_tokens ({s.params.max_new_tokens}) must be 1..{self.max_length} tokens")
        leaders: list[Sequence] = []
        for s in seqs:
            head = leaders[-1] if leaders else None
            if head is not None and s.params is head.params and s.prompt_ids == head.prompt_ids and len(head.siblings) + 2 <= self.max_batch_size:
                head.siblings.append(s)
            else:
                leaders.append(s)
        with self.cond:
            if self.stopped:
                raise FalconError("the engine is shut down")
            if self.queued() + len(seqs) > self.max_queue:
                raise QueueFull(f"the server queue is full ({self.max_queue} waiting requests); retry shortly")
            self.waiting.extend(leaders)
            self.cond.notify()

    def queued(self) -> int:
        """Sequences waiting for admission (siblings included)."""
        return sum(1 + len(s.siblings) for s in self.waiting)

    def cancel(self, seq: Sequence) -> None:
        """Stop a sequence (client gone); its blocks are freed before the next step."""
        if not seq.done.is_set():
            seq.cancelled = True
            with self.cond:
                if seq in self.waiting:  # still waiting: leave the queue now, so it stops counting against --max-queue
                    self._drop_waiting(seq)
                self.cond.notify()

    def load(self) -> dict[str, Any]:
        """Running and waiting requests and the KV pool, for /health and /metrics."""
        return {
            "active": len(self.active), "waiting": self.queued(), "max_batch_size": self.max_batch_size, "max_queue": self.max_queue,
            "kv_blocks_total": self.pool.num_blocks, "kv_blocks_free": self.pool.num_free, "kv_blocks_cached": len(self.pool.cached),
            "block_size": self.block_size, "prefix_hit_rate": round(self.prefix_hit_rate, 4),
        }

    @property
    def prefix_hit_rate(self) -> float:
        """Share of admitted prompt tokens whose keys and values came from the prefix cache."""
        return self.stats["cached_tokens"] / self.stats["prompt_tokens"] if self.stats["prompt_tokens"] else 0.0

    def close(self) -> None:
        """Stop the engine thread; pending sequences end with an error event."""
        with self.cond:
            self.stopped = True
            self.cond.notify()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        else:  # run() in the caller's thread was interrupted (Ctrl-C), or never ran: end what is pending
            self._fail_all("the server is shutting down")

    # ----- the engine loop -----
    def run(self, should_stop: Callable[[], bool] | None = None) -> None:
        """Step while there is work, until `close()` (or until `should_stop()`, checked twice a second when idle)."""
        torch.set_grad_enabled(False)
        while True:
            with self.cond:
                while not self.stopped and not self.active and not self.waiting:
                    if should_stop is not None and should_stop():
                        self.stopped = True
                        break
                    self.cond.wait(timeout=None if should_stop is None else 0.5)
                if self.stopped:
                    break
            try:
                self.step()
            except Exception as exc:  # never let one bad step kill the server: fail the batch, keep serving
                log.exception("engine step failed")
                self._fail_all(f"internal error: {exc}")
        self._fail_all("the server is shutting down")

    def _fail_all(self, message: str) -> None:
        with self.cond:
            pending = self.active + [t for s in self.waiting for t in (s, *s.siblings)]
            self.waiting.clear()
        for seq in pending:
            seq._emit(Event([], "", error=message))
            seq.siblings = []
        self.active.clear()
        self.pool.reset()

    def step(self) -> None:
        """One engine step: drop cancelled sequences, schedule a token budget, run one packed forward pass, pick tokens."""
        outbox: list[Sequence] = []
        with self.cond:
            current = self.active + [t for s in self.waiting for t in (s, *s.siblings)]
        try:
            for s in current:
                s.outbox = outbox
            with torch.inference_mode():
                self._step()
        finally:
            self._flush(current, outbox)

    def _flush(self, current: list[Sequence], outbox: list[Sequence]) -> None:
        """Deliver a step's events: one event-loop wake-up per step instead of one per token and request."""
        for s in current:
            s.outbox = None
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, list[tuple[int, Event]]]]] = {}
        for s in dict.fromkeys(outbox):
            items, s.pending = s.pending, []
            if items:
                by_loop.setdefault(s.loop, []).append((s, items))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_many, [(s.queue, items) for s, items in batch])
            except RuntimeError:  # that loop is gone
                for s, _ in batch:
                    s.cancelled = True

    def _step(self) -> None:
        for s in [s for s in self.active if s.cancelled]:
            self.stats["cancelled"] += 1
            self._retire(s)
        plan = self._schedule()
        if plan:
            start = time.perf_counter()
            self._forward(plan)
            self.stats["steps"] += 1
            if self.observer is not None:
                self.observer.step(time.perf_counter() - start, prefill=any(n > 1 for _, n in plan))

    # ----- scheduling: who computes how many tokens this step -----
    def _schedule(self) -> list[tuple[Sequence, int]]:
        """First come, first served under a token budget: decoding rows, then prompts being prefilled, then new admissions.

        A sequence that cannot get the blocks it needs takes them from the most recently admitted
        one, which is preempted: its blocks are released and it waits at the front of the queue to
        be recomputed (its cached prefix blocks usually survive, so that is cheap).
        """
        budget = self.max_num_batched_tokens
        plan: dict[Sequence, int] = {}
        preempted = False
        decoding = [s for s in self.active if len(s.ids) - s.computed == 1]
        prefilling = [s for s in self.active if len(s.ids) - s.computed > 1]
        for s in decoding + prefilling:
            if s not in self.active or budget <= 0:  # preempted by an earlier one this step
                continue
            need = len(s.ids) - s.computed
            n = min(need, budget) if self.chunked_prefill else need
            if n > budget and plan:
                continue
            while not self._reserve(s, s.computed + n):
                victim = self.active[-1]
                preempted = True
                budget += plan.pop(victim, 0)
                self._preempt(victim)
                if victim is s:
                    break
            else:
                plan[s] = n
                budget -= n
        while not preempted and budget > 0:
            with self.cond:
                while self.waiting and self.waiting[0].cancelled:
                    self._drop_waiting(self.waiting[0])
                if not self.waiting:
                    break
                s = self.waiting[0]
                if self.active and len(self.active) + 1 + len(s.siblings) > self.max_batch_size:
                    break
                if not s.table:
                    self._attach_prefix(s)
                need = len(s.ids) - s.computed
                n = min(need, budget) if self.chunked_prefill else need
                if (n > budget and plan) or not self._reserve(s, s.computed + n):
                    self._release(s)  # wait (first come, first served) with nothing held
                    break
                self.waiting.popleft()
            self._admit(s)
            plan[s] = n
            budget -= n
        return list(plan.items())

    def _attach_prefix(self, s: Sequence) -> None:
        """Give a new sequence the cached blocks of its longest cached prefix (never its last token: its logits are needed)."""
        limit = 0 if (s.params.prompt_logprobs is not None) else (len(s.ids) - 1) // self.block_size
        s.table, s.chain = self.pool.lookup(s.ids, limit)
        s.computed = len(s.table) * self.block_size

    def _reserve(self, s: Sequence, upto: int) -> bool:
        """Blocks for slots [computed, upto) of `s`, copying a shared block it is about to write; False when the pool is out."""
        j = s.computed // self.block_size
        if j < len(s.table) and self.pool.is_shared(s.table[j]):
            block = self.pool.allocate()
            if block is None:
                return False
            self.cache.copy_block(s.table[j], block)
            self.pool.release([s.table[j]])
            s.table[j] = block
        while len(s.table) < blocks_for(upto, self.block_size):
            block = self.pool.allocate()
            if block is None:
                return False
            s.table.append(block)
        return True

    def _release(self, s: Sequence) -> None:
        self.pool.release(s.table)
        s.table, s.chain, s.computed = [], [], 0

    def _preempt(self, s: Sequence) -> None:
        """Free a running sequence's blocks and queue it first, to be recomputed from its tokens so far."""
        self._release(s)
        self.active.remove(s)
        self.stats["preempted"] += 1
        with self.cond:
            self.waiting.appendleft(s)

    def _admit(self, s: Sequence) -> None:
        if s.cfg is None:  # first admission (a preempted sequence keeps its settings, generator and text)
            self._start(s)
            self.stats["admitted"] += 1
            self.stats["prompt_tokens"] += s.prompt_tokens
            self.stats["cached_tokens"] += s.computed
        self.active.append(s)
        self.stats["max_active"] = max(self.stats["max_active"], len(self.active) + len(s.siblings))

    def _start(self, s: Sequence) -> None:
        params = s.params if s.params.eos_token_id is not None else replace(s.params, eos_token_id=list(self.eos_ids))
        s.cfg = cfg = params.for_model(self.model.config)
        s.generator = row_generator(cfg, s.sample, self.model.device)
        s.detokenizer = Detokenizer(self.decode, cfg.stop_strings, cfg.eos_ids)
        s.seen = torch.tensor([s.prompt_ids], dtype=torch.long, device=self.model.device)

    def _drop_waiting(self, s: Sequence) -> None:
        """Take a cancelled sequence out of the queue; its live siblings stay queued, the first of them leading."""
        i = self.waiting.index(s)
        del self.waiting[i]
        self.stats["cancelled"] += 1
        leader = self._next_leader(s)
        if leader is not None:
            self.waiting.insert(i, leader)
        self._release(s)

    def _retire(self, s: Sequence) -> None:
        """A running sequence is done (finished or cancelled): its blocks go back to the pool (cached ones stay findable)."""
        self._release(s)
        self.active.remove(s)
        leader = self._next_leader(s)  # cancelled before its siblings forked: they start over without it
        if leader is not None:
            with self.cond:
                self.waiting.appendleft(leader)

    def _next_leader(self, s: Sequence) -> Sequence | None:
        """Detach the siblings of a sequence that leaves before forking them: the first live one leads the rest (the cancelled are counted)."""
        live = [t for t in s.siblings if not t.cancelled]
        self.stats["cancelled"] += len(s.siblings) - len(live)
        s.siblings = []
        if not live:
            return None
        live[0].siblings = live[1:]
        return live[0]

    # ----- one packed forward pass -----
    def _forward(self, plan: list[tuple[Sequence, int]]) -> None:
        device = self.model.device
        rows = [(s, n) for s, n in plan if n == 1]  # one new token: attends through the batched decode path
        chunks = [(s, n) for s, n in plan if n > 1]
        ordered = rows + chunks
        if self.decode_step is not None and not chunks:
            self._after_forward(ordered, self._static_decode([s for s, _ in rows]))
            return
        ids, positions = [], []
        for s, n in ordered:
            ids.extend(s.ids[s.computed : s.computed + n])
            positions.extend(range(s.computed, s.computed + n))
        pos = torch.tensor(positions, dtype=torch.long)
        owner = torch.repeat_interleave(torch.arange(len(ordered)), torch.tensor([n for _, n in ordered]))
        tables = self._tables([s for s, _ in ordered])
        slots = (tables[owner, pos // self.block_size] * self.block_size + pos % self.block_size).to(device)
        layout = PagedLayout(slots)
        if rows:
            lengths = torch.tensor([s.computed + 1 for s, _ in rows])
            span = torch.arange(int(lengths.max()))
            within = span[None, :] < lengths[:, None]
            keys = tables[: len(rows), span // self.block_size] * self.block_size + span % self.block_size
            layout.decode_keys = torch.where(within, keys, keys[:, :1]).to(device)
            layout.decode_lengths = lengths.to(device)
        off = len(rows)
        for k, (s, n) in enumerate(chunks):
            span = torch.arange(s.computed + n)
            context = tables[len(rows) + k, span // self.block_size] * self.block_size + span % self.block_size
            layout.chunks.append((off, n, s.computed, context.to(device)))
            off += n
        hidden = self.model.paged_hidden(torch.tensor([ids], dtype=torch.long, device=device), pos[None].to(device), self.cache, layout)[0]
        self._after_forward(ordered, hidden)

    def _static_decode(self, seqs: list[Sequence]) -> torch.Tensor:
        device = self.model.device
        tokens = torch.tensor([[s.ids[s.computed]] for s in seqs], dtype=torch.long, device=device)
        positions = torch.tensor([[s.computed] for s in seqs], dtype=torch.long, device=device)
        return self.decode_step(tokens, positions, self._tables(seqs, self.max_blocks).to(device))

    def _after_forward(self, ordered: list[tuple[Sequence, int]], hidden: torch.Tensor) -> None:
        """Count the computed tokens, register the blocks they filled, and pick for every sequence now fully computed."""
        picking: list[Sequence] = []
        rows_out: list[int] = []
        off = 0
        for s, n in ordered:
            if s.cfg.prompt_logprobs is not None and not s.generated:
                self._prompt_logprobs(s, hidden[off : off + n])
            s.computed += n
            self.stats["computed_tokens"] += n
            self._register_full_blocks(s)
            if s.computed == len(s.ids):  # its newest token is computed: pick the next one
                for t in [s, *self._fork(s)]:
                    picking.append(t)
                    rows_out.append(off + n - 1)
            off += n
        if picking:
            self._pick_and_advance(picking, hidden[rows_out])

    def _tables(self, seqs: list[Sequence], width: int | None = None) -> torch.Tensor:
        """(len(seqs), width or the longest table) block tables, padded with each row's first block."""
        width = width or max(len(s.table) for s in seqs)
        return torch.tensor([s.table + [s.table[0]] * (width - len(s.table)) for s in seqs], dtype=torch.long)

    def _register_full_blocks(self, s: Sequence) -> None:
        bs = self.block_size
        while len(s.chain) < s.computed // bs:
            j = len(s.chain)
            s.chain.append(self.pool.register(s.table[j], s.chain[-1] if s.chain else ROOT, s.ids[j * bs : (j + 1) * bs]))

    def _fork(self, s: Sequence) -> list[Sequence]:
        """The siblings waiting on `s`'s prompt: each takes its blocks (shared, copied when first written) and starts decoding."""
        siblings, s.siblings = [t for t in s.siblings if not t.cancelled], []
        for t in siblings:
            for block in s.table:
                self.pool.hold(block)
            t.table, t.chain, t.computed = list(s.table), list(s.chain), s.computed
            t.prompt_lp = s.prompt_lp
            self._start(t)
            self.stats["admitted"] += 1
            self.stats["forks"] += 1
            self.active.append(t)
        self.stats["max_active"] = max(self.stats["max_active"], len(self.active))
        return siblings

    def _prompt_logprobs(self, s: Sequence, hidden: torch.Tensor) -> None:
        """Accumulate the prompt's log-probabilities over its prefill chunks (row p scores prompt token p + 1)."""
        start = s.computed
        stop = min(start + hidden.shape[0], s.prompt_tokens - 1)
        if start == 0:  # (again, when a preempted prompt is recomputed)
            s.prompt_lp = [TokenInfo(s.prompt_ids[0], self._piece(s.prompt_ids[0]))]
        if stop > start:
            logp = self.picker.logits(hidden[: stop - start]).log_softmax(-1)
            s.prompt_lp += self._infos(logp, torch.tensor(s.prompt_ids[start + 1 : stop + 1]), s.cfg.prompt_logprobs)

    def _pick_and_advance(self, seqs: list[Sequence], hidden: torch.Tensor) -> None:
        first = [s for s in seqs if not s.generated and s.cfg.max_new_tokens == 0]
        for s in first:  # an echo of the prompt only: nothing to generate
            s.finish_reason = "length"
            s._emit(Event([], "", finish_reason="length", prompt_logprobs=s.prompt_lp))
            self.stats["finished"] += 1
            self._retire(s)
        keep = [i for i, s in enumerate(seqs) if s not in first]
        if not keep:
            return
        seqs, hidden = [seqs[i] for i in keep], hidden[keep]
        tokens, infos = self._pick(seqs, hidden)
        for s, token, info in zip(seqs, tokens, infos):
            prompt_lp = s.prompt_lp if not s.generated else None
            if self._advance(s, token, info, prompt_lp):
                self.stats["finished"] += 1
                self._retire(s)

    def _pick(self, seqs: list[Sequence], hidden: torch.Tensor) -> tuple[list[int], list[TokenInfo | None]]:
        """Next token per row: plain greedy rows together through the head screen, the rest row by row from full logits."""
        picks: list[int | None] = [None] * len(seqs)
        infos: list[TokenInfo | None] = [None] * len(seqs)
        fast = [i for i, s in enumerate(seqs) if self.picker.screens(s.cfg)]
        if fast:
            found = self.picker.screen.argmax(hidden[fast])
            if found is not None:
                for i, t in zip(fast, found.tolist()):
                    picks[i] = t
        rest = [i for i in range(len(seqs)) if picks[i] is None]
        if rest:
            logits = self.picker.logits(hidden[rest])
            # Plain greedy rows (no screen here, e.g. a quantized head): one argmax for all of them.
            plain = [j for j, i in enumerate(rest) if not seqs[i].cfg.needs_full_logits]
            if plain:
                for j, t in zip(plain, greedy_tokens(logits if len(plain) == len(rest) else logits[plain]).tolist()):
                    picks[rest[j]] = t
            for j, i in enumerate(rest):
                if picks[i] is not None:
                    continue
                s = seqs[i]
                row = logits[j : j + 1]
                picks[i] = int(next_tokens(row, s.seen, s.cfg, [s.generator])[0])
                if s.cfg.logprobs is not None:
                    infos[i] = self._infos(row.log_softmax(-1), torch.tensor([picks[i]]), s.cfg.logprobs)[0]
        return picks, infos

    def _infos(self, logp: torch.Tensor, chosen: torch.Tensor, k: int) -> list[TokenInfo]:
        """TokenInfo per row of (T, vocab) log-probabilities for the chosen ids, with the top k alternatives."""
        picked = logp.gather(1, chosen[:, None].to(logp.device))[:, 0].tolist()
        tops = torch.topk(logp, k, dim=-1) if k > 0 else None
        out = []
        for t, tok in enumerate(chosen.tolist()):
            top = list(zip(tops.indices[t].tolist(), tops.values[t].tolist())) if tops is not None else []
            out.append(TokenInfo(tok, self._piece(tok), picked[t], top))
        return out

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def _advance(self, seq: Sequence, token: int, info: TokenInfo | None, prompt_lp: list[TokenInfo] | None) -> bool:
        """Record a new token, emit the text it releases, and say whether the sequence is finished."""
        now = time.perf_counter()
        if seq.first_token_at is None:
            seq.first_token_at = now
            if self.observer is not None:
                self.observer.first_token(now - seq.submitted)
        elif self.observer is not None:
            self.observer.token_gap(now - seq.last_token_at)
        seq.last_token_at = now
        seq.generated.append(token)
        seq.ids.append(token)
        self.stats["generated_tokens"] += 1
        if seq.cfg.repetition_penalty != 1.0:  # the only reader of `seen`
            seq.seen = torch.cat([seq.seen, torch.tensor([[token]], dtype=torch.long, device=seq.seen.device)], dim=1)
        # Token texts are only shown with logprobs (and TGI details); skip the per-token decode otherwise.
        info = info or TokenInfo(token, self._piece(token) if seq.cfg.logprobs is not None else "")
        det = seq.detokenizer
        delta = det.add(token)
        if not det.finished and seq.remaining <= 0:
            delta += det.finish("length")
        seq.finish_reason = det.finish_reason
        seq._emit(Event([info], delta, finish_reason=det.finish_reason, prompt_logprobs=prompt_lp))
        return det.finished
