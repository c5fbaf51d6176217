"""Windows of seq_len + 1 tokens from packed shards, deterministic for a (seed, step) and split across ranks.

Random mode draws window starts uniformly over all shards (never crossing a shard end) with an RNG
seeded by (seed, step), so step k's batch is the same whatever happened before it: resuming needs
only the step number. Sequential mode walks the concatenated token stream by the run's sample
counter, wrapping around at the end.
"""

from __future__ import annotations

import os

import numpy as np

from falconlm.errors import FalconError
from falconlm.train.shards import ShardIndex, load_shard


class TokenWindows:
    """A split of a token-shard directory seen as windows of seq_len + 1 tokens."""

    def __init__(self, data_dir: str | os.PathLike, split: str, seq_len: int) -> None:
        self.index = ShardIndex.load(data_dir)
        self.seq_len = seq_len
        infos = [s for s in self.index.splits.get(split, []) if s.tokens > 0]
        self.shards = [load_shard(data_dir, s, self.index.dtype) for s in infos]
        self.tokens = sum(len(s) for s in self.shards)
        if self.tokens < seq_len + 1:
            raise FalconError(
                f"the '{split}' split of {data_dir} has {self.tokens:,} tokens, fewer than one window of seq_len + 1 = {seq_len + 1}"
            )
        self.bounds = np.cumsum([0] + [len(s) for s in self.shards])
        # Random starts: a window must fit inside its shard.
        starts = np.array([max(len(s) - seq_len, 0) for s in self.shards], dtype=np.int64)
        self.start_bounds = np.cumsum(np.concatenate([[0], starts]))
        self.n_random_starts = int(self.start_bounds[-1])

    def _read(self, pos: int) -> np.ndarray:
        """seq_len + 1 tokens of the concatenated stream from global position pos (may span shards)."""
        n = self.seq_len + 1
        out = np.empty(n, dtype=np.int64)
        got = 0
        while got < n:
            i = int(np.searchsorted(self.bounds, pos, side="right") - 1)
            off = pos - int(self.bounds[i])
            take = min(n - got, len(self.shards[i]) - off)
            out[got : got + take] = self.shards[i][off : off + take]
            got += take
            pos = (pos + take) % self.tokens
        return out

    def random_starts(self, seed: int, step: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard, offset) of `count` random windows for optimizer step `step`; cheap, so every rank draws all."""
        if self.n_random_starts == 0:
            raise FalconError(f"no shard holds a full window of {self.seq_len + 1} tokens; lower --seq-len")
        rng = np.random.default_rng([seed, step])
        flat = rng.integers(0, self.n_random_starts, size=count)
        shard = np.searchsorted(self.start_bounds, flat, side="right") - 1
        return shard, flat - self.start_bounds[shard]

    def read_windows(self, shard: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """The windows at the given (shard, offset) pairs: (len, seq_len + 1) int64."""
        out = np.empty((len(shard), self.seq_len + 1), dtype=np.int64)
        for j, (s, off) in enumerate(zip(shard, offset)):
            out[j] = self.shards[int(s)][int(off) : int(off) + self.seq_len + 1]
        return out

    def random_windows(self, seed: int, step: int, count: int) -> np.ndarray:
        """`count` random windows for optimizer step `step`: (count, seq_len + 1) int64."""
        return self.read_windows(*self.random_starts(seed, step, count))

    def sequential_windows(self, first_sample: int, count: int) -> np.ndarray:
        """Windows number first_sample .. first_sample + count - 1 of the stream, stride seq_len."""
        span = self.tokens
        return np.stack([self._read((k * self.seq_len) % span) for k in range(first_sample, first_sample + count)])


class BatchSource:
    """The training batches of a run: the global batch of a step, and this rank's micro-batches of it."""

    def __init__(self, windows: TokenWindows, sampling: str, seed: int, rank: int, world: int, micro: int) -> None:
        self.windows, self.sampling, self.seed = windows, sampling, seed
        self.rank, self.world, self.micro = rank, world, micro

    def global_batch(self, step: int, samples_before: int, batch: int) -> np.ndarray:
        """All `batch` windows of a step, identical on every rank and for every world size."""
        if self.sampling == "random":
            return self.windows.random_windows(self.seed, step, batch)
        return self.windows.sequential_windows(samples_before, batch)

    def rank_micro_batches(self, step: int, samples_before: int, batch: int) -> list[np.ndarray]:
        """This rank's micro-batches: rank r takes micro-batch m from rows [(m*world + r)*micro, +micro)."""
        if self.sampling == "random":
            # Every rank draws the whole step's starts (identical everywhere) but reads only its own rows.
            shard, offset = self.windows.random_starts(self.seed, step, batch)
            out = []
            for m in range(batch // (self.micro * self.world)):
                rows = slice((m * self.world + self.rank) * self.micro, (m * self.world + self.rank + 1) * self.micro)
                out.append(self.windows.read_windows(shard[rows], offset[rows]))
            return out
        # Sequential: read only this rank's rows.
        out = []
        for m in range(batch // (self.micro * self.world)):
            first = samples_before + (m * self.world + self.rank) * self.micro
            out.append(self.windows.sequential_windows(first, self.micro))
        return out


def shift(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Windows (n, seq_len + 1) as (input_ids, labels) views: every next token is a target."""
    return windows[:, :-1], windows[:, 1:]


class WindowBatches:
    """A BatchSource's micro-batches as (input_ids, labels) pairs, the shape every training batch has."""

    def __init__(self, source: BatchSource) -> None:
        self.source = source

    def rank_micro_batches(self, step: int, samples_before: int, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """This rank's micro-batches of a step (BatchSource.rank_micro_batches), shifted into inputs and labels."""
        return [shift(w) for w in self.source.rank_micro_batches(step, samples_before, batch)]


def heldout_windows(data_dir: str | os.PathLike, seq_len: int, count: int) -> np.ndarray | None:
    """A fixed set of up to `count` sequential held-out windows, or None when there is no held-out split."""
    index = ShardIndex.load(data_dir)
    if index.tokens("val") < seq_len + 1:
        return None
    w = TokenWindows(data_dir, "val", seq_len)
    n = max(1, min(count, (w.tokens - 1) // seq_len))
    return w.sequential_windows(0, n)


def unigram_entropy(data_dir: str | os.PathLike, split: str = "train") -> float:
    """Entropy (nats/token) of the split's token frequencies: the loss of the best context-free model."""
    index = ShardIndex.load(data_dir)
    counts = np.zeros(index.vocab_size, dtype=np.int64)
    for s in index.splits.get(split, []):
        counts += np.bincount(load_shard(data_dir, s, index.dtype), minlength=index.vocab_size)[: index.vocab_size]
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
