"""Helpers for tests and benchmarks that compare falconlm with transformers."""

from __future__ import annotations

from typing import Any

import torch

from falconlm.model.config import FalconConfig
from falconlm.model.falcon import FalconForCausalLM
from falconlm.model.hf_interop import to_transformers


def make_pair(config: FalconConfig, seed: int = 0) -> tuple[FalconForCausalLM, Any]:
    """A randomly initialised falconlm model and its transformers twin with identical weights."""
    torch.manual_seed(seed)
    ours = FalconForCausalLM(config).eval()
    return ours, to_transformers(ours)
