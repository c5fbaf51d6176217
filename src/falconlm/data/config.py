"""Settings of the refinement pipeline as dataclasses: the single source of truth.

`RefineConfig` holds every knob of a run: one section per filter step (each defined beside its step
in filters/, extract.py, readers/) and `dedup`, the settings of the three dedup stages defined here.
Defaults are the RefinedWeb paper's values (docs/refinedweb.md). YAML (`--config`), `--set` and the
command-line flags fill these fields; every run writes the resolved config to DIR/config.json.
Light to import: nothing here loads a model or a heavy library.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from falconlm.data.extract import ExtractConfig
from falconlm.data.filters.language import LanguageConfig
from falconlm.data.filters.lines import LineConfig
from falconlm.data.filters.quality import QualityConfig
from falconlm.data.filters.repetition import RepetitionConfig
from falconlm.data.filters.url import URLFilterConfig
from falconlm.data.readers import ReaderOptions
from falconlm.errors import FalconError

# MinHash LSH shapes by name: (bands, rows).
PRESETS: dict[str, tuple[int, int]] = {
    # RefinedWeb / Lee et al. 2022: 450 bands of 20 rows = 9,000 hashes (P = 76% at Jaccard 0.75,
    # 99.4% at 0.8). Only this reading of the paper gives its probabilities: not 20 bands of 450.
    "refinedweb": (450, 20),
    # datatrove / FineWeb default: 14 buckets of 8 hashes = 112 hashes (threshold ~0.72).
    "fineweb": (14, 8),
}

ExactMode = Literal["cut", "drop-any", "drop-partial"]
MODES: tuple[str, ...] = ("cut", "drop-any", "drop-partial")
OutputFormat = Literal["jsonl.zst", "jsonl.gz", "jsonl", "parquet"]


@dataclass
class MinHashConfig:
    """Fuzzy dedup: MinHash signatures of word (or token) n-grams, banded for LSH."""

    bands: int = 450  # LSH bands: two documents are candidates when all rows of one band agree
    rows: int = 20  # hashes per band; bands x rows hashes per document (450 x 20 = 9,000, the paper's)
    ngram: int = 5  # shingle size: n-grams of normalised words (or of tokens with `tokenizer`)
    seed: int = 1  # seed of the hash permutations
    tokenizer: str | None = None  # tokenizer.json: shingle token ids instead of normalised words

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "MinHashConfig":
        """A config from a named preset (`refinedweb`, `fineweb`)."""
        if name not in PRESETS:
            raise FalconError(f"unknown MinHash preset {name!r}: choose one of {', '.join(PRESETS)} or give --bands and --rows")
        b, r = PRESETS[name]
        return cls(bands=b, rows=r, **overrides)

    @property
    def num_hashes(self) -> int:
        """Hashes per signature (bands x rows)."""
        return self.bands * self.rows

    def validate(self) -> None:
        """Raise a FalconError on impossible settings."""
        if self.bands < 1 or self.rows < 1 or self.ngram < 1:
            raise FalconError(f"bands, rows and ngram must be positive (got {self.bands}, {self.rows}, {self.ngram})")

    def to_dict(self) -> dict[str, Any]:
        """The resolved form written beside outputs."""
        return asdict(self)


@dataclass
class ExactSubstringConfig:
    """Exact-substring dedup: spans repeated anywhere in a part of the corpus, found with a suffix array."""

    min_tokens: int = 50  # shortest duplicated span removed, in tokens (the paper: 50)
    mode: ExactMode = "cut"  # cut: remove the spans; drop-any: drop a document with any; drop-partial: see below
    min_chars: int = 20  # cut mode: drop a document left with fewer characters (the paper: 20)
    max_duplicate_fraction: float = 0.2  # drop-partial mode: drop a document when more of its characters are duplicated
    part_tokens: int = 0  # tokens per suffix-array part (repeats are found within a part); 0 = from the memory budget
    tokenizer: str | None = None  # tokenizer.json: match token ids instead of normalised words

    def validate(self) -> None:
        """Raise a FalconError on impossible settings."""
        if self.mode not in MODES:
            raise FalconError(f"unknown exact-substring mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.min_tokens < 1:
            raise FalconError(f"--min-tokens must be positive (got {self.min_tokens})")

    def to_dict(self) -> dict[str, Any]:
        """Resolved form."""
        return asdict(self)


@dataclass
class UrlDedupConfig:
    """URL dedup: the first document of each normalised URL is kept, across shards and earlier runs."""

    index: str | None = None  # folder of the persistent index of URLs kept by earlier runs; None = this run only
    update_index: bool = True  # add the URLs this run keeps to the index

    def to_dict(self) -> dict[str, Any]:
        """Resolved form."""
        return asdict(self)


@dataclass
class Resources:
    """What every dedup stage obeys: its memory budget and its side outputs."""

    memory_mb: float = 2048  # budget per task (worker) in MiB: sizes spill buffers, merge chunks and suffix-array parts
    write_removed: bool = False  # write DIR/removed/<stage>/*.jsonl: what was removed from each document and why
    examples: int = 3  # example clusters / cuts kept for the report

    @property
    def memory_bytes(self) -> int:
        """The budget in bytes."""
        return int(self.memory_mb * (1 << 20))


@dataclass
class DedupConfig:
    """Which dedup stages run (None = off) and their settings; they run in this order."""

    minhash: MinHashConfig | None = field(default_factory=MinHashConfig)  # fuzzy dedup (MinHash LSH)
    exact_substring: ExactSubstringConfig | None = field(default_factory=ExactSubstringConfig)  # exact-substring dedup
    url: UrlDedupConfig | None = field(default_factory=UrlDedupConfig)  # URL dedup
    resources: Resources = field(default_factory=Resources)  # memory budget and side outputs
    bucket_groups: int = 0  # MinHash bucket tasks (band groups); 0 = 16, at most one per band

    def to_dict(self) -> dict[str, Any]:
        """JSON form written beside the outputs."""
        return asdict(self)


@dataclass
class RefineConfig:
    """Every knob of a run: the filter steps' sections, the output, and the dedup stages."""

    url: URLFilterConfig = field(default_factory=URLFilterConfig)  # URL filter
    extract: ExtractConfig = field(default_factory=ExtractConfig)  # HTML -> text
    language: LanguageConfig = field(default_factory=LanguageConfig)  # language identification
    repetition: RepetitionConfig = field(default_factory=RepetitionConfig)  # Gopher repetition rules
    quality: QualityConfig = field(default_factory=QualityConfig)  # Gopher quality rules
    lines: LineConfig = field(default_factory=LineConfig)  # line-wise corrections
    reader: ReaderOptions = field(default_factory=ReaderOptions)  # how the run's input files are read
    output_format: OutputFormat = "jsonl.zst"  # format of every shard the run writes
    keep_dropped: bool = False  # also write dropped documents, with step and reason, to DIR/dropped/
    examples_per_reason: int = 3  # dropped examples kept for the report
    slices_per_file: int = 1  # split each input file into this many filter tasks
    dedup: DedupConfig = field(default_factory=DedupConfig)  # the dedup stages after filtering

    def to_dict(self) -> dict[str, Any]:
        """JSON form (written to DIR/config.json)."""
        return asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes outputs (a rerun with another config must not resume)."""
        d = _integral_floats_as_ints(self.to_dict())  # 16 and 16.0 configure the same run (YAML and flags differ here)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_integral_floats_as_ints(v) for v in value]
    return value
