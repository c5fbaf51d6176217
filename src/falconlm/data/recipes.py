"""The RefinedWeb recipe ("MacroData Refinement"), in one readable place.

A recipe is an ordered list of *stages*. Each stage takes the previous stage's output files and
produces new ones (tasks run through `executor.run_stage`, so every stage is resumable), and
reports per-step statistics that `stats.json` and the report show in order:

    refinedweb-filter:  filter  = read -> url_filter -> extract -> language          (RW-Raw)
                                       -> repetition -> quality -> lines            (RW-Filtered)
    refinedweb:         filter, then the dedup stages  minhash -> exact_substring -> url_dedup
                        (RefinedWeb), from `dedup_stages()` below.

How a new stage plugs in: write a class with `name: str` and
`run(inputs: list[Path], ctx: StageContext) -> StageResult` (see `RecipeStage`). Inside, build
tasks and call `executor.run_stage(Stage(name, tasks, ctx.marker_dir(name)), ctx.exec)`; write
shards with `writers.ShardWriter` into `ctx.stage_dir(name)` and return the shard paths and one
`StepStats.to_dict()` per step (docs/chars in/out + drop reasons). Then list it in a recipe.

HOOK for deduplication (issue 4): `dedup_stages(config)` returns the dedup stages appended after
the filter stage in the `refinedweb` recipe. Until it returns stages, `refinedweb` equals
`refinedweb-filter` (and `falconlm refine --no-dedup` always selects `refinedweb-filter`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from falconlm.data.executor import ExecConfig, StageResult
from falconlm.data.filters.language import LanguageConfig
from falconlm.data.filters.lines import LineConfig
from falconlm.data.filters.quality import QualityConfig
from falconlm.data.filters.repetition import RepetitionConfig
from falconlm.data.filters.url import URLFilterConfig
from falconlm.data.extract import ExtractConfig
from falconlm.data.readers import ReaderOptions
from falconlm.errors import FalconError


@dataclass
class RefineConfig:
    """Every knob of the filter stage; paper values are the defaults (falcon-facts A.1-A.6)."""

    url: URLFilterConfig = field(default_factory=URLFilterConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    repetition: RepetitionConfig = field(default_factory=RepetitionConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    lines: LineConfig = field(default_factory=LineConfig)
    reader: ReaderOptions = field(default_factory=ReaderOptions)
    output_format: str = "jsonl.zst"
    keep_dropped: bool = False  # also write dropped documents, with step and reason, to DIR/dropped/
    examples_per_reason: int = 3  # dropped examples kept for the report
    # Deduplication settings belong to the dedup stages; they read them from here when present.
    dedup: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (written to DIR/config.json)."""
        return asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes outputs (a rerun with another config must not resume)."""
        d = self.to_dict()
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StageContext:
    """What every stage gets: the run directory, the executor settings and the config."""

    out_dir: Path
    exec: ExecConfig
    config: RefineConfig
    last: bool = False  # the final stage writes to DIR/data

    def stage_dir(self, name: str) -> Path:
        """Where a stage writes its shards: DIR/data for the last stage, else DIR/work/<name>."""
        return self.out_dir / "data" if self.last else self.out_dir / "work" / name

    def marker_dir(self, name: str) -> Path:
        """Completion markers of a stage's tasks."""
        return self.out_dir / "markers" / name

    def dropped_dir(self, name: str) -> Path:
        """Dropped documents (with --keep-dropped)."""
        return self.out_dir / "dropped" / name


class RecipeStage(Protocol):
    """A stage: reads the previous stage's files, writes its own, returns stats per step."""

    name: str

    def run(self, inputs: list[Path], ctx: StageContext) -> StageResult: ...


def filter_stages(config: RefineConfig) -> list[RecipeStage]:
    """RW-Raw + RW-Filtered: URL filter, extraction, language id, repetition, quality, lines."""
    from falconlm.data.filter_stage import FilterStage

    return [FilterStage()]


def dedup_stages(config: RefineConfig) -> list[RecipeStage]:
    """HOOK (issue 4): MinHash -> exact substring -> URL dedup stages, appended after filtering.

    Settings come from `config.dedup` (a `DedupConfig.to_dict()`-shaped dict; missing keys take
    the paper's defaults, a null turns a method off).
    """
    from falconlm.data.dedup.stages import refinedweb_dedup_stages

    return refinedweb_dedup_stages(config)


RECIPES: dict[str, Callable[[RefineConfig], list[RecipeStage]]] = {
    "refinedweb-filter": filter_stages,
    "refinedweb": lambda c: filter_stages(c) + dedup_stages(c),
}


def build_recipe(name: str, config: RefineConfig) -> list[RecipeStage]:
    """The stages of a named recipe."""
    if name not in RECIPES:
        raise FalconError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    return RECIPES[name](config)


def filter_step_names() -> list[str]:
    """The per-document steps of the filter stage, in paper order."""
    return ["read", "url_filter", "extract", "language", "repetition", "quality", "lines"]
