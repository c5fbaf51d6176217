"""Load test of `falconlm serve` on loopback: N concurrent streaming clients vs the same requests one at a time.

Starts `falconlm serve` as a subprocess on 127.0.0.1 (a small random-weight Falcon-7B-style model
and a tokenizer trained here, both deterministic), then for each concurrency level (1, 4, 16)
sends greedy /v1/completions requests with `stream: true` and measures throughput (completion
tokens/s over the wall time), p50/p95 latency and p50/p95 time to first token. The peer is the
same server answering the same requests sequentially (one client, one request at a time); the
ratio is concurrent / sequential throughput. Every greedy text is checked against the sequential
run's text for the same prompt and the count of equal ones reported (batched equals alone up to
rare fp32 near-ties between the top two logits: batched and single-row matmuls round differently).
Writes benchmarks/results/bench_serve.json.

    python benchmarks/bench_serve.py            # 16-client level: 64 requests x 64 tokens, 2 rounds (~3 min)
    python benchmarks/bench_serve.py --quick    # smoke run (fewer, shorter requests)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from falconlm.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parent
WORDS = "the falcon flies over the desert at dawn while models learn to predict the next token of refined web text".split()


def build_checkpoint(out: Path, hidden: int, layers: int) -> None:
    """A small random-weight Falcon-7B-style checkpoint (multi-query, parallel block) with a trained tokenizer."""
    from falconlm.model.config import FalconConfig
    from falconlm.model.falcon import build_model
    from falconlm.tokenizer.falcon import train_tokenizer

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for _ in range(2000)]
    tok = train_tokenizer(texts, vocab_size=1024, show_progress=False)
    tok.save(out.parent / "tok")
    config = FalconConfig.from_preset("tiny-7b", vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64, max_position_embeddings=2048, initializer_range=0.5, eos_token_id=tok.eot_id)
    build_model(config, seed=0).save_pretrained(out, tokenizer_dir=out.parent / "tok")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompts(n: int) -> list[str]:
    rng = random.Random(1)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40))) for _ in range(n)]


async def one(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> dict:
    """One streaming completion: latency, time to first text, completion tokens, text."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft, text, tokens = None, [], 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"status": r.status_code, "latency": time.perf_counter() - start}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for ch in chunk["choices"]:
                if ch["text"] and ttft is None:
                    ttft = time.perf_counter() - start
                text.append(ch["text"])
    return {"status": 200, "latency": time.perf_counter() - start, "ttft": ttft, "tokens": tokens, "text": "".join(text)}


async def level(url: str, work: list[str], clients: int, max_tokens: int, time_limit: float) -> dict:
    """Send `work` with `clients` concurrent clients (each takes the next prompt when done)."""
    queue = list(enumerate(work))[::-1]
    results: dict[int, dict] = {}
    deadline = time.perf_counter() + time_limit

    async def worker(client: httpx.AsyncClient) -> None:
        while queue and time.perf_counter() < deadline:
            i, p = queue.pop()
            results[i] = await one(client, p, max_tokens)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - start
    ok = [r for r in results.values() if r["status"] == 200]
    lat = sorted(r["latency"] for r in ok)
    ttft = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
    tokens = sum(r["tokens"] for r in ok)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    return {
        "clients": clients,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "completion_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "latency_p50_s": statistics.median(lat) if lat else float("nan"),
        "latency_p95_s": pct(lat, 0.95),
        "ttft_p50_s": statistics.median(ttft) if ttft else float("nan"),
        "ttft_p95_s": pct(ttft, 0.95),
        "texts": {i: r.get("text") for i, r in results.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer and shorter requests")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--requests", type=int, default=None, help="requests per level (default: 4 per client, at least 16)")
    ap.add_argument("--threads", type=int, default=1, help="server torch threads")
    ap.add_argument("--rounds", type=int, default=None, help="alternating concurrent/sequential rounds per level (best kept); default 2, 1 with --quick")
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds per level before no new request is sent")
    ap.add_argument("--quantize", default=None, choices=["int8", "int4"], help="serve the checkpoint quantized at load (compare with a run without)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    max_tokens = args.max_tokens or (16 if args.quick else 64)
    per_client = 2 if args.quick else 4
    levels = [1, 4, 16]
    args.rounds = args.rounds or (1 if args.quick else 2)

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "bench"
        build_checkpoint(ckpt, args.hidden, args.layers)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "falconlm", "serve", str(ckpt), "--port", str(port), "--max-batch-size", "16", "--max-queue", "256", "--served-model-name", "bench", "--threads", str(args.threads), "--log-level", "warning", *(["--quantize", args.quantize] if args.quantize else [])]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 120
            while True:
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"server did not start:\n{server.stderr.read() if server.stderr else ''}")
                time.sleep(0.2)
            asyncio.run(level(url, prompts(4), 4, 4, 60))  # warm-up
            rows = []
            for clients in levels:
                n = args.requests or max(16, per_client * clients)
                work = prompts(n)
                # Alternate concurrent and sequential rounds and keep the best of each: the box is shared.
                conc = seq = None
                for _ in range(args.rounds if clients > 1 else 1):
                    c = asyncio.run(level(url, work, clients, max_tokens, args.time_limit))
                    s = asyncio.run(level(url, work, 1, max_tokens, args.time_limit)) if clients > 1 else c
                    conc = c if conc is None or c["tokens_per_s"] > conc["tokens_per_s"] else conc
                    seq = s if seq is None or s["tokens_per_s"] > seq["tokens_per_s"] else seq
                common = [i for i in conc["texts"] if i in seq["texts"]]
                same = sum(conc["texts"][i] == seq["texts"][i] for i in common)
                rows.append({"clients": clients, "concurrent": conc, "sequential": seq, "ratio": conc["tokens_per_s"] / seq["tokens_per_s"], "texts_equal": same, "texts_compared": len(common)})
                print(
                    f"{clients:>2} clients: {conc['tokens_per_s']:7.1f} tok/s (sequential {seq['tokens_per_s']:7.1f}, ratio {rows[-1]['ratio']:.2f}x) | "
                    f"latency p50 {conc['latency_p50_s']:.3f}s p95 {conc['latency_p95_s']:.3f}s | TTFT p50 {conc['ttft_p50_s']:.3f}s p95 {conc['ttft_p95_s']:.3f}s | "
                    f"{conc['requests']} requests, {conc['errors']} errors | greedy texts equal to sequential: {same}/{len(common)}",
                    flush=True,
                )
        finally:
            server.terminate()
            server.wait(timeout=30)
    for r in rows:
        for k in ("concurrent", "sequential"):
            r[k].pop("texts", None)
    result = {
        "benchmark": "bench_serve",
        "quick": args.quick,
        "model": {"preset": "tiny-7b shape", "hidden_size": args.hidden, "layers": args.layers},
        "max_tokens": max_tokens,
        "server_threads": args.threads,
        "quantize": args.quantize,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
        "levels": rows,
    }
    out = Path(args.out) if args.out else ROOT / "results" / ("bench_serve_quick.json" if args.quick else "bench_serve.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(f"wrote {out}")
    # Greedy texts may differ on a rare fp32 near-tie (batched and single-row kernels round differently);
    # errors (any non-200) fail the run.
    return 1 if any(r["concurrent"]["errors"] or r["sequential"]["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
