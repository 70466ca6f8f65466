"""Prefix KV reuse (issue 13): multi-turn rollouts through the real calculator graph with and without the per-rollout
KV cache, the fallback when the template re-renders a turn, and the student chat model's cache across calls, in
process and through the real HTTP server under concurrent requests with different tool sets."""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from peft import LoraConfig, get_peft_model
from transformers import LogitsProcessorList

from forcing import CALLS, ToolTurnsThenModel, references
from mentor_agents.integrations.langgraph import StudentChatModel, TokenRecorder
from mentor_agents.demo.calculator import (
    SYSTEM_PROMPT,
    TOOLS,
    ScriptedCalculatorTeacher,
    build_agent,
)
from mentor_agents.integrations.langgraph.rollouts import run_rollouts
from mentor_agents.integrations.openai.server import create_app, running_server
from mentor_agents.prefix_cache import PrefixCache
from mentor_agents.training import TrainConfig, rollout_metrics

torch.set_num_threads(1)


class EmbeddedTokens:
    """Counts the tokens the model runs through its embedding (prefill and decode), with a real forward hook."""

    def __init__(self, model) -> None:
        self.count = 0
        self.handle = model.get_input_embeddings().register_forward_hook(self.hook)

    def hook(self, module, inputs, output) -> None:
        self.count += inputs[0].numel()


def rollouts(tiny, reuse_kv: bool, processor, tokenizer=None, seed: int = 0):
    model, tok = tiny
    counter = EmbeddedTokens(model)
    torch.manual_seed(seed)
    try:
        result = run_rollouts(build_agent(ScriptedCalculatorTeacher()), references(4), model, tokenizer or tok,
                              TrainConfig(max_new_tokens=24, max_turns=3), reuse_kv=reuse_kv,
                              logits_processor=LogitsProcessorList([processor]))
    finally:
        counter.handle.remove()
    return result, counter.count


def shared_prompt_length(tokenizer) -> int:
    schemas = [convert_to_openai_tool(t) for t in TOOLS]
    a, b = (tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q}],
                                          tools=schemas, tokenize=True, return_dict=True)["input_ids"]
            for q in ("x", "y z"))
    return next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)


def test_greedy_multi_turn_rollouts_are_token_identical_with_kv_reuse(tiny):
    processor = ToolTurnsThenModel(tiny[1], CALLS)
    plain, plain_tokens = rollouts(tiny, False, processor)
    cached, cached_tokens = rollouts(tiny, True, processor)
    assert [r.turns for r in cached] == [3, 3, 3, 3] and len({len(r.prompt_ids) for r in cached}) > 1  # ragged
    assert [len(r.tool_calls) for r in cached] == [2, 2, 2, 2]
    for a, b in zip(plain, cached):
        assert a.prompt_ids == b.prompt_ids and a.completion_ids == b.completion_ids
        assert a.completion_mask == b.completion_mask and a.final_answer == b.final_answer
        assert [(c.name, c.args) for c in a.tool_calls] == [(c.name, c.args) for c in b.tool_calls]
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)
        assert b.prefill_fallbacks == 0
    # The 12-tool system prompt is computed once for the 4 rollouts, and later turns add only their new tokens.
    shared = shared_prompt_length(tiny[1])
    assert shared > 1000 and cached_tokens < 2 * shared < plain_tokens / 4, (shared, cached_tokens, plain_tokens)


def test_sampled_rollouts_with_kv_reuse_are_seeded(tiny):
    processor = ToolTurnsThenModel(tiny[1], CALLS[:1], greedy=False)
    first, _ = rollouts(tiny, True, processor, seed=3)
    again, _ = rollouts(tiny, True, processor, seed=3)
    other, _ = rollouts(tiny, True, processor, seed=4)
    assert [r.completion_ids for r in first] == [r.completion_ids for r in again]
    assert [r.completion_ids for r in first] != [r.completion_ids for r in other]


def test_rerendered_turn_falls_back_to_prefill_and_is_counted(tiny):
    """A template that renders tool calls without the space the model wrote: each later turn's history differs
    from the sampled tokens, so the row re-prefills from the first difference, with the same tokens as uncached."""
    model, tokenizer = tiny
    squeezed = copy.deepcopy(tokenizer)
    squeezed.chat_template = tokenizer.chat_template.replace('{"name": "', '{"name":"')
    assert squeezed.chat_template != tokenizer.chat_template
    processor = ToolTurnsThenModel(tokenizer, CALLS)
    plain, _ = rollouts(tiny, False, processor, tokenizer=squeezed)
    cached, _ = rollouts(tiny, True, processor, tokenizer=squeezed)
    for a, b in zip(plain, cached):
        assert a.completion_ids == b.completion_ids and a.prompt_ids == b.prompt_ids
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)
    assert [r.prefill_fallbacks for r in cached] == [2, 2, 2, 2]  # turns 2 and 3 re-render a call
    assert rollout_metrics(cached)["rollout/prefill_fallbacks"] == 2.0
    assert rollout_metrics(plain)["rollout/prefill_fallbacks"] == 0.0


# ------------------------------------------------------------------------------------------ across calls


def conversations() -> list[tuple[list, list]]:
    """Different tool sets and conversations sharing the system prompt, including a follow-up after a tool call."""
    add_only = [t for t in TOOLS if t.name == "add"]
    system = SystemMessage(SYSTEM_PROMPT)
    return [([system, HumanMessage("What is 3 plus 2?")], TOOLS),
            ([system, HumanMessage("Compute 17 times 23, then add 9.")], TOOLS),
            ([system, HumanMessage("What is 3 plus 2?")], add_only),
            ([HumanMessage("Say hello.")], []),
            ([system, HumanMessage("What is 3 plus 2? Think step by step.")], TOOLS)]


def answer(student: StudentChatModel, messages, tools) -> tuple[list[int], list[float]]:
    recorder = TokenRecorder()
    (student.bind_tools(tools) if tools else student).invoke(messages, config={"callbacks": [recorder]})
    (record,) = recorder.records
    return record.generated_ids, record.logprobs


def assert_same(a: tuple[list[int], list[float]], b: tuple[list[int], list[float]]) -> None:
    assert a[0] == b[0]
    assert torch.allclose(torch.tensor(a[1]), torch.tensor(b[1]), atol=1e-4)


def test_chat_model_reuses_prefix_across_calls_with_uncached_tokens(tiny):
    model, tokenizer = tiny
    plain = StudentChatModel(model=model, tokenizer=tokenizer, max_new_tokens=16, prefix_cache=None)
    cached = StudentChatModel(model=model, tokenizer=tokenizer, max_new_tokens=16)
    for _ in range(2):
        for messages, tools in conversations():
            assert_same(answer(cached, messages, tools), answer(plain, messages, tools))
    cache = cached.prefix_cache
    assert cache.calls == 10 and cache.reused_tokens > 4 * cache.prefilled_tokens
    assert 0 < cache.nbytes <= cache.max_bytes


def test_prefix_cache_is_bounded(tiny):
    model, tokenizer = tiny
    plain = StudentChatModel(model=model, tokenizer=tokenizer, max_new_tokens=8, prefix_cache=None)
    small = StudentChatModel(model=model, tokenizer=tokenizer, max_new_tokens=8, prefix_cache=PrefixCache(4 << 20))
    for messages, tools in conversations():
        assert_same(answer(small, messages, tools), answer(plain, messages, tools))
        assert small.prefix_cache.nbytes <= 4 << 20
    assert 1 <= len(small.prefix_cache.entries) < len(conversations())


def test_prefix_cache_is_dropped_when_weights_change(tiny, tmp_path):
    model, tokenizer = tiny
    model = copy.deepcopy(model)
    torch.manual_seed(0)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["k_proj", "v_proj"], init_lora_weights=False))
    cached = StudentChatModel(model=lora, tokenizer=tokenizer, max_new_tokens=12)
    plain = StudentChatModel(model=lora, tokenizer=tokenizer, max_new_tokens=12, prefix_cache=None)
    messages, tools = conversations()[0]
    answer(cached, messages, tools)
    assert cached.prefix_cache.entries
    # A training step (in-place update of the adapter weights) changes the keys and values of the whole prompt.
    optimizer = torch.optim.SGD([p for p in lora.parameters() if p.requires_grad], lr=1.0)
    lora(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([[5, 6, 7]])).loss.backward()
    optimizer.step()
    assert_same(answer(cached, messages, tools), answer(plain, messages, tools))
    # So does switching the adapter off.
    with lora.disable_adapter():
        assert_same(answer(cached, messages, tools), answer(plain, messages, tools))
    assert_same(answer(cached, messages, tools), answer(plain, messages, tools))
    assert cached.prefix_cache.calls == 4 and len(cached.prefix_cache.entries) == 1


def test_served_cache_under_concurrent_requests_with_different_tool_sets(tiny):
    """`create_app` as `mentor serve` builds it (a `StudentChatModel`, its default cache), 4 model calls at once,
    queried by the real openai client from 8 threads; every reply equals the uncached greedy answer."""
    model, tokenizer = tiny
    student = StudentChatModel(model=model, tokenizer=tokenizer, max_new_tokens=16)
    plain = StudentChatModel(model=model, tokenizer=tokenizer, max_new_tokens=16, prefix_cache=None)
    requests = []
    for messages, tools in conversations():
        body = [{"role": "system" if isinstance(m, SystemMessage) else "user", "content": m.content} for m in messages]
        requests.append((body, [convert_to_openai_tool(t) for t in tools]))
    expected = []
    for messages, tools in conversations():
        message = (plain.bind_tools(tools) if tools else plain).invoke(messages)
        expected.append((message.content, [(c["name"], c["args"]) for c in message.tool_calls]))

    with running_server(create_app(student, "student", max_concurrency=4)) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)

        def ask(i: int):
            body, tools = requests[i % len(requests)]
            reply = client.chat.completions.create(model="student", messages=body, temperature=0,
                                                   **({"tools": tools} if tools else {}))
            message = reply.choices[0].message
            calls = [(c.function.name, json.loads(c.function.arguments))
                     for c in message.tool_calls or []]
            return message.content or "", calls

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(ask, range(4 * len(requests))))
    assert replies == [expected[i % len(requests)] for i in range(len(replies))]
    assert student.prefix_cache.reused_tokens > 0 and student.prefix_cache.calls == len(replies)


def graph_runs(chat, tasks, concurrent: bool):
    """Each task through the real calculator graph on ``chat``; per task its token records and final answer."""
    graph = build_agent(ScriptedCalculatorTeacher())
    from mentor_agents.integrations.langgraph.graphs import swap_model

    graph = swap_model(graph, chat)

    def one(task):
        recorder = TokenRecorder()
        state = graph.invoke({"messages": [{"role": "user", "content": task.input}]},
                             config={"callbacks": [recorder], "recursion_limit": 20})
        return recorder.records, state["messages"][-1].content

    if not concurrent:
        return [one(t) for t in tasks]
    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        return list(pool.map(one, tasks))


def test_concurrent_batcher_gives_the_tokens_of_calls_one_by_one(tiny):
    from mentor_agents.demo.calculator import make_tasks
    from mentor_agents.prefix_cache import ConcurrentBatcher

    model, tok = tiny
    tasks = make_tasks(5, "test", seed=0)
    processor = LogitsProcessorList([ToolTurnsThenModel(tok, CALLS)])
    settings = dict(tokenizer=tok, max_new_tokens=24, logits_processor=processor, prefix_cache=None)
    counter = EmbeddedTokens(model)
    alone = graph_runs(StudentChatModel(model=model, **settings), tasks, concurrent=False)
    alone_tokens, counter.count = counter.count, 0
    batcher = ConcurrentBatcher(model, tok.pad_token_id, max_batch=4, wait_s=0.2)
    batched = graph_runs(StudentChatModel(model=batcher, **settings), tasks, concurrent=True)
    counter.handle.remove()

    for (records_a, answer_a), (records_b, answer_b) in zip(alone, batched):
        assert len(records_a) == len(records_b) == 3 and answer_a == answer_b
        for a, b in zip(records_a, records_b):
            assert a.prompt_ids == b.prompt_ids and a.generated_ids == b.generated_ids
            assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)
    # 5 runs x 3 turns went through batches of up to 4 (the 5th run waits for a free place), and the 12-tool
    # prompt was prefilled once, not per call.
    assert sum(size * n for size, n in batcher.batch_sizes.items()) == 15 and max(batcher.batch_sizes) == 4
    assert counter.count < alone_tokens / 4, (counter.count, alone_tokens)
    assert len(batcher.kv.rows) <= batcher.max_rows
