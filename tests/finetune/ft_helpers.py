"""Helpers for the fine-tuning tests: a synthetic instruction set in the three data shapes and a tiny base checkpoint."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

# (question, answer): every answer is a different word, so only a model that read the question gets it right.
FACTS = [
    ("What is the capital of France?", "Paris."),
    ("What is the capital of Italy?", "Rome."),
    ("What color is the sky?", "Blue."),
    ("How many legs does a spider have?", "Eight."),
    ("Who wrote Hamlet?", "Shakespeare."),
    ("What do bees make?", "Honey."),
    ("What is frozen water called?", "Ice."),
    ("Which planet is red?", "Mars."),
]
INIT = 0.3  # a wide init: LoRA on frozen 0.02-scale embeddings can rank the right answer first but hardly sharpen it
SYSTEM = "You are a terse assistant."
TWO_TURNS = (FACTS[0], FACTS[4])  # also trained as one conversation: the second answer follows the first turn
# A CLI run that learns the synthetic set in a few seconds on 2 cores: 3 packed rows per epoch, 120 steps.
RUN_FLAGS = ["--seq-len", "128", "--global-batch-size", "4", "--micro-batch-size", "4", "--max-steps", "120",
             "--log-interval", "40", "--no-progress", "--no-tensorboard", "--peak-flops", "1e11"]
# The DDP comparison: 6 steps of a global batch of 4 = 2 micro-batches of 2 (one process) or 1 per rank (two).
DDP_FLAGS = ["--max-steps", "6", "--global-batch-size", "4", "--micro-batch-size", "2", "--log-interval", "1", "--save-interval", "0"]
DDP_RUNS = {"full": ["--lr", "5e-3"], "lora": ["--lora", "--lr", "1e-2", "--lora-dropout", "0"]}
FILLER = "the falcon flies over the desert at dawn while models learn to predict the next token of web text".split()


def records() -> list[dict]:
    """The training set: each fact once, in turn as messages, instruction/output and prompt/response, plus a two-turn chat (TWO_TURNS)."""
    out: list[dict] = []
    for i, (q, a) in enumerate(FACTS):
        if i % 3 == 0:
            out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        elif i % 3 == 1:
            out.append({"instruction": q, "output": a})
        else:
            out.append({"prompt": q, "response": a})
    (q1, a1), (q2, a2) = TWO_TURNS
    out.append({"messages": [{"role": "user", "content": q1}, {"role": "assistant", "content": a1}, {"role": "user", "content": q2}, {"role": "assistant", "content": a2}]})
    return out


def write_jsonl(path: Path, rows: list) -> Path:
    """One JSON value per line (strings are written as they are, for bad-line tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def build_base(out: Path, seed: int = 0) -> Path:
    """A random-weight tiny-7b checkpoint whose tokenizer (BPE, ~350 ids) was trained on chat-rendered text."""
    from falconlm.tokenizer.chat_template import ChatTemplate
    from falconlm.model.config import FalconConfig
    from falconlm.model.falcon import build_model
    from falconlm.tokenizer.falcon import train_tokenizer

    rng = random.Random(0)
    template = ChatTemplate()
    texts = [template.render([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}, {"role": "assistant", "content": a}], False) for q, a in FACTS]
    texts += [" ".join(rng.choice(FILLER) for _ in range(12)) + "." for _ in range(200)]
    tok = train_tokenizer(texts * 3, vocab_size=350, show_progress=False)
    tok_dir = out.parent / f"{out.name}-tok"
    tok.save(tok_dir)
    config = FalconConfig.from_preset("tiny-7b", vocab_size=tok.vocab_size, eos_token_id=tok.eot_id, bos_token_id=tok.eot_id, max_position_embeddings=256, initializer_range=INIT)
    build_model(config, seed=seed).save_pretrained(out, tokenizer_dir=tok_dir)
    return out


@contextlib.contextmanager
def one_thread():
    """torch on one intra-op thread for the duration (tiny models: thread hand-offs cost more than the matmuls)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
