"""CUDA checks in one run: transformers parity on the GPU, the SDPA kernels used, generation and
training throughput against transformers, and `pretrain` under torchrun with NCCL (DDP and FSDP2).

CI has no GPU, so these checks live here rather than in tests/. Every section is independent (a
failure is recorded and the next section runs); results go to --out as JSON, updated after each
section so a run cut short still reports what it finished.

    python benchmarks/gpu_check.py --data out/quickstart/tokens      # on a CUDA machine
    python benchmarks/gpu_check.py --smoke --data out/quickstart/tokens   # tiny sizes on CPU (checks the script)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from falconlm.decoding.generate import generate
from falconlm.model.config import FalconConfig
from falconlm.model.falcon import FalconForCausalLM
from falconlm.model.hf_interop import to_transformers

RESULTS: dict = {}
HBM_BYTES_PER_S = 4.8e12  # NVIDIA H200 SXM peak memory bandwidth


def save(out: Path) -> None:
    out.write_text(json.dumps(RESULTS, indent=2, default=str))


def section(name: str, out: Path):
    """Decorator: run fn, store its dict under name (or the error), print and save."""

    def wrap(fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            print(f"\n=== {name}", flush=True)
            try:
                RESULTS[name] = fn(*args, **kwargs)
            except Exception as exc:  # one broken section must not hide the others
                traceback.print_exc()
                RESULTS[name] = {"error": f"{type(exc).__name__}: {exc}"}
            RESULTS[name + "_seconds"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(RESULTS[name], indent=1, default=str), flush=True)
            save(out)

        return run

    return wrap


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int = 3) -> float:
    """Best wall time of fn() after one warm-up."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def build_on(config: FalconConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> FalconForCausalLM:
    """A random model initialised directly on the device (a 7B fp32 init on the CPU takes minutes)."""
    torch.manual_seed(seed)
    with device:
        model = FalconForCausalLM(config)
    return model.to(dtype).eval()


def hf_twin(ours: FalconForCausalLM, device: torch.device):
    """transformers' model with our weights, built on the device."""
    import transformers

    fields = {k: v for k, v in ours.config.to_dict().items() if k not in ("architectures", "model_type", "torch_dtype")}
    hcfg = transformers.FalconConfig(**fields)
    hcfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        hf = transformers.FalconForCausalLM(hcfg)
    hf = hf.to_empty(device=device).to(ours.dtype)
    result = hf.load_state_dict(ours.state_dict(), strict=False)
    assert not result.unexpected_keys, result
    hf.tie_weights()
    # Buffers (rotary inv_freq) were left empty by to_empty: take them from a fresh rotary module.
    rotary = hf.transformer.rotary_emb
    fresh = type(rotary)(config=hcfg)
    for name, buf in fresh.named_buffers():
        setattr(rotary, name, buf.to(device))
    return hf.eval()


def parity(device: torch.device, smoke: bool) -> dict:
    """Logits of ours vs transformers on the device for every block style, fp32 and bf16; greedy equality."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = {}
    for preset in ("tiny-7b", "tiny-40b", "tiny-rw"):
        cfg = FalconConfig.from_preset(preset, vocab_size=512, hidden_size=128, num_hidden_layers=3, num_attention_heads=8)
        torch.manual_seed(0)
        ours32 = FalconForCausalLM(cfg).eval()
        hf32 = to_transformers(ours32).to(device)
        ours32 = ours32.to(device)
        ids = torch.randint(0, cfg.vocab_size, (2, 96), device=device)
        with torch.inference_mode():
            ref = hf32(ids).logits.float()
            d32 = (ours32(ids).float() - ref).abs().max().item()
            # Module.to is in place: the bf16 pair is built from copies, leaving the fp32 pair intact.
            ours16 = copy.deepcopy(ours32).to(torch.bfloat16)
            hf16 = copy.deepcopy(hf32).to(torch.bfloat16)
            e_ours = (ours16(ids).float() - ref).abs().max().item()
            e_hf = (hf16(ids).logits.float() - ref).abs().max().item()
        prompt = ids[:, :16]
        mask = torch.ones_like(prompt)
        mask[1, :5] = 0  # left-padded second row
        g_ours = generate(ours32, prompt, attention_mask=mask, max_new_tokens=24, eos_token_id=[], screen_head=False)
        g_hf = hf32.generate(prompt, attention_mask=mask, max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=0)
        results[preset] = {
            "fp32_max_abs_diff_vs_hf": d32,
            "bf16_max_err_vs_fp32_ours": e_ours,
            "bf16_max_err_vs_fp32_hf": e_hf,
            "greedy_equal_fp32_left_padded": bool(torch.equal(g_ours, g_hf)),
        }
    return results


def kernels(device: torch.device, smoke: bool) -> dict:
    """Which attention kernels our model launches for prefill and decode (bf16, falcon-7b and -40b heads)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = {}
    for preset in ("falcon-7b", "falcon-40b"):
        cfg = FalconConfig.from_preset(preset, num_hidden_layers=2, vocab_size=1024)
        if smoke:
            cfg = FalconConfig.from_preset(preset, num_hidden_layers=1, vocab_size=1024, hidden_size=256, num_attention_heads=8)
        model = build_on(cfg, device, dtype)
        ids = torch.randint(0, 1024, (1, 1024), device=device)
        found = {}
        for phase in ("prefill", "decode"):
            with torch.inference_mode():
                cache = model.new_cache(1, 1100)
                model.hidden_states(ids, cache=cache)
                sync(device)
                with profile(activities=activities) as prof:
                    if phase == "prefill":
                        model.hidden_states(ids)
                    else:
                        pos = torch.tensor([[1024]], device=device)
                        model.hidden_states(ids[:, :1], position_ids=pos, cache=cache)
                    sync(device)
            names = {e.key for e in prof.key_averages()}
            found[phase] = sorted(n[:90] for n in names if any(s in n.lower() for s in ("flash", "fmha", "attention", "efficient", "sdpa", "softmax")))
        out[preset] = found
        del model
    return out


def generation(device: torch.device, smoke: bool) -> dict:
    """Prefill and greedy decode, ours vs transformers, same weights (falcon-7b shape, bf16)."""
    preset, layers = ("tiny-7b", None) if smoke else ("falcon-7b", None)
    cfg = FalconConfig.from_preset(preset) if layers is None else FalconConfig.from_preset(preset, num_hidden_layers=layers)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ours = build_on(cfg, device, dtype)
    hf = hf_twin(ours, device)
    new = 16 if smoke else 128
    plen = 32 if smoke else 2048
    res = {"model": f"{preset} ({cfg.num_parameters() / 1e9:.2f} B params, {dtype})", "new_tokens": new}
    with torch.inference_mode():
        ids = torch.randint(0, cfg.vocab_size, (1, plen), device=device)
        a = ours(ids, logits_to_keep=1).float()
        b = (hf(ids, logits_to_keep=1).logits.float())
        res["prefill_last_logits_max_abs_diff"] = (a - b).abs().max().item()
        t_ours = timed(lambda: ours(ids, logits_to_keep=1), device)
        t_hf = timed(lambda: hf(ids, logits_to_keep=1), device)
        res[f"prefill_1x{plen}_tok_s"] = {"ours": plen / t_ours, "transformers": plen / t_hf, "ratio": t_hf / t_ours}
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    for batch in (1, 16):
        prompt = torch.randint(0, cfg.vocab_size, (batch, 128 if not smoke else 16), device=device)

        def run_ours(mode: str = "auto"):
            return generate(ours, prompt, max_new_tokens=new, eos_token_id=[], step_mode=mode)

        def run_hf():
            return hf.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)

        t_eager = timed(lambda: run_ours("eager"), device, repeats=2)
        t_graph = timed(lambda: run_ours("graph"), device, repeats=2)
        t_h = timed(run_hf, device, repeats=2)
        entry = {
            "ours_graph": batch * new / t_graph,
            "ours_eager": batch * new / t_eager,
            "transformers": batch * new / t_h,
            "ratio_graph_vs_transformers": t_h / t_graph,
            "graph_tokens_equal_eager": torch.equal(run_ours("graph"), run_ours("eager")),
            "greedy_equal_transformers": torch.equal(run_ours(), run_hf()) if batch == 1 else None,
        }
        if device.type == "cuda":
            # Batch-1 decode reads every weight once per token: tokens/s x bytes over the HBM peak.
            entry["fraction_of_hbm_bandwidth"] = weight_bytes * entry["ours_graph"] / batch / HBM_BYTES_PER_S
        res[f"decode_b{batch}_tok_s"] = entry
    res["engine_16_requests"] = _engine_throughput(ours, cfg, device, new)
    if device.type == "cuda":
        res["weights_gb"] = sum(p.numel() * p.element_size() for p in ours.parameters()) / 1e9
    del ours, hf
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def _engine_throughput(model: FalconForCausalLM, cfg: FalconConfig, device: torch.device, new: int) -> dict:
    """16 greedy requests through the continuous-batching engine, eager steps vs CUDA-graph steps (same tokens)."""
    from falconlm.decoding.engine import Engine, Sequence
    from falconlm.decoding.settings import GenerationConfig

    prompts = [torch.randint(12, cfg.vocab_size, (int(n),)).tolist() for n in torch.randint(8, 128, (16,))]
    out = {}
    for mode in ("eager", "graph"):
        engine = Engine(model, tokenizer=None, max_batch_size=16, max_length=512, start=False, step_mode=mode)
        engine.decode = lambda ids: ""  # no tokenizer: text is not needed to time decoding
        seqs = [Sequence(p, GenerationConfig(max_new_tokens=new, ignore_eos=True, screen_head=False)) for p in prompts]
        sync(device)
        t0 = time.perf_counter()
        engine.submit(seqs)
        while not all(s.done.is_set() for s in seqs):
            engine.step()
        sync(device)
        out[mode] = {"tok_s": 16 * new / (time.perf_counter() - t0), "tokens": [s.generated for s in seqs]}
    return {
        "eager_tok_s": out["eager"]["tok_s"],
        "graph_tok_s": out["graph"]["tok_s"],
        "graph_tokens_equal_eager": out["eager"]["tokens"] == out["graph"]["tokens"],
    }


def training(device: torch.device, smoke: bool) -> dict:
    """One bf16-mixed training step (the pretrain loop's path) vs transformers' forward(labels) + fused AdamW."""
    from falconlm.train.config import TrainConfig
    from falconlm.train.loss import linear_cross_entropy
    from falconlm.train.metrics import flops_per_token, measure_peak_flops
    from falconlm.train.optim import build_optimizer

    preset, layers, batch, seq = ("tiny-7b", 2, 2, 64) if smoke else ("falcon-7b", 8, 4, 2048)
    cfg = FalconConfig.from_preset(preset, num_hidden_layers=layers)
    ours = build_on(cfg, device, torch.float32).train()
    hf = hf_twin(ours, device).train()
    data = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=device)
    inputs, targets = data[:, :-1], data[:, 1:]
    opt_ours = build_optimizer(ours, TrainConfig(data="x", max_steps=1, lr=1e-4))
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    amp = dict(device_type=device.type, dtype=torch.bfloat16)

    def step_ours():
        with torch.autocast(**amp):
            hidden = ours.hidden_states(inputs)
        loss, _ = linear_cross_entropy(hidden, ours.lm_head.weight, targets, 1e-4, compute_dtype=torch.bfloat16)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_hf():
        with torch.autocast(**amp):
            out = hf(input_ids=inputs, labels=inputs)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_o = timed(step_ours, device, repeats=4)
    mem_o = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_h = timed(step_hf, device, repeats=4)
    mem_h = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
    tokens = batch * seq
    peak = measure_peak_flops(device, torch.bfloat16)
    fpt = flops_per_token(cfg, seq)
    return {
        "model": f"{preset} x {layers} layers ({cfg.num_parameters() / 1e9:.2f} B params), batch {batch} x {seq}, bf16 autocast",
        "tok_s": {"ours": tokens / t_o, "transformers": tokens / t_h, "ratio": t_h / t_o},
        "mfu": {"ours": fpt * tokens / t_o / peak, "transformers": fpt * tokens / t_h / peak},
        "measured_bf16_peak_tflops": peak / 1e12,
        "peak_mem_gb": {"ours": mem_o, "transformers": mem_h},
    }


def torchrun_pretrain(device: torch.device, smoke: bool, data: str, scratch: Path) -> dict:
    """`falconlm pretrain` under torchrun (NCCL on CUDA): DDP and FSDP2, then the checkpoint loads and generates."""
    res = {}
    nproc = "1"
    steps = "2" if smoke else "30"
    for strategy in ("ddp", "fsdp"):
        out = scratch / f"run-{strategy}"
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "falconlm", "pretrain",
            "--model", "bench-7b", "--data", data, "--out", str(out), "--max-steps", steps, "--seq-len", "256",
            "--global-batch-size", "16", "--micro-batch-size", "8", "--lr", "1e-3", "--warmup-tokens", "2e4",
            "--batch-rampup-tokens", "0", "--log-interval", "10", "--eval-interval", "0", "--save-interval", "0",
            "--strategy", strategy,
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        entry = {"rc": proc.returncode, "seconds": round(time.perf_counter() - t0, 1), "tail": (proc.stdout + proc.stderr)[-1500:]}
        metrics = out / "metrics.jsonl"
        if metrics.is_file():
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            entry["losses"] = [round(r["loss"], 4) for r in rows]
            entry["tokens_per_s"] = [round(r["tokens_per_s"]) for r in rows]
        ckpts = sorted((out / "checkpoints").glob("step-*"))
        if ckpts:
            model = FalconForCausalLM.from_pretrained(ckpts[-1], device=device)
            ids = torch.tensor([[1, 2, 3, 4]], device=device)
            entry["checkpoint_generates"] = generate(model, ids, max_new_tokens=8, eos_token_id=[]).shape[1] == 12
        res[strategy] = entry
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="token-shard directory (falconlm tokenize) for the torchrun section")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks this script, not the GPU")
    ap.add_argument("--out", default="benchmarks/results/gpu_check.json")
    ap.add_argument("--scratch", default="/tmp/gpu_check")
    ap.add_argument("--only", default="", help="comma-separated sections to run")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    RESULTS["env"] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }
    only = set(filter(None, args.only.split(",")))
    plan = [
        ("parity", lambda: parity(device, args.smoke)),
        ("kernels", lambda: kernels(device, args.smoke)),
        ("torchrun_pretrain", lambda: torchrun_pretrain(device, args.smoke, args.data, scratch)),
        ("training", lambda: training(device, args.smoke)),
        ("generation", lambda: generation(device, args.smoke)),
    ]
    for name, fn in plan:
        if not only or name in only:
            section(name, out)(fn)()
    print(f"\nwrote {out}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
