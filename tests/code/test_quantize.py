"""The int8 chat variant (core/quantize.py) on the real base model: smoothing changes nothing in float, the saved
form loads back to the same logits at about half the size, the int8 model mostly picks the float model's next
token, and what it cannot do (a GPU, another method) is refused with the reason."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from core.config import load_params
from core.int8_modules import FusedMLP, FusedQKVAttention, PerTokenInt8Linear, fuse_projections, int8_linear
from core.loading import load_chat
from core.quantize import (
    QUANT_FILE,
    WEIGHTS_FILE,
    activation_maxima,
    load_quantized,
    quantize_with_recipe,
    save_quantized,
    smooth,
)
from serving.engines.generation import llama_decode
from serving.engines.generation.batch import Batch
from serving.engines.generation.forward import decode, prefill
from training.quantize_chat import gate

PROMPTS = [
    "Explain what a Python decorator is.",
    "How do I read a file line by line?",
    "What does json.dumps do?",
    "Describe list comprehensions.",
    "How do I sort a dictionary by value?",
    "What is the difference between a list and a tuple?",
]
CALIBRATION = [
    "How do I install a package with pip? Run pip install followed by the package name.",
    "What is a virtual environment? An isolated folder with its own interpreter and packages.",
]
# measured on the base SmolLM2-135M with the default alpha 0.85 and down_proj int8 per token: 0.89 (128 of 144
# steps; 130 with down_proj in float);
# plain dynamic int8 on every Linear (no smoothing) scored 0.47 on the fine-tuned model's answers
MIN_AGREEMENT = 0.8


def _ids(tok: Any, text: str, chat: bool = True) -> torch.Tensor:
    if chat:
        enc: Any = tok.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return enc["input_ids"]  # type: ignore[no-any-return]
    return tok(text, return_tensors="pt")["input_ids"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def float_chat(base_dir: Path) -> tuple[Any, Any]:
    return load_chat(base_dir / "chat", device="cpu")


@pytest.fixture(scope="module")
def int8_folder(float_chat: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tok = float_chat
    model = copy.deepcopy(model)
    recipe = load_params().quantize_chat  # the default recipe: alpha 0.85, down_proj per token
    modules = quantize_with_recipe(model, [_ids(tok, t, chat=False) for t in CALIBRATION], recipe)
    assert len(modules) == 30 * 7 + 1
    folder = tmp_path_factory.mktemp("int8") / "chat_int8"
    save_quantized(model, tok, folder, {"alpha": recipe.alpha, "skip": list(recipe.skip)})
    return folder


@pytest.fixture(scope="module")
def references(float_chat: tuple[Any, Any]) -> list[tuple[torch.Tensor, int]]:
    """The float model's greedy answers (prompt + 24 tokens), with where each answer starts."""
    model, tok = float_chat
    out = []
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = _ids(tok, prompt)
            full = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
            out.append((full, ids.shape[1]))
    return out


def test_smoothing_is_an_exact_rewrite_in_float(float_chat: tuple[Any, Any]) -> None:
    model, tok = float_chat
    smoothed = copy.deepcopy(model)
    smooth(smoothed, activation_maxima(smoothed, [_ids(tok, t, chat=False) for t in CALIBRATION]), 0.85)
    ids = _ids(tok, PROMPTS[0])
    with torch.inference_mode():
        before, after = model(ids).logits, smoothed(ids).logits
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, smoothed.model.layers[0].mlp.up_proj.weight)
    torch.testing.assert_close(after, before, rtol=1e-3, atol=2e-3)


def test_the_saved_form_loads_back_to_the_same_logits_at_about_half_the_size(int8_folder: Path, base_dir: Path) -> None:
    card = json.loads((int8_folder / QUANT_FILE).read_text())
    assert card["method"] == "smoothquant-dynamic-int8" and card["alpha"] == 0.85
    assert len(card["modules"]) == 30 * 7 + 1  # q, k, v, o, gate, up, down per layer, and lm_head
    assert card["per_token"] == [f"model.layers.{i}.mlp.down_proj" for i in range(30)]
    size, float_size = (int8_folder / WEIGHTS_FILE).stat().st_size, (base_dir / "chat" / WEIGHTS_FILE).stat().st_size
    assert size < 0.65 * float_size, (size, float_size)
    # core.loading reads it like any chat model folder; a second load gives the very same numbers
    model, tok = load_chat(int8_folder, device="cpu")
    again, _ = load_quantized(int8_folder)
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn, FusedQKVAttention) and isinstance(layer.mlp, FusedMLP)
    assert isinstance(layer.self_attn.qkv_proj, torch.ao.nn.quantized.dynamic.Linear)
    assert isinstance(layer.mlp.down_proj, PerTokenInt8Linear)
    assert tok.padding_side == "left" and model.generation_config.use_cache is True
    ids = _ids(tok, PROMPTS[1])
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_fused_projections_give_the_very_same_numbers_as_separate_ones(int8_folder: Path) -> None:
    """q/k/v and gate/up as one int8 Linear each: one quantised input, int32 accumulation, per-channel scales, so
    logits and greedy tokens (through the KV cache) are bit for bit those of the separate Linears."""
    fused: Any
    separate: Any
    fused, tok = load_quantized(int8_folder)
    separate, _ = load_quantized(int8_folder, fuse=False)
    assert isinstance(separate.model.layers[0].self_attn.q_proj, torch.ao.nn.quantized.dynamic.Linear)
    assert sum(isinstance(m, (FusedQKVAttention, FusedMLP)) for m in fused.modules()) == 2 * 30
    assert fuse_projections(fused) == 0  # already fused: nothing left to fuse
    ids = _ids(tok, PROMPTS[2])
    with torch.inference_mode():
        assert torch.equal(fused(ids).logits, separate(ids).logits)
        kw: dict[str, Any] = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": tok.pad_token_id}
        assert torch.equal(fused.generate(ids, **kw), separate.generate(ids, **kw))


def test_per_token_int8_keeps_one_rows_outlier_from_coarsening_the_others() -> None:
    """A decode batch where one row carries a large activation: per tensor, every row is quantised on that row's
    scale and the small rows lose their precision; per token, each row keeps its own (and the algebra is exact)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 64, bias=True)
    per_tensor, per_token = int8_linear(linear), int8_linear(linear, per_token=True)
    x = torch.randn(3, 256)
    x[0, 7] = 400.0  # the outlier row
    with torch.inference_mode():
        exact = linear(x)
        err_tensor = (per_tensor(x) - exact).abs()[1:].max()
        err_token = (per_token(x) - exact).abs()[1:].max()
        alone = per_token(x[1:2])
    assert err_token < err_tensor / 10, (float(err_token), float(err_tensor))
    torch.testing.assert_close(alone, per_token(x)[1:2], rtol=0.05, atol=0.05)


def _reference_decode(model: Any, batch: Batch[int]) -> torch.Tensor:
    """`forward.decode` as it was before the hand-written step: transformers' forward, greedy."""
    mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch), 1))], dim=1)
    positions = batch.mask.sum(-1, keepdim=True)
    with torch.inference_mode():
        out = model(
            input_ids=batch.next, attention_mask=mask, position_ids=positions, cache=batch.cache, use_cache=True
        )
    batch.mask, logits = mask, out.logits[:, -1, :]
    batch.next = logits.argmax(-1).view(-1, 1)
    return logits  # type: ignore[no-any-return]


@pytest.mark.parametrize("down_per_token", [True, False], ids=["down-per-token", "down-per-tensor"])
def test_the_served_int8_decode_step_gives_transformers_logits_bit_for_bit(
    int8_folder: Path, float_chat: tuple[Any, Any], down_per_token: bool
) -> None:
    """The engine decodes the fused int8 model with `llama_decode` (plain tensor calls on the packed weights) instead
    of transformers' forward: through left padding, no padding, a merge and a select, the logits are the very same,
    with `down_proj` per token (the default) or per tensor (an older card's)."""
    model, tok = load_quantized(int8_folder)
    if not down_per_token:
        for layer in model.model.layers:
            assert isinstance(layer.mlp.down_proj, PerTokenInt8Linear)
            layer.mlp.down_proj = layer.mlp.down_proj.int8
    assert llama_decode.supports(model) and not llama_decode.supports(float_chat[0])
    assert not llama_decode.supports(load_quantized(int8_folder, fuse=False)[0])  # only the fused form
    prompts = [[int(t) for t in _ids(tok, p)[0]] for p in PROMPTS[:4]]
    seen: list[torch.Tensor] = []

    def greedy(logits: torch.Tensor, _rows: list[Any]) -> torch.Tensor:
        seen.append(logits.clone())
        return logits.argmax(-1)

    ours: Batch[int] = prefill(model, [0], [prompts[0][:5]], tok.pad_token_id, greedy)  # one row: no padding
    theirs: Batch[int] = prefill(model, [0], [prompts[0][:5]], tok.pad_token_id, greedy)
    steps = 0

    def step() -> None:
        nonlocal steps
        decode(model, ours, greedy)
        expected = _reference_decode(model, theirs)
        assert torch.equal(seen[-1], expected), f"step {steps}: {(seen[-1] - expected).abs().max()}"
        steps += 1

    for _ in range(3):
        step()
    for batch in (ours, theirs):  # rows of other lengths: left padding
        batch.merge(prefill(model, [1, 2, 3], prompts[1:], tok.pad_token_id, greedy))
    for _ in range(4):
        step()
    for batch in (ours, theirs):  # the longest row leaves: its padding columns are trimmed
        batch.select([0, 2, 3])
    for _ in range(4):
        step()
    assert steps == 11 and len(ours) == 3


_PEAK_OF_A_LOAD = """
import resource, sys
from pathlib import Path
from core.quantize import load_quantized
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model, _ = load_quantized(Path(sys.argv[1]))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_loading_int8_never_allocates_the_float_weights_it_replaces(int8_folder: Path) -> None:
    """The skeleton is built without parameters, so the load's peak is about the file, not the float model too
    (measured: 338 MB over the imports for a 328 MB file; a float skeleton peaked at 1,039 MB)."""
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_A_LOAD, str(int8_folder)], capture_output=True, text=True, check=True
    )
    peak, size = int(proc.stdout.strip().splitlines()[-1]), (int8_folder / WEIGHTS_FILE).stat().st_size
    assert peak < 1.5 * size, f"loading a {size / 1e6:.0f} MB int8 model peaked {peak / 1e6:.0f} MB over the imports"


def test_int8_picks_the_float_models_next_token_on_most_steps(
    int8_folder: Path, references: list[tuple[torch.Tensor, int]], float_chat: tuple[Any, Any]
) -> None:
    """Teacher-forced on the float model's greedy answers: the quantised path's answers are compared against
    the float ones (same top token), with a threshold from measurement."""
    reference, _ = float_chat
    model, _ = load_chat(int8_folder, device="cpu")
    same = total = 0
    with torch.inference_mode():
        for full, start in references:
            want = reference(full).logits[0, start - 1 : -1].argmax(-1)
            got = model(full).logits[0, start - 1 : -1].argmax(-1)
            same, total = same + int((want == got).sum()), total + len(want)
    assert same / total >= MIN_AGREEMENT, f"{same}/{total}"


def test_an_int8_model_refuses_a_gpu_and_a_method_it_does_not_run(int8_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"CPU only.*serving.chat_variant: float"):
        load_chat(int8_folder, device="cuda")
    other = tmp_path / "other"
    other.mkdir()
    card = json.loads((int8_folder / QUANT_FILE).read_text()) | {"method": "gptq-int4"}
    (other / QUANT_FILE).write_text(json.dumps(card))
    with pytest.raises(ValueError, match="gptq-int4"):
        load_quantized(other)


def test_the_gate_registers_only_under_the_loss_limit() -> None:
    p = load_params()
    limit = p.gate.int8_max_loss_increase
    passed, reason = gate(p, 0.30, 0.30 + limit / 2)
    assert passed and "0.3" in reason
    passed, reason = gate(p, 0.30, 0.30 + limit)
    assert not passed and "not registered" in reason and "quantize_chat.skip" in reason
