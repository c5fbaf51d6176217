"""A preallocated KV cache that stores only the real key/value heads.

transformers broadcasts Falcon-40B's 8 KV heads to all 128 query heads before caching; we keep
`config.stored_kv_heads` heads (1 for Falcon-7B), and attention groups the query heads onto them.
"""

from __future__ import annotations

import torch

from falconlm.errors import FalconError
from falconlm.model.config import FalconConfig


class KVCache:
    """Keys and values for every layer, plus each slot's position id and validity (for padding)."""

    def __init__(self, config: FalconConfig, batch_size: int, max_length: int, dtype: torch.dtype, device: torch.device | str = "cpu", kv_heads: int | None = None):
        # kv_heads: fewer than the config's on a tensor-parallel rank, which holds only its KV groups.
        shape = (config.num_hidden_layers, batch_size, config.stored_kv_heads if kv_heads is None else kv_heads, max_length, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.positions = torch.zeros(batch_size, max_length, dtype=torch.long, device=device)
        self.valid = torch.zeros(batch_size, max_length, dtype=torch.bool, device=device)
        self.max_length = max_length
        self.length = 0  # slots filled so far (the same for every row: pads take slots too)
        # The compiled decode step's per-layer plans (FalconDecoderLayer.decode_plan), built on the first
        # decode step: the weights do not change while a cache is in use, and building them costs more than a step's Python.
        self.decode_plans: dict = {}

    @property
    def nbytes(self) -> int:
        """Bytes held by keys and values."""
        return self.keys.nbytes + self.values.nbytes

    def reserve(self, positions: torch.Tensor, valid: torch.Tensor) -> slice:
        """Claim the next T slots for a (B, T) chunk; returns the slice of slots now in use."""
        t = positions.shape[1]
        if self.length + t > self.max_length:
            raise FalconError(f"KV cache is full: {self.length} + {t} tokens exceed its {self.max_length} slots")
        start, self.length = self.length, self.length + t
        self.positions[:, start : self.length] = positions
        self.valid[:, start : self.length] = valid
        return slice(start, self.length)

    def reserve_at(self, slot: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Claim slot `slot` (a 1-element device tensor) for a (B, 1) decode step of real tokens; shapes never change.

        The static decode step writes here instead of `reserve`: its index lives on the device, so
        the step runs without reading anything back to the host and a CUDA graph can replay it.
        """
        self.positions.index_copy_(1, slot, positions)
        self.valid.index_fill_(1, slot, True)
        return slot

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor, slots: slice | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, kv_heads, T, D) keys/values into `slots`; return the filled prefix (every slot, for a tensor index)."""
        if isinstance(slots, torch.Tensor):
            self.keys[layer].index_copy_(2, slots, key)
            self.values[layer].index_copy_(2, slots, value)
            return self.keys[layer], self.values[layer]
        self.keys[layer, :, :, slots] = key
        self.values[layer, :, :, slots] = value
        return self.keys[layer, :, :, : slots.stop], self.values[layer, :, :, : slots.stop]
