"""Prefill once, then decode token by token from a preallocated KV cache: `generate`, `stream_generate`, `stream_text`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from falconlm.decoding.detokenizer import Decode, Detokenizer, text_decoder
from falconlm.decoding.sampling import picker_for, row_generator
from falconlm.decoding.settings import GenerationConfig, resolve
from falconlm.decoding.step import DecodeStep, decode_session
from falconlm.errors import FalconError
from falconlm.model.falcon import FalconForCausalLM
from falconlm.model.kv_cache import KVCache


def _check_inputs(model: FalconForCausalLM, input_ids: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise FalconError(f"input_ids must be a non-empty (batch, seq) tensor, got shape {tuple(input_ids.shape)}")
    t = input_ids.shape[1]
    limit = model.config.max_position_embeddings
    if t + cfg.max_new_tokens > limit and not model.config.alibi and model.config.rope_scaling is None:
        raise FalconError(f"prompt ({t} tokens) + max_new_tokens ({cfg.max_new_tokens}) exceeds the model's context of {limit} tokens")
    if int(input_ids.max()) >= model.config.vocab_size or int(input_ids.min()) < 0:
        raise FalconError(f"input_ids hold a token id outside the vocabulary of {model.config.vocab_size}")
    return input_ids


def _prefill(model: FalconForCausalLM, input_ids: torch.Tensor, mask: torch.Tensor, padded: bool, cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden state of each row's last prompt token (the cache then holds the prompt) and each row's next position (B, 1).

    A cache that already holds tokens (one unpadded row: a chat's earlier turns) is reused up to the prompt's last token.
    """
    b, t = input_ids.shape
    positions = (mask.long().cumsum(1) - 1).clamp_min(0)
    if cache.length == 0:
        hidden = model.hidden_states(input_ids, attention_mask=mask if padded else None, position_ids=positions, cache=cache)[:, -1]
    else:
        cache.length = min(cache.length, t - 1)  # at least the last prompt token is fed, for its logits
        done = cache.length
        hidden = model.hidden_states(input_ids[:, done:], position_ids=positions[:, done:], cache=cache)[:, -1]
    return hidden, positions[:, -1:] + 1


def stream_generate(
    model: FalconForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
    decode: Decode | None = None,
    cache: KVCache | None = None,
    detokenizers: list[Detokenizer] | None = None,
    step_mode: str = "auto",
    **overrides: Any,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), step by step; finished rows yield the pad id.

    Prompts of different lengths are left-padded with attention_mask marking real tokens.
    `decode` (token ids -> text) is needed only for stop strings; `detokenizers` (one per row)
    are fed every token and end their rows on a stop string (callers read the text from them).
    `cache`, for one unpadded row, holds the keys and values of the prompt's first `cache.length`
    tokens already (a chat's previous turns): only the rest is prefilled, and the cache goes on
    filling with the new tokens (each yielded token but the last is in it when the generator stops).
    `step_mode` picks how decode steps run (see decoding/step.py); every mode gives the same tokens.
    """
    cfg = resolve(config, model.config, overrides)
    input_ids = _check_inputs(model, input_ids, cfg)
    b, t = input_ids.shape
    if detokenizers is None and cfg.stop_strings:
        if decode is None:
            raise FalconError("stop strings need a decode function (a tokenizer) to read the generated text")
        detokenizers = [Detokenizer(decode, cfg.stop_strings, cfg.eos_ids) for _ in range(b)]
    if detokenizers is not None and len(detokenizers) != b:
        raise FalconError(f"{len(detokenizers)} detokenizers for {b} rows")
    device = model.device
    input_ids = input_ids.to(device)
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(device).bool()
    generators = None if cfg.greedy else [row_generator(cfg, row, device) for row in range(b)]
    picker = picker_for(model)
    eos = torch.tensor(cfg.eos_ids, device=device, dtype=torch.long)
    tokens = torch.empty(b, t + cfg.max_new_tokens, dtype=torch.long, device=device)
    tokens[:, :t] = input_ids
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    with torch.inference_mode():
        if cache is None:
            cache, step = decode_session(model, b, t + cfg.max_new_tokens, step_mode)
        else:
            if b != 1 or attention_mask is not None:
                raise FalconError("a reused cache serves one unpadded row")
            if t + cfg.max_new_tokens > cache.max_length:
                raise FalconError(f"prompt ({t}) + max_new_tokens ({cfg.max_new_tokens}) exceed the cache's {cache.max_length} slots")
            step = DecodeStep(model, step_mode)
        hidden, next_pos = _prefill(model, input_ids, mask, attention_mask is not None, cache)
        for i in range(cfg.max_new_tokens):
            new = picker.pick(hidden, cfg, tokens[:, : t + i], generators)
            new = torch.where(finished, torch.full_like(new, cfg.pad_token_id), new)
            tokens[:, t + i] = new
            if eos.numel():
                finished |= torch.isin(new, eos)
            if detokenizers is not None:
                for row, token in enumerate(new.tolist()):
                    if not detokenizers[row].finished:
                        detokenizers[row].add(token)
                        if detokenizers[row].finished:
                            finished[row] = True
            yield new
            if i + 1 == cfg.max_new_tokens or bool(finished.all()):
                break
            hidden = step(new[:, None], next_pos, cache)
            next_pos = next_pos + 1
    if detokenizers is not None:
        for d in detokenizers:
            d.finish("length")


def generate(
    model: FalconForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
    decode: Decode | None = None,
    **overrides: Any,
) -> torch.Tensor:
    """The prompt followed by the new tokens, (B, T + new), as transformers' generate returns."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    new = list(stream_generate(model, input_ids, attention_mask, config, decode, **overrides))
    if not new:
        return input_ids.clone()
    return torch.cat([input_ids.to(new[0].device), torch.stack(new, dim=1)], dim=1)


def left_pad(encoded: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompts of different lengths as left-padded (B, T) ids and their attention mask (None for one prompt or equal lengths)."""
    if any(not ids for ids in encoded):
        raise FalconError("a prompt encodes to no tokens; give some text")
    width = max(map(len, encoded))
    ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in encoded], dtype=torch.long)
    if all(len(row) == width for row in encoded):
        return ids, None
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in encoded], dtype=torch.long)
    return ids, mask


@dataclass
class Completion:
    """One row's result: its visible text, why it ended ("stop" or "length"), and the tokens generated (an ending eos included)."""

    text: str
    finish_reason: str
    tokens: list[int]


class TextStream:
    """Generate from token-id prompts; iterating yields, each step, the new visible text of every row.

    After the iteration (or `close()`), `completions` holds each row's final text, finish reason and tokens.
    """

    def __init__(
        self,
        model: FalconForCausalLM,
        tokenizer: Any,
        prompts: list[list[int]],
        config: GenerationConfig | None = None,
        cache: KVCache | None = None,
        step_mode: str = "auto",
        **overrides: Any,
    ):
        self.config = resolve(config, model.config, overrides)
        decode = text_decoder(tokenizer)
        self.rows = [Detokenizer(decode, self.config.stop_strings, self.config.eos_ids) for _ in prompts]
        input_ids, mask = left_pad(prompts, self.config.pad_token_id)
        self._tokens = stream_generate(model, input_ids, mask, self.config, cache=cache, detokenizers=self.rows, step_mode=step_mode)
        self._iter = self._deltas()

    def _deltas(self) -> Iterator[list[str]]:
        before = [""] * len(self.rows)
        for _ in self._tokens:
            now = [d.text for d in self.rows]
            yield [n[len(b) :] for n, b in zip(now, before)]
            before = now
        tail = [d.text[len(b) :] for d, b in zip(self.rows, before)]
        if any(tail):
            yield tail

    def __iter__(self) -> Iterator[list[str]]:
        return self._iter

    def __next__(self) -> list[str]:
        return next(self._iter)

    def close(self) -> None:
        """Stop generating (the rows keep the text they have)."""
        self._iter.close()
        self._tokens.close()

    @property
    def completions(self) -> list[Completion]:
        """Each row's final text, finish reason and generated tokens."""
        return [Completion(d.text, d.finish_reason or "length", list(d.tokens)) for d in self.rows]


def generate_text(model: FalconForCausalLM, tokenizer: Any, prompts: list[list[int]], config: GenerationConfig | None = None, **overrides: Any) -> list[Completion]:
    """Generate from token-id prompts (batched, left-padded) and return each row's Completion."""
    stream = TextStream(model, tokenizer, prompts, config, **overrides)
    for _ in stream:
        pass
    return stream.completions
