"""The memory estimate every allocating command checks first, and the MFU figure that never exceeds 100%."""

import pytest

from falconlm.errors import FalconError
from falconlm.memory import check_fits, inference_bytes, training_bytes
from falconlm.model.config import FalconConfig


def test_training_estimate_counts_weights_gradients_and_adam():
    cfg = FalconConfig.from_preset("falcon-7b")
    est = training_bytes(cfg, seq_len=2048, micro_batch=1)
    parts = dict(est.parts)
    n = cfg.num_parameters()
    assert parts["weights"] == parts["gradients"] == 4 * n and parts["AdamW states"] == 8 * n
    sharded = dict(training_bytes(cfg, 2048, 1, shards=8).parts)  # FSDP shards weights and states, not activations
    assert sharded["AdamW states"] == parts["AdamW states"] / 8 and sharded["activations"] == parts["activations"]
    assert dict(training_bytes(cfg, 2048, 1, trainable_fraction=0.0).parts)["AdamW states"] == 0  # LoRA
    assert inference_bytes(cfg, "bfloat16").total == 2 * n


def test_check_fits_refuses_with_the_figures_unless_forced(monkeypatch):
    import falconlm.memory as memory

    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": (8e9, "available RAM"))
    est = training_bytes(FalconConfig.from_preset("falcon-7b"), 2048, 1)
    with pytest.raises(FalconError, match=r"needs about .* GB .* but this machine has 8.0 GB available RAM.*--force"):
        check_fits(est, "pretrain of falcon-7b")
    check_fits(est, "pretrain of falcon-7b", force=True)
    check_fits(training_bytes(FalconConfig.from_preset("tiny-7b"), 128, 4), "pretrain of tiny-7b")


def test_mfu_never_prints_above_100_percent():
    from falconlm.train.progress import format_mfu

    assert format_mfu(0.423) == "42.3%" and format_mfu(1.0) == "100.0%"
    assert "%" not in format_mfu(3.323).split()[0]
