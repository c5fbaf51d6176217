"""Fixtures for the model tests."""

import pytest


@pytest.fixture
def kernel_calls(monkeypatch):
    """spy(name) -> list: from then on each call of torch.ops.falconlm_quant.<name> appends its first argument's shape (undone with monkeypatch)."""
    import torch

    def spy(name: str) -> list:
        namespace = torch.ops.falconlm_quant
        real, calls = getattr(namespace, name), []

        class Spy:
            def __getattr__(self, attr):
                if attr == name:
                    return lambda *a: calls.append(a[0].shape) or real(*a)
                return getattr(namespace, attr)

        monkeypatch.setattr(torch.ops, "falconlm_quant", Spy(), raising=False)
        return calls

    return spy
