"""`falconlm pretrain --model PRESET_OR_CONFIG --data DIR --out DIR ...` (also under torchrun)."""

from __future__ import annotations

import argparse

# flag -> (TrainConfig field, type, help). Flags default to None so YAML values win unless given.
FLAGS: list[tuple[str, str, type, str]] = [
    ("--model", "model", str, "preset name (e.g. tiny-7b, falcon-7b), config.json, or checkpoint directory"),
    ("--data", "data", str, "token-shard directory from `falconlm tokenize`"),
    ("--out", "out", str, "run directory: checkpoints/, metrics.jsonl, run_config.yaml, loss_curve.png"),
    ("--seed", "seed", int, "seed of initialisation and data order"),
    ("--max-steps", "max_steps", int, "optimizer steps to run"),
    ("--max-tokens", "max_tokens", float, "training tokens to run (alternative to --max-steps)"),
    ("--seq-len", "seq_len", int, "tokens per sequence (default 2048)"),
    ("--global-batch-size", "global_batch_size", int, "sequences per optimizer step after ramp-up (default 2304)"),
    ("--micro-batch-size", "micro_batch_size", int, "sequences per forward/backward per process (default 1)"),
    ("--batch-rampup-tokens", "batch_rampup_tokens", float, "tokens over which the global batch grows linearly (default 30e9; 0 = off)"),
    ("--batch-rampup-start", "batch_rampup_start", int, "first global batch in sequences (default micro x world)"),
    ("--lr", "lr", float, "peak learning rate (default 6e-4)"),
    ("--min-lr", "min_lr", float, "final learning rate of the cosine (default 1.2e-5)"),
    ("--warmup-tokens", "warmup_tokens", float, "tokens of linear warm-up (default 4e9)"),
    ("--decay-tokens", "decay_tokens", float, "token count where the cosine ends (default: the run's length)"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay on weight matrices (default 0.1)"),
    ("--beta1", "beta1", float, "AdamW beta1 (default 0.9)"),
    ("--beta2", "beta2", float, "AdamW beta2 (default 0.95)"),
    ("--eps", "eps", float, "AdamW epsilon (default 1e-8)"),
    ("--grad-clip", "grad_clip", float, "max gradient L2 norm, 0 = off (default 1.0)"),
    ("--z-loss", "z_loss", float, "z-loss coefficient (default 1e-4)"),
    ("--precision", "precision", str, "auto | fp32 | bf16-mixed | bf16-true (auto: bf16-mixed on CUDA, fp32 on CPU)"),
    ("--device", "device", str, "auto | cpu | cuda"),
    ("--strategy", "strategy", str, "auto | single | ddp | fsdp (auto: ddp under torchrun)"),
    ("--sampling", "sampling", str, "random | sequential windows"),
    ("--log-interval", "log_interval", int, "steps between console lines / metrics records (default 10)"),
    ("--eval-interval", "eval_interval", int, "steps between held-out evaluations (default 100)"),
    ("--eval-batches", "eval_batches", int, "micro-batches of held-out windows per evaluation (default 8)"),
    ("--save-interval", "save_interval", int, "steps between checkpoints (default 1000; always at the end)"),
    ("--keep-last", "keep_last", int, "checkpoints to keep (default 3)"),
    ("--peak-flops", "peak_flops", float, "per-device peak FLOP/s for MFU (default: measured)"),
]


# on/off flags: flag -> (TrainConfig field, the value the flag sets, help); None when not given.
SWITCHES: list[tuple[str, str, bool, str]] = [
    ("--resume", "resume", True, "continue from the newest checkpoint in OUT/checkpoints"),
    ("--activation-checkpointing", "activation_checkpointing", True, "recompute block activations in backward"),
    ("--compile", "compile", True, "torch.compile the model"),
    ("--decay-embeddings", "decay_embeddings", True, "apply weight decay to the embedding matrix too"),
    ("--no-progress", "progress_bar", False, "no progress bar"),
    ("--no-tensorboard", "tensorboard", False, "do not write TensorBoard logs"),
]


def add_loop_arguments(parser, skip: tuple[str, ...] = (), defaults: dict[str, str] | None = None) -> list[str]:
    """Add the loop's flags and switches (except `skip`) to a parser or group; returns the TrainConfig fields they set.

    `defaults` (field -> text) replaces the "(default ...)" of a flag's help, for commands whose defaults differ.
    """
    import re

    names = []
    for flag, name, typ, help_text in FLAGS:
        if flag in skip:
            continue
        if defaults and name in defaults:
            help_text = re.sub(r"\s*\(default[^)]*\)", "", help_text) + f" (default: {defaults[name]})"
        parser.add_argument(flag, type=typ, default=None, help=help_text)
        names.append(name)
    for flag, name, value, help_text in SWITCHES:
        if flag not in skip:
            parser.add_argument(flag, dest=name, action="store_true" if value else "store_false", default=None, help=help_text)
            names.append(name)
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of pretrain; every TrainConfig field is reachable here or in the YAML file."""
    parser.add_argument("--config", help="YAML run file (see configs/); flags given here override it")
    add_loop_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Resolve the config and train."""
    from falconlm.train.config import TrainConfig
    from falconlm.train.loop import pretrain

    names = [f for _, f, _, _ in FLAGS] + [name for _, name, _, _ in SWITCHES]
    overrides = {name: getattr(args, name) for name in names}
    cfg = TrainConfig.from_sources(args.config, overrides)
    pretrain(cfg)
    return 0
