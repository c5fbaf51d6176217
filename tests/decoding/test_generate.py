"""Generation: greedy equals transformers' generate, cached decode equals a full forward, sampling controls."""

from __future__ import annotations

import pytest
import torch

from falconlm.errors import FalconError
from falconlm.decoding.generate import generate, stream_generate
from falconlm.decoding.sampling import apply_repetition_penalty, warp
from falconlm.decoding.settings import GenerationConfig
from falconlm.model.config import FalconConfig

from falconlm.testing import make_pair

STYLES = ["tiny-7b", "tiny-40b", "tiny-rw"]


def _prompts(config, b, t, seed=0):
    return torch.randint(12, config.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("preset", STYLES)
def test_greedy_equals_transformers_single_and_left_padded(preset):
    config = FalconConfig.from_preset(preset)
    ours, hf = make_pair(config)
    ids = _prompts(config, 1, 7)
    a = generate(ours, ids, max_new_tokens=24)
    b = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    assert torch.equal(a, b)
    ids = _prompts(config, 3, 10, seed=1)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :7] = 0
    ids[mask == 0] = config.eos_token_id
    a = generate(ours, ids, attention_mask=mask, max_new_tokens=24)
    b = hf.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, pad_token_id=config.eos_token_id)
    assert torch.equal(a, b)
    # A row in a padded batch gets exactly the tokens it gets alone.
    alone = generate(ours, ids[2:3, 7:], max_new_tokens=24)
    assert torch.equal(alone[0, 3:], a[2, 10 : 10 + alone.shape[1] - 3])


@pytest.mark.parametrize("preset", STYLES)
def test_cached_decode_equals_full_forward(preset):
    config = FalconConfig.from_preset(preset)
    ours, _ = make_pair(config)
    ids = _prompts(config, 2, 20)
    with torch.no_grad():
        full = ours(ids)
        cache = ours.new_cache(2, 20)
        chunks = [ours(ids[:, :8], cache=cache)]
        chunks += [ours(ids[:, i : i + 1], cache=cache) for i in range(8, 14)]
        chunks.append(ours(ids[:, 14:], cache=cache))
    assert (torch.cat(chunks, dim=1) - full).abs().max().item() < 1e-4
    assert cache.length == 20
    assert cache.keys.shape[2] == config.stored_kv_heads  # only the real KV heads are stored


def test_cache_overflow_and_prompt_too_long():
    config = FalconConfig.from_preset("tiny-7b", max_position_embeddings=16)
    ours, _ = make_pair(config)
    cache = ours.new_cache(1, 4)
    with pytest.raises(FalconError, match="KV cache is full"):
        ours(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    with pytest.raises(FalconError, match="exceeds the model's context"):
        generate(ours, torch.zeros(1, 10, dtype=torch.long), max_new_tokens=10)
    with pytest.raises(FalconError, match="outside the vocabulary"):
        generate(ours, torch.full((1, 3), 5000), max_new_tokens=2)
    with pytest.raises(FalconError, match="unknown generation option"):
        generate(ours, torch.zeros(1, 3, dtype=torch.long), max_new_tokns=2)


def test_eos_stops_and_pads_finished_rows():
    config = FalconConfig.from_preset("tiny-7b")
    ours, _ = make_pair(config)
    ids = _prompts(config, 2, 5)
    free = generate(ours, ids, max_new_tokens=12, eos_token_id=[])
    stop_id = int(free[0, 7])  # the third new token of row 0
    out = generate(ours, ids, max_new_tokens=12, eos_token_id=stop_id, pad_token_id=0)
    row0 = out[0, 5:].tolist()
    first = row0.index(stop_id)
    assert row0[: first + 1] == free[0, 5 : 5 + first + 1].tolist()
    assert all(t == 0 for t in row0[first + 1 :])


def test_stop_strings_need_and_use_a_decoder():
    config = FalconConfig.from_preset("tiny-7b")
    ours, _ = make_pair(config)
    ids = _prompts(config, 1, 5)
    free = generate(ours, ids, max_new_tokens=10, eos_token_id=[])[0, 5:].tolist()
    decode = lambda toks: " ".join(f"t{t}" for t in toks)
    with pytest.raises(FalconError, match="decode function"):
        generate(ours, ids, max_new_tokens=10, stop_strings=["x"])
    out = generate(ours, ids, max_new_tokens=10, eos_token_id=[], stop_strings=[f"t{free[3]}"], decode=decode)
    assert out[0, 5:].tolist() == free[: free.index(free[3]) + 1]


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    config = FalconConfig.from_preset("tiny-40b")
    ours, _ = make_pair(config)
    ids = _prompts(config, 2, 6)
    a = generate(ours, ids, max_new_tokens=16, do_sample=True, temperature=1.3, seed=7, eos_token_id=[])
    b = generate(ours, ids, max_new_tokens=16, do_sample=True, temperature=1.3, seed=7, eos_token_id=[])
    c = generate(ours, ids, max_new_tokens=16, do_sample=True, temperature=1.3, seed=8, eos_token_id=[])
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = generate(ours, ids, max_new_tokens=16, eos_token_id=[])
    assert torch.equal(generate(ours, ids, max_new_tokens=16, do_sample=True, top_k=1, seed=1, eos_token_id=[]), greedy)
    assert torch.equal(generate(ours, ids, max_new_tokens=16, do_sample=True, top_p=1e-6, seed=1, eos_token_id=[]), greedy)


def test_logits_processing_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g)
    seen = torch.randint(0, 50, (3, 9), generator=g)
    assert torch.allclose(apply_repetition_penalty(logits, seen, 1.3), RepetitionPenaltyLogitsProcessor(1.3)(seen, logits.clone()))
    cfg = GenerationConfig(do_sample=True, temperature=0.7, top_k=10, top_p=0.8)
    expected = TopPLogitsWarper(0.8)(seen, TopKLogitsWarper(10)(seen, TemperatureLogitsWarper(0.7)(seen, logits.clone())))
    assert torch.equal(torch.isinf(warp(logits, cfg)), torch.isinf(expected))
    assert torch.allclose(warp(logits, cfg)[~torch.isinf(expected)], expected[~torch.isinf(expected)])


def test_stream_yields_the_same_tokens_as_generate():
    config = FalconConfig.from_preset("tiny-rw")
    ours, _ = make_pair(config)
    ids = _prompts(config, 2, 4)
    streamed = torch.stack(list(stream_generate(ours, ids, max_new_tokens=9, eos_token_id=[])), dim=1)
    assert torch.equal(streamed, generate(ours, ids, max_new_tokens=9, eos_token_id=[])[:, 4:])


@pytest.mark.parametrize("preset", ["tiny-7b", "tiny-rw"])
def test_reused_cache_prefills_only_the_new_tokens_and_generates_the_same(preset):
    config = FalconConfig.from_preset(preset)
    model, _ = make_pair(config)
    prompt = _prompts(config, 1, 20)
    expected = generate(model, prompt, max_new_tokens=8, eos_token_id=[])
    cache = model.new_cache(1, 64)
    first = list(stream_generate(model, prompt[:, :12], cache=cache, max_new_tokens=1, eos_token_id=[]))
    assert len(first) == 1 and cache.length == 12  # the yielded token was never fed
    out = generate(model, prompt, cache=cache, max_new_tokens=8, eos_token_id=[])
    assert torch.equal(out, expected)
    assert cache.length == 20 + 7
    # a cache holding the whole prompt still recomputes its last token (for the next-token logits)
    cache.length = 20
    assert torch.equal(generate(model, prompt, cache=cache, max_new_tokens=8, eos_token_id=[]), expected)
    with pytest.raises(FalconError, match="one unpadded row"):
        generate(model, prompt.repeat(2, 1), cache=cache, max_new_tokens=2)
    with pytest.raises(FalconError, match="exceed the cache"):
        generate(model, prompt, cache=model.new_cache(1, 24), max_new_tokens=8)
