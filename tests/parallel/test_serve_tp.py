"""`torchrun --nproc-per-node 2 -m falconlm serve CKPT --tp 2`: the serving tests' requests answered as one process answers them, and every rank gone after Ctrl-C or when a rank dies."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.distributed

REQUESTS = [
    ("/v1/completions", {"prompt": "the falcon flies over", "max_tokens": 20, "temperature": 0}),
    ("/v1/completions", {"prompt": ["dawn", "web text of the desert, 123"], "max_tokens": 7, "temperature": 0, "n": 2}),
    ("/v1/completions", {"prompt": "models learn", "max_tokens": 6, "temperature": 0, "logprobs": 2, "echo": True}),
    ("/v1/completions", {"prompt": "the next token", "max_tokens": 12, "temperature": 0, "stop": ["the"]}),
    ("/v1/completions", {"prompt": "at dawn models", "max_tokens": 10, "temperature": 0.9, "top_p": 0.9, "seed": 5, "n": 2}),
    ("/v1/completions", {"prompt": "while the falcon", "max_tokens": 8, "temperature": 0, "stream": True}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "models learn"}], "max_tokens": 10, "temperature": 0}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "the falcon"}], "max_tokens": 8, "temperature": 0, "stream": True}),
    ("/generate", {"inputs": "the falcon", "parameters": {"max_new_tokens": 8, "details": True}}),
]
CONCURRENT = ["the falcon flies over", "models learn to predict", "dawn", "web text of the desert, 123", "the next token", "while the falcon", "at dawn models", "learn the next"] * 2
VOLATILE = ("id", "created", "system_fingerprint")


def _stable(value):
    """A response without what differs between two servers by design (ids, timestamps)."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _same(a, b) -> bool:
    """Equal structures and text; floats (logprobs) equal up to fp32 rounding of a reordered sum (1e-4 of their size)."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-4 * max(1.0, abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


async def _answers(c: httpx.AsyncClient) -> list:
    out = []
    for path, body in REQUESTS:
        r = await c.post(path, json=body)
        assert r.status_code == 200, r.text
        if body.get("stream"):  # chunk boundaries follow timing: compare the text streamed and how it ended
            events = [e[len("data: "):] for e in r.text.split("\n\n") if e]
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
            text = "".join(c.get("text") or (c.get("delta") or {}).get("content") or "" for c in chunks)
            out.append([text, chunks[-1]["finish_reason"]])
        else:
            out.append(_stable(r.json()))
    rs = await asyncio.gather(*(c.post("/v1/completions", json={"prompt": p, "max_tokens": 8, "temperature": 0}) for p in CONCURRENT))
    out.append([r.json()["choices"][0]["text"] for r in rs])
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _alive(pids: list[int]) -> list[int]:
    return [p for p in pids if (st := _stat(p)) is not None and st[0] != "Z"]


def _children(pid: int) -> list[int]:
    """torchrun's worker processes (it starts them in sessions of their own)."""
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and (st := _stat(int(d.name))) and int(st[1]) == pid]


def _rank_pid(ranks: list[int], rank: int) -> int:
    for pid in ranks:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"LOCAL_RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no rank {rank} among {ranks}")


class TPServer:
    """`falconlm serve --tp 2` under torchrun in its own session, on a free port."""

    def __init__(self, ckpt: Path):
        self.port = _free_port()
        torchrun = Path(sys.executable).with_name("torchrun")
        cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "falconlm", "serve", str(ckpt), "--tp", "2",
               "--port", str(self.port), "--max-batch-size", "8", "--served-model-name", "tiny", "--log-level", "warning"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the --tp 2 server did not come up"
            time.sleep(0.3)
        self.ranks = _children(self.proc.pid)
        assert len(self.ranks) == 2, self.ranks

    def output(self) -> str:
        return self.proc.communicate(timeout=30)[0][-4000:] if self.proc.poll() is not None else ""

    def wait_all_gone(self, timeout: float) -> int:
        """torchrun's exit code, once it and both ranks have exited (killing them all if not in time)."""
        everyone = [self.proc.pid, *self.ranks]
        try:
            rc = self.proc.wait(timeout=timeout)
            deadline = time.monotonic() + 10
            while _alive(self.ranks) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = _alive(self.ranks)
        finally:
            for pid in _alive(everyone):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"ranks left behind: {left}"
        return rc


@pytest.fixture(scope="module")
def tp_answers(tiny_ckpt):
    """The requests answered by the --tp 2 server, which is then stopped with Ctrl-C (SIGINT to every process, as a terminal sends it)."""
    server = TPServer(tiny_ckpt)

    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            return await _answers(c)

    try:
        answers = asyncio.run(go())
    except BaseException:
        for pid in _alive([server.proc.pid, *server.ranks]):
            os.kill(pid, signal.SIGKILL)
        raise
    for pid in [server.proc.pid, *server.ranks]:  # a terminal's Ctrl-C reaches torchrun and every rank
        os.kill(pid, signal.SIGINT)
    start = time.monotonic()
    rc = server.wait_all_gone(timeout=60)
    return answers, rc, time.monotonic() - start, server.output()


def test_server_under_tp2_answers_as_one_process(tp_answers, tiny_ckpt):
    from falconlm.decoding.engine import Engine
    from falconlm.model.falcon import FalconForCausalLM
    from falconlm.serve.app import create_app
    from falconlm.tokenizer.chat_template import load_chat_template
    from falconlm.tokenizer.falcon import FalconTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
    from serve_helpers import client

    model, tok = FalconForCausalLM.from_pretrained(tiny_ckpt), FalconTokenizer.load(tiny_ckpt)
    engine = Engine(model, tok, max_batch_size=8)
    app = create_app(engine, tok, "tiny", load_chat_template(tiny_ckpt))

    async def go():
        async with client(app) as c:
            return await _answers(c)

    try:
        want = asyncio.run(go())
    finally:
        engine.close()
    got = tp_answers[0]
    for (path, body), a, b in zip(REQUESTS, got, want):
        assert _same(a, b), (path, body, a, b)
    assert got[-1] == want[-1]
    assert len(set(got[-1])) > 4  # distinct completions, so the comparison means something


def test_ctrl_c_stops_every_rank(tp_answers):
    """Rank 0's server shuts down and tells rank 1 to stop, well before torchrun's 30 s SIGKILL; no rank prints a traceback."""
    _, rc, seconds, output = tp_answers
    assert seconds < 20, output
    assert rc in (0, 1), output  # torchrun itself exits 1 when it is sent SIGINT
    assert "[rank" not in output and "falconlm serve: error" not in output, output


def test_a_dying_rank_takes_the_others_down(tiny_ckpt):
    """kill -9 of rank 1: torchrun stops rank 0 (SIGTERM), whose server shuts down; nothing is left running or hung."""
    server = TPServer(tiny_ckpt)
    os.kill(_rank_pid(server.ranks, 1), signal.SIGKILL)
    start = time.monotonic()
    rc = server.wait_all_gone(timeout=60)
    assert rc != 0
    assert time.monotonic() - start < 45
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "/health", timeout=2)
