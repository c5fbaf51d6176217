"""Will it fit? A memory estimate for a model before a command allocates it, against what the machine has.

`pretrain`, `finetune`, `init-model` and `serve` call `check_fits` with `training_bytes` or
`inference_bytes` of the model's FalconConfig before building anything, so a model too big for the
machine is refused in seconds with the figures, instead of being OOM-killed minutes later with no
message (`--force` tries anyway). The estimates are deliberately simple and on the low side of the
truth, so a refusal is certain to be right: weights, gradients and AdamW's two fp32 moments per
trainable parameter (sharded across ranks under FSDP), plus the activations a block keeps for backward.
Torch-free: the device's memory comes from /proc/meminfo and cgroups, or from torch only when the
device is CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falconlm.errors import FalconError

DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}


@dataclass(frozen=True)
class Estimate:
    """Bytes a run needs, by part."""

    parts: tuple[tuple[str, float], ...]  # (what, bytes)
    parameters: int

    @property
    def total(self) -> float:
        """All parts together."""
        return sum(b for _, b in self.parts)

    def describe(self) -> str:
        """'28.9 GB (7.22B parameters: weights 28.9 GB, ...)'."""
        inner = ", ".join(f"{what} {gb(b)}" for what, b in self.parts if b >= 1e6)
        return f"{gb(self.total)} ({self.parameters / 1e9:.2f}B parameters: {inner})"


def gb(n: float) -> str:
    """Bytes as GB (MB below one)."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def training_bytes(config: Any, seq_len: int, micro_batch: int, param_bytes: int = 4, trainable_fraction: float = 1.0,
                   shards: int = 1, activation_checkpointing: bool = False) -> Estimate:
    """What training needs per process: weights, gradients and AdamW moments of the trainable part, block activations."""
    n = config.num_parameters()
    trainable = n * trainable_fraction
    d, layers = config.hidden_size, config.num_hidden_layers
    # A block keeps roughly 16 hidden-size activations per token for backward (inputs of the fused
    # QKV, dense and both MLP matmuls, the 4x MLP intermediate); checkpointing keeps one per block.
    per_token = d * (1 if activation_checkpointing else 16) * layers * 4
    parts = (("weights", n * param_bytes / shards), ("gradients", trainable * param_bytes / shards),
             ("AdamW states", trainable * 8 / shards), ("activations", per_token * seq_len * micro_batch))
    return Estimate(parts, n)


def inference_bytes(config: Any, dtype: str | None = "float32", shards: int = 1, quantize: str | None = None) -> Estimate:
    """What holding the model for generation (or writing it) needs per process: its weights (a 1/shards slice under tensor parallelism).

    Quantized weights (a GPTQ checkpoint, or --quantize int8/int4) take bits/8 bytes each plus
    their group scales; the embeddings and norms stay at the compute dtype.
    """
    n = config.num_parameters()
    per = DTYPE_BYTES.get(str(dtype or "float32").replace("torch.", ""), 4)
    block = getattr(config, "quantization_config", None) or {}
    bits = {"int8": 8, "int4": 4}.get(quantize or "", block.get("bits"))
    if bits:
        embed = config.vocab_size * config.hidden_size
        return Estimate((("weights", (embed * per + (n - embed) * (bits / 8) * 1.07) / shards),), n)
    return Estimate((("weights", n * per / shards),), n)


def available_bytes(device: str = "cpu") -> tuple[float, str] | None:
    """(bytes this process may still allocate, where that figure comes from) on `device`, or None when it cannot be told."""
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info()
        return float(free), "free on the GPU"
    found = []
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        found.append((float(info["MemAvailable"].split()[0]) * 1024, "available RAM"))
    except (OSError, KeyError, ValueError):
        pass
    limit = _cgroup_limit()
    if limit is not None:
        found.append((limit, "left under this container's memory limit"))
    return min(found) if found else None


def _cgroup_limit() -> float | None:
    """Bytes left under a cgroup v2 (or v1) memory limit, or None without one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            raw = Path(limit_file).read_text().strip()
            if raw == "max" or int(raw) >= 1 << 60:
                return None
            return float(int(raw) - int(Path(usage_file).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def check_fits(estimate: Estimate, what: str, device: str = "cpu", force: bool = False, hint: str = "") -> None:
    """FalconError when `estimate` exceeds the memory `device` has left (unless force): the one refusal every command uses."""
    have = available_bytes(device)
    if force or have is None or estimate.total <= have[0]:
        return
    raise FalconError(
        f"{what} needs about {estimate.describe()} but this machine has {gb(have[0])} {have[1]}; "
        f"{hint + ', ' if hint else ''}or pass --force to try anyway"
    )

