"""The vLLM check of a saved adapter: what vLLM refuses is named, and the serve command matches the student."""

import shlex

import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from mentor_agents.app.cli import main
from mentor_agents.export import ModelCard, export_student
from mentor_agents.from_scratch import make_tiny_student
from mentor_agents.vllm_check import check_vllm_adapter


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_student(tmp_path_factory.mktemp("tiny") / "base")


def save(base, out, **lora):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(**lora))
    card = ModelCard(base_model=str(base), method="sft")
    return export_student(model, AutoTokenizer.from_pretrained(base), out, card)


def test_a_plain_lora_adapter_gets_the_exact_serve_command(base, tmp_path, capsys):
    out = save(base, tmp_path / "student", r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    check = check_vllm_adapter(out / "adapter")
    assert check.ok
    assert shlex.split(check.command) == [
        "vllm", "serve", str(base), "--enable-lora", "--lora-modules", f"student={out / 'adapter'}",
        "--chat-template", str(out / "adapter" / "chat_template.jinja"),
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    assert main(["export", str(out), "--vllm"]) == 0
    assert capsys.readouterr().out.strip() == check.command


def test_a_rank_above_vllms_default_raises_max_lora_rank(base, tmp_path):
    out = save(base, tmp_path / "student", r=32, target_modules=["q_proj", "v_proj"])
    assert "--max-lora-rank 32" in check_vllm_adapter(out / "adapter").command


def test_what_vllm_refuses_is_named(base, tmp_path, capsys):
    with pytest.warns(UserWarning, match="will not load in vLLM with --enable-lora: modules_to_save"):
        out = save(base, tmp_path / "student", r=4, target_modules=["o_proj", "embed_tokens"],
                   modules_to_save=["lm_head"], use_dora=True)
    problems = " ".join(check_vllm_adapter(out / "adapter").problems)
    assert "modules_to_save ['lm_head']" in problems and "merged" in problems
    assert "DoRA" in problems and "target_modules ['embed_tokens']" in problems
    assert main(["export", str(out), "--vllm"]) == 1
    assert "vLLM would refuse this adapter: modules_to_save" in capsys.readouterr().err
