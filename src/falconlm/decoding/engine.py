"""Continuous batching: one engine thread owns the model and a shared KV cache of `max_batch_size` rows.

Each step the engine (1) drops cancelled requests, (2) admits waiting requests into free rows
(each prefilled alone, batch 1, then its keys/values copied into the shared cache, right-aligned
under the fill pointer so its earlier slots are padding), (3) decodes one token for every active
row in a single forward pass (the decode step of decoding/step.py: a CUDA graph per batch size on
a GPU). Picking and detokenizing are the ones `generate` uses, with each row's own
GenerationConfig and seeded generator. Keys are stored after RoPE and attention masks come from per-slot
validity, so a row's tokens are the tokens it would get alone. Finished or cancelled rows are
freed between steps (the last active row moves into the hole, keeping active rows a prefix);
when padding piles up at the front, the cache is compacted.

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
from typing import Any

import torch

from falconlm.decoding.detokenizer import Detokenizer, text_decoder
from falconlm.decoding.sampling import next_tokens, picker_for, row_generator
from falconlm.decoding.settings import GenerationConfig
from falconlm.decoding.step import DecodeStep
from falconlm.errors import FalconError
from falconlm.model.falcon import FalconForCausalLM

log = logging.getLogger("falconlm.serve")


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
        self.next_pos = 0
        self.submitted = time.perf_counter()
        self.first_token_at: float | None = None
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
    ):
        if max_batch_size < 1:
            raise FalconError(f"--max-batch-size must be >= 1, got {max_batch_size}")
        if max_queue < 1:
            raise FalconError(f"--max-queue must be >= 1, got {max_queue}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_length = max_length or model.config.max_position_embeddings
        eos = model.config.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.cache = model.new_cache(max_batch_size, self.max_length)
        self.picker = picker_for(model)
        self.step_fn = DecodeStep(model, step_mode)
        self.decode = text_decoder(tokenizer)
        self.active: list[Sequence] = []  # active[i] owns cache row i
        self.waiting: deque[Sequence] = deque()
        self.cond = threading.Condition()
        self.stopped = False
        self.stats = {"steps": 0, "max_active": 0, "admitted": 0, "compactions": 0, "finished": 0, "cancelled": 0}
        self.thread = threading.Thread(target=self._run, name="falconlm-engine", daemon=True)
        if start:  # start=False: the caller drives `step()` itself (tests: deterministic interleavings)
            self.thread.start()

    # ----- the public side (called from the HTTP event loop) -----
    def submit(self, seqs: list[Sequence]) -> None:
        """Queue sequences (all or none); raises QueueFull when they do not fit in the waiting queue."""
        for s in seqs:
            if not s.prompt_ids or s.prompt_tokens + s.params.max_new_tokens > self.max_length:
                raise FalconError(f"prompt ({s.prompt_tokens} tokens) + max_tokens ({s.params.max_new_tokens}) must be 1..{self.max_length} tokens")
        with self.cond:
            if self.stopped:
                raise FalconError("the engine is shut down")
            if len(self.waiting) + len(seqs) > self.max_queue:
                raise QueueFull(f"the server queue is full ({self.max_queue} waiting requests); retry shortly")
            self.waiting.extend(seqs)
            self.cond.notify()

    def cancel(self, seq: Sequence) -> None:
        """Stop a sequence (client gone); its row is freed before the next step."""
        if not seq.done.is_set():
            seq.cancelled = True
            with self.cond:
                try:  # still waiting: leave the queue now, so it stops counting against --max-queue
                    self.waiting.remove(seq)
                    self.stats["cancelled"] += 1
                except ValueError:
                    pass
                self.cond.notify()

    def load(self) -> dict[str, int]:
        """Active rows and waiting requests, for /health."""
        return {"active": len(self.active), "waiting": len(self.waiting), "max_batch_size": self.max_batch_size, "max_queue": self.max_queue}

    def close(self) -> None:
        """Stop the engine thread; pending sequences end with an error event."""
        with self.cond:
            self.stopped = True
            self.cond.notify()
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    # ----- the engine thread -----
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.cond:
                while not self.stopped and not self.active and not self.waiting:
                    self.cond.wait()
                if self.stopped:
                    break
            try:
                self.step()
            except Exception as exc:  # never let one bad step kill the server: fail the batch, keep serving
                log.exception("engine step failed")
                for seq in list(self.active) + list(self.waiting):
                    seq._emit(Event([], "", error=f"internal error: {exc}"))
                self.active.clear()
                with self.cond:
                    self.waiting.clear()
                self.cache.clear()
        for seq in list(self.active) + list(self.waiting):
            seq._emit(Event([], "", error="the server is shutting down"))

    def step(self) -> None:
        """One engine step: drop cancelled rows, admit waiting requests, decode one token for every active row."""
        outbox: list[Sequence] = []
        with self.cond:
            current = list(self.active) + list(self.waiting)
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
        for i in reversed(range(len(self.active))):
            if self.active[i].cancelled:
                self.stats["cancelled"] += 1
                self._free(i)
        self._admit()
        if self.active:
            self._decode()
            self.stats["steps"] += 1

    def _admit(self) -> None:
        while len(self.active) < self.max_batch_size:
            with self.cond:
                while self.waiting and self.waiting[0].cancelled:
                    self.waiting.popleft()
                    self.stats["cancelled"] += 1
                if not self.waiting:
                    return
                seq = self.waiting[0]
                if not self._fits(seq):
                    if not self.active:  # an empty cache always fits a validated request
                        self.cache.clear()
                    else:
                        self._compact(force=True)
                        if not self._fits(seq):
                            return  # wait for rows to finish (first come, first served)
                self.waiting.popleft()
            self.stats["admitted"] += 1
            self._prefill(seq)

    def _fits(self, seq: Sequence) -> bool:
        new_length = max(self.cache.length, seq.prompt_tokens)
        need = max([s.remaining for s in self.active] + [seq.params.max_new_tokens - 1, 0])
        return new_length + need <= self.max_length

    def _compact(self, force: bool = False) -> None:
        if not self.active:
            self.cache.clear()
            return
        shift = self.cache.leading_padding(len(self.active))
        # Attention reads every slot up to the pointer, so drop a large padded front even when not forced.
        if shift and (force or (shift >= 32 and shift * 2 >= self.cache.length)):
            self.cache.compact(shift)
            self.stats["compactions"] += 1

    def _prefill(self, seq: Sequence) -> None:
        model = self.model
        params = seq.params if seq.params.eos_token_id is not None else replace(seq.params, eos_token_id=list(self.eos_ids))
        seq.cfg = cfg = params.for_model(model.config)
        seq.generator = row_generator(cfg, seq.sample, model.device)
        seq.detokenizer = Detokenizer(self.decode, cfg.stop_strings, cfg.eos_ids)
        ids = torch.tensor([seq.prompt_ids], dtype=torch.long, device=model.device)
        n = ids.shape[1]
        own = model.new_cache(1, n)
        hidden = model.hidden_states(ids, position_ids=torch.arange(n, device=model.device)[None], cache=own)
        prompt_lp = None
        if cfg.prompt_logprobs is not None:
            logp = self.picker.logits(hidden[0, :-1]).log_softmax(-1)
            prompt_lp = [TokenInfo(seq.prompt_ids[0], self._piece(seq.prompt_ids[0]))]
            prompt_lp += self._infos(logp, ids[0, 1:], cfg.prompt_logprobs)
        seq.seen = ids
        seq.next_pos = n
        if cfg.max_new_tokens == 0:
            seq.finish_reason = "length"
            seq._emit(Event([], "", finish_reason="length", prompt_logprobs=prompt_lp))
            self.stats["finished"] += 1
            return
        token, info = self._pick([seq], hidden[:, -1])
        if self._advance(seq, token[0], info[0], prompt_lp):
            self.stats["finished"] += 1
            return
        # Place it: the prompt's P slots end at the fill pointer; padding covers the rest of the row.
        if self.cache.length < n:
            self.cache.advance(n - self.cache.length)
        row = len(self.active)
        self.cache.insert_row(row, own)
        self.active.append(seq)
        self.stats["max_active"] = max(self.stats["max_active"], len(self.active))

    def _decode(self) -> None:
        self._compact()
        n = len(self.active)
        view = self.cache.rows(n)
        last = torch.tensor([[s.generated[-1]] for s in self.active], dtype=torch.long, device=self.model.device)
        pos = torch.tensor([[s.next_pos] for s in self.active], dtype=torch.long, device=self.model.device)
        hidden = self.step_fn(last, pos, view)
        self.cache.length = view.length
        for s in self.active:
            s.next_pos += 1
        tokens, infos = self._pick(self.active, hidden)
        for i in reversed(range(n)):
            if self._advance(self.active[i], tokens[i], infos[i], None):
                self.stats["finished"] += 1
                self._free(i)

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
            for j, i in enumerate(rest):
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
        if seq.first_token_at is None:
            seq.first_token_at = time.perf_counter()
        seq.generated.append(token)
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

    def _free(self, row: int) -> None:
        last = len(self.active) - 1
        if row != last:
            self.cache.move_row(last, row)
            self.active[row] = self.active[last]
        else:
            self.cache.free_row(row)
        self.active.pop()
        if not self.active:
            self.cache.clear()
