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

    # ----- row management for continuous batching (decoding/engine.py) -----
    def rows(self, n: int) -> "KVCache":
        """A view of the first n rows that shares this cache's storage (copy `length` back after use)."""
        view = KVCache.__new__(KVCache)
        view.keys, view.values = self.keys[:, :n], self.values[:, :n]
        view.positions, view.valid = self.positions[:n], self.valid[:n]
        view.max_length, view.length = self.max_length, self.length
        return view

    def advance(self, n: int) -> None:
        """Claim n more slots as padding (invalid in every row), so a longer prompt fits under the pointer."""
        if self.length + n > self.max_length:
            raise FalconError(f"KV cache is full: {self.length} + {n} tokens exceed its {self.max_length} slots")
        self.valid[:, self.length : self.length + n] = False
        self.length += n

    def insert_row(self, row: int, source: "KVCache", source_row: int = 0) -> None:
        """Copy source's filled prefix (P slots) into `row` at slots [length - P, length); earlier slots become padding."""
        p = source.length
        if p > self.length:
            raise FalconError(f"a {p}-token prefix does not fit under the fill pointer ({self.length}); advance first")
        start = self.length - p
        self.keys[:, row, :, start : self.length] = source.keys[:, source_row, :, :p]
        self.values[:, row, :, start : self.length] = source.values[:, source_row, :, :p]
        self.positions[row, start : self.length] = source.positions[source_row, :p]
        self.valid[row, :start] = False
        self.valid[row, start : self.length] = source.valid[source_row, :p]
        self.valid[row, self.length :] = False

    def clear(self) -> None:
        """Empty the cache: every slot padding, the fill pointer back at 0."""
        self.valid.zero_()
        self.length = 0

    def free_row(self, row: int) -> None:
        """Mark every slot of a row as padding."""
        self.valid[row] = False

    def move_row(self, source: int, dest: int) -> None:
        """Copy row `source` (its filled slots) onto row `dest`, then free `source`."""
        n = self.length
        self.keys[:, dest, :, :n] = self.keys[:, source, :, :n]
        self.values[:, dest, :, :n] = self.values[:, source, :, :n]
        self.positions[dest, :n] = self.positions[source, :n]
        self.valid[dest] = self.valid[source]
        self.free_row(source)

    def leading_padding(self, n: int) -> int:
        """How many leading slots are padding in all of the first n rows (what `compact` can drop)."""
        if n == 0 or self.length == 0:
            return self.length
        any_valid = self.valid[:n, : self.length].any(dim=0)
        first = int(any_valid.int().argmax()) if bool(any_valid.any()) else self.length
        return first

    def compact(self, shift: int) -> None:
        """Shift every row left by `shift` slots (which must be padding everywhere) and move the pointer back."""
        if shift <= 0:
            return
        n = self.length
        keep = n - shift
        self.keys[:, :, :, :keep] = self.keys[:, :, :, shift:n].clone()
        self.values[:, :, :, :keep] = self.values[:, :, :, shift:n].clone()
        self.positions[:, :keep] = self.positions[:, shift:n].clone()
        self.valid[:, :keep] = self.valid[:, shift:n].clone()
        self.valid[:, keep:n] = False
        self.length = keep
