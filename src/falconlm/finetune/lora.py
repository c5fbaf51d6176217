"""LoRA for Falcon's linear layers, saved in PEFT's on-disk format so `peft` loads our adapters as they are.

A LoRALinear replaces a FalconLinear in place and keeps its `weight` and `bias` parameters (so the
base state-dict keys do not change) frozen, adding `lora_A` (rank x in) and `lora_B` (out x rank):

    y = x W^T + b + (alpha / rank) * dropout(x) A^T B^T

with A initialised as PEFT does (Kaiming-uniform, a = sqrt(5)) and B = 0, so training starts from
the base model. An adapter directory holds `adapter_config.json` and `adapter_model.safetensors`
with PEFT's key names (`base_model.model.<module>.lora_A.weight`); merging adds
(alpha / rank) B A to each weight, giving a plain Falcon checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from falconlm.atomic import atomic_write, atomic_write_text
from falconlm.errors import FalconError
from falconlm.model.falcon import FalconLinear
from falconlm.model.linear import linear

DEFAULT_TARGETS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


@dataclass
class LoRAConfig:
    """Rank, scale, dropout and the linear layers (by module name suffix) that get an adapter."""

    rank: int = 8  # adapter rank r
    alpha: float = 16.0  # scale alpha; the update is alpha/r * B A
    dropout: float = 0.05  # dropout on the adapter input
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))  # layer names (module name suffixes)

    def validate(self) -> None:
        """Raise FalconError on values that cannot work."""
        if self.rank < 1:
            raise FalconError(f"--lora-rank must be at least 1, got {self.rank}")
        if self.alpha <= 0:
            raise FalconError(f"--lora-alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise FalconError(f"--lora-dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise FalconError("--lora-targets names no layer")

    @property
    def scaling(self) -> float:
        """alpha / rank, the factor on the low-rank update."""
        return self.alpha / self.rank


class LoRALinear(FalconLinear):
    """A frozen FalconLinear plus a trainable low-rank update (fp32 adapters whatever the base dtype)."""

    def __init__(self, base: FalconLinear, rank: int, alpha: float, dropout: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        device = base.weight.device
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, device=device, dtype=torch.float32)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, device=device, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus scaling * B(A(dropout(x)))."""
        y = super().forward(x)
        a = self.lora_A.weight
        update = linear(linear(self.lora_dropout(x).to(a.dtype), a), self.lora_B.weight)
        return y + (update * self.scaling).to(y.dtype)

    def merged(self) -> FalconLinear:
        """A plain FalconLinear whose weight is W + scaling * B A (computed in fp32)."""
        out = FalconLinear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        delta = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling
        out.weight = nn.Parameter((self.weight.float() + delta).to(self.weight.dtype), requires_grad=False)
        out.bias = self.bias
        return out


def _targets(model: nn.Module, targets: list[str]) -> list[tuple[str, nn.Module, str]]:
    """(qualified name, parent module, attribute) of every FalconLinear whose name ends with a target."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, FalconLinear) and not isinstance(module, LoRALinear) and name.rsplit(".", 1)[-1] in targets:
            parent_name, _, attr = name.rpartition(".")
            found.append((name, model.get_submodule(parent_name), attr))
    return found


def inject_lora(model: nn.Module, config: LoRAConfig, seed: int | None = None) -> list[str]:
    """Freeze every parameter of the model and put a LoRALinear on each target layer; returns their names."""
    config.validate()
    available = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, FalconLinear)})
    unknown = [t for t in config.targets if t not in available]
    if unknown:
        raise FalconError(f"--lora-targets: no linear layer is named {unknown[0]!r}; Falcon's are {', '.join(available)}")
    for p in model.parameters():
        p.requires_grad_(False)
    if seed is not None:
        torch.manual_seed(seed)
    names = []
    for name, parent, attr in _targets(model, config.targets):
        setattr(parent, attr, LoRALinear(getattr(parent, attr), config.rank, config.alpha, config.dropout))
        names.append(name)
    return names


def lora_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter tensors of a model state dict, under PEFT's key names."""
    return {PEFT_PREFIX + k: v for k, v in state.items() if ".lora_A." in k or ".lora_B." in k}


def adapter_config(config: LoRAConfig, base_model: str | None) -> dict:
    """PEFT's adapter_config.json for these settings."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted(config.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }


def save_adapter(directory: str | os.PathLike, state: dict[str, torch.Tensor], config: LoRAConfig, base_model: str | None = None) -> Path:
    """Write adapter_config.json + adapter_model.safetensors (PEFT format) from a model state dict."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in lora_state_dict(state).items()}
    if not tensors:
        raise FalconError("the model holds no LoRA adapter to save")
    atomic_write(out / ADAPTER_WEIGHTS, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write_text(out / ADAPTER_CONFIG, json.dumps(adapter_config(config, base_model), indent=2) + "\n")
    return out


def read_adapter_config(directory: str | os.PathLike) -> LoRAConfig:
    """The LoRAConfig of an adapter directory (ours or PEFT's), refusing what we do not implement."""
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise FalconError(f"{directory} is not a LoRA adapter directory: no {ADAPTER_CONFIG}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FalconError(f"{path} is not valid JSON ({exc})") from None
    if raw.get("peft_type", "LORA") != "LORA":
        raise FalconError(f"{path}: only LoRA adapters are supported, this one is {raw.get('peft_type')}")
    for key in ("use_dora", "use_rslora", "fan_in_fan_out"):
        if raw.get(key):
            raise FalconError(f"{path}: {key}=true is not supported")
    if raw.get("rank_pattern") or raw.get("alpha_pattern") or raw.get("layers_to_transform") or raw.get("modules_to_save"):
        raise FalconError(f"{path}: per-layer ranks, layer subsets and modules_to_save are not supported")
    if raw.get("bias", "none") != "none":
        raise FalconError(f"{path}: trained biases (bias={raw['bias']!r}) are not supported")
    targets = raw.get("target_modules")
    if isinstance(targets, str) or not targets:
        raise FalconError(f"{path}: target_modules must be a list of layer names")
    return LoRAConfig(rank=int(raw["r"]), alpha=float(raw["lora_alpha"]), dropout=float(raw.get("lora_dropout", 0.0)), targets=list(targets))


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> LoRAConfig:
    """Put the adapter of a directory on the model (injecting LoRA layers if needed), checking every tensor."""
    from safetensors.torch import load_file

    config = read_adapter_config(directory)
    if not any(isinstance(m, LoRALinear) for m in model.modules()):
        inject_lora(model, config)
    file = Path(directory) / ADAPTER_WEIGHTS
    if not file.is_file():
        raise FalconError(f"{directory} has no {ADAPTER_WEIGHTS}")
    loaded = load_file(str(file))
    expected = {k: v for k, v in lora_state_dict(model.state_dict()).items()}
    # PEFT keeps an adapter name in memory (lora_A.default.weight) but never on disk; accept both.
    loaded = {k.replace(".default.", "."): v for k, v in loaded.items()}
    missing, unknown = sorted(set(expected) - set(loaded)), sorted(set(loaded) - set(expected))
    if missing or unknown:
        what = f"is missing {missing[0]!r}" if missing else f"has {unknown[0]!r}, which this model does not have"
        raise FalconError(f"{file} {what} (do the base model and the adapter's target_modules match?)")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, tensor in loaded.items():
            target = params[key.removeprefix(PEFT_PREFIX)]
            if tensor.shape != target.shape:
                raise FalconError(f"{file}: {key} has shape {tuple(tensor.shape)}, the model expects {tuple(target.shape)} (rank or base model differ)")
            target.copy_(tensor)
    return config


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRALinear into a plain FalconLinear in place; returns how many were merged."""
    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, module.merged())
            merged += 1
    return merged
