"""Tensor parallelism, 1 rank vs 2: prefill and decode tok/s, host memory per rank, and the two ways to express the plan.

On CPU with gloo, on the same cores, 2 ranks cannot be faster than 1: each rank does half the
arithmetic but the ranks share the cores (2 on the dev machine) and add an all-reduce per layer.
On CPU this is a correctness and overhead check, not a speed-up. With two or more CUDA devices the
same run uses NCCL; with one or none it says so and skips.

Measured in the 2-rank run, the same 40B-style model three ways:
  plan        falconlm.parallel as the commands run it: rank 0 announces each op to the follower,
              plain collectives (one all-reduce per layer), greedy picks by a gathered argmax
  plan-logits the same, with full logits gathered for every pick (`screen_head=False`)
  dtensor     torch.distributed.tensor.parallel: ColwiseParallel / RowwiseParallel(output_layouts=Partial)
              with the block's Partial sum redistributed once, run SPMD on both ranks (no announcing)
and the cost of one announcement (a ping op) and of each pick (argmax gather vs full logits gather).

    python benchmarks/bench_tp.py            # bench-40b shape (a few minutes on 2 cores)
    python benchmarks/bench_tp.py --quick    # smoke run

Writes benchmarks/results/bench_tp.json with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

QUICK = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_kv_heads=4, vocab_size=8192)


def rss() -> dict[str, int]:
    """Resident bytes of this process: in all (VmRSS), private (RssAnon) and file pages it maps (RssFile).

    One process's from_pretrained computes straight from the mapped safetensors file (its weights are
    file pages); a rank copies its slices out (private memory) and reading them touches file pages too.
    """
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) * 1024
    return out


def grown(base: dict[str, int]) -> dict[str, int]:
    """How much each rss() figure grew since `base`."""
    return {k: v - base[k] for k, v in rss().items()}


def timings(model, prompt_len: int, new_tokens: int, repeats: int, **gen) -> dict[str, float]:
    """Best prefill tok/s (batch 1) and decode tok/s (batch 1, greedy) over repeats."""
    from falconlm.decoding.generate import stream_generate

    ids = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    best_prefill = best_decode = float("inf")
    for _ in range(repeats + 1):  # the first run warms up
        t0 = time.perf_counter()
        stream = stream_generate(model, ids, max_new_tokens=new_tokens, ignore_eos=True, **gen)
        next(stream)
        t1 = time.perf_counter()
        for _ in stream:
            pass
        t2 = time.perf_counter()
        best_prefill, best_decode = min(best_prefill, t1 - t0), min(best_decode, t2 - t1)
    return {"prefill_tok_s": prompt_len / best_prefill, "decode_tok_s": (new_tokens - 1) / best_decode}


def dtensor_model(ckpt: str, mesh):
    """The whole checkpoint parallelized with torch.distributed.tensor.parallel (40B style only: whole KV groups are even chunks)."""
    from torch.distributed.tensor import Partial, Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    from falconlm.model.falcon import FalconForCausalLM
    from falconlm.parallel import ShardPlan

    model = FalconForCausalLM.from_pretrained(ckpt).eval()
    c = model.config
    shard = ShardPlan(c, mesh.get_local_rank(), mesh.size())
    plan = {"transformer.word_embeddings": RowwiseParallel(input_layouts=Replicate()), "lm_head": ColwiseParallel(output_layouts=Replicate())}
    for i, layer in enumerate(model.transformer.h):
        p = f"transformer.h.{i}."
        plan |= {p + "self_attention.query_key_value": ColwiseParallel(), p + "mlp.dense_h_to_4h": ColwiseParallel(),
                 p + "self_attention.dense": RowwiseParallel(output_layouts=Partial(), use_local_output=False),
                 p + "mlp.dense_4h_to_h": RowwiseParallel(output_layouts=Partial(), use_local_output=False)}
        attn = layer.self_attention
        attn.num_heads, attn.stored_kv_heads = shard.heads.stop - shard.heads.start, shard.kv_heads
        attn.group = attn.num_heads // attn.stored_kv_heads
        layer.reduce_outputs = lambda out: out.redistribute(placements=[Replicate()]).to_local()  # the one all-reduce
    model.alibi_heads = shard.heads
    return parallelize_module(model, mesh, plan)


def pick_costs(rank, repeats: int) -> dict[str, float]:
    """Milliseconds per pick of batch 1 and 16 (the model's own final hidden states): the gathered argmax vs gathering full logits, and one bare announcement."""
    out = {}
    for b in (1, 16):
        ids = torch.randint(0, rank.model.config.vocab_size, (b, 8), generator=torch.Generator().manual_seed(b))
        with torch.inference_mode():
            hidden = rank.model.hidden_states(ids)[:, -1]
        for op in ("argmax", "logits"):
            rank.call(op, hidden)
            t0 = time.perf_counter()
            for _ in range(repeats):
                rank.call(op, hidden)
            out[f"{op}_b{b}_ms"] = (time.perf_counter() - t0) / repeats * 1e3
    rank.call("ping")
    t0 = time.perf_counter()
    for _ in range(repeats):
        rank.call("ping")
    out["announce_ms"] = (time.perf_counter() - t0) / repeats * 1e3
    return out


def worker(args: argparse.Namespace) -> None:
    """One rank of the 2-rank run (under torchrun)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from falconlm.decoding.generate import generate
    from falconlm.parallel import load_rank
    from falconlm.train.distributed import close_distributed, init_distributed

    env = init_distributed("cuda" if args.backend == "nccl" else "cpu")
    base = rss()
    rank = load_rank(args.ckpt, env)
    loaded = grown(base)
    result: dict = {}
    if env.rank == 0:
        driver = rank.drive()
        result["plan"] = timings(rank.model, args.prompt, args.new, args.repeats)
        result["plan-logits"] = timings(rank.model, args.prompt, args.new, args.repeats, screen_head=False)
        result["picks"] = pick_costs(rank, 20 if args.quick else 100)
        ids = torch.randint(0, rank.model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
        plan_tokens = generate(rank.model, ids, max_new_tokens=8, screen_head=False, ignore_eos=True)
        plan_logits = rank.model(ids)
        driver.close()
    else:
        rank.follow()
    memory = [None] * env.world
    dist.all_gather_object(memory, {"after_load": loaded, "after_run": grown(base)})
    del rank
    mesh = init_device_mesh(env.device.type, (env.world,))
    model = dtensor_model(args.ckpt, mesh)
    t = timings(model, args.prompt, args.new, args.repeats, screen_head=False)  # SPMD: every rank runs the same calls
    ids = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    dt_tokens = generate(model, ids, max_new_tokens=8, screen_head=False, ignore_eos=True)
    with torch.inference_mode():
        dt_logits = model(ids)
    if env.rank == 0:
        result["dtensor"] = t
        result["dtensor_equals_plan"] = {"tokens": bool(torch.equal(dt_tokens, plan_tokens)), "max_logit_diff": float((dt_logits - plan_logits).abs().max())}
        result["rss_per_rank"] = memory
        Path(args.result).write_text(json.dumps(result))
    close_distributed(env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/bench_tp.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="gloo", help=argparse.SUPPRESS)
    parser.add_argument("--prompt", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--new", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.prompt = args.prompt or (32 if args.quick else 128)
    args.new = args.new or (8 if args.quick else 32)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.worker:
        return worker(args)

    import tempfile

    from falconlm.atomic import atomic_write_text
    from falconlm.model.config import FalconConfig
    from falconlm.model.falcon import FalconForCausalLM, build_model
    from falconlm.testing import run_torchrun

    config = FalconConfig.from_preset("bench-40b", **(QUICK if args.quick else {}))
    results: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "load_before": os.getloadavg()},
        "quick": args.quick, "shape": {k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_kv_heads", "vocab_size")},
        "prompt_tokens": args.prompt, "new_tokens": args.new,
    }
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model"
        build_model(config, seed=0).save_pretrained(ckpt)
        base = rss()
        one = FalconForCausalLM.from_pretrained(ckpt).eval()
        results["rss_1_rank"] = {"after_load": grown(base)}
        # The 2-rank run has one thread per rank (OMP_NUM_THREADS=1), so the fair baseline is 1 rank on 2 threads.
        for threads in (2, 1):
            torch.set_num_threads(threads)
            results[f"1 rank, {threads} threads"] = timings(one, args.prompt, args.new, args.repeats)
        results["rss_1_rank"]["after_run"] = grown(base)
        del one
        runs = [("gloo", "cpu")]
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus >= 2:
            runs.append(("nccl", "cuda"))
        else:
            results["nccl"] = f"skipped: {gpus} CUDA device(s) here, NCCL tensor parallelism needs 2 or more"
        for backend, _ in runs:
            result = Path(tmp) / f"{backend}.json"
            flags = ["--worker", "--ckpt", ckpt, "--result", result, "--backend", backend,
                     "--prompt", args.prompt, "--new", args.new, "--repeats", args.repeats] + (["--quick"] if args.quick else [])
            rc, output = run_torchrun(Path(__file__), flags, nproc=2, timeout=1800)
            if rc != 0:
                raise SystemExit(output[-3000:])
            results[f"2 ranks {backend}"] = json.loads(result.read_text())
    results["machine"]["load_after"] = os.getloadavg()
    _report(results)
    atomic_write_text(Path(args.out), json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


def _report(r: dict) -> None:
    print(f"bench-40b shape {r['shape']}, prompt {r['prompt_tokens']}, {r['new_tokens']} new tokens, batch 1, fp32, 1 thread per rank of 2")
    print(f"load average before/after: {r['machine']['load_before'][0]:.2f} / {r['machine']['load_after'][0]:.2f} on {r['machine']['cpus']} CPUs")
    one = r["1 rank, 2 threads"]
    print(f"\n{'':34s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'decode vs 1 rank, 2 threads':>28s}")
    for key in ("1 rank, 2 threads", "1 rank, 1 threads"):
        t = r[key]
        print(f"{key:34s} {t['prefill_tok_s']:14.1f} {t['decode_tok_s']:13.1f} {t['decode_tok_s'] / one['decode_tok_s']:27.2f}x")
    for key in [k for k in r if k.startswith("2 ranks")]:
        run = r[key]
        for name in ("plan", "plan-logits", "dtensor"):
            t = run[name]
            print(f"{key + ' ' + name:34s} {t['prefill_tok_s']:14.1f} {t['decode_tok_s']:13.1f} {t['decode_tok_s'] / one['decode_tok_s']:27.2f}x")
        p = run["picks"]
        print(f"\npicks (ms): argmax gather b1 {p['argmax_b1_ms']:.3f}, b16 {p['argmax_b16_ms']:.3f}; full-logits gather b1 {p['logits_b1_ms']:.3f}, b16 {p['logits_b16_ms']:.3f}; one announcement {p['announce_ms']:.3f}")
        eq = run["dtensor_equals_plan"]
        print(f"dtensor vs plan: same greedy tokens {eq['tokens']}, max logit difference {eq['max_logit_diff']:.2e}")
        mib = 2**20
        one_mem = r["rss_1_rank"]["after_run"]
        print(f"host memory grown by loading and running (MiB, total = private + file pages): 1 rank {one_mem['VmRSS'] / mib:.0f} = {one_mem['RssAnon'] / mib:.0f} + {one_mem['RssFile'] / mib:.0f}; "
              + "; ".join(f"rank {i} {m['after_run']['VmRSS'] / mib:.0f} = {m['after_run']['RssAnon'] / mib:.0f} + {m['after_run']['RssFile'] / mib:.0f}" for i, m in enumerate(run["rss_per_rank"])))
    if "nccl" in r:
        print(f"NCCL: {r['nccl']}")
    print("\nOn CPU the ranks share the same cores, so 2 ranks are a correctness and overhead check here, not a speed-up.")


if __name__ == "__main__":
    main()
