"""A command's model: whole in one process, or this rank's shard under `torchrun --nproc-per-node N ... --tp N`."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from falconlm.errors import FalconError
from falconlm.model.checkpoint import load_pretrained
from falconlm.model.config import FalconConfig
from falconlm.model.falcon import FalconForCausalLM
from falconlm.parallel.plan import ShardPlan, check_degree
from falconlm.parallel.runtime import Rank
from falconlm.train.distributed import DistEnv, close_distributed, init_distributed


def check_launch(tp: int) -> None:
    """Raise FalconError unless this process was started as one of `tp` ranks with a backend torch has."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if tp < 1:
        raise FalconError(f"--tp must be >= 1, got {tp}")
    if world != tp:
        if world == 1:
            raise FalconError(f"--tp {tp} runs {tp} processes: launch it with torchrun --nproc-per-node {tp} -m falconlm ... --tp {tp}")
        raise FalconError(f"torchrun started {world} processes but --tp is {tp}; they must agree (torchrun --nproc-per-node {tp} ... --tp {tp})")
    if not dist.is_available():
        raise FalconError("--tp needs torch.distributed, which this torch build lacks; install a standard torch wheel")
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if not (dist.is_nccl_available() if cuda else dist.is_gloo_available()):
        raise FalconError(f"--tp on {'CUDA' if cuda else 'the CPU'} needs torch.distributed's {backend} backend, which this torch build lacks")


def load_rank(checkpoint: str | os.PathLike, env: DistEnv, dtype: torch.dtype | str | None = None) -> Rank:
    """This rank's shard, read slice by slice from the safetensors files (no rank reads a whole tensor it splits)."""
    config = FalconConfig.from_json(Path(checkpoint) / "config.json")
    plan = ShardPlan(config, env.rank, env.world)
    model = load_pretrained(FalconForCausalLM, checkpoint, dtype=dtype, device=env.device, shard=plan)
    plan.finish(model)
    # Rank 0's announcements travel on a group of their own, over gloo (they are pickled Python objects) even when
    # the tensors use NCCL, so a message can never be taken for part of a collective of the model's.
    control = dist.new_group(backend="gloo")
    rank = Rank(model, plan, control=control)
    model.tp = rank
    return rank


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM (torchrun's word when another rank failed) unwinds rank 0 like Ctrl-C, so it still tells the followers to stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def open_model(checkpoint: str | os.PathLike, dtype: torch.dtype | str | None = None, tp: int = 1,
               on_failure: Callable[[], None] | None = None, quantize: str | None = None) -> Iterator[FalconForCausalLM | None]:
    """The model a command runs: the whole one (tp 1), or on rank 0 of `tp` ranks its shard, used as a whole model.

    The other ranks get None after following rank 0's ops until the block on rank 0 ends (the command
    then just returns). `on_failure` runs on rank 0 when another rank is found gone.
    """
    if tp == 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield FalconForCausalLM.from_pretrained(checkpoint, dtype=dtype, quantize=quantize)
        return
    if quantize:
        raise FalconError("--quantize with --tp is not supported yet; quantize on one process, or shard the full-precision checkpoint")
    check_launch(tp)
    check_degree(FalconConfig.from_json(Path(checkpoint) / "config.json"), tp)  # before any rank waits for the others
    env = init_distributed("auto")
    try:
        rank = load_rank(checkpoint, env, dtype)
        if env.rank == 0:
            driver = rank.drive(on_failure)
            try:
                with _sigterm_exits():
                    yield rank.model
            finally:
                driver.close()
        else:
            rank.follow()
            yield None
    finally:
        close_distributed(env)
