"""`falconlm init-model` and `falconlm inspect`: create a randomly initialised checkpoint, or describe one."""

from __future__ import annotations

import argparse
import dataclasses


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of both subcommands (the parser's prog tells which one runs)."""
    if parser.prog.endswith("inspect"):
        parser.add_argument("checkpoint", help="checkpoint directory or preset name")
        return
    parser.add_argument("preset", help="preset name (falcon-7b, tiny-40b, ...) or a config.json path")
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument("--tokenizer", default=None, help="directory whose tokenizer files are copied along")
    parser.add_argument("--vocab-size", type=int, default=None, help="override the preset's vocabulary size")


def run(args: argparse.Namespace) -> int:
    """Dispatch on the subcommand name."""
    from falconlm.model.config import FalconConfig

    if args.command == "inspect":
        return _inspect(args.checkpoint)
    import torch

    from falconlm.model.checkpoint import parse_dtype
    from falconlm.model.falcon import build_model

    config = FalconConfig.load(args.preset)
    if args.vocab_size:
        config = dataclasses.replace(config, vocab_size=args.vocab_size)
    model = build_model(config, dtype=parse_dtype(args.dtype) or torch.float32, seed=args.seed)
    model.save_pretrained(args.out, max_shard_size=args.max_shard_size, tokenizer_dir=args.tokenizer)
    print(f"wrote a randomly initialised {args.preset} ({model.num_parameters() / 1e6:.1f}M parameters, {args.dtype}) to {args.out}")
    return 0


def _inspect(target: str) -> int:
    from pathlib import Path

    from falconlm.model.checkpoint import checkpoint_files
    from falconlm.model.config import FalconConfig

    config = FalconConfig.load(target)
    print(f"{target}: Falcon, {config.block_style} blocks, {'ALiBi' if config.alibi else f'RoPE theta={config.rope_theta:g}'}")
    print(f"  layers {config.num_hidden_layers}, hidden {config.hidden_size}, heads {config.num_attention_heads} (kv {config.kv_heads}), head_dim {config.head_dim}")
    print(f"  ffn {config.ffn_hidden_size}, vocab {config.vocab_size}, context {config.max_position_embeddings}, bias {config.bias}")
    kv_bytes = 2 * config.num_hidden_layers * config.kv_heads * config.head_dim * 2
    print(f"  parameters {_human(config.num_parameters())}; KV cache {_human(kv_bytes)}B per token in bf16")
    if Path(target).is_dir():
        files = checkpoint_files(Path(target))
        print(f"  {len(files)} tensors in {len(set(files.values()))} safetensors file(s)")
    return 0


def _human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"
