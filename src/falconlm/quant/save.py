"""A quantized model in memory: made from a full-precision one, and written back in the GPTQ layout."""

from __future__ import annotations

import torch
from torch import nn

from falconlm.quant.gptq_format import to_gptq
from falconlm.quant.linear import QuantEmbedding, QuantLinear
from falconlm.quant.load import EMBED_KEY, covered_linears, fit_group_size, replace_module, tie_quantized_embedding
from falconlm.quant.spec import HEAD, QuantSpec


@torch.no_grad()
def quantize_model(model: nn.Module, spec: QuantSpec) -> nn.Module:
    """Round-to-nearest quantize the covered linear layers of a loaded model in place (the Python API of --quantize)."""
    spec = fit_group_size(spec, model, explicit=True)
    for name, module in covered_linears(model, spec).items():
        layer = QuantLinear.from_float(module.weight, spec, module.bias)
        replace_module(model, name, layer.to(module.weight.device))
    tie_quantized_embedding(model)
    model.quant_spec = spec
    return model


def disk_state(model: nn.Module, spec: QuantSpec) -> dict[str, torch.Tensor]:
    """The checkpoint tensors of a quantized model: GPTQ tensors for its QuantLinears, the rest as they are.

    A tied, quantized head also writes its dequantized table (fp16) as the embedding, so loaders
    that keep a separate embedding (transformers) see the token vectors falconlm reads from the head.
    """
    state: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            state.update({f"{name}.{k}": v for k, v in to_gptq(module, spec).items()})  # its bias included
        elif isinstance(module, QuantEmbedding):
            state[EMBED_KEY] = module.head[0].dequantize().half()  # for other loaders; falconlm reads the head
        else:
            state.update({f"{name}.{k}" if name else k: p.detach() for k, p in module.named_parameters(recurse=False)})
    if model.config.tie_word_embeddings:
        state.pop(f"{HEAD}.weight", None)  # a tied full-precision head is stored once, as the embedding
    return {k: v.contiguous() for k, v in state.items()}
