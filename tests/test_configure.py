"""falconlm.configure: one mechanism from a dataclass to flags, YAML and the written resolved config."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, Literal

import pytest

from falconlm import configure
from falconlm.cli import COMMANDS, main
from falconlm.configure import add_config_arguments, coerce, config_from_args, load_config, save_config
from falconlm.errors import FalconError
from falconlm.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]

# Every subcommand whose flags come from falconlm.configure. A command joins the help test by being listed here.
CONVERTED = ["pretrain", "finetune", "tokenize", "train-tokenizer", "evaluate", "init-model", "inspect", "quickstart", "generate", "chat", "serve", "merge-lora", "parity",
             "refine", "dedup", "quantize"]
# The few arguments a command keeps beside its configs' flags: shortcuts onto those flags, no field of their own.
EXTRA = {"refine": ["--no-dedup", "--set"], "dedup": ["--minhash", "--tokenizer"]}


@dataclass
class Inner:
    depth: int = 2  # levels
    name: str = "x"


@dataclass
class Extra:
    size: int = 5  # how big
    tags: list[str] = field(default_factory=lambda: ["a"])


@dataclass
class Toy:
    """A config with one field of every kind."""

    out: str  # where it goes
    steps: int = 10  # how many
    rate: float = 0.5
    flag: bool = False  # a switch
    tags: list[str] = field(default_factory=list)  # repeatable
    limit: int | None = None  # None = no limit
    mode: Literal["fast", "slow"] = "fast"
    extra: dict[str, Any] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    opt: Extra | None = None  # an optional section
    level: str = field(default="low", metadata={"help": "from metadata", "choices": ("low", "high")})


@dataclass
class Gen:
    """The shape of the generation settings `generate`, `chat` and `serve` share."""

    max_new_tokens: int = 64  # tokens to generate
    temperature: float = 0.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    stop_strings: list[str] = field(default_factory=list)  # stop strings
    seed: int | None = None
    eos_token_id: int | list[int] | None = None  # None: the model's


def parse(cls: type, argv: list[str], **kwargs: Any) -> Any:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls, **kwargs)
    return config_from_args(cls, parser.parse_args(argv), section=kwargs.get("section"))


def test_coercion_by_type_hints():
    assert coerce("4", int) == 4 and type(coerce("4", int)) is int
    assert coerce("1.0e11", float) == 1e11 and coerce("4e6", float) == 4e6 and coerce(3, float) == 3.0
    assert coerce("1e8", int) == 100_000_000 and coerce(2.0, int) == 2
    assert coerce("yes", bool) is True and coerce("false", bool) is False and coerce(True, bool) is True
    assert coerce("none", int | None) is None and coerce(None, float | None) is None and coerce("3", int | None) == 3
    assert coerce("a", list[str]) == ["a"] and coerce(["1", 2], list[int]) == [1, 2]
    assert coerce("k=3", dict[str, Any]) == {"k": 3} and coerce("{a: 1, b: x}", dict) == {"a": 1, "b": "x"}
    assert coerce("slow", Literal["fast", "slow"]) == "slow"
    for value, hint in [("abc", int), ("1.5", int), (True, int), ("x", float), ("maybe", bool), ("medium", Literal["fast", "slow"]), (None, int), ([1], str)]:
        with pytest.raises(ValueError):
            coerce(value, hint)


def test_precedence_default_then_yaml_then_flag(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("out: from-yaml\nsteps: '4'\nrate: 1.0e-3\ninner: {depth: 7}\n")
    cfg = parse(Toy, ["--config", str(y), "--steps", "9"])
    assert (cfg.out, cfg.steps, cfg.rate, cfg.inner.depth, cfg.inner.name, cfg.flag) == ("from-yaml", 9, 1e-3, 7, "x", False)
    cfg = parse(Toy, ["--out", "o"], defaults={"rate": 0.7})  # a command's own default replaces the dataclass's
    assert cfg.rate == 0.7
    assert parse(Toy, ["--config", str(y)], defaults={"rate": 0.7}).rate == 1e-3


def test_bool_list_optional_dict_and_choices():
    cfg = parse(Toy, ["--out", "o", "--flag", "--tags", "a", "b", "--tags", "c", "--limit", "3", "--mode", "slow", "--extra", "k=1", "j={x: 2}", "--level", "high"])
    assert (cfg.flag, cfg.tags, cfg.limit, cfg.mode, cfg.extra, cfg.level) == (True, ["a", "b", "c"], 3, "slow", {"k": 1, "j": {"x": 2}}, "high")
    assert parse(Toy, ["--out", "o", "--flag", "--no-flag", "--limit", "none"]).flag is False
    assert parse(Toy, ["--out", "o", "--limit", "none"]).limit is None
    with pytest.raises(SystemExit):
        parse(Toy, ["--out", "o", "--mode", "medium"])
    with pytest.raises(SystemExit):
        parse(Toy, ["--out", "o", "--steps", "many"])


def test_nested_and_optional_sections(tmp_path):
    cfg = parse(Toy, ["--out", "o", "--inner.depth", "3"])
    assert cfg.inner == Inner(depth=3) and cfg.opt is None
    assert parse(Toy, ["--out", "o", "--opt"]).opt == Extra()
    assert parse(Toy, ["--out", "o", "--opt.size", "9"]).opt == Extra(size=9)  # a sub-field turns its section on
    y = tmp_path / "s.yaml"
    y.write_text("out: o\nopt: {tags: [b, c]}\n")
    assert parse(Toy, ["--config", str(y), "--opt.size", "1"]).opt == Extra(size=1, tags=["b", "c"])
    assert parse(Toy, ["--config", str(y), "--no-opt"]).opt is None
    # a config under a section: --gen.field, read from the YAML file's `gen:` mapping
    y.write_text("gen: {temperature: 0.2}\n")
    g = parse(Gen, ["--config", str(y), "--gen.top-k", "5"], section="gen")
    assert (g.temperature, g.top_k) == (0.2, 5)


def test_two_configs_on_one_parser(tmp_path):
    """A command may hold several configs: each reads its own flags and YAML keys, unknown keys still caught."""
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Toy)
    add_config_arguments(parser, Gen, section="gen")
    add_config_arguments(parser, Inner)
    y = tmp_path / "both.yaml"
    y.write_text("out: o\ndepth: 4\ngen: {seed: 3}\n")
    args = parser.parse_args(["--config", str(y), "--gen.top-k", "2", "--steps", "5"])
    assert config_from_args(Toy, args).steps == 5 and config_from_args(Inner, args).depth == 4
    assert (config_from_args(Gen, args, section="gen").seed, config_from_args(Gen, args, section="gen").top_k) == (3, 2)
    y.write_text("out: o\ndepht: 4\n")
    with pytest.raises(FalconError, match="unknown key depht"):
        config_from_args(Toy, parser.parse_args(["--config", str(y)]))


def test_generation_flags_with_a_command_default():
    """The flags of generate/chat/serve: --stop repeatable, and chat's own temperature in the help and the config."""
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Gen, aliases={"stop_strings": "--stop"}, defaults={"temperature": 0.7})
    assert re.search(r"--temperature FLOAT\s+0 = greedy \(default: 0.7\)", parser.format_help())
    args = parser.parse_args(["--max-new-tokens", "8", "--stop", "a", "--stop", "b", "--seed", "1", "--top-p", "0.9"])
    assert config_from_args(Gen, args) == Gen(max_new_tokens=8, temperature=0.7, top_p=0.9, stop_strings=["a", "b"], seed=1)
    assert config_from_args(Gen, parser.parse_args(["--eos-token-id", "11"])).eos_token_id == 11
    assert coerce([1, "2"], int | list[int] | None) == [1, 2] and coerce("7", int | list[int] | None) == 7
    with pytest.raises(ValueError, match="expected int or list"):
        coerce("x", int | list[int] | None)


def test_errors_are_one_sentence(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("out: o\nsteps: 3\nrat: 0.1\n")
    with pytest.raises(FalconError, match=r"bad.yaml: unknown key rat for Toy \(did you mean rate\?\)"):
        parse(Toy, ["--config", str(y)])
    y.write_text("out: o\ninner: {depht: 1}\n")
    with pytest.raises(FalconError, match=r"unknown key inner.depht .*did you mean inner.depth"):
        parse(Toy, ["--config", str(y)])
    y.write_text("out: o\nsteps: [1\n")
    with pytest.raises(FalconError, match=r"bad.yaml line \d: not valid YAML"):
        parse(Toy, ["--config", str(y)])
    y.write_text("out: o\nsteps: many\n")
    with pytest.raises(FalconError, match=r"bad.yaml: steps: expected an integer, got 'many'"):
        parse(Toy, ["--config", str(y)])
    y.write_text("- a list\n")
    with pytest.raises(FalconError, match="must hold a mapping"):
        parse(Toy, ["--config", str(y)])
    with pytest.raises(FalconError, match="missing --out"):
        parse(Toy, [])
    with pytest.raises(FalconError, match="does not exist"):
        parse(Toy, ["--config", str(tmp_path / "nope.yaml")])


def test_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    y = tmp_path / "run.yaml"
    y.write_text("model: tiny-7b\nlearning_rate: 1e-3\n")
    assert main(["pretrain", "--config", str(y), "--max-steps", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown key learning_rate" in err and "Traceback" not in err


def test_resolved_config_round_trip(tmp_path):
    from falconlm.finetune.config import FinetuneConfig
    from falconlm.finetune.lora import LoRAConfig

    train = TrainConfig(model="tiny-7b", max_tokens=1e11, model_overrides={"num_hidden_layers": 3}, peak_flops=None, precision="bf16-mixed")
    save_config(train, tmp_path / "run_config.yaml")
    assert load_config(TrainConfig, tmp_path / "run_config.yaml") == train
    ft = FinetuneConfig(checkpoint="c", data=["a.jsonl"], out="o", lora=LoRAConfig(rank=4, targets=["dense"]), train=TrainConfig(lr=1e-3))
    ft.save(tmp_path / "finetune_config.yaml")
    assert load_config(FinetuneConfig, tmp_path / "finetune_config.yaml") == ft
    toy = Toy(out="o", tags=["x"], opt=Extra(size=2), extra={"k": [1, 2]})
    save_config(toy, tmp_path / "toy.yaml")
    assert load_config(Toy, tmp_path / "toy.yaml") == toy


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(TrainConfig, path)
    cfg.data = "shards"
    cfg.validate()
    assert cfg.max_steps or cfg.max_tokens


def test_finetune_derived_defaults(tmp_path):
    from falconlm.model.config import FalconConfig

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    FalconConfig.from_preset("tiny-7b", max_position_embeddings=256).save(ckpt)
    module = import_module(COMMANDS["finetune"][0])

    def cfg(*flags: str) -> Any:
        parser = argparse.ArgumentParser(prog="falconlm finetune")
        module.add_arguments(parser)
        return module.config(parser.parse_args([str(ckpt), "--data", "a.jsonl", "--out", "o", *flags]))

    full = cfg()
    assert (full.train.lr, full.train.seq_len, full.warmup_fraction, full.lora) == (2e-5, 256, 0.03, None) and full.train.min_lr == pytest.approx(2e-6)
    assert (full.train.global_batch_size, full.train.model, full.train.out) == (16, str(ckpt), "o")
    lora = cfg("--lora", "--lora-targets", "dense,query_key_value", "--lr", "1e-2", "--warmup-tokens", "100", "--no-progress")
    assert (lora.train.lr, lora.lora.targets, lora.warmup_fraction, lora.train.progress_bar) == (1e-2, ["dense", "query_key_value"], None, False)
    assert lora.train.min_lr == pytest.approx(1e-3) and lora.train.warmup_tokens == 100
    assert cfg("--lora-rank", "4").lora.rank == 4 and cfg("--lora").train.lr == 2e-4


def _help_entries(text: str) -> list[tuple[list[str], str]]:
    """(the option strings or metavar, the help) of each argument in an argparse help text."""
    entries: list[tuple[list[str], str]] = []
    body = text.split("\n\n", 1)[1]  # past the usage lines
    for line in body.splitlines():
        if re.match(r"  \S", line):
            invocation, _, help_text = line.strip().partition("  ")
            entries.append(([part.split(" ")[0] for part in invocation.split(", ")], help_text.strip()))
        elif line.startswith("   ") and entries:
            entries[-1] = (entries[-1][0], f"{entries[-1][1]} {line.strip()}".strip())
    return entries


@pytest.mark.parametrize("command", CONVERTED)
def test_help_lists_every_field_once_with_its_default(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per argument
    parser = argparse.ArgumentParser(prog=f"falconlm {command}", formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=1000, width=1000))
    import_module(COMMANDS[command][0]).add_arguments(parser)
    entries = _help_entries(parser.format_help())
    specs = parser.get_default(configure.SPECS)
    expected = 2  # -h and --config
    for spec in specs.values():
        section = spec["section"]
        for leaf in configure.leaves(spec["cls"]):
            if leaf.path in spec["skip"]:
                continue
            expected += 1
            canonical = leaf.path.rsplit(".", 1)[-1].upper() if spec["options"][leaf.path][0].isupper() else configure._flag(leaf.path, section)
            found = [h for names, h in entries if canonical in names]
            assert len(found) == 1, f"{command}: {canonical} listed {len(found)} times"
            default = spec["defaults"].get(leaf.path, leaf.default)
            tail = "(required)" if default is dataclasses.MISSING else f"(default: {configure.show(default)})"
            assert found[0].endswith(tail), f"{command}: {canonical} help {found[0]!r} does not end with {tail!r}"
    for flag in EXTRA.get(command, ()):
        assert sum(flag in names for names, _ in entries) == 1, f"{command}: {flag} listed {sum(flag in names for names, _ in entries)} times"
        expected += 1
    assert len(entries) == expected, f"{command}: {len(entries)} arguments, {expected} expected (a flag not made from the config?)"


def test_configure_does_not_import_torch():
    code = "import sys, falconlm.configure, falconlm.train.config; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_tuple_fields_from_flags_and_yaml():
    assert configure.coerce("en,de", tuple[str, ...]) == ("en", "de")
    assert configure.coerce(["en"], tuple[str, ...]) == ("en",)
    assert configure.coerce("[[2, 0.2], [3, 0.18]]", tuple[tuple[int, float], ...]) == ((2, 0.2), (3, 0.18))
    assert configure.coerce([["2", "0.5"]], tuple[tuple[int, float], ...]) == ((2, 0.5),)
    with pytest.raises(ValueError, match="expected 2 items"):
        configure.coerce([[1, 2, 3]], tuple[tuple[int, float], ...])


def test_every_subcommand_takes_its_flags_from_a_config():
    assert sorted(CONVERTED) == sorted(COMMANDS)
