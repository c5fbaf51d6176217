"""GenerationConfig: how to pick new tokens, for every caller (the Python API, the CLIs, each server request). Torch-free, so command-line help stays fast."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from falconlm.errors import FalconError


@dataclass
class GenerationConfig:
    """How to pick new tokens. Greedy unless do_sample is set and the temperature is above 0."""

    max_new_tokens: int = 64  # most new tokens per row
    do_sample: bool = False  # sample at `temperature` (False: greedy whatever the temperature, as transformers)
    temperature: float = 1.0  # softmax temperature when sampling; 0 means greedy
    top_k: int | None = None  # sample among the k most likely tokens; None, 0 or -1: all
    top_p: float | None = None  # nucleus sampling: the smallest set of tokens whose probability reaches top_p; None or 1: all
    repetition_penalty: float = 1.0  # CTRL-style penalty on tokens already in the row; 1: off
    stop_strings: list[str] = field(default_factory=list)  # the text ends before the first of these
    seed: int | None = None  # seed of the sampling (row i of a batch uses seed + i); None: random
    eos_token_id: int | list[int] | None = None  # token ids that end a row; None: the model config's
    ignore_eos: bool = False  # keep going past the end-of-text token
    pad_token_id: int | None = None  # what finished rows yield; None: the model's pad id or the first eos id
    logprobs: int | None = None  # report the log-probability of each new token and this many top alternatives
    prompt_logprobs: int | None = None  # report log-probabilities of the prompt tokens too (the server's echo)
    screen_head: bool = True  # greedy picks through the exact int8 screen of the LM head where it applies

    @property
    def greedy(self) -> bool:
        """The one rule: greedy unless sampling is asked for at a temperature above 0."""
        return not self.do_sample or self.temperature == 0

    @property
    def needs_full_logits(self) -> bool:
        """Whether a row's pick needs every logit (sampling, a repetition penalty or logprobs), not just the argmax."""
        return not self.greedy or self.repetition_penalty != 1.0 or self.logprobs is not None

    @property
    def eos_ids(self) -> list[int]:
        """The stop token ids as a list (none when ignore_eos)."""
        if self.eos_token_id is None or self.ignore_eos:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    def validate(self) -> None:
        """Raise FalconError on a setting that cannot work."""
        if self.max_new_tokens < 0:
            raise FalconError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise FalconError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < -1:
            raise FalconError(f"top_k must be >= 0 (or -1 for all), got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise FalconError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise FalconError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise FalconError("stop strings must be non-empty strings")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise FalconError(f"{name} must be >= 0, got {value}")

    def for_model(self, model_config: Any) -> "GenerationConfig":
        """A validated copy with the model's eos and pad ids filled in where unset."""
        cfg = replace(self, stop_strings=list(self.stop_strings))
        if cfg.eos_token_id is None:
            cfg.eos_token_id = model_config.eos_token_id
        if cfg.pad_token_id is None:
            eos = model_config.eos_token_id
            eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
            cfg.pad_token_id = model_config.pad_token_id if model_config.pad_token_id is not None else (eos_ids or [0])[0]
        cfg.validate()
        return cfg


def resolve(config: GenerationConfig | None, model_config: Any, overrides: dict[str, Any]) -> GenerationConfig:
    """config (or the defaults) with keyword overrides applied and the model's ids filled in."""
    known = {f.name for f in fields(GenerationConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise FalconError(f"unknown generation option {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return replace(config or GenerationConfig(), **overrides).for_model(model_config)
