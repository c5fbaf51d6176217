"""The batching engine: a sequence batched in the paged cache gets exactly the tokens `generate` gives it alone.

`generate` runs over the contiguous (unpaged) cache, so every comparison here is paging on vs off.
"""

from __future__ import annotations

import pytest
import torch

from falconlm.decoding.generate import generate
from falconlm.model.falcon import FalconForCausalLM
from falconlm.decoding.engine import Engine, Sequence
from falconlm.decoding.settings import GenerationConfig
from falconlm.tokenizer.falcon import FalconTokenizer

PROMPTS = [
    "the falcon flies over the desert",
    "models learn",
    "to predict the next token of web text while the falcon flies at dawn over the desert",
    "dawn",
    "the next token, 123",
]


def _load(ckpt):
    return FalconForCausalLM.from_pretrained(ckpt).eval(), FalconTokenizer.load(ckpt)


def _alone(model, ids, n, **kw):
    out = generate(model, torch.tensor([ids]), max_new_tokens=n, **kw)
    return out[0, len(ids) :].tolist()


def _drain(engine, seqs, limit=10_000):
    for _ in range(limit):
        if all(s.done.is_set() for s in seqs):
            engine.step()  # retire what was cancelled at the end
            return
        engine.step()
    raise AssertionError("engine did not finish")


def assert_pool_full(engine):
    """Every block is back in the pool: no holder left, every block free or cached, nothing running or waiting."""
    assert not engine.active and not engine.waiting
    assert engine.pool.num_free == engine.pool.num_blocks and not any(engine.pool.refs)


@pytest.mark.parametrize("which", ["tiny_ckpt", "tiny_40b_ckpt", "tiny_rw_ckpt"])
def test_rows_joining_mid_decode_equal_alone(which, request):
    """Requests arrive while others decode (shorter and longer prompts than the fill pointer); each equals generate alone."""
    model, tok = _load(request.getfixturevalue(which))
    engine = Engine(model, tok, max_batch_size=4, start=False)
    ids = [tok.encode(p) for p in PROMPTS]
    n = [24, 30, 12, 20, 16]
    seqs = [Sequence(i, GenerationConfig(max_new_tokens=m, do_sample=True, temperature=0.0, ignore_eos=True)) for i, m in zip(ids, n)]
    engine.submit(seqs[:1])
    for _ in range(6):
        engine.step()
    engine.submit(seqs[1:3])  # seqs[2]'s prompt is longer than the fill pointer: padding is claimed for it
    for _ in range(4):
        engine.step()
    engine.submit(seqs[3:])  # one waits for a free row (batch 4)
    _drain(engine, seqs)
    assert engine.stats["max_active"] == 4
    for s, i, m in zip(seqs, ids, n):
        assert s.generated == _alone(model, i, m, eos_token_id=[]), PROMPTS[ids.index(i)]
        assert s.finish_reason == "length"
        assert "".join(e.text for e in s.events) == tok.decode(s.generated, skip_special_tokens=True)
    assert_pool_full(engine)


def test_sampling_per_row_seeds_and_settings(tiny_ckpt):
    """Sampled rows (own seed, temperature, top-k/p, penalty) next to greedy rows equal generate with the same settings."""
    model, tok = _load(tiny_ckpt)
    engine = Engine(model, tok, max_batch_size=4, start=False)
    ids = [tok.encode(p) for p in PROMPTS[:4]]
    settings = [
        dict(temperature=0.8, seed=1, top_k=20),
        dict(temperature=0.0, repetition_penalty=1.3),
        dict(temperature=1.2, seed=7, top_p=0.9),
        dict(temperature=0.0),
    ]
    seqs = [Sequence(i, GenerationConfig(max_new_tokens=15, do_sample=True, ignore_eos=True, **kw)) for i, kw in zip(ids, settings)]
    engine.submit(seqs)
    _drain(engine, seqs)
    for s, i, kw in zip(seqs, ids, settings):
        cfg = s.params
        assert s.generated == _alone(model, i, 15, config=cfg)
    assert seqs[0].generated != seqs[2].generated


def test_eos_stop_strings_and_cancel_free_rows(tiny_ckpt):
    model, tok = _load(tiny_ckpt)
    engine = Engine(model, tok, max_batch_size=2, start=False)
    ids = tok.encode(PROMPTS[0])
    free = _alone(model, ids, 20, eos_token_id=[])
    # eos: make a later generated token (first seen at k) the eos id of this run
    k = next(k for k in range(2, 20) if free[k] not in free[:k])
    eos_seq = Sequence(ids, GenerationConfig(max_new_tokens=20, do_sample=True, temperature=0.0))
    engine.eos_ids = [free[k]]
    engine.submit([eos_seq])
    _drain(engine, [eos_seq])
    assert eos_seq.generated == free[: k + 1] and eos_seq.finish_reason == "stop"
    assert "".join(e.text for e in eos_seq.events) == tok.decode(free[:k], skip_special_tokens=True)
    engine.eos_ids = []
    # stop string: cut the text before it, never emit it
    text = tok.decode(free, skip_special_tokens=True)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    stop_seq = Sequence(ids, GenerationConfig(max_new_tokens=20, do_sample=True, temperature=0.0, stop_strings=[stop]))
    engine.submit([stop_seq])
    _drain(engine, [stop_seq])
    emitted = "".join(e.text for e in stop_seq.events)
    assert stop_seq.finish_reason == "stop" and emitted == text[: text.find(stop)] and stop not in emitted
    # cancel: the row is freed at the next step and a waiting request takes it
    a, b, c = (Sequence(ids, GenerationConfig(max_new_tokens=50, do_sample=True, temperature=0.0)) for _ in range(3))
    engine.submit([a, b, c])
    engine.step()
    assert len(engine.active) == 2 and len(engine.waiting) == 1
    engine.cancel(a)
    engine.step()
    assert a not in engine.active and c in engine.active and not engine.waiting
    _drain(engine, [b, c])
    assert b.generated == c.generated == _alone(model, ids, 50, eos_token_id=[])
    assert_pool_full(engine)


def test_cancel_while_waiting_leaves_the_queue(tiny_ckpt):
    model, tok = _load(tiny_ckpt)
    engine = Engine(model, tok, max_batch_size=1, max_queue=2, start=False)
    ids = tok.encode(PROMPTS[1])
    a, b = (Sequence(ids, GenerationConfig(max_new_tokens=4, do_sample=True, temperature=0.0)) for _ in range(2))
    engine.submit([a, b])
    engine.cancel(b)
    assert list(engine.waiting) == [a] and engine.stats["cancelled"] == 1
    engine.submit([Sequence(ids, GenerationConfig(max_new_tokens=4, do_sample=True, temperature=0.0))])  # room again
    with pytest.raises(Exception, match="queue is full"):
        engine.submit([Sequence(ids, GenerationConfig(max_new_tokens=4, do_sample=True, temperature=0.0))])


def _greedy(n):
    return GenerationConfig(max_new_tokens=n, do_sample=True, temperature=0.0, ignore_eos=True)


LONG = "to predict the next token of web text while the falcon flies at dawn over the desert, models learn " * 3


@pytest.mark.parametrize("budget,block_size", [(4, 1), (5, 3), (7, 16), (16, 4), (1000, 5)])
def test_chunked_prefill_of_any_chunk_size_equals_alone(tiny_40b_ckpt, budget, block_size):
    """Long prompts prefilled over several steps, mixed with decoding rows, give the tokens of each alone."""
    model, tok = _load(tiny_40b_ckpt)
    engine = Engine(model, tok, max_batch_size=4, start=False, max_num_batched_tokens=budget, block_size=block_size, max_length=256)
    prompts = [LONG, PROMPTS[1], LONG[7:] + PROMPTS[2], PROMPTS[3]]
    seqs = [Sequence(tok.encode(p), _greedy(10 + 3 * k)) for k, p in enumerate(prompts)]
    engine.submit(seqs[:2])
    engine.step()
    engine.submit(seqs[2:])
    steps_before = engine.stats["steps"]
    _drain(engine, seqs)
    assert engine.stats["steps"] - steps_before >= (len(seqs[2].prompt_ids) // budget if budget < 100 else 1)
    for s in seqs:
        assert s.generated == _alone(model, s.prompt_ids, s.params.max_new_tokens, eos_token_id=[])
    assert_pool_full(engine)


@pytest.mark.parametrize("which", ["tiny_ckpt", "tiny_rw_ckpt"])
def test_prefix_hit_prefills_only_the_uncached_tokens(which, request):
    model, tok = _load(request.getfixturevalue(which))
    engine = Engine(model, tok, max_batch_size=4, start=False, block_size=4)
    shared = tok.encode(LONG)
    first = Sequence(shared + tok.encode(" dawn"), _greedy(6))
    engine.submit([first])
    _drain(engine, [first])
    assert engine.stats["cached_tokens"] == 0
    computed = engine.stats["computed_tokens"]
    second = Sequence(shared + tok.encode(" models learn"), _greedy(6))
    engine.submit([second])
    _drain(engine, [second])
    common = next(i for i, (a, b) in enumerate(zip(first.ids, second.ids)) if a != b)
    hit = common // 4 * 4
    assert hit > 0 and engine.stats["cached_tokens"] == hit
    assert engine.stats["computed_tokens"] - computed == second.prompt_tokens - hit + 6 - 1  # prompt past the hit, then one per new token but the last
    assert second.generated == _alone(model, second.prompt_ids, 6, eos_token_id=[])
    # The same prompt again: every full block but the one holding its last token comes from the cache.
    again = Sequence(list(second.prompt_ids), _greedy(6))
    engine.submit([again])
    _drain(engine, [again])
    assert engine.stats["cached_tokens"] == hit + (len(again.ids) - 6 - 1) // 4 * 4
    assert again.generated == second.generated
    # A conversation's next turn reuses its earlier turn's generated tokens too.
    follow = Sequence(again.ids + tok.encode(" and then"), _greedy(4))
    before = engine.stats["cached_tokens"]
    engine.submit([follow])
    _drain(engine, [follow])
    assert engine.stats["cached_tokens"] - before == (len(again.ids) - 1) // 4 * 4
    assert follow.generated == _alone(model, follow.prompt_ids, 4, eos_token_id=[])
    assert_pool_full(engine)


def test_preemption_by_a_tiny_pool_recomputes_and_gives_the_same_tokens(tiny_ckpt):
    """A pool of 18 blocks of 4 for four sequences of up to 71 tokens: the newest are preempted and recomputed, outputs unchanged."""
    model, tok = _load(tiny_ckpt)
    engine = Engine(model, tok, max_batch_size=4, start=False, block_size=4, num_blocks=18, max_length=72)
    prompts = [PROMPTS[2], PROMPTS[0], PROMPTS[4], LONG[:60]]
    seqs = [Sequence(tok.encode(p)[:30], _greedy(26 + 5 * k)) for k, p in enumerate(prompts)]
    engine.submit(seqs)
    _drain(engine, seqs)
    assert engine.stats["preempted"] > 0
    for s in seqs:
        assert s.generated == _alone(model, s.prompt_ids, s.params.max_new_tokens, eos_token_id=[])
        assert "".join(e.text for e in s.events) == tok.decode(s.generated, skip_special_tokens=True)
    assert_pool_full(engine)


def test_a_pool_smaller_than_one_request_is_refused(tiny_ckpt):
    model, tok = _load(tiny_ckpt)
    with pytest.raises(Exception, match="cannot hold one request of 64 tokens"):
        Engine(model, tok, start=False, block_size=4, num_blocks=15, max_length=64)
    with pytest.raises(Exception, match="at least --max-batch-size"):
        Engine(model, tok, start=False, max_batch_size=8, max_num_batched_tokens=4)


def test_n_choices_share_the_prompt_blocks_and_copy_on_write(tiny_ckpt):
    """Three sampled choices of one prompt: one prefill, shared blocks, and each choice equals its sample alone."""
    model, tok = _load(tiny_ckpt)
    engine = Engine(model, tok, max_batch_size=4, start=False, block_size=4)
    ids = tok.encode(PROMPTS[2])
    assert len(ids) % 4  # the last prompt block is partial: it is shared, then copied on the first write
    cfg = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=1.0, seed=5, ignore_eos=True)
    choices = [Sequence(ids, cfg, sample=j) for j in range(3)]
    engine.submit(choices)
    assert len(engine.waiting) == 1 and engine.queued() == 3
    engine.step()
    assert engine.stats["computed_tokens"] == len(ids) and engine.stats["forks"] == 2
    full = len(ids) // 4
    assert all(engine.pool.refs[b] == 3 for b in choices[0].table[:full])
    engine.step()  # each writes its first generated token into the partial block: two copies, one in place
    assert len({c.table[full] for c in choices}) == 3 and all(engine.pool.refs[c.table[full]] == 1 for c in choices)
    _drain(engine, choices)
    for j, c in enumerate(choices):
        alone = Engine(model, tok, max_batch_size=1, start=False, prefix_caching=False)
        solo = Sequence(ids, cfg, sample=j)
        alone.submit([solo])
        _drain(alone, [solo])
        assert c.generated == solo.generated
    assert len({tuple(c.generated) for c in choices}) > 1
    assert_pool_full(engine)


def test_prompt_logprobs_over_chunks_equal_one_forward(tiny_ckpt):
    model, tok = _load(tiny_ckpt)
    ids = tok.encode(LONG)[:40]
    engine = Engine(model, tok, max_batch_size=2, start=False, max_num_batched_tokens=7)
    seq = Sequence(ids, GenerationConfig(max_new_tokens=0, prompt_logprobs=1))
    engine.submit([seq])
    _drain(engine, [seq])
    got = [t.logprob for t in seq.events[-1].prompt_logprobs[1:]]
    with torch.inference_mode():
        logp = model(torch.tensor([ids]))[0, :-1].float().log_softmax(-1)
    want = logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert len(got) == len(ids) - 1 and torch.allclose(torch.tensor(got), want, atol=1e-4)
    assert_pool_full(engine)


def test_block_pool_keys_eviction_and_release_order():
    from falconlm.decoding.blocks import ROOT, BlockPool

    pool = BlockPool(4, 2)
    a, b = pool.allocate(), pool.allocate()
    ca = pool.register(a, ROOT, [1, 2])
    pool.register(b, ca, [3, 4])
    pool.release([a, b])  # b first, then a: a is the most recently used
    assert pool.num_free == 4 and list(pool.cached) == [b, a]
    assert pool.lookup([1, 2, 3, 4, 5], 2) == ([a, b], [ca, pool.content_id[b]])
    pool.release([a, b])
    assert pool.lookup([9, 9, 3, 4], 2) == ([], [])  # same block tokens after another prefix: no match
    taken = [pool.allocate() for _ in range(3)]  # two never-used blocks first, then the least recently used cached one (b)
    assert taken[2] == b and pool.evictions == 1 and pool.lookup([1, 2, 3, 4], 2)[0] == [a]
    assert pool.allocate() is None
