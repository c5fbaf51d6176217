"""HF checkpoint directories: both directions with transformers, shards, tied head, clear errors, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from falconlm.errors import FalconError
from falconlm.model.config import FalconConfig
from falconlm.model.falcon import FalconForCausalLM

from falconlm.testing import make_pair

STYLES = ["tiny-7b", "tiny-40b", "tiny-rw"]


def _ids(config, shape=(2, 11)):
    return torch.randint(0, config.vocab_size, shape, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("preset", STYLES)
def test_ours_loads_in_transformers_and_back(preset, tmp_path):
    import transformers

    config = FalconConfig.from_preset(preset, rope_theta=777.0)
    ours, _ = make_pair(config)
    ours.save_pretrained(tmp_path / "ours")
    hf = transformers.FalconForCausalLM.from_pretrained(tmp_path / "ours").eval()
    ids = _ids(config)
    with torch.no_grad():
        reference = ours(ids)
        assert torch.equal(hf(ids).logits, reference) or (hf(ids).logits - reference).abs().max() < 1e-5
    hf.save_pretrained(tmp_path / "hf")
    back = FalconForCausalLM.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        assert torch.equal(back(ids), reference)


def test_sharded_save_round_trips_and_tied_head_is_stored_once(tmp_path):
    config = FalconConfig.from_preset("tiny-40b")
    ours, _ = make_pair(config)
    ours.save_pretrained(tmp_path, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((tmp_path / s).is_file() for s in shards)
    assert "lm_head.weight" not in index["weight_map"]
    assert not (tmp_path / "model.safetensors").exists()
    back = FalconForCausalLM.from_pretrained(tmp_path)
    assert back.lm_head.weight is back.transformer.word_embeddings.weight
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    # Saving again unsharded removes the old shards and index.
    back.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == config.eos_token_id


def test_dtype_on_load_and_tokenizer_copied(tmp_path):
    config = FalconConfig.from_preset("tiny-7b")
    ours, _ = make_pair(config)
    src = tmp_path / "src"
    ours.save_pretrained(src)
    (src / "tokenizer.json").write_text('{"fake": true}')
    bf = FalconForCausalLM.from_pretrained(src, dtype="bf16")
    assert bf.dtype == torch.bfloat16
    bf.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "tokenizer.json").read_text() == '{"fake": true}'
    assert FalconForCausalLM.from_pretrained(tmp_path / "copy").dtype == torch.bfloat16  # config records torch_dtype


def _saved(tmp_path, preset="tiny-7b"):
    config = FalconConfig.from_preset(preset)
    ours, _ = make_pair(config)
    ours.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_missing_tensor(tmp_path):
    state = _saved(tmp_path)
    del state["transformer.h.1.mlp.dense_4h_to_h.weight"]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(FalconError, match=r"missing tensor 'transformer\.h\.1\.mlp\.dense_4h_to_h\.weight'"):
        FalconForCausalLM.from_pretrained(tmp_path)


def test_wrong_shape(tmp_path):
    state = _saved(tmp_path)
    state["transformer.ln_f.weight"] = torch.ones(7)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(FalconError, match=r"'transformer\.ln_f\.weight'.*shape \(7,\).*\(64,\)"):
        FalconForCausalLM.from_pretrained(tmp_path)


def test_unknown_key(tmp_path):
    state = _saved(tmp_path)
    state["transformer.h.9.mlp.extra"] = torch.ones(2)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(FalconError, match=r"has tensor 'transformer\.h\.9\.mlp\.extra'"):
        FalconForCausalLM.from_pretrained(tmp_path)


def test_config_that_does_not_match_the_weights(tmp_path):
    _saved(tmp_path)
    FalconConfig.from_preset("tiny-40b").save(tmp_path)
    with pytest.raises(FalconError):
        FalconForCausalLM.from_pretrained(tmp_path)


def test_non_falcon_missing_pickle_and_corrupt(tmp_path):
    with pytest.raises(FalconError, match="does not exist"):
        FalconForCausalLM.from_pretrained(tmp_path / "nope")
    _saved(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "model_type": "gpt2"}))
    with pytest.raises(FalconError, match="not a Falcon model"):
        FalconForCausalLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(FalconError):
        FalconForCausalLM.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FalconError, match="safetensors only"):
        FalconForCausalLM.from_pretrained(tmp_path)


def test_untied_head_that_differs_is_rejected(tmp_path):
    state = _saved(tmp_path)
    state["lm_head.weight"] = state["transformer.word_embeddings.weight"] + 1
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(FalconError, match="differs from the embeddings"):
        FalconForCausalLM.from_pretrained(tmp_path)
    state["lm_head.weight"] = state["transformer.word_embeddings.weight"].clone()
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    FalconForCausalLM.from_pretrained(tmp_path)  # an equal stored copy is fine


LOAD_MEMORY_SCRIPT = r"""
import sys, threading, time, torch
from falconlm.model.falcon import FalconForCausalLM
def anon():
    for line in open('/proc/self/status'):
        if line.startswith('RssAnon:'):
            return int(line.split()[1]) * 1024
base = anon(); peak = [base]; stop = threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], anon()); time.sleep(0.0005)
t = threading.Thread(target=sample); t.start()
model = FalconForCausalLM.from_pretrained(sys.argv[1])
stop.set(); t.join()
size = sum(p.numel() * p.element_size() for p in model.parameters())
print(size, max(peak[0], anon()) - base)
"""


@pytest.mark.slow
def test_loading_needs_about_one_copy_of_the_weights(tmp_path):
    config = FalconConfig.from_preset("tiny-7b", vocab_size=32000, hidden_size=512, num_attention_heads=8, num_hidden_layers=4)
    model = FalconForCausalLM(config)
    model.save_pretrained(tmp_path)
    out = subprocess.run([sys.executable, "-c", LOAD_MEMORY_SCRIPT, str(tmp_path)], capture_output=True, text=True, check=True)
    size, grown = map(int, out.stdout.split())
    assert size > 50e6
    assert grown < 1.4 * size, f"loading {size / 1e6:.0f} MB of weights grew anonymous memory by {grown / 1e6:.0f} MB"
