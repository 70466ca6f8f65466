"""A vLLM backend for the graph rollouts' batched generation: the same token-id prompts, sent to the vLLM server that
TRL keeps in sync with the policy (``GRPOConfig(use_vllm=True, vllm_mode="server")``), through TRL's own client.

```python
backend = VLLMClientBackend(trainer.vllm_generation.vllm_client)
[turn] = backend.generate([prompt_ids], max_new_tokens=64, temperature=1.0,
                          stop_token_ids=stop_token_ids(tokenizer))   # Generated(prompt_ids, completion_ids, logprobs)
```

The token-exact contract of the rollouts holds: the prompt ids go to vLLM as ids (``/v1/completions`` with a token-id
prompt, as TRL's ``VLLMClient.generate`` sends them), and the completion comes back as ids with the sampled tokens'
logprobs, so nothing is re-tokenized. `mentor_agents.training.grpo_trainer.make_rollout_func` builds this backend
when the trainer runs with ``use_vllm=True`` and hands it to the ``rollout_fn``; the LangGraph rollouts'
``BatchedGenerator`` then sends each batch of turns here instead of to ``model.generate``. Not covered:
``vllm_mode="colocate"`` (``trainer.vllm_generation.llm``, a ``vllm.LLM``), and multi-process runs, where TRL's server
mode keeps the client on the main process only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass
class Generated:
    """One completion: the prompt it continued, its token ids and each sampled token's logprob."""

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float] | None


class VLLMClientBackend:
    """Generates from token-id prompts with TRL's ``VLLMClient`` (a vLLM server started by ``trl vllm-serve`` or
    ``vllm serve``). No per-request seed: the prompts of a GRPO group are identical, and one seed would give
    them one completion."""

    def __init__(self, client: Any):
        self.client = client

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, stop_token_ids: Sequence[int] = ()) -> list[Generated]:
        """One completion per prompt, in prompt order, of at most ``max_new_tokens`` (one model turn's budget),
        ending early at any of ``stop_token_ids``; ``temperature=0`` is greedy."""
        if not prompts:
            return []
        out = self.client.generate(prompts=[list(p) for p in prompts], n=1, max_tokens=max_new_tokens, logprobs=0,
                                   temperature=temperature, top_p=top_p, top_k=top_k,
                                   generation_kwargs={"stop_token_ids": list(stop_token_ids),
                                                      "skip_special_tokens": False})
        logprobs = out["logprobs"] or [None] * len(prompts)
        return [Generated(list(prompt), list(completion), None if lp is None else [top[0] for top in lp])
                for prompt, completion, lp in zip(out["prompt_ids"], out["completion_ids"], logprobs, strict=True)]
