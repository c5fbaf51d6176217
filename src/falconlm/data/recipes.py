"""The RefinedWeb recipe ("MacroData Refinement"), in one readable place.

A recipe is a list of stages (stage.py) that the runner (refine.py) chains: each reads the previous
stage's shards and writes its own. The filter stage streams every document through per-document
steps, one task per input file; the dedup stages need the whole corpus and run their own chains
of tasks. Every parameter is a field of `RefineConfig` (config.py) whose default is the paper's value;
the comments below name them (docs/refinedweb.md has the sources).

To add a stage, write a class with `name` and `run(inputs, ctx) -> StageResult` and list it here.
"""

from __future__ import annotations

from collections.abc import Callable

from falconlm.data.config import RefineConfig
from falconlm.data.dedup.exact_stage import ExactSubstringStage
from falconlm.data.dedup.minhash_stage import MinHashStage
from falconlm.data.dedup.url import UrlDedupStage
from falconlm.data.extract import Extract
from falconlm.data.filter_stage import FilterStage
from falconlm.data.filters.language import LanguageFilter
from falconlm.data.filters.lines import LineFilter
from falconlm.data.filters.quality import QualityFilter
from falconlm.data.filters.repetition import RepetitionFilter
from falconlm.data.filters.url import URLFilter
from falconlm.data.stage import RecipeStage
from falconlm.data.step import Step
from falconlm.errors import FalconError


def refinedweb(c: RefineConfig) -> list[RecipeStage]:
    """RefinedWeb, in the paper's order: filtering (-> RW-Raw -> RW-Filtered), then deduplication."""
    d, fmt = c.dedup, c.output_format
    stages = [
        FilterStage([
            Step(URLFilter, c.url),                # the URL alone: UT1 blocklist (10 categories), strict/hard/soft word
                                                   # lists (soft: 2 hits), the 16 high-quality domains spared
            Step(Extract, c.extract),              # HTML -> main text (trafilatura), URLs removed, <= 2 newlines in a row
            Step(LanguageFilter, c.language),      # fastText LID-176: English with top score >= 0.65 -> RW-Raw
            Step(RepetitionFilter, c.repetition),  # Gopher: duplicate lines/paragraphs, top 2-4-grams, dup. 5-10-grams
            Step(QualityFilter, c.quality),        # Gopher: 50-100,000 words, mean word length 3-10, >= 2 stop words...
            Step(LineFilter, c.lines),             # boilerplate lines removed; > 5% of the words removed: dropped
        ], c),                                     # -> RW-Filtered
        # MinHash LSH, 450 bands x 20 rows over word 5-grams: one document kept per cluster of near-duplicates
        MinHashStage(d.minhash, d.resources, d.bucket_groups, fmt) if d.minhash else None,
        # suffix array: spans of >= 50 tokens seen twice are cut; a document left under 20 characters is dropped
        ExactSubstringStage(d.exact_substring, d.resources, fmt) if d.exact_substring else None,
        # the first document per normalised URL, also against the URLs that earlier runs kept
        UrlDedupStage(d.url, d.resources, fmt) if d.url else None,
    ]  # -> RefinedWeb
    return [s for s in stages if s is not None]  # a dedup method set to None is off


RECIPES: dict[str, Callable[[RefineConfig], list[RecipeStage]]] = {
    "refinedweb": refinedweb,
    "refinedweb-filter": lambda c: refinedweb(c)[:1],  # RW-Filtered: no dedup (`refine --no-dedup`)
    "dedup": lambda c: refinedweb(c)[1:],  # the dedup stages alone, on text shards (`falconlm dedup`)
}


def build_recipe(name: str, config: RefineConfig) -> list[RecipeStage]:
    """The stages of a named recipe."""
    if name not in RECIPES:
        raise FalconError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    return RECIPES[name](config)
