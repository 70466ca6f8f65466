"""Reusing attention keys and values (KV) across model calls that share a token prefix.

An agent sends the same long prompt (system prompt and tool schemas, about 1,200 tokens for the 12-tool calculator)
on every call, and a multi-turn run re-sends its whole conversation each turn. Two caches compute those tokens once:

- `RolloutKV`, for batched rollouts: the prompt all rows share is prefilled once, each row keeps its KV across its
  turns so that a turn prefills only the tokens added since the last one, and decoding stays batched (one
  ``model.generate`` over ragged rows, held apart by the attention mask).
- `PrefixCache`, for one call at a time (the student chat model, ``mentor serve``): a bounded LRU of KV by token
  sequence; a call reuses the longest cached prefix of its prompt. It is dropped when the weights change.

```python
cache = PrefixCache(max_bytes=512 << 20)
out = cache.generate(model, prompt_ids, max_new_tokens=64, do_sample=False, return_dict_in_generate=True)
```

Greedy tokens equal those of an uncached ``generate`` up to float rounding of the split prefill (identical on the
tiny test model and in the SmolLM2 prototype). Works with models whose KV cache is a plain `DynamicCache` (full
attention in every layer: Llama, Qwen2, SmolLM2, Phi-3).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Hashable, Iterable, Sequence, TypeVar

import torch
from transformers import DynamicCache, StaticCache

T = TypeVar("T")


@dataclass(frozen=True)
class KV:
    """The keys and values of one token sequence: per layer ``(keys, values)``, each ``[1, heads, len, head_dim]``.
    Tensors are never written in place, so a `KV` and its crops can share storage."""

    tokens: tuple[int, ...]
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer)

    def crop(self, n: int) -> KV:
        return KV(self.tokens[:n], tuple((k[:, :, :n], v[:, :, :n]) for k, v in self.layers))

    def cache(self, config: Any) -> DynamicCache:
        """A new `DynamicCache` holding these keys and values (``generate`` extends it without touching this one)."""
        return DynamicCache(ddp_cache_data=list(self.layers), config=config)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The number of leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    differ = (torch.tensor(a[:n]) != torch.tensor(b[:n])).nonzero()
    return int(differ[0]) if len(differ) else n


def longest_prefix(prompt: Sequence[int], candidates: Iterable[tuple[Sequence[int], T]]) -> tuple[T | None, int]:
    """Of ``(tokens, item)`` pairs, the item whose tokens share the most leading tokens with ``prompt`` (leaving one
    prompt token to feed), and how many; ``(None, 0)`` when none shares any."""
    best, keep = None, 0
    for tokens, item in candidates:
        n = min(common_prefix(tokens, prompt), len(prompt) - 1)
        if n > keep:
            best, keep = item, n
    return best, keep


def settings_key(kwargs: dict[str, Any]) -> str:
    """Equal for ``generate`` calls with equal keyword arguments: only such calls can share a batch."""
    return repr(sorted(kwargs.items(), key=lambda item: item[0]))


def prefill(model: Any, tokens: Sequence[int]) -> KV:
    """The KV of ``tokens`` (one forward pass, batch 1)."""
    if not tokens:
        return KV((), ())
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=torch.tensor([list(tokens)], device=model.device), cache=cache, use_cache=True,
              logits_to_keep=1)
    return KV(tuple(tokens), tuple((layer.keys, layer.values) for layer in cache.layers))


def row_kv(cache: DynamicCache, row: int, columns: torch.Tensor, tokens: Sequence[int]) -> KV:
    """Row ``row`` of a batched cache, keeping the slots ``columns`` (in order), as the KV of ``tokens``."""
    columns = columns.to(cache.layers[0].keys.device)
    return KV(tuple(tokens), tuple((layer.keys[row:row + 1].index_select(2, columns),
                                    layer.values[row:row + 1].index_select(2, columns)) for layer in cache.layers))


def end_of_turn(generated: Sequence[int], end_ids: Sequence[int]) -> int:
    """How many of ``generated`` belong to the turn: up to and including the first end token."""
    return next((i + 1 for i, t in enumerate(generated) if t in end_ids), len(generated))


def _as_ids(value: Any) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


# ---------------------------------------------------------------------------------------------- batched rollouts


class RolloutKV:
    """Per-rollout KV caches for batched multi-turn generation, keyed by rollout slot.

    `generate` takes the full prompt of each row, as an uncached ``generate`` would. A row's new prompt normally
    starts with the tokens its cache holds (previous prompt plus sampled turn); where the chat template re-renders
    the history differently, the row keeps only the common prefix, re-prefills the rest and the slot's
    ``prefill_fallbacks`` count goes up. Rows without a cache start from the prefix all of them share, prefilled once.
    """

    def __init__(self, model: Any, pad_token_id: int) -> None:
        self.model, self.pad_token_id = model, pad_token_id
        self.rows: dict[int, KV] = {}
        self.prefill_fallbacks: Counter[int] = Counter()

    def drop(self, slot: int) -> None:
        """Free the cache of a rollout that has ended."""
        self.rows.pop(slot, None)

    def generate(self, slots: Sequence[int], prompts: Sequence[list[int]], **kwargs: Any) -> tuple[Any, int]:
        """``model.generate(**kwargs)`` over the rows ``prompts`` (one per slot), reusing each slot's cache.

        Returns the ``generate`` output and the prompt width: row ``r`` generated ``out.sequences[r, width:]``, and
        ``out.logits`` is as ``generate`` gives it. ``kwargs`` must ask for ``return_dict_in_generate=True`` and
        give ``max_new_tokens`` (the batch's cache is allocated for it).
        """
        held = self._reused(slots, prompts)
        cache, mask = self._prefill(held, prompts, kwargs["max_new_tokens"])
        device = self.model.device
        width = mask.shape[1] + 1
        input_ids = torch.tensor([[self.pad_token_id] * (width - len(p)) + p for p in prompts], device=device)
        attention = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, cache=cache, **kwargs)
        end_ids = _as_ids(kwargs.get("eos_token_id"))
        for row, (slot, prompt) in enumerate(zip(slots, prompts)):
            generated = out.sequences[row, width:].tolist()
            fed = end_of_turn(generated, end_ids) - 1  # the turn's last token is sampled, never fed
            columns = torch.cat([attention[row].nonzero()[:, 0], torch.arange(width, width + fed, device=device)])
            self.rows[slot] = row_kv(out.cache, row, columns, prompt + generated[:fed])
        return out, width

    def _reused(self, slots: Sequence[int], prompts: Sequence[list[int]]) -> list[KV | None]:
        """The cached KV each row keeps (at least one prompt token is left to feed), or None for rows without one."""
        held: list[KV | None] = []
        for slot, prompt in zip(slots, prompts):
            kv = self.rows.get(slot)
            if kv is not None:
                keep = common_prefix(kv.tokens, prompt)
                if keep < len(kv):
                    self.prefill_fallbacks[slot] += 1
                kv = kv.crop(min(keep, len(prompt) - 1))
            held.append(kv)
        fresh = [p for p, kv in zip(prompts, held) if kv is None]
        if fresh:
            shared = min(min(common_prefix(fresh[0], p) for p in fresh), min(map(len, fresh)) - 1)
            kv = prefill(self.model, fresh[0][:shared])
            held = [kv if h is None else h for h in held]
        return held

    def _prefill(self, held: list[KV], prompts: Sequence[list[int]], new_tokens: int,
                 ) -> tuple[StaticCache, torch.Tensor]:
        """One batched cache with room for ``new_tokens`` more: row r holds ``held[r]`` left-padded to a common
        length, then the row's new prompt tokens but the last (left-padded as well). The mask marks the valid slots;
        positions count valid tokens only, as in an unpadded run. The cache is static: a decoding step writes into it
        in place, where a `DynamicCache` would copy every row's keys and values to append one token."""
        device, rows = self.model.device, len(prompts)
        width = max(map(len, held))
        chunks = [p[len(kv):-1] for p, kv in zip(prompts, held)]
        new = max(map(len, chunks))
        cache = StaticCache(config=self.model.config, max_cache_len=width + new + 1 + new_tokens)
        mask = torch.zeros(rows, width, dtype=torch.long, device=device)
        for i, (keys, values) in enumerate(max(held, key=len).layers):
            k = keys.new_zeros(rows, keys.shape[1], width, keys.shape[3])
            v = values.new_zeros(rows, values.shape[1], width, values.shape[3])
            for r, kv in enumerate(held):
                if len(kv):
                    k[r, :, width - len(kv):] = kv.layers[i][0][0]
                    v[r, :, width - len(kv):] = kv.layers[i][1][0]
            cache.layers[i].update(k, v)
        for r, kv in enumerate(held):
            mask[r, width - len(kv):] = 1
        if not new:
            return cache, mask
        ids = torch.full((rows, new), self.pad_token_id, dtype=torch.long, device=device)
        new_mask = torch.zeros(rows, new, dtype=torch.long, device=device)
        positions = torch.zeros(rows, new, dtype=torch.long, device=device)
        for r, (chunk, kv) in enumerate(zip(chunks, held)):
            if chunk:
                ids[r, new - len(chunk):] = torch.tensor(chunk, device=device)
                new_mask[r, new - len(chunk):] = 1
                positions[r, new - len(chunk):] = torch.arange(len(kv), len(kv) + len(chunk), device=device)
        mask = torch.cat([mask, new_mask], dim=1)
        with torch.no_grad():
            self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                       logits_to_keep=1)
        return cache, mask


# ------------------------------------------------------------------------------------------------ across calls


def weights_version(model: Any) -> Hashable:
    """Changes whenever the weights a forward pass uses change: an in-place update of any parameter (optimizer
    step, ``load_state_dict``), a replaced parameter, or another active / disabled / merged LoRA adapter."""
    params = tuple((p.data_ptr(), p._version) for p in model.parameters())
    adapters = tuple((tuple(m.active_adapters), m.disable_adapters, m.merged) for m in model.modules()
                     if hasattr(m, "active_adapters") and hasattr(m, "merged"))
    return hash((id(model), params, adapters))


class PrefixCache:
    """A bounded LRU of KV caches by token sequence, shared by calls one after another or concurrent.

    `generate` reuses the longest cached prefix of the prompt and stores the KV of the prompt and the generated
    turn, so the next call of the same conversation (or any call with the same system prompt and tools) prefills
    only what is new. Entries are evicted least recently used first once they hold more than ``max_bytes``; an
    entry that extends another replaces it. The cache empties itself when `weights_version` of the model changes.
    Each call generates from its own copy of the cached tensors, so concurrent calls never share mutable state.
    """

    def __init__(self, max_bytes: int = 512 << 20) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[int, ...], KV] = OrderedDict()
        self.version: Hashable = None
        self.lock = threading.Lock()
        self.calls = self.reused_tokens = self.prefilled_tokens = 0

    def __deepcopy__(self, memo: dict) -> PrefixCache:
        # A deep copy of a chat model gets its own weights, so its own (empty) cache.
        return PrefixCache(self.max_bytes)

    @property
    def nbytes(self) -> int:
        return sum(kv.nbytes for kv in self.entries.values())

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()

    def lookup(self, model: Any, prompt: Sequence[int]) -> tuple[KV | None, Hashable]:
        """The longest cached prefix of ``prompt`` (leaving one token to feed), and the weights version it is for."""
        version = weights_version(model)
        with self.lock:
            if version != self.version:
                self.entries.clear()
                self.version = version
            best, keep = longest_prefix(prompt, ((tokens, tokens) for tokens in self.entries))
            self.calls += 1
            self.reused_tokens += keep
            self.prefilled_tokens += len(prompt) - keep
            if best is None:
                return None, version
            self.entries.move_to_end(best)
            return self.entries[best].crop(keep), version

    def store(self, kv: KV, version: Hashable) -> None:
        """Keep ``kv`` if the weights are still those of ``version`` and it fits."""
        if kv.nbytes > self.max_bytes or not len(kv):
            return
        with self.lock:
            if version != self.version:
                return
            for tokens in [t for t in self.entries if kv.tokens[:len(t)] == t]:
                del self.entries[tokens]
            self.entries[kv.tokens] = kv
            total = self.nbytes
            while total > self.max_bytes:
                _, evicted = self.entries.popitem(last=False)
                total -= evicted.nbytes

    def generate(self, model: Any, prompt: Sequence[int], **kwargs: Any) -> Any:
        """``model.generate`` on the single prompt ``prompt`` (``kwargs`` as for ``generate``, with
        ``return_dict_in_generate=True``), prefilling only what the cache does not hold."""
        cached, version = self.lookup(model, prompt)
        input_ids = torch.tensor([list(prompt)], device=model.device)
        reuse = {} if cached is None else {"cache": cached.cache(model.config)}
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **reuse, **kwargs)
        held = out.cache.get_seq_length()
        self.store(KV(tuple(out.sequences[0, :held].tolist()),
                      tuple((layer.keys, layer.values) for layer in out.cache.layers)), version)
        return out


def split_rows(out: Any, width: int, prompts: Sequence[list[int]]) -> list[SimpleNamespace]:
    """A batched ``generate`` output (rows left-padded to ``width``) as one output per row, as an unpadded
    ``generate`` of that row's prompt would return it: ``sequences`` (prompt + generated) and ``logits``."""
    results = []
    for row, prompt in enumerate(prompts):
        sequences = torch.cat([torch.tensor([list(prompt)], device=out.sequences.device),
                               out.sequences[row:row + 1, width:]], dim=1)
        logits = tuple(step[row:row + 1] for step in out.logits) if out.logits is not None else None
        results.append(SimpleNamespace(sequences=sequences, logits=logits))
    return results


# ------------------------------------------------------------------------------------------- concurrent callers


class ConcurrentBatcher:
    """Stands in for a model whose ``generate`` is called by several threads at once, one prompt per call (the
    student chat model in concurrent agent runs, e.g. an evaluation): calls that arrive within ``wait_s`` of the
    first waiting one, up to ``max_batch``, are decoded as one batch (`RolloutKV`). Everything else is forwarded to
    the model.

    On a CPU a decode step reads every weight whatever the batch, so a batch of 8 costs about what 2-3 calls alone do
    (SmolLM2-135M at 1,300 tokens of context). A batch decodes for seconds, so waiting ``wait_s`` for the runs still
    rendering their prompts or running tools costs little and fills the batches (examples/bench_demo_precision.py
    compares 0.05 and 0.3 s on the demo's evaluation). Each call reuses the KV of the cached sequence that shares the
    most leading tokens with its prompt (its own previous turn, or another run's system prompt and tools), so it
    prefills only its new tokens. Greedy tokens equal those of a lone ``generate`` up to float rounding (batched
    matrix products and padding change the last bits of the logits).
    """

    def __init__(self, model: Any, pad_token_id: int, max_batch: int = 8, wait_s: float = 0.3,
                 max_rows: int | None = None) -> None:
        self.model, self.max_batch, self.wait_s = model, max_batch, wait_s
        self.max_rows = max_rows or max_batch + 4
        self.kv = RolloutKV(model, pad_token_id)
        self.cond = threading.Condition()
        self.pending: list[tuple[object, list[int], dict[str, Any]]] = []
        self.results: dict[object, Any] = {}
        self.busy = False
        self.deadline = 0.0
        self.next_slot = 0
        self.batch_sizes: Counter[int] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """``model.generate`` on the one prompt ``input_ids`` (no padding), decoded together with concurrent calls.
        ``kwargs`` must ask for ``return_dict_in_generate=True``; calls with other ``kwargs`` go in other batches."""
        ticket = object()
        with self.cond:
            if not self.pending:
                self.deadline = time.monotonic() + self.wait_s
            self.pending.append((ticket, input_ids[0].tolist(), kwargs))
            self.cond.notify_all()
            while ticket not in self.results:
                ready = len(self.pending) >= self.max_batch or time.monotonic() >= self.deadline
                if not self.busy and self.pending and ready:
                    self._run_batch()
                elif self.busy or not self.pending:
                    self.cond.wait()
                else:
                    self.cond.wait(timeout=self.deadline - time.monotonic())
            result = self.results.pop(ticket)
        if isinstance(result, BaseException):
            raise result
        return result

    def clear(self) -> None:
        """Free every cached sequence, once the runs that would continue them have ended."""
        with self.cond:
            self.kv.rows.clear()

    def _run_batch(self) -> None:
        """Generate the first pending calls that share ``kwargs`` (the lock is released meanwhile)."""
        key = settings_key(self.pending[0][2])
        batch = [call for call in self.pending if settings_key(call[2]) == key][:self.max_batch]
        self.pending = [call for call in self.pending if call not in batch]
        self.deadline = time.monotonic() + self.wait_s
        self.busy = True
        self.cond.release()
        try:
            results = self._generate([ids for _, ids, _ in batch], batch[0][2])
        except BaseException as error:  # every caller of the batch must wake up and see it
            results = [error] * len(batch)
        finally:
            self.cond.acquire()
            self.busy = False
        self.results.update({ticket: result for (ticket, _, _), result in zip(batch, results)})
        self.batch_sizes[len(batch)] += 1
        self.cond.notify_all()

    def _generate(self, prompts: list[list[int]], kwargs: dict[str, Any]) -> list[Any]:
        slots = [self._slot(prompt) for prompt in prompts]
        out, width = self.kv.generate(slots, prompts, **kwargs)
        results = split_rows(out, width, prompts)
        while len(self.kv.rows) > self.max_rows:  # least recently generated first (dicts keep insertion order)
            self.kv.drop(next(iter(self.kv.rows)))
        return results

    def _slot(self, prompt: list[int]) -> int:
        """A new slot for ``prompt``, holding the longest cached prefix it shares with any earlier sequence."""
        best, keep = longest_prefix(prompt, ((kv.tokens, kv) for kv in self.kv.rows.values()))
        slot, self.next_slot = self.next_slot, self.next_slot + 1
        if best is not None:
            self.kv.rows[slot] = best.crop(keep)
        return slot
