"""Loading into quantized layers, tensor by tensor: GPTQ checkpoints, or full-precision ones quantized as read.

`load_pretrained` (falconlm.model.checkpoint) builds the model on the meta device and reads one
tensor at a time; a `QuantLoadPlan` takes the tensors of the covered linear layers from that stream
(GPTQ's qweight/qzeros/scales/g_idx, or a float weight it rounds at once), so neither path ever
holds the full-precision model in memory. `install` then puts a QuantLinear in each layer's place.
With a tied, quantized LM head the token embeddings are read from the same quantized table.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from falconlm.errors import FalconError
from falconlm.model.config import FalconConfig
from falconlm.quant.gptq_format import from_gptq
from falconlm.quant.linear import QuantEmbedding, QuantLinear
from falconlm.quant.spec import HEAD, QuantSpec, parse_quantize

EMBED_KEY = "transformer.word_embeddings.weight"
REQUIRED, OPTIONAL = ("qweight", "qzeros", "scales"), ("g_idx",)


def covered_linears(model: nn.Module, spec: QuantSpec) -> dict[str, nn.Linear]:
    """The model's linear layers this spec quantizes, by HF module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and spec.covers(name)}


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at the dotted path `name`."""
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def tie_quantized_embedding(model: nn.Module) -> None:
    """Serve the token embeddings from a tied, quantized LM head (one table in memory, as llama.cpp does)."""
    if model.config.tie_word_embeddings and isinstance(model.lm_head, QuantLinear):
        model.transformer.word_embeddings = QuantEmbedding(model.lm_head, model.dtype)


class QuantLoadPlan:
    """Collects the covered layers' tensors from the checkpoint stream and builds their QuantLinears."""

    def __init__(self, spec: QuantSpec, stored: bool, model: nn.Module):
        self.spec, self.stored = spec, stored
        self.shapes = {name: (m.in_features, m.out_features, m.bias is not None) for name, m in covered_linears(model, spec).items()}
        self.tied_head = model.config.tie_word_embeddings and HEAD in self.shapes
        # A stored tied, quantized head replaces the embedding the file also holds (for other loaders).
        self.embedding_from_head = self.tied_head and stored
        self.parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in self.shapes}
        self.layers: dict[str, QuantLinear] = {}

    def _owner(self, key: str) -> tuple[str, str] | None:
        if key == EMBED_KEY and self.tied_head:
            return None if self.stored else (HEAD, "weight")  # the tied head's float weight is stored once, as the embedding
        name, _, suffix = key.rpartition(".")
        return (name, suffix) if name in self.shapes else None

    def expected(self, expected: dict[str, tuple | None]) -> dict[str, tuple | None]:
        """The checkpoint keys to read (shape None: checked by the plan), GPTQ tensors in place of the covered float weights."""
        out = dict(expected)
        if self.stored:
            for name in self.shapes:
                out.pop(f"{name}.weight", None)
                out.update({f"{name}.{s}": None for s in REQUIRED})
        if self.embedding_from_head:
            out.pop(EMBED_KEY, None)
        return out

    def route(self, key: str) -> str:
        """'plan' for a covered layer's tensor (kept uncast), 'skip' for one the plan makes unnecessary, else 'load'."""
        if self.embedding_from_head and key == EMBED_KEY:
            return "skip"
        return "load" if self._owner(key) is None else "plan"

    def optional(self, key: str) -> bool:
        """Keys a checkpoint may have or not: g_idx, and a stored embedding the tied quantized head replaces."""
        owner = self._owner(key)
        return (owner is not None and owner[1] in OPTIONAL and self.stored) or (self.embedding_from_head and key == EMBED_KEY)

    def add(self, key: str, tensor: torch.Tensor) -> None:
        """Take one tensor of a covered layer; a float weight is rounded at once and its copy dropped."""
        name, suffix = self._owner(key)
        if suffix == "weight" and not self.stored:
            k, n, _ = self.shapes[name]
            if tuple(tensor.shape) != (n, k):
                raise FalconError(f"tensor {key!r} has shape {tuple(tensor.shape)}, but config.json implies {(n, k)}")
            self.layers[name] = QuantLinear.from_float(tensor, self.spec)
        else:
            self.parts[name][suffix] = tensor

    def install(self, model: nn.Module, device: torch.device | str, dtype: torch.dtype) -> None:
        """Build every covered layer and put it in the model."""
        for name, (k, n, has_bias) in self.shapes.items():
            parts = self.parts[name]
            layer = from_gptq(parts, self.spec, k, n, name) if self.stored else self.layers[name]
            bias = parts.get("bias")
            if has_bias and bias is None:
                raise FalconError(f"quantized layer {name} is missing its 'bias' tensor")
            layer.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)
            replace_module(model, name, layer.to(device))
        tie_quantized_embedding(model)


def plan_for(config: FalconConfig, quantize: Any, model: nn.Module, source: str) -> QuantLoadPlan | None:
    """The load plan of a checkpoint: its own quantization_config, or `quantize` ('int8' | 'int4' | a QuantSpec)."""
    stored = config.quantization_config
    wanted = quantize if isinstance(quantize, QuantSpec) else parse_quantize(quantize)
    if stored is not None:
        if wanted is not None:
            raise FalconError(f"{source} is already quantized ({QuantSpec.from_config(stored, source).describe()}); load it without --quantize")
        return QuantLoadPlan(QuantSpec.from_config(stored, source), True, model)
    if wanted is None:
        return None
    return QuantLoadPlan(fit_group_size(wanted, model, explicit=not isinstance(quantize, str)), False, model)


def fit_group_size(spec: QuantSpec, model: nn.Module, explicit: bool) -> QuantSpec:
    """The spec with a group size that divides every covered layer's width; an explicit one that does not is an error."""
    widths = sorted({m.in_features for m in covered_linears(model, spec).values()})
    if spec.group_size == -1 or all(w % spec.group_size == 0 for w in widths):
        return spec
    fits = [g for g in (128, 64, 32, 16) if all(w % g == 0 for w in widths)]
    if explicit or not fits:
        hint = f"; use {' or '.join(str(g) for g in fits[:2])}" if fits else "; use -1 (one group per output channel)"
        raise FalconError(f"group size {spec.group_size} does not divide the layer widths of this model ({', '.join(map(str, widths))}){hint}")
    return spec.replace(group_size=fits[0])
