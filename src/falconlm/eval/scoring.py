"""Log-likelihood of token continuations under a model, batched: the one primitive every metric uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from falconlm.model.falcon import FalconForCausalLM


@dataclass
class Scored:
    """Sum of log-probabilities of a continuation, and whether each of its tokens was the argmax."""

    logprob: float
    is_greedy: bool
    tokens: int


def score_continuations(model: FalconForCausalLM, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 8) -> list[Scored]:
    """Score each (context, continuation) token pair; context must be non-empty and both fit the model.

    Rows are sorted by length and right-padded into batches; padding never changes the scores of
    earlier tokens (causal attention), so results equal one-by-one scoring.
    """
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    results: list[Scored | None] = [None] * len(pairs)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            seqs = [pairs[i][0] + pairs[i][1] for i in chunk]
            width = max(map(len, seqs)) - 1  # the last token is only a target
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, seq in enumerate(seqs):
                ids[row, : len(seq) - 1] = torch.tensor(seq[:-1])
                mask[row, : len(seq) - 1] = 1
            logprobs = F.log_softmax(model(ids, attention_mask=mask).float(), dim=-1)
            for row, i in enumerate(chunk):
                context, continuation = pairs[i]
                first = len(context) - 1  # position whose output predicts the first continuation token
                span = logprobs[row, first : first + len(continuation)]
                target = torch.tensor(continuation)
                picked = span.gather(1, target[:, None]).squeeze(1)
                results[i] = Scored(float(picked.double().sum()), bool((span.argmax(dim=1) == target).all()), len(continuation))
    return results  # type: ignore[return-value]


def rolling_windows(tokens: list[int], prefix_token: int, max_length: int, stride: int | None = None) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) windows that score every token exactly once with up to max_length of context.

    The first window starts from `prefix_token`; each later window predicts `stride` new tokens
    (default max_length: disjoint windows as lm-eval does) conditioned on the tokens before them.
    """
    stride = stride or max_length
    if not 0 < stride <= max_length:
        raise ValueError(f"stride must be in (0, max_length], got {stride}")
    windows = []
    seq = [prefix_token] + tokens
    scored = 0  # tokens of `tokens` scored so far
    while scored < len(tokens):
        step = min(stride if scored else max_length, len(tokens) - scored)
        end = scored + 1 + step  # exclusive end in seq
        begin = max(0, end - 1 - max_length)
        windows.append((seq[begin : scored + 1], seq[scored + 1 : end]))
        scored += step
    return windows
