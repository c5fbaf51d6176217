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
    from falconlm.decoding.generate import TextStream
    from falconlm.decoding.settings import GenerationConfig
    from falconlm.errors import FalconError
    from falconlm.model.falcon import FalconForCausalLM
    from falconlm.tokenizer.falcon import FalconTokenizer

    if args.stream and len(args.prompt) > 1:
        raise FalconError("--stream prints one prompt at a time; pass a single --prompt")
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=True,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop_strings=args.stop,
        seed=args.seed,
    )
    config.validate()
    model = FalconForCausalLM.from_pretrained(args.checkpoint, dtype=args.dtype)
    tokenizer = FalconTokenizer.load(args.checkpoint)
    stream = TextStream(model, tokenizer, [tokenizer.encode(p) for p in args.prompt], config)
    start = time.perf_counter()
    for deltas in stream:
        if args.stream and deltas[0]:
            sys.stdout.write(deltas[0])
            sys.stdout.flush()
    elapsed = time.perf_counter() - start
    results = stream.completions
    if args.stream:
        print()
    else:
        for prompt, result in zip(args.prompt, results):
            print(prompt + result.text)
            if len(results) > 1:
                print("---")
    new = sum(len(r.tokens) for r in results)
    print(f"[{new} new tokens in {elapsed:.2f} s: {new / max(elapsed, 1e-9):.1f} tokens/s, batch {len(results)}, {model.dtype}]", file=sys.stderr)
    return 0
