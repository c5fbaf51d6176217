"""The CPU int8/int4 matmul kernels (cpu_kernels.cpp), built once per machine and torch version.

The extension is compiled on first use with the compiler torch's cpp_extension finds (about 10 s)
and cached under ~/.cache/falconlm/kernels, keyed by the source, the torch version and the CPU's
instruction sets, so a cache copied to another kind of CPU is never used there. When it cannot be
built (no compiler, FALCONLM_QUANT_KERNELS=0), `available()` is False and callers take the
dequantize-and-matmul path, which gives the same products more slowly. Each build is checked once
against that path on a probe before it is trusted.
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
            print("falconlm: compiling the int8/int4 CPU kernels once for this machine (about 10 s)...", file=sys.stderr, flush=True)
        # -fopenmp: at::parallel_for is an inline OpenMP region, serial without it. The extension then
        # needs libgomp.so.1, which resolves to the copy torch already loaded: one thread pool.
        flags = ["-O3", "-fopenmp", "-march=native" if os.uname().machine in ("x86_64", "AMD64") else "-mcpu=native"]
        load(name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"], build_directory=str(root), is_python_module=False, verbose=False)
    except Exception as exc:  # no compiler, no ninja, a failed build: the portable path still gives the same result
        warnings.warn(f"falconlm: the int8/int4 CPU kernels could not be built ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); quantized layers use the slower dequantize-and-matmul path", stacklevel=2)
        return False
    return _probe()


def vectorized() -> bool:
    """Whether the loaded build uses AVX-512 (else its portable loops)."""
    return available() and bool(torch.ops.falconlm_quant.vectorized())


def _probe() -> bool:
    g = torch.Generator().manual_seed(0)
    for bits, k, group in ((8, 96, 32), (8, 128, 128), (4, 128, 32), (4, 256, 128), (4, 128, 64)):
        n, m = 37, 5
        values = torch.randint(0, 2**bits, (n, k), generator=g, dtype=torch.uint8)
        scales = torch.rand(n, k // group, generator=g) / 50
        sz = scales * torch.randint(0, 2**bits, (n, k // group), generator=g).float()
        x = torch.randn(m, k, generator=g)
        want = x @ (values.float().view(n, -1, group) * scales[..., None] - sz[..., None]).view(n, k).T
        q = values if bits == 8 else pack_nibbles(values)
        got = getattr(torch.ops.falconlm_quant, f"q{bits}_mm")(x, q, scales, sz, group)
        deq = getattr(torch.ops.falconlm_quant, f"q{bits}_dequantize")(q, scales, sz, group, 0, n)
        scale = want.abs().max().clamp_min(1e-6)
        if not (torch.isfinite(got).all() and ((got - want).abs() <= _PROBE_TOLERANCE * scale).all() and torch.allclose(x @ deq.T, want, rtol=1e-4, atol=1e-4 * float(scale))):
            warnings.warn("falconlm: the int8/int4 CPU kernels disagree with the reference on a probe; quantized layers use the dequantize-and-matmul path", stacklevel=2)
            return False
    return True


def pack_nibbles(values: torch.Tensor) -> torch.Tensor:
    """uint8 values < 16, (N, K) with K % 64 == 0 -> the kernel's (N, K/2) layout (64 weights per 32 bytes)."""
    n, k = values.shape
    v = values.view(n, k // 64, 2, 32)
    return (v[:, :, 0] | (v[:, :, 1] << 4)).reshape(n, k // 2).contiguous()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_nibbles: (N, K/2) -> uint8 (N, K)."""
    n = packed.shape[0]
    b = packed.view(n, -1, 32)
    return torch.stack((b & 15, b >> 4), dim=2).reshape(n, -1)
