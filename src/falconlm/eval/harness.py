"""lm-eval adapter: any lm-eval task runs against a falconlm checkpoint (`--model falconlm`)."""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from falconlm.decoding.generate import generate_text
from falconlm.decoding.settings import GenerationConfig
from falconlm.eval.scoring import score_continuations
from falconlm.model.falcon import FalconForCausalLM
from falconlm.tokenizer.falcon import FalconTokenizer


@register_model("falconlm")
class FalconLM(LM):
    """loglikelihood, loglikelihood_rolling and generate_until over a falconlm model and tokenizer."""

    def __init__(
        self,
        pretrained: str | FalconForCausalLM,
        tokenizer: str | FalconTokenizer | None = None,
        batch_size: int | str = 8,
        max_length: int | None = None,
        dtype: str | None = None,
        **_: Any,
    ) -> None:
        super().__init__()
        self.model = FalconForCausalLM.from_pretrained(pretrained, dtype=dtype) if isinstance(pretrained, str) else pretrained
        if tokenizer is None:
            tokenizer = pretrained if isinstance(pretrained, str) else self.model.source_dir
        self.tokenizer = tokenizer if isinstance(tokenizer, FalconTokenizer) else FalconTokenizer.load(tokenizer)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.max_length = int(max_length or self.model.config.max_position_embeddings)

    @property
    def eot_token_id(self) -> int:
        """The document separator, used as the context of an empty context."""
        return self.tokenizer.eot_id

    def tok_encode(self, text: str) -> list[int]:
        """Token ids of a string."""
        return self.tokenizer.encode(text)

    # ----- loglikelihood -----
    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # As lm-eval's HFLM: trailing spaces of the context belong to the continuation, and the
        # continuation's tokens are those of the whole string past the context's own tokens.
        spaces = len(context) - len(context.rstrip())
        if spaces:
            continuation = context[-spaces:] + continuation
            context = context[:-spaces]
        if not context:
            return [self.eot_token_id], self.tok_encode(continuation)
        whole = self.tok_encode(context + continuation)
        context_ids = self.tok_encode(context)
        return whole[: len(context_ids)], whole[len(context_ids) :]

    def _fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        # Keep the continuation and as much of the context as the model holds (left truncation).
        continuation = continuation[-self.max_length :]
        room = self.max_length + 1 - len(continuation)
        return context[-max(room, 1) :], continuation

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Sum of log-probs of each continuation given its context, and whether it is the greedy output."""
        pairs = [self._fit(*self._split(*req.args)) for req in requests]
        out = []
        for start in tqdm(range(0, len(pairs), 64 * self.batch_size), desc="loglikelihood", disable=disable_tqdm):
            out += score_continuations(self.model, pairs[start : start + 64 * self.batch_size], self.batch_size)
        return [(s.logprob, s.is_greedy) for s in out]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts in lm-eval's disjoint rolling windows of the model's context."""
        totals = []
        for req in tqdm(requests, desc="loglikelihood_rolling", disable=disable_tqdm):
            (text,) = req.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(self.tok_encode(text), self.eot_token_id, self.max_length, 1)]
            totals.append(sum(s.logprob for s in score_continuations(self.model, windows, self.batch_size)))
        return totals

    # ----- generation -----
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled) continuations cut at the first stop string."""
        results = []
        for req in tqdm(requests, desc="generate_until", disable=disable_tqdm):
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = min(int(kwargs.pop("max_gen_toks", 256)), self.max_length - 1)
            ids = self.tok_encode(context)[-(self.max_length - max_new) :] or [self.eot_token_id]
            config = GenerationConfig(
                max_new_tokens=max_new,
                do_sample=bool(kwargs.get("do_sample", False)),
                temperature=float(kwargs.get("temperature", 1.0)),
                top_p=kwargs.get("top_p"),
                top_k=kwargs.get("top_k"),
                eos_token_id=self.eot_token_id,
                stop_strings=until,
                seed=kwargs.get("seed"),
            )
            results.append(generate_text(self.model, self.tokenizer, [ids], config)[0].text)
        return results
