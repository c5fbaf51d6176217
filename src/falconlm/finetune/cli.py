"""`falconlm finetune CHECKPOINT_DIR --data FILE... --out DIR [--lora ...]` (also under torchrun)."""

from __future__ import annotations

import argparse

from falconlm.train.cli import add_loop_arguments

# The loop's flags that do not apply here (the model is the checkpoint, the data are JSONL files).
SKIPPED_TRAIN_FLAGS = ("--model", "--data", "--out", "--sampling", "--eval-batches")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the finetune options: data, LoRA, mix-in, and the training loop's flags."""
    from falconlm.finetune.config import FULL_LR, LORA_LR, TRAIN_DEFAULTS
    from falconlm.finetune.lora import DEFAULT_TARGETS

    parser.add_argument("checkpoint", help="base checkpoint directory (HF Falcon: config.json, safetensors, tokenizer.json)")
    parser.add_argument("--data", nargs="+", required=True, metavar="FILE", help="JSONL(.gz) conversations: messages | instruction/input/output | prompt/response")
    parser.add_argument("--out", required=True, help="run directory (checkpoints/, metrics.jsonl, data_report.json, model/ or adapter/)")
    parser.add_argument("--val-data", nargs="+", default=[], metavar="FILE", help="held-out conversations: loss on their answer tokens")
    parser.add_argument("--epochs", type=float, default=3.0, help="passes over the data when --max-steps/--max-tokens are not given (default 3)")
    parser.add_argument("--warmup-fraction", type=float, default=None, help="LR warm-up as a share of the run (default 0.03; --warmup-tokens overrides)")
    parser.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True, help="several samples per sequence (default) or one, right-padded")
    parser.add_argument("--on-overlong", choices=("truncate", "skip"), default="truncate", help="a sample longer than a sequence (default truncate)")
    parser.add_argument("--on-bad", choices=("skip", "error"), default="skip", help="a line that is no usable sample: report and skip (default) or stop")
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--lora", action="store_true", help="train low-rank adapters on frozen base weights (else all weights)")
    lora.add_argument("--lora-rank", type=int, default=8, help="adapter rank r (default 8)")
    lora.add_argument("--lora-alpha", type=float, default=16.0, help="scale alpha; the update is alpha/r * B A (default 16)")
    lora.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on the adapter input (default 0.05)")
    lora.add_argument("--lora-targets", default=",".join(DEFAULT_TARGETS), help=f"comma-separated layer names (default {','.join(DEFAULT_TARGETS)})")
    mix = parser.add_argument_group("plain-text mix-in (Falcon-Instruct style)")
    mix.add_argument("--mix-pretrain", metavar="TOKEN_DIR", help="token shards (`falconlm tokenize`, same tokenizer) to mix in")
    mix.add_argument("--mix-fraction", type=float, default=0.0, help="share of training sequences that are plain-text windows (e.g. 0.05)")
    loop = parser.add_argument_group("training loop (as `falconlm pretrain`)")
    defaults = {**TRAIN_DEFAULTS, "lr": f"{FULL_LR:g}, {LORA_LR:g} with --lora", "min_lr": "lr / 10", "seq_len": "min(2048, the model's context)",
                "warmup_tokens": "--warmup-fraction 0.03 of the run"}
    add_loop_arguments(loop, SKIPPED_TRAIN_FLAGS, defaults)


def run(args: argparse.Namespace) -> int:
    """Resolve the config and fine-tune."""
    from falconlm.finetune.config import FinetuneConfig, train_config
    from falconlm.finetune.lora import LoRAConfig
    from falconlm.finetune.run import finetune
    from falconlm.model.config import FalconConfig

    names = add_loop_arguments(argparse.ArgumentParser(add_help=False), SKIPPED_TRAIN_FLAGS)  # the fields those flags set
    overrides = {name: getattr(args, name) for name in names}
    context = FalconConfig.from_json(args.checkpoint).max_position_embeddings
    lora = None
    if args.lora:
        targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
        lora = LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout, targets=targets)
    warmup_fraction = args.warmup_fraction if args.warmup_fraction is not None else (None if args.warmup_tokens is not None else 0.03)
    cfg = FinetuneConfig(
        checkpoint=args.checkpoint, data=args.data, out=args.out, val_data=args.val_data, lora=lora, packing=args.packing,
        on_overlong=args.on_overlong, on_bad=args.on_bad, mix_pretrain=args.mix_pretrain, mix_fraction=args.mix_fraction,
        epochs=args.epochs, warmup_fraction=warmup_fraction,
        train=train_config(args.checkpoint, args.out, lora is not None, context, overrides),
    )
    finetune(cfg)
    return 0
