"""Prefill once, then decode token by token from a preallocated KV cache."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from typing import Any

import torch

from falconlm.errors import FalconError
from falconlm.decoding.head_screen import screen_for
from falconlm.decoding.sampling import GenerationConfig, next_tokens
from falconlm.model.falcon import FalconForCausalLM
from falconlm.model.kv_cache import KVCache
from falconlm.model.linear import linear

Decode = Callable[[list[int]], str]


def _resolve(model: FalconForCausalLM, config: GenerationConfig | None, overrides: dict[str, Any]) -> GenerationConfig:
    known = {f.name for f in fields(GenerationConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise FalconError(f"unknown generation option {unknown[0]!r}; known: {', '.join(sorted(known))}")
    cfg = replace(config or GenerationConfig(), **overrides)
    if cfg.eos_token_id is None:
        cfg.eos_token_id = model.config.eos_token_id
    if cfg.pad_token_id is None:
        cfg.pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else (cfg.eos_ids or [0])[0]
    cfg.validate()
    return cfg


def stream_generate(
    model: FalconForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
    decode: Decode | None = None,
    cache: KVCache | None = None,
    **overrides: Any,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), step by step; finished rows yield the pad id.

    Prompts of different lengths are left-padded with attention_mask marking real tokens.
    `decode` (token ids -> text) is needed only for stop strings. `cache`, for one unpadded row,
    holds the keys and values of the prompt's first `cache.length` tokens already (a chat's
    previous turns): only the rest is prefilled, and the cache goes on filling with the new tokens
    (each yielded token but the last is in it when the generator stops).
    """
    cfg = _resolve(model, config, overrides)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise FalconError(f"input_ids must be a non-empty (batch, seq) tensor, got shape {tuple(input_ids.shape)}")
    if cfg.stop_strings and decode is None:
        raise FalconError("stop strings need a decode function (a tokenizer) to read the generated text")
    b, t = input_ids.shape
    limit = model.config.max_position_embeddings
    if t + cfg.max_new_tokens > limit and not model.config.alibi and model.config.rope_scaling is None:
        raise FalconError(f"prompt ({t} tokens) + max_new_tokens ({cfg.max_new_tokens}) exceeds the model's context of {limit} tokens")
    if int(input_ids.max()) >= model.config.vocab_size or int(input_ids.min()) < 0:
        raise FalconError(f"input_ids hold a token id outside the vocabulary of {model.config.vocab_size}")
    device = model.device
    input_ids = input_ids.to(device)
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(device).bool()
    generator = None
    if cfg.do_sample:
        generator = torch.Generator(device=device)
        generator.manual_seed(cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**62, ()).item()))
    eos = torch.tensor(cfg.eos_ids, device=device, dtype=torch.long)
    tokens = torch.empty(b, t + cfg.max_new_tokens, dtype=torch.long, device=device)
    tokens[:, :t] = input_ids
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    screen = screen_for(model) if cfg.screen_head and not cfg.do_sample and cfg.repetition_penalty == 1.0 else None

    def pick(hidden: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        if screen is not None:
            exact_argmax = screen.argmax(hidden)
            if exact_argmax is not None:
                return exact_argmax
        return next_tokens(linear(hidden, model.lm_head.weight), seen, cfg, generator)

    with torch.inference_mode():
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)
        if cache is None:
            cache = model.new_cache(b, t + cfg.max_new_tokens)
            hidden = model.hidden_states(input_ids, attention_mask=mask if attention_mask is not None else None, position_ids=positions, cache=cache)[:, -1]
        else:
            if b != 1 or attention_mask is not None:
                raise FalconError("a reused cache serves one unpadded row")
            if t + cfg.max_new_tokens > cache.max_length:
                raise FalconError(f"prompt ({t}) + max_new_tokens ({cfg.max_new_tokens}) exceed the cache's {cache.max_length} slots")
            cache.length = min(cache.length, t - 1)  # at least the last prompt token is fed, for its logits
            done = cache.length
            hidden = model.hidden_states(input_ids[:, done:], position_ids=positions[:, done:], cache=cache)[:, -1]
        next_pos = positions[:, -1:] + 1
        for step in range(cfg.max_new_tokens):
            new = pick(hidden, tokens[:, : t + step])
            new = torch.where(finished, torch.full_like(new, cfg.pad_token_id), new)
            tokens[:, t + step] = new
            if eos.numel():
                finished |= torch.isin(new, eos)
            if cfg.stop_strings:
                for row in range(b):
                    if not finished[row] and any(s in decode(tokens[row, t : t + step + 1].tolist()) for s in cfg.stop_strings):
                        finished[row] = True
            yield new
            if bool(finished.all()) or step + 1 == cfg.max_new_tokens:
                break
            hidden = model.hidden_states(new[:, None], position_ids=next_pos, cache=cache)[:, -1]
            next_pos = next_pos + 1


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
