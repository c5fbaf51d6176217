"""FalconConfig: presets, legacy RefinedWeb configs, HF 4.x / 5.x rope spellings, config.json round trips."""

from __future__ import annotations

import json

import pytest

from falconlm.errors import FalconError
from falconlm.model.config import PRESETS, FalconConfig


@pytest.mark.parametrize(
    "preset,params,qkv_out,style",
    [
        ("falcon-rw-1b", 1.312e9, 6144, "sequential"),
        ("falcon-rw-7b", 7.516e9, 12288, "sequential"),
        ("falcon-7b", 6.92e9, 4672, "parallel-1ln"),
        ("falcon-40b", 41.30e9, 9216, "parallel-2ln"),
        ("falcon-180b", 178.56e9, 15872, "parallel-2ln"),
    ],
)
def test_released_presets_have_the_published_shapes(preset, params, qkv_out, style):
    config = FalconConfig.from_preset(preset)
    assert config.qkv_out_features == qkv_out
    assert config.block_style == style
    assert config.head_dim == 64
    assert abs(config.num_parameters() - params) / params < 0.002


def test_presets_match_transformers_parameter_count():
    import torch
    import transformers

    for name in ("tiny-7b", "tiny-40b", "tiny-rw"):
        config = FalconConfig.from_preset(name)
        fields = {k: v for k, v in config.to_dict().items() if k not in ("architectures", "model_type")}
        with torch.device("meta"):
            hf = transformers.FalconForCausalLM(transformers.FalconConfig(**fields))
        assert sum(p.numel() for p in hf.parameters()) == config.num_parameters()


def test_legacy_refinedweb_40b_config():
    legacy = {"model_type": "RefinedWeb", "n_embed": 8192, "n_head": 128, "n_head_kv": 8, "n_layer": 60, "vocab_size": 65024, "parallel_attn": True, "bias": False, "alibi": False}
    config = FalconConfig.from_dict(legacy)
    assert config == FalconConfig.from_preset("falcon-40b")


def test_legacy_refinedwebmodel_7b_config():
    legacy = {"model_type": "RefinedWebModel", "hidden_size": 4544, "n_head": 71, "n_layer": 32, "multi_query": True, "parallel_attn": True, "alibi": False, "bias": False, "vocab_size": 65024, "apply_residual_connection_post_layernorm": False}
    config = FalconConfig.from_dict(legacy)
    assert config.stored_kv_heads == 1 and not config.new_decoder_architecture
    assert config.qkv_out_features == 4672


def test_hf5_rope_parameters_and_hf4_rope_scaling():
    five = FalconConfig.from_dict({"model_type": "falcon", "rope_parameters": {"rope_theta": 500000.0, "rope_type": "linear", "factor": 4.0}})
    assert five.rope_theta == 500000.0 and five.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    four = FalconConfig.from_dict({"model_type": "falcon", "rope_theta": 42.0, "rope_scaling": {"type": "dynamic", "factor": 2.0}})
    assert four.rope_theta == 42.0 and four.rope_scaling["type"] == "dynamic"
    assert FalconConfig.from_dict({"rope_parameters": {"rope_theta": 7.0, "rope_type": "default"}}).rope_scaling is None


def test_config_json_round_trip_and_transformers_reads_it(tmp_path):
    import transformers

    config = FalconConfig.from_preset("tiny-40b", rope_theta=321.0)
    config.save(tmp_path)
    assert FalconConfig.from_json(tmp_path) == config
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    assert hf.model_type == "falcon" and hf.num_kv_heads == 2 and hf.new_decoder_architecture
    rope = getattr(hf, "rope_parameters", None) or {"rope_theta": hf.rope_theta}
    assert rope["rope_theta"] == 321.0


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"model_type": "llama"}, "not a Falcon model"),
        ({"hidden_size": 100, "num_attention_heads": 3}, "not divisible"),
        ({"new_decoder_architecture": True, "hidden_size": 64, "num_attention_heads": 4, "num_kv_heads": 3}, "multiple of num_kv_heads"),
        ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "not supported"),
        ({"rope_scaling": {"type": "linear", "factor": 0.5}}, "factor must be"),
    ],
)
def test_bad_configs_fail_with_one_clear_sentence(raw, message):
    with pytest.raises(FalconError, match=message):
        FalconConfig.from_dict(raw)


def test_bad_json_and_unknown_preset(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(FalconError, match="not valid JSON"):
        FalconConfig.from_json(tmp_path)
    with pytest.raises(FalconError, match="unknown preset"):
        FalconConfig.from_preset("falcon-9000b")
    assert {"falcon-rw-1b", "falcon-rw-7b", "falcon-7b", "falcon-40b", "falcon-180b"} <= set(PRESETS)
    json.dumps(FalconConfig.from_preset("falcon-180b").to_dict())
