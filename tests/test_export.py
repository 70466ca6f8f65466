"""Export round trip: the adapter directory and the merged directory give the same logits."""

import json

import pytest
import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from mentor_agents.export import ModelCard, export_student
from mentor_agents.from_scratch import make_tiny_student


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_student(tmp_path_factory.mktemp("tiny") / "base")


def test_adapter_and_merged_give_the_same_logits(tiny_dir, tmp_path):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    # non-zero B so the adapter changes the logits and merging is tested for real
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    card = ModelCard(base_model=str(tiny_dir), method="mentor", teacher="scripted", reward="mentor",
                     training_config={"lr": 1e-4}, evaluation="| model | success |\n|---|---|\n| student | 0.5 |",
                     tools=["add"])
    out = export_student(model, tokenizer, tmp_path / "student", card, generation={"max_new_tokens": 64})

    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 3?"}],
        tools=[{"type": "function", "function": {"name": "add", "description": "Add.", "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        expected = model(ids).logits
        from_adapter = AutoPeftModelForCausalLM.from_pretrained(out / "adapter")(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out / "merged")
        from_merged = merged(ids).logits
        plain_base = AutoModelForCausalLM.from_pretrained(tiny_dir)(ids).logits
    torch.testing.assert_close(from_adapter, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(from_merged, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain_base, expected, atol=1e-3)  # the adapter mattered

    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_dir)
    assert merged.generation_config.max_new_tokens == 64
    assert merged.generation_config.eos_token_id == tokenizer.eos_token_id
    merged_tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    rendered = merged_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tools=[{"type": "function", "function": {"name": "add", "parameters": {}}}],
        tokenize=False,
    )
    assert '"name": "add"' in rendered
    readme = (out / "README.md").read_text()
    for needle in ("base model", "teacher", "reward", "Training configuration", "| student | 0.5 |", "Intended use and limits"):
        assert needle in readme
    # the model in memory keeps its adapter after export
    assert hasattr(model, "peft_config") and any("lora_A" in n for n, _ in model.named_parameters())


def test_export_replaces_an_existing_directory(tiny_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), LoraConfig(r=2, target_modules=["q_proj"]))
    target = tmp_path / "student"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    export_student(model, tokenizer, target, ModelCard(base_model="tiny", method="sft"))
    assert not (target / "stale.txt").exists() and (target / "merged" / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["student"]
