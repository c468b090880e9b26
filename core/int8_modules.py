"""The modules an int8 chat model runs (`core/quantize.py` makes and loads the model): dynamic int8 Linears
(PyTorch's `quantize_dynamic` kernels, int8 weights per output channel), `PerTokenInt8Linear` (each input row on its
own activation scale), and the fused projections the serving path runs (q/k/v and gate/up as one int8 Linear each,
`fuse_projections`). `serving/engines/generation/llama_decode.py` runs a fused model's decode step on these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from transformers import PreTrainedModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaMLP,
    apply_rotary_pos_emb,
    eager_attention_forward,
)


def llama_layers(model: PreTrainedModel) -> Sequence[torch.nn.Module]:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no model.layers: smoothing knows Llama-style decoders only")
    return layers  # type: ignore[no-any-return]


def dynamic_int8_linear(weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> DynamicInt8Linear:
    out_features, in_features = weight_int8.shape
    q = DynamicInt8Linear(in_features, out_features, bias_=bias is not None, dtype=torch.qint8)
    qweight = torch._make_per_channel_quantized_tensor(
        weight_int8, scale.double(), torch.zeros(out_features, dtype=torch.long), 0
    )
    q.set_weight_bias(qweight, bias)
    return q


class PerTokenInt8Linear(torch.nn.Module):
    """A dynamic int8 Linear whose input rows (tokens) are each quantised on their own scale.

    PyTorch's dynamic kernels take one activation scale for the whole input; dividing each row by its largest
    |value| first and multiplying the output back (W (x / r) r = W x, exact in real arithmetic) puts every row on
    the same [-1, 1] range, so a row with an outlier no longer coarsens the others. Three cheap ops a call; the
    docstring of `core/quantize.py` has the measurements. The bias, if any, is added after the rescaling.
    """

    def __init__(self, int8: DynamicInt8Linear, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.int8 = int8
        self.bias: torch.Tensor | None
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = int8.in_features, int8.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x.abs().amax(-1, keepdim=True).clamp(min=1e-12)
        y = self.int8(x / r) * r
        return y if self.bias is None else y + self.bias

    def _weight_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The int8 weight and the float bias, as `DynamicInt8Linear._weight_bias` gives them."""
        return self.int8._weight_bias()[0], self.bias


Int8Linear = DynamicInt8Linear | PerTokenInt8Linear


def int8_module(w8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, per_token: bool) -> Int8Linear:
    if per_token:
        return PerTokenInt8Linear(dynamic_int8_linear(w8, scale, None), bias)
    return dynamic_int8_linear(w8, scale, bias)


@torch.no_grad()
def int8_linear(linear: Any, per_token: bool = False) -> Int8Linear:
    """A float Linear as a dynamic int8 one (weights int8, symmetric, one scale per output channel); with
    `per_token`, a `PerTokenInt8Linear`."""
    w = linear.weight.detach().float()  # (out, in)
    scale = (w.abs().amax(1) / 127).clamp(min=1e-8)  # (out,)
    w8 = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    bias = linear.bias.detach().float() if linear.bias is not None else None
    return int8_module(w8, scale, bias, per_token)


def _fused(modules: Sequence[Any]) -> DynamicInt8Linear:
    """One dynamic int8 Linear whose output is the given Linears' outputs side by side.

    Exact: the Linears read the same input, whose int8 activation is quantised once per call with one scale, the
    int8 products accumulate in int32, and each output channel keeps its own weight scale.
    """
    parts = [m._weight_bias() for m in modules]
    w8 = torch.cat([w.int_repr() for w, _ in parts])
    scale = torch.cat([w.q_per_channel_scales() for w, _ in parts])
    biases = [b if b is not None else torch.zeros(w.shape[0]) for w, b in parts]
    bias = torch.cat(biases) if any(b is not None for _, b in parts) else None
    return dynamic_int8_linear(w8, scale, bias)


class FusedMLP(torch.nn.Module):
    """Llama's MLP with `gate_proj` and `up_proj` as one int8 Linear (vLLM's MergedColumnParallelLinear)."""

    def __init__(self, mlp: Any) -> None:
        super().__init__()
        self.gate_up_proj = _fused([mlp.gate_proj, mlp.up_proj])
        self.down_proj, self.act_fn, self.width = mlp.down_proj, mlp.act_fn, mlp.gate_proj.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.width, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)  # type: ignore[no-any-return]


class FusedQKVAttention(LlamaAttention):
    """Llama's attention with `q_proj`, `k_proj` and `v_proj` as one int8 Linear (vLLM's QKVParallelLinear).

    The forward is transformers 5.24's `LlamaAttention.forward` but for the projection line.
    """

    qkv_proj: DynamicInt8Linear
    qkv_sizes: list[int]

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q, k, v = self.qkv_proj(hidden_states).split(self.qkv_sizes, dim=-1)
        query_states, key_states = q.view(hidden_shape).transpose(1, 2), k.view(hidden_shape).transpose(1, 2)
        value_states = v.view(hidden_shape).transpose(1, 2)
        assert position_embeddings is not None
        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
        attention_interface: Any = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self, query_states, key_states, value_states, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


@torch.no_grad()
def fuse_projections(model: PreTrainedModel) -> int:
    """In an int8 model, run the Linears that read the same input as one: q/k/v and gate/up. Returns how many
    modules it fused; layers of another shape than Llama's, or with a projection left in float, stay as they are.

    Why: one stream spends ~12 ms of a ~32 ms token in per-op overhead (the README's profile), and each dynamic
    int8 Linear also quantises its input again; fused, a layer runs 4 int8 Linears instead of 7. Measured: a decode
    step 1.10x faster at 1 row, 1.04x at 16 (`python -m benchmarks.fused_decode`).
    """
    fused = 0
    for layer in llama_layers(model):
        attn: Any = layer.self_attn
        mlp: Any = layer.mlp
        qkv: list[Any] = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj")]
        if type(attn) is LlamaAttention and all(isinstance(m, DynamicInt8Linear) for m in qkv):
            sizes, one = [m.out_features for m in qkv], _fused(qkv)
            del attn.q_proj, attn.k_proj, attn.v_proj
            attn.__class__ = FusedQKVAttention  # the same module, its forward the fused one
            fused_attn: Any = attn
            fused_attn.qkv_proj, fused_attn.qkv_sizes = one, sizes
            fused += 1
        gate_up = [getattr(mlp, "gate_proj", None), getattr(mlp, "up_proj", None)]
        if type(mlp) is LlamaMLP and all(isinstance(m, DynamicInt8Linear) for m in gate_up):
            layer.mlp = FusedMLP(mlp)
            fused += 1
    return fused
