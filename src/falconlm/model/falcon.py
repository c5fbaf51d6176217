"""The Falcon model: one config, three block styles, HF module names and the HF fused-QKV layout.

Block styles:
  Falcon-7B    parallel attention + MLP off one LayerNorm, multi-query (1 KV head)
  Falcon-40B   new_decoder_architecture: parallel, ln_attn + ln_mlp, grouped KV heads
  Falcon-RW    sequential, input/post_attention LayerNorms, multi-head, ALiBi, biases
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from falconlm.model.config import FalconConfig
from falconlm.model.kv_cache import KVCache
from falconlm.model.linear import NO_TENSOR, SMALL_ROWS, linear, runs_few_rows_kernel
from falconlm.model.paged_cache import PagedAttention, PagedKVCache, PagedLayout, attends_in_place
from falconlm.quant import kernels

_HAS_ENABLE_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


class FalconLinear(nn.Linear):
    """Linear whose bias is added after the matmul, as TII trained (it rounds differently in bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.weight)
        return y if self.bias is None else y + self.bias

    def kernel_plan(self, x2d: torch.Tensor) -> tuple[list[torch.Tensor], list[int]] | None:
        """How `forward(x2d)` runs when it is one f32_mm call (the fused decode layer then makes it): its tensors and integers, else None."""
        if not runs_few_rows_kernel(x2d, self.weight) or (self.bias is not None and self.bias.dtype != torch.float32):
            return None
        bias = NO_TENSOR if self.bias is None else self.bias
        return [self.weight, NO_TENSOR, NO_TENSOR, bias], [0, 0, 0, 0, self.weight.shape[0], 0, int(self.bias is not None)]


# ----------------------------------------------------------------------------- positions


def _rope_kind(config: FalconConfig) -> str:
    scaling = config.rope_scaling or {}
    return scaling.get("rope_type", scaling.get("type", "default"))


def rope_cos_sin(config: FalconConfig, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (B, 1, T, head_dim) for the half-split (NeoX) rotary convention."""
    dim, base = config.head_dim, config.rope_theta
    scaling = config.rope_scaling or {}
    kind = _rope_kind(config)
    if kind == "dynamic":
        # Dynamic NTK (as transformers): grow the base once positions pass the trained length.
        seq_len = int(positions.max()) + 1
        if seq_len > config.max_position_embeddings:
            factor = float(scaling["factor"])
            base = base * ((factor * seq_len / config.max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device=positions.device).float() / dim))
    if kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin over the last dimension."""
    if _compiled_rope(x, cos, sin):  # one pass instead of seven ops, the same bits (decode steps run ~170 of these)
        return torch.ops.falconlm_quant.rope(x, cos, sin)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _compiled_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    if not (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and x.stride(-1) == 1 and cos.is_contiguous() and sin.is_contiguous()):
        return False
    if cos.dtype != torch.float32 or cos.shape != (x.shape[0], 1, x.shape[2], x.shape[3]) or sin.shape != cos.shape:
        return False
    if (torch.is_grad_enabled() and x.requires_grad) or type(x) is not torch.Tensor or torch.compiler.is_compiling():
        return False
    return kernels.f32_available()


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU: for fp32 CPU inference falconlm's kernel (the one the compiled decode layer runs: within 4.7e-7 of float64, batch invariant), else torch's."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and not (torch.is_grad_enabled() and x.requires_grad) and type(x) is torch.Tensor and not torch.compiler.is_compiling() and kernels.f32_available():
        return torch.ops.falconlm_quant.gelu(x)
    return F.gelu(x)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi slopes (BLOOM / Press et al.), including head counts that are not a power of two."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(closest) - 3))), dtype=torch.float32)
    slopes = torch.pow(base, torch.arange(1, 1 + closest, dtype=torch.int32))
    if closest != num_heads:
        extra_base = torch.tensor(2 ** (-(2 ** -(math.log2(2 * closest) - 3))), dtype=torch.float32)
        remaining = min(closest, num_heads - closest)
        slopes = torch.cat([slopes, torch.pow(extra_base, torch.arange(1, 1 + 2 * remaining, 2, dtype=torch.int32))])
    return slopes


_SLOPES: dict[tuple[int, torch.device], torch.Tensor] = {}


def _device_slopes(num_heads: int, device: torch.device) -> torch.Tensor:
    # Built once per device: a host-to-device copy cannot happen inside a CUDA graph capture.
    key = (num_heads, torch.device(device))
    if key not in _SLOPES:
        _SLOPES[key] = alibi_slopes(num_heads).to(device).bfloat16()
    return _SLOPES[key]


def alibi_bias(config: FalconConfig, key_positions: torch.Tensor, dtype: torch.dtype, heads: slice = slice(None)) -> torch.Tensor:
    """(B, H, 1, S) bias already divided by sqrt(head_dim): Falcon adds ALiBi before the 1/sqrt(d) scale,
    with slopes rounded to bfloat16, as the released checkpoints were trained. `heads` picks the global
    query heads (a tensor-parallel rank computes only its own)."""
    slopes = _device_slopes(config.num_attention_heads, key_positions.device)[heads]
    bias = slopes[None, :, None] * key_positions[:, None, :]
    return (bias.to(dtype) / math.sqrt(config.head_dim))[:, :, None, :]


# ----------------------------------------------------------------------------- blocks


class FalconAttention(nn.Module):
    """Multi-head, multi-query or grouped-query attention over HF's fused QKV rows."""

    def __init__(self, config: FalconConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.stored_kv_heads = config.stored_kv_heads
        self.group = self.num_heads // self.stored_kv_heads
        self.head_dim = config.head_dim
        self.query_key_value = FalconLinear(config.hidden_size, config.qkv_out_features, bias=config.bias)
        self.dense = FalconLinear(config.hidden_size, config.hidden_size, bias=config.bias)

    def forward(self, x: torch.Tensor, ctx: "_ForwardContext") -> torch.Tensor:
        b, t, _ = x.shape
        # HF row layout: per KV group [q_0 .. q_{g-1}, k, v], head_dim rows each.
        qkv = self.query_key_value(x).view(b, t, self.stored_kv_heads, self.group + 2, self.head_dim)
        q = qkv[:, :, :, : self.group].reshape(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = qkv[:, :, :, self.group].transpose(1, 2)
        v = qkv[:, :, :, self.group + 1].transpose(1, 2)
        if ctx.cos is not None:
            q, k = apply_rope(q, ctx.cos, ctx.sin), apply_rope(k, ctx.cos, ctx.sin)
        if ctx.paged is not None:
            return self.dense(ctx.paged.attend(self.layer_idx, q, k, v, self.stored_kv_heads))
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer_idx, k, v, ctx.slots)
            if ctx.in_place is not None:  # one new token per row: read the cache in place (model/paged_cache.py)
                slots, lengths = ctx.in_place
                cache, d = ctx.cache, self.head_dim
                out = torch.ops.falconlm_quant.decode_attention(
                    q[:, :, 0].contiguous(), cache.keys[self.layer_idx], cache.values[self.layer_idx], slots, lengths, d**-0.5,
                    self.stored_kv_heads, d, cache.max_length * d,
                )
                return self.dense(out.view(b, 1, self.num_heads * d))
        out = self._attend(q, k, v, ctx)
        return self.dense(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: "_ForwardContext") -> torch.Tensor:
        b, h, t, d = q.shape
        mask = ctx.mask
        if t == 1 and not ctx.causal_only:
            # One new token: the g query heads of a group share its K/V, so fold them into the
            # query-length axis and attend to the cached KV heads without ever copying them.
            qg = q.reshape(b, self.stored_kv_heads, self.group, d)
            if mask is not None and mask.shape[1] != 1:
                mask = mask.reshape(b, self.stored_kv_heads, self.group, -1)
            return F.scaled_dot_product_attention(qg, k, v, attn_mask=mask).reshape(b, h, 1, d)
        if self.group > 1 and not _HAS_ENABLE_GQA:
            k = k.repeat_interleave(self.group, dim=1)
            v = v.repeat_interleave(self.group, dim=1)
        kwargs = {"enable_gqa": True} if self.group > 1 and _HAS_ENABLE_GQA else {}
        if ctx.causal_only:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, **kwargs)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)


class FalconMLP(nn.Module):
    """dense_4h_to_h(gelu(dense_h_to_4h(x)))."""

    def __init__(self, config: FalconConfig):
        super().__init__()
        self.dense_h_to_4h = FalconLinear(config.hidden_size, config.ffn_hidden_size, bias=config.bias)
        self.dense_4h_to_h = FalconLinear(config.ffn_hidden_size, config.hidden_size, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(gelu(self.dense_h_to_4h(x)))


class FalconDecoderLayer(nn.Module):
    """One block; its LayerNorm names depend on the style, exactly as in transformers."""

    def __init__(self, config: FalconConfig, layer_idx: int):
        super().__init__()
        self.style = config.block_style
        eps = config.layer_norm_epsilon
        if self.style == "parallel-2ln":
            self.ln_attn = nn.LayerNorm(config.hidden_size, eps=eps)
            self.ln_mlp = nn.LayerNorm(config.hidden_size, eps=eps)
        else:
            self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)
            if self.style == "sequential":
                self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.self_attention = FalconAttention(config, layer_idx)
        self.mlp = FalconMLP(config)
        # Tensor parallelism (falconlm.parallel) sets this to the all-reduce of the ranks' partial sums.
        self.reduce_outputs: Any = None

    def decode_plan(self, x2d: torch.Tensor) -> tuple[list[torch.Tensor], list[int]] | None:
        """The tensors and integers with which the compiled decode_layer runs this block's forward for the rows x2d, or None where it cannot.

        It can where the block is this class with no hooks and no tensor-parallel reduce, and every
        linear runs one of falconlm's kernels (kernel_plan); then it computes what `forward` does,
        with the same kernels in the same order.
        """
        attn, mlp = self.self_attention, self.mlp
        linears = (attn.query_key_value, attn.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h)
        norms = (self.ln_attn, self.ln_mlp) if self.style == "parallel-2ln" else (self.input_layernorm, getattr(self, "post_attention_layernorm", None))
        if type(self) is not FalconDecoderLayer or type(attn) is not FalconAttention or type(mlp) is not FalconMLP or self.reduce_outputs is not None:
            return None
        if not _plain_calls((self, attn, mlp, *linears, *[n for n in norms if n is not None])):
            return None
        tensors: list[torch.Tensor] = []
        for norm in norms:
            if norm is None:
                tensors += [NO_TENSOR, NO_TENSOR]
            elif type(norm) is nn.LayerNorm and norm.weight is not None and norm.bias is not None and norm.normalized_shape == (x2d.shape[1],) and norm.eps == attn.config.layer_norm_epsilon:
                tensors += [norm.weight, norm.bias]
            else:
                return None
        ints = [_STYLE_CODES[self.style], attn.num_heads, attn.stored_kv_heads, attn.head_dim]
        for lin in linears:
            # Only a class's own kernel_plan describes its forward (LoRA or tensor-parallel subclasses add to it).
            plan = lin.kernel_plan(x2d) if "kernel_plan" in type(lin).__dict__ else None
            if plan is None:
                return None
            tensors += plan[0]
            ints += plan[1]
        return tensors, ints

    def forward(self, x: torch.Tensor, ctx: "_ForwardContext") -> torch.Tensor:
        if self.style == "sequential":
            x = x + self.self_attention(self.input_layernorm(x), ctx)
            return x + self.mlp(self.post_attention_layernorm(x))
        if self.style == "parallel-2ln":
            attn, mlp = self.self_attention(self.ln_attn(x), ctx), self.mlp(self.ln_mlp(x))
        else:
            h = self.input_layernorm(x)
            attn, mlp = self.self_attention(h, ctx), self.mlp(h)
        out = mlp + attn
        return x + (out if self.reduce_outputs is None else self.reduce_outputs(out))


fused_decode = True  # set False to run every decode step's blocks through their Python forward (the same bits, slower)
_STYLE_CODES = {"parallel-1ln": 0, "parallel-2ln": 1, "sequential": 2}  # decode_layer's numbering (quant/cpu_kernels.cpp)


def _plain_calls(modules: tuple[nn.Module, ...]) -> bool:
    """Whether calling these modules runs only their forward: no hooks of their own or global ones."""
    from torch.nn.modules import module as module_globals

    if module_globals._global_forward_hooks or module_globals._global_forward_pre_hooks:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


class FalconModel(nn.Module):
    """Embeddings, blocks and the final LayerNorm (HF's `transformer`)."""

    def __init__(self, config: FalconConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.h = nn.ModuleList(FalconDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)


class _ForwardContext:
    """What every layer of one forward call shares: rotary tables, the mask, the cache slots."""

    __slots__ = ("cos", "sin", "mask", "causal_only", "cache", "slots", "paged", "in_place", "fused")

    def __init__(self) -> None:
        self.cos = self.sin = self.mask = self.cache = self.slots = self.paged = self.in_place = None
        # Decode rows only, attending in place (so RoPE): (the cache, write slots, read slots, lengths, slot stride, head stride) for decode_layer.
        self.fused: tuple | None = None
        self.causal_only = False


# ----------------------------------------------------------------------------- the LM


class FalconForCausalLM(nn.Module):
    """Falcon with a tied language-model head. `model(input_ids)` returns logits (B, T, vocab)."""

    def __init__(self, config: FalconConfig):
        super().__init__()
        self.config = config
        self.transformer = FalconModel(config)
        self.lm_head = FalconLinear(config.hidden_size, config.vocab_size, bias=False)
        self.source_dir: str | None = None  # where from_pretrained read us (tokenizer files are copied on save)
        self.alibi_heads = slice(None)  # the global query heads whose ALiBi slopes apply (a tensor-parallel rank: its own)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.word_embeddings.weight
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    # ----- weights -----
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """HF's init: Linear/Embedding N(0, initializer_range), biases 0, LayerNorm 1/0."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.word_embeddings.weight

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the activations (and of the weights that are not quantized)."""
        return self.transformer.ln_f.weight.dtype

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.transformer.ln_f.weight.device

    def num_parameters(self) -> int:
        """Parameters with tied weights counted once."""
        return sum(p.numel() for p in self.parameters())

    # ----- forward -----
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Logits (B, T, vocab), or (B, logits_to_keep, vocab) for the last positions only.

        attention_mask (B, T) marks real tokens (1) and padding (0); position ids then count real
        tokens only, so a left-padded row gets the same logits as the row alone. With a cache,
        only the new tokens are passed and their keys/values are appended to it.
        """
        hidden = self.hidden_states(input_ids, attention_mask, position_ids, cache)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return self.lm_head(hidden)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Final hidden states (after ln_f), (B, T, hidden)."""
        ctx = self.forward_context(input_ids, attention_mask, position_ids, cache)
        return self._blocks(input_ids, ctx)

    def _blocks(self, input_ids: torch.Tensor, ctx: "_ForwardContext") -> torch.Tensor:
        """Embeddings, every block under one forward context, the final LayerNorm."""
        x = self.transformer.word_embeddings(input_ids)
        fused = self._fused_blocks(x, ctx) if ctx.fused is not None else None
        if fused is not None:
            x = fused
        else:
            for layer in self.transformer.h:
                x = layer(x, ctx)
        return self.transformer.ln_f(x)

    def _fused_blocks(self, x: torch.Tensor, ctx: "_ForwardContext") -> torch.Tensor | None:
        """Every block of a decode step through the compiled decode_layer (the bits of their forward), or None where a block has no plan."""
        if not fused_decode or x.dtype != torch.float32 or torch.is_grad_enabled():
            return None
        x2d = x.reshape(-1, x.shape[-1])
        cache, write, read, lengths, slot_stride, head_stride = ctx.fused
        few_rows = x2d.shape[0] <= SMALL_ROWS  # the one thing about the rows a plan depends on (fp32 linears' kernel)
        plans = cache.decode_plans.get(few_rows)
        if plans is None:
            plans = cache.decode_plans[few_rows] = [layer.decode_plan(x2d) for layer in self.transformer.h]
        if any(plan is None for plan in plans):
            return None
        d, eps = self.config.head_dim, self.config.layer_norm_epsilon
        cos, sin = ctx.cos.reshape(-1, d), ctx.sin.reshape(-1, d)
        step = torch.ops.falconlm_quant.decode_layer
        for i, (tensors, ints) in enumerate(plans):
            x2d = step(x2d, tensors, ints, cos, sin, cache.keys[i], cache.values[i], write, read, lengths, slot_stride, head_stride, eps)
        return x2d.view(x.shape)

    def forward_context(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> "_ForwardContext":
        """What every block of one forward call shares (rotary tables, mask, cache slots); reserves the cache slots."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a (batch, seq) tensor, got shape {tuple(input_ids.shape)}")
        b, t = input_ids.shape
        device = input_ids.device
        dtype = self.dtype
        ctx = _ForwardContext()
        valid = torch.ones(b, t, dtype=torch.bool, device=device) if attention_mask is None else attention_mask.to(torch.bool)
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}")
        past = cache.length if cache is not None else 0
        if position_ids is None:
            seen = cache.valid[:, :past].sum(1, keepdim=True) if cache is not None else 0
            position_ids = (seen + valid.long().cumsum(1) - 1).clamp_min(0)
        if cache is not None:
            ctx.cache, ctx.slots = cache, cache.reserve(position_ids, valid)
            key_valid, key_pos = cache.valid[:, : past + t], cache.positions[:, : past + t]
        else:
            key_valid, key_pos = valid, position_ids
        all_valid = bool(key_valid.all())
        if self.config.rotary:
            ctx.cos, ctx.sin = rope_cos_sin(self.config, position_ids, dtype)
        if cache is not None and t == 1 and all_valid and not torch.is_grad_enabled() and attends_in_place(self.config, cache.keys):
            # Row b's slot s is b * kv * max_length + s in the (B, kv, max_length, D) cache; every slot so far is valid.
            rows = torch.arange(b, device=device)[:, None] * (cache.keys.shape[2] * cache.max_length)
            ctx.in_place = (rows + torch.arange(past + 1, device=device)[None, :], torch.full((b,), past + 1, dtype=torch.long, device=device))
            # The new token of row b goes to slot past of each of its KV heads.
            ctx.fused = (cache, rows[:, 0] + past, *ctx.in_place, self.config.head_dim, cache.max_length * self.config.head_dim)
        # Masks: the fast causal path when nothing is padded and nothing is cached.
        if self.config.rotary and all_valid and past == 0 and t > 1:
            ctx.causal_only = True
        elif not (self.config.rotary and all_valid and t == 1):
            allowed = key_valid[:, None, None, :]  # (B, 1, 1, S)
            if t > 1:
                q_slot = torch.arange(past, past + t, device=device)[:, None]
                k_slot = torch.arange(past + t, device=device)[None, :]
                # A padded query row still sees itself, so no row is fully masked (which gives NaN).
                allowed = (allowed & (k_slot <= q_slot)) | (k_slot == q_slot)
            if self.config.alibi:
                bias = alibi_bias(self.config, key_pos * key_valid, dtype, self.alibi_heads)
                ctx.mask = bias.masked_fill(~allowed, torch.finfo(dtype).min)
            else:
                ctx.mask = allowed
        return ctx

    def decode_hidden(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: KVCache, slot: torch.Tensor) -> torch.Tensor:
        """The static-shape decode step: final hidden states (B, hidden) of one token per row written at cache slot `slot`.

        Every shape is fixed by the cache (attention runs over all its slots under a validity
        mask) and `slot` and the positions are device tensors, so nothing is read back to the host:
        the same call can be captured once in a CUDA graph and replayed. Its tokens equal those of
        `hidden_states` with the same cache (the masked slots add nothing).
        """
        ctx = _ForwardContext()
        ctx.cache, ctx.slots = cache, cache.reserve_at(slot, position_ids)
        if self.config.rotary:
            ctx.cos, ctx.sin = rope_cos_sin(self.config, position_ids, self.dtype)
        allowed = cache.valid[:, None, None, :]
        if self.config.alibi:
            bias = alibi_bias(self.config, cache.positions * cache.valid, self.dtype, self.alibi_heads)
            ctx.mask = bias.masked_fill(~allowed, torch.finfo(self.dtype).min)
        else:
            ctx.mask = allowed
        return self._blocks(input_ids, ctx)[:, -1]

    def paged_hidden(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: PagedKVCache, layout: PagedLayout) -> torch.Tensor:
        """Final hidden states (1, T, hidden) of one packed engine step: every scheduled sequence's new tokens in one row.

        Keys and values go to the paged cache at `layout.slots`; attention reads each sequence's
        context through its block table (model/paged_cache.py). Each token's hidden state equals
        the one it gets in a forward of its sequence alone.
        """
        ctx = _ForwardContext()
        ctx.paged = PagedAttention(self.config, cache, layout, self.dtype, self.alibi_heads)
        if ctx.paged.in_place and not layout.chunks and layout.decode_rows == input_ids.shape[1]:
            kv, d = cache.keys.shape[2], self.config.head_dim
            ctx.fused = (cache, layout.slots.contiguous(), layout.decode_keys.contiguous(), layout.decode_lengths.contiguous(), kv * d, d)
        if self.config.rotary:
            if _rope_kind(self.config) == "dynamic":  # the base depends on the longest position: each sequence its own, as alone
                tables = [rope_cos_sin(self.config, position_ids[:, off : off + n], self.dtype) for off, n in layout.parts()]
                ctx.cos, ctx.sin = torch.cat([c for c, _ in tables], dim=2), torch.cat([s for _, s in tables], dim=2)
            else:
                ctx.cos, ctx.sin = rope_cos_sin(self.config, position_ids, self.dtype)
        return self._blocks(input_ids, ctx)

    def new_paged_cache(self, num_blocks: int, block_size: int) -> PagedKVCache:
        """A pool of `num_blocks` KV blocks of `block_size` tokens, of the KV heads this model's attention holds."""
        kv_heads = self.transformer.h[0].self_attention.stored_kv_heads if len(self.transformer.h) else None
        return PagedKVCache(self.config, num_blocks, block_size, self.dtype, self.device, kv_heads=kv_heads)

    @property
    def has_static_decode(self) -> bool:
        """Whether `decode_hidden` applies: not for dynamic NTK RoPE, whose base depends on the longest position (read on the host)."""
        return _rope_kind(self.config) != "dynamic"

    def new_cache(self, batch_size: int, max_length: int) -> KVCache:
        """A preallocated cache for `max_length` tokens per row, of the KV heads this model's attention holds."""
        kv_heads = self.transformer.h[0].self_attention.stored_kv_heads if len(self.transformer.h) else None
        return KVCache(self.config, batch_size, max_length, self.dtype, self.device, kv_heads=kv_heads)

    # ----- checkpoints (HF directory layout) -----
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu", quantize: str | None = None) -> "FalconForCausalLM":
        """Load an HF Falcon directory (ours, transformers' or a GPTQ one), tensor by tensor; `quantize` ('int8' | 'int4') quantizes a full-precision one as it is read."""
        from falconlm.model.checkpoint import load_pretrained

        return load_pretrained(cls, directory, dtype=dtype, device=device, quantize=quantize)

    def save_pretrained(self, directory: str | os.PathLike, max_shard_size: int | str = "5GB", tokenizer_dir: str | os.PathLike | None = None) -> None:
        """Write config.json, safetensors (sharded past max_shard_size), generation_config.json and tokenizer files."""
        from falconlm.model.checkpoint import save_pretrained

        save_pretrained(self, directory, max_shard_size=max_shard_size, tokenizer_dir=tokenizer_dir)

    def extra_repr(self) -> str:
        c = self.config
        return f"style={c.block_style}, layers={c.num_hidden_layers}, heads={c.num_attention_heads}, kv_heads={c.stored_kv_heads}, {'alibi' if c.alibi else 'rope'}"


def build_model(config: FalconConfig, dtype: torch.dtype = torch.float32, device: Any = "cpu", seed: int | None = None) -> FalconForCausalLM:
    """A randomly initialised model (HF's init) in the given dtype and device."""
    if seed is not None:
        torch.manual_seed(seed)
    return FalconForCausalLM(config).to(dtype=dtype, device=device)
