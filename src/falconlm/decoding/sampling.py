"""Generation settings and the logits pipeline (repetition penalty, temperature, top-k, top-p), as transformers orders them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from falconlm.errors import FalconError


@dataclass
class GenerationConfig:
    """How to pick new tokens. do_sample=False is greedy whatever the temperature (as in transformers)."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    eos_token_id: int | list[int] | None = None  # None -> the model config's
    pad_token_id: int | None = None  # None -> the first eos id
    stop_strings: list[str] = field(default_factory=list)
    seed: int | None = None
    # Greedy picks via an int8 screen of the LM head, then exact fp32 logits for the few candidates
    # (generate/head_screen.py); the token is the same, the head reads a quarter of the bytes.
    screen_head: bool = True

    def validate(self) -> None:
        """Raise FalconError on a setting that cannot work."""
        if self.max_new_tokens < 0:
            raise FalconError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise FalconError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise FalconError(f"top_k must be >= 0, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise FalconError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise FalconError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def eos_ids(self) -> list[int]:
        """The stop token ids as a list."""
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on every token already in the row: divide positive logits, multiply negative ones."""
    if penalty == 1.0:
        return logits
    score = torch.gather(logits, 1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, seen, score)


def warp(logits: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) filtering; removed tokens get -inf."""
    if cfg.temperature != 1.0:
        logits = logits / cfg.temperature
    if cfg.top_k:
        k = min(cfg.top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - cfg.top_p)
        remove_sorted[..., -1:] = False  # always keep the most likely token
        logits = logits.masked_fill(remove_sorted.scatter(1, order, remove_sorted), float("-inf"))
    return logits


def next_tokens(logits: torch.Tensor, seen: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per row from last-position logits (B, vocab)."""
    logits = apply_repetition_penalty(logits.float(), seen, cfg.repetition_penalty)
    if not cfg.do_sample:
        return logits.argmax(dim=-1)
    probs = warp(logits, cfg).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
