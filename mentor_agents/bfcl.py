"""BFCL v4 single-turn AST evaluation: load the Berkeley Function Calling Leaderboard items, show them to any chat
function as OpenAI tools, and score its calls by BFCL's AST rules.

Data. The items and their ``possible_answer`` ground truth are read from the files shipped in the ``bfcl-eval``
wheel (``pip install --no-deps bfcl-eval==2026.3.23``; the package is located with ``importlib.util.find_spec``
and never imported, since importing it pulls in every vendor SDK), or from any folder laid out the same way.
Categories: simple_python, multiple, parallel, parallel_multiple (checked by AST) and irrelevance (correct iff no
call is made).

Scoring: a re-implementation, not the official code. The rules are ported line by line from
``bfcl_eval/eval_checker/ast_eval/ast_checker.py`` (Python language only), as the official pipeline applies them to
an OpenAI function-calling model (``underscore_to_dot``): the model sees tool names with ``.`` replaced by ``_``
and must call them by those names; arguments arrive as JSON (a dict, or a JSON string that is decoded, as BFCL's
FC decoder does). Every quirk is kept: int is accepted for a float parameter (but not inside lists), strings are
compared lower-cased with spaces and ``,./-_*^`` removed, ``""`` among the possible answers lets a parameter be
left out, a value whose type matches the possible answers rather than the schema is compared as a "variable",
parallel calls are matched greedily to distinct gold calls in any order.

Agreement with the official checker: ``examples/bfcl_agreement.py`` scores the same answers with both, the official
one run in an isolated venv with bfcl-eval's own pinned dependencies (through its eval runner and the
``gpt-4o-2024-11-20-FC`` handler). On all 1,240 items of the five categories, fed the gold answer and 20 kinds of
edit of every call and argument (wrong name, other function, missing/extra/omitted argument, wrong type or value,
int for float, float for int, case and punctuation, alternative allowed value, dropped/duplicated/reordered calls,
a call or none for irrelevance), the two agree on 25,841 of 25,841 verdicts, and ``BFCLItem.tools`` equals BFCL's
own ``convert_to_tool`` output for 1,240 of 1,240 items (``examples/results/bfcl_agreement.json``). ``gold_calls``
passes on 999 of the 1,000 answered items: the answer of parallel_multiple_26 names a parameter its schema lacks.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mentor_agents.errors import InvalidInputError

CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")

# BFCL's GORILLA_TO_OPENAPI, restricted to the types of the Python categories; anything else becomes "string".
OPENAI_TYPES = {
    "integer": "integer", "number": "number", "float": "number", "string": "string", "boolean": "boolean",
    "bool": "boolean", "array": "array", "list": "array", "dict": "object", "object": "object", "tuple": "array",
    "any": "string",
}
PYTHON_TYPES = {
    "string": str, "integer": int, "float": float, "boolean": bool, "array": list, "tuple": list, "dict": dict,
    "any": str,
}
PYTHON_HINT = " Note that the provided function is in Python 3 syntax."

Call = dict[str, Any]
"""One model call: ``{"name": str, "arguments": dict | str}`` (a string is decoded as JSON)."""
ChatFn = Callable[[list[dict[str, Any]], list[dict[str, Any]]], Sequence[Call]]
"""``(messages, tools) -> calls``: OpenAI-format messages and tool schemas in, the model's tool calls out."""


# ------------------------------------------------------------------------------------------------------------ data


@dataclass
class BFCLItem:
    """One BFCL test entry: the user turn, the functions on offer, and the gold calls (None for irrelevance)."""

    id: str
    category: str
    messages: list[dict[str, Any]]
    functions: list[dict[str, Any]]
    ground_truth: list[dict[str, dict[str, list[Any]]]] | None

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The functions as OpenAI tool schemas, built the way BFCL builds them for OpenAI FC models."""
        return [to_openai_tool(f) for f in self.functions]


def bfcl_data_dir() -> Path:
    """The ``data`` folder of the installed ``bfcl-eval`` wheel (found without importing the package)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "bfcl-eval is not installed; run `pip install --no-deps bfcl-eval==2026.3.23` or pass data_dir="
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_bfcl(categories: Sequence[str] = CATEGORIES, n_per_category: int | None = None, seed: int = 0,
              data_dir: str | Path | None = None) -> list[BFCLItem]:
    """BFCL items of ``categories``, all of them or a seeded sample of ``n_per_category`` each, in file order.

    ``data_dir`` holds ``BFCL_v4_<category>.json`` and ``possible_answer/``; it defaults to the installed wheel's.
    """
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise InvalidInputError(f"unsupported BFCL categories {unknown}; choose from {list(CATEGORIES)}")
    root = Path(data_dir) if data_dir is not None else bfcl_data_dir()
    items: list[BFCLItem] = []
    for category in categories:
        entries = _read_jsonl(root / f"BFCL_v4_{category}.json")
        answers = {} if category == "irrelevance" else {
            a["id"]: a["ground_truth"] for a in _read_jsonl(root / "possible_answer" / f"BFCL_v4_{category}.json")
        }
        if n_per_category is not None and n_per_category < len(entries):
            keep = set(random.Random(f"bfcl-{category}-{seed}").sample(range(len(entries)), n_per_category))
            entries = [e for i, e in enumerate(entries) if i in keep]
        for e in entries:
            if category != "irrelevance" and e["id"] not in answers:
                raise ValueError(f"{e['id']} has no entry in possible_answer/BFCL_v4_{category}.json")
            items.append(BFCLItem(id=e["id"], category=category, messages=e["question"][0],
                                  functions=e["function"], ground_truth=answers.get(e["id"])))
    return items


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"BFCL data file not found: {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def to_openai_tool(function: dict[str, Any]) -> dict[str, Any]:
    """A BFCL function (types "dict", "float", "tuple", "any", ...) as an OpenAI tool schema with JSON-schema types.

    Follows BFCL's ``convert_to_tool`` for OpenAI models: dots in the name become underscores, float parameters
    get ``"format": "float"`` and a note in their description, and the description ends with the Python hint.
    """
    f = copy.deepcopy(function)
    f["name"] = openai_name(f["name"])
    f["description"] = f.get("description", "") + PYTHON_HINT
    f["parameters"]["type"] = "object"
    f["parameters"]["properties"] = _openai_properties(f["parameters"]["properties"])
    return {"type": "function", "function": f}


def openai_name(name: str) -> str:
    """The tool name an OpenAI-style model sees: OpenAI names must match ``^[a-zA-Z0-9_-]{1,64}$``."""
    return name.replace(".", "_")


def _openai_properties(properties: dict[str, Any]) -> dict[str, Any]:
    for spec in properties.values():
        if spec.get("type") == "float":
            spec["format"] = "float"
            spec["description"] = spec.get("description", "") + " This is a float type value."
        spec["type"] = OPENAI_TYPES.get(spec.get("type"), "string")
        if "properties" in spec:
            spec["properties"] = _openai_properties(spec["properties"])
        elif "items" in spec:
            _openai_items(spec["items"])
    return properties


def _openai_items(items: dict[str, Any]) -> None:
    items["type"] = OPENAI_TYPES.get(items.get("type"), "string")
    if "properties" in items:
        items["properties"] = _openai_properties(items["properties"])
    elif "items" in items:
        _openai_items(items["items"])


def gold_calls(item: BFCLItem) -> list[Call]:
    """A reference answer: each gold call with the first possible value of every parameter, and tool names as the
    model sees them. A parameter whose first possible value is ``""`` (optional) is left out unless the schema
    requires it (simple_python_200 does both), when it takes the first other value."""
    if item.ground_truth is None:
        return []
    calls = []
    for answer in item.ground_truth:
        (name, params), = answer.items()
        parameters = _find(item.functions, name)["parameters"]
        args = {p: _first(allowed, parameters["properties"].get(p, {})) for p, allowed in params.items()
                if allowed[0] != "" or p in parameters["required"]}
        calls.append({"name": openai_name(name), "arguments": args})
    return calls


def _first(allowed: list[Any], schema: dict[str, Any]) -> Any:
    # Dicts (and lists of dicts) in the answers hold a list of allowed values per key, not a value.
    value = next(a for a in allowed if a != "")
    if schema.get("type") == "dict" and isinstance(value, dict):
        return {k: v[0] for k, v in value.items() if v[0] != ""}
    if schema.get("type") == "array" and schema["items"]["type"] == "dict" and isinstance(value, list):
        return [{k: v[0] for k, v in d.items() if v[0] != ""} for d in value]
    return value


# --------------------------------------------------------------------------------------------------------- scoring


def score_bfcl(item: BFCLItem, tool_calls: Sequence[Call]) -> tuple[bool, str]:
    """``(valid, reason)`` for the model's ``tool_calls`` on ``item`` by BFCL's rules; reason is "" when valid."""
    decoded = _decode(tool_calls)
    if item.category == "irrelevance":
        made_call = decoded is not None and len(decoded) > 0
        return (False, "made a function call where none is relevant") if made_call else (True, "")
    if decoded is None:
        return False, "tool calls could not be decoded (arguments must be a JSON object)"
    answers = item.ground_truth
    if "parallel" in item.category:
        return _parallel(item.functions, decoded, answers)
    if len(decoded) != 1:
        return False, f"wrong number of calls: expected 1, got {len(decoded)}"
    expected = next(iter(answers[0]))
    return _simple(_find(item.functions, expected), decoded[0], answers[0])


def _decode(tool_calls: Sequence[Call]) -> list[dict[str, dict[str, Any]]] | None:
    decoded = []
    for call in tool_calls:
        args = call.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        if not isinstance(args, dict) or not isinstance(call.get("name"), str):
            return None
        decoded.append({call["name"]: args})
    return decoded


def _find(functions: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(f for f in functions if f["name"] == name)


def _parallel(functions, decoded, answers) -> tuple[bool, str]:
    if len(decoded) != len(answers):
        return False, f"wrong number of calls: expected {len(answers)}, got {len(decoded)}"
    matched: set[int] = set()
    # Greedy, like BFCL: each gold call takes the first unmatched model call that passes.
    for i, answer in enumerate(answers):
        function = _find(functions, next(iter(answer)))
        reason = "no unmatched call left"
        for j, call in enumerate(decoded):
            if j in matched:
                continue
            ok, reason = _simple(function, call, answer)
            if ok:
                matched.add(j)
                break
        else:
            return False, f"no model call matches gold call {i} ({next(iter(answer))}): {reason}"
    return True, ""


def _simple(function: dict[str, Any], call: dict[str, dict[str, Any]], answer: dict[str, dict]) -> tuple[bool, str]:
    possible = next(iter(answer.values()))
    properties = function["parameters"]["properties"]
    name = openai_name(function["name"])
    if name not in call:
        return False, f"expected a call to {name!r}, got {next(iter(call))!r}"
    args = call[name]
    for param in function["parameters"]["required"]:
        if param not in args:
            return False, f"missing required parameter {param!r}"
    for param, value in args.items():
        if param not in properties or param not in possible:
            return False, f"unexpected parameter {param!r}"
        schema_type = properties[param]["type"]
        expected = PYTHON_TYPES[schema_type]
        nested = PYTHON_TYPES[properties[param]["items"]["type"]] if schema_type in ("array", "tuple") else None
        if schema_type == "float" and type(value) is int:
            value = float(value)
        ok, is_variable, reason = _type_check(param, value, possible[param], schema_type, expected, nested)
        if not ok:
            return False, reason
        if not is_variable:
            if expected is dict:
                ok, reason = _dict_check(param, value, possible[param])
            elif expected is list and nested is dict:
                ok, reason = _list_dict_check(param, value, possible[param])
            elif expected is str:
                ok = _standardize(value) in [_standardize(p) for p in possible[param] if type(p) is str]
                reason = f"invalid value for {param!r}: {value!r}, expected one of {possible[param]}"
            elif expected is list:
                ok = _standardize_list(value) in [_standardize_list(p) for p in possible[param]]
                reason = f"invalid value for {param!r}: {value!r}, expected one of {possible[param]}"
            else:
                ok, reason = value in possible[param], f"invalid value for {param!r}: {value!r}, expected one of " \
                                                       f"{possible[param]}"
            if not ok:
                return False, reason
            continue
        if value not in possible[param]:
            return False, f"invalid value for {param!r}: {value!r}, expected one of {possible[param]}"
    for param, values in possible.items():
        if param not in args and "" not in values:
            return False, f"parameter {param!r} left out but not optional"
    return True, ""


def _answer_type(possible: list[Any]) -> type | None:
    return next((type(p) for p in possible if p != ""), None)


def _type_check(param, value, possible, schema_type, expected, nested) -> tuple[bool, bool, str]:
    """``(ok, is_variable, reason)``: BFCL's one-level-deep type check, including its "variable" escape hatch."""
    answer_type = _answer_type(possible)
    is_variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        if nested is None:
            return True, is_variable, ""
        for candidate in possible:
            if type(candidate) is not list or all(
                _type_check(param, v, candidate, nested.__name__, nested, None)[0] for v in value
            ):
                return True, is_variable, ""
        return False, False, f"nested type check failed for {param!r}: expected {schema_type} of {nested.__name__}"
    if answer_type is not None and type(value) is answer_type:
        return True, True, ""
    return False, False, f"incorrect type for {param!r}: expected {schema_type}, got {type(value).__name__}"


def _standardize(text: str) -> str:
    return re.sub(r"[ ,./\-_*^]", "", text).lower().replace("'", '"')


def _standardize_list(values: Any) -> list[Any]:
    # Iterating whatever the candidate is, as BFCL does: a "" marking an optional list parameter becomes [].
    return [_standardize(v) if type(v) is str else v for v in values]


def _dict_check(param: str, value: dict, possible: list[Any]) -> tuple[bool, str]:
    reason = f"invalid dict for {param!r}"
    for candidate in possible:
        if candidate == "":
            continue
        reason = ""
        for key, v in value.items():
            if key not in candidate:
                reason = f"unexpected dict key {key!r} in {param!r}"
                break
            allowed = [_standardize(a) if type(a) is str else a for a in candidate[key]]
            if (_standardize(v) if type(v) is str else v) not in allowed:
                reason = f"invalid value for dict key {key!r} of {param!r}: {v!r}"
                break
        if not reason:
            for key, allowed in candidate.items():
                if key not in value and "" not in allowed:
                    reason = f"missing dict key {key!r} in {param!r}"
                    break
        if not reason:
            return True, ""
    return False, reason


def _list_dict_check(param: str, value: list, possible: list[Any]) -> tuple[bool, str]:
    reason = f"invalid list of dicts for {param!r}"
    for candidate in possible:
        if len(value) != len(candidate):
            reason = f"wrong number of dicts in {param!r}"
            continue
        for v, c in zip(value, candidate):
            ok, reason = _dict_check(param, v, [c])
            if not ok:
                break
        else:
            return True, ""
    return False, reason


# ------------------------------------------------------------------------------------------------------ evaluation


@dataclass
class BFCLResult:
    """One item's outcome: the calls the model made and BFCL's verdict on them."""

    id: str
    category: str
    valid: bool
    reason: str
    calls: list[Call]


@dataclass
class BFCLReport:
    """Per-item results, with accuracy per category and overall."""

    results: list[BFCLResult] = field(default_factory=list)

    def accuracy(self) -> dict[str, float]:
        """Accuracy per category, and ``"overall"``: the unweighted mean over the categories present."""
        by_category: dict[str, list[bool]] = {}
        for r in self.results:
            by_category.setdefault(r.category, []).append(r.valid)
        acc = {c: sum(v) / len(v) for c, v in by_category.items()}
        if acc:
            acc["overall"] = sum(acc.values()) / len(acc)
        return acc

    def counts(self) -> dict[str, tuple[int, int]]:
        """``(correct, total)`` per category."""
        out: dict[str, tuple[int, int]] = {}
        for r in self.results:
            correct, total = out.get(r.category, (0, 0))
            out[r.category] = (correct + r.valid, total + 1)
        return out

    def table(self) -> str:
        """A markdown table: category, correct/total, accuracy."""
        lines = ["| category | correct | accuracy |", "|---|---|---|"]
        for category, (correct, total) in self.counts().items():
            lines.append(f"| {category} | {correct}/{total} | {correct / total:.1%} |")
        if self.results:
            lines.append(f"| overall (mean of categories) | | {self.accuracy()['overall']:.1%} |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy(), "counts": self.counts(),
                "results": [r.__dict__ for r in self.results]}


def evaluate_bfcl(chat_fn: ChatFn, categories: Sequence[str] = CATEGORIES, n_per_category: int | None = None,
                  seed: int = 0, data_dir: str | Path | None = None) -> BFCLReport:
    """Run ``chat_fn`` on a seeded BFCL sample and score every answer by BFCL's AST rules.

    ``chat_fn(messages, tools)`` gets the user turn as OpenAI messages and the functions as OpenAI tools, and
    returns the calls the model made (``[]`` for a plain-text answer). Its exceptions propagate.
    """
    report = BFCLReport()
    for item in load_bfcl(categories, n_per_category, seed, data_dir):
        calls = [dict(c) for c in chat_fn(copy.deepcopy(item.messages), item.tools)]
        valid, reason = score_bfcl(item, calls)
        report.results.append(BFCLResult(item.id, item.category, valid, reason, calls))
    return report
