"""One training step (forward, loss, backward, AdamW) of falconlm vs transformers' FalconForCausalLM.

Same config, same initial weights, same batch, same precision, measured in the same run with the
steps of the two implementations interleaved (so machine noise hits both alike). Reports tokens/s
of each, the ratio, peak memory (each side measured in its own child process on CPU) and MFU
against this machine's measured matmul peak. Results go to benchmarks/results/bench_train.json.

    python benchmarks/bench_train.py            # bench-7b preset (12 layers, d=768, vocab 65024), batch 1 x 512
    python benchmarks/bench_train.py --quick    # smoke run on a small config
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from falconlm.atomic import atomic_write_json


def build(preset: str, layers: int | None, dtype: torch.dtype, seed: int = 0):
    """Our model, the transformers model with the same weights, both in train mode."""
    import transformers

    from falconlm.model.config import FalconConfig
    from falconlm.model.falcon import build_model

    overrides = {"num_hidden_layers": layers} if layers else {}
    cfg = FalconConfig.from_preset(preset, **overrides)
    ours = build_model(cfg, dtype=dtype, seed=seed)
    hcfg = transformers.FalconConfig(**{k: v for k, v in cfg.to_dict().items() if k != "architectures"})
    hcfg._attn_implementation = "sdpa"
    peer = transformers.FalconForCausalLM(hcfg).to(dtype)
    missing, unexpected = peer.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("lm_head" in m for m in missing), (missing, unexpected)
    return cfg, ours.train(), peer.train()


def step_fns(ours, peer, batch: torch.Tensor, precision: str, peer_optim: str = "fused", compile_ours: bool = False, compile_peer: bool = False):
    """The two training steps as the two libraries are used for pretraining."""
    from falconlm.train.config import TrainConfig
    from falconlm.train.loss import linear_cross_entropy
    from falconlm.train.optim import build_optimizer

    tcfg = TrainConfig(data="x", max_steps=1, lr=1e-4)
    opt_ours = build_optimizer(ours, tcfg)  # the pretrain loop's optimizer: AdamW, decay groups, fused kernel
    # transformers' Trainer default optimizer: "adamw_torch_fused" for torch >= 2.8 (else "adamw_torch", the for-loop kernel)
    kernel = {"fused": {"fused": True}, "foreach": {"foreach": True}, "forloop": {"foreach": False}}[peer_optim]
    opt_peer = torch.optim.AdamW(peer.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, **kernel)
    autocast = precision == "bf16-mixed"
    inputs, targets = batch[:, :-1], batch[:, 1:]
    # As `pretrain --compile` does: the training forward (model up to the final hidden states) compiled.
    ours_hidden = (torch.compile(ours.hidden_states) if compile_ours else ours.hidden_states) if hasattr(ours, "hidden_states") else None
    peer_forward = torch.compile(peer) if compile_peer else peer

    def ours_step() -> float:
        # What the pretrain loop runs: hidden states, then the LM head fused with the loss (incl. Falcon's z-loss).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            hidden = ours_hidden(inputs)
        loss, _ = linear_cross_entropy(hidden, ours.lm_head.weight, targets, 1e-4, compute_dtype=torch.bfloat16 if autocast else None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        return float(loss.detach())

    def peer_step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = peer_forward(input_ids=inputs, labels=batch[:, :-1])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(peer.parameters(), 1.0)
        opt_peer.step()
        opt_peer.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    return ours_step, peer_step


def _memory_child(which: str, args: dict, q) -> None:
    """Run a few steps of one implementation alone (the other is never built) and report its peak resident memory."""
    import transformers

    from falconlm.model.config import FalconConfig
    from falconlm.model.falcon import build_model

    dtype = torch.bfloat16 if args["precision"] == "bf16-true" else torch.float32
    overrides = {"num_hidden_layers": args["layers"]} if args["layers"] else {}
    cfg = FalconConfig.from_preset(args["preset"], **overrides)
    batch = torch.randint(0, cfg.vocab_size, (args["batch"], args["seq_len"] + 1))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if which == "ours":
        model = build_model(cfg, dtype=dtype, seed=0).train()
        other = model
    else:
        hcfg = transformers.FalconConfig(**{k: v for k, v in cfg.to_dict().items() if k != "architectures"})
        hcfg._attn_implementation = "sdpa"
        model = transformers.FalconForCausalLM(hcfg).to(dtype).train()
        other = model
    fo, fp = step_fns(model, other, batch, args["precision"], args["peer_optim"])
    step = fo if which == "ours" else fp
    for _ in range(2):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    q.put((which, base / 1024, peak / 1024))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="bench-7b")
    ap.add_argument("--layers", type=int, default=None, help="override the number of layers")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per implementation")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed", "bf16-true"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--peer-optim", default="fused", choices=["fused", "foreach", "forloop"],
                    help="transformers side's AdamW kernel (fused = Trainer's default on torch >= 2.8)")
    ap.add_argument("--compile", action="store_true", help="torch.compile our training forward (as pretrain --compile)")
    ap.add_argument("--compile-peer", action="store_true", help="torch.compile the transformers model too")
    ap.add_argument("--quick", action="store_true", help="small config, few steps: a smoke run")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_train.json"))
    args = ap.parse_args()
    if args.quick:
        args.preset, args.layers, args.seq_len, args.steps = "bench-7b", 2, 128, 3
    if args.threads:
        torch.set_num_threads(args.threads)

    from falconlm.train.metrics import flops_per_token, measure_peak_flops

    # Peak memory first, each side alone in a fresh process: a child's ru_maxrss starts at its parent's
    # RSS at fork time, so the parent must not hold the big models yet.
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    mem = {}
    margs = {"preset": args.preset, "layers": args.layers, "batch": args.batch, "seq_len": args.seq_len, "precision": args.precision,
             "peer_optim": args.peer_optim}
    for which in ("ours", "peer"):
        p = ctx.Process(target=_memory_child, args=(which, margs, q))
        p.start()
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"the {which} memory probe failed (exit code {p.exitcode})")
        w, base, pk = q.get()
        mem["falconlm" if w == "ours" else "transformers"] = {"baseline_mib": round(base), "peak_rss_mib": round(pk)}

    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.precision == "bf16-true" else torch.float32
    cfg, ours, peer = build(args.preset, args.layers, dtype)
    batch = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1))
    ours_step, peer_step = step_fns(ours, peer, batch, args.precision, args.peer_optim, args.compile, args.compile_peer)
    l_ours, l_peer = ours_step(), peer_step()  # warm-up (and compilation); same weights and batch -> same loss up to z-loss
    ours_step(), peer_step()
    times: dict[str, list[float]] = {"falconlm": [], "transformers": []}
    cpu: dict[str, list[float]] = {"falconlm": [], "transformers": []}
    for _ in range(args.steps):
        for name, fn in (("falconlm", ours_step), ("transformers", peer_step)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    tokens = args.batch * args.seq_len
    # Best-of-N wall time (as timeit does): other jobs on a shared machine only ever add time.
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu_best = {k: min(v) for k, v in cpu.items()}
    tps = {k: tokens / v for k, v in best.items()}
    peak_dtype = torch.float32 if args.precision == "fp32" else torch.bfloat16
    peak = measure_peak_flops(torch.device("cpu"), peak_dtype)
    fpt = flops_per_token(cfg, args.seq_len)
    mfu = {k: fpt * v / peak for k, v in tps.items()}

    ratio = tps["falconlm"] / tps["transformers"]
    result = {
        "benchmark": "train_step",
        "config": {"preset": args.preset, "layers": cfg.num_hidden_layers, "params": cfg.num_parameters(), "batch": args.batch,
                   "seq_len": args.seq_len, "precision": args.precision, "steps": args.steps, "peer_optim": args.peer_optim,
                   "compile_ours": args.compile, "compile_peer": args.compile_peer},
        "first_step_loss": {"falconlm (ce + z-loss)": l_ours, "transformers (ce)": l_peer},
        "best_step_s": best,
        "median_step_s": med,
        "cpu_s_per_step_best": cpu_best,
        "ratio_by_median_wall": med["transformers"] / med["falconlm"],
        "ratio_by_cpu_time": cpu_best["transformers"] / cpu_best["falconlm"],
        "tokens_per_s": tps,
        "ratio_falconlm_over_transformers": ratio,
        "mfu": mfu,
        "measured_peak_flops": peak,
        "flops_per_token": fpt,
        "peak_memory": mem,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "note": "shared 2-core machine; timings are noisy, the ratio is what counts"},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
    }
    print(f"config {args.preset} ({cfg.num_parameters() / 1e6:.1f} M params, {cfg.num_hidden_layers} layers), batch {args.batch} x {args.seq_len}, {args.precision}")
    for k in ("falconlm", "transformers"):
        print(f"  {k:<13} {tps[k]:>9,.0f} tokens/s  best step {best[k] * 1e3:7.1f} ms (median {med[k] * 1e3:7.1f}, cpu {cpu_best[k] * 1e3:7.1f})  "
              f"MFU {mfu[k] * 100:5.1f}%  peak RSS {mem[k]['peak_rss_mib']:,} MiB")
    print(f"  ratio falconlm / transformers: {ratio:.2f}x best-of-{args.steps} wall, {result['ratio_by_median_wall']:.2f}x median wall, "
          f"{result['ratio_by_cpu_time']:.2f}x cpu time   (matmul peak {peak / 1e9:.1f} GFLOP/s)")
    out = Path(args.out if not args.quick else args.out.replace(".json", "_quick.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
