"""Training checkpoints: an HF Falcon directory (weights, config, tokenizer) plus the trainer state.

    OUT/checkpoints/step-00000100/   config.json, model.safetensors, generation_config.json, tokenizer files,
                                     trainer_state.pt (optimizer, step, tokens, samples), rng-rank{R}.pt
    OUT/checkpoints/latest           name of the newest complete checkpoint

Rank 0 writes a checkpoint (with every rank's RNG state, gathered to it) into a temp folder that
falconlm.atomic renames into place once complete, then moves the `latest` pointer; so a process
killed mid-save leaves the previous checkpoint as the newest one.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from falconlm.atomic import atomic_dir, atomic_write_text, remove_stale_temps
from falconlm.errors import FalconError, disk_full_message, is_disk_full
from falconlm.train.distributed import DistEnv, barrier, gather_to_main

STEP_DIR = re.compile(r"^step-(\d{8})$")
TRAINER_STATE = "trainer_state.pt"


def step_name(step: int) -> str:
    """Directory name of a step's checkpoint."""
    return f"step-{step:08d}"


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory, or None."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return None
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / TRAINER_STATE).is_file():
            return cand
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / TRAINER_STATE).is_file())
    return steps[-1][1] if steps else None


def rng_state() -> dict[str, Any]:
    """Every RNG this process uses."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts keyed by parameter names (rank 0 holds them under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a full (unsharded) optimizer state into a possibly wrapped/sharded model's optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def _shell_model(config, state: dict[str, torch.Tensor]) -> nn.Module:
    """A FalconForCausalLM that owns the given tensors (built on the meta device, so nothing is copied)."""
    from falconlm.model.falcon import FalconForCausalLM

    with torch.device("meta"):
        shell = FalconForCausalLM(config)
    shell.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        shell.lm_head.weight = shell.transformer.word_embeddings.weight
    missing = [n for n, p in shell.named_parameters() if p.is_meta]
    if missing:
        raise FalconError(f"checkpoint state is missing tensors: {', '.join(missing[:5])}")
    return shell


def save_checkpoint(
    ckpt_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config,
    trainer: dict[str, Any],
    env: DistEnv,
    keep_last: int,
    tokenizer_dir: str | os.PathLike | None = None,
    write_model: Callable[[Path, dict[str, torch.Tensor]], None] | None = None,
) -> Path:
    """Write a complete checkpoint atomically (all ranks call this), then keep only the newest keep_last.

    write_model(directory, full_state_dict) replaces the HF model directory (LoRA writes only its adapter).
    """
    root = Path(ckpt_dir)
    final = root / step_name(step)
    model_sd, optim_sd = full_state_dicts(model, optimizer)  # collective under FSDP: every rank takes part
    rngs = gather_to_main(rng_state(), env)  # collective too
    if env.is_main:
        try:
            _write_checkpoint(final, rngs, config, model_sd, optim_sd, trainer, env, tokenizer_dir, write_model)
        except Exception as exc:  # torch.save hides the errno of a full disk; name the checkpoint it could not write
            if is_disk_full(exc):
                raise FalconError(disk_full_message(final)) from None
            raise
        atomic_write_text(root / "latest", final.name + "\n")
        steps = sorted(p for p in root.iterdir() if STEP_DIR.match(p.name))
        for old in steps[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(env)
    return final


def _write_checkpoint(final: Path, rngs: list, config, model_sd: dict, optim_sd: dict, trainer: dict[str, Any], env: DistEnv,
                      tokenizer_dir: str | os.PathLike | None, write_model: Callable[[Path, dict[str, torch.Tensor]], None] | None) -> None:
    """The checkpoint's files, in a temp folder renamed onto `final` once complete (rank 0)."""
    with atomic_dir(final) as tmp:
        for rank, state in enumerate(rngs):
            torch.save(state, tmp / f"rng-rank{rank}.pt")
        if write_model is None:
            _shell_model(config, model_sd).save_pretrained(tmp, tokenizer_dir=tokenizer_dir)
        else:
            write_model(tmp, model_sd)
        torch.save({**trainer, "optimizer": optim_sd, "world_size": env.world}, tmp / TRAINER_STATE)
        if final.exists():  # the step saved again by a run resumed from an older checkpoint: the new one wins
            shutil.rmtree(final)


def load_trainer_state(ckpt: Path, env: DistEnv) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The trainer state and this rank's RNG state (None when the world size changed)."""
    try:
        trainer = torch.load(ckpt / TRAINER_STATE, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise FalconError(f"cannot read {ckpt / TRAINER_STATE} ({exc})") from exc
    rng_file = ckpt / f"rng-rank{env.rank}.pt"
    rng = torch.load(rng_file, weights_only=False) if rng_file.is_file() and trainer.get("world_size") == env.world else None
    return trainer, rng


def clean_stale(ckpt_dir: str | os.PathLike, env: DistEnv) -> None:
    """Remove the half-written checkpoints and pointers (falconlm.atomic temps) a killed run left."""
    if env.is_main:
        remove_stale_temps(ckpt_dir)
    barrier(env)
