"""The matmul every Falcon linear layer runs: on CPU in fp32 our few-row kernel or oneDNN, F.linear elsewhere.

On the CPUs we measured (AMD EPYC, 2 cores) oneDNN's fp32 inner-product kernels run about twice as
fast as the MKL sgemm behind F.linear, for the batch-1 decode GEMV and for the forward and both
backward GEMMs of training alike (benchmarks/bench_generate.py, benchmarks/bench_train.py). The
op has no autograd formula, so training goes through a small autograd Function whose backward
runs the two gradient GEMMs through oneDNN as well. CUDA, bf16/fp16, CPU autocast and
torch.compile take the standard F.linear path.

Inference on up to SMALL_ROWS rows (decode steps) runs falconlm's own kernel where it is built
(quant/cpu_kernels.cpp, f32_mm): oneDNN's GEMM for 4-16 rows reads the weight at half the speed
of its one-row GEMV, and the kernel reads it once for every row at near the GEMV's rate. Its
result for a row does not depend on the other rows, so a sequence decodes to the same bits alone
or in a batch of up to SMALL_ROWS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from falconlm.quant import kernels

AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
enabled = AVAILABLE  # set False to compare against F.linear
few_rows_kernel = True  # set False to compare oneDNN alone
NO_TENSOR = torch.empty(0)  # an unused tensor slot of a kernel plan (see FalconLinear.kernel_plan)
SMALL_ROWS = 24  # at 32 rows oneDNN's GEMM matches the kernel and past that it wins (bench_quant.py --kernels)


def _onednn_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T for 2-D fp32 CPU tensors through oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """y = x @ W.T with oneDNN GEMMs forward and backward."""

    @staticmethod
    def forward(ctx, x2d: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x2d, weight)
        return _onednn_mm(x2d, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x2d, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = _onednn_mm(grad, weight.t().contiguous()) if ctx.needs_input_grad[0] else None  # grad @ W
        grad_w = _onednn_mm(grad.t().contiguous(), x2d.t().contiguous()) if ctx.needs_input_grad[1] else None  # grad.T @ x
        return grad_x, grad_w


def _plain(t: torch.Tensor) -> bool:
    # Tensor subclasses (FSDP2's DTensor, fake tensors, ...) keep the standard path.
    return type(t) in (torch.Tensor, torch.nn.Parameter)


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        enabled
        and _plain(x)
        and _plain(weight)
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T for 2-D tensors (no autograd through the oneDNN path: for use inside autograd Functions)."""
    return _onednn_mm(a.contiguous(), b.contiguous()) if _use_onednn(a, b) else a @ b.t()


def few_rows_kernel_applies(rows: int, weight: torch.Tensor) -> bool:
    """Whether an inference product of `rows` rows with this fp32 CPU weight runs falconlm's few-row kernel (else oneDNN)."""
    return rows <= SMALL_ROWS and few_rows_kernel and weight.is_contiguous() and kernels.f32_available()


def runs_few_rows_kernel(x2d: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `linear(x2d, weight)` is falconlm's few-row kernel (f32_mm) alone, as the fused decode layer then calls it."""
    grad = torch.is_grad_enabled() and (x2d.requires_grad or weight.requires_grad)
    return _use_onednn(x2d, weight) and not grad and few_rows_kernel_applies(x2d.shape[0], weight)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T (no bias) for inputs of any leading shape."""
    if not _use_onednn(x, weight):
        return F.linear(x, weight)
    x2d = x.reshape(-1, x.shape[-1])
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        y = _OneDNNLinear.apply(x2d, weight)
    elif few_rows_kernel_applies(x2d.shape[0], weight):
        y = torch.ops.falconlm_quant.f32_mm(x2d.contiguous(), weight)
    else:
        y = _onednn_mm(x2d, weight)
    return y.view(*x.shape[:-1], weight.shape[0])
