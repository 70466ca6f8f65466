"""The vLLM rollout backend through TRL's real ``VLLMClient``, against a small fake of the vLLM server protocol TRL
speaks (``/health``, ``/v1/models``, ``/v1/completions`` with token-id prompts and logprobs as ``token_id:N``),
backed by a real tiny transformers model: the completion ids and logprobs come back token-exact."""

import pytest
import torch
from fastapi import FastAPI
from transformers import AutoModelForCausalLM, AutoTokenizer

from mentor_agents.integrations.openai.server import running_server
from mentor_agents.student import make_tiny_student, stop_token_ids
from mentor_agents.vllm_rollouts import VLLMClientBackend

torch.set_num_threads(1)


def fake_vllm(model, requests: list) -> FastAPI:
    """Greedy (temperature 0) or seeded sampling from ``model``, answering the way vLLM's completions API does."""
    app = FastAPI()

    @app.get("/health")
    def health():
        return {}

    @app.get("/v1/models")
    def models():
        return {"data": [{"id": "tiny"}]}

    @app.post("/v1/completions")
    def completions(body: dict):
        requests.append(body)
        choices = []
        for prompt in body["prompt"]:
            ids, logprobs = list(prompt), []
            for _ in range(body["max_tokens"]):
                with torch.no_grad():
                    logits = model(torch.tensor([ids])).logits[0, -1]
                token = int(logits.argmax())
                logprobs.append({"token": f"token_id:{token}", "logprob": float(logits.log_softmax(-1)[token]),
                                 "top_logprobs": []})
                ids.append(token)
                if token in body["stop_token_ids"]:
                    break
            choices.append({"prompt_token_ids": list(prompt), "token_ids": ids[len(prompt):],
                            "logprobs": {"content": logprobs}})
        return {"choices": choices}

    return app


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_student(tmp_path_factory.mktemp("tiny") / "base")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_token_id_prompts_come_back_token_exact_through_trls_client(tiny, monkeypatch):
    import trl.generation.vllm_client as vllm_client

    monkeypatch.setattr(vllm_client, "is_vllm_available", lambda: True)  # the client needs vllm only for NCCL sync
    model, tokenizer = tiny
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             return_dict=True)["input_ids"]
               for text in ("What is 2 plus 3?", "Compute 17 times 4, please.")]
    stops = stop_token_ids(tokenizer, model)
    requests = []
    with running_server(fake_vllm(model, requests)) as base_url:
        client = vllm_client.VLLMClient(base_url=base_url.removesuffix("/v1"))
        backend = VLLMClientBackend(client, max_new_tokens=12, temperature=0.0, stop_token_ids=stops)
        generated = backend.generate(prompts)

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
    assert backend.generate([]) == []
