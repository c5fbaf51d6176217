"""`falconlm serve CHECKPOINT_DIR`: the OpenAI-compatible server (FastAPI + uvicorn) over one checkpoint."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the serve options."""
    parser.add_argument("checkpoint", help="checkpoint directory (config.json, safetensors, tokenizer.json)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=16, help="rows decoded together (continuous batching)")
    parser.add_argument("--max-queue", type=int, default=64, help="waiting requests beyond which the server answers 503")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per row (prompt + completion); default: the model's context")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every endpoint but /health")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: as saved)")
    parser.add_argument("--served-model-name", default=None, help="model id clients use (default: the directory name)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, start the engine thread, and serve until interrupted."""
    from falconlm.errors import FalconError

    if not 0 < args.port < 65536:
        raise FalconError(f"--port must be in 1..65535, got {args.port}")
    if args.max_batch_size < 1 or args.max_queue < 1:
        raise FalconError(f"--max-batch-size and --max-queue must be >= 1, got {args.max_batch_size} and {args.max_queue}")
    import logging
    from pathlib import Path

    import torch
    import uvicorn

    from falconlm.decoding.engine import Engine
    from falconlm.model.falcon import FalconForCausalLM
    from falconlm.serve.app import create_app, served_name
    from falconlm.tokenizer.chat_template import load_chat_template
    from falconlm.tokenizer.falcon import FalconTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = FalconForCausalLM.from_pretrained(args.checkpoint, dtype=args.dtype)
    tokenizer = FalconTokenizer.load(args.checkpoint)
    limit = model.config.max_position_embeddings
    if args.max_length is not None and not 0 < args.max_length <= limit:
        raise FalconError(f"--max-length must be in 1..{limit} (the model's context), got {args.max_length}")
    engine = Engine(model, tokenizer, max_batch_size=args.max_batch_size, max_queue=args.max_queue, max_length=args.max_length)
    name = args.served_model_name or served_name(args.checkpoint)
    app = create_app(engine, tokenizer, name, load_chat_template(args.checkpoint), api_key=args.api_key, aliases={args.checkpoint, str(Path(args.checkpoint).resolve())})
    logging.getLogger("falconlm.serve").info("serving %s (%s) on http://%s:%d/v1, batch %d, queue %d", name, model.config.block_style, args.host, args.port, args.max_batch_size, args.max_queue)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    finally:
        engine.close()
    return 0
