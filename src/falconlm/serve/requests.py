"""From a request body to engine work: the model name, the prompt's tokens, the length check, the GenerationConfig, the submitted sequences."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falconlm.decoding.engine import Engine, Sequence
from falconlm.decoding.settings import GenerationConfig
from falconlm.serve.errors import APIError
from falconlm.serve.schemas import TGIRequest
from falconlm.tokenizer.chat_template import ChatTemplate


@dataclass
class ServerState:
    """What the handlers share: the engine, tokenizer, names and the chat template."""

    engine: Engine
    tokenizer: Any
    model_name: str
    chat_template: ChatTemplate
    aliases: set[str] = field(default_factory=set)
    created: int = field(default_factory=lambda: int(time.time()))


def check_model(st: ServerState, name: str | None) -> None:
    if name is not None and name not in st.aliases:
        raise APIError(404, f"model '{name}' is not served here; this server serves '{st.model_name}'", "not_found_error", "model")


def encode_prompt(st: ServerState, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        ids = st.tokenizer.encode(prompt)
    else:
        vocab = st.engine.model.config.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise APIError(400, f"prompt holds a token id outside the vocabulary (0..{vocab - 1})", param="prompt")
        ids = list(prompt)
    if not ids:
        raise APIError(400, "the prompt is empty (it encodes to no tokens)", param="prompt")
    return ids


def check_length(st: ServerState, prompt_len: int, max_tokens: int, name: str) -> None:
    limit = st.engine.max_length
    if prompt_len > limit:
        raise APIError(400, f"the prompt has {prompt_len} tokens, more than the model's context of {limit}", param="prompt")
    if prompt_len + max_tokens > limit:
        raise APIError(400, f"prompt ({prompt_len} tokens) + {name} ({max_tokens}) exceeds the model's context of {limit} tokens; lower {name}", param=name)


def request_config(body: Any, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None, extra_stop: list[str] | None = None) -> GenerationConfig:
    """The GenerationConfig of an OpenAI request (temperature 0 is greedy by GenerationConfig's own rule)."""
    return GenerationConfig(
        max_new_tokens=max_tokens,
        do_sample=True,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        repetition_penalty=body.repetition_penalty,
        stop_strings=body.stop_list + [s for s in (extra_stop or []) if s not in body.stop_list],
        seed=body.seed,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        ignore_eos=body.ignore_eos,
    )


def tgi_request(st: ServerState, body: TGIRequest, stream: bool = False) -> tuple[list[int], GenerationConfig]:
    """The prompt ids and GenerationConfig of a TGI request (sampling when asked for or implied by a sampling parameter, as TGI does)."""
    p = body.parameters
    ids = encode_prompt(st, body.inputs)
    check_length(st, len(ids), p.max_new_tokens, "max_new_tokens")
    sample = p.do_sample or (p.temperature is not None and p.temperature != 1.0) or p.top_k is not None or p.top_p is not None
    params = GenerationConfig(
        max_new_tokens=p.max_new_tokens,
        do_sample=sample,
        temperature=p.temperature or 1.0,
        top_p=p.top_p,
        top_k=p.top_k,
        repetition_penalty=p.repetition_penalty or 1.0,
        stop_strings=list(p.stop),
        seed=p.seed,
        logprobs=0 if p.details or stream else None,
    )
    return ids, params


def submit(st: ServerState, prompts: list[list[int]], params: list[GenerationConfig], n: int) -> tuple[list[Sequence], asyncio.Queue]:
    """One engine sequence per prompt and choice (choice j samples with seed + j), all answering on one queue."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    seqs = [Sequence(ids, p, loop=loop, queue=queue, index=i * n + j, sample=j) for i, (ids, p) in enumerate(zip(prompts, params)) for j in range(n)]
    st.engine.submit(seqs)
    return seqs, queue


def served_name(checkpoint: str | Path) -> str:
    """The model id a checkpoint is served under by default: its directory name."""
    return Path(checkpoint).resolve().name
