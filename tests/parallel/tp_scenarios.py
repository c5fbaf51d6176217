"""What the tensor-parallel tests compare: the same calls on a whole model (in pytest) and on rank 0 of N ranks (tp_worker.py).

`CONFIGS` are tiny models of the three block styles shaped for the TP tests; `scenarios` runs
every kind of call a command makes (full-forward logits of a left-padded batch, greedy and sampled
generation, the static decode step, the continuous-batching engine with row moves and logprobs)
and returns plain tensors and lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# name -> (preset, overrides, seed): 40B-style with 8 KV groups; 7B-style multi-query; RW with ALiBi and 12 heads
# (not a power of two, so the extra-slope branch of ALiBi is split across ranks too).
CONFIGS: dict[str, tuple[str, dict[str, Any], int]] = {
    "40b": ("tiny-40b", dict(hidden_size=128, num_attention_heads=16, num_kv_heads=8), 2),
    "7b": ("tiny-7b", dict(hidden_size=256, num_attention_heads=16), 0),
    "rw": ("tiny-rw", dict(hidden_size=192, num_attention_heads=12), 1),
}
# GPTQ copies (falconlm quantize, round to nearest): name -> (full-precision checkpoint, bits, group size).
QUANTIZED: dict[str, tuple[str, int, int]] = {"40b-int4": ("40b", 4, 32), "rw-int8": ("rw", 8, -1)}
PROMPTS = ["the falcon flies over the desert", "models learn", "to predict the next token of web text while the falcon flies at dawn", "dawn"]


def build_all(root: Path) -> dict[str, Path]:
    """Write every CONFIGS checkpoint and its QUANTIZED copies under root (once)."""
    from falconlm.testing import build_checkpoint

    out = {}
    for name, (preset, overrides, seed) in CONFIGS.items():
        path = root / name
        if not (path / "config.json").is_file():
            build_checkpoint(path, preset=preset, seed=seed, **overrides)
        out[name] = path
    for name, (source, bits, group) in QUANTIZED.items():
        path = root / name
        if not (path / "config.json").is_file():
            from falconlm.cli import main

            assert main(["quantize", str(out[source]), "--bits", str(bits), "--group-size", str(group), "--out", str(path)]) == 0
        out[name] = path
    return out


def _drain(engine: Any, seqs: list[Any], limit: int = 10_000) -> None:
    for _ in range(limit):
        if all(s.done.is_set() for s in seqs):
            return
        engine.step()
    raise AssertionError("engine did not finish")


def scenarios(model: Any, tokenizer: Any) -> dict[str, Any]:
    """Run every compared call on `model` (whole or tensor-parallel rank 0); plain results."""
    from falconlm.decoding.engine import Engine, Sequence
    from falconlm.decoding.generate import generate, left_pad
    from falconlm.decoding.settings import GenerationConfig

    encoded = [tokenizer.encode(p) for p in PROMPTS]
    ids, mask = left_pad(encoded, tokenizer.eot_id)
    out: dict[str, Any] = {}
    with torch.inference_mode():
        out["logits"] = model(ids, attention_mask=mask).float()
        out["logits_unpadded"] = model(torch.tensor([encoded[0]])).float()
    greedy = dict(max_new_tokens=12, do_sample=True, temperature=0.0, ignore_eos=True)
    out["greedy_one"] = generate(model, torch.tensor([encoded[2]]), **greedy).tolist()
    out["greedy_padded"] = generate(model, ids, mask, **greedy).tolist()
    out["greedy_static"] = generate(model, ids, mask, step_mode="static", **greedy).tolist()
    out["greedy_no_screen"] = generate(model, ids, mask, screen_head=False, **greedy).tolist()
    out["sampled"] = generate(model, ids, mask, max_new_tokens=12, do_sample=True, temperature=0.8, top_k=40, top_p=0.9, seed=7, ignore_eos=True).tolist()
    # The engine: rows joining mid-decode, one finishing early (a row move), sampling, logprobs, a repetition penalty.
    engine = Engine(model, tokenizer, max_batch_size=3, start=False)
    settings = [
        GenerationConfig(max_new_tokens=10, do_sample=True, temperature=0.0, ignore_eos=True),
        GenerationConfig(max_new_tokens=4, do_sample=True, temperature=0.0, ignore_eos=True, logprobs=2),
        GenerationConfig(max_new_tokens=9, do_sample=True, temperature=1.0, seed=3, ignore_eos=True),
        GenerationConfig(max_new_tokens=7, do_sample=True, temperature=0.0, repetition_penalty=1.3, ignore_eos=True),
    ]
    seqs = [Sequence(e, s) for e, s in zip(encoded, settings)]
    engine.submit(seqs[:1])
    for _ in range(3):
        engine.step()
    engine.submit(seqs[1:])  # the last one waits for a free row
    _drain(engine, seqs)
    out["engine"] = [s.generated for s in seqs]
    out["engine_logprobs"] = [e.tokens[0].logprob for e in seqs[1].events if e.tokens]
    out["engine_stats"] = {k: engine.stats[k] for k in ("admitted", "finished", "max_active")}
    engine.close()
    return out
