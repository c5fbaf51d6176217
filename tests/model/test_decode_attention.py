"""The compiled decode-step kernels: paged attention in place (exact softmax attention through slot lists, and the engine path that uses it) and RoPE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from falconlm.model import falcon, paged_cache
from falconlm.model.config import FalconConfig
from falconlm.quant import kernels

needs_kernel = pytest.mark.skipif(not kernels.f32_available(), reason="falconlm's kernels are not built here (no compiler or no AVX-512)")


@needs_kernel
@pytest.mark.parametrize("rows,heads,kv,dim,span", [(3, 12, 1, 64, 37), (5, 4, 2, 16, 100), (2, 16, 2, 128, 17), (1, 1, 1, 32, 1), (4, 6, 3, 48, 300), (2, 10, 5, 96, 33), (3, 4, 1, 32, 20), (2, 17, 1, 64, 45), (1, 71, 1, 64, 70)])
def test_matches_float64_attention_through_scattered_slots(rows, heads, kv, dim, span):
    g = torch.Generator().manual_seed(rows * 100 + dim)
    pool = 1000
    keys, values = torch.randn(pool, kv, dim, generator=g), torch.randn(pool, kv, dim, generator=g)
    q = torch.randn(rows, heads, dim, generator=g)
    lengths = torch.randint(1, span + 1, (rows,), generator=g)
    lengths[0] = span
    slots = torch.stack([torch.randperm(pool, generator=g)[:span] for _ in range(rows)])
    out = torch.ops.falconlm_quant.decode_attention(q, keys, values, slots, lengths, dim**-0.5, kv, kv * dim, dim)
    for r in range(rows):
        n = int(lengths[r])  # entries past a row's length are never read
        k = keys[slots[r, :n]].double().transpose(0, 1)  # (kv, n, D)
        v = values[slots[r, :n]].double().transpose(0, 1)
        qq = q[r].double().view(kv, heads // kv, dim)
        want = torch.softmax(qq @ k.transpose(1, 2) / math.sqrt(dim), -1) @ v
        assert (out[r].double().view(kv, heads // kv, dim) - want).abs().max() < 1e-5


@needs_kernel
@pytest.mark.parametrize("heads,kv,past,chunk", [(12, 1, 0, 19), (8, 2, 37, 16), (3, 3, 5, 1)])
def test_prefill_chunk_rows_attend_their_own_prefix_of_one_slot_list(heads, kv, past, chunk):
    # One (1, S) slot list for every row: token i of the chunk reads the first past + i + 1 slots, as
    # a causal SDPA over the chunk's whole context does.
    g = torch.Generator().manual_seed(past + chunk)
    dim, span = 32, past + chunk
    keys, values = torch.randn(500, kv, dim, generator=g), torch.randn(500, kv, dim, generator=g)
    context = torch.randperm(500, generator=g)[:span]
    q = torch.randn(chunk, heads, dim, generator=g)
    lengths = torch.arange(past + 1, span + 1)
    out = torch.ops.falconlm_quant.decode_attention(q, keys, values, context[None], lengths, dim**-0.5, kv, kv * dim, dim)
    k = keys[context].double().transpose(0, 1).repeat_interleave(heads // kv, dim=0)[None]  # (1, H, S, D)
    v = values[context].double().transpose(0, 1).repeat_interleave(heads // kv, dim=0)[None]
    allowed = torch.arange(span)[None, :] <= torch.arange(past, span)[:, None]
    want = F.scaled_dot_product_attention(q.double().transpose(0, 1)[None], k, v, attn_mask=allowed)[0].transpose(0, 1)
    assert (out.double() - want).abs().max() < 1e-5


@needs_kernel
def test_extreme_scores_stay_finite_and_exact():
    # One key far above the rest (softmax of -1e4 gaps): exp underflows to 0, the top key gets all the weight.
    q = torch.zeros(1, 2, 16)
    q[0, :, 0] = 100.0
    keys = torch.zeros(40, 1, 16)
    keys[7, 0, 0] = 100.0
    values = torch.randn(40, 1, 16)
    out = torch.ops.falconlm_quant.decode_attention(q, keys, values, torch.arange(40)[None], torch.tensor([40]), 0.25, 1, 16, 16)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0, 0], values[7, 0], atol=1e-6)


@needs_kernel
def test_engine_decode_rows_agree_with_the_gathered_sdpa_path(monkeypatch):
    from falconlm.decoding.engine import Engine, Sequence
    from falconlm.decoding.settings import GenerationConfig
    from falconlm.model.falcon import build_model

    model = build_model(FalconConfig.from_preset("tiny-40b"), seed=3)
    hidden = {}
    for in_place in (True, False):
        monkeypatch.setattr(paged_cache, "in_place_attention", in_place)
        seen = []
        original = model.paged_hidden

        def spy(*a, **k):
            h = original(*a, **k)
            seen.append(h.clone())
            return h

        monkeypatch.setattr(model, "paged_hidden", spy)

        class Tok:
            def decode(self, ids, **k):
                return "x" * len(ids)

        engine = Engine(model, Tok(), start=False, max_batch_size=4, block_size=4)
        assert paged_cache.attends_in_place(model.config, engine.cache.keys) is in_place
        seqs = [Sequence(list(range(5 + 7 * i, 18 + 9 * i)), GenerationConfig(max_new_tokens=6, do_sample=False, ignore_eos=True)) for i in range(3)]
        engine.submit(seqs)
        while not all(s.done.is_set() for s in seqs):
            engine.step()
        hidden[in_place] = (seen, [s.generated for s in seqs])
        monkeypatch.undo()
    (fast, fast_tokens), (slow, slow_tokens) = hidden[True], hidden[False]
    assert len(fast) == len(slow) > 3
    for a, b in zip(fast, slow):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert fast_tokens == slow_tokens


def test_alibi_and_other_dtypes_keep_the_gathered_path():
    keys = torch.zeros(4, 1, 64)
    assert not paged_cache.attends_in_place(FalconConfig.from_preset("tiny-rw"), keys)  # ALiBi bias
    assert not paged_cache.attends_in_place(FalconConfig.from_preset("tiny-7b"), keys.bfloat16())


@needs_kernel
def test_compiled_rope_gives_torch_bits_on_strided_views_and_steps_aside_for_autograd():

    config = FalconConfig.from_preset("tiny-7b")
    d = config.head_dim
    fused = torch.randn(3, 7, 5, 3 * d)  # a (B, T, kv, (g + 2) * D)-like QKV output; take a strided per-head view
    x = fused.view(3, 7, 5, 3, d)[:, :, :, 1].transpose(1, 2)
    cos, sin = falcon.rope_cos_sin(config, torch.randint(0, 500, (3, 7)), torch.float32)
    assert falcon._compiled_rope(x, cos, sin)
    half = d // 2
    want = x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
    assert torch.equal(falcon.apply_rope(x, cos, sin), want)
    leaf = x.detach().clone().requires_grad_()
    assert not falcon._compiled_rope(leaf, cos, sin)  # training keeps torch's ops (and their gradients)
    falcon.apply_rope(leaf, cos, sin).sum().backward()
    assert leaf.grad is not None


@needs_kernel
@pytest.mark.parametrize("preset", ["tiny-7b", "tiny-40b"])
def test_generate_reads_the_unpaged_cache_in_place_with_the_gathered_paths_tokens(preset, monkeypatch, kernel_calls):
    from falconlm.decoding.generate import generate
    from falconlm.model.falcon import build_model

    model = build_model(FalconConfig.from_preset(preset), seed=5).eval()
    ids = torch.randint(3, 1000, (1, 9), generator=torch.Generator().manual_seed(0))
    out = {}
    for in_place in (True, False):
        monkeypatch.setattr(paged_cache, "in_place_attention", in_place)
        monkeypatch.setattr(falcon, "fused_decode", False)  # the blocks' own forward (test_fused_decode.py: the compiled layer gives its bits)
        calls = kernel_calls("decode_attention")
        with torch.no_grad():
            cache = model.new_cache(1, 32)
            logits = [model(ids, cache=cache)[:, -1]]
            token = logits[-1].argmax(-1, keepdim=True)
            for _ in range(6):
                logits.append(model(token, cache=cache)[:, -1])
                token = logits[-1].argmax(-1, keepdim=True)
        # every decode step of every layer in place, or none
        assert len(calls) == (6 * model.config.num_hidden_layers if in_place else 0)
        out[in_place] = (torch.cat(logits), generate(model, ids, max_new_tokens=8, eos_token_id=[]))
        monkeypatch.undo()
    assert torch.allclose(out[True][0], out[False][0], atol=1e-5, rtol=1e-4)
    assert torch.equal(out[True][1], out[False][1])


@needs_kernel
def test_compiled_gelu_is_accurate_batch_invariant_and_steps_aside_for_autograd():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 3 * 33, generator=g) * 4  # rows of 99 values: a masked tail in every row
    x[0, :4] = torch.tensor([0.0, -0.0, -30.0, 1e-40])
    got = falcon.gelu(x)
    want = F.gelu(x.double())
    assert torch.equal(got[0, :4], torch.tensor([0.0, -0.0, -0.0, 5e-41])) and torch.isnan(falcon.gelu(torch.tensor([float("nan")]))).all()
    assert (got.double() - want).abs().max() < 5e-7  # torch's own fp32 gelu is within 1.2e-6 of float64 on such inputs
    assert (got - F.gelu(x)).abs().max() < 2e-6
    # A value's result does not depend on where it sits, the rows around it or how the tensor is split.
    assert torch.equal(falcon.gelu(x[5:6]), got[5:6]) and torch.equal(falcon.gelu(x.T.contiguous()).T, got)
    leaf, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    falcon.gelu(leaf).sum().backward()  # training keeps torch's gelu and its gradient
    F.gelu(ref).sum().backward()
    assert torch.equal(leaf.grad, ref.grad)
