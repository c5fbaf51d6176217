"""falconlm: the Falcon LLM system end to end.

Torch-free parts (``falconlm.data``) must stay importable without torch, so the model-side
names below are resolved lazily on first access.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "FalconConfig": "falconlm.model.config",
    "FalconForCausalLM": "falconlm.model.falcon",
    "KVCache": "falconlm.model.kv_cache",
    "generate": "falconlm.decoding.generate",
    "stream_generate": "falconlm.decoding.generate",
    "GenerationConfig": "falconlm.decoding.settings",
    "FalconError": "falconlm.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    """Import model-side names on first use so `import falconlm.data` never pulls in torch."""
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'falconlm' has no attribute {name!r}")
