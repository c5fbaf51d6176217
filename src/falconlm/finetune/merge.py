"""`falconlm merge-lora BASE_DIR ADAPTER_DIR --out DIR`: fold a LoRA adapter into a plain HF Falcon checkpoint."""

from __future__ import annotations

import argparse
import os
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the merge-lora options."""
    parser.add_argument("base", help="base checkpoint directory the adapter was trained on")
    parser.add_argument("adapter", help="adapter directory (adapter_config.json + adapter_model.safetensors; ours or PEFT's)")
    parser.add_argument("--out", required=True, help="output checkpoint directory (HF Falcon, loads in transformers)")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 of the merged weights (default: the base's)")


def run(args: argparse.Namespace) -> int:
    """Merge and say where the result is."""
    out = merge_adapter(args.base, args.adapter, args.out, args.dtype)
    print(f"merge-lora: {args.adapter} folded into {args.base} -> {out}")
    return 0
