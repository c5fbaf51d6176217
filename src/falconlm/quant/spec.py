"""What a quantized checkpoint is: bits, group size, symmetry, act order, and the modules it covers.

`QuantSpec` is the one description; it reads and writes the GPTQ `quantization_config` block of
config.json (the format transformers, vLLM, TGI and gptqmodel load), so a checkpoint written by
`falconlm quantize` and one converted elsewhere are described the same way. Torch-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from falconlm.errors import FalconError

SUPPORTED_BITS = (4, 8)
# The linear layers of a block, by their HF names; the LM head is optional, embeddings stay.
BLOCK_LINEARS = ("self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
HEAD = "lm_head"


@dataclass(frozen=True)
class QuantSpec:
    """Weight-only quantization of Falcon's linear layers (GPTQ layout)."""

    bits: int = 8  # 8 or 4
    group_size: int = -1  # weights per (scale, zero) along the input dimension; -1 = one per output channel
    sym: bool = True  # symmetric: the zero point is the middle of the range
    desc_act: bool = False  # act order: columns quantized in order of decreasing Hessian diagonal (stored as g_idx)
    lm_head: bool = False  # quantize the LM head too
    method: str = "rtn"  # how the integers were chosen: rtn | gptq (recorded, not needed to load)
    damp_percent: float = 0.01  # GPTQ's dampening of the Hessian diagonal
    checkpoint_format: str = "gptq"  # 'gptq' stores zero points minus one (the format every loader reads); 'gptq_v2' stores them as they are

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise FalconError(f"{self.bits}-bit weights are not supported; falconlm reads and writes 4- and 8-bit GPTQ")
        if self.group_size != -1 and (self.group_size <= 0 or self.group_size % 16):
            raise FalconError(f"group size {self.group_size} is not supported; use -1 (per output channel) or a positive multiple of 16 such as 32, 64 or 128")
        if self.checkpoint_format not in ("gptq", "gptq_v2"):
            raise FalconError(f"checkpoint_format {self.checkpoint_format!r} is not supported; falconlm reads 'gptq' and 'gptq_v2'")
        if self.method not in ("rtn", "gptq"):
            raise FalconError(f"unknown quantization method {self.method!r}; use rtn or gptq")

    @property
    def maxq(self) -> int:
        """The largest stored integer."""
        return 2**self.bits - 1

    def group(self, in_features: int) -> int:
        """Weights per group for a layer of this width."""
        return in_features if self.group_size == -1 else self.group_size

    def covers(self, name: str) -> bool:
        """Whether the module with this HF name is quantized."""
        return name == HEAD and self.lm_head or any(name.endswith(suffix) for suffix in BLOCK_LINEARS)

    def to_config(self) -> dict[str, Any]:
        """The `quantization_config` block written to config.json."""
        return {
            "quant_method": "gptq",
            "bits": self.bits,
            "group_size": self.group_size,
            "sym": self.sym,
            "desc_act": self.desc_act,
            "lm_head": self.lm_head,
            "damp_percent": self.damp_percent,
            "true_sequential": True,
            "static_groups": False,
            "checkpoint_format": self.checkpoint_format,
            "meta": {"quantizer": ["falconlm"], "method": self.method},
        }

    @classmethod
    def from_config(cls, block: Any, source: str = "config.json") -> "QuantSpec":
        """Read a `quantization_config` block; anything falconlm cannot load is one sentence naming it."""
        if not isinstance(block, dict):
            raise FalconError(f"{source}: quantization_config must be a JSON object")
        method = str(block.get("quant_method", "gptq")).lower()
        if method != "gptq":
            raise FalconError(f"{source}: quant_method {method!r} is not supported; falconlm loads GPTQ checkpoints (quant_method 'gptq')")
        try:
            bits, group_size = int(block.get("bits", 4)), int(block.get("group_size", 128))
        except (TypeError, ValueError):
            raise FalconError(f"{source}: quantization_config bits and group_size must be integers") from None
        if bits not in SUPPORTED_BITS:
            raise FalconError(f"{source}: {bits}-bit GPTQ weights are not supported; falconlm loads 4- and 8-bit GPTQ")
        fmt = str(block.get("checkpoint_format", "gptq")).lower()
        meta = block.get("meta") if isinstance(block.get("meta"), dict) else {}
        return cls(
            bits=bits,
            group_size=group_size,
            sym=bool(block.get("sym", True)),
            desc_act=bool(block.get("desc_act", False)),
            lm_head=bool(block.get("lm_head", False)),
            method=meta.get("method", "gptq") if meta.get("method") in ("rtn", "gptq") else "gptq",
            damp_percent=float(block.get("damp_percent", 0.01)),
            checkpoint_format=fmt,
        )

    def describe(self) -> str:
        """'int4 g128 sym GPTQ' and the like."""
        group = "per channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"int{self.bits} {group} {'sym' if self.sym else 'asym'}{' act-order' if self.desc_act else ''} {self.method.upper()}"

    def replace(self, **changes: Any) -> "QuantSpec":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def parse_quantize(value: str | None) -> QuantSpec | None:
    """The `--quantize` load-time option: None, 'int8' (per channel) or 'int4' (g128), RTN, LM head included."""
    if value in (None, "", "none"):
        return None
    specs = {"int8": QuantSpec(bits=8, group_size=-1, lm_head=True), "int4": QuantSpec(bits=4, group_size=128, lm_head=True)}
    if value not in specs:
        raise FalconError(f"--quantize {value!r} is not a choice; use int8 or int4")
    return specs[value]
