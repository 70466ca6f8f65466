"""Shared-prefix training: the prompt that several sequences of a batch share is computed once, not once per row.

An agent's prompt is a long fixed block (system prompt and tool schemas, 1,171 tokens for the 12-tool calculator
agent) followed by a short question; GRPO scores ``num_generations`` rollouts of the same prompt, and SFT batches
conversations of the same agent. So 95% of a GRPO loss batch is the same prompt again. `add_shared_prefix_head`
patches a causal LM so that TRL's fused log-prob call (``model(..., labels=labels, fused_lm_head=True)``, made by
`GRPOTrainer` and `SFTTrainer`) computes that prefix once (Prefix Grouper, arXiv 2506.05433):

- the batch's longest common prefix (system + tools) runs once, at batch size 1;
- the rest of each group's prompt (rows whose tokens before the first label agree: a GRPO group) runs once per group,
  attending to that prefix's keys and values;
- each row's remainder (its completion) runs attending to its group's keys and values; rows alone in their group (an
  SFT batch's conversations) run their whole rest after the prefix together. Both run in micro-batches of at most
  ``micro_batch_tokens`` padded tokens (rows x longest row, longest rows first), so that one long rollout neither
  pads the whole group to its length nor, under gradient checkpointing, makes the backward pass recompute every
  row's activations at once.

Gradients flow through the shared keys and values, so the loss and the gradients equal the unshared computation up
to floating-point rounding (tests/test_prefix_sharing.py checks both within fp32 tolerance). The LM head runs only
on positions that carry a label, on CPU as on GPU (TRL's fused head skips the others only on CUDA/XPU). Measured on
SmolLM2-135M with the calculator agent: examples/bench_grpo.py, examples/results/bench_grpo.json.

`SharedPrefixGRPOTrainer` and `SharedPrefixSFTTrainer` are TRL's trainers with the patch applied; setting the class
attribute ``share_prefix = False`` gives TRL's own unshared computation (for the benchmark and the exactness tests).
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Sequence

import torch
from peft import PeftModel
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache, PreTrainedModel
from trl import GRPOTrainer, SFTTrainer
from trl.kernels import ChunkedLogProbFunction
from trl.trainer.utils import FusedCausalLMOutput, pad

_CHUNK = 32768
"""Vocabulary tile of the chunked log-prob kernel (TRL's own value)."""
_SCALED_HEADS = ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
MICRO_BATCH_TOKENS = 1024
"""Padded tokens per micro-batch of a group's rows. Under gradient checkpointing one micro-batch's activations are
alive at a time in the backward pass: about 2.3 MB per token on SmolLM2-135M in fp32 (reference/prefix-sharing.md),
so about 2.4 GB, where the 8 rows of a group padded to one long rollout at once took 13-14 GB."""


def add_shared_prefix_head(model: PreTrainedModel, temperature: float = 1.0,
                           outputs: tuple[str, ...] = ("log_probs",),
                           micro_batch_tokens: int = MICRO_BATCH_TOKENS) -> None:
    """Patch ``model`` (a causal LM, not its PEFT wrapper) so that ``model(input_ids=..., attention_mask=...,
    labels=..., fused_lm_head=True)`` computes shared prefixes once and returns TRL's `FusedCausalLMOutput`, with
    ``outputs`` among ``log_probs``, ``entropy``, ``log_sum_sq_probs``, ``mean_logits``, ``is_top1``. Every other
    call goes to the forward it replaces. Apply it after TRL's ``add_fused_lm_head``. ``micro_batch_tokens`` bounds
    the padded tokens of a group's rows computed together (`MICRO_BATCH_TOKENS`)."""
    if micro_batch_tokens < 1:
        raise ValueError(f"micro_batch_tokens must be at least 1, got {micro_batch_tokens}")
    config = model.config.get_text_config()
    for name in _SCALED_HEADS:
        if getattr(config, name, None) is not None:
            raise ValueError(f"shared-prefix training does not support models with a scaled LM head "
                             f"(config.{name} = {getattr(config, name)})")
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        raise ValueError("shared-prefix training does not support sliding-window attention layers")
    replaced = model.forward

    @functools.wraps(type(model).forward)  # generate validates its model kwargs against this signature
    def forward(self, *args, fused_lm_head=False, labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head:
            return replaced(*args, labels=labels, num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs = {k: v for k, v in kwargs.items() if v is not None and k not in ("use_cache", "return_dict")}
        input_ids, attention_mask = kwargs.pop("input_ids"), kwargs.pop("attention_mask")
        if args or kwargs:
            raise TypeError(f"shared-prefix forward takes input_ids, attention_mask and labels only; got also "
                            f"{sorted(kwargs) or f'{len(args)} positional arguments'}")
        return shared_prefix_forward(self, input_ids, attention_mask, labels, temperature, outputs,
                                     num_items_in_batch, micro_batch_tokens)

    model.forward = types.MethodType(forward, model)


def shared_prefix_forward(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          labels: torch.Tensor, temperature: float, outputs: Sequence[str],
                          num_items_in_batch: torch.Tensor | int | None = None,
                          micro_batch_tokens: int = MICRO_BATCH_TOKENS) -> FusedCausalLMOutput:
    """Per-token log-probs (and ``outputs``) of the labels, as TRL's fused head returns them (shape ``(B, W - 1)``,
    zero where the label is -100), with each shared prefix computed once. Padding may sit on either side.

    A group's rows run in micro-batches of at most ``micro_batch_tokens`` padded tokens (`_micro_batches`). Under
    gradient checkpointing each segment (the shared prefix, a group's prompt, a micro-batch of its rows) is
    recomputed in the backward pass as a whole, since the model's per-layer checkpointing cannot carry a KV cache."""
    rows, row_labels, targets, columns = _real_rows(input_ids, attention_mask, labels)
    groups = _groups(rows, targets)
    keys = [rows[members[0]][:first] for first, members in groups]
    shared = _common_prefix(keys) if keys else 0
    run = _segments(model.base_model)
    root = run(keys[0][None, :shared], None, keep=True, replay=_frozen_prefix(model.base_model, keys[0][:shared]))[1] \
        if shared else None
    # A group of one row (in SFT every conversation asks its own question) has no prompt to share: its whole rest
    # after the shared prefix runs batched with the other such rows, not as two calls of its own.
    singles = [members[0] for _, members in groups if len(members) == 1]
    segments = [(None, (shared + 1, singles))] if singles else []
    segments += [(key, group) for key, group in zip(keys, groups) if len(group[1]) > 1]
    hidden, labels_out, index = [], [], []
    for key, (first, members) in segments:
        # The key's last token is run with the rows: its hidden state predicts the first label.
        cache = run(key[None, shared:first - 1], root, keep=True)[1] if first - 1 > shared else root
        for batch in _micro_batches([len(rows[i]) - first + 1 for i in members], micro_batch_tokens):
            batch = [members[j] for j in batch]
            ids, mask = _right_pad([rows[i][first - 1:] for i in batch])
            out = run(ids, cache, mask)[0]
            for row, i in enumerate(batch):
                t = targets[i].nonzero().squeeze(1)  # real-token indices of the labels
                hidden.append(out[row, t - first])
                labels_out.append(row_labels[i][t])
                index.append((torch.full_like(t, i), columns[i][t] - 1))
    return _head(model, input_ids, hidden, labels_out, index, temperature, outputs, num_items_in_batch)


def _real_rows(input_ids, attention_mask, labels):
    """Per row: its real tokens, their labels, a mask of those that carry a label, and their columns in the batch."""
    rows, row_labels, targets, columns = [], [], [], []
    for i in range(input_ids.size(0)):
        real = attention_mask[i].bool()
        row_labels.append(labels[i][real])
        target = row_labels[-1] != -100
        target[:1] = False  # nothing predicts a row's first token
        rows.append(input_ids[i][real])
        targets.append(target)
        columns.append(real.nonzero().squeeze(1))
    return rows, row_labels, targets, columns


def _groups(rows, targets) -> list[tuple[int, list[int]]]:
    """Rows with labels, grouped by their tokens before the first label, in order: (first label index, rows)."""
    groups: dict[tuple[int, ...], tuple[int, list[int]]] = {}
    for i, (row, target) in enumerate(zip(rows, targets)):
        if target.any():
            first = int(target.nonzero()[0])
            groups.setdefault(tuple(row[:first].tolist()), (first, []))[1].append(i)
    return list(groups.values())


def _common_prefix(keys: list[torch.Tensor]) -> int:
    """Length of the prefix every key shares, leaving each key's last token out of it."""
    shortest = min(len(k) for k in keys) - 1
    n = shortest
    for key in keys[1:]:
        differs = (key[:shortest] != keys[0][:shortest]).nonzero()
        n = min(n, int(differs[0]) if len(differs) else shortest)
    return n


def _micro_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices into ``lengths`` in batches of at most ``budget`` padded tokens (rows x longest row), longest rows
    first, so that rows of similar length pad together; a row longer than ``budget`` runs alone."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _segments(backbone):
    """``run(ids, past, mask=None, keep=False, replay=None) -> (hidden, cache)``: the backbone on ``ids`` after the
    keys and values in ``past`` (a cache, left as it is), with the new cache when ``keep``; ``replay`` (from
    `_frozen_prefix`) stands in for the bottom layers. With the backbone's gradient checkpointing on, each run is
    checkpointed whole."""
    checkpointed = backbone.training and torch.is_grad_enabled() and any(
        getattr(m, "gradient_checkpointing", False) for m in backbone.modules())

    def run(ids, past, mask=None, keep=False, replay=None):
        kv = [] if past is None else [t for layer in past.layers for t in (layer.keys, layer.values)]
        if not checkpointed:
            return _unflatten(_run(backbone, ids, mask, keep, *kv, replay=replay))
        return _unflatten(checkpoint(_run, backbone, ids, mask, keep, *kv, replay=replay, use_reentrant=False))

    return run


def _run(backbone, ids: torch.Tensor, mask: torch.Tensor | None, keep: bool, *past: torch.Tensor,
         replay: FrozenPrefix | None = None):
    """Last hidden states of ``ids`` after the keys and values ``past`` (flat: k0, v0, k1, v1, ...), and the flat
    keys and values with ``ids`` appended when ``keep``. With ``replay`` (``ids`` being its tokens, no ``past``), its
    layers hand back their stored keys, values and output instead of computing them."""
    n, length = ids.shape
    cache = _cache(past, n)
    start = cache.get_seq_length()
    positions = torch.arange(start, start + length, device=ids.device).expand(n, length)
    if mask is not None:
        mask = torch.cat([mask.new_ones(n, start), mask], 1)
    # The model's per-layer checkpointing would drop the cache; the caller checkpoints this whole run instead (and
    # the recomputation in the backward pass comes through here too).
    layers = [m for m in backbone.modules() if getattr(m, "gradient_checkpointing", False)]
    for layer in layers:
        layer.gradient_checkpointing = False
    replayed = backbone.layers[:len(replay.keys)] if replay is not None else []
    for i, layer in enumerate(replayed):
        layer.forward = functools.partial(replay.layer, i)
    try:
        out = backbone(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
    finally:
        for layer in layers:
            layer.gradient_checkpointing = True
        for layer in replayed:
            del layer.forward
    kept = [t for layer in cache.layers for t in (layer.keys, layer.values)] if keep else []
    return (out.last_hidden_state, *kept)


@dataclass(frozen=True)
class FrozenPrefix:
    """The shared prefix's pass through the bottom decoder layers that training leaves unchanged (no trainable
    parameter in them or below, no dropout): per layer its keys and values, and the last one's output. Computed once
    and replayed on every step, since LoRA in the top layers only (``TrainConfig.lora_layers``) never changes them."""

    key: tuple
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    output: torch.Tensor

    def layer(self, i: int, hidden_states: torch.Tensor, *args, cache, **kwargs) -> torch.Tensor:
        """Decoder layer ``i``'s forward, replayed: its keys and values into ``cache``, and its output."""
        cache.update(self.keys[i], self.values[i], i)
        return self.output if i == len(self.keys) - 1 else hidden_states


def _frozen_prefix(backbone, ids: torch.Tensor) -> FrozenPrefix | None:
    """The `FrozenPrefix` of ``ids`` (one row) for ``backbone``, computed on first use and kept on the backbone (one
    per number of frozen layers) until the prefix, a frozen weight (its tensor version) or the autocast setting
    changes; None when no bottom layer is frozen."""
    layers = getattr(backbone, "layers", None)
    embeddings = backbone.get_input_embeddings()
    config = backbone.config.get_text_config()
    dropout = backbone.training and getattr(config, "attention_dropout", 0.0)
    if layers is None or dropout or any(p.requires_grad for p in embeddings.parameters()):
        return None
    depth = 0
    for layer in layers:
        if any(p.requires_grad for p in layer.parameters()) or (backbone.training and any(
                isinstance(m, torch.nn.Dropout) and m.p > 0 for m in layer.modules())):
            break
        depth += 1
    if depth == 0:
        return None
    device = ids.device.type
    frozen = [p for layer in layers[:depth] for p in layer.parameters()] + list(embeddings.parameters())
    key = (tuple(ids.tolist()), depth, tuple((p.data_ptr(), p._version) for p in frozen),
           torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
    # One per depth: with its adapters disabled (a reference forward) the model freezes more layers.
    stored = getattr(backbone, "_frozen_prefix", {}).get(depth)
    if stored is not None and stored.key == key:
        return stored
    captured = {}
    hook = layers[depth - 1].register_forward_hook(lambda module, args, out: captured.setdefault("output", out))
    try:
        with torch.no_grad():
            _, *kv = _run(backbone, ids[None], None, True)
    finally:
        hook.remove()
    output = captured["output"]
    stored = FrozenPrefix(key, kv[0:2 * depth:2], kv[1:2 * depth:2],
                          output[0] if isinstance(output, tuple) else output)
    backbone._frozen_prefix = {**getattr(backbone, "_frozen_prefix", {}), depth: stored}
    return stored


def _cache(past: Sequence[torch.Tensor], n: int) -> DynamicCache:
    """A new cache holding the flat keys and values ``past`` (batch 1) for ``n`` rows."""
    return DynamicCache(ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1))
                                        for k, v in zip(past[0::2], past[1::2])]) if past else DynamicCache()


def _unflatten(out) -> tuple[torch.Tensor, DynamicCache | None]:
    hidden, *kv = out
    return hidden, _cache(kv, 1) if kv else None


def _right_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = rows[0].new_zeros(len(rows), width)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    return ids, mask


def _head(model, input_ids, hidden, labels, index, temperature, outputs, num_items_in_batch) -> FusedCausalLMOutput:
    """The LM head on the labelled positions only, scattered back to TRL's ``(B, W - 1)`` layout."""
    shape = (input_ids.size(0), input_ids.size(1) - 1)
    rows = torch.cat([r for r, _ in index]) if index else input_ids.new_zeros(0)
    cols = torch.cat([c for _, c in index]) if index else input_ids.new_zeros(0)
    head = model.get_output_embeddings()
    h = torch.cat(hidden) if hidden else head.weight.new_zeros(0, head.weight.size(1))
    y = torch.cat(labels) if labels else input_ids.new_zeros(0)
    per_token = ChunkedLogProbFunction.apply(
        h, head.weight, head.bias, y, temperature, _CHUNK,
        getattr(model.config.get_text_config(), "final_logit_softcapping", None), 1.0, tuple(outputs))
    fields = [None if x is None else x.new_zeros(shape).index_put((rows, cols), x) for x in per_token]
    mask = torch.zeros(shape, dtype=torch.bool, device=input_ids.device).index_put((rows, cols), torch.tensor(True))
    log_probs = fields[0]
    loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
    return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=fields[1], log_sum_sq_probs=fields[2],
                               mean_logits=fields[3], is_top1=fields[4], label_mask=mask)


def _causal_lm(model) -> PreTrainedModel:
    return model.get_base_model() if isinstance(model, PeftModel) else model


class SharedPrefixGRPOTrainer(GRPOTrainer):
    """TRL's `GRPOTrainer` whose log-prob computation (policy, and reference when ``beta > 0``) runs each group's
    shared prompt once and the LM head only on the completion tokens that carry loss (the sampled ones, not tool
    output). Same losses, gradients and metrics as `GRPOTrainer`."""

    share_prefix: bool = True
    """False: TRL's own unshared computation (the benchmark's and the exactness tests' baseline)."""

    def __init__(self, *args, micro_batch_tokens: int = MICRO_BATCH_TOKENS, **kwargs):
        super().__init__(*args, **kwargs)
        self._loss_mask: torch.Tensor | None = None
        if self.share_prefix:
            add_shared_prefix_head(_causal_lm(self.model), self.temperature, ("log_probs", "entropy"),
                                   micro_batch_tokens)
            if self.ref_model is not None:
                add_shared_prefix_head(_causal_lm(self.ref_model), self.temperature,
                                       micro_batch_tokens=micro_batch_tokens)

    def _generate(self, prompts):
        generated = super()._generate(prompts)
        tool_masks = generated[2]
        if tool_masks is not None:  # for the reference forward that follows: tool output carries no loss
            self._loss_mask = pad([torch.tensor(m) for m in tool_masks], padding_value=1, padding_side="right",
                                  pad_to_multiple_of=self.pad_to_multiple_of).to(self.accelerator.device)
        return generated

    def _generate_and_score_completions(self, inputs):
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self._loss_mask = None

    def _compute_loss(self, model, inputs):
        self._loss_mask = inputs.get("tool_mask")
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._loss_mask = None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal):
        if not self.share_prefix or compute_aux_loss or any(v is not None for v in multimodal.values()):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss,
                **multimodal)
        # TRL's labels (the completion tokens), less those that carry no loss; the whole batch in one call, since the
        # shared-prefix forward computes the prefix once and splits each group's rows into micro-batches itself.
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        labels[:, :-logits_to_keep] = -100
        if self._loss_mask is not None:
            labels[:, -logits_to_keep:] = labels[:, -logits_to_keep:].masked_fill(self._loss_mask == 0, -100)
        with self.accelerator.autocast():
            out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
        entropy = out.entropy[:, -logits_to_keep:] if compute_entropy else None
        return out.log_probs[:, -logits_to_keep:], entropy, None


class SharedPrefixSFTTrainer(SFTTrainer):
    """TRL's `SFTTrainer` whose loss runs the prefix the batch's conversations share (system prompt and tools) once
    and the LM head only on assistant tokens. Same loss and gradients as `SFTTrainer`."""

    share_prefix: bool = True
    """False: TRL's own unshared computation."""

    def __init__(self, *args, micro_batch_tokens: int = MICRO_BATCH_TOKENS, **kwargs):
        super().__init__(*args, **kwargs)
        if self.share_prefix:
            add_shared_prefix_head(_causal_lm(self.model), 1.0, ("log_probs", "entropy", "is_top1"),
                                   micro_batch_tokens)
