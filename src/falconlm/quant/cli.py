"""`falconlm quantize`: write an int8 / int4 GPTQ-format copy of a checkpoint (round-to-nearest or GPTQ)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from falconlm.configure import add_config_arguments, config_from_args


@dataclass
class QuantizeConfig:
    """Which checkpoint, how many bits, how the integers are chosen, and where the result goes."""

    checkpoint: str  # full-precision checkpoint directory
    out: str  # new directory for the quantized checkpoint (GPTQ layout: transformers, vLLM and TGI load it too)
    bits: int = 4  # 8 or 4
    group_size: int = 128  # weights per scale along the input; -1 = one scale per output channel
    method: str = "rtn"  # rtn (round to nearest, no data) | gptq (error-compensating, needs --calibration)
    calibration: list[str] = field(default_factory=list)  # JSONL/Parquet/text files or `falconlm tokenize` directories for GPTQ
    samples: int = 128  # calibration windows
    seq_len: int = 512  # tokens per calibration window
    sym: bool = True  # symmetric integers (zero point in the middle); false stores a zero point per group
    act_order: bool = False  # GPTQ act order (desc_act): columns by decreasing Hessian diagonal
    lm_head: bool = False  # quantize the LM head too (a tied embedding is then read from it)
    damp: float = 0.01  # GPTQ dampening, as a fraction of the mean Hessian diagonal
    seed: int = 0  # which calibration windows are drawn
    max_shard_size: str = "5GB"  # largest safetensors file of the output
    text_key: str = "text"  # JSON field holding the text of calibration JSONL records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options."""
    add_config_arguments(parser, QuantizeConfig, positional=("checkpoint",))


def run(args: argparse.Namespace) -> int:
    """Quantize and print the per-block error summary."""
    from falconlm.quant.quantize import quantize_checkpoint
    from falconlm.quant.spec import QuantSpec

    cfg = config_from_args(QuantizeConfig, args)
    spec = QuantSpec(bits=cfg.bits, group_size=cfg.group_size, sym=cfg.sym, desc_act=cfg.act_order, lm_head=cfg.lm_head, method=cfg.method, damp_percent=cfg.damp)
    report = quantize_checkpoint(cfg.checkpoint, cfg.out, spec, cfg.calibration, samples=cfg.samples, seq_len=cfg.seq_len, seed=cfg.seed, max_shard_size=cfg.max_shard_size, text_key=cfg.text_key)
    print(report.summary())
    print(f"wrote {cfg.out}")
    return 0
