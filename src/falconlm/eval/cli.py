"""`falconlm evaluate CHECKPOINT_DIR`: perplexity / bits per byte on files, and lm-eval tasks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the evaluate options."""
    parser.add_argument("checkpoint", help="checkpoint directory (with tokenizer.json)")
    parser.add_argument("--data", nargs="+", default=[], help="JSONL(.zst)/Parquet/text files for loss, perplexity and bits per byte")
    parser.add_argument("--text-key", default="text")
    parser.add_argument("--tasks", default=None, help="comma-separated lm-eval tasks; bundled: falconlm_mc, falconlm_cloze")
    parser.add_argument("--num-fewshot", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="at most N documents / task examples")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=None, help="context per window (default: the model's)")
    parser.add_argument("--stride", type=int, default=None, help="sliding-window stride for long documents (default: half the context)")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--out", default=None, help="results JSON (default: CHECKPOINT/eval_results.json)")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print a table; results go to JSON."""
    from itertools import islice

    from falconlm.atomic import atomic_write_text
    from falconlm.errors import FalconError
    from falconlm.model.falcon import FalconForCausalLM
    from falconlm.tokenizer.falcon import FalconTokenizer

    if not args.data and not args.tasks:
        raise FalconError("nothing to evaluate: pass --data FILE... and/or --tasks NAME,...")
    model = FalconForCausalLM.from_pretrained(args.checkpoint, dtype=args.dtype)
    tokenizer = FalconTokenizer.load(args.checkpoint)
    results: dict = {"checkpoint": str(args.checkpoint)}
    if args.data:
        from falconlm.eval.perplexity import evaluate_perplexity
        from falconlm.tokenizer.corpus import expand_paths, iter_texts

        texts = iter_texts(expand_paths(args.data), text_key=args.text_key)
        if args.limit:
            texts = islice(texts, args.limit)
        ppl = evaluate_perplexity(model, tokenizer.encode, texts, tokenizer.eot_id, args.max_length, args.stride, args.batch_size)
        results["perplexity"] = ppl.to_dict()
        print(f"\n{'documents':>10s} {'tokens':>10s} {'loss':>8s} {'perplexity':>11s} {'bits/byte':>10s}")
        print(f"{ppl.documents:10d} {ppl.tokens:10d} {ppl.loss:8.4f} {ppl.perplexity:11.3f} {ppl.bits_per_byte:10.4f}")
    if args.tasks:
        results["tasks"] = run_tasks(model, tokenizer, [t.strip() for t in args.tasks.split(",") if t.strip()], args)
    out = Path(args.out or Path(args.checkpoint) / "eval_results.json")
    atomic_write_text(out, json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nresults written to {out}")
    return 0


def run_tasks(model, tokenizer, tasks: list[str], args: argparse.Namespace) -> dict:
    """Run lm-eval tasks through the falconlm adapter; print and return the metrics."""
    from falconlm.errors import FalconError

    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise FalconError("--tasks needs lm-eval: pip install 'falconlm[eval]'") from None
    from falconlm.eval.harness import FalconLM
    from falconlm.eval.tasks import TASKS, task_dir

    manager = TaskManager(include_path=str(task_dir()), include_defaults=any(t not in TASKS for t in tasks))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise FalconError(f"unknown lm-eval task {unknown[0]!r}")
    lm = FalconLM(model, tokenizer=tokenizer, batch_size=args.batch_size, max_length=args.max_length)
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=args.num_fewshot, limit=args.limit, task_manager=manager, log_samples=False)
    metrics = {task: {k: v for k, v in values.items() if isinstance(v, (int, float)) and k != "alias"} for task, values in out["results"].items()}
    print(f"\n{'task':20s} {'metric':24s} {'value':>10s}")
    for task, values in metrics.items():
        for key, value in sorted(values.items()):
            print(f"{task:20s} {key:24s} {value:10.4f}")
    return metrics
