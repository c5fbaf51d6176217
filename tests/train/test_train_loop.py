"""The pretraining loop end to end: learning, bit-exact resume, atomic checkpoints, divergence, CLI, outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from falconlm.atomic import is_temp, temp_path
from falconlm.cli import main as cli_main
from falconlm.errors import FalconError
from falconlm.train import checkpoint as ckpt_mod
from falconlm.train.checkpoint import latest_checkpoint
from falconlm.train.data import BatchSource, TokenWindows, unigram_entropy
from falconlm.train.loop import pretrain
from falconlm.train.metrics import read_metrics


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


def test_overfits_a_small_repeated_batch(tmp_path, tiny_cfg, raw_shards):
    rng = np.random.default_rng(0)
    data = raw_shards(tmp_path / "data", [rng.integers(12, 500, 33) for _ in range(2)])
    res = pretrain(tiny_cfg(data, tmp_path / "run", max_steps=60, global_batch_size=4, lr=1e-2, min_lr=1e-3,
                               warmup_tokens=0, z_loss=0.0, save_interval=0, log_interval=20))
    assert res.losses[1] > 5.0
    assert res.losses[60] < 0.05


def test_heldout_loss_falls_well_below_unigram_entropy(sample_shards, tmp_path, tiny_cfg):
    h1 = unigram_entropy(sample_shards)
    res = pretrain(tiny_cfg(sample_shards, tmp_path / "run", max_steps=100, seq_len=64, global_batch_size=8, micro_batch_size=8,
                               lr=1e-2, min_lr=1e-3, warmup_tokens=2000, eval_interval=50, save_interval=0, log_interval=50))
    assert 4.0 < h1 < 6.5  # the sample corpus under a 500-token BPE
    assert res.val_losses[100] < 0.5 * h1  # measured: ~1.0 nats vs ~4.6
    assert res.val_losses[50] > res.val_losses[100]
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [50, 100]
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss", "tokens"):
        assert key in records[-1]
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000


def test_resume_is_bit_exact_after_a_kill_during_checkpointing(sample_shards, tmp_path, monkeypatch, tiny_cfg):
    straight = pretrain(tiny_cfg(sample_shards, tmp_path / "straight", max_steps=8))
    out = tmp_path / "killed"
    root = out / "checkpoints"
    half = temp_path(root / "step-00000006")  # where this process assembles the step-6 checkpoint
    left = tmp_path / "left-by-the-kill"
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        if str(f).endswith("trainer_state.pt") and Path(f).parent == half:
            shutil.copytree(half, left)  # what a kill at this moment leaves on disk: the weights, no trainer state
            raise KeyboardInterrupt  # killed while writing the step-6 checkpoint, weights already on disk
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_cfg(sample_shards, out, max_steps=8))
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert not half.exists()  # an interrupted save removes its temp folder...
    left.rename(half)  # ...a hard kill could not: put back what it would have left
    # the half-written checkpoint is never the latest; the step-3 one is intact
    assert (half / "model.safetensors").exists()
    assert latest_checkpoint(root).name == "step-00000003"
    assert not (root / "step-00000006").exists()
    with pytest.raises(FalconError, match="--resume"):
        pretrain(tiny_cfg(sample_shards, out, max_steps=8))
    resumed = pretrain(tiny_cfg(sample_shards, out, max_steps=8, resume=True))
    assert not half.exists() and not [p for p in root.iterdir() if is_temp(p)]
    assert sorted(resumed.losses) == [4, 5, 6, 7, 8]
    for step in range(4, 9):
        assert resumed.losses[step] == straight.losses[step]  # bit-exact, not approximately
        assert resumed.grad_norms[step] == straight.grad_norms[step]
    a, b = weights(straight.checkpoint), weights(resumed.checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(straight.checkpoint / "trainer_state.pt", weights_only=False)
    sb = torch.load(resumed.checkpoint / "trainer_state.pt", weights_only=False)
    assert (sa["step"], sa["tokens"], sa["samples"]) == (sb["step"], sb["tokens"], sb["samples"]) == (8, 8 * 8 * 32, 64)
    for k, st in sa["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg"], sb["optimizer"]["state"][k]["exp_avg"])
        assert torch.equal(st["exp_avg_sq"], sb["optimizer"]["state"][k]["exp_avg_sq"])
    # metrics.jsonl of the resumed run reads like one uninterrupted run
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert steps == list(range(1, 9))
    assert [p.name for p in sorted(root.glob("step-*"))] == ["step-00000003", "step-00000006", "step-00000008"]


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(sample_shards, tmp_path, monkeypatch, tiny_cfg):
    from falconlm.train import loss as loss_mod

    calls = {"n": 0}
    real_loss = loss_mod.linear_cross_entropy

    def exploding(*args, **kwargs):
        calls["n"] += 1
        total, ce = real_loss(*args, **kwargs)
        if calls["n"] > 4 * 4:  # micro-batches of steps 1-4 are fine (4 per step), step 5 explodes
            return total * float("nan"), ce
        return total, ce

    # the loop imports its loss at run time, so patching the module is enough
    monkeypatch.setattr(loss_mod, "linear_cross_entropy", exploding)
    with pytest.raises(FalconError, match=r"diverged: loss is nan at step 5; the last good checkpoint is .*step-00000003"):
        pretrain(tiny_cfg(sample_shards, tmp_path / "run", max_steps=8))
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-00000003"


def test_data_windows_are_deterministic_and_split_across_ranks(sample_shards):
    w = TokenWindows(sample_shards, "train", 32)
    a = w.random_windows(seed=1, step=7, count=8)
    assert np.array_equal(a, w.random_windows(seed=1, step=7, count=8))
    assert not np.array_equal(a, w.random_windows(seed=1, step=8, count=8))
    for sampling in ("random", "sequential"):
        one = BatchSource(w, sampling, 1, 0, 1, 2)
        full = np.concatenate(one.rank_micro_batches(7, 40, 8))
        two = [BatchSource(w, sampling, 1, r, 2, 2).rank_micro_batches(7, 40, 8) for r in range(2)]
        # rank r, micro m holds rows (m*world + r)*micro.. of the global batch
        assert np.array_equal(np.concatenate([two[0][0], two[1][0], two[0][1], two[1][1]]), full)
    seq = w.sequential_windows(0, 3)
    assert np.array_equal(seq[1][:1], seq[0][-1:])  # windows overlap by the one target token
    assert len(seq[0]) == 33


def test_pretrain_cli_yaml_outputs_and_hf_loading(sample_shards, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    y = tmp_path / "run.yaml"
    y.write_text(
        f"model: tiny-40b\ndata: {sample_shards}\nseq_len: 32\nglobal_batch_size: 4\nmicro_batch_size: 2\n"
        "batch_rampup_tokens: 256\nwarmup_tokens: 256\nlr: 5.0e-3\nmin_lr: 5.0e-4\nlog_interval: 2\neval_interval: 4\n"
        "save_interval: 2\nkeep_last: 2\ntensorboard: false\nmodel_overrides: {num_hidden_layers: 3}\n"
    )
    out = tmp_path / "run"
    assert cli_main(["pretrain", "--config", str(y), "--out", str(out), "--max-steps", "6", "--lr", "4e-3", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "step      6/6" in text and "tok/s" in text and "MFU" in text and "ETA" in text and "done: 6 steps" in text
    import yaml

    resolved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert resolved["lr"] == 4e-3 and resolved["max_steps"] == 6 and resolved["model"] == "tiny-40b"
    records = read_metrics(out / "metrics.jsonl")
    assert [r["batch_size"] for r in records][0] == 2 and records[-1]["batch_size"] == 4  # ramp 2 -> 4
    assert [p.name for p in sorted((out / "checkpoints").glob("step-*"))] == ["step-00000004", "step-00000006"]
    final = out / "checkpoints" / "step-00000006"
    assert (final / "tokenizer.json").is_file() and json.loads((final / "config.json").read_text())["num_hidden_layers"] == 3
    hf = transformers.FalconForCausalLM.from_pretrained(str(final)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(final))
    ids = torch.tensor([tok.encode("The falcon watched the bridge.")])
    from falconlm.model.falcon import FalconForCausalLM

    ours = FalconForCausalLM.from_pretrained(final)
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, ours(ids), atol=1e-4)
    # errors are one clear sentence
    assert cli_main(["pretrain", "--model", "tiny-7b", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "x"), "--max-steps", "1"]) == 1
    assert "not a token-shard directory" in capsys.readouterr().err
    assert cli_main(["pretrain", "--model", "tiny-7b", "--data", str(sample_shards), "--out", str(tmp_path / "x")]) == 1
    assert "--max-steps" in capsys.readouterr().err


def test_measuring_the_peak_leaves_the_training_rng_alone():
    from falconlm.train.metrics import measure_peak_flops

    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    measure_peak_flops(torch.device("cpu"), n=32, repeats=1)
    assert torch.equal(torch.rand(4), expected)  # a resumed run's restored RNG is not moved by the MFU set-up
