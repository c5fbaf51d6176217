"""falconlm vs transformers' FalconForCausalLM: prefill, greedy decode, peak memory and KV-cache bytes.

Both models hold the same random weights and run in the same process, alternating, fp32 on CPU;
each figure is the best of --repeats runs. Prints each pair and the ratio, and writes
benchmarks/results/bench_generate.json.

    python benchmarks/bench_generate.py            # full run (a few minutes on 2 cores)
    python benchmarks/bench_generate.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

import torch

from falconlm.decoding.generate import generate
from falconlm.model.config import FalconConfig
from falconlm.model.falcon import FalconForCausalLM
from falconlm.model.hf_interop import to_transformers

# One core streams about 23 GB/s on this kind of machine (measured with a large copy); batch-1 decode reads every weight once per token.
BANDWIDTH_BYTES_PER_S = 23e9


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_during(fn) -> tuple[float, int]:
    """Seconds taken by fn() and its peak resident-memory growth, sampled every millisecond."""
    base, peak, stop = rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    stop.set()
    thread.join()
    return elapsed, max(0, max(peak[0], rss_bytes()) - base)


def best_of(repeats: int, fns: dict[str, callable]) -> dict[str, float]:
    """Best wall time of each function, runs interleaved so drift on a shared machine hits both."""
    best = {k: float("inf") for k in fns}
    for fn in fns.values():
        fn()  # warm-up: first calls pay for allocator growth and kernel selection
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def hf_cache_bytes(hf, ids: torch.Tensor) -> int:
    with torch.inference_mode():
        out = hf(ids, use_cache=True, logits_to_keep=1)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    total = 0
    for layer in getattr(cache, "layers", []):
        total += layer.keys.nbytes + layer.values.nbytes
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short prompts and few repeats (smoke run)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default="benchmarks/results/bench_generate.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    prefill_len = 128 if args.quick else 512
    prompt_len, new_tokens = (32, 16) if args.quick else (128, 128)
    cache_len = 512 if args.quick else 2048
    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}, "quick": args.quick}
    rows: list[tuple[str, float, float, str]] = []

    torch.manual_seed(0)
    cfg7 = FalconConfig.from_preset("bench-7b")
    ours = FalconForCausalLM(cfg7).eval()
    hf = to_transformers(ours)
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    print(f"7B-shaped config: {ours.num_parameters() / 1e6:.1f}M parameters, {weight_bytes / 1e6:.0f} MB of fp32 weights, {torch.get_num_threads()} threads")

    for batch in (1, 4):
        ids = torch.randint(0, cfg7.vocab_size, (batch, prefill_len))
        with torch.inference_mode():
            t = best_of(repeats, {"ours": lambda: ours(ids, logits_to_keep=1), "hf": lambda: hf(ids, use_cache=False, logits_to_keep=1)})
        tps = {k: batch * prefill_len / v for k, v in t.items()}
        rows.append((f"prefill {batch}x{prefill_len} (tokens/s)", tps["ours"], tps["hf"], "higher"))

    for batch in (1, 8):
        ids = torch.randint(12, cfg7.vocab_size, (batch, prompt_len))
        mask = torch.ones_like(ids)

        def ours_gen(n: int) -> None:
            generate(ours, ids, max_new_tokens=n, eos_token_id=[])

        def hf_gen(n: int) -> None:
            with torch.inference_mode():
                hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

        # Decode time = generate(N new) - generate(1 new): the prefill cancels out.
        full = best_of(repeats, {"ours": lambda: ours_gen(new_tokens), "hf": lambda: hf_gen(new_tokens)})
        first = best_of(repeats, {"ours": lambda: ours_gen(1), "hf": lambda: hf_gen(1)})
        tps = {k: batch * (new_tokens - 1) / (full[k] - first[k]) for k in full}
        rows.append((f"greedy decode batch {batch} (tokens/s)", tps["ours"], tps["hf"], "higher"))
        if batch == 1:
            ceiling = BANDWIDTH_BYTES_PER_S / weight_bytes
            results["bandwidth_ceiling_tokens_per_s"] = ceiling
            results["fraction_of_ceiling"] = {k: v / ceiling for k, v in tps.items()}
        if batch == 8:
            _, mem_ours = peak_rss_during(lambda: ours_gen(new_tokens))
            _, mem_hf = peak_rss_during(lambda: hf_gen(new_tokens))
            rows.append((f"peak memory growth, decode batch {batch} (MB)", mem_ours / 1e6, mem_hf / 1e6, "lower"))
    del ours, hf

    torch.manual_seed(0)
    cfg40 = FalconConfig.from_preset("bench-40b")
    ours40 = FalconForCausalLM(cfg40).eval()
    hf40 = to_transformers(ours40)
    ids = torch.randint(0, cfg40.vocab_size, (1, cache_len))
    cache = ours40.new_cache(1, cache_len)
    with torch.inference_mode():
        ours40(ids, cache=cache, logits_to_keep=1)
    scale = 2048 / cache_len
    rows.append(("KV cache at 2048 tokens, 40B-shaped (MB)", cache.nbytes * scale / 1e6, hf_cache_bytes(hf40, ids) * scale / 1e6, "lower"))

    print(f"\n{'measure':48s} {'falconlm':>12s} {'transformers':>13s} {'ratio':>8s}")
    table = []
    for name, a, b, better in rows:
        ratio = a / b if better == "higher" else b / a
        print(f"{name:48s} {a:12.1f} {b:13.1f} {ratio:7.2f}x")
        table.append({"measure": name, "falconlm": a, "transformers": b, "advantage": ratio, "better": better})
    results["rows"] = table
    if "fraction_of_ceiling" in results:
        f = results["fraction_of_ceiling"]
        print(f"\nbatch-1 decode vs the 1-core bandwidth ceiling ({results['bandwidth_ceiling_tokens_per_s']:.1f} tokens/s): falconlm {f['ours']:.0%}, transformers {f['hf']:.0%}")
    print("(advantage = falconlm's speed / transformers', or transformers' bytes / falconlm's)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
