"""Shared test settings: offline, deterministic, quiet."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ----- tiny random-weight checkpoints with a trained 300-token tokenizer (decoding, serving, chat) -----
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def build_checkpoint(out: Path, preset: str = "tiny-7b", seed: int = 0, **overrides) -> Path:
    """falconlm.testing.build_checkpoint, imported late so collecting torch-free tests never imports torch."""
    from falconlm.testing import build_checkpoint as build

    return build(out, preset=preset, seed=seed, **overrides)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """tiny-7b (multi-query, RoPE) checkpoint directory."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny7b")


@pytest.fixture(scope="session")
def tiny_rw_ckpt(tmp_path_factory) -> Path:
    """tiny-rw (multi-head, ALiBi) checkpoint directory."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tinyrw", preset="tiny-rw", seed=1)


@pytest.fixture(scope="session")
def tiny_40b_ckpt(tmp_path_factory) -> Path:
    """tiny-40b (new decoder architecture, grouped KV heads) checkpoint directory."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny40b", preset="tiny-40b", seed=2)


@pytest.fixture(scope="session")
def loaded(tiny_ckpt):
    """(model, tokenizer) of the tiny-7b checkpoint."""
    from falconlm.model.falcon import FalconForCausalLM
    from falconlm.tokenizer.falcon import FalconTokenizer

    return FalconForCausalLM.from_pretrained(tiny_ckpt).eval(), FalconTokenizer.load(tiny_ckpt)


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """Decoding and serving tests run tiny models on one intra-op thread (thread hand-offs cost more than their matmuls)."""
    if request.path.parent.name not in ("decoding", "serve"):
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
