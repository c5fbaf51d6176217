"""What `falconlm inspect` says about a quantized checkpoint: its scheme and the bytes each layer takes on disk."""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from falconlm.model.checkpoint import checkpoint_files
from falconlm.model.config import FalconConfig
from falconlm.quant.spec import QuantSpec

_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I64": 8, "U8": 1, "I8": 1}


def tensor_bytes(directory: Path) -> dict[str, int]:
    """Bytes of every tensor, read from the safetensors headers only."""
    sizes: dict[str, int] = {}
    files = checkpoint_files(directory)
    for name in sorted(set(files.values())):
        with safe_open(str(directory / name), framework="pt") as f:
            for key in f.keys():
                s = f.get_slice(key)
                n = 1
                for d in s.get_shape():
                    n *= d
                sizes[key] = n * _BYTES.get(s.get_dtype(), 4)
    return sizes


def describe(directory: Path, config: FalconConfig) -> list[str]:
    """Lines naming the scheme, the bytes per module of one block, and the totals."""
    spec = QuantSpec.from_config(config.quantization_config, str(directory / "config.json"))
    sizes = tensor_bytes(directory)
    lines = [f"  quantized: {spec.describe()}, LM head {'quantized' if spec.lm_head else 'full precision'}, format {spec.checkpoint_format}"]
    modules: dict[str, int] = {}
    for key, n in sizes.items():
        if key.startswith("transformer.h.0."):
            module = key.removeprefix("transformer.h.0.").rpartition(".")[0]
            modules[module] = modules.get(module, 0) + n
    shown = [f"{m.rpartition('.')[2]} {n / 1e6:.2f} MB" for m, n in modules.items() if spec.covers(m)]
    lines.append("  block 0: " + ", ".join(shown))
    quantized = sum(n for k, n in sizes.items() if spec.covers(k.rpartition(".")[0]))
    total = sum(sizes.values())
    lines.append(f"  weights on disk {total / 1e6:,.1f} MB ({quantized / 1e6:,.1f} MB in quantized layers; {total / (config.num_parameters() * 2):.2f}x of bf16)")
    return lines
