"""`falconlm parity`: every Falcon block style checked against transformers, end to end.

For each Falcon block style it builds a small model, saves it as an HF directory, reloads it with
falconlm and with transformers, compares the logits, and generates greedily with both.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

STYLES = {"tiny-7b": "Falcon-7B style (multi-query, parallel, 1 LayerNorm)", "tiny-40b": "Falcon-40B style (grouped KV, ln_attn/ln_mlp)", "tiny-rw": "Falcon-RW style (ALiBi, sequential, biases)"}


@dataclass
class ParityCommand:
    """Where `falconlm parity` writes its checkpoints and how much it generates."""

    out: str = "out/demo"  # where the checkpoints go
    new_tokens: int = 32  # tokens each block style generates, ours against transformers'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the parity options: one per ParityCommand field, plus --config."""
    from falconlm.configure import add_config_arguments

    add_config_arguments(parser, ParityCommand)


def run(args: argparse.Namespace) -> int:
    """Build, save, reload, compare and generate for each block style; print a summary table."""
    import torch

    from falconlm.decoding.generate import generate
    from falconlm.model.config import FalconConfig
    from falconlm.model.falcon import FalconForCausalLM, build_model

    try:
        import transformers
    except ImportError:
        transformers = None
    from falconlm.configure import config_from_args

    args = config_from_args(ParityCommand, args)
    out = Path(args.out)
    rows = []
    for preset, label in STYLES.items():
        print(f"== {preset}: {label}")
        config = FalconConfig.from_preset(preset)
        model = build_model(config, seed=0).eval()
        directory = out / preset
        model.save_pretrained(directory)
        print(f"   saved {model.num_parameters():,} parameters to {directory}/")
        ours = FalconForCausalLM.from_pretrained(directory)
        prompt = torch.randint(12, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
        start = time.perf_counter()
        tokens = generate(ours, prompt, max_new_tokens=args.new_tokens, eos_token_id=[])
        speed = args.new_tokens / (time.perf_counter() - start)
        print(f"   falconlm greedy continuation: {tokens[0, 16:].tolist()}")
        diff, same = float("nan"), None
        if transformers is not None:
            hf = transformers.FalconForCausalLM.from_pretrained(directory).eval()
            with torch.no_grad():
                diff = (hf(prompt).logits - ours(prompt)).abs().max().item()
                hf_tokens = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
            same = torch.equal(hf_tokens, tokens)
            print(f"   transformers loaded the same directory: max |logit difference| = {diff:.2e}; greedy tokens identical: {same}")
        rows.append((preset, diff, same, speed))
    print("\nSummary")
    print(f"  {'model':10s} {'max |Δ logit| vs transformers':>30s} {'same greedy tokens':>20s} {'tokens/s':>9s}")
    for preset, diff, same, speed in rows:
        print(f"  {preset:10s} {diff:30.2e} {str(same):>20s} {speed:9.1f}")
    print(f"\nCheckpoints (HF layout: config.json, model.safetensors, generation_config.json) are in {out}/")
    return 0 if all(same is not False for _, _, same, _ in rows) else 1
