"""Shared-prefix training is exact: the GRPO loss (policy and reference) and the SFT loss, with each shared prompt
computed once, equal TRL's unshared computation, and so do their gradients (fp32, tolerance 1e-5 relative)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model
from transformers import LogitsProcessor, LogitsProcessorList
from trl.trainer.utils import add_fused_lm_head

import mentor_agents.training.prefix_sharing as prefix_sharing
from mentor_agents.demo.calculator import ScriptedCalculatorTeacher
from mentor_agents.integrations.langgraph.recording import record
from mentor_agents.training.prefix_sharing import (
    SharedPrefixGRPOTrainer,
    SharedPrefixSFTTrainer,
    add_shared_prefix_head,
)
from mentor_agents.references import build_references
from mentor_agents.student import load_student
from mentor_agents.traces import TraceStore
from mentor_agents.training import TrainConfig, grpo, sft
from test_training import agent, config, graph_rollout_fn, single_step_tasks, tiny_student

torch.set_num_threads(1)
OUTPUTS = ("log_probs", "entropy")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("prefix")


@pytest.fixture(scope="module")
def student_dir(workdir):
    return tiny_student(workdir / "tiny")


@pytest.fixture(scope="module")
def traces(workdir):
    teacher = agent(ScriptedCalculatorTeacher())
    return record(teacher, single_step_tasks(8, "train"), TraceStore(workdir / "traces.jsonl"), progress=False)


def lora_model(student_dir, shared: bool, micro_batch_tokens: int = prefix_sharing.MICRO_BATCH_TOKENS,
               lora_layers: list[int] | None = None):
    model, _ = load_student(student_dir)
    add_fused_lm_head(model, temperature=0.7, outputs=OUTPUTS)
    if shared:
        add_shared_prefix_head(model, 0.7, OUTPUTS, micro_batch_tokens)
    torch.manual_seed(1)
    # peft takes chosen layers only with named modules, not "all-linear"
    modules = "all-linear" if lora_layers is None else ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
    model = get_peft_model(model, TrainConfig(lora_layers=lora_layers, lora_target_modules=modules).lora())
    for name, param in model.named_parameters():
        if "lora_B" in name:  # a trained adapter, so that the policy differs from the reference
            torch.nn.init.normal_(param, std=0.05)
    return model


def grpo_batch(vocab: int):
    """Two groups of three rollouts, as GRPOTrainer lays them out: left-padded prompts that share a system block,
    right-padded completions of different lengths."""
    torch.manual_seed(0)
    system = torch.randint(5, vocab, (40,))
    prompts = [torch.cat([system, torch.randint(5, vocab, (n,))]) for n in (5, 9)]
    completions = [torch.randint(5, vocab, (n,)) for n in (7, 4, 11, 6, 3, 8)]
    width_p, width_c = max(map(len, prompts)), max(map(len, completions))
    ids = torch.zeros(6, width_p + width_c, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, completion in enumerate(completions):
        prompt = prompts[i // 3]
        ids[i, width_p - len(prompt):width_p], mask[i, width_p - len(prompt):width_p] = prompt, 1
        ids[i, width_p:width_p + len(completion)], mask[i, width_p:width_p + len(completion)] = completion, 1
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :width_p] = -100
    return ids, mask, labels, width_c


def grpo_shaped_loss(model, batch):
    """Policy log-probs, reference log-probs (adapter disabled) and a GRPO-like loss with a KL term."""
    ids, mask, labels, width = batch
    with torch.no_grad(), model.disable_adapter():
        ref = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs[:, -width:]
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    logps, scored = out.log_probs[:, -width:], (labels[:, -width:] != -100)
    advantages = torch.tensor([1.0, -0.5, -0.5, 0.3, 0.2, -0.5])[:, None]
    kl = torch.exp(ref - logps) - (ref - logps) - 1
    loss = ((-advantages * torch.exp(logps - logps.detach()) + 0.04 * kl) * scored).sum() / scored.sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), logps.detach(), ref, out.entropy.detach(), grads


def assert_close_grads(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys() and expected
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_grpo_loss_and_gradients_equal_the_unshared_computation(student_dir):
    unshared, shared = lora_model(student_dir, False), lora_model(student_dir, True)
    batch = grpo_batch(unshared.config.vocab_size)
    want, got = grpo_shaped_loss(unshared, batch), grpo_shaped_loss(shared, batch)
    for expected, actual in zip(want[:4], got[:4]):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert_close_grads(want[4], got[4])
    assert want[1].abs().sum() > 0 and not torch.equal(want[1], want[2])  # the adapter moved the policy


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(student_dir):
    plain, checkpointed = lora_model(student_dir, True), lora_model(student_dir, True)
    checkpointed.gradient_checkpointing_enable({"use_reentrant": False})
    plain.train(), checkpointed.train()
    batch = grpo_batch(plain.config.vocab_size)
    want, got = grpo_shaped_loss(plain, batch), grpo_shaped_loss(checkpointed, batch)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert_close_grads(want[4], got[4])
    layers = [m for m in checkpointed.modules() if hasattr(m, "gradient_checkpointing")]
    assert layers and all(m.gradient_checkpointing for m in layers)  # switched back on after the forward


@pytest.mark.parametrize("checkpointing", [False, True])
def test_micro_batched_rows_give_the_same_loss_and_gradients(student_dir, checkpointing):
    """A group's rows split into micro-batches (budget 16 padded tokens: the rows after each group's prompt are 12,
    8, 5 and 9, 7, 4 tokens long, so batches of 1, 2, 1, 2 rows; budget 1: one row each) give the loss, log-probs,
    entropy and gradients of the unsplit group, with and without gradient checkpointing (fp32, 1e-5 relative)."""
    results, batch_sizes = {}, {}
    for budget in (1024, 16, 1):
        model = lora_model(student_dir, True, micro_batch_tokens=budget)
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        model.train()
        sizes = batch_sizes[budget] = []
        hook = model.get_base_model().model.register_forward_pre_hook(
            lambda m, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]) if torch.is_grad_enabled() else None,
            with_kwargs=True)
        results[budget] = grpo_shaped_loss(model, grpo_batch(model.config.vocab_size))
        hook.remove()
    # The backbone's calls: the shared prefix, then per group its prompt and its rows' micro-batches; with
    # checkpointing each call is recomputed once more in the backward pass.
    forward = {1024: [1, 1, 3, 1, 3], 16: [1, 1, 1, 2, 1, 1, 2], 1: [1] * 9}
    for budget, sizes in batch_sizes.items():
        assert sizes[:len(forward[budget])] == forward[budget]
        assert len(sizes) == len(forward[budget]) * (2 if checkpointing else 1)
    for budget in (16, 1):
        for expected, actual in zip(results[1024][:4], results[budget][:4]):
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
        assert_close_grads(results[1024][4], results[budget][4])


def test_conversations_with_their_own_questions_run_as_one_batch_after_the_shared_prefix(student_dir):
    """An SFT batch: every row asks its own question, so no group has a prompt to share. The rows' whole rest after
    the system block runs in one call (not a prompt call and a row call each), with the unshared loss, log-probs and
    gradients (fp32, 1e-5 relative)."""
    models = {shared: lora_model(student_dir, shared) for shared in (False, True)}
    torch.manual_seed(0)
    system = torch.randint(5, models[True].config.vocab_size, (40,))
    rows = [torch.cat([system, torch.randint(5, models[True].config.vocab_size, (n,))]) for n in (9, 14, 6, 11)]
    ids, mask = prefix_sharing._right_pad(rows)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :43] = -100  # the question (3 tokens after the system block) carries no loss
    results, sizes = {}, []
    models[True].get_base_model().model.register_forward_pre_hook(
        lambda m, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    for shared, model in models.items():
        model.train()
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        out.loss.backward()
        results[shared] = (out.loss.detach(), out.log_probs.detach(),
                           {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert sizes == [1, 4]
    for expected, actual in zip(results[False][:2], results[True][:2]):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    assert_close_grads(results[False][2], results[True][2])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_shared_prefix_through_frozen_bottom_layers_is_computed_once(student_dir, checkpointing):
    """With adapters in the top layer only, the shared prefix's pass through the bottom layer is computed on the first
    call and replayed on later ones, also in the backward pass's recomputation under checkpointing; loss, log-probs,
    entropy and gradients stay those of the unshared computation, and after a frozen weight changes the pass is
    computed again (fp32, 1e-5 relative)."""
    unshared, shared = (lora_model(student_dir, s, lora_layers=[1]) for s in (False, True))
    if checkpointing:
        shared.gradient_checkpointing_enable({"use_reentrant": False})
    unshared.train(), shared.train()
    batch = grpo_batch(shared.config.vocab_size)
    bottom = shared.get_base_model().model.layers[0]
    lengths = []
    bottom.self_attn.register_forward_pre_hook(
        lambda m, args, kwargs: lengths.append(kwargs["hidden_states"].shape[1]), with_kwargs=True)
    for change, computed in ((False, 2), (False, 0), (True, 2)):
        if change:
            for model in (unshared, shared):
                with torch.no_grad():
                    model.get_base_model().model.layers[0].mlp.down_proj.weight.mul_(1.5)
        lengths.clear()
        want, got = grpo_shaped_loss(unshared, batch), grpo_shaped_loss(shared, batch)
        unshared.zero_grad(), shared.zero_grad()
        for expected, actual in zip(want[:4], got[:4]):
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
        assert_close_grads(want[4], got[4])
        # The 40-token system block reaches the bottom layer only when its pass is (re)computed: once for the
        # reference forward (adapter off: both layers frozen) and once for the policy's.
        assert lengths.count(40) == computed


def test_micro_batches_pack_the_longest_rows_first():
    assert prefix_sharing._micro_batches([8, 5, 12], 16) == [[2], [0, 1]]
    assert prefix_sharing._micro_batches([3, 3, 3, 3], 6) == [[0, 1], [2, 3]]
    assert prefix_sharing._micro_batches([40, 2], 16) == [[0], [1]]  # a row over the budget runs alone


def test_lm_head_runs_only_on_labelled_positions(student_dir, monkeypatch):
    rows = []
    apply = prefix_sharing.ChunkedLogProbFunction.apply

    class Counting:
        @staticmethod
        def apply(hidden, *args):
            rows.append(hidden.shape[0])
            return apply(hidden, *args)

    monkeypatch.setattr(prefix_sharing, "ChunkedLogProbFunction", Counting)
    model = lora_model(student_dir, True)
    ids, mask, labels, _ = grpo_batch(model.config.vocab_size)
    model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    assert rows == [int((labels != -100).sum())] and rows[0] < ids.numel() // 4


class CallThenEndEvenRows(LogitsProcessor):
    """First turn: every row calls a tool (so tool output sits inside the completions). Later turns: even rows
    answer after a few sampled tokens, odd rows sample on, so that each group's rewards differ."""

    def __init__(self, tokenizer, after: int = 4):
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.call = tokenizer.encode('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')
        self.header = tokenizer.encode("<|im_start|>assistant\n")
        self.tokenizer, self.after = tokenizer, after

    def __call__(self, input_ids, scores):
        for row, ids in enumerate(input_ids.tolist()):
            start = max(i for i in range(len(ids)) if ids[i:i + len(self.header)] == self.header) + len(self.header)
            step = len(ids) - start
            if "<tool_response>" not in self.tokenizer.decode(ids[:start]):
                forced = [*self.call, self.end][min(step, len(self.call))]
            elif row % 2 == 0 and step >= self.after:
                forced = self.end
            else:
                continue
            scores[row] = float("-inf")
            scores[row, forced] = 0.0
        return scores


def test_grpo_step_through_the_agent_matches_trl(student_dir, traces, workdir, monkeypatch):
    """Two GRPO steps through the real calculator agent with beta > 0, multi-turn (tool output inside the
    completions): the same rollouts (same seed) give the same loss, KL, entropy and gradient norm with and without
    prefix sharing (where the LM head skips tool output), and with gradient checkpointing."""
    references = build_references(traces)
    steering = LogitsProcessorList([CallThenEndEvenRows(load_student(student_dir)[1])])
    logs = {}
    for shared, checkpointing in ((False, False), (True, False), (True, True)):
        monkeypatch.setattr(SharedPrefixGRPOTrainer, "share_prefix", shared)
        cfg = config(workdir / f"grpo-{shared}-{checkpointing}", steps=2, prompts_per_step=2, num_generations=3,
                     beta=0.04, max_new_tokens=40, gradient_checkpointing=checkpointing)
        fn = graph_rollout_fn(agent(ScriptedCalculatorTeacher()), logits_processor=steering)
        logs[shared, checkpointing] = [h for h in grpo(student_dir, None, references, fn, cfg).metrics if "loss" in h]
    for unshared, *others in zip(logs[False, False], logs[True, False], logs[True, True], strict=True):
        for key in ("loss", "kl", "entropy", "grad_norm", "reward", "completions/mean_length"):
            assert all(other[key] == pytest.approx(unshared[key], rel=1e-4, abs=1e-7) for other in others), key
    assert logs[True, False][0]["grad_norm"] > 0 and logs[True, False][1]["kl"] > 0
    assert logs[True, False][0]["rollout/tool_calls"] >= 1  # tool output inside the completions, out of the loss


def test_sft_loss_and_gradients_equal_the_unshared_computation(student_dir, traces, workdir, monkeypatch):
    results = {}
    for shared in (False, True):
        monkeypatch.setattr(SharedPrefixSFTTrainer, "share_prefix", shared)
        captured = {}

        class Capture(SharedPrefixSFTTrainer):
            def training_step(self, model, inputs, num_items_in_batch=None):
                loss = super().training_step(model, inputs, num_items_in_batch)
                captured["inputs"] = inputs
                captured["grads"] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
                captured["loss"] = loss.detach()
                self.control.should_training_stop = True
                return loss

        monkeypatch.setattr("mentor_agents.training.sft_trainer.SharedPrefixSFTTrainer", Capture)
        sft(student_dir, None, traces, config(workdir / f"sft-{shared}", sft_steps=1, sft_batch_size=4,
                                              lora_dropout=0.0))
        results[shared] = captured
    ids = results[True]["inputs"]["input_ids"]
    assert ids.shape[0] == 4 and torch.equal(ids, results[False]["inputs"]["input_ids"])
    torch.testing.assert_close(results[True]["loss"], results[False]["loss"], rtol=1e-5, atol=1e-6)
    assert_close_grads(results[False]["grads"], results[True]["grads"])


def test_unsupported_inputs_get_a_clear_error(student_dir):
    model = lora_model(student_dir, True)
    ids, mask, labels, _ = grpo_batch(model.config.vocab_size)
    with pytest.raises(TypeError, match="position_ids"):
        model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True,
              position_ids=torch.arange(ids.shape[1])[None])
    scaled = copy.deepcopy(load_student(student_dir)[0])
    scaled.config.logit_scale = 2.0
    with pytest.raises(ValueError, match="logit_scale"):
        add_shared_prefix_head(scaled)
    with pytest.raises(ValueError, match="micro_batch_tokens must be at least 1"):
        add_shared_prefix_head(load_student(student_dir)[0], micro_batch_tokens=0)
