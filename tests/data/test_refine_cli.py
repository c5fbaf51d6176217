"""`falconlm refine` from the command line: overrides, clear errors, summary."""

from __future__ import annotations

import json
import shutil

from falconlm.cli import main
from falconlm.data.cli import sample_path


def test_cli_runs_with_overrides_and_prints_a_summary(tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(sample_path(), inp / "a.warc.gz")
    out = tmp_path / "out"
    rc = main(["refine", str(inp), "--out", str(out), "--extractor", "resiliparse", "--no-progress",
               "--no-dedup", "--languages", "en,de", "--set", "quality.min_doc_words=40",
               "--set", "lines.max_removed_word_frac=0.5", "--format", "parquet", "--limit", "30"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "url_filter" in text and "report:" in text
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quality"]["min_doc_words"] == 40 and cfg["language"]["languages"] == ["en", "de"]
    assert cfg["lines"]["max_removed_word_frac"] == 0.5 and cfg["reader"]["limit"] == 30
    assert list((out / "data").glob("*.parquet"))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["steps"][0]["docs_out"] == 30


def test_cli_errors_are_one_clear_sentence(tmp_path, capsys):
    assert main(["refine", str(tmp_path / "missing.warc.gz"), "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["refine", str(sample_path()), "--out", str(tmp_path / "o"), "--set", "quality.nope=1"]) == 1
    assert "unknown setting 'quality.nope'" in capsys.readouterr().err
    assert main(["refine", str(sample_path()), "--out", str(tmp_path / "o"), "--recipe", "nope"]) == 1
    assert "unknown recipe" in capsys.readouterr().err
    assert main(["refine"]) == 1
    assert "give at least one INPUT" in capsys.readouterr().err


def test_dedup_settings_are_typed_fields_of_the_config(tmp_path):
    import argparse

    from falconlm.data.cli import add_arguments, build_config
    from falconlm.data.config import DedupConfig, MinHashConfig, RefineConfig

    yaml_file = tmp_path / "rw.yaml"
    yaml_file.write_text("quality:\n  min_doc_words: 30\ndedup:\n  exact_substring: null\n  resources:\n    memory_mb: 64\n")
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["x.warc.gz", "--config", str(yaml_file), "--set", "dedup.minhash.bands=14",
                         "--set", "dedup.minhash.rows=8", "--set", "dedup.url=none", "--slices-per-file", "3"])
    cfg = build_config(args)
    assert isinstance(cfg, RefineConfig) and isinstance(cfg.dedup, DedupConfig)
    assert cfg.dedup.minhash == MinHashConfig(bands=14, rows=8)
    assert cfg.dedup.exact_substring is None and cfg.dedup.url is None
    assert cfg.dedup.resources.memory_mb == 64 and cfg.quality.min_doc_words == 30 and cfg.slices_per_file == 3
    # a section that is off is switched back on by setting one of its fields
    args = p.parse_args(["x.warc.gz", "--config", str(yaml_file), "--set", "dedup.exact_substring.min_tokens=40"])
    assert build_config(args).dedup.exact_substring.min_tokens == 40
