"""`falconlm generate CHECKPOINT_DIR --prompt ...`: text from a checkpoint, streamed or at once, with tokens/s.

Its flags come from `GenerateCommand` through falconlm.configure: the generation settings are
GenerationConfig's own fields (`--generation.top-p`, also spelled `--top-p`), as everywhere else.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

from falconlm.configure import add_config_arguments, config_from_args
from falconlm.decoding.settings import GenerationConfig

# GenerationConfig fields a command line does not set: sampling is on (temperature 0 is greedy),
# eos and pad come from the checkpoint, logprobs are the server's.
NOT_FLAGS = tuple(f"generation.{name}" for name in ("do_sample", "eos_token_id", "pad_token_id", "logprobs", "prompt_logprobs"))
GENERATION_ALIASES = {
    f"generation.{name}": "--" + name.replace("_", "-")
    for name in ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed", "ignore_eos", "screen_head")
} | {"generation.stop_strings": "--stop"}


@dataclass
class GenerateCommand:
    """What `falconlm generate` loads, prints, and how it picks tokens."""

    checkpoint: str  # checkpoint directory (config.json, safetensors, tokenizer.json)
    prompt: list[str] = field(default_factory=list)  # prompt text; several make a batch
    dtype: str | None = None  # float32 | bfloat16 | float16; None: as saved
    quantize: str | None = None  # int8 | int4: quantize a full-precision checkpoint as it loads (round to nearest, LM head included)
    stream: bool = False  # print the text as it is generated (one prompt)
    tp: int = 1  # tensor-parallel ranks; N > 1 runs under torchrun --nproc-per-node N, rank 0 prints
    generation: GenerationConfig = field(default_factory=GenerationConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the generate options: one per GenerateCommand field, plus --config."""
    add_config_arguments(parser, GenerateCommand, aliases=GENERATION_ALIASES, skip=NOT_FLAGS, positional=("checkpoint",),
                         defaults={"generation.temperature": 0.0, "generation.do_sample": True})


def run(args: argparse.Namespace) -> int:
    """Load, generate, print the text and a tokens/s line."""
    from falconlm.errors import FalconError
    from falconlm.parallel import open_model

    cmd = config_from_args(GenerateCommand, args)
    if not cmd.prompt:
        raise FalconError("give the text to continue with --prompt (several for a batch)")
    if cmd.stream and len(cmd.prompt) > 1:
        raise FalconError("--stream prints one prompt at a time; pass a single --prompt")
    cmd.generation.validate()
    with open_model(cmd.checkpoint, dtype=cmd.dtype, tp=cmd.tp, quantize=cmd.quantize) as model:
        return 0 if model is None else _generate(cmd, model)  # None: a follower rank, which ran rank 0's steps


def _generate(cmd: GenerateCommand, model) -> int:
    """Generate from the loaded model; print the text and a tokens/s line."""
    from falconlm.decoding.generate import TextStream
    from falconlm.tokenizer.falcon import FalconTokenizer

    tokenizer = FalconTokenizer.load(cmd.checkpoint)
    stream = TextStream(model, tokenizer, [tokenizer.encode(p) for p in cmd.prompt], cmd.generation)
    if cmd.stream:  # the same text as without --stream: the prompt, then its continuation as it comes
        sys.stdout.write(cmd.prompt[0])
        sys.stdout.flush()
    start = time.perf_counter()
    for deltas in stream:
        if cmd.stream and deltas[0]:
            sys.stdout.write(deltas[0])
            sys.stdout.flush()
    elapsed = time.perf_counter() - start
    results = stream.completions
    if cmd.stream:
        print()
    else:
        for prompt, result in zip(cmd.prompt, results):
            print(prompt + result.text)
            if len(results) > 1:
                print("---")
    new = sum(len(r.tokens) for r in results)
    print(f"[{new} new tokens in {elapsed:.2f} s: {new / max(elapsed, 1e-9):.1f} tokens/s, batch {len(results)}, {model.dtype}]", file=sys.stderr)
    return 0
