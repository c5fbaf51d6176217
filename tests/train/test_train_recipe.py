"""The Falcon recipe's pieces against their formulas: LR schedule, batch ramp-up, AdamW groups, z-loss, clipping."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from falconlm.errors import FalconError
from falconlm.model.config import FalconConfig
from falconlm.model.falcon import build_model
from falconlm.train.config import TrainConfig
from falconlm.train.loss import lm_loss
from falconlm.train.optim import build_optimizer, param_groups
from falconlm.train.schedule import Schedule, batch_size_at, lr_at


def test_lr_warmup_then_cosine():
    kw = dict(max_lr=6e-4, min_lr=1.2e-5, warmup_tokens=4e9, decay_tokens=1.5e12)
    assert lr_at(0, **kw) == 0.0
    assert lr_at(1e9, **kw) == pytest.approx(1.5e-4)  # linear: a quarter of the warm-up
    assert lr_at(4e9, **kw) == pytest.approx(6e-4)  # peak at the end of warm-up
    mid = (4e9 + 1.5e12) / 2
    assert lr_at(mid, **kw) == pytest.approx((6e-4 + 1.2e-5) / 2)  # cosine half-way = mean of max and min
    t = 4e9 + 0.25 * (1.5e12 - 4e9)
    assert lr_at(t, **kw) == pytest.approx(1.2e-5 + 0.5 * (1 + math.cos(math.pi / 4)) * (6e-4 - 1.2e-5))
    assert lr_at(1.5e12, **kw) == pytest.approx(1.2e-5) and lr_at(2e12, **kw) == pytest.approx(1.2e-5)
    lrs = [lr_at(x, **kw) for x in range(int(4e9), int(1.5e12), int(1e10))]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay


def test_batch_rampup_linear_in_multiples():
    # Falcon-7B: 2304 sequences after a 30B-token ramp; unit = micro x world = 4 x 8
    unit = 32
    assert batch_size_at(0, 32, 2304, 30e9, unit) == 32
    assert batch_size_at(15e9, 32, 2304, 30e9, unit) == (32 + (2304 - 32) // 2) // unit * unit
    assert batch_size_at(30e9, 32, 2304, 30e9, unit) == 2304
    sizes = [batch_size_at(t, 32, 2304, 30e9, unit) for t in range(0, int(31e9), int(1e9))]
    assert all(s % unit == 0 and 32 <= s <= 2304 for s in sizes)
    assert all(a <= b for a, b in zip(sizes, sizes[1:]))
    assert batch_size_at(5, 32, 2304, 0, unit) == 2304  # ramp off


def test_schedule_counts_tokens_through_the_ramp():
    cfg = TrainConfig(data="x", seq_len=16, global_batch_size=32, micro_batch_size=2, batch_rampup_tokens=16 * 64,
                      batch_rampup_start=8, max_steps=10, warmup_tokens=0)
    s = Schedule(cfg, world_size=2)  # unit 4
    tokens, batches = 0, []
    for step in range(1, 11):
        p = s.plan(step, tokens, 0)
        batches.append(p.batch)
        assert p.accum == p.batch // 4
        tokens = p.tokens_after(16)
    assert batches[0] == 8 and batches[-1] == 32 and batches == sorted(batches)
    assert s.total_tokens == tokens and s.total_steps == 10
    assert s.decay_tokens == tokens
    with pytest.raises(FalconError, match="multiple"):
        Schedule(TrainConfig(data="x", global_batch_size=10, micro_batch_size=4, max_steps=1), world_size=1)


def test_max_tokens_run_length():
    cfg = TrainConfig(data="x", seq_len=10, global_batch_size=4, micro_batch_size=1, batch_rampup_tokens=0, max_tokens=1000)
    s = Schedule(cfg, 1)
    assert s.total_steps == 25 and s.total_tokens == 1000


def test_weight_decay_only_on_weight_matrices():
    for preset in ("tiny-7b", "tiny-40b", "tiny-rw"):
        model = build_model(FalconConfig.from_preset(preset), seed=0)
        decay, no_decay = param_groups(model, 0.1)
        names = {id(p): n for n, p in model.named_parameters()}
        assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
        for p in decay["params"]:
            assert p.ndim == 2 and "word_embeddings" not in names[id(p)] and "ln" not in names[id(p)]
        for p in no_decay["params"]:
            n = names[id(p)]
            assert p.ndim == 1 or "word_embeddings" in n
        assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))  # tied head counted once
        with_emb = param_groups(model, 0.1, decay_embeddings=True)[0]["params"]
        assert any(p is model.transformer.word_embeddings.weight for p in with_emb)
    opt = build_optimizer(model, TrainConfig(data="x", max_steps=1))
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_z_loss_is_coefficient_times_mean_lse_squared():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11) * 3 + 2
    targets = torch.randint(0, 11, (2, 5))
    total0, ce0 = lm_loss(logits, targets, 0.0)
    assert torch.allclose(ce0, F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)), atol=1e-6)
    assert total0 == ce0
    total, ce = lm_loss(logits, targets, 1e-4)
    lse = torch.logsumexp(logits, -1)
    assert torch.allclose(total, ce + 1e-4 * (lse**2).mean(), atol=1e-7)
    # z-loss pulls the log-normaliser towards 0: its gradient shifts all logits of a row down when lse > 0
    x = logits.clone().requires_grad_(True)
    (lm_loss(x, targets, 1.0)[0] - lm_loss(x, targets, 0.0)[0]).backward()
    shift = x.grad.sum(-1)
    assert torch.allclose(shift, 2 * lse / lse.numel(), atol=1e-5) and (shift > 0).all()


def test_z_loss_shrinks_the_log_normaliser_in_training(sample_shards, tmp_path, tiny_cfg):
    
    from falconlm.model.falcon import FalconForCausalLM
    from falconlm.train.data import heldout_windows
    from falconlm.train.loop import pretrain

    val = torch.from_numpy(heldout_windows(sample_shards, 32, 8))
    lse2 = {}
    for z in (0.0, 1.0):
        res = pretrain(tiny_cfg(sample_shards, tmp_path / f"z{z}", z_loss=z, max_steps=12, save_interval=0, lr=1e-2, warmup_tokens=0))
        model = FalconForCausalLM.from_pretrained(res.checkpoint)
        with torch.no_grad():
            lse2[z] = float(torch.logsumexp(model(val[:, :-1]), -1).square().mean())
    assert lse2[1.0] < 0.75 * lse2[0.0]  # measured: ~20 vs ~34


def test_clipping_scales_gradients_to_the_limit(sample_shards, tmp_path, monkeypatch, tiny_cfg):
    
    from falconlm.train.loop import pretrain

    seen = []
    real_step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    clipped = pretrain(tiny_cfg(sample_shards, tmp_path / "clip", grad_clip=0.05, max_steps=3, save_interval=0))
    assert all(n > 0.05 for n in clipped.grad_norms.values())  # reported norm is the pre-clip norm
    assert seen == pytest.approx([0.05] * 3, rel=1e-4)  # what AdamW saw was clipped to the limit
    seen.clear()
    free = pretrain(tiny_cfg(sample_shards, tmp_path / "free", grad_clip=0.0, max_steps=3, save_interval=0))
    assert seen[0] == pytest.approx(free.grad_norms[1], rel=1e-4) and seen[0] > 0.05


def test_config_precedence_yaml_then_flags(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("model: tiny-7b\nlr: 1.0e-3\nwarmup_tokens: 4e6\nglobal-batch-size: 16\nmodel_overrides: {num_hidden_layers: 3}\n")
    cfg = TrainConfig.from_sources(str(y), {"lr": 2e-3, "seq_len": None})
    assert cfg.lr == 2e-3 and cfg.global_batch_size == 16 and cfg.seq_len == 2048 and cfg.warmup_tokens == 4e6
    assert cfg.model_overrides == {"num_hidden_layers": 3}
    y.write_text("lr: 1e-3\nbogus: 1\n")
    with pytest.raises(FalconError, match="bogus"):
        TrainConfig.from_sources(str(y))


@pytest.mark.parametrize("name,lr,batch,ramp,z", [
    ("tiny", 1e-2, 8, 1e4, 1e-4),
    ("rw-1b", 2e-4, 512, 4e9, 0.0),
    ("falcon-7b", 6e-4, 2304, 3e10, 1e-4),
    ("falcon-40b", 1.85e-4, 1152, 1e11, 1e-4),
])
def test_config_presets_carry_the_falcon_recipe(name, lr, batch, ramp, z):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml"
    cfg = TrainConfig.from_sources(str(path), {"data": "shards"})
    cfg.validate()
    assert (cfg.lr, cfg.global_batch_size, cfg.batch_rampup_tokens, cfg.z_loss) == (lr, batch, ramp, z)
    assert (cfg.beta1, cfg.beta2, cfg.weight_decay) == (0.9, 0.95, 0.1)
    FalconConfig.from_preset(cfg.model)  # the model preset exists
    s = Schedule(cfg, world_size=8 if name != "tiny" else 1)
    assert s.total_steps > 0 and s.lr(s.total_tokens) == pytest.approx(cfg.min_lr)


@pytest.mark.parametrize("z", [0.0, 1e-2])
def test_fused_head_loss_equals_autograd_reference(z):
    from falconlm.train.loss import linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(2, 37, 16, requires_grad=True)
    w = (torch.randn(50, 16) * 0.5).requires_grad_(True)
    t = torch.randint(0, 50, (2, 37))
    total, ce = linear_cross_entropy(h, w, t, z, chunk=10)  # 74 tokens in uneven chunks
    (total * 1.7).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref_total, ref_ce = lm_loss(h @ w.t(), t, z)
    (ref_total * 1.7).backward()
    torch.testing.assert_close(total, ref_total, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ce, ref_ce, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh, h.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw, w.grad, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # evaluation: no gradient work, same value
        assert torch.equal(linear_cross_entropy(h, w, t, z, chunk=10)[0], total.detach())


def test_activation_checkpointing_gives_the_same_training(sample_shards, tmp_path, tiny_cfg):
    from falconlm.train.loop import pretrain

    plain = pretrain(tiny_cfg(sample_shards, tmp_path / "plain", max_steps=3, save_interval=0))
    ckpt = pretrain(tiny_cfg(sample_shards, tmp_path / "ac", max_steps=3, save_interval=0, activation_checkpointing=True))
    for step, loss in plain.losses.items():
        assert ckpt.losses[step] == pytest.approx(loss, rel=1e-6)
        assert ckpt.grad_norms[step] == pytest.approx(plain.grad_norms[step], rel=1e-5)
