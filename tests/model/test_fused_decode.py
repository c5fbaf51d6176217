"""The compiled decode layer (decode_layer): a decode step through it gives the bits of the blocks' Python forward, for every block style, and falls back where it cannot."""

from __future__ import annotations

import pytest
import torch

from falconlm.model import falcon
from falconlm.model.config import FalconConfig
from falconlm.model.falcon import build_model
from falconlm.model.paged_cache import PagedLayout
from falconlm.quant import kernels
from falconlm.quant.save import quantize_model
from falconlm.quant.spec import QuantSpec

needs_kernel = pytest.mark.skipif(not kernels.f32_available(), reason="falconlm's kernels are not built here (no compiler or no AVX-512)")

# (style overrides, heads, kv heads, head size): 1 and 2 LayerNorms in parallel and sequential blocks, with
# multi-query, grouped (3 query heads per KV head, not a power of two) and multi-head attention, biases on
# the sequential one, and a width (5 x 16 = 80) that is no multiple of 32.
SHAPES = {
    "7b-mqa": (dict(multi_query=True, parallel_attn=True), 6, 1, 16),
    "40b-gqa": (dict(new_decoder_architecture=True, num_kv_heads=2), 6, 2, 16),
    "sequential-bias": (dict(parallel_attn=False, multi_query=False, bias=True), 5, 5, 16),
    "7b-wide-heads": (dict(multi_query=True, parallel_attn=True), 2, 1, 64),
}


def _model(shape: str, quant: str | None = None, seed: int = 0) -> falcon.FalconForCausalLM:
    overrides, heads, kv, dim = SHAPES[shape]
    overrides = {k: v for k, v in overrides.items() if k != "num_kv_heads"}
    config = FalconConfig(vocab_size=300, hidden_size=heads * dim, num_hidden_layers=3, num_attention_heads=heads, num_kv_heads=kv, max_position_embeddings=256, initializer_range=0.3, **overrides)
    model = build_model(config, seed=seed).eval()
    if quant is not None:
        # int8 per output channel, symmetric; int4 in groups of 16 with zero points
        spec = QuantSpec(bits=8, group_size=-1, sym=True) if quant == "int8" else QuantSpec(bits=4, group_size=16, sym=False)
        quantize_model(model, spec)
    return model


def _decode_hidden(model: falcon.FalconForCausalLM, fused: bool, rows: int, steps: int, monkeypatch) -> list[torch.Tensor]:
    """Final hidden states of a prefill and `steps` greedy decode steps of `rows` rows through the contiguous cache."""
    monkeypatch.setattr(falcon, "fused_decode", fused)
    g = torch.Generator().manual_seed(rows)
    ids = torch.randint(0, model.config.vocab_size, (rows, 9), generator=g)
    cache = model.new_cache(rows, 9 + steps)
    out = []
    with torch.no_grad():
        hidden = model.hidden_states(ids, cache=cache)[:, -1]
        for _ in range(steps):
            token = model.lm_head(hidden).argmax(-1, keepdim=True)
            hidden = model.hidden_states(token, cache=cache)[:, -1]
            out.append(hidden)
    return out


@needs_kernel
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("quant", [None, "int8", "int4"])
def test_decode_steps_give_the_bits_of_the_python_blocks(shape, quant, monkeypatch, kernel_calls):
    model = _model(shape, quant)
    for rows in (1, 3):
        unfused = _decode_hidden(model, False, rows, 5, monkeypatch)
        calls = kernel_calls("decode_layer")
        fused = _decode_hidden(model, True, rows, 5, monkeypatch)
        assert len(calls) == 5 * model.config.num_hidden_layers  # every decode step of every block went through it
        for a, b in zip(unfused, fused):
            assert torch.equal(a, b)
        monkeypatch.undo()


@needs_kernel
@pytest.mark.parametrize("quant", [None, "int4"])
def test_paged_decode_rows_give_the_bits_of_the_python_blocks(quant, monkeypatch):
    # A packed step of 4 decode rows with scattered slots and contexts of different lengths, through the paged pool.
    model = _model("40b-gqa", quant)
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([7, 1, 30, 12])
    rows, span = len(lengths), int(lengths.max())
    keys = torch.stack([torch.randperm(200, generator=g)[:span] for _ in range(rows)])
    write = keys[torch.arange(rows), lengths - 1]  # each row's new token takes the last slot of its context
    ids = torch.randint(0, 300, (1, rows), generator=g)
    positions = (lengths - 1)[None]
    results = []
    for fused in (False, True):
        monkeypatch.setattr(falcon, "fused_decode", fused)
        cache = model.new_paged_cache(25, 8)
        gen = torch.Generator().manual_seed(2)  # the same earlier keys and values in both caches
        cache.keys.copy_(torch.randn(cache.keys.shape, generator=gen))
        cache.values.copy_(torch.randn(cache.values.shape, generator=gen))
        with torch.no_grad():
            hidden = model.paged_hidden(ids, positions, cache, PagedLayout(write, keys, lengths))
        results.append((hidden, cache.keys.clone(), cache.values.clone()))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_kernel
def test_blocks_without_a_plan_take_the_python_forward(monkeypatch, kernel_calls):
    from falconlm.finetune.lora import LoRAConfig, inject_lora

    # Over 24 rows an fp32 linear is oneDNN's, which the compiled layer does not call.
    model = _model("7b-mqa")
    calls = kernel_calls("decode_layer")
    many = _decode_hidden(model, True, 25, 2, monkeypatch)
    assert calls == [] and len(many) == 2
    # A LoRA layer's forward adds its adapter: its class has no kernel plan of its own.
    model = _model("7b-mqa")
    inject_lora(model, LoRAConfig(rank=2, alpha=4, dropout=0.0, targets=["query_key_value"]), seed=0)
    for p in model.parameters():
        p.requires_grad_(False)
    plain = _decode_hidden(model, False, 2, 3, monkeypatch)
    calls = kernel_calls("decode_layer")
    fused = _decode_hidden(model, True, 2, 3, monkeypatch)
    assert calls == []
    assert all(torch.equal(a, b) for a, b in zip(plain, fused))
    # A forward hook must see the block run.
    model, seen = _model("7b-mqa"), []
    model.transformer.h[1].mlp.register_forward_hook(lambda *a: seen.append(1))
    _decode_hidden(model, True, 1, 2, monkeypatch)
    assert len(seen) == 3  # the prefill and both decode steps


@needs_kernel
def test_a_write_slot_outside_the_cache_is_refused():
    model = _model("7b-mqa")
    x = torch.randn(1, 96)
    with torch.no_grad():
        tensors, ints = model.transformer.h[0].decode_plan(x)
    keys = values = torch.zeros(10, 1, 16)
    cos = sin = torch.ones(1, 16)
    with torch.no_grad(), pytest.raises(RuntimeError, match="write slot is outside the cache"):
        torch.ops.falconlm_quant.decode_layer(x, tensors, ints, cos, sin, keys, values, torch.tensor([10]), torch.tensor([[0]]), torch.tensor([1]), 16, 16, 1e-5)
