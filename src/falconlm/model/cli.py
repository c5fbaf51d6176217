"""`falconlm init-model` and `falconlm inspect`: create a randomly initialised checkpoint, or describe one."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from falconlm.configure import add_config_arguments, config_from_args


@dataclass
class InitModelConfig:
    """A randomly initialised checkpoint: which architecture, where, in what precision."""

    preset: str  # preset name (falcon-7b, tiny-40b, ...) or a config.json path
    out: str  # directory to write
    dtype: str = "float32"  # float32 | bfloat16 | float16
    seed: int = 0  # seed of the initialisation
    max_shard_size: str = "5GB"  # largest safetensors file; bigger models are sharded with an index
    tokenizer: str | None = None  # directory whose tokenizer files are copied along
    vocab_size: int | None = None  # override the preset's vocabulary size
    force: bool = False  # write it even when the memory estimate exceeds what the machine has left


@dataclass
class InspectConfig:
    """The checkpoint or preset to describe."""

    checkpoint: str | None = None  # checkpoint directory or preset name (with --memory and none given: every released model)
    memory: bool = False  # print weights and KV cache per rank by precision (bf16/int8/int4) and tensor-parallel degree
    gpu_memory: str = "80GB"  # device memory each rank has, for the --memory column of KV tokens that fit beside the weights


def _config_class(name: str) -> type:
    """The config of `init-model` or `inspect`, by the parser's prog or the command's name."""
    return InspectConfig if name.endswith("inspect") else InitModelConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of both subcommands (the parser's prog tells which one runs)."""
    cls = _config_class(parser.prog)
    add_config_arguments(parser, cls, positional=("checkpoint" if cls is InspectConfig else "preset",))


def config(args: argparse.Namespace) -> InitModelConfig | InspectConfig:
    """The subcommand's config: defaults < --config file < flags."""
    return config_from_args(_config_class(args.command), args)


def run(args: argparse.Namespace) -> int:
    """Dispatch on the subcommand name."""
    from falconlm.model.config import FalconConfig

    cfg = config(args)
    if isinstance(cfg, InspectConfig):
        if cfg.memory:
            return _memory(cfg)
        if cfg.checkpoint is None:
            from falconlm.errors import FalconError

            raise FalconError("give a checkpoint directory or preset name to inspect (or --memory for the table of every released model)")
        return _inspect(cfg.checkpoint)
    import torch

    from falconlm.model.checkpoint import parse_dtype
    from falconlm.model.falcon import build_model

    from falconlm.atomic import output_dir
    from falconlm.errors import FalconError
    from falconlm.memory import check_fits, inference_bytes

    model_config = FalconConfig.load(cfg.preset)
    if cfg.vocab_size:
        model_config = dataclasses.replace(model_config, vocab_size=cfg.vocab_size)
    if cfg.tokenizer:
        from falconlm.tokenizer.falcon import FalconTokenizer

        ids = FalconTokenizer.load(cfg.tokenizer).vocab_size
        if ids > model_config.vocab_size:
            raise FalconError(f"the tokenizer in {cfg.tokenizer} has {ids:,} ids but the model's vocab_size is {model_config.vocab_size:,}, "
                              f"so it could not embed every token; pass --vocab-size {ids} (or more)")
    check_fits(inference_bytes(model_config, "float32"), f"init-model {cfg.preset}", "cpu", cfg.force, hint="choose a smaller preset")
    model = build_model(model_config, dtype=parse_dtype(cfg.dtype) or torch.float32, seed=cfg.seed)
    with output_dir(cfg.out):
        model.save_pretrained(cfg.out, max_shard_size=cfg.max_shard_size, tokenizer_dir=cfg.tokenizer)
    print(f"wrote a randomly initialised {cfg.preset} ({model.num_parameters() / 1e6:.1f}M parameters, {cfg.dtype}) to {cfg.out}")
    return 0


def _inspect(target: str) -> int:
    from pathlib import Path

    from falconlm.model.checkpoint import checkpoint_files
    from falconlm.model.config import FalconConfig

    config = FalconConfig.load(target)
    print(f"{target}: Falcon, {config.block_style} blocks, {'ALiBi' if config.alibi else f'RoPE theta={config.rope_theta:g}'}")
    print(f"  layers {config.num_hidden_layers}, hidden {config.hidden_size}, heads {config.num_attention_heads} (kv {config.stored_kv_heads}), head_dim {config.head_dim}")
    print(f"  ffn {config.ffn_hidden_size}, vocab {config.vocab_size}, context {config.max_position_embeddings}, bias {config.bias}")
    kv_bytes = 2 * config.num_hidden_layers * config.stored_kv_heads * config.head_dim * 2
    print(f"  parameters {_human(config.num_parameters())}; KV cache {_human(kv_bytes)}B per token in bf16")
    if Path(target).is_dir():
        files = checkpoint_files(Path(target))
        print(f"  {len(files)} tensors in {len(set(files.values()))} safetensors file(s)")
        if config.quantization_config is not None:
            from falconlm.quant.inspect import describe

            print("\n".join(describe(Path(target), config)))
    return 0


def _memory(cfg: InspectConfig) -> int:
    """The memory table of one model, or of every released one."""
    from falconlm.model.checkpoint import parse_size
    from falconlm.model.config import FalconConfig
    from falconlm.parallel.memory import RELEASED, memory_table

    targets = [cfg.checkpoint] if cfg.checkpoint else list(RELEASED)
    for i, target in enumerate(targets):
        print(("\n" if i else "") + "\n".join(memory_table(target, FalconConfig.load(target), parse_size(cfg.gpu_memory))))
    return 0


def _human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"
