"""Hand a model to transformers and take one back, weights shared by value (test oracle and user bridge)."""

from __future__ import annotations

from typing import Any

from falconlm.model.config import FalconConfig
from falconlm.model.falcon import FalconForCausalLM


def to_transformers(model: FalconForCausalLM) -> Any:
    """transformers' FalconForCausalLM holding a copy of this model's weights (needs `transformers`)."""
    import transformers

    fields = {k: v for k, v in model.config.to_dict().items() if k not in ("architectures", "model_type", "torch_dtype")}
    hf = transformers.FalconForCausalLM(transformers.FalconConfig(**fields)).to(model.dtype).eval()
    result = hf.load_state_dict(model.state_dict(), strict=False)
    if result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight"}:
        raise RuntimeError(f"transformers' Falcon disagrees on weight names: {result}")
    hf.tie_weights()
    return hf


def from_transformers(hf_model: Any) -> FalconForCausalLM:
    """A falconlm model with the weights of a transformers FalconForCausalLM."""
    config = FalconConfig.from_dict(hf_model.config.to_dict(), source="transformers config")
    model = FalconForCausalLM(config).to(hf_model.dtype).eval()
    model.load_state_dict({k: v for k, v in hf_model.state_dict().items() if "rotary_emb" not in k}, strict=not config.tie_word_embeddings)
    return model
