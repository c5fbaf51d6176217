"""The CPU matmul kernels (cpu_kernels.cpp: int8/int4, and fp32 for few rows), built once per machine and torch version.

The extension is compiled on first use with the compiler torch's cpp_extension finds (about 10 s)
and cached under ~/.cache/falconlm/kernels, keyed by the source, the torch version and the CPU's
instruction sets, so a cache copied to another kind of CPU is never used there. When it cannot be
built (no compiler, FALCONLM_QUANT_KERNELS=0), `available()` is False and callers take the
dequantize-and-matmul path, which gives the same products more slowly (fp32 layers: oneDNN). Each
build is checked once against those paths on a probe before it is trusted.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
_PROBE_TOLERANCE = 1e-4


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return os.uname().machine


def _build_dir() -> tuple[str, Path]:
    key = hashlib.sha256(SOURCE.read_bytes() + Path(__file__).read_bytes() + torch.__version__.encode() + _cpu_flags().encode() + sys.version.encode()).hexdigest()[:16]
    name = f"falconlm_quant_{key}"
    root = Path(os.environ.get("FALCONLM_CACHE", Path.home() / ".cache" / "falconlm")) / "kernels" / name
    return name, root


@functools.cache
def available() -> bool:
    """Whether the compiled kernels are loaded and agree with the reference on a probe."""
    if os.environ.get("FALCONLM_QUANT_KERNELS", "1") == "0":
        return False
    name, root = _build_dir()
    try:
        from torch.utils.cpp_extension import load

        root.mkdir(parents=True, exist_ok=True)
        if not any(root.glob("*.so")):
            print("falconlm: compiling the CPU matmul kernels once for this machine (about 10 s)...", file=sys.stderr, flush=True)
        # -fopenmp: at::parallel_for is an inline OpenMP region, serial without it. The extension then
        # needs libgomp.so.1, which resolves to the copy torch already loaded: one thread pool.
        # -ffp-contract=off: a product and a sum stay two roundings, as torch's ops do (rope gives torch's bits).
        flags = ["-O3", "-fopenmp", "-ffp-contract=off", "-march=native" if os.uname().machine in ("x86_64", "AMD64") else "-mcpu=native"]
        load(name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"], build_directory=str(root), is_python_module=False, verbose=False)
    except Exception as exc:  # no compiler, no ninja, a failed build: the portable path still gives the same result
        warnings.warn(f"falconlm: the int8/int4 CPU kernels could not be built ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); quantized layers use the slower dequantize-and-matmul path", stacklevel=2)
        return False
    return _probe()


@functools.cache
def f32_available() -> bool:
    """Whether the fp32 few-row kernel is built here (it needs AVX-512) and agrees with a float64 product on a probe."""
    if not (available() and torch.ops.falconlm_quant.has_f32()):
        return False
    g = torch.Generator().manual_seed(0)
    for m, k, n in ((1, 37, 5), (7, 768, 9), (13, 64, 40)):  # row, output and input tails
        x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
        got, want = torch.ops.falconlm_quant.f32_mm(x, w), (x.double() @ w.double().T).float()
        if not (torch.isfinite(got).all() and ((got - want).abs() <= _PROBE_TOLERANCE * want.abs().max()).all()):
            warnings.warn("falconlm: the fp32 CPU kernel disagrees with the reference on a probe; fp32 layers use oneDNN", stacklevel=2)
            return False
    return True


def vectorized() -> bool:
    """Whether the loaded build uses AVX512-VNNI (else its portable loops, with the same results)."""
    return available() and bool(torch.ops.falconlm_quant.vectorized())


def _probe() -> bool:
    g = torch.Generator().manual_seed(0)
    for bits, k, n, group, act_group, uniform in ((8, 96, 37, 96, 32, False), (8, 128, 16, 64, 64, True), (4, 128, 37, 32, 32, False), (4, 256, 40, 128, 32, True), (4, 64, 5, 64, 16, False)):
        m = 5
        values = torch.randint(0, 2**bits, (n, k), generator=g, dtype=torch.uint8)
        scales = torch.rand(n, k // group, generator=g) / 50
        zeros = torch.randint(0, 2**bits + 1, (n, k // group), generator=g).to(torch.int16)
        if uniform:
            zeros.fill_(2 ** (bits - 1))
        x = torch.randn(m, k, generator=g)
        w = (values.float().view(n, -1, group) - zeros.float()[..., None]) * scales[..., None]
        want = quantize_activations(x, act_group) @ w.view(n, k).T
        st, zt = pad_columns(scales.T, 16), pad_columns(zeros.T, 16)
        got = torch.ops.falconlm_quant.qa8_mm(x, pack_vnni(values, bits), st.contiguous(), zt.contiguous(), bits, group, act_group, n, 2 ** (bits - 1) if uniform else -1)
        scale = want.abs().max().clamp_min(1e-6)
        if not (torch.isfinite(got).all() and ((got - want).abs() <= _PROBE_TOLERANCE * scale).all()):
            warnings.warn("falconlm: the int8/int4 CPU kernels disagree with the reference on a probe; quantized layers use the dequantize-and-matmul path", stacklevel=2)
            return False
    return True


def quantize_activations(x: torch.Tensor, act_group: int) -> torch.Tensor:
    """x (M, K) rounded as the kernels round it: int8 in groups of act_group values, scale max|x| / 127."""
    m, k = x.shape
    xg = x.float().view(m, k // act_group, act_group)
    scale = xg.abs().amax(dim=-1, keepdim=True) / 127.0
    q = torch.where(scale > 0, torch.round(xg / torch.where(scale > 0, scale, 1.0)), 0.0).clamp_(-127, 127)
    return (q * scale).view(m, k)


def pad_columns(t: torch.Tensor, multiple: int) -> torch.Tensor:
    """t (..., N) with zero columns added up to a multiple of `multiple`."""
    extra = -t.shape[-1] % multiple
    return t if extra == 0 else torch.cat([t, t.new_zeros(*t.shape[:-1], extra)], dim=-1)


def pack_vnni(values: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 integers (N, K), K % 8 == 0 -> the qa8_mm layout (tiles, 16 * K * bits / 8), N padded to 16."""
    n, k = values.shape
    v = pad_columns(values.T, 16).T.contiguous()  # (Np, K)
    tiles = v.shape[0] // 16
    if bits == 8:  # [tile][K/4][16 outputs][4 weights]
        return v.view(tiles, 16, k // 4, 4).permute(0, 2, 1, 3).reshape(tiles, -1).contiguous()
    # [tile][K/8][16 outputs][4 bytes]: weights k..k+3 in the low nibbles, k+4..k+7 in the high ones
    b = v.view(tiles, 16, k // 8, 2, 4).permute(0, 2, 3, 1, 4)
    return (b[:, :, 0] | (b[:, :, 1] << 4)).reshape(tiles, -1).contiguous()


def unpack_vnni(packed: torch.Tensor, bits: int, n: int, k: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of pack_vnni: the uint8 integers (n, k), or only the output rows `rows` (L,) as (L, k)."""
    tiles = packed.shape[0]
    if bits == 8:
        t = packed.view(tiles, k // 4, 16, 4)
        if rows is not None:
            return t[rows // 16, :, rows % 16].reshape(-1, k)
        return t.permute(0, 2, 1, 3).reshape(tiles * 16, k)[:n]
    t = packed.view(tiles, k // 8, 16, 4)
    if rows is not None:
        b = t[rows // 16, :, rows % 16]  # (L, K/8, 4)
        return torch.stack((b & 15, b >> 4), dim=-2).reshape(-1, k)
    b = torch.stack((t & 15, t >> 4), dim=2)  # (tiles, K/8, 2, 16, 4)
    return b.permute(0, 3, 1, 2, 4).reshape(tiles * 16, k)[:n]
