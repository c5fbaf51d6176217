"""The decoding core: correct on odd shapes, one rule for every caller, a static step without host syncs."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from falconlm.decoding import head_screen
from falconlm.decoding.engine import Engine, Sequence
from falconlm.decoding.generate import TextStream, generate, generate_text
from falconlm.decoding.settings import GenerationConfig
from falconlm.decoding.step import DecodeStep
from falconlm.model.config import FalconConfig
from falconlm.model.falcon import FalconForCausalLM
from falconlm.testing import make_pair
from falconlm.tokenizer.falcon import FalconTokenizer

# hidden size -> (query heads, KV heads of the grouped style): widths that are not multiples of 32,
# head counts that are not powers of two, one KV head.
WIDTHS = {56: (7, 1), 100: (5, 5), 120: (6, 3), 768: (12, 4)}
STYLES = ["tiny-7b", "tiny-40b", "tiny-rw"]


def _config(preset: str, hidden: int) -> FalconConfig:
    heads, kv = WIDTHS[hidden]
    extra = {"num_kv_heads": kv} if preset == "tiny-40b" else {}
    return FalconConfig.from_preset(preset, hidden_size=hidden, num_attention_heads=heads, initializer_range=0.2, **extra)


@pytest.mark.parametrize("hidden", sorted(WIDTHS))
@pytest.mark.parametrize("preset", STYLES)
def test_greedy_equals_transformers_on_every_width_with_the_screen_on_and_off(preset, hidden):
    config = _config(preset, hidden)
    ours, hf = make_pair(config)
    ids = torch.randint(12, config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(hidden))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    ids[mask == 0] = config.eos_token_id
    want = hf.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=config.eos_token_id)
    for screen in (True, False):
        got = generate(ours, ids, attention_mask=mask, max_new_tokens=16, screen_head=screen)
        assert torch.equal(got, want), (preset, hidden, screen)
    # The screen is used exactly where the int8 kernel is exact.
    assert (head_screen.screen_for(ours) is not None) == (head_screen._AVAILABLE and hidden % 32 == 0)


def test_screen_falls_back_when_no_candidate_survives():
    weight = torch.randn(300, 64)
    screen = head_screen.HeadScreen(weight)
    huge = torch.full((2, 64), 3e38)  # overflows bf16: no finite score to screen with
    assert screen.argmax(huge) is None


def test_generate_is_the_function_whatever_was_imported():
    code = """
import importlib, pkgutil, torch, falconlm
for mod in pkgutil.walk_packages(falconlm.__path__, "falconlm."):
    if mod.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(mod.name)
    except ImportError as exc:  # an optional extra that is not installed
        print("skipped", mod.name, exc)
import falconlm
from falconlm import generate
from falconlm.model.config import FalconConfig
from falconlm.model.falcon import build_model
model = build_model(FalconConfig.from_preset("tiny-7b"), seed=0)
out = falconlm.generate(model, torch.tensor([[5, 6, 7]]), max_new_tokens=3)
assert generate is falconlm.generate and callable(generate) and out.shape == (1, 6)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


def _load(ckpt):
    return FalconForCausalLM.from_pretrained(ckpt).eval(), FalconTokenizer.load(ckpt)


def _engine_text(model, tok, ids, cfg, others=()):
    """The text the engine gives `ids`, decoded in a batch with `others` (prompt ids) running beside it."""
    engine = Engine(model, tok, max_batch_size=4, start=False)
    mine = Sequence(ids, cfg)
    rest = [Sequence(o, GenerationConfig(max_new_tokens=30, ignore_eos=True)) for o in others]
    engine.submit(rest[:1])
    engine.step()  # the neighbour is mid-decode when ours arrives
    engine.submit([mine] + rest[1:])
    for _ in range(1000):
        if mine.done.is_set():
            break
        engine.step()
    return "".join(ev.text for ev in mine.events), mine.generated


def _every_caller(model, tok, prompt: str, cfg: GenerationConfig) -> dict[str, str]:
    from falconlm.decoding.chat import ChatSession
    from falconlm.decoding.detokenizer import Detokenizer, text_decoder
    from falconlm.eval.harness import FalconLM
    from falconlm.tokenizer.chat_template import ChatTemplate

    ids = tok.encode(prompt)
    out = {"generate_text": generate_text(model, tok, [ids], cfg)[0].text}
    tokens = generate(model, torch.tensor([ids]), config=cfg, decode=tok.decode)[0, len(ids) :].tolist()
    d = Detokenizer(text_decoder(tok), cfg.stop_strings, [model.config.eos_token_id])
    for t in tokens:
        d.add(t)
    d.finish()
    out["generate"] = d.text
    stream = TextStream(model, tok, [ids], cfg)
    out["stream"] = "".join(delta[0] for delta in stream)
    out["engine"] = _engine_text(model, tok, ids, cfg, others=[tok.encode("dawn over"), tok.encode("the next token of web text")])[0]
    out["batched"] = generate_text(model, tok, [tok.encode("models learn to"), ids, tok.encode("x")], cfg)[1].text
    lm = FalconLM(model, tok)
    out["generate_until"] = lm.generate_until([SimpleNamespace(args=(prompt, {"until": list(cfg.stop_strings), "max_gen_toks": cfg.max_new_tokens}))], disable_tqdm=True)[0]
    # The chat loop, given the same prompt ids (its template renders them; here the template is the prompt itself).
    session = ChatSession(model, tok, ChatTemplate(), cfg, reuse_cache=False)
    written: list[str] = []
    session.reply("unused", written.append, ids=ids)
    out["chat"] = "".join(written)
    return out


def test_every_caller_gives_the_same_greedy_text_and_cuts_stop_strings_alike(tiny_ckpt):
    model, tok = _load(tiny_ckpt)
    prompt = "the falcon flies over"
    free = generate_text(model, tok, [tok.encode(prompt)], GenerationConfig(max_new_tokens=40, ignore_eos=True))[0].text
    assert len(free.strip()) > 20
    cfg = GenerationConfig(max_new_tokens=40, eos_token_id=model.config.eos_token_id)
    texts = _every_caller(model, tok, prompt, cfg)
    base = texts["generate"]
    assert all(t.rstrip() == base.rstrip() for t in texts.values()), texts
    # A stop string from the middle of the free-running text: every caller cuts there.
    stop = free.strip()[8:12]
    cut = free[: free.find(stop)]
    cfg = GenerationConfig(max_new_tokens=40, ignore_eos=True, stop_strings=[stop])
    texts = _every_caller(model, tok, prompt, cfg)
    assert all(t.rstrip() == cut.rstrip() for t in texts.values()), (stop, cut, texts)


def test_sampling_with_a_seed_is_reproducible_and_independent_of_the_batch(tiny_ckpt):
    model, tok = _load(tiny_ckpt)
    ids = tok.encode("the falcon")
    cfg = GenerationConfig(max_new_tokens=20, do_sample=True, temperature=1.0, top_k=50, seed=11, ignore_eos=True)
    alone = generate(model, torch.tensor([ids]), config=cfg)[0, len(ids) :].tolist()
    assert generate(model, torch.tensor([ids]), config=cfg)[0, len(ids) :].tolist() == alone
    _, in_engine = _engine_text(model, tok, ids, cfg, others=[tok.encode("dawn"), tok.encode("models learn to predict")])
    _, other_batch = _engine_text(model, tok, ids, cfg, others=[tok.encode("web text while the falcon")])
    assert in_engine == other_batch == alone
    reseeded = generate(model, torch.tensor([ids]), config=GenerationConfig(**{**cfg.__dict__, "seed": 12}))[0, len(ids) :].tolist()
    assert reseeded != alone


@pytest.mark.parametrize("preset", STYLES)
def test_static_step_gives_the_eager_tokens_single_and_left_padded(preset):
    config = FalconConfig.from_preset(preset, initializer_range=0.2)
    model, _ = make_pair(config)
    ids = torch.randint(12, config.vocab_size, (3, 8), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    mask[2, :2] = 0
    for kw in ({"input_ids": ids[1:2]}, {"input_ids": ids, "attention_mask": mask}):
        eager = generate(model, max_new_tokens=20, eos_token_id=[], step_mode="eager", **kw)
        static = generate(model, max_new_tokens=20, eos_token_id=[], step_mode="static", **kw)
        assert torch.equal(eager, static)
    assert DecodeStep(model, "static").mode == "static"
    assert DecodeStep(model, "graph").mode == ("graph" if model.device.type == "cuda" else "eager")


ENGINE_JOBS = [("the falcon", 12), ("dawn over the desert at", 20), ("x", 7)]


def _engine_tokens(model, tok, mode: str) -> list[list[int]]:
    """Three requests through the engine, the later two joining while the first decodes."""
    engine = Engine(model, tok, max_batch_size=3, start=False, step_mode=mode)
    seqs = [Sequence(tok.encode(p), GenerationConfig(max_new_tokens=n, ignore_eos=True)) for p, n in ENGINE_JOBS]
    engine.submit(seqs[:1])
    engine.step()
    engine.step()
    engine.submit(seqs[1:])
    while not all(s.done.is_set() for s in seqs):
        engine.step()
    return [s.generated for s in seqs]


def test_engine_static_step_gives_the_eager_tokens(tiny_40b_ckpt):
    model, tok = _load(tiny_40b_ckpt)
    assert _engine_tokens(model, tok, "eager") == _engine_tokens(model, tok, "static")


def _host_syncs(monkeypatch, fn) -> list[str]:
    """The host-synchronising tensor calls fn makes (on CUDA, the sync debug mode raises on any)."""
    calls: list[str] = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _name=name, _original=original, **k):
            calls.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    if torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    finally:
        monkeypatch.undo()
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")
    return calls


def test_static_step_makes_no_host_sync(monkeypatch):
    config = FalconConfig.from_preset("tiny-rw")  # ALiBi: the mask is built in the step too
    model, _ = make_pair(config)
    cache = model.new_cache(2, 16)
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with torch.inference_mode():
        model.hidden_states(ids, cache=cache)
        step = DecodeStep(model, "static")
        tokens, positions = torch.tensor([[11], [12]]), torch.tensor([[3], [3]])
        out = []
        calls = _host_syncs(monkeypatch, lambda: out.extend([step(tokens, positions, cache), step(tokens, positions + 1, cache)]))
        assert calls == [], calls
        assert out[-1].shape == (2, config.hidden_size) and cache.length == 5
        # The eager step does synchronise (it checks the mask on the host): the check can fail.
        assert "__bool__" in _host_syncs(monkeypatch, lambda: DecodeStep(model, "eager")(tokens, positions + 2, cache))


@pytest.mark.parametrize("preset", STYLES)
def test_paged_decode_step_makes_no_host_sync_and_equals_the_eager_step(preset, monkeypatch):
    """The engine's static paged step (block tables as inputs) against the eager packed step, on the same blocks."""
    from falconlm.decoding.step import PagedDecodeStep
    from falconlm.model.paged_cache import PagedLayout

    config = FalconConfig.from_preset(preset, initializer_range=0.2)
    model, _ = make_pair(config)
    bs, prompt = 4, torch.randint(12, config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(5))
    tables = torch.tensor([[3, 0, 5, 1], [2, 6, 4, 7]])
    cache = model.new_paged_cache(8, bs)
    with torch.inference_mode():
        for row in range(2):  # prefill both rows through their tables
            slots = tables[row, torch.arange(7) // bs] * bs + torch.arange(7) % bs
            model.paged_hidden(prompt[row : row + 1], torch.arange(7)[None], cache, PagedLayout(slots, chunks=[(0, 7, 0, slots)]))
        keys_before = cache.keys.clone()
        tokens, positions = torch.tensor([[11], [12]]), torch.tensor([[7], [7]])
        step = PagedDecodeStep(model, cache, max_blocks=4, mode="static")
        out = []
        calls = _host_syncs(monkeypatch, lambda: out.append(step(tokens, positions, tables)))
        assert calls == [], calls
        static_keys = cache.keys.clone()
        cache.keys.copy_(keys_before)
        span = torch.arange(8)
        keys = tables[:, span // bs] * bs + span % bs
        layout = PagedLayout(keys[:, 7], keys, torch.tensor([8, 8]))
        eager = model.paged_hidden(tokens.view(1, -1), positions.view(1, -1), cache, layout)[0]
    used = keys.flatten()  # the slots written (the rest of the pool is never read)
    assert torch.allclose(out[0], eager, atol=1e-5) and torch.allclose(static_keys[:, used], cache.keys[:, used], atol=1e-5)


def test_generate_command_prints_the_core_text(tiny_ckpt, capsys):
    from falconlm.cli import main

    model, tok = _load(tiny_ckpt)
    prompt = "the falcon flies over"
    free = generate_text(model, tok, [tok.encode(prompt)], GenerationConfig(max_new_tokens=30, ignore_eos=True))[0].text
    stop = free.strip()[6:10]
    want = free[: free.find(stop)]
    assert main(["generate", str(tiny_ckpt), "--prompt", prompt, "--max-new-tokens", "30", "--ignore-eos", "--stop", stop]) == 0
    assert capsys.readouterr().out == prompt + want + "\n"
    assert main(["generate", str(tiny_ckpt), "--prompt", prompt, "--max-new-tokens", "30", "--ignore-eos", "--stop", stop, "--stream"]) == 0
    assert capsys.readouterr().out == prompt + want + "\n"  # the same text streamed or not


class _ReplayedGraph:
    """Stands in for a CUDA graph on CPU: replay reruns the captured function into the captured output."""

    def __init__(self, fn, out):
        self.fn, self.out, self.replays = fn, out, 0

    def replay(self):
        self.out.copy_(self.fn())
        self.replays += 1


def _fake_graphs(monkeypatch):
    """Graph mode's bookkeeping (static buffers, capture per batch size, sessions kept per shape) run on CPU."""
    from falconlm.decoding import step as step_module

    captured = []

    def capture(fn, pool):
        graph = _ReplayedGraph(fn, fn().clone())
        captured.append(graph)
        return graph, graph.out

    monkeypatch.setattr(step_module, "choose_mode", lambda model, mode="auto": "graph" if mode in ("auto", "graph") else mode)
    monkeypatch.setattr(step_module, "_warm_up", lambda fn: fn())
    monkeypatch.setattr(step_module, "_capture", capture)
    monkeypatch.setattr(step_module, "_graph_pool", lambda: None)
    return captured


@pytest.mark.parametrize("preset", STYLES)
def test_graph_mode_bookkeeping_gives_the_eager_tokens(preset, monkeypatch):
    config = FalconConfig.from_preset(preset, initializer_range=0.2)
    model, _ = make_pair(config)
    ids = torch.randint(12, config.vocab_size, (3, 8), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    want = [generate(model, ids, attention_mask=mask, max_new_tokens=n, eos_token_id=[], step_mode="eager") for n in (12, 30)]
    captured = _fake_graphs(monkeypatch)
    got = [generate(model, ids, attention_mask=mask, max_new_tokens=n, eos_token_id=[]) for n in (12, 30)]
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    # Both calls fall in one 256-slot bucket: the second replays the graph the first captured.
    assert len(captured) == 1 and captured[0].replays == 11 + 29
    assert len(model._decode_sessions) == 1


def test_engine_graph_mode_bookkeeping_gives_the_eager_tokens(tiny_ckpt, monkeypatch):
    model, tok = _load(tiny_ckpt)
    eager = _engine_tokens(model, tok, "eager")
    captured = _fake_graphs(monkeypatch)
    assert _engine_tokens(model, tok, "auto") == eager
    assert sorted(len(g.out) for g in captured) == [1, 2, 3]  # one graph per batch size the engine ran
