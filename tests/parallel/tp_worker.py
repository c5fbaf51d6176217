"""Run under torchrun by test_tensor_parallel.py: every scenario on every checkpoint in one launch (start-up is paid once).

argv: OUT_DIR NAME=CKPT [NAME=CKPT ...] [--cli]. Rank 0 writes OUT_DIR/NAME.pt with the scenario results
and every rank's measured weight bytes; with --cli it also runs `falconlm generate` and
`falconlm evaluate` with --tp on the first checkpoint, inside this same process group.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tp_scenarios import PROMPTS, scenarios  # noqa: E402

from falconlm.cli import main as cli_main  # noqa: E402
from falconlm.model.falcon import FalconForCausalLM  # noqa: E402
from falconlm.parallel import load_rank, resident_weight_bytes  # noqa: E402
from falconlm.tokenizer.falcon import FalconTokenizer  # noqa: E402
from falconlm.train.distributed import close_distributed, init_distributed  # noqa: E402


def cli_args(ckpt: str, out: Path, world: int) -> tuple[list[str], list[str]]:
    """The generate and evaluate command lines (the test runs them in one process without --tp)."""
    generate = ["generate", ckpt, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--max-new-tokens", "10", "--tp", str(world)]
    evaluate = ["evaluate", ckpt, "--data", str(out / "heldout.jsonl"), "--batch-size", "2", "--out", str(out / "eval.json"), "--tp", str(world)]
    return generate, evaluate


def main() -> None:
    out = Path(sys.argv[1])
    checkpoints = dict(a.split("=", 1) for a in sys.argv[2:] if "=" in a)
    env = init_distributed("cpu")
    for name, ckpt in checkpoints.items():
        rank = load_rank(ckpt, env)
        # Measured on every rank: the bytes its weights really occupy, and the KV heads its caches hold.
        kv_heads = FalconForCausalLM.new_cache(rank.model, 1, 4).keys.shape[2]
        sizes: list[tuple[int, int]] = [(0, 0)] * env.world
        dist.all_gather_object(sizes, (resident_weight_bytes(rank.model), kv_heads))
        if env.rank == 0:
            driver = rank.drive()
            try:
                result = scenarios(rank.model, FalconTokenizer.load(ckpt))
            finally:
                driver.close()
            result["weight_bytes"] = [b for b, _ in sizes]
            result["kv_heads"] = [h for _, h in sizes]
            torch.save(result, out / f"{name}.pt")
        else:
            rank.follow()
        del rank
    if "--cli" in sys.argv:
        first = next(iter(checkpoints.values()))
        for args in cli_args(first, out, env.world):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = cli_main(args)
            if env.rank == 0:
                (out / f"{args[0]}.txt").write_text(f"{rc}\n{buf.getvalue()}")
    close_distributed(env)


if __name__ == "__main__":
    main()
