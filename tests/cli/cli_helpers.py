"""What the CLI misuse tests share: how a command is run and what a user sees of it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
       "PYTHONWARNINGS": "ignore"}

@dataclass
class Run:
    """One finished command."""

    args: list[str]
    rc: int
    out: str
    err: str
    seconds: float

    def lines(self) -> list[str]:
        """stderr without progress bars (tqdm's `name: 12doc [00:01, 3.4doc/s]`) and blank lines."""
        text = re.sub(r"[\w-]+: [^\r\n]*?\[\d+:\d+[^\]\r\n]*\]", "", self.err.replace("\r", "\n"))
        return [line for line in text.splitlines() if line.strip()]

    def refused(self, *words: str) -> None:
        """Exit 1, one or two stderr lines, no traceback, each of `words` in the message."""
        assert self.rc == 1, (self.args, self.rc, self.err[-2000:])
        assert "Traceback" not in self.err, self.err[-3000:]
        lines = self.lines()
        assert 1 <= len(lines) <= 2, lines
        for w in words:
            assert w in self.err, (w, self.err)

def falconlm(*args: str, cwd: Path, timeout: float = 120) -> Run:
    """Run `python -m falconlm.cli ARGS` in cwd."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "falconlm.cli", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Run(list(args), p.returncode, p.stdout, p.stderr, time.perf_counter() - t0)

def build_work(w: Path) -> Path:
    """Into w: the bad inputs, a 300-token tokenizer, its token shards of good.jsonl, a tiny checkpoint, a file where an --out should go."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_bad_inputs
    finally:
        sys.path.pop(0)
    from falconlm.testing import build_checkpoint
    from falconlm.tokenizer.falcon import FalconTokenizer
    from falconlm.train.shards import write_token_shards

    make_bad_inputs.build(w)
    build_checkpoint(w / "ckpt")
    FalconTokenizer.load(w / "ckpt").save(w / "tok")
    write_token_shards([str(w / "good.jsonl")], w / "tok", w / "tokd", val_fraction=0.0, progress=False)
    (w / "afile").write_text("not a directory\n")
    return w

def no_temps(root: Path) -> list[Path]:
    """Temp files and folders (unfinished atomic writes) anywhere under root."""
    from falconlm.atomic import is_temp

    return [p for p in root.rglob("*") if is_temp(p)] if root.exists() else []
