"""Decoding tests run tiny models on one intra-op thread (the checkpoint fixtures are in tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models decode fastest on one intra-op thread (thread hand-offs cost more than the matmuls on a busy box)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
