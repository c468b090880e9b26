"""One decode step of the fused int8 Llama written out as plain tensor calls, without transformers' module tree.

transformers' forward is general: per step it builds position embeddings, a 4-D mask through its masking
utilities, per layer it goes through a decoder layer, an attention module, the attention-function registry and
the cache's dispatch, and it returns a `ModelOutput`. This computes what `FusedQKVAttention` / `FusedMLP` compute
under transformers 5.24, the same arithmetic on every element (queries and keys are rotated as one tensor), so the
logits are bit for bit those of `model(...)`: tests/code/test_quantize.py holds them equal through padding, a
merge and a select. It is what gpt-fast's `decode_one_token` is to its model.

Measured (`python -m benchmarks.fused_decode --lean`, the champion, 2 threads, 200 cached tokens, paired steps,
two runs): 1.10-1.14x at 1 row (32.1 -> 28.9 ms), 1.10-1.13x at 4, 1.06-1.08x at 16. The int8 products are then
called as PyTorch's ops on their packed weights, gathered once per model (`_plan`), not through their modules
(`nn.Module.__call__`, `_packed_params` lookups, a no-op `.to`; the per-token scaling inline): a step 1.13-1.16x
faster at one row (one thread, as served: 16.6 -> 14.3 ms; two threads 1.15x), 1.11-1.12x at 4 and 1.06x at 16
rows, paired over 100 steps at 60 cached tokens, the same logits bit for bit. What is left of a step is in
`python -m benchmarks.profile_step` (the README has its table): the int8 products read ~135 MB at 16-20 GB/s, and
the other ops and the Python between them take as long again.

Only the fused int8 form takes this path (`supports`); the float model, the exact reference and the GPU path,
keeps transformers' forward.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from transformers import DynamicCache, PreTrainedModel
from transformers.activations import SiLUActivation
from transformers.models.llama.modeling_llama import LlamaForCausalLM, rotate_half

from core.int8_modules import FusedMLP, FusedQKVAttention, PerTokenInt8Linear

# what a dynamic int8 Linear's forward calls on its packed weight; the overload, not its packet: ~1 us less a call
_linear = torch.ops.quantized.linear_dynamic.default  # (X, W_prepack, reduce_range)


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's weights as the step uses them: norms' weights and the int8 products' packed weights."""

    input_norm: torch.Tensor
    qkv: Any
    o: Any
    post_norm: torch.Tensor
    gate_up: Any
    down: Any
    down_per_token: bool  # `PerTokenInt8Linear`: each input row on its own scale
    down_bias: torch.Tensor | None  # a per-token Linear's bias (a plain one packs its bias with the weight)


# fused models -> their plan; only positive answers are kept, so a model fused after a first look is seen then
_plans: weakref.WeakKeyDictionary[PreTrainedModel, list[_Layer]] = weakref.WeakKeyDictionary()


def _packed(m: Any) -> Any | None:
    """A dynamic int8 Linear's packed weight, if it runs `linear_dynamic` with `reduce_range` (version 4 and up,
    qint8: every module `core.int8_modules` builds); None for anything else."""
    ok = isinstance(m, DynamicInt8Linear) and (m.version or 0) >= 4 and m._packed_params.dtype == torch.qint8
    return m._packed_params._packed_params if ok else None


def _layer(layer: Any) -> _Layer | None:
    attn, mlp = layer.self_attn, layer.mlp
    if not (isinstance(attn, FusedQKVAttention) and isinstance(mlp, FusedMLP)):
        return None
    per_token = isinstance(mlp.down_proj, PerTokenInt8Linear)
    down = _packed(mlp.down_proj.int8 if per_token else mlp.down_proj)
    qkv, o, gate_up = _packed(attn.qkv_proj), _packed(attn.o_proj), _packed(mlp.gate_up_proj)
    if (
        qkv is None
        or o is None
        or gate_up is None
        or down is None
        or not isinstance(mlp.act_fn, (torch.nn.SiLU, SiLUActivation))
    ):
        return None
    bias = mlp.down_proj.bias if per_token else None
    norms = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
    return _Layer(norms[0], qkv, o, norms[1], gate_up, down, per_token, bias)


def _plan(model: PreTrainedModel) -> list[_Layer] | None:
    if (plan := _plans.get(model)) is not None:
        return plan
    if type(model) is not LlamaForCausalLM:
        return None
    plan = []
    for x in model.model.layers:  # type: ignore[union-attr]
        if (layer := _layer(x)) is None:
            return None  # the float model stops at its first layer
        plan.append(layer)
    if plan:
        _plans[model] = plan
    return plan or None


def supports(model: PreTrainedModel) -> bool:
    """Whether `model` is a Llama whose every layer has fused int8 projections (what `load_quantized` gives)."""
    return _plan(model) is not None


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`LlamaRMSNorm.forward` for float32 input (its casts are no-ops then)."""
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


@torch.inference_mode()
def decode_logits(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache
) -> torch.Tensor:
    """Feed each row's one new token and return the (B, vocab) logits that follow; the cache grows in place.

    Args:
        ids: (B, 1) long, each row's newest token (not yet in the cache).
        mask: (B, L + 1) long, 1 for real tokens, over the cache's L columns and this one.
        positions: (B, 1) long, each row's position (its count of real tokens before this one).
    """
    inner: Any = model.model
    eps, rows = model.config.rms_norm_eps, ids.shape[0]
    x = inner.embed_tokens(ids)  # (B, 1, hidden)
    cos, sin = inner.rotary_emb(x, positions)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, 1, head_dim): broadcast over the heads
    # transformers' masking gives sdpa no mask when no column is padding, else a boolean one shared by the heads
    padded = mask.shape[0] > 0 and not bool(mask.all())
    attn_mask = mask.bool()[:, None, None, :] if padded else None
    plan = _plan(model)
    if plan is None:
        raise ValueError(f"{type(model).__name__} is not a fused int8 Llama: decode it through its forward")
    cache_layers: list[Any] = list(cache.layers)  # `SlackLayer`s (batch.py): each writes its new column in place
    first_attn: Any = inner.layers[0].self_attn
    first_mlp: Any = inner.layers[0].mlp
    sizes, head_dim, scaling, width = first_attn.qkv_sizes, first_attn.head_dim, first_attn.scaling, first_mlp.width
    split, heads = [sizes[0] + sizes[1], sizes[2]], sizes[0] // head_dim  # sizes: [q, k, v] widths
    for layer, cache_layer in zip(plan, cache_layers, strict=True):
        h = _rms_norm(x, layer.input_norm, eps)
        qk, v = _linear(h, layer.qkv, True).split(split, dim=-1)
        # queries and keys rotated as one tensor: the same elementwise ops on each element as rotating them apart
        qk = qk.view(rows, 1, -1, head_dim).transpose(1, 2)  # (B, heads + kv_heads, 1, head_dim)
        qk = qk * cos + rotate_half(qk) * sin
        q, k = qk[:, :heads], qk[:, heads:]
        v = v.view(rows, 1, -1, head_dim).transpose(1, 2)  # (B, kv_heads, 1, head_dim)
        keys, values = cache_layer.update(k, v)
        if attn_mask is None:  # sdpa's own grouped-query attention, as transformers calls it without a mask
            o = F.scaled_dot_product_attention(q, keys, values, scale=scaling, enable_gqa=True)
        else:  # transformers' `pack_gqa`: one key/value head's query heads as that head's queries
            packed = q.reshape(rows, keys.shape[1], -1, head_dim)
            o = F.scaled_dot_product_attention(packed, keys, values, attn_mask=attn_mask, scale=scaling)
        x = x + _linear(o.reshape(rows, 1, -1), layer.o, True)  # heads in order: (B, 1, heads * dim)
        h = _rms_norm(x, layer.post_norm, eps)
        gate, up = _linear(h, layer.gate_up, True).split(width, dim=-1)
        y = F.silu(gate) * up
        if layer.down_per_token:  # `PerTokenInt8Linear.forward`
            r = y.abs().amax(-1, keepdim=True).clamp(min=1e-12)
            y = _linear(y / r, layer.down, True) * r
            x = x + (y if layer.down_bias is None else y + layer.down_bias)
        else:
            x = x + _linear(y, layer.down, True)
    x = _rms_norm(x, inner.norm.weight, eps)
    return model.lm_head(x)[:, -1, :]  # type: ignore[no-any-return]
