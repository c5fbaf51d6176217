"""Throughput accounting (tokens/s, FLOPs, MFU against a measured matmul peak), metrics.jsonl, TensorBoard, plot."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from falconlm.atomic import atomic_write, atomic_write_text

def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token: 6 x parameters (matmuls, fwd + bwd) + 12 x layers x hidden x seq_len (attention).

    The PaLM appendix-B count; with tied embeddings the parameter count includes the LM head once,
    which is the matmul the embedding lookup never does.
    """
    return 6.0 * config.num_parameters() + 12.0 * config.num_hidden_layers * config.hidden_size * seq_len


def measure_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 3) -> float:
    """Best achieved FLOP/s of an n x n matmul on this device and dtype: the MFU denominator on machines without a spec sheet.

    Measured with the matmul the model itself runs (falconlm.model.linear: oneDNN on CPU in fp32),
    so MFU compares the model with its own kernel's peak.
    """
    from falconlm.model.linear import matmul_nt

    # A GPU finishes a 2048^3 product in microseconds, so launch and sync costs would dominate:
    # there, time a batch of large products between synchronisations.
    inner = 1
    if device.type == "cuda":
        n, inner = max(n, 8192), 10
    # Its own generator: drawing from the global one would move a run's RNG (LoRA dropout) on resume.
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    matmul_nt(a, b)  # warm-up
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(inner):
            matmul_nt(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / inner)
    return 2.0 * n**3 / best


class MetricsLog:
    """metrics.jsonl (always), TensorBoard (when installed and wanted), on rank 0 only."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool, resume_step: int = 0) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        # On resume, drop records past the checkpoint so the file reads like one uninterrupted run.
        if self.path.exists():
            keep = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in keep))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        """Append one JSON object and mirror scalars to TensorBoard."""
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot_loss_curve(metrics_path: str | os.PathLike, out_png: str | os.PathLike, unigram_entropy: float | None = None) -> Path | None:
    """Training and held-out loss against step, written atomically as a PNG; None without matplotlib or data."""
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if not train and not val:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="held-out loss")
    if unigram_entropy is not None:
        ax.axhline(unigram_entropy, color="gray", ls="--", label=f"unigram entropy {unigram_entropy:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))  # the temp name has no .png to go by
    plt.close(fig)
    return out


def format_duration(seconds: float) -> str:
    """h:mm:ss."""
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
