"""`falconlm serve CHECKPOINT_DIR`: the OpenAI-compatible server (FastAPI + uvicorn) over one checkpoint.

Sampling settings arrive with each request; the flags (from `ServeCommand`) say what to serve and how.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Literal

from falconlm.configure import add_config_arguments, config_from_args


@dataclass
class ServeCommand:
    """What `falconlm serve` loads, where it listens, and how much it takes on at once."""

    checkpoint: str  # checkpoint directory (config.json, safetensors, tokenizer.json)
    host: str = "127.0.0.1"  # address to bind (127.0.0.1: this machine only)
    port: int = 8000  # TCP port
    max_batch_size: int = 16  # sequences running together (continuous batching)
    max_queue: int = 64  # waiting requests beyond which the server answers 503
    max_length: int | None = None  # tokens per request (prompt + completion); None: the model's context
    kv_cache_memory: float | None = None  # GB for the paged KV pool; None: room for every running request at full length twice over, within 30% of free memory
    block_size: int = 16  # tokens per KV block
    max_num_batched_tokens: int | None = None  # tokens one engine step computes (decode rows + prompt chunks); None: 256
    prefix_caching: bool = True  # reuse the KV blocks of prompt prefixes seen before (--no-prefix-caching: off)
    api_key: str | None = None  # require 'Authorization: Bearer KEY' on every endpoint but /health
    dtype: str | None = None  # float32 | bfloat16 | float16; None: as saved
    quantize: str | None = None  # int8 | int4: quantize a full-precision checkpoint as it loads (round to nearest, LM head included)
    served_model_name: str | None = None  # model id clients use; None: the directory name
    threads: int | None = None  # torch intra-op threads; None: torch's choice
    log_level: Literal["debug", "info", "warning", "error"] = "info"  # server log verbosity
    step_mode: Literal["auto", "eager", "static", "graph"] = "auto"  # how decode steps run: auto is CUDA graphs on a GPU, eager on CPU
    tp: int = 1  # tensor-parallel ranks; N > 1 runs under torchrun --nproc-per-node N: rank 0 serves HTTP and drives the others
    force: bool = False  # load even when the memory estimate exceeds what the machine has left


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the serve options: one per ServeCommand field, plus --config."""
    add_config_arguments(parser, ServeCommand, positional=("checkpoint",))


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, start the engine thread, and serve until interrupted."""
    from falconlm.errors import FalconError

    args = config_from_args(ServeCommand, args)
    if not 0 < args.port < 65536:
        raise FalconError(f"--port must be in 1..65535, got {args.port}")
    if args.max_batch_size < 1 or args.max_queue < 1:
        raise FalconError(f"--max-batch-size and --max-queue must be >= 1, got {args.max_batch_size} and {args.max_queue}")
    import logging

    import torch

    from falconlm.memory import check_fits, inference_bytes
    from falconlm.model.config import FalconConfig
    from falconlm.parallel import open_model

    mconfig = FalconConfig.from_json(args.checkpoint)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    need = inference_bytes(mconfig, args.dtype or getattr(mconfig, "torch_dtype", None), args.tp, quantize=args.quantize)
    if args.kv_cache_memory:
        need = replace(need, parts=need.parts + (("KV cache pool", args.kv_cache_memory * 2**30),))
    check_fits(need, f"serving {args.checkpoint}", device, args.force, hint="serve a smaller checkpoint, a lower --dtype or a smaller --kv-cache-memory")

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with open_model(args.checkpoint, dtype=args.dtype, tp=args.tp, on_failure=_shut_down, quantize=args.quantize) as model:
        return 0 if model is None else _serve(args, model)  # None: a follower rank, which ran rank 0's steps


def _shut_down() -> None:
    """Another tensor-parallel rank is gone: stop serving the way Ctrl-C does (uvicorn shuts down on SIGTERM)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGTERM)


def _serve(args: ServeCommand, model) -> int:
    """Start the engine thread over the loaded model and answer HTTP until interrupted."""
    import logging
    import signal
    import threading
    from pathlib import Path

    import uvicorn

    from falconlm.decoding.engine import Engine
    from falconlm.errors import FalconError
    from falconlm.serve.app import create_app, served_name
    from falconlm.serve.metrics import ServerMetrics
    from falconlm.tokenizer.chat_template import load_chat_template
    from falconlm.tokenizer.falcon import FalconTokenizer

    tokenizer = FalconTokenizer.load(args.checkpoint)
    limit = model.config.max_position_embeddings
    if args.max_length is not None and not 0 < args.max_length <= limit:
        raise FalconError(f"--max-length must be in 1..{limit} (the model's context), got {args.max_length}")
    metrics = ServerMetrics()
    engine = Engine(
        model, tokenizer, max_batch_size=args.max_batch_size, max_queue=args.max_queue, max_length=args.max_length, step_mode=args.step_mode,
        block_size=args.block_size, kv_cache_memory=args.kv_cache_memory, max_num_batched_tokens=args.max_num_batched_tokens,
        prefix_caching=args.prefix_caching, observer=metrics, start=False,
    )
    name = args.served_model_name or served_name(args.checkpoint)
    app = create_app(engine, tokenizer, name, load_chat_template(args.checkpoint), api_key=args.api_key, aliases={args.checkpoint, str(Path(args.checkpoint).resolve())}, metrics=metrics)
    pool = engine.load()
    logging.getLogger("falconlm.serve").info(
        "serving %s (%s, tensor parallel %d) on http://%s:%d/v1, batch %d, queue %d, KV pool %d blocks of %d tokens (%.2f GB), %d tokens per step, prefix caching %s",
        name, model.config.block_style, args.tp, args.host, args.port, args.max_batch_size, args.max_queue, pool["kv_blocks_total"], args.block_size,
        engine.cache.nbytes / 2**30, engine.max_num_batched_tokens, "on" if args.prefix_caching else "off",
    )
    # The engine steps in the main thread and HTTP runs beside it: OpenMP (torch's thread pool and the
    # quantized kernels') throttles the worker threads of any other thread's parallel regions on a
    # machine with as many cores as threads, which made every step up to 2x slower (16-row int8
    # decode step 36 ms in a second thread, 22 ms in the main one).
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False))
    http = threading.Thread(target=server.run, name="falconlm-http", daemon=True)

    def graceful(signum: int, frame: object) -> None:
        # uvicorn handles signals only in the main thread, so here as it would: the first SIGTERM or
        # Ctrl-C stops taking requests and lets the open ones finish, the second stops at once.
        if server.should_exit:
            raise KeyboardInterrupt
        server.should_exit = True

    previous = {sig: signal.signal(sig, graceful) for sig in (signal.SIGTERM, signal.SIGINT)}
    http.start()
    try:
        engine.run(should_stop=lambda: not http.is_alive())
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.should_exit = True
        engine.close()
        http.join(timeout=10)
    return 0 if server.started else 1
