"""`falconlm quickstart`: raw web pages to a trained, evaluated, talking Falcon, on the bundled sample.

refine (full RefinedWeb recipe incl. dedup) -> train-tokenizer -> tokenize -> pretrain a tiny
Falcon-7B-style model -> evaluate on the held-out documents -> generate. Every stage is the real
subcommand, run as its own process (so each shows its own progress); a finished stage leaves a
marker and is skipped when the quickstart is run again, and pretraining resumes from its last
checkpoint. The run ends with a text summary and DIR/report.html.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from falconlm.atomic import atomic_write_text
from falconlm.configure import add_config_arguments, config_from_args, save_config

CONFIG_FILE = "quickstart_config.yaml"  # the resolved config, in the run directory
PROMPTS = ["The Debian package", "To install the", "The configuration file"]


@dataclass
class QuickstartConfig:
    """The demo run: where it goes, and sizes small enough for a few minutes on 2 CPU cores."""

    out: str = "out/quickstart"  # run directory (rerun to resume)
    extractor: Literal["trafilatura", "resiliparse"] = "resiliparse"  # HTML to text in the refine stage
    progress_bar: bool = True  # progress bars (else logs only)
    vocab_size: int = 2048  # tokenizer vocabulary
    val_fraction: float = 0.15  # share of documents held out for evaluation
    hidden_size: int = 192  # width of the tiny Falcon-7B-style model
    num_layers: int = 4  # its blocks
    num_heads: int = 4  # its attention heads
    seq_len: int = 128  # tokens per training sequence (and the model's context)
    max_steps: int = 400  # pretraining steps
    global_batch_size: int = 16  # sequences per optimizer step
    micro_batch_size: int = 16  # sequences per forward/backward
    lr: float = 3e-3  # peak learning rate
    new_tokens: int = 40  # tokens generated per sample prompt
    workers: int = 2  # processes of the refine and tokenize stages


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the quickstart options: one per QuickstartConfig field, plus --config."""
    add_config_arguments(parser, QuickstartConfig, aliases={"progress_bar": "--no-progress"})


def run(args: argparse.Namespace) -> int:
    """Run every stage that has not finished yet, then summarise."""
    from falconlm.errors import FalconError

    cfg = config_from_args(QuickstartConfig, args)
    out = Path(cfg.out)
    (out / "markers").mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / CONFIG_FILE)
    quiet = [] if cfg.progress_bar else ["--no-progress"]
    timings: dict[str, float] = {}

    def stage(name: str, argv: list[str]) -> None:
        marker = out / "markers" / f"{name}.done"
        if marker.exists():
            print(f"[quickstart] {name}: already done, skipped")
            return
        print(f"\n[quickstart] {name}: falconlm {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "falconlm", *argv])
        if proc.returncode != 0:
            raise FalconError(f"stage {name} failed (exit {proc.returncode}); fix the cause and rerun: finished stages are kept")
        timings[name] = time.perf_counter() - start
        marker.write_text(json.dumps({"seconds": timings[name]}) + "\n")

    corpus = out / "refine" / "data"
    stage("refine", ["refine", "--sample", "--out", str(out / "refine"), "--workers", str(cfg.workers), "--extractor", cfg.extractor, *quiet])
    stage("train-tokenizer", ["train-tokenizer", str(corpus), "--vocab-size", str(cfg.vocab_size), "--out", str(out / "tokenizer")])
    stage("tokenize", ["tokenize", str(corpus), "--tokenizer", str(out / "tokenizer"), "--out", str(out / "tokens"), "--val-fraction", str(cfg.val_fraction), "--workers", str(cfg.workers)])
    model_config = _write_model_config(out, cfg)
    stage("pretrain", [
        "pretrain", "--model", str(model_config), "--data", str(out / "tokens"), "--out", str(out / "train"),
        "--max-steps", str(cfg.max_steps), "--seq-len", str(cfg.seq_len), "--global-batch-size", str(cfg.global_batch_size),
        "--micro-batch-size", str(cfg.micro_batch_size), "--batch-rampup-tokens", "0", "--lr", str(cfg.lr), "--min-lr", f"{cfg.lr / 10:g}",
        "--warmup-tokens", str(20 * cfg.global_batch_size * cfg.seq_len), "--log-interval", "25", "--eval-interval", "100",
        "--save-interval", "100", "--keep-last", "2", "--resume", *quiet,
    ])
    checkpoint = _latest_checkpoint(out / "train")
    heldout = _write_heldout(out, corpus, cfg.val_fraction)
    stage("evaluate", ["evaluate", str(checkpoint), "--data", str(heldout), "--tasks", "falconlm_cloze", "--out", str(out / "eval.json")])
    generations = _generate(checkpoint, cfg)
    summary = _summarise(out, checkpoint, generations)
    _write_report(out, summary, generations)
    print(summary["text"])
    print(f"\nreport: {out / 'report.html'}")
    return 0


def _write_model_config(out: Path, cfg: QuickstartConfig) -> Path:
    from falconlm.model.config import FalconConfig
    from falconlm.tokenizer.falcon import FalconTokenizer

    tokenizer = FalconTokenizer.load(out / "tokenizer")
    config = FalconConfig.from_preset(
        "tiny-7b", vocab_size=tokenizer.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, max_position_embeddings=cfg.seq_len, bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id,
    )
    (out / "model").mkdir(exist_ok=True)
    return config.save(out / "model")


def _latest_checkpoint(run_dir: Path) -> Path:
    from falconlm.errors import FalconError
    from falconlm.train.checkpoint import latest_checkpoint

    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise FalconError(f"pretraining left no checkpoint in {run_dir / 'checkpoints'}")
    return checkpoint


def _write_heldout(out: Path, corpus: Path, fraction: float) -> Path:
    """The held-out documents as JSONL: the same hash rule `tokenize` used for its val split."""
    from falconlm.tokenizer.corpus import expand_paths, iter_texts
    from falconlm.train.shards import is_heldout

    path = out / "heldout.jsonl"
    if not path.exists():
        texts = (t for t in iter_texts(expand_paths([str(corpus)])) if is_heldout(t, fraction))
        atomic_write_text(path, "".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _generate(checkpoint: Path, cfg: QuickstartConfig) -> list[tuple[str, str]]:
    import torch

    from falconlm.decoding.generate import generate
    from falconlm.model.falcon import FalconForCausalLM
    from falconlm.tokenizer.falcon import FalconTokenizer

    model = FalconForCausalLM.from_pretrained(checkpoint)
    tokenizer = FalconTokenizer.load(checkpoint)
    print("\n[quickstart] generate: greedy continuations from the trained checkpoint")
    results = []
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        out = generate(model, torch.tensor([ids]), max_new_tokens=cfg.new_tokens, repetition_penalty=1.2)
        text = tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)
        results.append((prompt, text))
        print(f"  {prompt!r} -> {text!r}")
    return results


def _summarise(out: Path, checkpoint: Path, generations: list[tuple[str, str]]) -> dict:
    from falconlm.train.data import unigram_entropy
    from falconlm.train.metrics import read_metrics

    stats = json.loads((out / "refine" / "stats.json").read_text())
    index = json.loads((out / "tokens" / "index.json").read_text())
    metrics = read_metrics(out / "train" / "metrics.jsonl")
    evaluation = json.loads((out / "eval.json").read_text())
    train_loss = next((r["loss"] for r in reversed(metrics) if r.get("loss") is not None), float("nan"))
    val_loss = next((r["val_loss"] for r in reversed(metrics) if r.get("val_loss") is not None), float("nan"))
    rates = [r["tokens_per_s"] for r in metrics if r.get("tokens_per_s")]
    entropy = unigram_entropy(out / "tokens", "train")
    ppl = evaluation["perplexity"]
    lines = ["", "=" * 72, "falconlm quickstart: summary", "=" * 72, "Refinement (documents kept per stage):"]
    for step in stats["steps"]:
        lines.append(f"  {step['name']:18s} {step['docs_in']:6d} -> {step['docs_out']:6d}")
    lines += [
        f"Tokens: {sum(s['tokens'] for s in index['splits']['train']):,} train / {sum(s['tokens'] for s in index['splits']['val']):,} held-out (vocab {index['vocab_size']:,})",
        f"Pretraining: final train loss {train_loss:.3f}, held-out loss {val_loss:.3f} nats/token, {sum(rates) / max(len(rates), 1):,.0f} tokens/s",
        f"Evaluation on {ppl['documents']} held-out documents: loss {ppl['loss']:.3f}, perplexity {ppl['perplexity']:.1f}, {ppl['bits_per_byte']:.3f} bits/byte",
        f"Unigram entropy of the training tokens: {entropy:.3f} nats/token  (held-out loss {'below' if ppl['loss'] < entropy else 'NOT below'} it)",
        "Artifacts:",
        f"  corpus {out / 'refine' / 'data'}   refine report {out / 'refine' / 'report.html'}",
        f"  tokenizer {out / 'tokenizer'}   token shards {out / 'tokens'}",
        f"  checkpoint {checkpoint}   metrics {out / 'train' / 'metrics.jsonl'}   eval {out / 'eval.json'}",
    ]
    return {"text": "\n".join(lines), "stats": stats, "train_loss": train_loss, "val_loss": val_loss, "entropy": entropy, "eval": evaluation, "checkpoint": str(checkpoint)}


def _img(path: Path) -> str:
    if not path.is_file():
        return f"<p>(no {html.escape(path.name)})</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def _write_report(out: Path, summary: dict, generations: list[tuple[str, str]]) -> None:
    from falconlm.train.metrics import plot_loss_curve

    curve = out / "loss_curve.png"
    plot_loss_curve(out / "train" / "metrics.jsonl", curve, unigram_entropy=summary["entropy"])
    rows = "".join(
        f"<tr><td>{html.escape(s['name'])}</td><td>{s['docs_in']}</td><td>{s['docs_out']}</td><td>{html.escape(', '.join(f'{k} {v}' for k, v in sorted(s['dropped'].items(), key=lambda kv: -kv[1])[:4]))}</td></tr>"
        for s in summary["stats"]["steps"]
    )
    gens = "".join(f"<tr><td><b>{html.escape(p)}</b></td><td>{html.escape(t)}</td></tr>" for p, t in generations)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>falconlm quickstart</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}}pre{{background:#f6f6f6;padding:1em}}</style></head><body>
<h1>falconlm quickstart</h1><pre>{html.escape(summary['text'])}</pre>
<h2>Refinement funnel</h2>{_img(out / 'refine' / 'funnel.png')}
<table><tr><th>stage</th><th>in</th><th>out</th><th>top drop reasons</th></tr>{rows}</table>
<h2>Loss curves</h2>{_img(curve)}
<h2>Sample generations (greedy, repetition penalty 1.2)</h2><table>{gens}</table>
</body></html>"""
    atomic_write_text(out / "report.html", page)
