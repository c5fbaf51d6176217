"""The matmul every Falcon linear layer runs: oneDNN on CPU in fp32, F.linear elsewhere.

On the CPUs we measured (AMD EPYC, 2 cores) oneDNN's fp32 inner-product kernels run about twice as
fast as the MKL sgemm behind F.linear, for the batch-1 decode GEMV and for the forward and both
backward GEMMs of training alike (benchmarks/bench_generate.py, benchmarks/bench_train.py). The
op has no autograd formula, so training goes through a small autograd Function whose backward
runs the two gradient GEMMs through oneDNN as well. CUDA, bf16/fp16, CPU autocast and
torch.compile take the standard F.linear path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
enabled = AVAILABLE  # set False to compare against F.linear


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


def pack_for_serving(model: torch.nn.Module) -> int:
    """Repack the fp32 CPU weights of every block's linear layers into oneDNN's blocked layout, in place of the plain ones; returns how many.

    The blocked layout skips the reorder oneDNN otherwise does on every call: a decode step over 4
    to 64 rows runs its matmuls 16-32% faster (bench-7b shapes, 2 threads), with the same results
    for 4 rows and more. The plain weights are released (the memory stays the same), so a packed
    model serves but can no longer be saved or trained: its state_dict refuses.
    """
    from falconlm.errors import FalconError

    if not AVAILABLE or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return 0
    packed = 0
    for block in getattr(getattr(model, "transformer", None), "h", []):
        for module in block.modules():
            weight = getattr(module, "weight", None)
            if type(module).__name__ != "FalconLinear" or not _plain(weight) or weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.numel() == 0:
                continue
            module.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), PACKED_FOR_ROWS)
            module.weight = torch.nn.Parameter(torch.empty(0, weight.shape[1]), requires_grad=False)
            packed += 1
    if packed:
        def refuse(*_: object) -> None:
            raise FalconError("this model's weights were packed for serving (falconlm.model.linear.pack_for_serving); load the checkpoint again to save or train it")

        model.register_state_dict_pre_hook(refuse)
    return packed


PACKED_FOR_ROWS = 16  # the batch-size hint oneDNN picks the blocked layout for (16-256 measured alike)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """x @ W.T for a weight repacked by pack_for_serving."""
    x2d = x.reshape(-1, x.shape[-1])
    if x2d.dtype != torch.float32 or x2d.device.type != "cpu":
        raise ValueError(f"packed weights take fp32 CPU inputs, got {x2d.dtype} on {x2d.device}")
    return torch.ops.mkldnn._linear_pointwise(x2d.contiguous(), packed, None, "none", [], "").view(*x.shape[:-1], out_features)


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T for 2-D tensors (no autograd through the oneDNN path: for use inside autograd Functions)."""
    return _onednn_mm(a.contiguous(), b.contiguous()) if _use_onednn(a, b) else a @ b.t()


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T (no bias) for inputs of any leading shape."""
    if not _use_onednn(x, weight):
        return F.linear(x, weight)
    x2d = x.reshape(-1, x.shape[-1])
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        y = _OneDNNLinear.apply(x2d, weight)
    else:
        y = _onednn_mm(x2d, weight)
    return y.view(*x.shape[:-1], weight.shape[0])
