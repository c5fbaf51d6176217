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
from typing import TYPE_CHECKING, Any

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
    """Write the model as an HF Falcon directory (quantized layers in the GPTQ layout); every file lands atomically, the index last."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    spec = getattr(model, "quant_spec", None)
    if spec is not None:
        from falconlm.quant.save import disk_state

        state = disk_state(model, spec)
    else:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop(TIED_KEY, None)  # tied: stored once, as the embedding
    config = dataclasses.replace(model.config, torch_dtype=str(model.dtype).removeprefix("torch."), quantization_config=None if spec is None else spec.to_config())
    with ShardWriter(out, parse_size(max_shard_size)) as writer:
        for key, tensor in state.items():
            writer.add(key, tensor)
    write_config_files(out, config)
    source = tokenizer_dir or model.source_dir
    copy_tokenizer_files(source, out)


def write_config_files(out: Path, config: FalconConfig) -> None:
    """config.json and generation_config.json of a checkpoint directory."""
    config.save(out)
    gen = {"_from_model_config": True, "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
    if config.pad_token_id is not None:
        gen["pad_token_id"] = config.pad_token_id
    atomic_write_text(out / "generation_config.json", json.dumps(gen, indent=2) + "\n")


def copy_tokenizer_files(source: str | os.PathLike | None, out: Path) -> None:
    """Copy the tokenizer files a checkpoint directory carries, when `source` has them."""
    if source is not None and Path(source).resolve() != out.resolve():
        for name in TOKENIZER_FILES:
            if (Path(source) / name).is_file():
                atomic_write(out / name, lambda tmp, name=name: shutil.copyfile(Path(source) / name, tmp))


class ShardWriter:
    """Streams tensors into safetensors shards of at most `limit` bytes (a bigger single tensor gets its own).

    Shards are written under temporary names as they fill, so a model never has to be held whole;
    on close they get their final names (model.safetensors, or model-0000i-of-0000n with an index
    written last) and files an earlier save with another layout left behind are removed.
    """

    def __init__(self, out: Path, limit: int):
        self.out, self.limit = Path(out), limit
        self.pending: dict[str, torch.Tensor] = {}
        self.size = 0
        self.parts: list[tuple[Path, list[str]]] = []
        self.total = 0
        self.names: list[str] | None = None  # set once closed

    def add(self, key: str, tensor: torch.Tensor) -> None:
        """Queue one tensor; the current shard is written once it would pass the limit."""
        n = tensor.numel() * tensor.element_size()
        if self.pending and self.size + n > self.limit:
            self._flush()
        self.pending[key] = tensor.detach().contiguous()
        self.size += n
        self.total += n

    def _flush(self) -> None:
        part = self.out / f".part-{len(self.parts):05d}.safetensors"
        tensors = self.pending
        atomic_write(part, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
        self.parts.append((part, list(tensors)))
        self.pending, self.size = {}, 0

    def close(self) -> list[str]:
        """Name the shards, write the index (several shards) and remove stale files; returns the shard names."""
        if self.names is not None:
            return self.names
        if self.pending or not self.parts:
            self._flush()
        names = [SINGLE_FILE] if len(self.parts) == 1 else [f"model-{i + 1:05d}-of-{len(self.parts):05d}.safetensors" for i in range(len(self.parts))]
        for (part, _), name in zip(self.parts, names):
            os.replace(part, self.out / name)
        for stale in list(self.out.glob("model*.safetensors")) + [self.out / INDEX_FILE]:
            if stale.name not in names and stale.exists():
                stale.unlink()
        if len(self.parts) > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": {k: name for (_, keys), name in zip(self.parts, names) for k in keys}}
            atomic_write_text(self.out / INDEX_FILE, json.dumps(index, indent=2, sort_keys=True) + "\n")
        self.names = names
        return names

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.close()
        else:
            for part, _ in self.parts:
                part.unlink(missing_ok=True)


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


def load_pretrained(cls: type, directory: str | os.PathLike, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu", shard: Any = None, quantize: Any = None) -> "FalconForCausalLM":
    """Build on the meta device, then assign each tensor read from disk (checked by name and shape).

    A GPTQ checkpoint (config.json has a quantization_config), or `quantize` ('int8' | 'int4' | a
    falconlm.quant QuantSpec) on a full-precision one, puts quantized layers in place of the linear
    ones as their tensors are read (falconlm.quant.load).

    `shard` (a falconlm.parallel plan) first reshapes the meta model into one rank's part
    (`shard.apply(model)`), then reads each tensor as `shard.read(key, safe_slice)`: only that rank's slice.
    """
    directory = Path(directory)
    if not directory.is_dir():
        what = "is a file, not a checkpoint directory" if directory.is_file() else "does not exist"
        raise FalconError(f"checkpoint directory {directory} {what}")
    config = FalconConfig.from_json(directory / "config.json")
    files = checkpoint_files(directory)
    with torch.device("meta"):
        model = cls(config)
        if shard is not None:
            shard.apply(model)
    plan = None
    if config.quantization_config is not None or quantize is not None:
        from falconlm.quant.load import plan_for

        if shard is not None and quantize is not None:  # a stored GPTQ checkpoint is split by the shard (along whole groups)
            raise FalconError("quantizing while loading under --tp is not supported; write a quantized checkpoint first (falconlm quantize) and load that with --tp")
        plan = plan_for(config, quantize, model, str(directory))
    # Quantized models compute in fp32 on CPU unless told otherwise (GPTQ files say float16, which CPUs run slowly).
    saved_dtype = None if plan is not None and torch.device(device).type == "cpu" else config.torch_dtype
    target_dtype = parse_dtype(dtype) or parse_dtype(saved_dtype if saved_dtype in DTYPES else None) or torch.float32
    expected: dict[str, tuple | None] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if plan is not None:
        expected = plan.expected(expected)
    tied = config.tie_word_embeddings
    unknown = sorted(k for k in files if k not in expected and not k.endswith("rotary_emb.inv_freq") and not (plan and plan.optional(k)))
    if unknown:
        raise FalconError(f"{directory} has tensor {unknown[0]!r}, which a Falcon model with this config.json does not have" + (f" (and {len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""))
    missing = sorted(k for k in expected if k not in files and not (tied and k == TIED_KEY))
    if missing:
        raise FalconError(f"{directory} is missing tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    loaded: dict[str, torch.Tensor] = {}
    by_file: dict[str, list[str]] = {}
    for key, name in files.items():
        if key in expected or (plan and plan.optional(key)):
            by_file.setdefault(name, []).append(key)
    for name, keys in sorted(by_file.items()):
        try:
            with safe_open(str(directory / name), framework="pt", device="cpu") as f:
                for key in keys:
                    route = plan.route(key) if plan is not None else "load"
                    if route == "skip":
                        continue
                    tensor = f.get_tensor(key) if shard is None else shard.read(key, f.get_slice(key))
                    if route == "plan":
                        plan.add(key, tensor)
                        continue
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
    if plan is not None:
        plan.install(model, device, target_dtype)
    model.source_dir = str(directory)
    return model.eval()
