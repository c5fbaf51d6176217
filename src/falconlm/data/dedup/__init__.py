"""Deduplication at corpus scale: MinHash LSH, exact substrings (suffix array) and URLs.

Light to import (numpy and xxhash only): the stage modules, the executor and pydivsufsort are
imported where they are used. Nothing here imports torch."""

from falconlm.data.config import PRESETS, MinHashConfig
from falconlm.data.dedup.minhash import MinHasher, match_probability, s_curve_table
from falconlm.data.dedup.normalize import normalize_text, reversible_words

__all__ = [
    "PRESETS",
    "MinHashConfig",
    "MinHasher",
    "match_probability",
    "s_curve_table",
    "normalize_text",
    "reversible_words",
]
