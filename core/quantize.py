"""Int8 chat model: SmoothQuant-smoothed weights, quantised to int8 per output channel, run with dynamic int8
activations (PyTorch's `quantize_dynamic` kernels, fbgemm/oneDNN with VNNI on x86).

Why this recipe (measured on this 2-core CPU, SmolLM2-135M fine-tuned, one stream of 64 tokens, fp32 ≈ 14.5
tokens/s): dynamic int8 on every Linear ≈ 40 tokens/s. The kernels quantise activations to 8 bits on the fly, and
the inputs of `down_proj` (silu(gate) * up) carry outlier channels, so plainly quantised the int8 model picks
the float model's top token on only 47% of teacher-forced steps (the float model's greedy answers to 4
prompts). SmoothQuant (Xiao et al. 2023) moves those outliers into the weights with an exact float rewrite:
per input channel j of a Linear, divide the activation by s_j and multiply the weight column by s_j, where
s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha) from calibration text; the division folds into the layer
before (the RMSNorm weight for q/k/v and gate/up, `up_proj`'s rows for `down_proj`). With alpha 0.85 on all
three: 81% top-token agreement at the same speed. What smoothing cannot hide is `down_proj`'s: its input
(silu(gate) * up) has outlier tokens as well as channels, and the kernels take one activation scale for the whole
input, so every token of a prefill, or every row of a decode batch, is quantised on the scale of the largest.
Scaling each row to a maximum of 1 before the kernel and back after (`PerTokenInt8Linear`: exact algebra, since
W (x / r) r = W x) gives each row its own scale, the per-token dynamic quantisation of LLM.int8() and SmoothQuant's
O3. Measured on the champion (held-out loss, float 0.3052; top-token agreement): `down_proj` in float 0.3335 and
0.9516; int8 per tensor 0.3968 and 0.9427; int8 per token 0.3288 and 0.9552, better than float `down_proj`, and a
decode step 1.26x faster at 1 row, 1.40x at 4, 1.30x at 16 (its float weights were half of what a token reads).
Keeping 16-64 outlier channels in float (LLM.int8()'s decomposition) on a per-tensor scale did worse (0.3519-0.3766).
Weight-only int8 (`torch.ops.aten._weight_int8pack_mm`) agrees 96% but runs at about a fifth of fp32's speed
in eager mode here (490 us against 106 for one row of `down_proj`); it needs `torch.compile` to pay off (gpt-fast),
which the continuous-batching engine's changing shapes would recompile. The pipeline gates the result on held-out loss
(training/quantize_chat.py), so the trade-off is measured on every run.

The saved form (`save_quantized`): the model's config and tokenizer, `quantization.json` (method, alpha, the
quantised modules), and `model.safetensors` with the float tensors of every other module plus, per quantised
Linear, `<name>.weight_int8` (out, in) and `<name>.weight_scale` (out,): about half the float size. The card's
`per_token` names the Linears run per token (older cards have none: every Linear per tensor).
Dynamic int8 kernels run on the CPU only; a GPU serves the float model (`serving.chat_variant: float`).
The modules the int8 model runs (int8 Linears, per-token ones, the fused projections) are in `core/int8_modules.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import init_empty_weights
from mlflow.pyfunc import PythonModel
from safetensors.torch import load_file, save_file
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from core.int8_modules import PerTokenInt8Linear, fuse_projections, int8_linear, int8_module, llama_layers

if TYPE_CHECKING:
    from core.config import QuantizeChatParams

QUANT_FILE = "quantization.json"
WEIGHTS_FILE = "model.safetensors"
METHOD = "smoothquant-dynamic-int8"


def is_quantized_folder(folder: Path) -> bool:
    return (folder / QUANT_FILE).is_file()


# (norm or producer, consumers, whose input max is measured): the three places an activation enters Linears
_SMOOTH_GROUPS = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ("mlp.up_proj", ("mlp.down_proj",)),
)


@torch.inference_mode()
def activation_maxima(model: PreTrainedModel, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per input channel, the largest |activation| entering each smoothing group's first consumer.

    Args:
        batches: token ids, each (1, T), run through the float model.

    Returns:
        `<layer index>.<consumer>` -> (in_features,) maxima.
    """
    maxima: dict[str, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(llama_layers(model)):
        for _, consumers in _SMOOTH_GROUPS:
            key = f"{i}.{consumers[0]}"

            def hook(_mod: Any, inputs: tuple[torch.Tensor, ...], _out: Any, key: str = key) -> None:
                x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)  # (in,)
                maxima[key] = torch.maximum(maxima[key], x) if key in maxima else x

            hooks.append(layer.get_submodule(consumers[0]).register_forward_hook(hook))
    try:
        for ids in batches:
            model(input_ids=ids.to(model.device))
    finally:
        for h in hooks:
            h.remove()
    return maxima


@torch.no_grad()
def smooth(model: PreTrainedModel, maxima: dict[str, torch.Tensor], alpha: float) -> None:
    """SmoothQuant in place: an exact float rewrite (the model's outputs do not change beyond rounding)."""
    for i, layer in enumerate(llama_layers(model)):
        for producer_name, consumers in _SMOOTH_GROUPS:
            producer: Any = layer.get_submodule(producer_name)
            weights: list[torch.Tensor] = [layer.get_submodule(c).weight for c in consumers]  # type: ignore[misc]
            w_max = torch.stack([w.abs().amax(0) for w in weights]).amax(0).clamp(min=1e-5)  # (in,)
            x_max = maxima[f"{i}.{consumers[0]}"].clamp(min=1e-5)
            s = (x_max.pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)  # (in,)
            # the producer's output channel j is the consumers' input channel j: divide it by s_j
            if isinstance(producer, torch.nn.Linear):
                producer.weight.div_(s[:, None])
                if producer.bias is not None:
                    producer.bias.div_(s)
            else:  # RMSNorm: y = w * x / rms(x)
                producer.weight.div_(s)
            for w in weights:
                w.mul_(s[None, :])


def _linear_names(model: torch.nn.Module, skip: Sequence[str]) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not any(s in n for s in skip)]


def _set_module(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(p in name for p in patterns)


@torch.no_grad()
def quantize(model: PreTrainedModel, skip: Sequence[str] = (), per_token: Sequence[str] = ()) -> list[str]:
    """Replace every Linear (but those whose name contains one of `skip`) by a dynamic int8 one (`int8_linear`), in
    place; those whose name contains one of `per_token` by a `PerTokenInt8Linear`. Returns the names replaced."""
    names = _linear_names(model, skip)
    for name in names:
        _set_module(model, name, int8_linear(model.get_submodule(name), _matches(name, per_token)))
    # a tied lm_head now has its own int8 copy: nothing ties it to the embedding any more
    model.config.tie_word_embeddings = False
    return names


def quantize_with_recipe(
    model: PreTrainedModel, batches: Iterable[torch.Tensor], recipe: QuantizeChatParams
) -> list[str]:
    """The stage's recipe in place (params.yaml's `quantize_chat`): activation maxima over `batches` (token ids,
    each (1, T)), SmoothQuant at `recipe.alpha`, then int8 with `recipe.skip` left in float and `recipe.per_token`
    on per-row scales. Returns the names replaced."""
    smooth(model, activation_maxima(model, batches), recipe.alpha)
    return quantize(model, recipe.skip, recipe.per_token)


def save_quantized(model: PreTrainedModel, tok: PreTrainedTokenizerBase, folder: Path, card: dict[str, Any]) -> None:
    """Write a model that `quantize` replaced modules of, in the module docstring's form."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    per_token = [n for n, m in model.named_modules() if isinstance(m, PerTokenInt8Linear)]
    inside = tuple(f"{n}." for n in per_token)  # a per-token module's own int8 Linear is saved as the module
    quantized = [
        n
        for n, m in model.named_modules()
        if isinstance(m, PerTokenInt8Linear) or (isinstance(m, DynamicInt8Linear) and not n.startswith(inside))
    ]
    for name in quantized:
        module: Any = model.get_submodule(name)
        w, b = module._weight_bias()
        tensors[f"{name}.weight_int8"] = w.int_repr().contiguous()
        tensors[f"{name}.weight_scale"] = w.q_per_channel_scales().float().contiguous()
        if b is not None:
            tensors[f"{name}.bias"] = b.detach().contiguous()
    prefixes = tuple(f"{n}." for n in quantized)
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor) and not key.startswith(prefixes):
            tensors[key] = value.detach().contiguous()
    save_file(tensors, str(folder / WEIGHTS_FILE))
    model.config.save_pretrained(folder)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
    tok.save_pretrained(folder)
    described = {**card, "method": METHOD, "modules": quantized, "per_token": per_token}
    (folder / QUANT_FILE).write_text(json.dumps(described, indent=2) + "\n")


def load_quantized(folder: Path, fuse: bool = True) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load what `save_quantized` wrote, on the CPU, in eval mode; with `fuse`, its projections fused
    (`fuse_projections`: the same numbers, fewer calls; such a model is for running, not for `save_quantized`).

    Raises:
        ValueError: the folder's `quantization.json` names a method this code does not run.
    """
    card = json.loads((folder / QUANT_FILE).read_text())
    if card.get("method") != METHOD:
        raise ValueError(f"{folder}/{QUANT_FILE}: method {card.get('method')!r} is not {METHOD!r}")
    config = AutoConfig.from_pretrained(str(folder))
    # The skeleton's parameters on the meta device, so no float weight is allocated only to be replaced: a float
    # skeleton took the load's peak to 1,039 MB over the imports and left 409 MB resident after malloc_trim for a
    # 328 MB file (tests/code/test_quantize.py measures the peak). Buffers (rotary frequencies) stay real.
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_file(str(folder / WEIGHTS_FILE))
    int8 = {
        n: [tensors.pop(f"{n}.{k}", None) for k in ("weight_int8", "weight_scale", "bias")] for n in card["modules"]
    }
    # the float tensors first, taken as the parameters themselves (`assign`: no copy); the Linears about to be
    # replaced miss theirs
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if unexpected:
        raise ValueError(f"{folder}/{WEIGHTS_FILE}: tensors no module takes: {unexpected[:5]}")
    rest = [k for k in missing if k.rpartition(".")[0] not in int8]
    if rest:
        raise ValueError(f"{folder}/{WEIGHTS_FILE}: missing tensors {rest[:5]}")
    per_token = set(card.get("per_token", ()))
    for name, (w8, scale, bias) in int8.items():
        if w8 is None or scale is None:
            raise ValueError(f"{folder}/{WEIGHTS_FILE}: no int8 weight or scale for {name}")
        _set_module(model, name, int8_module(w8, scale, bias, name in per_token))
    empty = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if empty:
        raise ValueError(f"{folder}/{WEIGHTS_FILE}: nothing loaded into {empty[:5]}")
    if fuse:
        fuse_projections(model)
    # a fine-tuned model is saved with use_cache off (gradient checkpointing): decoding wants the KV cache
    model.config.use_cache = True
    if model.generation_config is not None:
        model.generation_config.use_cache = True
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(folder))


class Int8ChatModel(PythonModel):  # type: ignore[misc]
    """The int8 chat variant's pyfunc: a list of chat messages -> the greedy reply (one string in a list).

    Serving does not go through it: `core.loading.load_chat` reads the logged folder back with `load_quantized`
    and the chat engine batches it like the float model. This is for `mlflow.pyfunc.load_model` users.
    """

    max_new_tokens = 128

    def load_context(self, context: Any) -> None:
        self.model, self.tok = load_quantized(Path(context.artifacts["chat_int8"]))

    def predict(
        self, context: Any, model_input: list[dict[str, str]], params: dict[str, Any] | None = None
    ) -> list[str]:
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in model_input]
        ids: Any = self.tok.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        n = int((params or {}).get("max_new_tokens", self.max_new_tokens))
        model: Any = self.model
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=self.tok.pad_token_id)
        return [str(self.tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)).strip()]
