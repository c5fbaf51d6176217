"""Quantization fixtures: a small Falcon trained here on a synthetic Markov language, and its held-out text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

VOCAB, SEQ = 256, 64


def markov_tokens(count: int, length: int, seed: int) -> torch.Tensor:
    """(count, length) tokens of a fixed sparse second-order Markov chain: learnable, not trivial."""
    table = torch.Generator().manual_seed(1234)
    nxt = torch.randint(0, VOCAB, (VOCAB, 4), generator=table)  # each token has 4 likely successors
    probs = torch.tensor([0.55, 0.25, 0.12, 0.08])
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(count, length, dtype=torch.long)
    out[:, 0] = torch.randint(0, VOCAB, (count,), generator=g)
    for t in range(1, length):
        choice = torch.multinomial(probs.expand(count, 4), 1, generator=g)[:, 0]
        noise = torch.rand(count, generator=g) < 0.05
        out[:, t] = torch.where(noise, torch.randint(0, VOCAB, (count,), generator=g), nxt[out[:, t - 1], choice])
    return out


def perplexity(model, tokens: torch.Tensor) -> float:
    """exp(mean next-token NLL) of the model on (count, length) tokens."""
    with torch.no_grad():
        logits = model(tokens[:, :-1]).float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    return float(nll.exp())


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory) -> Path:
    """A 2-block, hidden-128 Falcon (7B style, bias off) trained for a few hundred steps on the Markov chain."""
    from falconlm.model.config import FalconConfig
    from falconlm.model.falcon import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = FalconConfig.from_preset("tiny-7b", vocab_size=VOCAB, hidden_size=128, num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=SEQ)
        model = build_model(config, seed=0)
        data = markov_tokens(4096, SEQ, seed=1)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        for step in range(250):
            batch = data[(step * 16) % 4096 : (step * 16) % 4096 + 16]
            logits = model(batch[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        out = tmp_path_factory.mktemp("quant") / "trained"
        model.eval().save_pretrained(out)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def heldout() -> torch.Tensor:
    """Held-out text of the same chain (another seed)."""
    return markov_tokens(64, SEQ, seed=99)


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory) -> Path:
    """Calibration windows as a `falconlm tokenize`-style shard directory is not needed: token ids as a JSONL of texts would need a tokenizer, so tests pass windows through the Python API."""
    path = tmp_path_factory.mktemp("calib") / "calib.json"
    path.write_text(json.dumps(markov_tokens(32, SEQ, seed=7).tolist()))
    return path
