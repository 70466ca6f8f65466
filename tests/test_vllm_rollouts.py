"""The vLLM rollout backend through TRL's real ``VLLMClient``, against a small fake of the vLLM server protocol TRL
speaks (``/health``, ``/v1/models``, ``/server_info``, ``/v1/completions`` with token-id prompts and logprobs as
``token_id:N``), backed by a real tiny transformers model: the completion ids and logprobs come back token-exact, the
real calculator graph's rollouts through vLLM equal the local path's, and a TRL GRPO step with ``use_vllm=True``
takes its rollouts from the server."""

import pytest
import torch
from fastapi import FastAPI
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

from forcing import CALLS, ToolTurnsThenModel, references
from mentor_agents.demo.calculator import ScriptedCalculatorTeacher, build_agent
from mentor_agents.integrations.langgraph.rollouts import graph_rollout_fn, run_rollouts
from mentor_agents.integrations.openai.server import running_server
from mentor_agents.chat_templates import stop_token_ids
from mentor_agents.from_scratch import make_tiny_student
from mentor_agents.training import TrainConfig, grpo
from mentor_agents.vllm_rollouts import VLLMClientBackend

torch.set_num_threads(1)


def fake_vllm(model, requests: list, processor=None) -> FastAPI:
    """Answers the way vLLM's completions API does, from ``model``: greedy at temperature 0, else sampled from the
    scores after ``processor`` (a transformers logits processor, standing in for the policy's choices) at the
    request's temperature. Logprobs are of the unprocessed logits at that temperature."""
    app = FastAPI()

    @app.get("/health")
    def health():
        return {}

    @app.get("/v1/models")
    def models():
        return {"data": [{"id": "tiny"}]}

    @app.get("/server_info")
    def server_info():
        return {"vllm_config": {"model_config": {"logprobs_mode": "processed_logprobs"},
                                "weight_transfer_config": None}}

    @app.post("/v1/completions")
    def completions(body: dict):
        requests.append(body)
        return {"choices": [complete(model, list(prompt), body, processor) for prompt in body["prompt"]]}

    return app


def complete(model, prompt: list[int], body: dict, processor) -> dict:
    ids, logprobs, temperature = list(prompt), [], body["temperature"]
    for _ in range(body["max_tokens"]):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        scores = logits if processor is None else processor(torch.tensor([ids]), logits[None].clone())[0]
        token = int(scores.argmax()) if temperature == 0 else int(torch.multinomial(
            torch.softmax(scores / temperature, -1), 1))
        logprob = (logits / (temperature or 1.0)).log_softmax(-1)[token]
        logprobs.append({"token": f"token_id:{token}", "logprob": float(logprob), "top_logprobs": []})
        ids.append(token)
        if token in body["stop_token_ids"]:
            break
    return {"prompt_token_ids": prompt, "token_ids": ids[len(prompt):], "logprobs": {"content": logprobs}}


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    return make_tiny_student(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="module")
def tiny(student_dir):
    return AutoModelForCausalLM.from_pretrained(student_dir).eval(), AutoTokenizer.from_pretrained(student_dir)


@pytest.fixture
def vllm_client(monkeypatch):
    import trl.generation.vllm_client as vllm_client

    monkeypatch.setattr(vllm_client, "is_vllm_available", lambda: True)  # the client needs vllm only for NCCL sync
    return vllm_client


def test_token_id_prompts_come_back_token_exact_through_trls_client(tiny, vllm_client):
    model, tokenizer = tiny
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             return_dict=True)["input_ids"]
               for text in ("What is 2 plus 3?", "Compute 17 times 4, please.")]
    stops = stop_token_ids(tokenizer, model)
    requests = []
    with running_server(fake_vllm(model, requests)) as base_url:
        client = vllm_client.VLLMClient(base_url=base_url.removesuffix("/v1"))
        backend = VLLMClientBackend(client)
        generated = backend.generate(prompts, max_new_tokens=12, temperature=0.0, stop_token_ids=stops)

    assert [g.prompt_ids for g in generated] == prompts
    assert requests[0]["prompt"] == prompts and requests[0]["stop_token_ids"] == stops
    assert requests[0]["return_token_ids"] and requests[0]["max_tokens"] == 12
    for prompt, turn in zip(prompts, generated):
        with torch.no_grad():
            expected = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                      eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)[0, len(prompt):]
            logits = model(torch.tensor([prompt + turn.completion_ids])).logits[0, len(prompt) - 1:-1]
        assert turn.completion_ids == expected.tolist()
        reference = logits.log_softmax(-1).gather(1, torch.tensor(turn.completion_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(turn.logprobs), reference, rtol=0, atol=1e-4)
    assert backend.generate([], max_new_tokens=12) == []


def test_graph_rollouts_through_vllm_equal_the_local_path(tiny, vllm_client):
    """The real calculator graph, 4 rollouts of 3 turns (two forced tool calls run by the real tools, then the
    model's greedy answer): through the vLLM backend the prompts, completions, masks and logprobs equal the local
    batched path's, with the same processor applied on the local model and on the server."""
    model, tokenizer = tiny
    processor = ToolTurnsThenModel(tokenizer, CALLS)
    config = TrainConfig(max_new_tokens=24, max_turns=3)
    agent = build_agent(ScriptedCalculatorTeacher())
    local = run_rollouts(agent, references(4), model, tokenizer, config,
                         logits_processor=LogitsProcessorList([processor]))
    requests = []
    with running_server(fake_vllm(model, requests, processor)) as base_url:
        backend = VLLMClientBackend(vllm_client.VLLMClient(base_url=base_url.removesuffix("/v1")))
        remote = run_rollouts(agent, references(4), model, tokenizer, config, backend=backend)

    assert len(requests) == 3 and [len(r["prompt"]) for r in requests] == [4, 4, 4]  # one batch per turn
    assert [r.turns for r in remote] == [3, 3, 3, 3] and [len(r.tool_calls) for r in remote] == [2, 2, 2, 2]
    for a, b in zip(local, remote):
        assert a.prompt_ids == b.prompt_ids and a.completion_ids == b.completion_ids
        assert a.completion_mask == b.completion_mask and a.final_answer == b.final_answer
        assert a.finished == b.finished
        torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="cannot apply logits_processor"):
        run_rollouts(agent, references(1), model, tokenizer, config, backend=backend,
                     logits_processor=LogitsProcessorList([processor]))


def test_grpo_step_with_use_vllm_takes_its_rollouts_from_the_server(student_dir, tiny, vllm_client, monkeypatch,
                                                                     tmp_path):
    """A real TRL GRPO step with ``TrainConfig(use_vllm=True)``: the trainer's own ``VLLMClient`` (built by TRL
    from ``vllm_server_base_url``) serves the graph rollouts. TRL's NCCL weight transfer needs CUDA and vLLM, so it
    is skipped here; the server holds the base weights, which equal the policy before its first update (LoRA B=0)."""
    import trl.generation.vllm_generation as vllm_generation

    monkeypatch.setattr(vllm_generation, "is_vllm_available", lambda: True)
    monkeypatch.setattr(vllm_client.VLLMClient, "init_communicator", lambda self, device=0: None)
    monkeypatch.setattr(vllm_generation.VLLMGeneration, "sync_weights", lambda self: None)
    model, tokenizer = tiny
    requests = []
    with running_server(fake_vllm(model, requests, ToolTurnsThenModel(tokenizer, CALLS))) as base_url:
        config = TrainConfig(steps=1, prompts_per_step=1, num_generations=2, max_turns=3, max_new_tokens=24,
                             use_vllm=True, vllm_server_base_url=base_url.removesuffix("/v1"), use_cpu=True)
        result = grpo(str(student_dir), None, references(1), graph_rollout_fn(build_agent(ScriptedCalculatorTeacher())),
                      config, tmp_path / "grpo")

    assert len(requests) == 3 and all(len(r["prompt"]) == 2 for r in requests)
    step = next(m for m in result.metrics if "reward" in m)
    # Only the server is forced to call tools; the random tiny student never would on its own.
    assert step["rollout/tool_calls"] == 2.0 and step["rollout/turns"] == 3.0
    # TRL compares the server's logprobs of the sampled tokens with the policy's own (importance sampling).
    assert step["sampling/sampling_logp_difference/max"] < 1e-4
    assert step["sampling/importance_sampling_ratio/min"] == pytest.approx(1.0, abs=1e-4)
    assert len((tmp_path / "grpo" / "rollouts.jsonl").read_text().splitlines()) == 2
