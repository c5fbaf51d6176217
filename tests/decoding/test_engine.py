"""The batching engine: a row in a continuously batched cache gets exactly the tokens `generate` gives it alone."""

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
            return
        engine.step()
    raise AssertionError("engine did not finish")


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
    assert not engine.active and engine.cache.length == 0 and not engine.cache.valid.any()


def test_compaction_and_waiting_when_the_cache_is_short(tiny_ckpt):
    """With 64 slots per row the engine must compact and hold requests back; outputs stay exact."""
    model, tok = _load(tiny_ckpt)
    engine = Engine(model, tok, max_batch_size=3, max_length=64, start=False)
    ids = [tok.encode(p) for p in PROMPTS] * 2
    n = [min(64 - len(i), 20 + 7 * (k % 3)) for k, i in enumerate(ids)]
    seqs = [Sequence(i, GenerationConfig(max_new_tokens=m, do_sample=True, temperature=0.0, ignore_eos=True)) for i, m in zip(ids, n)]
    for k, s in enumerate(seqs):
        engine.submit([s])
        for _ in range(3 + k % 4):
            engine.step()
    _drain(engine, seqs)
    assert engine.stats["compactions"] > 0
    for s, i, m in zip(seqs, ids, n):
        assert s.generated == _alone(model, i, m, eos_token_id=[])


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


def test_kv_cache_row_ops_keep_attention_exact(tiny_ckpt):
    """insert_row / move_row / compact: logits of a row decoded in the shared cache equal the row alone."""
    model, _ = _load(tiny_ckpt)
    g = torch.Generator().manual_seed(0)
    p1, p2 = torch.randint(12, model.config.vocab_size, (1, 9), generator=g), torch.randint(12, model.config.vocab_size, (1, 5), generator=g)
    with torch.inference_mode():
        full2 = model(torch.cat([p2, p2[:, :3]], dim=1))[0, -3:]
        shared = model.new_cache(3, 40)
        for row, p in ((0, p1), (2, p2)):
            own = model.new_cache(1, p.shape[1])
            model.hidden_states(p, cache=own)
            if shared.length < p.shape[1]:
                shared.advance(p.shape[1] - shared.length)
            shared.insert_row(row, own)
        assert shared.length == 9 and int(shared.valid[2].sum()) == 5 and not shared.valid[1].any()
        shared.move_row(2, 1)  # row 2 -> row 1, freeing row 2
        shared.free_row(0)  # p1 finished
        assert not shared.valid[2].any() and not shared.valid[0].any()
        shared.advance(6)  # padding after the prompt, then drop the padded front common to rows 0-1
        assert shared.leading_padding(2) == 4
        shared.compact(4)
        assert shared.length == 11 and shared.valid[1, :5].all() and not shared.valid[1, 5:].any()
        got = []
        for k in range(3):
            view = shared.rows(2)
            tokens = torch.stack([p1[0, k], p2[0, k]])[:, None]
            pos = torch.tensor([[9 + k], [5 + k]])
            got.append(model(tokens, position_ids=pos, cache=view)[1, -1])
            shared.length = view.length
    assert (torch.stack(got) - full2).abs().max().item() < 1e-4


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
