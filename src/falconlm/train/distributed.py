"""Process groups and model wrapping: one process, DDP, or FSDP2 (`fully_shard` per block).

Launched only by torchrun (it sets RANK / WORLD_SIZE / LOCAL_RANK); CPU runs use gloo, CUDA runs NCCL.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from falconlm.errors import FalconError


@dataclass
class DistEnv:
    """Where this process sits: rank, world size, its device, and whether we created the process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    created_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world > 1


def init_distributed(device_pref: str = "auto") -> DistEnv:
    """Read torchrun's environment, pick the device and join (or create) the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise FalconError("--device cuda was asked for but no CUDA device is available")
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    created = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
        created = True
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return DistEnv(rank=rank, world=world, local_rank=local_rank, device=device, created_group=created)


def close_distributed(env: DistEnv) -> None:
    """Destroy the process group if this run created it."""
    if env.created_group and dist.is_initialized():
        dist.destroy_process_group()


def resolve_strategy(strategy: str, env: DistEnv) -> str:
    """'auto' -> ddp under torchrun with >1 process, else single; ddp/fsdp need torchrun."""
    if strategy == "auto":
        return "ddp" if env.distributed else "single"
    if strategy == "ddp" and not env.distributed:
        return "single"  # DDP of one process is a plain run
    if strategy == "single" and env.distributed:
        raise FalconError("strategy 'single' cannot run under torchrun with several processes; use ddp or fsdp")
    return strategy


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward instead of storing them (from outside the model)."""
    from torch.utils.checkpoint import checkpoint

    for layer in model.transformer.h:
        inner = layer.forward

        @functools.wraps(inner)
        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        layer.forward = forward


def wrap_model(model: nn.Module, strategy: str, env: DistEnv, precision: str) -> nn.Module:
    """Wrap for the strategy: DDP, or FSDP2 with fully_shard on every block then the root."""
    if strategy == "single":
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [env.device.index] if env.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(env.device.type, (env.world,))
        if precision == "bf16-mixed":
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        else:
            mp = MixedPrecisionPolicy()
        for layer in model.transformer.h:
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        return model
    raise FalconError(f"unknown strategy {strategy!r}")


@contextlib.contextmanager
def grad_sync(model: nn.Module, strategy: str, enabled: bool) -> Iterator[None]:
    """Skip gradient communication on all but the last micro-batch of an accumulation."""
    if strategy == "ddp" and not enabled:
        with model.no_sync():
            yield
    elif strategy == "fsdp":
        model.set_requires_gradient_sync(enabled)
        yield
    else:
        yield


def all_reduce_mean(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of a tensor over ranks (no-op for one process)."""
    if env.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= env.world
    return values


def all_reduce_sum(value: int, env: DistEnv) -> int:
    """Sum of an integer over ranks (itself for one process)."""
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item())


def gather_to_main(obj: Any, env: DistEnv) -> list[Any] | None:
    """Every rank's `obj` (picklable) in rank order on rank 0, None on the others; [obj] in one process."""
    if not env.distributed:
        return [obj]
    out: list[Any] | None = [None] * env.world if env.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier(env: DistEnv) -> None:
    """Wait for every rank."""
    if env.distributed:
        dist.barrier()
