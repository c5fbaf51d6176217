"""Fine-tuning fixtures: a tiny base checkpoint and a synthetic instruction set, fine-tuned once per session (full and LoRA)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ft_helpers, under --import-mode=importlib

import ft_helpers as H  # noqa: E402



@pytest.fixture(scope="session")
def base_ckpt(tmp_path_factory) -> Path:
    """The random-weight base checkpoint (tiny-7b, its own small BPE tokenizer, default chat template)."""
    return H.build_base(tmp_path_factory.mktemp("ft") / "base")


@pytest.fixture(scope="session")
def train_file(tmp_path_factory) -> Path:
    """The synthetic instruction set as JSONL (all three shapes)."""
    return H.write_jsonl(tmp_path_factory.mktemp("ft-data") / "train.jsonl", H.records())


def _finetune(base: Path, data: Path, out: Path, *extra: str) -> Path:
    from falconlm.cli import main

    with H.one_thread():  # session fixtures are set up before the per-test autouse fixture
        assert main(["finetune", str(base), "--data", str(data), "--out", str(out), *H.RUN_FLAGS, *extra]) == 0
    return out


@pytest.fixture(scope="session")
def full_run(base_ckpt, train_file, tmp_path_factory) -> Path:
    """OUT of a full fine-tuning run through the CLI."""
    return _finetune(base_ckpt, train_file, tmp_path_factory.mktemp("ft") / "full", "--lr", "5e-3")


@pytest.fixture(scope="session")
def lora_run(base_ckpt, train_file, tmp_path_factory) -> Path:
    """OUT of a LoRA run through the CLI (dropout on, as by default)."""
    return _finetune(base_ckpt, train_file, tmp_path_factory.mktemp("ft") / "lora", "--lora", "--lr", "1e-2", "--lora-dropout", "0.05")


@pytest.fixture(scope="session")
def run_cli():
    """The _finetune helper: run_cli(base, data, out, *flags) -> out."""
    return _finetune


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one intra-op thread (thread hand-offs cost more than the matmuls, the more so on a busy box)."""
    with H.one_thread():
        yield
