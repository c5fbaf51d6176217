"""`falconlm evaluate CHECKPOINT_DIR`: perplexity / bits per byte on files, and lm-eval tasks."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from falconlm.configure import add_config_arguments, config_from_args


@dataclass
class EvalConfig:
    """What to evaluate: a checkpoint on held-out files and/or lm-eval tasks."""

    checkpoint: str  # checkpoint directory (with tokenizer.json)
    data: list[str] = field(default_factory=list)  # JSONL(.zst)/Parquet/text files for loss, perplexity and bits per byte
    text_key: str = "text"  # JSON/Parquet field holding the text
    tasks: list[str] = field(default_factory=list)  # lm-eval tasks, repeated or comma-separated; bundled: falconlm_mc, falconlm_cloze
    num_fewshot: int = 0  # few-shot examples per task prompt
    limit: int | None = None  # at most N documents / task examples (None = all)
    batch_size: int = 8  # windows or requests per forward pass
    max_length: int | None = None  # context per window (None = the model's)
    stride: int | None = None  # sliding-window stride for long documents (None = half the context)
    dtype: str | None = None  # float32 | bfloat16 | float16 (None = as saved)
    out: str | None = None  # results JSON, with this config under "config" (None = CHECKPOINT/eval_results.json)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the evaluate options: one per EvalConfig field, plus --config."""
    add_config_arguments(parser, EvalConfig, positional=("checkpoint",))


def config(args: argparse.Namespace) -> EvalConfig:
    """The run's EvalConfig: defaults < --config file < flags; comma-separated tasks split."""
    cfg = config_from_args(EvalConfig, args)
    cfg.tasks = [t.strip() for item in cfg.tasks for t in item.split(",") if t.strip()]
    return cfg


def run(args: argparse.Namespace) -> int:
    """Evaluate and print a table; results (and the resolved config) go to JSON."""
    import dataclasses
    from itertools import islice

    from falconlm.atomic import atomic_write_text
    from falconlm.errors import FalconError
    from falconlm.model.falcon import FalconForCausalLM
    from falconlm.tokenizer.falcon import FalconTokenizer

    cfg = config(args)
    if not cfg.data and not cfg.tasks:
        raise FalconError("nothing to evaluate: pass --data FILE... and/or --tasks NAME,...")
    model = FalconForCausalLM.from_pretrained(cfg.checkpoint, dtype=cfg.dtype)
    tokenizer = FalconTokenizer.load(cfg.checkpoint)
    results: dict = {"checkpoint": str(cfg.checkpoint), "config": dataclasses.asdict(cfg)}
    if cfg.data:
        from falconlm.eval.perplexity import evaluate_perplexity
        from falconlm.tokenizer.corpus import expand_paths, iter_texts

        texts = iter_texts(expand_paths(cfg.data), text_key=cfg.text_key)
        if cfg.limit:
            texts = islice(texts, cfg.limit)
        ppl = evaluate_perplexity(model, tokenizer.encode, texts, tokenizer.eot_id, cfg.max_length, cfg.stride, cfg.batch_size)
        results["perplexity"] = ppl.to_dict()
        print(f"\n{'documents':>10s} {'tokens':>10s} {'loss':>8s} {'perplexity':>11s} {'bits/byte':>10s}")
        print(f"{ppl.documents:10d} {ppl.tokens:10d} {ppl.loss:8.4f} {ppl.perplexity:11.3f} {ppl.bits_per_byte:10.4f}")
    if cfg.tasks:
        results["tasks"] = run_tasks(model, tokenizer, cfg)
    out = Path(cfg.out or Path(cfg.checkpoint) / "eval_results.json")
    atomic_write_text(out, json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nresults written to {out}")
    return 0


def run_tasks(model, tokenizer, cfg: EvalConfig) -> dict:
    """Run lm-eval tasks through the falconlm adapter; print and return the metrics."""
    from falconlm.errors import FalconError

    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise FalconError("--tasks needs lm-eval: pip install 'falconlm[eval]'") from None
    from falconlm.eval.harness import FalconLM
    from falconlm.eval.tasks import TASKS, task_dir

    tasks = cfg.tasks
    manager = TaskManager(include_path=str(task_dir()), include_defaults=any(t not in TASKS for t in tasks))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise FalconError(f"unknown lm-eval task {unknown[0]!r}")
    lm = FalconLM(model, tokenizer=tokenizer, batch_size=cfg.batch_size, max_length=cfg.max_length)
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=cfg.num_fewshot, limit=cfg.limit, task_manager=manager, log_samples=False)
    metrics = {task: {k: v for k, v in values.items() if isinstance(v, (int, float)) and k != "alias"} for task, values in out["results"].items()}
    print(f"\n{'task':20s} {'metric':24s} {'value':>10s}")
    for task, values in metrics.items():
        for key, value in sorted(values.items()):
            print(f"{task:20s} {key:24s} {value:10.4f}")
    return metrics
