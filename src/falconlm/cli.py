"""The `falconlm` command: a table of subcommands, each a module with `add_arguments` and `run`.

Subcommand modules keep heavy imports (torch, trafilatura, ...) inside `run`, so
`falconlm refine --help` starts fast and the data pipeline never imports torch.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

# name -> (module, one-line help). Each module defines add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("falconlm.decoding.generate_cli", "generate text from a checkpoint directory"),
    "init-model": ("falconlm.model.cli", "write a randomly initialised Falcon checkpoint from a preset"),
    "inspect": ("falconlm.model.cli", "describe a checkpoint directory or preset"),
    "quantize": ("falconlm.quant.cli", "write an int8/int4 GPTQ-format copy of a checkpoint (round-to-nearest or GPTQ)"),
    "evaluate": ("falconlm.eval.cli", "perplexity, bits per byte and lm-eval tasks for a checkpoint"),
    "quickstart": ("falconlm.quickstart", "raw web pages to a trained, evaluated, talking Falcon on the bundled sample"),
    "parity": ("falconlm.demo", "check every Falcon block style against transformers (save, reload, compare, generate)"),
    "refine": ("falconlm.data.cli", "refine raw web pages (WARC/JSONL/Parquet) into clean text shards (RefinedWeb)"),
    "dedup": ("falconlm.data.dedup.cli", "deduplicate JSONL/Parquet shards: MinHash LSH, exact substrings, URLs"),
    "train-tokenizer": ("falconlm.tokenizer.cli", "train a Falcon-style byte-level BPE tokenizer on a corpus"),
    "tokenize": ("falconlm.train.tokenize_cli", "encode a corpus into packed token shards + index"),
    "pretrain": ("falconlm.train.cli", "pretrain a Falcon model (one process or torchrun DDP/FSDP2)"),
    "serve": ("falconlm.serve.cli", "serve a checkpoint over an OpenAI-compatible HTTP API (continuous batching)"),
    "finetune": ("falconlm.finetune.cli", "supervised fine-tuning on chat/instruction JSONL, full weights or LoRA (also under torchrun)"),
    "merge-lora": ("falconlm.finetune.merge", "fold a LoRA adapter into its base checkpoint (a plain HF Falcon directory)"),
    "chat": ("falconlm.decoding.chat", "interactive terminal chat with a checkpoint, streamed, multi-turn"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; only the chosen subcommand's module is imported."""
    parser = argparse.ArgumentParser(prog="falconlm", description="The Falcon LLM system end to end.")
    from falconlm import __version__

    parser.add_argument("--version", action="version", version=f"falconlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: every failure with a known cause ends as one sentence on stderr."""
    from falconlm.errors import user_message

    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(import_module(COMMANDS[args.command][0]).run(args) or 0)
    except KeyboardInterrupt:
        print(f"falconlm {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_went_away()
    except Exception as exc:
        message = user_message(exc)
        if message is None:
            raise  # a bug: its traceback is what a report needs
        print(f"falconlm {args.command}: error: {message}", file=sys.stderr)
        return 1


def _reader_went_away() -> int:
    """stdout's reader closed the pipe (`falconlm inspect ... | head`): stop quietly, as Unix tools do."""
    import os

    # Python flushes stdout again at exit; point it at /dev/null so that flush cannot fail too.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the closed pipe


if __name__ == "__main__":
    sys.exit(main())
