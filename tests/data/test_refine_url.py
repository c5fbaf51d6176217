"""URL stage: blocklist (with subdomains), UT1 directories, strict subwords, hard words, soft count."""

from __future__ import annotations

import pytest

from falconlm.data.filters.url import URLFilter, URLFilterConfig, domain_suffixes, host_of, load_ut1_domains
from falconlm.errors import FalconError


@pytest.fixture()
def lists(tmp_path):
    (tmp_path / "strict.txt").write_text("# strict\nporn\nxxx\n")
    (tmp_path / "hard.txt").write_text("casino\nsex\n")
    (tmp_path / "soft.txt").write_text("hot\nsingles\ndating\n")
    return tmp_path


def make(lists, **kw) -> URLFilter:
    return URLFilter(URLFilterConfig(
        strict_subwords_file=str(lists / "strict.txt"), hard_words_file=str(lists / "hard.txt"),
        soft_words_file=str(lists / "soft.txt"), **kw))


def test_strict_list_matches_subwords_even_glued_or_split_by_punctuation(lists):
    f = make(lists)
    assert f.check("http://freepornvideos.example.com/") == "strict_subword"
    assert f.check("http://example.com/p-o-r-n/page") == "strict_subword"  # punctuation removed first
    assert f.check("http://example.com/XXXtra") == "strict_subword"  # case-insensitive
    assert f.check("http://example.com/pornography-history") == "strict_subword"
    assert f.check("http://example.com/por/n") == "strict_subword"
    assert f.check("http://example.com/popcorn") is None


def test_hard_list_needs_a_whole_word(lists):
    f = make(lists)
    assert f.check("http://example.com/casino/") == "hard_word"
    assert f.check("http://example.com/best_casino_games") == "hard_word"
    assert f.check("http://example.com/casinos-of-monaco") is None  # not the whole word
    assert f.check("http://sussex.example.com/") is None  # 'sex' inside a word is not a hit
    assert f.check("http://example.com/SEX") == "hard_word"


def test_soft_list_needs_two_hits(lists):
    f = make(lists)
    assert f.check("http://example.com/hot-weather-report") is None  # one hit is allowed
    assert f.check("http://example.com/hot-singles") == "soft_words"
    assert f.check("http://example.com/hot/hot") == "soft_words"  # repeated word counts twice
    f3 = make(lists, soft_threshold=3)
    assert f3.check("http://example.com/hot-singles") is None
    assert f3.check("http://example.com/hot-singles-dating") == "soft_words"


def test_blocklist_covers_subdomains_only(lists, tmp_path):
    f = make(lists, extra_blocked_domains=("bad.example",))
    assert f.check("http://bad.example/x") == "blocklisted_domain"
    assert f.check("https://www.cdn.bad.example:8080/x") == "blocklisted_domain"
    assert f.check("http://notbad.example/x") is None
    assert f.check("http://bad.example.org/x") is None


def test_default_blocklist_and_hq_domains(lists):
    f = make(lists)
    assert f.check("https://www.pornhub.com/") == "blocklisted_domain"
    assert f.check("https://en.wikipedia.org/wiki/Falcon") == "hq_domain_excluded"
    assert f.check("https://github.com/tiiuae") == "hq_domain_excluded"
    assert f.check("https://stackoverflow.com/questions/1") == "hq_domain_excluded"
    keep = make(lists, exclude_hq_domains=False)
    assert keep.check("https://en.wikipedia.org/wiki/Falcon") is None


def test_ut1_directory(tmp_path, lists):
    ut1 = tmp_path / "ut1"
    (ut1 / "adult").mkdir(parents=True)
    (ut1 / "adult" / "domains").write_text("adult-site.example\n")
    (ut1 / "gambling").mkdir()
    (ut1 / "gambling" / "domains").write_text("bets.example\n")
    (ut1 / "shopping").mkdir()  # a category RefinedWeb did not use
    (ut1 / "shopping" / "domains").write_text("shop.example\n")
    assert load_ut1_domains(ut1) == {"adult-site.example", "bets.example"}
    f = make(lists, blocklist_dir=str(ut1))
    assert f.check("http://www.bets.example/") == "blocklisted_domain"
    assert f.check("http://shop.example/") is None
    with pytest.raises(FalconError, match="UT1"):
        load_ut1_domains(tmp_path / "missing")


def test_url_helpers_and_bad_urls(lists):
    assert host_of("HTTP://User@Www.Example.COM.:80/a") == "www.example.com"
    assert domain_suffixes("a.b.c") == ["a.b.c", "b.c", "c"]
    f = make(lists)
    assert f.check("not a url") == "bad_url"
