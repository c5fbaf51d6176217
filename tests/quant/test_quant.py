"""Quantized inference: kernels against their reference, the GPTQ layout against an independent packer,
quality on a trained model, every loading path, and bad checkpoints."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import markov_tokens, perplexity  # noqa: E402

from falconlm.errors import FalconError  # noqa: E402
from falconlm.model.falcon import FalconForCausalLM  # noqa: E402
from falconlm.quant import kernels  # noqa: E402
from falconlm.quant.gptq import HessianAccumulator, gptq_quantize, hessian_error  # noqa: E402
from falconlm.quant.gptq_format import from_gptq, to_gptq  # noqa: E402
from falconlm.quant.linear import QuantLinear, exact_activations  # noqa: E402
from falconlm.quant.quantize import quantize_checkpoint  # noqa: E402
from falconlm.quant.save import quantize_model  # noqa: E402
from falconlm.quant.spec import QuantSpec  # noqa: E402

BLOCK_LINEARS = ("self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")


# ----------------------------------------------------------------------------- the layer and its kernels


def _quantized_input(x: torch.Tensor, act_group: int) -> np.ndarray:
    """The kernels' input rounding, written from its description: per row and group of act_group
    values, scale = max|x| / 127 in fp32, integers round-half-even(x / scale) (0 for a zero group)."""
    xs = x.reshape(-1, x.shape[-1]).numpy().astype(np.float32)
    out = np.zeros(xs.shape, dtype=np.float64)
    for r in range(xs.shape[0]):
        for a in range(0, xs.shape[1], act_group):
            v = xs[r, a : a + act_group]
            scale = np.float32(np.abs(v).max()) / np.float32(127)
            if scale > 0:
                out[r, a : a + act_group] = np.rint(v / scale).astype(np.float64) * np.float64(scale)
    return out


@pytest.mark.parametrize("bits,k,group,sym,act_group", [(8, 64, 64, True, 32), (8, 96, 32, False, 32), (8, 40, 40, True, 8), (8, 48, 16, True, 16), (8, 36, 36, True, None),
                                                        (8, 1040, -1, False, 16),
                                                        (4, 128, 32, False, 32), (4, 128, 128, True, 32), (4, 192, 64, True, 32), (4, 256, -1, True, 32), (4, 40, 40, False, 8), (4, 36, 36, False, None), (4, 2048, 128, True, 32)])
@pytest.mark.parametrize("rows", [1, 3, 7, 40])
def test_product_matches_an_independent_reference_on_every_shape(bits, k, group, sym, act_group, rows):
    # 37 outputs (not a multiple of 16), widths that are no multiple of 32, ones (36) that keep fp32
    # inputs, and ones (1040, 2048) whose weights the kernel reads in K blocks when the rows are many.
    g = torch.Generator().manual_seed(k + group + rows)
    w = torch.randn(37, k, generator=g) * 0.05
    layer = QuantLinear.from_float(w, QuantSpec(bits=bits, group_size=-1 if group in (k, -1) else group, sym=sym), torch.randn(37, generator=g))
    assert layer.act_group == act_group
    x = torch.randn(2, rows, k, generator=g)
    x_used = x.reshape(-1, k).double().numpy() if act_group is None else _quantized_input(x, act_group)
    want = torch.from_numpy(x_used @ layer.dequantize().double().numpy().T).float().view(2, rows, 37) + layer.bias
    got = layer(x)
    assert got.shape == (2, rows, 37)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # With fp32 inputs it is the product with the dequantized weight.
    torch.testing.assert_close(exact_activations(layer)(x), x @ layer.dequantize().T + layer.bias, rtol=1e-5, atol=1e-5)
    # The stored integers reproduce the weight within half a step of each group.
    step = layer.scales.repeat_interleave(layer.group, dim=1)
    assert bool(((layer.dequantize() - w).abs() <= step * 0.5 + 1e-6).all()) or not sym


def test_a_row_gives_the_same_bits_alone_batched_and_on_any_thread_count():
    g = torch.Generator().manual_seed(5)
    for spec, k in ((QuantSpec(bits=8), 256), (QuantSpec(bits=4, group_size=64), 256), (QuantSpec(bits=8, sym=False), 1536), (QuantSpec(bits=4, group_size=128), 2048)):
        layer = QuantLinear.from_float(torch.randn(300, k, generator=g) * 0.05, spec)
        x = torch.randn(41, k, generator=g)
        batched = layer(x)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            for i in (0, 17, 40):
                assert torch.equal(layer(x[i : i + 1])[0], batched[i])
                assert torch.equal(layer(x[i : i + 5])[0], batched[i])
        finally:
            torch.set_num_threads(threads)


def test_fallback_path_gives_the_same_products(monkeypatch):
    w = torch.randn(70, 128) * 0.02
    x = torch.randn(3, 128)
    outs = []
    for use_kernels in (True, False):
        monkeypatch.setattr(kernels, "available", lambda use=use_kernels: use)
        outs += [QuantLinear.from_float(w, QuantSpec(bits=4, group_size=32))(x), QuantLinear.from_float(w, QuantSpec(bits=8))(x)]
    torch.testing.assert_close(outs[0], outs[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[1], outs[3], rtol=1e-5, atol=1e-6)


def test_compiled_kernels_build_and_pass_their_probe():
    assert kernels.available(), "the CPU kernels should build on this machine (a compiler is part of the dev image)"


def test_int8_layer_is_within_its_rounding_bound_of_fp32():
    # Stated tolerance: rounding the weights moves each product by at most sum_k |x_k| * scale_n / 2, and
    # rounding the inputs by at most sum over input groups of (the group's scale / 2) * sum_k |w_nk|.
    g = torch.Generator().manual_seed(3)
    w, x = torch.randn(50, 256, generator=g), torch.randn(4, 256, generator=g)
    layer = QuantLinear.from_float(w, QuantSpec(bits=8))
    xg = x.view(4, -1, layer.act_group)
    input_step = (xg.abs().amax(-1) / 127).repeat_interleave(layer.act_group, dim=1)  # (4, 256)
    bound = x.abs().sum(1, keepdim=True) * layer.scales[:, 0][None] * 0.5 + input_step @ layer.dequantize().abs().T * 0.5 + 1e-4
    err = (layer(x) - x @ w.T).abs()
    assert bool((err <= bound).all())
    assert float(err.max()) > 0.05 * float(bound.min())  # the bound is not vacuous


# ----------------------------------------------------------------------------- the GPTQ layout


def _reference_pack(ints: np.ndarray, zeros: np.ndarray, scales: np.ndarray, g_idx: np.ndarray, bits: int) -> dict[str, torch.Tensor]:
    """The GPTQ (v1) tensors, built one integer at a time from the format's description (independent of falconlm)."""
    n, k = ints.shape
    per, mask = 32 // bits, 2**bits - 1
    qweight = np.zeros((k // per, n), dtype=np.uint64)
    for col in range(k):
        qweight[col // per] |= ints[:, col].astype(np.uint64) << np.uint64(bits * (col % per))
    qzeros = np.zeros((zeros.shape[0], n // per), dtype=np.uint64)
    for row in range(n):
        qzeros[:, row // per] |= ((zeros[:, row] - 1) & mask).astype(np.uint64) << np.uint64(bits * (row % per))
    as_i32 = lambda a: torch.from_numpy(a.astype(np.uint32).view(np.int32))
    return {"qweight": as_i32(qweight), "qzeros": as_i32(qzeros), "scales": torch.from_numpy(scales.astype(np.float16)), "g_idx": torch.from_numpy(g_idx.astype(np.int32))}


def _gptq_checkpoint(src: Path, out: Path, bits: int, group: int, sym: bool, act_order: bool, seed: int) -> FalconForCausalLM:
    """Write a GPTQ checkpoint of random integers beside `src`'s other tensors; return the fp32 model of its dequantized weights."""
    rng = np.random.default_rng(seed)
    tensors = load_file(str(src / "model.safetensors"))
    reference = FalconForCausalLM.from_pretrained(src)
    state = reference.state_dict()
    for key in list(tensors):
        module = key.rpartition(".")[0]
        if not key.endswith(".weight") or not module.endswith(BLOCK_LINEARS):
            continue
        n, k = tensors.pop(key).shape
        groups = k // group
        ints = rng.integers(0, 2**bits, size=(n, k))
        zeros = np.full((groups, n), 2 ** (bits - 1)) if sym else rng.integers(1, 2**bits, size=(groups, n))
        scales = (rng.random((groups, n)) * 0.02 + 0.001).astype(np.float16).astype(np.float32)
        g_idx = rng.permutation(np.arange(k) // group) if act_order else np.arange(k) // group
        tensors.update({f"{module}.{s}": t for s, t in _reference_pack(ints, zeros, scales, g_idx, bits).items()})
        state[key].copy_(torch.from_numpy(scales[g_idx].T * (ints - zeros[g_idx].T)).float())
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": bits, "group_size": group, "sym": sym, "desc_act": act_order}
    (out / "config.json").write_text(json.dumps(config))
    return reference


@pytest.mark.parametrize("bits,group,sym,act_order", [(4, 32, True, False), (4, 64, False, True), (8, 32, False, False), (8, 64, True, True)])
def test_a_gptq_checkpoint_gives_the_logits_of_its_dequantized_weights(tiny_ckpt, tmp_path, bits, group, sym, act_order):
    reference = _gptq_checkpoint(tiny_ckpt, tmp_path / "gptq", bits, group, sym, act_order, seed=bits + group)
    model = exact_activations(FalconForCausalLM.from_pretrained(tmp_path / "gptq"))  # fp32 inputs: the weights alone are compared
    assert isinstance(model.transformer.h[0].mlp.dense_h_to_4h, QuantLinear)
    ids = torch.randint(0, model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(bits + group))  # not the global stream: the same ids whatever ran before
    with torch.no_grad():
        want = reference(ids)
    # fp32 rounding of the zero-point factoring s*(x.q) - s*z*sum(x) scales with the logits' magnitude.
    torch.testing.assert_close(model(ids), want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    # Ours writes the same tensors back.
    tensors = load_file(str(tmp_path / "gptq" / "model.safetensors"))
    spec = QuantSpec.from_config(json.loads((tmp_path / "gptq" / "config.json").read_text())["quantization_config"])
    name = "transformer.h.1.mlp.dense_4h_to_h"
    layer = model.get_submodule(name)
    for key, tensor in to_gptq(layer, spec).items():
        assert torch.equal(tensor, tensors[f"{name}.{key}"]), key


def test_to_and_from_gptq_round_trip_exactly():
    for spec in (QuantSpec(bits=4, group_size=32, sym=False), QuantSpec(bits=8, group_size=-1), QuantSpec(bits=4, group_size=64, checkpoint_format="gptq_v2", sym=False)):
        layer = QuantLinear.from_float(torch.randn(48, 128), spec, torch.randn(48).half().float())
        again = from_gptq(to_gptq(layer, spec), spec, 128, 48, "layer")
        assert torch.equal(again.values(), layer.values()) and torch.equal(again.scales, layer.scales) and torch.equal(again.zeros, layer.zeros)


@pytest.mark.parametrize("spec", [QuantSpec(bits=8), QuantSpec(bits=4, group_size=32, sym=False), QuantSpec(bits=8, group_size=32, lm_head=True)])
def test_a_quantized_model_saves_and_loads_to_identical_logits(tiny_ckpt, tmp_path, spec):
    model = quantize_model(FalconForCausalLM.from_pretrained(tiny_ckpt), spec)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    model.save_pretrained(tmp_path / "q")
    again = FalconForCausalLM.from_pretrained(tmp_path / "q")
    assert torch.equal(model(ids), again(ids))
    assert json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["bits"] == spec.bits


# ----------------------------------------------------------------------------- bad checkpoints


def _edit_config(src: Path, out: Path, block: dict) -> Path:
    shutil.copytree(src, out)
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = block
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("block,needle", [
    ({"quant_method": "gptq", "bits": 3, "group_size": 32}, "3-bit"),
    ({"quant_method": "awq", "bits": 4, "group_size": 32}, "awq"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 32, "checkpoint_format": "marlin"}, "marlin"),
])
def test_unsupported_quantization_configs_are_one_sentence(tiny_ckpt, tmp_path, block, needle):
    path = _edit_config(tiny_ckpt, tmp_path / "bad", block)
    with pytest.raises(FalconError, match=needle) as err:
        FalconForCausalLM.from_pretrained(path)
    assert "\n" not in str(err.value)


def test_wrong_shape_or_missing_scales_are_named(tiny_ckpt, tmp_path):
    _gptq_checkpoint(tiny_ckpt, tmp_path / "good", 4, 32, True, False, seed=0)
    tensors = load_file(str(tmp_path / "good" / "model.safetensors"))
    for mutate, needle in ((lambda t: t.pop("transformer.h.0.mlp.dense_h_to_4h.scales"), "scales"),
                           (lambda t: t.__setitem__("transformer.h.0.self_attention.dense.qweight", torch.zeros(3, 5, dtype=torch.int32)), "qweight has shape")):
        bad = tmp_path / f"bad-{needle.split()[0]}"
        shutil.copytree(tmp_path / "good", bad)
        broken = dict(tensors)
        mutate(broken)
        save_file(broken, str(bad / "model.safetensors"))
        with pytest.raises(FalconError, match=needle):
            FalconForCausalLM.from_pretrained(bad)


def test_quantize_refuses_an_existing_out_and_leaves_nothing_when_interrupted(tiny_ckpt, tmp_path, monkeypatch):
    (tmp_path / "exists").mkdir()
    with pytest.raises(FalconError, match="already exists"):
        quantize_checkpoint(tiny_ckpt, tmp_path / "exists", QuantSpec(bits=8), progress=False)
    import falconlm.quant.quantize as Q

    calls = []

    def interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    real = Q.to_gptq
    monkeypatch.setattr(Q, "to_gptq", interrupt)
    with pytest.raises(KeyboardInterrupt):
        quantize_checkpoint(tiny_ckpt, tmp_path / "out", QuantSpec(bits=8), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_a_group_size_that_does_not_divide_the_width_is_refused_with_alternatives(tiny_ckpt, tmp_path):
    with pytest.raises(FalconError, match="use 64 or 32"):
        quantize_checkpoint(tiny_ckpt, tmp_path / "q", QuantSpec(bits=4, group_size=128), progress=False)
    # At load time --quantize int4 picks the largest group that fits instead.
    model = FalconForCausalLM.from_pretrained(tiny_ckpt, quantize="int4")
    assert model.transformer.h[0].self_attention.dense.group == 64


# ----------------------------------------------------------------------------- quality


def test_quality_on_a_trained_model(trained_ckpt, heldout, tmp_path):
    base = perplexity(FalconForCausalLM.from_pretrained(trained_ckpt), heldout)
    int8 = perplexity(FalconForCausalLM.from_pretrained(trained_ckpt, quantize="int8"), heldout)
    assert int8 <= base * 1.005, (base, int8)
    windows = markov_tokens(64, 64, seed=7)
    results = {}
    for method in ("rtn", "gptq"):
        spec = QuantSpec(bits=4, group_size=128, method=method)
        report = quantize_checkpoint(trained_ckpt, tmp_path / method, spec, windows=windows if method == "gptq" else None, progress=False)
        results[method] = perplexity(FalconForCausalLM.from_pretrained(tmp_path / method), heldout)
        if method == "gptq":
            assert len(report.layers) == 8 and all(0 < e.relative < 0.2 for e in report.layers)
    assert results["gptq"] <= base * 1.03, (base, results)
    assert results["gptq"] <= results["rtn"] * 1.002, results


def test_gptq_lowers_the_hessian_weighted_error_of_every_layer_shape():
    g = torch.Generator().manual_seed(0)
    for n, k, spec in ((64, 128, QuantSpec(bits=4, group_size=32)), (96, 128, QuantSpec(bits=4, group_size=-1, desc_act=True, sym=False)), (32, 256, QuantSpec(bits=8, group_size=128))):
        mix = torch.randn(k, k, generator=g) / k**0.5  # correlated inputs, where error compensation pays
        acc = HessianAccumulator(k)
        acc.add(torch.randn(512, k, generator=g) @ mix)
        w = torch.randn(n, k, generator=g)
        gptq, _ = gptq_quantize(w, acc.h, spec.replace(method="gptq"))
        rtn = QuantLinear.from_float(w, spec)
        assert hessian_error(w, gptq, acc.h) < hessian_error(w, rtn, acc.h)


# ----------------------------------------------------------------------------- every inference path


def test_every_command_takes_a_quantized_checkpoint(tiny_ckpt, tmp_path, capsys):
    from falconlm.cli import main

    out = tmp_path / "q8"
    assert main(["quantize", str(tiny_ckpt), "--out", str(out), "--bits", "8", "--group-size", "32"]) == 0
    assert "quantized to int8 g32" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
    assert "quantized: int8 g32 sym RTN" in capsys.readouterr().out
    assert main(["generate", str(out), "--prompt", "hello", "--max-new-tokens", "4"]) == 0
    quantized_text = capsys.readouterr().out
    assert main(["generate", str(tiny_ckpt), "--prompt", "hello", "--max-new-tokens", "4", "--quantize", "int8"]) == 0
    assert capsys.readouterr().out.strip()
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": "the falcon flies over the desert " * 3}) for _ in range(3)))
    assert main(["evaluate", str(out), "--data", str(data), "--out", str(tmp_path / "eval.json")]) == 0
    assert quantized_text.strip()


def test_gptq_through_the_cli_on_jsonl_calibration(tiny_ckpt, tmp_path, capsys):
    from falconlm.cli import main

    calib = tmp_path / "calib.jsonl"
    calib.write_text("\n".join(json.dumps({"text": f"the falcon number {i} flies over the desert and the sea"}) for i in range(60)))
    out = tmp_path / "g"
    assert main(["quantize", str(tiny_ckpt), "--out", str(out), "--bits", "4", "--group-size", "32", "--method", "gptq", "--calibration", str(calib), "--samples", "8", "--seq-len", "32"]) == 0
    text = capsys.readouterr().out
    assert "relative output error" in text and "dense_4h_to_h" in text
    model = FalconForCausalLM.from_pretrained(out)
    assert model.transformer.h[0].mlp.dense_4h_to_h.bits == 4


def test_the_engine_serves_a_quantized_model_like_generate(tiny_ckpt):
    from falconlm.decoding.generate import generate

    model = FalconForCausalLM.from_pretrained(tiny_ckpt, quantize="int4")
    prompts = torch.randint(0, model.config.vocab_size, (3, 6))
    alone = [generate(model, p[None], max_new_tokens=5, do_sample=False, eos_token_id=[])[0, 6:] for p in prompts]
    batched = generate(model, prompts, max_new_tokens=5, do_sample=False, eos_token_id=[])[:, 6:]
    for a, b in zip(alone, batched):
        assert torch.equal(a, b)


def test_unusable_calibration_records_are_counted_and_refused(tiny_ckpt, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('not json\n{"text": 5}\n')
    with pytest.raises(FalconError, match="malformed_json \\(line 1\\)"):
        quantize_checkpoint(tiny_ckpt, tmp_path / "q", QuantSpec(bits=4, group_size=32, method="gptq"), [str(bad)], progress=False)
    assert not (tmp_path / "q").exists()
