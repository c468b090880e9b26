"""One decode step of the fused int8 Llama written out as plain tensor calls, without transformers' module tree.

transformers' forward is general: per step it builds position embeddings, a 4-D mask through its masking
utilities, per layer it goes through a decoder layer, an attention module, the attention-function registry and
the cache's dispatch, and it returns a `ModelOutput`. This computes what `FusedQKVAttention` / `FusedMLP` compute
under transformers 5.24, the same arithmetic on every element (queries and keys are rotated as one tensor), so the
logits are bit for bit those of `model(...)`: tests/code/test_quantize.py holds them equal through padding, a
merge and a select. It is what gpt-fast's `decode_one_token` is to its model.

Measured (`python -m benchmarks.fused_decode --lean`, the champion, 2 threads, 200 cached tokens, paired steps,
two runs): 1.10-1.14x at 1 row (32.1 -> 28.9 ms), 1.10-1.13x at 4, 1.06-1.08x at 16. Most of what is left is
reading weights: ~134 MB a token (every Linear int8, `down_proj` per token) at the ~12 GB/s a float `down_proj`
reached in the profile (290 us a 3.5 MB matmul), ~11 ms a token.

Only the fused int8 form takes this path (`supports`); the float model, the exact reference and the GPU path,
keeps transformers' forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaForCausalLM, rotate_half

from core.int8_modules import FusedMLP, FusedQKVAttention


def supports(model: PreTrainedModel) -> bool:
    """Whether `model` is a Llama whose every layer has fused projections (what `load_quantized` gives)."""
    if type(model) is not LlamaForCausalLM:
        return False
    layers: Any = model.model.layers
    return all(isinstance(x.self_attn, FusedQKVAttention) and isinstance(x.mlp, FusedMLP) for x in layers)


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
    layers: list[Any] = list(inner.layers)
    cache_layers: list[Any] = list(cache.layers)  # `SlackLayer`s (batch.py): each writes its new column in place
    sizes = layers[0].self_attn.qkv_sizes  # [q, k, v] widths
    split, heads = [sizes[0] + sizes[1], sizes[2]], sizes[0] // layers[0].self_attn.head_dim
    for i, layer in enumerate(layers):
        attn: FusedQKVAttention = layer.self_attn
        h = _rms_norm(x, layer.input_layernorm.weight, eps)
        qk, v = attn.qkv_proj(h).split(split, dim=-1)
        # queries and keys rotated as one tensor: the same elementwise ops on each element as rotating them apart
        qk = qk.view(rows, 1, -1, attn.head_dim).transpose(1, 2)  # (B, heads + kv_heads, 1, head_dim)
        qk = qk * cos + rotate_half(qk) * sin
        q, k = qk[:, :heads], qk[:, heads:]
        v = v.view(rows, 1, -1, attn.head_dim).transpose(1, 2)  # (B, kv_heads, 1, head_dim)
        keys, values = cache_layers[i].update(k, v)
        if attn_mask is None:  # sdpa's own grouped-query attention, as transformers calls it without a mask
            o = F.scaled_dot_product_attention(q, keys, values, scale=attn.scaling, enable_gqa=True)
        else:  # transformers' `pack_gqa`: one key/value head's query heads as that head's queries
            packed = q.reshape(rows, keys.shape[1], -1, attn.head_dim)
            o = F.scaled_dot_product_attention(packed, keys, values, attn_mask=attn_mask, scale=attn.scaling)
        x = x + attn.o_proj(o.reshape(rows, 1, -1))  # heads in order: (B, 1, heads * head_dim)
        h = _rms_norm(x, layer.post_attention_layernorm.weight, eps)
        mlp: FusedMLP = layer.mlp
        gate, up = mlp.gate_up_proj(h).split(mlp.width, dim=-1)
        x = x + mlp.down_proj(mlp.act_fn(gate) * up)
    x = _rms_norm(x, inner.norm.weight, eps)
    return model.lm_head(x)[:, -1, :]  # type: ignore[no-any-return]
