"""`falconlm generate CHECKPOINT_DIR --prompt ...`: text from a checkpoint, streamed or at once, with tokens/s."""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the generate options."""
    parser.add_argument("checkpoint", help="checkpoint directory (config.json, safetensors, tokenizer.json)")
    parser.add_argument("--prompt", action="append", required=True, help="prompt text; repeat for a batch")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--stop", action="append", default=[], help="stop string; repeatable")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: as saved)")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated (one prompt)")


def run(args: argparse.Namespace) -> int:
    """Load, generate, print the text and a tokens/s line."""
    import torch

    from falconlm.errors import FalconError
    from falconlm.decoding.generate import stream_generate
    from falconlm.decoding.sampling import GenerationConfig
    from falconlm.model.falcon import FalconForCausalLM
    from falconlm.tokenizer.falcon import FalconTokenizer

    if args.stream and len(args.prompt) > 1:
        raise FalconError("--stream prints one prompt at a time; pass a single --prompt")
    model = FalconForCausalLM.from_pretrained(args.checkpoint, dtype=args.dtype)
    tokenizer = FalconTokenizer.load(args.checkpoint)
    encoded = [tokenizer.encode(p) for p in args.prompt]
    if any(not ids for ids in encoded):
        raise FalconError("a prompt encodes to no tokens; give some text")
    width = max(map(len, encoded))
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.eot_id
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded])
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.temperature > 0,
        temperature=args.temperature if args.temperature > 0 else 1.0,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop_strings=args.stop,
        seed=args.seed,
    )
    rows: list[list[int]] = [[] for _ in encoded]
    finished = [False] * len(encoded)
    eos = set(config.eos_ids or ([model.config.eos_token_id] if isinstance(model.config.eos_token_id, int) else model.config.eos_token_id or []))
    printed = ""
    start = time.perf_counter()
    for step in stream_generate(model, input_ids, mask if len(encoded) > 1 else None, config, decode=tokenizer.decode):
        for i, token in enumerate(step.tolist()):
            if not finished[i]:
                rows[i].append(token)
                finished[i] = token in eos
        if args.stream:
            text = _visible(tokenizer.decode(rows[0], skip_special_tokens=True), args.stop)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                sys.stdout.write(text[len(printed):] if text.startswith(printed) else "\n" + text)
                sys.stdout.flush()
                printed = text
    elapsed = time.perf_counter() - start
    if args.stream:
        print()
    else:
        for prompt, row in zip(args.prompt, rows):
            print(prompt + _visible(tokenizer.decode(row, skip_special_tokens=True), args.stop))
            if len(rows) > 1:
                print("---")
    new = sum(map(len, rows))
    print(f"[{new} new tokens in {elapsed:.2f} s: {new / max(elapsed, 1e-9):.1f} tokens/s, batch {len(rows)}, {model.dtype}]", file=sys.stderr)
    return 0


def _visible(text: str, stops: list[str]) -> str:
    """The text cut before the first stop string."""
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text if cut < 0 else text[:cut]
