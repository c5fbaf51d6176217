"""Extraction post-processing and time limit; language identification with the bundled LID-176."""

from __future__ import annotations

import time

import pytest

from falconlm.data import extract as extract_mod
from falconlm.data.document import Document
from falconlm.data.extract import Extract, ExtractConfig, postprocess
from falconlm.data.filters.language import LanguageConfig, LanguageFilter, default_model_path

from refine_helpers import ENGLISH, html_page


def test_postprocess_collapses_newlines_and_removes_urls():
    text = "Intro line\n\n\n\nSee https://example.com/a?b=c and www.example.org/page for more.\n\n\nEnd  \n"
    out = postprocess(text)
    assert out == "Intro line\n\nSee  and  for more.\n\nEnd"
    assert "\n\n\n" not in postprocess("a\n\n\n\n\n\nb")
    assert postprocess("a\n\n\n\nb", remove_urls=False, max_newlines=1) == "a\nb"


@pytest.mark.parametrize("extractor", ["trafilatura", "resiliparse"])
def test_both_extractors_return_main_text(extractor):
    html = html_page("Valley", [ENGLISH, ENGLISH.replace("river", "lake")]).decode()
    doc = Extract(ExtractConfig(extractor=extractor)).process(Document("1", html, "http://x"))
    assert isinstance(doc, Document)
    assert "river valley" in doc.text and "<p>" not in doc.text


def test_empty_and_error_pages_are_dropped():
    ex = Extract(ExtractConfig(extractor="resiliparse"))
    assert ex.process(Document("1", "<html><script>x()</script></html>")) == "empty"


def test_time_limit_drops_a_slow_page(monkeypatch):
    def slow(html, config):
        t_end = time.process_time() + 3
        while time.process_time() < t_end:  # a pathological page burns CPU
            pass
        return "never"

    monkeypatch.setattr(extract_mod, "extract_text", slow)
    ex = Extract(ExtractConfig(extractor="resiliparse", timeout_s=0.2))
    t0 = time.monotonic()
    assert ex.process(Document("1", "<html>x</html>")) == "timeout"
    assert time.monotonic() - t0 < 1.5


def test_language_model_ships_in_the_wheel():
    assert default_model_path().endswith("lid.176.ftz")


def test_language_filter_keeps_english_and_labels_it():
    lf = LanguageFilter()
    doc = lf.process(Document("1", ENGLISH))
    assert isinstance(doc, Document)
    assert doc.metadata["language"] == "en" and doc.metadata["language_score"] >= 0.65


def test_language_filter_drops_other_languages_and_low_scores():
    lf = LanguageFilter()
    fr = "La vallée de la rivière a une longue histoire agricole, et les villages gardent leurs coutumes anciennes."
    assert lf.process(Document("2", fr)) == "other_language"
    assert lf.process(Document("3", "x7f3 99-12 a1b2 zz9 0x4f 12 34 56")) == "low_language_score"
    both = LanguageFilter(LanguageConfig(languages=("en", "fr")))
    assert isinstance(both.process(Document("4", fr)), Document)


def test_language_threshold_is_inclusive():
    from falconlm.data.filters.language import load_model, predict_language

    _, score = predict_language(ENGLISH, load_model())
    exact = LanguageFilter(LanguageConfig(min_score=score))  # score == threshold: kept (paper: drop if < 0.65)
    above = LanguageFilter(LanguageConfig(min_score=score + 1e-4))
    assert isinstance(exact.process(Document("6", ENGLISH)), Document)
    assert above.process(Document("7", ENGLISH)) == "low_language_score"


def test_trafilatura_dedup_state_does_not_leak_between_tasks():
    shared = "This exact paragraph about the mills on the river appears on both pages of the site, word for word, every time."
    a = html_page("A", [ENGLISH, shared, shared.replace("mills", "bridges")]).decode()
    b = html_page("B", [ENGLISH.replace("valley", "plain"), shared, shared.replace("river", "lake")]).decode()
    task1 = Extract(ExtractConfig(extractor="trafilatura"))
    task1.process(Document("a", a))
    after_a = task1.process(Document("b", b))
    fresh = Extract(ExtractConfig(extractor="trafilatura")).process(Document("b", b))  # the next task
    assert isinstance(fresh, Document) and isinstance(after_a, Document)
    assert Extract(ExtractConfig(extractor="trafilatura")).process(Document("b", b)).text == fresh.text


def test_unsure_prefix_falls_back_to_the_whole_document():
    codes = " ".join(f"{i:05x}-{i * 7 % 9999:04d}" for i in range(200))[:2100]
    text = codes + "\n" + ENGLISH * 12  # the first 2,000 characters are no language at all
    fast = LanguageFilter(LanguageConfig(prefix_chars=2000)).process(Document("p", text))
    full = LanguageFilter(LanguageConfig(prefix_chars=0)).process(Document("p", text))
    assert isinstance(fast, Document) and isinstance(full, Document)
    assert fast.metadata == full.metadata and fast.metadata["language"] == "en"
