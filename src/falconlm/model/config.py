"""FalconConfig: Hugging Face field names, presets for every released model, config.json in and out."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falconlm.atomic import atomic_write_text
from falconlm.errors import FalconError

# model_type values written by the original custom code (RWForCausalLM) and by transformers.
FALCON_MODEL_TYPES = ("falcon", "RefinedWeb", "RefinedWebModel")
# Legacy RW spellings -> HF field names.
LEGACY_KEYS = {"n_embed": "hidden_size", "n_head": "num_attention_heads", "n_layer": "num_hidden_layers", "n_head_kv": "num_kv_heads"}
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic")


@dataclass
class FalconConfig:
    """The shape and flags of a Falcon model, field for field as transformers' FalconConfig."""

    vocab_size: int = 65024
    hidden_size: int = 4544
    num_hidden_layers: int = 32
    num_attention_heads: int = 71
    num_kv_heads: int | None = None  # None -> num_attention_heads (HF default)
    num_ln_in_parallel_attn: int | None = None  # None -> 2 with new_decoder_architecture
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    alibi: bool = False
    new_decoder_architecture: bool = False
    multi_query: bool = True
    parallel_attn: bool = True
    bias: bool = False
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "linear"|"dynamic", "factor": float}
    bos_token_id: int | None = 11
    eos_token_id: int | list[int] | None = 11
    pad_token_id: int | None = None
    ffn_hidden_size: int | None = None  # None -> 4 * hidden_size
    activation: str = "gelu"
    tie_word_embeddings: bool = True
    torch_dtype: str | None = None  # dtype the weights were saved in, informational
    quantization_config: dict[str, Any] | None = None  # GPTQ block of a quantized checkpoint (falconlm.quant.spec.QuantSpec)

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_attention_heads
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = 4 * self.hidden_size
        if self.num_ln_in_parallel_attn is None and self.new_decoder_architecture:
            self.num_ln_in_parallel_attn = 2
        self.validate()

    # ----- derived shape -----
    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary(self) -> bool:
        """RoPE unless ALiBi is on (as in HF)."""
        return not self.alibi

    @property
    def stored_kv_heads(self) -> int:
        """Key/value heads the model really has, in the fused QKV and in the KV cache.

        `num_kv_heads` is the raw config.json field, kept as HF writes it; it counts only under
        new_decoder_architecture. Otherwise there is 1 with multi_query, else one per query head.
        """
        if self.new_decoder_architecture:
            return int(self.num_kv_heads)
        return 1 if self.multi_query else self.num_attention_heads

    @property
    def qkv_out_features(self) -> int:
        """Rows of the fused query_key_value weight."""
        return (self.num_attention_heads + 2 * self.stored_kv_heads) * self.head_dim

    @property
    def block_style(self) -> str:
        """'parallel-1ln' (7B), 'parallel-2ln' (40B/180B) or 'sequential' (RW)."""
        if self.new_decoder_architecture:
            return "parallel-2ln" if self.num_ln_in_parallel_attn == 2 else "parallel-1ln"
        return "parallel-1ln" if self.parallel_attn else "sequential"

    def num_parameters(self) -> int:
        """Parameter count with tied embeddings counted once."""
        d, f, b = self.hidden_size, self.ffn_hidden_size, self.bias
        ln = 2 * d
        per_layer = d * self.qkv_out_features + d * d + 2 * d * f
        if b:
            per_layer += self.qkv_out_features + d + f + d
        per_layer += ln * (1 if self.block_style == "parallel-1ln" else 2)
        total = self.vocab_size * d + self.num_hidden_layers * per_layer + ln
        return total if self.tie_word_embeddings else total + self.vocab_size * d

    def validate(self) -> None:
        """Raise FalconError on an inconsistent shape."""
        if self.hidden_size % self.num_attention_heads:
            raise FalconError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
        if self.new_decoder_architecture and self.num_attention_heads % int(self.num_kv_heads):
            raise FalconError(f"num_attention_heads {self.num_attention_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.rotary and self.head_dim % 2:
            raise FalconError(f"rotary embeddings need an even head_dim, got {self.head_dim}")
        if self.activation not in ("gelu",):
            raise FalconError(f"activation {self.activation!r} is not supported (Falcon uses 'gelu')")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in SUPPORTED_ROPE_TYPES:
                raise FalconError(f"rope scaling type {kind!r} is not supported; use one of {SUPPORTED_ROPE_TYPES}")
            if kind != "default" and float(self.rope_scaling.get("factor", 0)) <= 1.0:
                raise FalconError(f"rope scaling factor must be a float > 1, got {self.rope_scaling.get('factor')!r}")

    # ----- config.json in and out -----
    def to_dict(self) -> dict[str, Any]:
        """The config.json content, readable by transformers 4.x and 5.x."""
        d = dataclasses.asdict(self)
        if d["torch_dtype"] is None:
            d.pop("torch_dtype")
        if d["rope_scaling"] is None:
            d.pop("rope_scaling")
        if d["quantization_config"] is None:
            d.pop("quantization_config")
        return {"architectures": ["FalconForCausalLM"], "model_type": "falcon", **d}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write config.json atomically."""
        path = Path(directory) / "config.json"
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> "FalconConfig":
        """Read an HF 4.x/5.x or legacy RefinedWeb config dict."""
        model_type = raw.get("model_type", "falcon")
        if model_type not in FALCON_MODEL_TYPES:
            raise FalconError(f"{source} describes a {model_type!r} model, not a Falcon model (model_type must be one of {', '.join(FALCON_MODEL_TYPES)})")
        d = dict(raw)
        legacy = model_type != "falcon" or any(k in d for k in LEGACY_KEYS)
        for old, new in LEGACY_KEYS.items():
            if old in d:
                d.setdefault(new, d.pop(old))
        if model_type == "RefinedWeb" or (legacy and "n_head_kv" in raw):
            # The 40B custom code implied the new decoder by the presence of n_head_kv.
            d.setdefault("new_decoder_architecture", "n_head_kv" in raw or model_type == "RefinedWeb")
        # transformers 5.x keeps rope settings in rope_parameters; 4.x uses rope_theta + rope_scaling.
        rope = d.pop("rope_parameters", None)
        if isinstance(rope, dict):
            d.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
            kind = rope.get("rope_type", rope.get("type", "default"))
            if kind != "default":
                d["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
        scaling = d.get("rope_scaling")
        if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "default":
            d["rope_scaling"] = None
        if "torch_dtype" not in d and "dtype" in d:
            d["torch_dtype"] = d["dtype"]
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise FalconError(f"{source} is not a valid Falcon config: {exc}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "FalconConfig":
        """Read a config.json file (or the one inside a directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FalconError(f"no config.json at {path}")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FalconError(f"{path} is not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise FalconError(f"{path} does not hold a JSON object")
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "FalconConfig":
        """A released model's config, or a tiny one for tests and demos."""
        if name not in PRESETS:
            raise FalconError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def load(cls, preset_or_path: str) -> "FalconConfig":
        """A preset name, a config.json path or a checkpoint directory."""
        if preset_or_path in PRESETS:
            return cls.from_preset(preset_or_path)
        return cls.from_json(preset_or_path)


_RW = dict(alibi=True, multi_query=False, parallel_attn=False, new_decoder_architecture=False, bias=True, bos_token_id=1, eos_token_id=2)
_7B = dict(multi_query=True, parallel_attn=True, new_decoder_architecture=False, bias=False)
_40B = dict(new_decoder_architecture=True, num_kv_heads=8, bias=False)

PRESETS: dict[str, dict[str, Any]] = {
    # Released models.
    "falcon-rw-1b": dict(vocab_size=50304, hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, **_RW),
    "falcon-rw-7b": dict(vocab_size=65024, hidden_size=4096, num_hidden_layers=36, num_attention_heads=64, **_RW),
    "falcon-7b": dict(vocab_size=65024, hidden_size=4544, num_hidden_layers=32, num_attention_heads=71, **_7B),
    "falcon-40b": dict(vocab_size=65024, hidden_size=8192, num_hidden_layers=60, num_attention_heads=128, **_40B),
    "falcon-180b": dict(vocab_size=65024, hidden_size=14848, num_hidden_layers=80, num_attention_heads=232, **_40B),
    # Benchmark shapes: small enough for a CPU, the released block styles.
    "bench-7b": dict(vocab_size=65024, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, **_7B),
    "bench-40b": dict(vocab_size=65024, hidden_size=1024, num_hidden_layers=16, num_attention_heads=16, **{**_40B, "num_kv_heads": 4}),
    # Tiny models of each block style, for tests and demos.
    "tiny-7b": dict(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512, **_7B),
    "tiny-40b": dict(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512, **{**_40B, "num_kv_heads": 2}),
    "tiny-rw": dict(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512, **_RW),
}

