"""Quantized inference: falconlm fp32 / int8 / int4 against llama.cpp F32 / Q8_0 / Q4_0 (and transformers + torchao int8) on the same weights.

One random-weight checkpoint of the bench-7b shape (12 blocks, d=768, Falcon-7B's 65,024-token
vocabulary and multi-query attention) is quantized by `falconlm quantize` (int8 per channel and
int4 g128, LM head included, round to nearest) and converted to GGUF with llama.cpp's own
convert_hf_to_gguf.py and llama-quantize. Each side then runs batch-1 greedy decode (64 new tokens
after a 16-token prompt) and a 1 x 512 prefill at the same thread count, alternating, best of
--repeats. Prints tokens/s, resident weight bytes, held-out perplexity (on real text through the
Falcon tokenizer; on random weights it measures how far the quantized logits move, not quality),
the fraction of the measured memory-bandwidth ceiling, and the ratios. Writes
benchmarks/results/bench_quant.json.

The peer is llama.cpp built from the source vendored in the llama-cpp-python 0.3.36 sdist (`pip
download --no-binary :all: llama-cpp-python==0.3.36`), cached in ~/.cache/falconlm-peers (never in
the repo). It is built for AVX-512 with AMX off: on the sandboxed Xeon we measure on, ggml's AMX
path dies with SIGILL (the kernel does not grant AMX tile state to the process). The first run
downloads and builds it (about 10 minutes on 2 cores); --no-peer skips it. The second peer is
transformers' Falcon on the fp32 checkpoint under torchao's `quantize_(model, Int8WeightOnlyConfig())`
(torchao pip-installed with --target into the same cache; --no-peer skips it too).

    python benchmarks/bench_quant.py                 # threads 1 and 2
    python benchmarks/bench_quant.py --quick         # one thread, fewer tokens
    python benchmarks/bench_quant.py --kernels       # also the bare matmul kernels vs PyTorch's own (1, 16, 256 rows)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable

import torch

from falconlm.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("FALCONLM_PEERS", Path.home() / ".cache" / "falconlm-peers"))
LLAMA_CPP_PYTHON = "0.3.36"
TORCHAO = "0.18.0"
TOKENIZER = ROOT.parent.parent / "shared" / "reference" / "falcon-tokenizer"
FORMATS = {"fp32": ("F32", None), "int8": ("Q8_0", "int8"), "int4": ("Q4_0", "int4")}


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command, failing with its output when it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} ... failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done


# ----------------------------------------------------------------------------- the peer


def llama_cpp() -> Path:
    """The llama.cpp source tree with llama-bench and llama-quantize built (downloaded and built once)."""
    src = CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if (src / "build" / "bin" / "llama-bench").exists():
        return src
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.exists():
        print(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON} sdist into {CACHE} ...", flush=True)
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(CACHE)])
    with tarfile.open(sdist) as tar:
        tar.extractall(CACHE, filter="data")
    print("building llama.cpp (llama-bench, llama-quantize) ...", flush=True)
    flags = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON",
             "-DGGML_AVX512_BF16=ON", "-DGGML_AVX512_VBMI=ON", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    run(["cmake", "-B", "build", "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF", *flags], cwd=src)
    run(["cmake", "--build", "build", "-j", str(os.cpu_count() or 2), "--target", "llama-bench", "llama-quantize"], cwd=src)
    return src


def gguf_files(llama: Path, checkpoint: Path, work: Path) -> dict[str, Path]:
    """F32, Q8_0 and Q4_0 GGUF files of the checkpoint (converted once)."""
    out = {t: work / f"model-{t}.gguf" for t, _ in FORMATS.values()}
    if all(p.exists() for p in out.values()):
        return out
    stage = work / "gguf-stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for f in checkpoint.iterdir():
        if f.name != "config.json":
            (stage / f.name).symlink_to(f.resolve())
    config = json.loads((checkpoint / "config.json").read_text())
    # convert_hf_to_gguf reads the KV head count from num_kv_heads only; Falcon-7B's config says multi_query instead.
    config["num_kv_heads"] = 1 if config.get("multi_query", True) and not config.get("new_decoder_architecture") else config.get("num_kv_heads")
    (stage / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(llama / "gguf-py")}
    run([sys.executable, str(llama / "convert_hf_to_gguf.py"), str(stage), "--outtype", "f32", "--outfile", str(out["F32"])], env=env)
    for kind in ("Q8_0", "Q4_0"):
        run([str(llama / "build" / "bin" / "llama-quantize"), str(out["F32"]), str(out[kind]), kind])
    return out


def llama_bench(llama: Path, gguf: Path, threads: int, prompt: int, tokens: int, repeats: int) -> dict:
    """llama-bench's decode and prefill tokens/s of one GGUF file."""
    done = run([str(llama / "build" / "bin" / "llama-bench"), "-m", str(gguf), "-t", str(threads), "-p", str(prompt), "-n", str(tokens), "-r", str(repeats), "-o", "json"])
    rows = json.loads(done.stdout)
    get = lambda key: next(r for r in rows if r[key] > 0)
    return {"decode": get("n_gen")["avg_ts"], "prefill": get("n_prompt")["avg_ts"], "bytes": get("n_gen")["model_size"]}


def torchao_peer(source: Path, threads: list[int], prompt: int, tokens: int, repeats: int) -> dict[int, dict] | None:
    """transformers' Falcon on the fp32 checkpoint with torchao's int8 weight-only quantization, per thread count; None where it does not run."""
    target = CACHE / f"torchao-{TORCHAO}"  # pip install --target: outside the repo and the dev venv
    try:
        if not (target / "torchao").is_dir():
            run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), f"torchao=={TORCHAO}"])
        sys.path.insert(0, str(target))
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
        from transformers import FalconForCausalLM as HFFalcon
        from transformers.models.falcon import modeling_falcon

        # transformers' FalconLinear computes x @ weight.T, and torchao's Int8Tensor has no transpose:
        # F.linear is the same product (fp32 here) and the call torchao's tensor takes.
        modeling_falcon.FalconLinear.forward = lambda self, x: torch.nn.functional.linear(x, self.weight, self.bias)

        model = HFFalcon.from_pretrained(source, dtype=torch.float32).eval()
        # The block linears; the LM head is tied to the embedding, which torchao's Int8Tensor cannot serve.
        quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn != "lm_head")
        return _time_hf(model, threads, prompt, tokens, repeats)
    except Exception as exc:  # not installable offline, or this torch / transformers does not take it: the table says so
        print(f"transformers + torchao unavailable, skipped: {(str(exc).splitlines() or [type(exc).__name__])[0]}")
        return None


def _time_hf(model, threads: list[int], prompt: int, tokens: int, repeats: int) -> dict[int, dict]:
    short, long = prompts(model.config.vocab_size, prompt)
    generate_new = lambda n: model.generate(short, max_new_tokens=n, min_new_tokens=n, do_sample=False)  # noqa: E731
    out = {}
    for t in threads:
        torch.set_num_threads(t)
        with torch.no_grad():
            generate_new(2)  # warm-up
            passes = [one_pass(generate_new, lambda: model(long, logits_to_keep=1), tokens) for _ in range(repeats)]
        out[t] = rates(passes, prompt, tokens)
    return out


# ----------------------------------------------------------------------------- ours


def checkpoint(work: Path) -> Path:
    """The random bench-7b checkpoint, with the Falcon tokenizer (GGUF conversion needs one)."""
    from falconlm.model.config import FalconConfig
    from falconlm.model.falcon import build_model

    path = work / "bench-7b"
    if not (path / "config.json").exists():
        build_model(FalconConfig.from_preset("bench-7b"), seed=0).save_pretrained(path, tokenizer_dir=TOKENIZER if TOKENIZER.is_dir() else None)
    return path


def quantized(work: Path, source: Path, kind: str) -> Path:
    """The `falconlm quantize` output of `source` for int8 / int4."""
    from falconlm.quant.quantize import quantize_checkpoint
    from falconlm.quant.spec import QuantSpec

    path = work / f"bench-7b-{kind}"
    if not (path / "config.json").exists():
        spec = QuantSpec(bits=8, group_size=-1, lm_head=True) if kind == "int8" else QuantSpec(bits=4, group_size=128, lm_head=True)
        quantize_checkpoint(source, path, spec, progress=False)
    return path


def heldout_ids(tokenizer_dir: Path, limit: int = 2048) -> torch.Tensor | None:
    """Real text (the refined sample corpus the training tests use) through the Falcon tokenizer, as one (1, limit) row."""
    corpus = ROOT.parent / "tests" / "train" / "fixtures" / "sample_corpus.jsonl"
    if not (tokenizer_dir / "tokenizer.json").exists() or not corpus.exists():
        return None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    texts = [json.loads(line).get("text", "") for line in corpus.read_text().splitlines() if line.strip()]
    ids = [i for t in texts for i in tok.encode(t).ids][: limit + 1]
    return torch.tensor([ids]) if len(ids) > 64 else None


def perplexity(model, ids: torch.Tensor | None, window: int = 512) -> float | None:
    """exp(mean NLL) over consecutive windows."""
    if ids is None:
        return None
    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, ids.shape[1] - 1, window):
            chunk = ids[:, s : s + window + 1]
            logits = model(chunk[:, :-1]).float()
            nll += float(torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum"))
            n += chunk.shape[1] - 1
    return float(torch.exp(torch.tensor(nll / n)))


def ours(path: Path, ids: torch.Tensor | None) -> tuple[object, dict]:
    """Load one of our checkpoints and measure what does not depend on timing."""
    from falconlm.model.falcon import FalconForCausalLM
    from falconlm.parallel import resident_weight_bytes

    from falconlm.decoding.generate import generate

    model = FalconForCausalLM.from_pretrained(path)
    # First-call costs (the kernels' build and probe, the head screen's int8 copy) are not decode time.
    generate(model, prompts(model.config.vocab_size, 16)[0], max_new_tokens=2, do_sample=False, eos_token_id=[])
    return model, {"bytes": resident_weight_bytes(model), "perplexity": perplexity(model, ids)}


def prompts(vocab_size: int, prompt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 16-token decode prompt and the 1 x prompt prefill input every side gets."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (1, 16), generator=g), torch.randint(0, vocab_size, (1, prompt), generator=g)


def one_pass(generate_new: Callable[[int], object], prefill: Callable[[], object], tokens: int) -> dict:
    """Seconds to generate 1 and tokens + 1 new tokens, and for one prefill (callers keep the best of several)."""
    t0 = time.perf_counter()
    generate_new(1)
    t1 = time.perf_counter()
    generate_new(tokens + 1)
    t2 = time.perf_counter()
    with torch.no_grad():
        prefill()
    return {"one": t1 - t0, "many": t2 - t1, "prefill": time.perf_counter() - t2}


def time_ours(model, threads: int, prompt: int, tokens: int) -> dict:
    """One pass of ours (see one_pass)."""
    from falconlm.decoding.generate import generate

    torch.set_num_threads(threads)
    short, long = prompts(model.config.vocab_size, prompt)
    return one_pass(lambda n: generate(model, short, max_new_tokens=n, do_sample=False, eos_token_id=[]), lambda: model(long, logits_to_keep=1), tokens)


def rates(passes: list[dict], prompt: int, tokens: int) -> dict:
    """tokens/s from the best times of several passes: decode = tokens / (generate(tokens + 1) - generate(1)), so the prompt's prefill cancels out, as in llama-bench's tg test."""
    best = {k: min(p[k] for p in passes) for k in passes[0]}
    gap = best["many"] - best["one"]
    return {"decode": tokens / gap if gap > 0 else float("nan"), "prefill": prompt / best["prefill"]}


def bandwidth(threads: int) -> float:
    """Bytes/s one pass over a 1 GiB buffer reads at this thread count (the decode ceiling)."""
    torch.set_num_threads(threads)
    x = torch.ones(2**28)
    x.sum()
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - t0))
    return best


# ----------------------------------------------------------------------------- kernels


def kernel_table(threads: int, batch_rows: tuple[int, ...] = (1, 16, 256)) -> list[dict]:
    """One linear layer of each bench-7b shape at 1 / 16 / 256 rows: ours, PyTorch's weight-only kernels and fp32."""
    from falconlm.model.linear import linear
    from falconlm.quant.linear import QuantLinear
    from falconlm.quant.spec import QuantSpec

    torch.set_num_threads(threads)
    rows = []
    for n, k in ((3072, 768), (768, 3072), (65024, 768)):
        w = torch.randn(n, k)
        q8 = QuantLinear.from_float(w, QuantSpec(bits=8))
        q4 = QuantLinear.from_float(w, QuantSpec(bits=4, group_size=128))
        wi8 = (q8.values().to(torch.int16) - 128).to(torch.int8)
        w4 = torch._convert_weight_to_int4pack_for_cpu(q4.values().to(torch.int32), 1)
        sz = torch.stack((q4.scales, (8 - q4.zeros) * q4.scales), -1).transpose(0, 1).contiguous()
        s8 = q8.scales[:, 0].contiguous()
        for m in batch_rows:
            x, reps = torch.randn(m, k), 50 if m == 1 else 5
            rows.append({
                "shape": f"{m}x{k} @ {k}x{n}",
                "fp32_us": _best(lambda: linear(x, w), reps) * 1e6,
                "ours_int8_us": _best(lambda: q8(x), reps) * 1e6,
                "torch_int8pack_us": _best(lambda: torch._weight_int8pack_mm(x, wi8, s8), reps) * 1e6,
                "ours_int4_us": _best(lambda: q4(x), reps) * 1e6,
                "torch_int4pack_us": _best(lambda: torch._weight_int4pack_mm_for_cpu(x, w4, 128, sz), reps) * 1e6,
            })
    return rows


def fp32_table(threads: int, batch_rows: tuple[int, ...] = (1, 4, 8, 16, 24, 32, 64)) -> list[dict]:
    """The fp32 block linears at few rows: falconlm's dispatch (its own kernel up to SMALL_ROWS rows) against oneDNN alone."""
    from falconlm.model import linear as lin

    torch.set_num_threads(threads)
    rows = []
    for n, k in ((3072, 768), (768, 3072), (896, 768)):
        layers = [torch.randn(n, k) for _ in range(max(4, int(300e6 // (n * k * 4))))]  # more bytes than the caches hold
        for m in batch_rows:
            x = torch.randn(m, k)

            def run():
                for w in layers:
                    lin.linear(x, w)

            times = {}
            for name, on in (("ours", True), ("onednn", False)):
                lin.few_rows_kernel = on
                times[name] = _best(run, 3) / len(layers)
            lin.few_rows_kernel = True
            gb = layers[0].nbytes / 1e9
            rows.append({"shape": f"{m}x{k} @ {k}x{n}", "ours_us": times["ours"] * 1e6, "onednn_us": times["onednn"] * 1e6,
                         "ours_gb_s": gb / times["ours"], "onednn_gb_s": gb / times["onednn"], "threads": threads})
    return rows


def _best(fn, n: int) -> float:
    """The shortest of n timed calls of fn, after one untimed call."""
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default=str(CACHE / "bench-quant"), help="where the checkpoints and GGUF files are kept (outside the repo)")
    ap.add_argument("--no-peer", action="store_true", help="skip llama.cpp and transformers + torchao")
    ap.add_argument("--kernels", action="store_true", help="also time the bare matmul kernels against PyTorch's")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.threads, args.tokens, args.prompt, args.repeats = "1", 32, 128, 1
    threads = [int(t) for t in args.threads.split(",")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (a shared machine: rerun when it is high)")
    source = checkpoint(work)
    paths = {"fp32": source, "int8": quantized(work, source, "int8"), "int4": quantized(work, source, "int4")}
    llama = None
    if not args.no_peer:
        try:
            llama = llama_cpp()
            ggufs = gguf_files(llama, source, work)
        except (RuntimeError, OSError) as exc:
            print(f"llama.cpp unavailable, peer skipped: {str(exc).splitlines()[0]}")
            llama = None
    torchao = None if args.no_peer else torchao_peer(source, threads, args.prompt, args.tokens, args.repeats)
    ids = heldout_ids(source)
    models, static = {}, {}
    for name, path in paths.items():
        models[name], static[name] = ours(path, ids)
    results: dict = {"machine": platform.processor(), "load_average": os.getloadavg()[0], "formats": {}}
    for t in threads:
        ceiling = bandwidth(t)
        passes: dict[str, list[dict]] = {name: [] for name in paths}
        peer = {}
        for _ in range(args.repeats):  # alternate, so drift on a shared machine hits every side
            for name, model in models.items():
                passes[name].append(time_ours(model, t, args.prompt, args.tokens))
        timing = {name: rates(ps, args.prompt, args.tokens) for name, ps in passes.items()}
        if llama is not None:
            for name, (kind, _) in FORMATS.items():
                peer[name] = llama_bench(llama, ggufs[kind], t, args.prompt, args.tokens, args.repeats)
        print(f"\n{t} thread(s); memory bandwidth ceiling {ceiling / 1e9:.1f} GB/s (a 1 GiB read); load average {os.getloadavg()[0]:.2f}")
        print(f"{'format':<6} {'decode tok/s':>13} {'prefill tok/s':>14} {'weights MB':>11} {'x fp32':>7} {'ppl':>9} {'of ceiling':>11} | {'llama.cpp':>9} {'decode':>8} {'prefill':>8} {'MB':>7} | {'decode ratio':>12} {'prefill ratio':>13}")
        for name in paths:
            mine, st = timing[name], static[name]
            frac = st["bytes"] * mine["decode"] / ceiling
            line = f"{name:<6} {mine['decode']:>13.1f} {mine['prefill']:>14.0f} {st['bytes'] / 1e6:>11.1f} {st['bytes'] / static['fp32']['bytes']:>7.3f} {st['perplexity'] or float('nan'):>9.1f} {frac:>10.0%}"
            if name in peer:
                p = peer[name]
                line += f" | {FORMATS[name][0]:>9} {p['decode']:>8.1f} {p['prefill']:>8.0f} {p['bytes'] / 1e6:>7.1f} | {mine['decode'] / p['decode']:>11.2f}x {mine['prefill'] / p['prefill']:>12.2f}x"
            print(line)
            results["formats"].setdefault(name, {})[str(t)] = {"ours": {**mine, **st, "fraction_of_bandwidth": frac}, "llama_cpp": peer.get(name), "bandwidth": ceiling}
        if torchao is not None:
            tao, mine = torchao[t], timing["int8"]
            print(f"transformers + torchao {TORCHAO} int8 weight-only (same fp32 checkpoint): decode {tao['decode']:.1f} tok/s, prefill {tao['prefill']:.0f} tok/s"
                  f" | ours int8 {mine['decode'] / tao['decode']:.2f}x decode, {mine['prefill'] / tao['prefill']:.2f}x prefill")
            results["formats"]["int8"][str(t)]["transformers_torchao"] = tao
    if args.kernels:
        print("\nmatmul kernels, microseconds (1 thread; ratio = fp32 / ours):")
        rows = kernel_table(1)
        for r in rows:
            print(f"  {r['shape']:>20}  " + "  ".join(f"{k.removesuffix('_us')} {v:.0f}" for k, v in r.items() if k != "shape")
                  + f"  | int8 {r['fp32_us'] / r['ours_int8_us']:.1f}x, int4 {r['fp32_us'] / r['ours_int4_us']:.1f}x")
        results["kernels"] = rows
        t = max(int(v) for v in args.threads.split(","))
        print(f"\nfp32 linears at few rows, {t} threads (ours: falconlm's kernel up to its row limit, then oneDNN):")
        rows = fp32_table(t)
        for r in rows:
            print(f"  {r['shape']:>20}  ours {r['ours_us']:6.0f} us ({r['ours_gb_s']:4.1f} GB/s)  oneDNN {r['onednn_us']:6.0f} us ({r['onednn_gb_s']:4.1f} GB/s)  {r['onednn_us'] / r['ours_us']:.2f}x")
        results["fp32_few_rows"] = rows
    out = ROOT / "results" / ("bench_quant-quick.json" if args.quick else "bench_quant.json")
    atomic_write_json(out, results)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
