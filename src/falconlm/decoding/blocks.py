"""The KV block manager: which pool blocks are free, who holds each, and the prefix cache over full blocks.

Every block has a reference count (sequences whose table holds it). A full block is registered
under its content key `(parent's content id, its tokens)`, where the parent's content id names the
whole prefix before it: a key matches only the same tokens after the same prefix, exactly (ids are
handed out, not hashed, so two prefixes never collide). A registered block whose count drops to 0
stays cached: it sits in an LRU and a later request with that prefix takes it back; it is evicted
(unregistered and reused) only when no never-used or plain free block is left.

Blocks are handed out lowest-numbered first and freed blocks are reused first, so on the CPU the
pages a lazily-mapped pool touches grow with the tokens actually held.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Sequence

ROOT = -1  # the parent content id of a sequence's first block


class BlockPool:
    """Free list, reference counts and the content-keyed prefix cache of one KV pool."""

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True):
        self.num_blocks, self.block_size, self.prefix_caching = num_blocks, block_size, prefix_caching
        self.free: deque[int] = deque(range(num_blocks))  # unregistered, unreferenced
        self.cached: OrderedDict[int, None] = OrderedDict()  # registered, unreferenced, least recently used first
        self.refs = [0] * num_blocks
        self.by_key: dict[tuple[int, tuple[int, ...]], int] = {}
        self.key_of: dict[int, tuple[int, tuple[int, ...]]] = {}
        self.content_id: dict[int, int] = {}  # registered block -> the id its children's keys use
        self._ids = itertools.count()
        self.evictions = 0

    @property
    def num_free(self) -> int:
        """Blocks a sequence can still get (never used, freed, or cached but unreferenced)."""
        return len(self.free) + len(self.cached)

    @property
    def num_used(self) -> int:
        """Blocks held by at least one sequence."""
        return self.num_blocks - self.num_free

    def allocate(self) -> int | None:
        """A block for one holder, or None when every block is held."""
        if self.free:
            block = self.free.popleft()
        elif self.cached:
            block, _ = self.cached.popitem(last=False)
            self._unregister(block)
            self.evictions += 1
        else:
            return None
        self.refs[block] = 1
        return block

    def hold(self, block: int) -> None:
        """One more holder of a block (a prefix hit, a forked sequence)."""
        if self.refs[block] == 0:
            self.cached.pop(block)
        self.refs[block] += 1

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one holder of each block, the last block first (so a prefix's first blocks stay cached longest)."""
        for block in reversed(blocks):
            self.refs[block] -= 1
            if self.refs[block] == 0:
                if block in self.key_of:
                    self.cached[block] = None
                else:
                    self.free.appendleft(block)

    def lookup(self, tokens: Sequence[int], limit: int) -> tuple[list[int], list[int]]:
        """The cached blocks of the longest full-block prefix of `tokens` (at most `limit` blocks), held for the caller, and their content ids."""
        bs = self.block_size
        blocks: list[int] = []
        ids: list[int] = []
        if self.prefix_caching:
            parent = ROOT
            for j in range(limit):
                block = self.by_key.get((parent, tuple(tokens[j * bs : (j + 1) * bs])))
                if block is None:
                    break
                self.hold(block)
                blocks.append(block)
                parent = self.content_id[block]
                ids.append(parent)
        return blocks, ids

    def register(self, block: int, parent: int, tokens: Sequence[int]) -> int:
        """Record a just-filled block under its content; returns the content id its successor's key uses."""
        key = (parent, tuple(tokens))
        known = self.by_key.get(key)
        if known is not None:  # the same prefix is already cached in another block: share its identity
            return self.content_id[known]
        if not self.prefix_caching or block in self.key_of:
            return next(self._ids)
        cid = next(self._ids)
        self.by_key[key], self.key_of[block], self.content_id[block] = block, key, cid
        return cid

    def is_shared(self, block: int) -> bool:
        """Whether another sequence holds this block too (it must be copied before it is written)."""
        return self.refs[block] > 1

    def _unregister(self, block: int) -> None:
        key = self.key_of.pop(block)
        del self.by_key[key]
        del self.content_id[block]

    def reset(self) -> None:
        """Forget every holder and the prefix cache (after a failed step)."""
        self.__init__(self.num_blocks, self.block_size, self.prefix_caching)
