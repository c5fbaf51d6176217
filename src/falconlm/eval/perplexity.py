"""Loss, perplexity and bits per byte of a model on held-out documents, with sliding windows."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from tqdm import tqdm

from falconlm.eval.scoring import rolling_windows, score_continuations
from falconlm.model.falcon import FalconForCausalLM


@dataclass
class PerplexityResult:
    """Totals over all documents; bits per byte compares models with different tokenizers."""

    documents: int
    tokens: int
    bytes: int
    nll: float  # nats, summed
    loss: float  # nats per token
    perplexity: float
    bits_per_byte: float

    def to_dict(self) -> dict:
        """JSON form."""
        return asdict(self)


def evaluate_perplexity(
    model: FalconForCausalLM,
    encode,
    texts: Iterable[str],
    bos_token_id: int,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> PerplexityResult:
    """Score every token of every document given the previous ones (first token given `bos_token_id`).

    Documents longer than `max_length` (default: the model's context) are scored in sliding windows
    that advance by `stride` tokens (default half the context), each new token seeing up to
    max_length - 1 tokens before it.
    """
    max_length = max_length or model.config.max_position_embeddings
    stride = stride or max(1, max_length // 2)
    nll = 0.0
    tokens = n_bytes = docs = 0
    pending: list[tuple[list[int], list[int]]] = []
    bar = tqdm(desc="perplexity", unit="doc", disable=not progress)

    def flush() -> None:
        nonlocal nll, tokens
        for scored in score_continuations(model, pending, batch_size=batch_size):
            nll -= scored.logprob
            tokens += scored.tokens
        pending.clear()

    for text in texts:
        ids = encode(text)
        if not ids:
            continue
        docs += 1
        n_bytes += len(text.encode("utf-8"))
        pending.extend(rolling_windows(ids, bos_token_id, max_length, stride=min(stride, max_length)))
        if len(pending) >= 4 * batch_size:
            flush()
        bar.update(1)
    flush()
    bar.close()
    loss = nll / max(tokens, 1)
    return PerplexityResult(docs, tokens, n_bytes, nll, loss, math.exp(min(loss, 700)), nll / math.log(2) / max(n_bytes, 1))
