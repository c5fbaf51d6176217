"""Logits match transformers' FalconForCausalLM (fp32) for every block style and many shapes."""

from __future__ import annotations

import pytest
import torch

from falconlm.model.config import FalconConfig

from falconlm.testing import make_pair

TOL = 1e-4

# (preset, overrides): several random small configs per block style.
CASES = [
    ("tiny-7b", {}),  # MQA, parallel, one LayerNorm
    ("tiny-7b", {"hidden_size": 96, "num_attention_heads": 6, "num_hidden_layers": 3}),
    ("tiny-7b", {"rope_theta": 500.0}),
    ("tiny-40b", {}),  # GQA, 2 KV groups, ln_attn + ln_mlp
    ("tiny-40b", {"hidden_size": 128, "num_attention_heads": 8, "num_kv_heads": 4, "rope_theta": 1_000_000.0}),
    ("tiny-40b", {"hidden_size": 96, "num_attention_heads": 6, "num_kv_heads": 3, "num_hidden_layers": 3}),
    ("tiny-40b", {"num_kv_heads": 1}),  # new architecture with a single KV head
    ("tiny-40b", {"num_ln_in_parallel_attn": 1}),  # Falcon2-11B style: new arch, one shared LayerNorm
    ("tiny-rw", {}),  # MHA + ALiBi, sequential, biases
    ("tiny-rw", {"hidden_size": 96, "num_attention_heads": 6}),  # non-power-of-two heads
    ("tiny-rw", {"hidden_size": 120, "num_attention_heads": 12, "num_hidden_layers": 3}),  # 12 heads: 8 + 4 extra slopes
    ("tiny-7b", {"multi_query": False}),  # plain MHA with RoPE
    ("tiny-7b", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
]


def _ids(config: FalconConfig, shape=(2, 19), seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, shape, generator=g)


@pytest.mark.parametrize("preset,overrides", CASES, ids=[f"{p}-{i}" for i, (p, _) in enumerate(CASES)])
def test_logits_match_transformers(preset, overrides):
    config = FalconConfig.from_preset(preset, **overrides)
    ours, hf = make_pair(config)
    ids = _ids(config)
    with torch.no_grad():
        a = ours(ids)
        b = hf(ids).logits
    assert a.shape == (2, 19, config.vocab_size)
    assert (a - b).abs().max().item() < TOL


@pytest.mark.parametrize("preset", ["tiny-7b", "tiny-40b", "tiny-rw"])
def test_padded_batch_matches_transformers_and_unpadded(preset):
    config = FalconConfig.from_preset(preset)
    ours, hf = make_pair(config)
    ids = _ids(config, (3, 13))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    mask[2, :1] = 0
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask)
        b = hf(ids, attention_mask=mask, position_ids=positions).logits
        alone = ours(ids[0:1, 5:])
    assert torch.isfinite(a).all()
    assert (a - b)[mask.bool()].abs().max().item() < TOL
    assert (a[0, 5:] - alone[0]).abs().max().item() < TOL


def test_dynamic_rope_matches_transformers_past_the_trained_length():
    config = FalconConfig.from_preset("tiny-7b", max_position_embeddings=16, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    ours, hf = make_pair(config)
    ids = _ids(config, (1, 40))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() < TOL


def test_fused_qkv_layout_groups_queries_with_their_kv_head():
    """Perturb only k of KV group 1: exactly the query heads of group 1 change their attention output."""
    config = FalconConfig.from_preset("tiny-40b", hidden_size=128, num_attention_heads=8, num_kv_heads=2, num_hidden_layers=1)
    ours, _ = make_pair(config)
    attn = ours.transformer.h[0].self_attention
    x = torch.randn(1, 7, config.hidden_size)
    captured = []
    hook = attn.dense.register_forward_hook(lambda m, inp, out: captured.append(inp[0].detach().clone()))
    from falconlm.model.falcon import _ForwardContext, rope_cos_sin

    ctx = _ForwardContext()
    ctx.cos, ctx.sin = rope_cos_sin(config, torch.arange(7)[None], torch.float32)
    ctx.causal_only = True
    with torch.no_grad():
        attn(x, ctx)
        d, g = config.head_dim, 4
        k_rows = slice((1 * (g + 2) + g) * d, (1 * (g + 2) + g + 1) * d)  # group 1's k block
        attn.query_key_value.weight[k_rows] += 0.5
        attn(x, ctx)
    hook.remove()
    before, after = (c.view(7, 8, d) for c in captured)
    changed = [(before[1:, h] - after[1:, h]).abs().max().item() > 1e-6 for h in range(8)]
    assert changed == [False] * 4 + [True] * 4


def test_bad_input_shapes_raise_clear_errors():
    config = FalconConfig.from_preset("tiny-7b")
    ours, _ = make_pair(config)
    with pytest.raises(ValueError, match="input_ids must be a"):
        ours(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask shape"):
        ours(torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 4))
