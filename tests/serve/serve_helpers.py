"""Helpers for the serve tests: fixture checkpoints, an in-process client, SSE parsing."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = "the falcon flies over the desert at dawn while models learn to predict the next token of web text".split()


def _texts(n: int = 400) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))) + rng.choice([".", "!", "?", ", 123"]) for _ in range(n)]


def build_checkpoint(out: Path, preset: str = "tiny-7b", seed: int = 0, **overrides) -> Path:
    """A random-weight checkpoint of `preset` with a 300-token trained tokenizer, written to `out`."""
    from falconlm.model.config import FalconConfig
    from falconlm.model.falcon import build_model
    from falconlm.tokenizer.falcon import train_tokenizer

    tok = train_tokenizer(_texts(), vocab_size=300, show_progress=False)
    tok_dir = out.parent / f"{out.name}-tok"
    tok.save(tok_dir)
    # A wide init makes greedy output vary token to token (the default 0.02 repeats one token),
    # so equality tests compare real sequences; eos is the tokenizer's <|endoftext|>.
    defaults = {"tiny-7b": dict(initializer_range=1.0), "tiny-40b": dict(initializer_range=1.0), "tiny-rw": dict(initializer_range=0.2)}.get(preset, {})
    config = FalconConfig.from_preset(preset, vocab_size=tok.vocab_size, **{**defaults, "eos_token_id": tok.eot_id, "bos_token_id": tok.eot_id, **overrides})
    model = build_model(config, seed=seed)
    model.save_pretrained(out, tokenizer_dir=tok_dir)
    return out


def client(app):
    """An in-process httpx client for an ASGI app."""
    import httpx

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60)


def sse_events(text: str) -> list[str]:
    """The data payloads of an SSE body, checking the framing (every event is one `data:` line + a blank line)."""
    assert text.endswith("\n\n"), text[-50:]
    events = text[:-2].split("\n\n")
    out = []
    for ev in events:
        assert ev.startswith("data: ") and "\n" not in ev, ev
        out.append(ev[len("data: ") :])
    return out


class LiveServer:
    """uvicorn serving an app on a free 127.0.0.1 port in a background thread (a real socket)."""

    def __init__(self, app):
        import socket
        import threading

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        import time

        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
