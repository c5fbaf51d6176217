"""Checkpoint directories in the Hugging Face layout, safetensors only.

A directory holds config.json, model.safetensors (or model-0000i-of-0000n.safetensors shards and
model.safetensors.index.json), generation_config.json and, when known, the tokenizer files.
Loading builds the model on the meta device and then reads one tensor at a time, so a model of
many GB never needs twice its size in RAM.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from falconlm.atomic import atomic_write, atomic_write_text
from falconlm.errors import FalconError
from falconlm.model.config import FalconConfig

if TYPE_CHECKING:
    from falconlm.model.falcon import FalconForCausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
TIED_KEY, EMBED_KEY = "lm_head.weight", "transformer.word_embeddings.weight"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """torch dtype from a name such as 'bf16' or 'float32'."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise FalconError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def parse_size(size: int | str) -> int:
    """Bytes from 5000000, '5GB', '500MB' or '2GiB'."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", size, re.IGNORECASE)
    if not m:
        raise FalconError(f"cannot read the size {size!r}; write it like '5GB' or '500MB'")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(float(m.group(1)) * scale)


# ----------------------------------------------------------------------------- save


def save_pretrained(model: "FalconForCausalLM", directory: str | os.PathLike, max_shard_size: int | str = "5GB", tokenizer_dir: str | os.PathLike | None = None) -> None:
    """Write the model as an HF Falcon directory; every file lands atomically, the index last."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop(TIED_KEY, None)  # tied: stored once, as the embedding
    config = dataclasses.replace(model.config, torch_dtype=str(model.dtype).removeprefix("torch."))
    shards = _plan_shards(state, parse_size(max_shard_size))
    names = [SINGLE_FILE] if len(shards) == 1 else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, keys in zip(names, shards):
        atomic_write(out / name, lambda tmp, keys=keys: save_file({k: state[k] for k in keys}, str(tmp), metadata={"format": "pt"}))
    # Remove what an earlier save with another layout left behind, so loaders never mix the two.
    for stale in list(out.glob("model*.safetensors")) + [out / INDEX_FILE]:
        if stale.name not in names and stale.exists():
            stale.unlink()
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {k: name for name, keys in zip(names, shards) for k in keys},
        }
        atomic_write_text(out / INDEX_FILE, json.dumps(index, indent=2, sort_keys=True) + "\n")
    config.save(out)
    gen = {"_from_model_config": True, "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
    if config.pad_token_id is not None:
        gen["pad_token_id"] = config.pad_token_id
    atomic_write_text(out / "generation_config.json", json.dumps(gen, indent=2) + "\n")
    source = tokenizer_dir or model.source_dir
    if source is not None and Path(source).resolve() != out.resolve():
        for name in TOKENIZER_FILES:
            if (Path(source) / name).is_file():
                atomic_write(out / name, lambda tmp, name=name: shutil.copyfile(Path(source) / name, tmp))


def _plan_shards(state: dict[str, torch.Tensor], limit: int) -> list[list[str]]:
    """Greedy shards in key order, each at most `limit` bytes (a bigger single tensor gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, tensor in state.items():
        n = tensor.numel() * tensor.element_size()
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += n
    return shards


# ----------------------------------------------------------------------------- load


def checkpoint_files(directory: Path) -> dict[str, str]:
    """Map every tensor name to the safetensors file that holds it."""
    if (directory / INDEX_FILE).is_file():
        try:
            weight_map = json.loads((directory / INDEX_FILE).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise FalconError(f"{directory / INDEX_FILE} is not a valid safetensors index ({exc})") from None
        for name in sorted(set(weight_map.values())):
            if not (directory / name).is_file():
                raise FalconError(f"{directory / INDEX_FILE} lists shard {name}, which is missing from the directory")
        return dict(weight_map)
    if (directory / SINGLE_FILE).is_file():
        try:
            with safe_open(str(directory / SINGLE_FILE), framework="pt") as f:
                return {k: SINGLE_FILE for k in f.keys()}
        except Exception as exc:  # safetensors' own error types for a corrupt header
            raise FalconError(f"cannot read {directory / SINGLE_FILE}: {exc}") from None
    if any(directory.glob("*.bin")):
        raise FalconError(f"{directory} has only PyTorch pickle weights (*.bin); falconlm loads safetensors only — convert them with transformers' save_pretrained(safe_serialization=True)")
    raise FalconError(f"{directory} has no model.safetensors and no {INDEX_FILE}")


def load_pretrained(cls: type, directory: str | os.PathLike, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu") -> "FalconForCausalLM":
    """Build on the meta device, then assign each tensor read from disk (checked by name and shape)."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "is a file, not a checkpoint directory" if directory.is_file() else "does not exist"
        raise FalconError(f"checkpoint directory {directory} {what}")
    config = FalconConfig.from_json(directory / "config.json")
    files = checkpoint_files(directory)
    target_dtype = parse_dtype(dtype) or parse_dtype(config.torch_dtype if config.torch_dtype in DTYPES else None) or torch.float32
    with torch.device("meta"):
        model = cls(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = config.tie_word_embeddings
    unknown = sorted(k for k in files if k not in expected and not k.endswith("rotary_emb.inv_freq"))
    if unknown:
        raise FalconError(f"{directory} has tensor {unknown[0]!r}, which a Falcon model with this config.json does not have" + (f" (and {len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""))
    missing = sorted(k for k in expected if k not in files and not (tied and k == TIED_KEY))
    if missing:
        raise FalconError(f"{directory} is missing tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    loaded: dict[str, torch.Tensor] = {}
    by_file: dict[str, list[str]] = {}
    for key, name in files.items():
        if key in expected:
            by_file.setdefault(name, []).append(key)
    for name, keys in sorted(by_file.items()):
        try:
            with safe_open(str(directory / name), framework="pt", device="cpu") as f:
                for key in keys:
                    tensor = f.get_tensor(key)
                    if tuple(tensor.shape) != expected[key]:
                        raise FalconError(f"tensor {key!r} in {directory / name} has shape {tuple(tensor.shape)}, but config.json implies {expected[key]}")
                    loaded[key] = tensor.to(device=device, dtype=target_dtype)
        except FalconError:
            raise
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise FalconError(f"cannot read {directory / name}: {exc}") from None
    if tied and TIED_KEY in loaded:
        # Some exports (e.g. the Falcon-40B repo) store the tied head too; it must equal the embedding.
        if not torch.equal(loaded.pop(TIED_KEY), loaded[EMBED_KEY]):
            raise FalconError(f"{directory} stores an lm_head.weight that differs from the embeddings, but config.json says tie_word_embeddings=true")
    model.load_state_dict(loaded, strict=False, assign=True)
    if tied:
        model.lm_head.weight = model.transformer.word_embeddings.weight
    model.source_dir = str(directory)
    return model.eval()
