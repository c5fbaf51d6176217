"""Without launching ranks: the plan's errors and slices, the launch checks, and the `inspect --memory` table."""

from __future__ import annotations

import pytest
import torch

from falconlm.errors import FalconError
from falconlm.model.config import FalconConfig
from falconlm.parallel import ShardPlan, check_degree, check_launch
from falconlm.parallel.memory import degrees, rank_memory


@pytest.mark.parametrize(("preset", "tp", "words"), [
    ("falcon-40b", 3, "does not divide the model's 8 KV groups"),
    ("falcon-180b", 16, "does not divide the model's 8 KV groups"),
    ("falcon-7b", 2, "does not divide the 71 query heads of this multi-query model"),
    ("falcon-40b", 0, "--tp must be >= 1"),
])
def test_degrees_that_do_not_split_the_model_are_one_sentence_errors(preset, tp, words):
    with pytest.raises(FalconError, match=words) as err:
        check_degree(FalconConfig.from_preset(preset), tp)
    assert "\n" not in str(err.value)


def test_launch_checks(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(FalconError, match=r"--tp 2 runs 2 processes: launch it with torchrun --nproc-per-node 2"):
        check_launch(2)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(FalconError, match="torchrun started 4 processes but --tp is 2"):
        check_launch(2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_launch(2)
    monkeypatch.setattr(torch.distributed, "is_gloo_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FalconError, match="needs torch.distributed's gloo backend, which this torch build lacks"):
        check_launch(2)


def test_generate_with_tp_outside_torchrun_says_how_to_launch(tiny_40b_ckpt, capsys, monkeypatch):
    from falconlm.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["generate", str(tiny_40b_ckpt), "--prompt", "hi", "--tp", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "falconlm generate: error: --tp 2 runs 2 processes: launch it with torchrun --nproc-per-node 2 -m falconlm ... --tp 2"


def test_slices_reassemble_every_tensor(tiny_40b_ckpt, tiny_ckpt, tiny_rw_ckpt):
    """Each rank's slices of every tensor, put back in rank order along the split axis, are the whole tensor."""
    from safetensors.torch import load_file

    for ckpt in (tiny_40b_ckpt, tiny_ckpt, tiny_rw_ckpt):
        config = FalconConfig.from_json(ckpt)
        state = load_file(str(ckpt / "model.safetensors"))
        plans = [ShardPlan(config, r, 2) for r in range(2)]
        for key, whole in state.items():
            parts = [p.read(key, whole) for p in plans]
            if all(torch.equal(part, whole) for part in parts):
                continue  # replicated (LayerNorms, row-parallel biases)
            if key.endswith("query_key_value.weight") and config.stored_kv_heads == 1:
                d, h = config.head_dim, config.num_attention_heads
                q = torch.cat([part[: -2 * d] for part in parts])
                assert torch.equal(torch.cat([q, parts[0][-2 * d :]]), whole) and torch.equal(parts[0][-2 * d :], parts[1][-2 * d :])
                continue
            dim = 1 if key.endswith(("dense.weight", "dense_4h_to_h.weight")) else 0
            assert torch.equal(torch.cat(parts, dim=dim), whole), key
            assert all(part.untyped_storage().nbytes() == part.numel() * part.element_size() for part in parts), key


def test_memory_table_figures():
    kib = 1024
    for preset, kv in (("falcon-7b", 8), ("falcon-40b", 120), ("falcon-180b", 160)):
        config = FalconConfig.from_preset(preset)
        one = {m.precision: m for m in rank_memory(config, 1)}
        assert one["bf16"].kv_bytes_per_token == kv * kib
        assert one["bf16"].weight_bytes == 2 * config.num_parameters()  # counted from the model: every parameter, tied head once
        assert one["int4"].weight_bytes < one["int8"].weight_bytes < one["bf16"].weight_bytes
    config = FalconConfig.from_preset("falcon-180b")
    whole = rank_memory(config, 1, ("bf16",))[0]
    eight = rank_memory(config, 8, ("bf16",))[0]
    assert eight.kv_bytes_per_token == 20 * kib
    assert whole.weight_bytes / 8 < eight.weight_bytes < whole.weight_bytes / 8 * 1.01  # replicated LayerNorms are a sliver
    assert degrees(FalconConfig.from_preset("falcon-7b")) == [1] and degrees(config) == [1, 2, 4, 8]


def test_inspect_memory_prints_the_table(capsys):
    from falconlm.cli import main

    assert main(["inspect", "falcon-180b", "--memory"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 3 * 4
    row = next(line for line in lines if line.split()[1:3] == ["bf16", "8"])
    assert "160.0 KiB" not in row and "20.0 KiB" in row and "41.6 GiB" in row


def test_gptq_row_parallel_layers_split_only_along_whole_groups():
    from falconlm.quant.spec import QuantSpec

    def plan(tp, **spec):
        config = FalconConfig.from_preset("tiny-rw", hidden_size=192, num_attention_heads=12, quantization_config=QuantSpec(bits=4, **spec).to_config())
        return ShardPlan(config, 1, tp)

    scales = torch.arange(6 * 192, dtype=torch.float32).view(6, 192)  # dense: 192 inputs in groups of 32
    assert torch.equal(plan(2, group_size=32).read("transformer.h.0.self_attention.dense.scales", scales), scales[3:6])
    g_idx = torch.arange(192, dtype=torch.int32) // 32
    assert torch.equal(plan(2, group_size=32).read("transformer.h.0.self_attention.dense.g_idx", g_idx), g_idx[96:] - 3)
    with pytest.raises(FalconError, match="would split transformer.h.0.self_attention.dense's groups of 32 inputs"):
        plan(4, group_size=32).read("transformer.h.0.self_attention.dense.scales", scales)  # 48 inputs per rank
    with pytest.raises(FalconError, match="act order"):
        plan(2, group_size=32, desc_act=True).read("transformer.h.0.self_attention.dense.g_idx", g_idx)
    with pytest.raises(FalconError, match="does not split a quantized LM head"):
        plan(2, group_size=32, lm_head=True).apply(None)
