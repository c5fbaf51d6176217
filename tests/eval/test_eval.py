"""Evaluation: perplexity / bits per byte against a direct computation, and the lm-eval adapter against lm-eval."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from falconlm.eval.perplexity import evaluate_perplexity
from falconlm.eval.scoring import rolling_windows, score_continuations
from falconlm.eval.tasks import data_dir, task_dir
from falconlm.model.config import FalconConfig
from falconlm.model.falcon import FalconForCausalLM
from falconlm.tokenizer.falcon import train_tokenizer


def _mc_items():
    return [json.loads(line) for line in (data_dir() / "mc.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained until it continues each bundled multiple-choice context with its right answer."""
    items = _mc_items()
    texts = [f"{it['context']} {it['choices'][it['label']]}" for it in items]
    distractors = [f"{it['context']} {c}" for it in items for c in it["choices"]]
    tokenizer = train_tokenizer(texts + distractors, vocab_size=600, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    config = FalconConfig.from_preset("tiny-7b", vocab_size=tokenizer.vocab_size, hidden_size=96, num_attention_heads=6, max_position_embeddings=64, bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id)
    model = FalconForCausalLM(config)
    seqs = [[tokenizer.eot_id] + tokenizer.encode(t) + [tokenizer.eot_id] for t in texts]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tokenizer.eot_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model(ids[:, :-1], attention_mask=mask[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        loss = (loss * mask[:, 1:].flatten()).sum() / mask[:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1.0  # the contexts' first words stay uncertain; the answers are what it learns
    out = tmp_path_factory.mktemp("ckpt")
    model.eval().save_pretrained(out)
    tokenizer.save(out)
    return out, model, tokenizer


def _direct_logprob(model, context, continuation):
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = F.log_softmax(model(ids).double(), dim=-1)[0]
    return sum(logprobs[len(context) - 1 + i, tok].item() for i, tok in enumerate(continuation))


def test_batched_scores_equal_direct_computation(trained):
    _, model, tokenizer = trained
    pairs = [(tokenizer.encode("The capital"), tokenizer.encode(" of France is Paris")), ([tokenizer.eot_id], tokenizer.encode("A week")), (tokenizer.encode("Snow is"), tokenizer.encode(" usually the colour white"))]
    scored = score_continuations(model, pairs, batch_size=2)
    for (ctx, cont), s in zip(pairs, scored):
        assert s.logprob == pytest.approx(_direct_logprob(model, ctx, cont), abs=1e-4)
        assert s.tokens == len(cont)


def test_rolling_windows_score_each_token_once_within_the_context():
    tokens = list(range(100, 137))
    for stride in (4, 7, 8):
        windows = rolling_windows(tokens, 1, max_length=8, stride=stride)
        assert [t for _, cont in windows for t in cont] == tokens
        assert all(len(ctx) + len(cont) - 1 <= 8 for ctx, cont in windows)
        seq = [1] + tokens
        for ctx, cont in windows:  # each window's context is exactly what precedes its continuation
            start = seq.index(cont[0])
            assert seq[start - len(ctx) : start] == ctx


def test_perplexity_and_bits_per_byte_equal_direct_computation(trained):
    _, model, tokenizer = trained
    texts = ["The capital of France is Paris", "A triangle has three sides " * 6, "Fish breathe underwater through their gills"]
    result = evaluate_perplexity(model, tokenizer.encode, texts, tokenizer.eot_id, max_length=16, stride=8, progress=False)
    nll, count = 0.0, 0
    length, stride = 16, 8
    for text in texts:
        tokens = tokenizer.encode(text)
        seq = [tokenizer.eot_id] + tokens
        with torch.no_grad():
            for j in range(len(tokens)):
                # Token j belongs to the first window (the first 16 tokens) or to window k of 8 new
                # tokens; a window's input is the 16 tokens of seq that end at its last target.
                if j < length:
                    b = min(length, len(tokens))
                else:
                    a = length + ((j - length) // stride) * stride
                    b = min(a + stride, len(tokens))
                ctx = seq[max(0, b - length) : j + 1]
                logprobs = F.log_softmax(model(torch.tensor([ctx])).double(), dim=-1)[0, -1]
                nll -= logprobs[seq[j + 1]].item()
                count += 1
    assert result.tokens == count
    assert result.nll == pytest.approx(nll, rel=1e-5)
    n_bytes = sum(len(t.encode()) for t in texts)
    assert result.bits_per_byte == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_lm_eval_adapter_on_bundled_tasks(trained):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.tasks import TaskManager

    from falconlm.eval.harness import FalconLM

    ckpt, model, tokenizer = trained
    lm = FalconLM(str(ckpt), batch_size=4)
    out = lm_eval.simple_evaluate(model=lm, tasks=["falconlm_mc"], task_manager=TaskManager(include_path=str(task_dir()), include_defaults=False), log_samples=False)
    assert out["results"]["falconlm_mc"]["acc,none"] == 1.0
    # loglikelihood equals the sum computed directly from the model's logits.
    req = Instance("loglikelihood", {}, ("The largest planet in the solar system is", " Jupiter"), 0)
    (logprob, greedy), = lm.loglikelihood([req], disable_tqdm=True)
    ctx, cont = lm._split(*req.args)
    assert logprob == pytest.approx(_direct_logprob(model, ctx, cont), abs=1e-4) and greedy
    # loglikelihood_rolling over a text longer than the context equals lm-eval's windows scored directly.
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    lm.max_length = 8
    text = "The sun rises in the east. Birds fly using their wings. A week has seven days."
    (rolled,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(tokenizer.encode(text), tokenizer.eot_id, 8, 1)]
    assert len(windows) > 2
    assert rolled == pytest.approx(sum(_direct_logprob(model, c, t) for c, t in windows), abs=1e-3)
    # generate_until continues with the memorised answer and cuts at the stop string.
    lm.max_length = 64
    (text,) = lm.generate_until([Instance("generate_until", {}, ("The capital of France is", {"until": ["\n", "ri"], "max_gen_toks": 8}), 0)], disable_tqdm=True)
    assert text.strip() == "Pa"  # "Paris", cut before the stop string "ri"


@pytest.mark.slow
def test_evaluate_cli(trained, tmp_path):
    ckpt, _, _ = trained
    data = tmp_path / "heldout.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in ["The capital of France is Paris", "A week has seven days"]) + "\n")
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "falconlm", "evaluate", str(ckpt), "--data", str(data), "--tasks", "falconlm_mc,falconlm_cloze", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["perplexity"]["documents"] == 2 and results["perplexity"]["bits_per_byte"] > 0
    assert results["tasks"]["falconlm_mc"]["acc,none"] == 1.0
    assert "perplexity,none" in results["tasks"]["falconlm_cloze"]
    bad = subprocess.run([sys.executable, "-m", "falconlm", "evaluate", str(ckpt)], capture_output=True, text=True)
    assert bad.returncode == 1 and "nothing to evaluate" in bad.stderr and "Traceback" not in bad.stderr
