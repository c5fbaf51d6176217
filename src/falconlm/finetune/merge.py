"""`falconlm merge-lora BASE_DIR ADAPTER_DIR --out DIR`: fold a LoRA adapter into a plain HF Falcon checkpoint."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path


def merge_adapter(base: str | os.PathLike, adapter: str | os.PathLike, out: str | os.PathLike, dtype: str | None = None) -> Path:
    """Load base + adapter, add (alpha/r) B A to each adapted weight, save an HF directory with the base's tokenizer and chat template."""
    from falconlm.errors import FalconError
    from falconlm.finetune.lora import load_adapter, merge_lora
    from falconlm.model.falcon import FalconForCausalLM

    if Path(out).resolve() in (Path(base).resolve(), Path(adapter).resolve()):
        raise FalconError("--out must be a new directory, not the base or the adapter directory")
    from falconlm.model.checkpoint import parse_dtype

    model = FalconForCausalLM.from_pretrained(base)
    load_adapter(model, adapter)
    merge_lora(model)  # in fp32, cast back to the base's dtype
    if dtype is not None:
        model.to(parse_dtype(dtype))
    model.save_pretrained(out, tokenizer_dir=base)
    return Path(out)


@dataclass
class MergeCommand:
    """What `falconlm merge-lora` folds together and where it writes."""

    base: str  # base checkpoint directory the adapter was trained on
    adapter: str  # adapter directory (adapter_config.json + adapter_model.safetensors; ours or PEFT's)
    out: str  # output checkpoint directory (HF Falcon, loads in transformers)
    dtype: str | None = None  # float32 | bfloat16 | float16 of the merged weights; None: the base's


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the merge-lora options: one per MergeCommand field, plus --config."""
    from falconlm.configure import add_config_arguments

    add_config_arguments(parser, MergeCommand, positional=("base", "adapter"))


def run(args: argparse.Namespace) -> int:
    """Merge and say where the result is."""
    from falconlm.configure import config_from_args

    cmd = config_from_args(MergeCommand, args)
    out = merge_adapter(cmd.base, cmd.adapter, cmd.out, cmd.dtype)
    print(f"merge-lora: {cmd.adapter} folded into {cmd.base} -> {out}")
    return 0
