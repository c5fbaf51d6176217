"""`falconlm quantize`: a full-precision checkpoint in, a GPTQ-format checkpoint out, one block at a time.

Only one decoder block is ever in memory in full precision, so a checkpoint larger than RAM
quantizes too. Round-to-nearest needs no data. GPTQ runs the calibration windows through the
blocks in order: each block's linear layers are quantized against the Hessians of their inputs,
then the block is rerun with its quantized layers to give the next block its inputs, so every
block compensates for the error of the blocks before it (as the GPTQ paper does). The output
directory appears only when the whole checkpoint is written.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from tqdm import tqdm

from falconlm.atomic import atomic_dir
from falconlm.errors import FalconError
from falconlm.model.checkpoint import ShardWriter, checkpoint_files, copy_tokenizer_files, parse_size, write_config_files
from falconlm.model.config import FalconConfig
from falconlm.quant.gptq import HessianAccumulator, gptq_quantize
from falconlm.quant.gptq_format import to_gptq
from falconlm.quant.linear import QuantLinear
from falconlm.quant.load import EMBED_KEY, covered_linears, fit_group_size, replace_module
from falconlm.quant.spec import HEAD, QuantSpec


@dataclass
class LayerError:
    """How far one quantized layer's outputs are from the full-precision ones on the calibration inputs."""

    name: str
    relative: float  # ||X (W - Q)^T|| / ||X W^T||, from the input Hessian (NaN with RTN, which sees no inputs)
    seconds: float


@dataclass
class QuantizeReport:
    """What `quantize_checkpoint` did."""

    spec: QuantSpec
    layers: list[LayerError] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    calibration_tokens: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """A table of per-block reconstruction error and the sizes."""
        lines = [f"quantized to {self.spec.describe()} in {self.seconds:.1f} s: {self.bytes_in / 1e6:,.1f} MB -> {self.bytes_out / 1e6:,.1f} MB ({self.bytes_out / max(self.bytes_in, 1):.2f}x)"]
        measured = [e for e in self.layers if not math.isnan(e.relative)]
        if measured:
            lines.append(f"relative output error on {self.calibration_tokens:,} calibration tokens (||X(W-Q)^T|| / ||XW^T||):")
            by_block: dict[str, list[LayerError]] = {}
            for e in measured:
                by_block.setdefault(e.name.rsplit(".", 2)[0] if ".h." in e.name else e.name, []).append(e)
            for block, errors in by_block.items():
                lines.append(f"  {block:<22} " + "  ".join(f"{e.name.rsplit('.', 1)[-1]} {e.relative:.4f}" for e in errors))
            lines.append(f"  mean {sum(e.relative for e in measured) / len(measured):.4f}, worst {max(measured, key=lambda e: e.relative).name} {max(e.relative for e in measured):.4f}")
        return "\n".join(lines)


class _Reader:
    """Tensors of a checkpoint by name, each file opened once."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.files = checkpoint_files(directory)
        self.handles: dict[str, object] = {}

    def get(self, key: str) -> torch.Tensor:
        name = self.files[key]
        if name not in self.handles:
            self.handles[name] = safe_open(str(self.directory / name), framework="pt", device="cpu")
        try:
            return self.handles[name].get_tensor(key)
        except Exception as exc:  # safetensors' own errors for a corrupt file
            raise FalconError(f"cannot read {key!r} from {self.directory / name}: {exc}") from None

    def prefix(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: self.get(k) for k in self.files if k.startswith(prefix)}


def calibration_windows(paths: list[str], tokenizer_dir: Path, count: int, length: int, seed: int, text_key: str = "text") -> torch.Tensor:
    """(count, length) token windows drawn at random from JSONL/Parquet/text files or `falconlm tokenize` shard directories."""
    import numpy as np

    streams: list[np.ndarray] = []
    texts: list[str] = []
    for p in paths:
        if (Path(p) / "index.json").is_file():
            from falconlm.train.shards import ShardIndex, load_shard

            index = ShardIndex.load(p)
            streams.extend(load_shard(p, info, index.dtype).astype(np.int64) for info in index.splits.get("train", []))
        else:
            texts.append(p)
    if texts:
        from falconlm.data.readers import ReadReport
        from falconlm.tokenizer.corpus import expand_paths, iter_texts, text_key_hint
        from falconlm.tokenizer.falcon import FalconTokenizer

        tokenizer = FalconTokenizer.load(tokenizer_dir)
        report = ReadReport()
        ids: list[int] = []
        for text in iter_texts(expand_paths(texts), text_key=text_key, report=report):
            ids.extend(tokenizer.encode(text) + [tokenizer.eot_id])
            if len(ids) >= 4 * count * length:
                break
        report.require_documents(hint=text_key_hint(text_key))  # malformed or unkeyed records are counted, never silent
        if report.summary():
            print(report.summary(), file=sys.stderr)
        streams.append(np.asarray(ids, dtype=np.int64))
    stream = np.concatenate(streams) if streams else np.zeros(0, dtype=np.int64)
    if stream.size < length + 1:
        raise FalconError(f"the calibration data holds {stream.size:,} tokens, fewer than one window of {length}; give more text or a smaller --seq-len")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, stream.size - length, size=count)
    return torch.from_numpy(np.stack([stream[s : s + length] for s in starts]))


def _block(config: FalconConfig, index: int, tensors: dict[str, torch.Tensor]) -> nn.Module:
    from falconlm.model.falcon import FalconDecoderLayer

    with torch.device("meta"):
        layer = FalconDecoderLayer(config, index)
    layer.load_state_dict({k: v.float() for k, v in tensors.items()}, assign=True, strict=True)
    return layer.eval()


def quantize_checkpoint(
    src: str | Path,
    out: str | Path,
    spec: QuantSpec,
    calibration: list[str] | None = None,
    samples: int = 128,
    seq_len: int = 512,
    seed: int = 0,
    batch_size: int = 8,
    max_shard_size: str = "5GB",
    text_key: str = "text",
    progress: bool = True,
    windows: torch.Tensor | None = None,
) -> QuantizeReport:
    """Quantize checkpoint `src` into a new GPTQ-format directory `out` (RTN, or GPTQ on `calibration` files or token `windows`)."""
    from falconlm.model.falcon import FalconForCausalLM

    src, out = Path(src), Path(out)
    started = time.perf_counter()
    if out.exists():
        raise FalconError(f"--out {out} already exists; choose a new directory")
    config = FalconConfig.from_json(src / "config.json")
    if config.quantization_config is not None:
        raise FalconError(f"{src} is already quantized; quantize its full-precision original")
    with torch.device("meta"):
        shell = FalconForCausalLM(config)
    spec = fit_group_size(spec, shell, explicit=True)
    per = 32 // spec.bits
    covered = covered_linears(shell, spec)
    for name, m in covered.items():
        if m.in_features % per or m.out_features % per:
            raise FalconError(f"{name} ({m.out_features} x {m.in_features}) cannot be stored in the {spec.bits}-bit GPTQ layout, whose sizes must be multiples of {per}" + ("; leave the LM head unquantized (no --lm-head)" if name == HEAD else ""))
    if spec.method == "gptq" and not calibration and windows is None:
        raise FalconError("--method gptq needs calibration text: pass --calibration FILE... (JSONL, Parquet, text, or a `falconlm tokenize` directory)")
    reader = _Reader(src)
    report = QuantizeReport(spec)
    report.bytes_in = sum((src / n).stat().st_size for n in set(reader.files.values()))
    dtype = next((reader.get(k).dtype for k in reader.files if k.endswith("ln_f.weight")), torch.float32)
    xs: list[torch.Tensor] = []
    if spec.method == "gptq":
        seq_len = min(seq_len, config.max_position_embeddings)
        if windows is None:
            windows = calibration_windows(calibration, src, samples, seq_len, seed, text_key)
        report.calibration_tokens = windows.numel()
        embedding = reader.get(EMBED_KEY).float()
        xs = [embedding[w] for w in windows.split(batch_size)]
        del embedding
        contexts: dict[int, object] = {}

        def context(x: torch.Tensor):
            # Full, unpadded windows: the shell (on meta) builds the rotary tables or ALiBi mask on the CPU.
            if x.shape[0] not in contexts:
                contexts[x.shape[0]] = shell.forward_context(torch.zeros(x.shape[:2], dtype=torch.long))
            return contexts[x.shape[0]]

    with atomic_dir(out) as tmp, ShardWriter(tmp, parse_size(max_shard_size)) as writer:
        bar = tqdm(total=config.num_hidden_layers + 1, desc=f"quantize {spec.describe()}", unit="block", disable=not progress)
        for i in range(config.num_hidden_layers):
            prefix = f"transformer.h.{i}."
            tensors = reader.prefix(prefix)
            block = _block(config, i, tensors)
            names = {n: prefix + n for n, m in block.named_modules() if isinstance(m, nn.Linear) and prefix + n in covered}
            hessians: dict[str, HessianAccumulator] = {}
            if spec.method == "gptq":
                hooks = []
                for local in names:
                    module = block.get_submodule(local)
                    hessians[local] = HessianAccumulator(module.in_features)
                    hooks.append(module.register_forward_hook(lambda mod, args, _out, acc=hessians[local]: acc.add(args[0])))
                with torch.no_grad():
                    for x in xs:
                        block(x, context(x))
                for h in hooks:
                    h.remove()
            for local, full in names.items():
                t0 = time.perf_counter()
                module = block.get_submodule(local)
                layer, rel = _quantize_one(module, spec, hessians.get(local))
                replace_module(block, local, layer)
                report.layers.append(LayerError(full, rel, time.perf_counter() - t0))
                for k, v in to_gptq(layer, spec).items():
                    writer.add(f"{full}.{k}", v)
            for key, tensor in block.state_dict().items():
                owner = key.rpartition(".")[0]
                if owner not in names:
                    writer.add(prefix + key, tensor.to(dtype))
            if spec.method == "gptq":
                with torch.no_grad():
                    xs = [block(x, context(x)) for x in xs]
            del block, tensors
            bar.update(1)
        ln_f = {k: reader.get(f"transformer.ln_f.{k}") for k in ("weight", "bias")}
        for k, v in ln_f.items():
            writer.add(f"transformer.ln_f.{k}", v)
        embedding = reader.get(EMBED_KEY)
        if HEAD in covered:
            head_weight = embedding if config.tie_word_embeddings else reader.get(f"{HEAD}.weight")
            head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            head.weight = nn.Parameter(head_weight.float(), requires_grad=False)
            hessian = None
            if spec.method == "gptq":
                norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
                norm.load_state_dict({k: v.float() for k, v in ln_f.items()})
                hessian = HessianAccumulator(config.hidden_size)
                with torch.no_grad():
                    for x in xs:
                        hessian.add(norm(x))
            t0 = time.perf_counter()
            layer, rel = _quantize_one(head, spec, hessian)
            report.layers.append(LayerError(HEAD, rel, time.perf_counter() - t0))
            for k, v in to_gptq(layer, spec).items():
                writer.add(f"{HEAD}.{k}", v)
            # Loaders that keep a separate embedding (transformers) then see the token vectors falconlm reads from the head.
            # (fp16, GPTQ's dtype for what it leaves unquantized; falconlm itself never reads this copy.)
            embedding = layer.dequantize().half() if config.tie_word_embeddings else embedding
        elif not config.tie_word_embeddings:
            writer.add(f"{HEAD}.weight", reader.get(f"{HEAD}.weight"))
        writer.add(EMBED_KEY, embedding)
        bar.update(1)
        bar.close()
        writer.close()
        write_config_files(tmp, dataclasses.replace(config, torch_dtype=str(dtype).removeprefix("torch."), quantization_config=spec.to_config()))
        copy_tokenizer_files(src, tmp)
        report.bytes_out = sum(p.stat().st_size for p in tmp.glob("*.safetensors"))
    report.seconds = time.perf_counter() - started
    return report


def _quantize_one(module: nn.Linear, spec: QuantSpec, hessian: HessianAccumulator | None) -> tuple[QuantLinear, float]:
    """GPTQ with a Hessian, else round-to-nearest; the relative output error when inputs were seen."""
    bias = None if module.bias is None else module.bias.detach()
    if hessian is None:
        return QuantLinear.from_float(module.weight, spec, bias), float("nan")
    layer, err = gptq_quantize(module.weight, hessian.h, spec, bias)
    w = module.weight.detach().float()
    signal = float(torch.einsum("nk,kl,nl->", w, hessian.h, w) / w.shape[0])
    return layer, math.sqrt(max(err, 0.0) / max(signal, 1e-30))
