"""Token bookkeeping of a multi-turn rollout: the model calls of one run become one training sequence.

Each model call leaves a `TokenRecord` (its rendered prompt, the sampled tokens and their log-probabilities).
`stitch` joins them: the first prompt, then every sampled turn with the tokens the chat template and the tool results
inserted between turns, masked so that only sampled tokens carry loss. Plain list arithmetic: no model, no framework.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence


class TokenRecord(NamedTuple):
    """One model call: the rendered prompt, the sampled tokens (with the stop token, if one was sampled), their
    log-probabilities under the model (``log_softmax(logits / temperature)``, before top-p and logits processors),
    and the ids that end a turn."""

    prompt_ids: list[int]
    generated_ids: list[int]
    logprobs: list[float]
    end_ids: tuple[int, ...] = ()


class Stitched(NamedTuple):
    prompt_ids: list[int]
    completion_ids: list[int]
    completion_mask: list[int]
    """1 on tokens the model sampled, 0 on tokens inserted by the chat template or by tool results."""
    logprobs: list[float]
    """The model's log-probabilities of the sampled completion tokens; 0.0 on inserted tokens."""
    rerendered_turns: int = 0
    """Turns whose re-rendering differed from the sampled tokens and were skipped (only with ``strict=False``)."""


class NotPrefixPreservingError(ValueError):
    """A later prompt does not extend the previous prompt plus its generation, so tokens cannot be stitched exactly."""


def stitch(records: Sequence[TokenRecord], strict: bool = True) -> Stitched:
    """One training sequence from the model calls of a run: ``prompt = prompt_0`` and
    ``completion = gen_0 + (prompt_1 - prompt_0 - gen_0) + gen_1 + ...``.

    With ``strict=True`` every prompt must start with the previous prompt plus the tokens generated after it, which
    holds when the template is prefix-preserving and the model wrote its turn exactly as the template re-renders it;
    otherwise `NotPrefixPreservingError`. With ``strict=False`` a re-rendered assistant turn that differs from what
    was sampled (other spacing or tokenization of a tool call) is skipped up to its end token, and the sampled tokens
    are kept (counted in ``rerendered_turns``); the history before the turn must still be unchanged.
    """
    if not records:
        raise ValueError("no token records to stitch: the run made no StudentChatModel call with a TokenRecorder")
    prompt = list(records[0].prompt_ids)
    completion: list[int] = []
    mask: list[int] = []
    logprobs: list[float] = []
    rerendered = 0
    for k, record in enumerate(records):
        if len(record.logprobs) != len(record.generated_ids):
            raise ValueError(f"model call {k}: {len(record.logprobs)} logprobs for {len(record.generated_ids)} tokens")
        if k:
            so_far = prompt + completion
            ids = list(record.prompt_ids)
            if ids[: len(so_far)] == so_far:
                inserted = ids[len(so_far):]
            elif strict:
                at = next((i for i, (a, b) in enumerate(zip(ids, so_far)) if a != b), min(len(ids), len(so_far)))
                raise NotPrefixPreservingError(
                    f"model call {k}: its prompt does not start with the previous prompt plus the tokens generated "
                    f"after it (first difference at token {at} of {len(so_far)}). The chat template is not "
                    "prefix-preserving, or the model wrote its turn differently from how the template re-renders it "
                    "(spacing or tokenization of a tool call); use stitch(records, strict=False) to keep the sampled "
                    "tokens and skip the re-rendered turn"
                )
            else:
                inserted = _after_rerendered_turn(records[k - 1], ids, k)
                rerendered += 1
            completion += inserted
            mask += [0] * len(inserted)
            logprobs += [0.0] * len(inserted)
        completion += record.generated_ids
        mask += [1] * len(record.generated_ids)
        logprobs += record.logprobs
    return Stitched(prompt, completion, mask, logprobs, rerendered)


def _after_rerendered_turn(previous: TokenRecord, ids: list[int], k: int) -> list[int]:
    start = len(previous.prompt_ids)
    if ids[:start] != list(previous.prompt_ids):
        raise NotPrefixPreservingError(
            f"model call {k}: its prompt does not start with the previous prompt, so the history before the last "
            "assistant turn was re-rendered differently; the chat template is not prefix-preserving"
        )
    end = next((i for i in range(start, len(ids)) if ids[i] in previous.end_ids), None)
    if end is None:
        raise NotPrefixPreservingError(f"model call {k}: no end-of-turn token after the re-rendered assistant turn")
    ended = bool(previous.generated_ids) and previous.generated_ids[-1] in previous.end_ids
    return ids[end + 1:] if ended else ids[end:]
