"""A fine-tuning run: read and pack the data, then hand the pretraining loop a TrainTask (full weights or LoRA).

Outputs in OUT: checkpoints/step-N/ (full: an HF directory + trainer state; LoRA: the adapter +
trainer state), metrics.jsonl, loss_curve.png, run_config.yaml (the loop's TrainConfig),
finetune_config.yaml (everything), data_report.json (every reported line), and at the end
OUT/model (full) or OUT/adapter (LoRA), the final weights without the trainer state.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from falconlm.atomic import atomic_dir, atomic_write_text
from falconlm.errors import FalconError
from falconlm.finetune.config import FinetuneConfig
from falconlm.finetune.data import DataOptions, DataReport, Issue, read_samples
from falconlm.finetune.packing import SFTBatches
from falconlm.train.loop import RunResult

MAX_PRINTED_ISSUES = 20
REPORT_FILE = "data_report.json"


@dataclass
class FinetuneResult:
    """The loop's result, the data report, and where the final model or adapter was written."""

    run: RunResult
    report: DataReport
    rows: int
    output: Path | None


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class _IssuePrinter:
    """Prints the first reported lines as they are found, then only counts them (all go to data_report.json)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.count = enabled, 0

    def __call__(self, issue: Issue) -> None:
        self.count += 1
        if self.enabled and self.count <= MAX_PRINTED_ISSUES:
            print(f"data: {issue}", file=sys.stderr)


def _read(files: list[str], cfg: FinetuneConfig, template, tokenizer, eos_id: int, label: str, mix=None) -> tuple[SFTBatches, DataReport]:
    printer = _IssuePrinter(_is_main())
    options = DataOptions(max_tokens=cfg.train.seq_len + 1, on_overlong=cfg.on_overlong, on_bad=cfg.on_bad)
    samples, report = read_samples(files, template, tokenizer.encode, eos_id, options, on_issue=printer)
    if printer.count > MAX_PRINTED_ISSUES and _is_main():
        print(f"data: ... {printer.count - MAX_PRINTED_ISSUES} more reported lines in {Path(cfg.out) / REPORT_FILE}", file=sys.stderr)
    if not samples:
        raise FalconError(f"no usable {label} sample in {', '.join(files)} ({report.summary()})")
    return SFTBatches(samples, cfg.train.seq_len, eos_id, cfg.packing, cfg.train.seed, mix, cfg.mix_fraction), report


def _mix_windows(cfg: FinetuneConfig, tokenizer):
    """The pretraining windows mixed in (TokenWindows of --mix-pretrain), or None."""
    if not cfg.mix_pretrain or cfg.mix_fraction <= 0:
        return None
    from falconlm.train.data import TokenWindows
    from falconlm.train.shards import ShardIndex

    index = ShardIndex.load(cfg.mix_pretrain)
    if index.tokenizer_hash != tokenizer.fingerprint():
        raise FalconError(f"--mix-pretrain {cfg.mix_pretrain} was tokenized with another tokenizer than {cfg.checkpoint}'s (hash {index.tokenizer_hash} vs {tokenizer.fingerprint()})")
    return TokenWindows(cfg.mix_pretrain, "train", cfg.train.seq_len)


def _check_same_data(out: Path, fingerprint: str) -> None:
    """A resumed run must see the data it started with: the rows' hash is kept in data_report.json."""
    path = out / REPORT_FILE
    if not path.is_file():
        return
    before = json.loads(path.read_text()).get("rows_fingerprint")
    if before and before != fingerprint:
        raise FalconError(f"the training data differ from the run being resumed in {out} (files, options or seed changed); use another --out")


def _export(ckpt: Path, dest: Path, skip: tuple[str, ...]) -> Path:
    """Copy a checkpoint's files except the trainer state into dest (hard links where possible), replacing it atomically."""
    with atomic_dir(dest) as tmp:
        for f in ckpt.iterdir():
            if f.is_file() and not f.name.startswith(skip):
                try:
                    os.link(f, tmp / f.name)
                except OSError:
                    shutil.copy2(f, tmp / f.name)
        shutil.rmtree(dest, ignore_errors=True)  # the previous export, replaced when the new one is complete
    return dest


def finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Fine-tune cfg.checkpoint on cfg.data (every rank of a torchrun job calls this)."""
    from falconlm.tokenizer.chat_template import load_chat_template
    from falconlm.model.config import FalconConfig
    from falconlm.tokenizer.falcon import FalconTokenizer
    from falconlm.train.checkpoint import latest_checkpoint
    from falconlm.train.loop import pretrain
    from falconlm.train.task import TrainTask

    cfg.validate()
    base = Path(cfg.checkpoint)
    if not (base / "config.json").is_file():
        raise FalconError(f"{base} is not a checkpoint directory (no config.json)")
    mconfig = FalconConfig.from_json(base)
    tokenizer = FalconTokenizer.load(base)
    template = load_chat_template(base)
    eos = mconfig.eos_token_id
    eos_id = eos if isinstance(eos, int) else (eos[0] if eos else tokenizer.eot_id)
    out = Path(cfg.out)
    tc = cfg.train
    if not tc.resume and latest_checkpoint(out / "checkpoints") is not None:  # before this run writes anything there
        raise FalconError(f"{out / 'checkpoints'} already holds checkpoints; pass --resume to continue that run or choose another --out")

    batches, report = _read(cfg.data, cfg, template, tokenizer, eos_id, "training", _mix_windows(cfg, tokenizer))
    val = _read(cfg.val_data, cfg, template, tokenizer, eos_id, "held-out")[0].fixed_rows() if cfg.val_data else None
    rows = len(batches.layout(0)[0])
    per_epoch = batches.epoch_size(0)
    if tc.max_steps is None and tc.max_tokens is None:
        tc.max_steps = max(1, math.ceil(cfg.epochs * per_epoch / tc.global_batch_size))
    if cfg.warmup_fraction is not None:
        steps = tc.max_steps if tc.max_steps is not None else math.ceil(tc.max_tokens / (tc.global_batch_size * tc.seq_len))
        tc.warmup_tokens = float(int(cfg.warmup_fraction * steps) * tc.global_batch_size * tc.seq_len)
    if _is_main() and per_epoch < tc.global_batch_size:
        print(f"warning: an epoch holds {per_epoch:,} sequence(s), fewer than one optimizer step's --global-batch-size {tc.global_batch_size}, "
              f"so {cfg.epochs:g} epoch(s) make only {tc.max_steps or 1} step(s) (the warm-up barely starts); lower --global-batch-size "
              "(and --micro-batch-size) or set --max-steps", file=sys.stderr)
    fingerprint = batches.fingerprint()
    if _is_main():
        out.mkdir(parents=True, exist_ok=True)
        if tc.resume:
            _check_same_data(out, fingerprint)
        cfg.save(out / "finetune_config.yaml")
        atomic_write_text(out / REPORT_FILE, json.dumps({**report.to_dict(), "rows": rows, "rows_fingerprint": fingerprint}, indent=1) + "\n")
        mixed = f" + {per_epoch - rows} plain-text windows ({cfg.mix_fraction:.0%})" if per_epoch > rows else ""
        print(f"data: {report.summary()}")
        print(f"data: {rows} sequences of {tc.seq_len} tokens per epoch{mixed}, {'packed' if cfg.packing else 'padded'}, {batches.fill:.0%} filled; "
              f"template: {template.origin}")

    lora = cfg.lora
    load_model = write_model = None
    if lora is not None:
        from falconlm.finetune.lora import inject_lora, load_adapter, save_adapter
        from falconlm.model.falcon import FalconForCausalLM

        def load_model(resume_from, dtype, device):
            model = FalconForCausalLM.from_pretrained(base, dtype=dtype, device=device)
            inject_lora(model, lora, seed=tc.seed)
            if resume_from is not None:
                load_adapter(model, resume_from)
            return model

        def write_model(directory, state):
            save_adapter(directory, state, lora, base_model=str(base))

    def make_task(train_cfg, env) -> TrainTask:
        return TrainTask(
            name="finetune",
            batches=batches.split(env.rank, env.world, train_cfg.micro_batch_size),
            heldout=val,
            vocab_size=tokenizer.vocab_size,
            data_name=f"the tokenizer of {base}",
            description=f"{per_epoch:,} sequences per epoch ({'LoRA r=%d' % lora.rank if lora else 'full weights'})",
            tokenizer_dir=base,
            load_model=load_model,
            write_model=write_model,
            trainable_fraction=0.0 if lora else 1.0,  # LoRA trains adapters, a sliver of the weights
        )

    result = pretrain(tc, make_task)
    output = None
    if _is_main():
        final = result.checkpoint or latest_checkpoint(out / "checkpoints")
        if final is not None:
            output = _export(final, out / ("adapter" if lora else "model"), skip=("trainer_state", "rng-rank"))
            hint = f"falconlm merge-lora {base} {output} --out MERGED_DIR" if lora else f"falconlm chat {output}"
            print(f"finetune: {'adapter' if lora else 'model'} in {output}; next: {hint}")
    return FinetuneResult(result, report, rows, output)
