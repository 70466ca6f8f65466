"""Agreement of mentor_agents.bfcl's AST scoring with BFCL's official checker, on gold and perturbed answers.

For every item of simple_python, multiple, parallel, parallel_multiple and irrelevance (1,240 items from the
bfcl-eval wheel) it builds tool calls of several kinds: the gold answer (first possible value of every parameter),
answers that must still pass (gold in reversed order for parallel, an int for an integral float, a string in other
case and punctuation, an optional parameter left out) and answers that must fail (wrong function name, another of
the offered functions, missing required argument, wrong type, wrong value, extra argument, a parallel call dropped;
for irrelevance: any call). Both checkers score every case; the official one runs in a separate venv, through
``bfcl_eval.eval_checker.eval_runner`` with the ``gpt-4o-2024-11-20-FC`` handler (its FC decoder, format check and
``ast_checker``), because bfcl-eval needs its own pinned dependencies and every vendor SDK. Set that venv up with::

    python -m venv /tmp/bfcl-venv
    /tmp/bfcl-venv/bin/pip install --no-deps bfcl-eval==2026.3.23
    /tmp/bfcl-venv/bin/pip install requests tqdm numpy==1.26.4 pandas huggingface_hub pydantic python-dotenv \
        tree_sitter==0.21.3 tree-sitter-java==0.21.0 tree-sitter-javascript==0.21.4 openai mistralai==1.7.0 \
        anthropic cohere==5.18.0 typer tabulate datamodel-code-generator==0.25.7 google-genai qwen-agent \
        mpmath==1.3.0 tenacity writer-sdk overrides boto3 beautifulsoup4 html2text rank_bm25==0.2.2 \
        google-search-results networkx==3.3 filelock==3.20.0 soundfile

and run ``python examples/bfcl_agreement.py --official-python /tmp/bfcl-venv/bin/python`` (about a minute).
Writes ``examples/results/bfcl_agreement.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from mentor_agents.bfcl import CATEGORIES, BFCLItem, gold_calls, load_bfcl, openai_name, score_bfcl

MUST_PASS = {"gold", "reversed_order", "int_for_float", "string_case_punctuation", "list_case_punctuation",
             "omit_optional", "alternative_value", "no_call"}

OFFICIAL = r"""
import json, os, sys
os.environ.setdefault("OPENAI_API_KEY", "unused")
from bfcl_eval.constants.enums import Language, ReturnFormat
from bfcl_eval.eval_checker.eval_runner import (
    _evaluate_single_ast_entry, _evaluate_single_relevance_entry, get_handler)
model = "gpt-4o-2024-11-20-FC"
handler = get_handler(model)
data = json.load(open(sys.argv[1]))
verdicts = []
for case in data["cases"]:
    item = data["items"][case["id"]]
    prompt = {"id": case["id"], "function": item["function"]}
    if item["category"] == "irrelevance":
        out = _evaluate_single_relevance_entry(handler, case["id"], case["model_result"], prompt, model, "irrelevance")
    else:
        out = _evaluate_single_ast_entry(handler, case["id"], case["model_result"], item["ground_truth"], prompt,
                                         model, item["category"], Language.PYTHON, ReturnFormat.PYTHON, False)
    verdicts.append(out["valid"])
from bfcl_eval.constants.enums import ModelStyle
from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
from bfcl_eval.model_handler.utils import convert_to_tool
from bfcl_eval.utils import _func_doc_language_specific_pre_processing
tools = {i: convert_to_tool(_func_doc_language_specific_pre_processing(item["function"], item["category"]),
                            GORILLA_TO_OPENAPI, ModelStyle.OPENAI_COMPLETIONS) for i, item in data["items"].items()}
json.dump({"verdicts": verdicts, "tools": tools}, sys.stdout)
"""


def wrong_type(value: Any) -> Any:
    if isinstance(value, bool):
        return "true"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return 12345
    return "not a container"


def wrong_value(value: Any, allowed: list[Any]) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return max([a for a in allowed if isinstance(a, (int, float))] + [value]) + 7919
    if isinstance(value, str):
        return value + " zzqx"
    if isinstance(value, list):
        return value + (value[:1] or ["zzqx"])
    return {**value, "zzqx_key": 1}


def cases_for(item: BFCLItem) -> list[tuple[str, list[dict[str, Any]]]]:
    """(kind, calls) pairs for one item: the gold answer, call-level edits, and edits of every argument of every
    gold call."""
    if item.category == "irrelevance":
        f = item.functions[0]
        args = {p: 7919 if f["parameters"]["properties"][p]["type"] in ("integer", "float") else "x"
                for p in f["parameters"]["required"]}
        return [("no_call", []), ("call", [{"name": openai_name(f["name"]), "arguments": args}])]
    gold = gold_calls(item)
    cases = [("gold", gold)]

    def variant(kind: str, edit) -> None:
        calls = copy.deepcopy(gold)
        edit(calls)
        cases.append((kind, calls))

    if len(gold) > 1:
        variant("dropped_call", lambda c: c.pop())
        variant("reversed_order", lambda c: c.reverse())
    else:
        variant("duplicated_call", lambda c: c.append(copy.deepcopy(c[0])))
    for i, answer in enumerate(item.ground_truth):
        (gold_name, possible), = answer.items()
        function = next(f for f in item.functions if f["name"] == gold_name)
        props, required = function["parameters"]["properties"], function["parameters"]["required"]
        variant("wrong_name", lambda c: c[i].update(name=c[i]["name"] + "_v2"))
        others = [f for f in item.functions if f["name"] != gold_name]
        if others:
            variant("other_function", lambda c: c[i].update(name=openai_name(others[0]["name"])))
        variant("extra_argument", lambda c: c[i]["arguments"].update(zzqx_extra=1))
        for p in required:
            if p in gold[i]["arguments"]:
                variant("missing_required", lambda c: c[i]["arguments"].pop(p))
        for p, value in gold[i]["arguments"].items():
            kind = props.get(p, {}).get("type")

            def put(new, p=p):
                return lambda c: c[i]["arguments"].update({p: new})

            variant("wrong_type", put(wrong_type(value)))
            variant("wrong_value", put(wrong_value(value, possible[p])))
            if p not in required:
                variant("omit_optional" if "" in possible[p] else "omit_not_optional",
                        lambda c, p=p: c[i]["arguments"].pop(p))
            alternatives = [a for a in possible[p][1:] if a != "" and not isinstance(a, (dict, list))]
            if alternatives:
                variant("alternative_value", put(alternatives[0]))
            if kind == "float" and isinstance(value, float) and value.is_integer():
                variant("int_for_float", put(int(value)))
            if kind == "integer" and type(value) is int:
                variant("float_for_int", put(float(value)))
            if kind == "string" and isinstance(value, str):
                variant("string_case_punctuation", put(value.upper().replace(" ", "_") + "."))
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                variant("list_case_punctuation", put([v.upper().replace(" ", "-") for v in value]))
            if isinstance(value, list) and value and all(type(v) is float and v.is_integer() for v in value):
                variant("int_in_float_list", put([int(v) for v in value]))
            if isinstance(value, dict) and value:
                key = next(iter(value))
                variant("dict_value_changed", put({**value, key: wrong_value(value[key], [])}))
    return cases


def official(python: str, items: list[BFCLItem], cases: list[tuple[str, str, list]]) -> dict[str, Any]:
    """The official verdict on every case, and the OpenAI tools BFCL builds for every item."""
    payload = {
        "items": {i.id: {"category": i.category, "function": i.functions, "ground_truth": i.ground_truth}
                  for i in items},
        # The FC handler's raw format: one {name: JSON-argument-string} per call; a text reply when there is none.
        "cases": [{"id": item_id, "model_result": [{c["name"]: json.dumps(c["arguments"])} for c in calls]
                   if calls else "I cannot help with that using these functions."} for item_id, _, calls in cases],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(payload, f)
    try:
        out = subprocess.run([python, "-c", OFFICIAL, f.name], capture_output=True, text=True, check=True,
                             env={**os.environ, "OPENAI_API_KEY": "unused"})
    finally:
        os.unlink(f.name)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-python", default="/tmp/bfcl-venv/bin/python",
                        help="python of a venv where bfcl_eval's ast_checker imports")
    parser.add_argument("--data-dir", default=None, help="BFCL data folder (default: the installed wheel's)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bfcl_agreement.json"))
    args = parser.parse_args()
    if not Path(args.official_python).exists():
        raise SystemExit(f"{args.official_python} not found; create the venv described at the top of this file")

    items = load_bfcl(CATEGORIES, data_dir=args.data_dir)
    by_id = {i.id: i for i in items}
    cases = [(item.id, kind, calls) for item in items for kind, calls in cases_for(item)]
    ours = [score_bfcl(by_id[item_id], calls)[0] for item_id, _, calls in cases]
    answer = official(args.official_python, items, cases)
    theirs = answer["verdicts"]
    same_tools = sum(answer["tools"][i.id] == i.tools for i in items)

    per_kind: dict[str, Counter] = defaultdict(Counter)
    per_category: dict[str, Counter] = defaultdict(Counter)
    disagreements = []
    for (item_id, kind, calls), a, b in zip(cases, ours, theirs):
        for bucket in (per_kind[kind], per_category[by_id[item_id].category]):
            bucket.update(cases=1, agree=a == b, ours_pass=a, official_pass=b)
        if a != b:
            disagreements.append({"id": item_id, "kind": kind, "calls": calls, "ours": a, "official": b})
    summary = {
        "bfcl_eval_version": "2026.3.23",
        "official_model_handler": "gpt-4o-2024-11-20-FC",
        "cases": len(cases),
        "items": len(items),
        "agreement": sum(a == b for a, b in zip(ours, theirs)) / len(cases),
        "tool_schemas_identical_to_bfcl_convert_to_tool": f"{same_tools}/{len(items)}",
        "per_kind": {k: {**v, "agreement": v["agree"] / v["cases"], "must_pass": k in MUST_PASS}
                     for k, v in sorted(per_kind.items())},
        "per_category": {k: {**v, "agreement": v["agree"] / v["cases"]} for k, v in per_category.items()},
        "disagreements": disagreements[:50],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{len(cases)} cases over {len(items)} items: agreement {summary['agreement']:.4%}")
    print(f"tool schemas identical to BFCL's convert_to_tool: {same_tools}/{len(items)}")
    print(f"{'kind':<26}{'cases':>7}{'agree':>7}{'ours pass':>11}{'official pass':>15}")
    for kind, v in summary["per_kind"].items():
        print(f"{kind:<26}{v['cases']:>7}{v['agree']:>7}{v['ours_pass']:>11}{v['official_pass']:>15}")


if __name__ == "__main__":
    main()
