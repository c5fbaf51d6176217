"""`falconlm evaluate CHECKPOINT_DIR`: perplexity / bits per byte on files, and lm-eval tasks."""

from __future__ import annotations

import argparse
import json
import os
import re
from unittest import mock
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
    quantize: str | None = None  # int8 | int4: quantize a full-precision checkpoint as it loads (round to nearest, LM head included)
    tp: int = 1  # tensor-parallel ranks; N > 1 runs under torchrun --nproc-per-node N, rank 0 evaluates
    out: str | None = None  # results JSON, with this config under "config" (None = CHECKPOINT/eval_results.json)

    def __post_init__(self) -> None:
        """Refuse values that cannot work before a model is loaded."""
        from falconlm.errors import FalconError

        for name, low in (("batch_size", 1), ("limit", 1), ("max_length", 2), ("stride", 1), ("num_fewshot", 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise FalconError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
        if self.stride is not None and self.max_length is not None and self.stride > self.max_length:
            raise FalconError(f"--stride {self.stride} is longer than --max-length {self.max_length}: windows would skip tokens")


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
    from falconlm.errors import FalconError
    from falconlm.model.config import FalconConfig

    cfg = config(args)
    if not cfg.data and not cfg.tasks:
        raise FalconError("nothing to evaluate: pass --data FILE... and/or --tasks NAME,...")
    context = FalconConfig.from_json(Path(cfg.checkpoint) / "config.json").max_position_embeddings if (Path(cfg.checkpoint) / "config.json").is_file() else None
    if context is not None and cfg.max_length is not None and cfg.max_length > context:
        raise FalconError(f"--max-length {cfg.max_length:,} exceeds the model's context of {context:,} tokens (max_position_embeddings); "
                          "scores past it would not measure the model")
    from falconlm.parallel import open_model

    with open_model(cfg.checkpoint, dtype=cfg.dtype, tp=cfg.tp, quantize=cfg.quantize) as model:
        return 0 if model is None else _evaluate(cfg, model)  # None: a follower rank, which ran rank 0's forwards


def _evaluate(cfg: EvalConfig, model) -> int:
    """Score the loaded model on cfg's data and tasks; print, and write the results JSON."""
    import dataclasses
    from itertools import islice

    from falconlm.atomic import atomic_write_text
    from falconlm.errors import FalconError
    from falconlm.tokenizer.falcon import FalconTokenizer

    tokenizer = FalconTokenizer.load(cfg.checkpoint)
    results: dict = {"checkpoint": str(cfg.checkpoint), "config": dataclasses.asdict(cfg)}
    if cfg.data:
        from falconlm.data.readers import ReadReport
        from falconlm.eval.perplexity import evaluate_perplexity
        from falconlm.tokenizer.corpus import expand_paths, iter_texts, text_key_hint

        report = ReadReport(strict=True)
        texts = iter_texts(expand_paths(cfg.data), text_key=cfg.text_key, report=report)
        if cfg.limit:
            texts = islice(texts, cfg.limit)
        ppl = evaluate_perplexity(model, tokenizer.encode, texts, tokenizer.eot_id, cfg.max_length, cfg.stride, cfg.batch_size)
        report.require_documents(hint=text_key_hint(cfg.text_key))
        if not ppl.tokens:
            raise FalconError(f"the {ppl.documents:,} document(s) of --data hold no token to score (all empty)")
        if report.summary():
            print(report.summary())
        results["perplexity"] = ppl.to_dict()
        results["skipped_input"] = report.to_dict()
        print(f"\n{'documents':>10s} {'tokens':>10s} {'loss':>8s} {'perplexity':>11s} {'bits/byte':>10s}")
        print(f"{ppl.documents:10d} {ppl.tokens:10d} {ppl.loss:8.4f} {ppl.perplexity:11.3f} {ppl.bits_per_byte:10.4f}")
    if cfg.tasks:
        results["tasks"] = run_tasks(model, tokenizer, cfg)
    out = Path(cfg.out or Path(cfg.checkpoint) / "eval_results.json")
    atomic_write_text(out, json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nresults written to {out}")
    return 0


def _offline_dataset_error(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says a dataset could not be fetched from the Hub."""
    names = ("ConnectionError", "LocalEntryNotFoundError", "OfflineModeIsEnabled", "DatasetNotFoundError")
    while exc is not None:
        if type(exc).__name__ in names or isinstance(exc, ConnectionError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


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
    import lm_eval.evaluator

    # lm-eval asks `git describe` for its results header, and git prints "fatal: not a git repository"
    # outside one; the hash is of no use here.
    with mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", lambda: None, create=True):
        try:
            out = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=cfg.num_fewshot, limit=cfg.limit, task_manager=manager, log_samples=False)
        except Exception as exc:
            if not _offline_dataset_error(exc):
                raise
            name = re.search(r"'([\w.-]+/[\w.-]+)'", str(exc))
            dataset = f"the dataset {name.group(1)}" if name else "its dataset"
            raise FalconError(
                f"lm-eval task {', '.join(tasks)} needs {dataset}, which is not in the local Hugging Face cache "
                f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and cannot be downloaded here: run it once where the Hub "
                "is reachable (without HF_DATASETS_OFFLINE=1) to cache it, or copy a cache into HF_HOME; the bundled tasks falconlm_mc and falconlm_cloze need nothing"
            ) from None
    metrics = {task: {k: v for k, v in values.items() if isinstance(v, (int, float)) and k != "alias"} for task, values in out["results"].items()}
    print(f"\n{'task':20s} {'metric':24s} {'value':>10s}")
    for task, values in metrics.items():
        for key, value in sorted(values.items()):
            print(f"{task:20s} {key:24s} {value:10.4f}")
    return metrics
