"""Samples -> fixed-length training rows (packed or padded), and the batches of a fine-tuning run.

A row holds seq_len + 1 tokens; its inputs are tokens[:-1] and its labels tokens[1:], with -100
wherever the target is not an assistant token (prompt, padding).

Packing fills a row with consecutive samples while they fit and pads the rest with eos. Attention
is causal over the whole row, so a sample can attend to the samples before it in its row (each
ends with eos, as pretraining documents do): the usual SFT packing (e.g. TRL's). Samples are
shuffled and packed again every epoch, so no sample keeps the same neighbours (with few samples
and fixed rows a model learns answers from the neighbours instead of the question).
`--no-packing` gives each sample a row of its own, right-padded, which isolates samples exactly:
causal attention never reaches the padding on the right.

Epoch e visits its rows, and its share of mix-in pretraining windows, in an order drawn from
(seed, e); the rows of optimizer step k depend only on the count of samples before it, which is
what a bit-exact resume restores.
"""

from __future__ import annotations

import hashlib

import numpy as np

from falconlm.finetune.data import Sample
from falconlm.train.loss import IGNORE_INDEX


def pack(lengths: np.ndarray, order: np.ndarray, width: int, packing: bool) -> list[list[int]]:
    """Rows as lists of sample indices: samples in `order`, a new row when the next one does not fit (or always, without packing)."""
    rows: list[list[int]] = []
    used = width + 1
    for i in order.tolist():
        n = int(lengths[i])
        if not packing or used + n > width:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


class SFTBatches:
    """The training (or held-out) rows of a fine-tuning run, epoch by epoch, with optional plain-text windows mixed in."""

    def __init__(self, samples: list[Sample], seq_len: int, pad_id: int, packing: bool, seed: int, mix=None, mix_fraction: float = 0.0) -> None:
        self.width, self.pad_id, self.packing, self.seed = seq_len + 1, pad_id, packing, seed
        self.rank, self.world, self.micro = 0, 1, 1
        self.ids = [s.ids for s in samples]
        self.masks = [s.mask for s in samples]
        self.lengths = np.array([len(s) for s in self.ids], dtype=np.int64)
        self.mix, self.mix_fraction = mix, (mix_fraction if mix is not None else 0.0)
        self._starts = [0]  # index of the first sample of each epoch laid out so far
        self._layouts: dict[int, tuple[list[list[int]], np.ndarray]] = {}

    def split(self, rank: int, world: int, micro: int) -> "SFTBatches":
        """Set which rank reads, out of how many, and the micro-batch size; returns self."""
        self.rank, self.world, self.micro = rank, world, micro
        return self

    # ----- layout -----
    def layout(self, epoch: int) -> tuple[list[list[int]], np.ndarray]:
        """(rows of sample indices, visiting order of rows + mix-in windows) of an epoch."""
        if epoch not in self._layouts:
            if len(self._layouts) > 4:
                self._layouts.clear()
            order = np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.ids))
            rows = pack(self.lengths, order, self.width, self.packing)
            n_mix = max(1, round(len(rows) * self.mix_fraction / (1.0 - self.mix_fraction))) if self.mix_fraction > 0 else 0
            self._layouts[epoch] = rows, np.random.default_rng([self.seed, epoch, 1]).permutation(len(rows) + n_mix)
        return self._layouts[epoch]

    def epoch_size(self, epoch: int = 0) -> int:
        """Sequences (rows + mix-in windows) of an epoch."""
        return len(self.layout(epoch)[1])

    def _locate(self, k: int) -> tuple[int, int]:
        """(epoch, position in the epoch) of the run's k-th sequence."""
        while self._starts[-1] <= k:
            self._starts.append(self._starts[-1] + self.epoch_size(len(self._starts) - 1))
        epoch = int(np.searchsorted(self._starts, k, side="right")) - 1
        return epoch, k - self._starts[epoch]

    # ----- rows -----
    def row(self, sample_indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) of a row holding these samples, padded with eos."""
        tokens = np.full(self.width, self.pad_id, dtype=np.int64)
        mask = np.zeros(self.width, dtype=bool)
        used = 0
        for i in sample_indices:
            n = len(self.ids[i])
            tokens[used : used + n], mask[used : used + n] = self.ids[i], self.masks[i]
            used += n
        return tokens[:-1], np.where(mask[1:], tokens[1:], IGNORE_INDEX)

    def item(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) of the run's k-th sequence (0-based, across epochs)."""
        epoch, j = self._locate(k)
        rows, order = self.layout(epoch)
        i = int(order[j])
        if i < len(rows):
            return self.row(rows[i])
        # A plain-text pretraining window: every next token is a target (Falcon-Instruct mixed in RefinedWeb).
        window = self.mix.random_windows(self.seed + 1, (epoch << 32) + i - len(rows), 1)[0]
        return window[:-1], window[1:]

    def micro_batch(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Sequences first .. first + count - 1, cut after the last column that holds a label (causal: nothing after it counts)."""
        items = [self.item(k) for k in range(first, first + count)]
        inputs, labels = np.stack([a for a, _ in items]), np.stack([b for _, b in items])
        has_label = (labels != IGNORE_INDEX).any(0)
        end = int(np.flatnonzero(has_label)[-1]) + 1 if has_label.any() else 1
        return np.ascontiguousarray(inputs[:, :end]), np.ascontiguousarray(labels[:, :end])

    def rank_micro_batches(self, step: int, samples_before: int, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """This rank's micro-batches of a step: rank r takes micro-batch m from sequences [(m*world + r)*micro, +micro)."""
        first = [samples_before + (m * self.world + self.rank) * self.micro for m in range(batch // (self.micro * self.world))]
        return [self.micro_batch(f, self.micro) for f in first]

    def fixed_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The samples packed in their file order, as (input_ids, labels) arrays: held-out rows, the same every evaluation."""
        rows = pack(self.lengths, np.arange(len(self.ids)), self.width, self.packing)
        pairs = [self.row(r) for r in rows]
        return np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs])

    # ----- facts -----
    @property
    def fill(self) -> float:
        """Share of epoch 0's row positions that hold a sample token rather than padding."""
        rows = self.layout(0)[0]
        return float(self.lengths.sum()) / max(len(rows) * self.width, 1)

    def fingerprint(self) -> str:
        """A hash of the samples and the packing settings, to check that a resumed run trains on the same data."""
        h = hashlib.sha256(repr((self.width, self.packing, self.seed, self.mix_fraction)).encode())
        for ids, mask in zip(self.ids, self.masks):
            h.update(ids.tobytes())
            h.update(mask.tobytes())
        return h.hexdigest()[:16]
