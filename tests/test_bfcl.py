"""BFCL AST scoring on the shipped 50-item sample: gold answers pass, each kind of perturbation fails, irrelevance
is correct only without a call, and the tool schemas use JSON-schema types."""

import copy
import json
from pathlib import Path

import pytest

from mentor_agents.bfcl import (
    CATEGORIES, BFCLItem, evaluate_bfcl, gold_calls, load_bfcl, score_bfcl, to_openai_tool,
)

SAMPLE = Path(__file__).parent / "data" / "bfcl-sample"


@pytest.fixture(scope="module")
def items():
    return load_bfcl(data_dir=SAMPLE)


def answered(items):
    return [i for i in items if i.category != "irrelevance"]


def test_sample_loads_every_category(items):
    counts = {c: sum(i.category == c for i in items) for c in CATEGORIES}
    assert counts == {"simple_python": 20, "multiple": 10, "parallel": 5, "parallel_multiple": 5, "irrelevance": 10}
    assert all(i.messages and i.messages[0]["role"] == "user" for i in items)
    assert all((i.ground_truth is None) == (i.category == "irrelevance") for i in items)


def test_seeded_subsets_are_reproducible():
    a = [i.id for i in load_bfcl(["simple_python", "multiple"], 4, seed=1, data_dir=SAMPLE)]
    b = [i.id for i in load_bfcl(["simple_python", "multiple"], 4, seed=1, data_dir=SAMPLE)]
    c = [i.id for i in load_bfcl(["simple_python", "multiple"], 4, seed=2, data_dir=SAMPLE)]
    assert a == b and len(a) == 8 and a != c


def test_bad_category_and_missing_folder_are_named():
    with pytest.raises(ValueError, match="live_simple"):
        load_bfcl(["live_simple"], data_dir=SAMPLE)
    with pytest.raises(FileNotFoundError, match="BFCL_v4_simple_python.json"):
        load_bfcl(["simple_python"], data_dir=SAMPLE / "nowhere")


def test_gold_answers_pass(items):
    for item in answered(items):
        assert score_bfcl(item, gold_calls(item)) == (True, ""), item.id


def test_arguments_may_arrive_as_json_strings(items):
    item = answered(items)[0]
    calls = [{"name": c["name"], "arguments": json.dumps(c["arguments"])} for c in gold_calls(item)]
    assert score_bfcl(item, calls)[0]
    assert not score_bfcl(item, [{"name": calls[0]["name"], "arguments": "{not json"}])[0]


def edit_first(item: BFCLItem, edit):
    calls = copy.deepcopy(gold_calls(item))
    edit(calls[0], item)
    return calls


def first_required(item):
    name = next(iter(item.ground_truth[0]))
    return next(f for f in item.functions if f["name"] == name)["parameters"]["required"][0]


def wrong_type(value):
    return 12345 if isinstance(value, str) else "12345"


def wrong_value(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 7919
    if isinstance(value, str):
        return value + " zzqx"
    return value + value[:1] if isinstance(value, list) else {**value, "zzqx": 1}


PERTURBATIONS = {
    "wrong function name": lambda c, i: c.update(name=c["name"] + "_v2"),
    "missing required argument": lambda c, i: c["arguments"].pop(first_required(i)),
    "wrong type": lambda c, i: c["arguments"].update({first_required(i): wrong_type(c["arguments"][first_required(i)])}),
    "wrong value": lambda c, i: c["arguments"].update({first_required(i): wrong_value(c["arguments"][first_required(i)])}),
    "extra argument": lambda c, i: c["arguments"].update(zzqx_extra=1),
}


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_perturbed_answers_fail(items, kind):
    for item in answered(items):
        valid, reason = score_bfcl(item, edit_first(item, PERTURBATIONS[kind]))
        assert not valid and reason, (item.id, kind)


def test_simple_rules(items):
    # calculate_emissions(distance: integer, fuel_type: string, fuel_efficiency: float, efficiency_reduction: integer
    # = optional); all but the last are required. Gold: 12000, "gas", 25.0, and 0 or nothing.
    item = next(i for i in items if i.id == "simple_python_200")
    gold = {"distance": 12000, "fuel_type": "gas", "fuel_efficiency": 25.0, "efficiency_reduction": 0}
    assert gold_calls(item) == [{"name": "calculate_emissions", "arguments": gold}]
    ok = lambda **edit: score_bfcl(item, [{"name": "calculate_emissions",
                                           "arguments": {k: v for k, v in {**gold, **edit}.items() if v != "-"}}])[0]
    assert ok(efficiency_reduction="-")                   # an optional argument may be left out
    assert not ok(fuel_efficiency="-")                    # a required one may not
    assert ok(fuel_efficiency=25)                         # an int is accepted for a float
    assert ok(fuel_type=" G-A_S. ")                       # case, spaces and ,./-_*^ are ignored
    assert not ok(fuel_type="diesel")
    assert not ok(distance=12000.0)                       # a float is not an integer
    assert not ok(distance=True)                          # nor is a bool
    assert not ok(fuel_efficiency=30.0)
    assert not ok(efficiency_reduction=1)
    assert not score_bfcl(item, [])[0]
    assert not score_bfcl(item, gold_calls(item) * 2)[0]


def test_list_rules(items):
    item = next(i for i in items if i.id == "simple_python_87")  # array_sort(list=[5.0, 3.0, 4.0, 1.0, 2.0], ...)
    ok = lambda values: score_bfcl(item, [{"name": "array_sort", "arguments": {"list": values,
                                                                               "order": "ascending"}}])[0]
    assert ok([5.0, 3.0, 4.0, 1.0, 2.0])
    assert not ok([5.0, 3.0, 4.0, 1.0])
    assert not ok([5, 3, 4, 1, 2])  # BFCL converts int to float only at the top level, not inside lists
    item = next(i for i in items if i.id == "simple_python_369")  # categories: any order of three strings
    call = gold_calls(item)[0]
    call["arguments"]["categories"] = ["VEGETABLES", "fruits", "organic"]
    assert score_bfcl(item, [call])[0]


def test_parallel_is_order_insensitive_and_needs_every_call(items):
    for item in items:
        if "parallel" not in item.category:
            continue
        calls = gold_calls(item)
        assert len(calls) > 1
        assert score_bfcl(item, calls[::-1])[0], item.id
        assert not score_bfcl(item, calls[:-1])[0], item.id
        assert not score_bfcl(item, calls + calls[:1])[0], item.id


def test_multiple_rejects_the_other_functions(items):
    for item in items:
        if item.category != "multiple":
            continue
        gold = gold_calls(item)
        others = [f["name"].replace(".", "_") for f in item.functions if f["name"].replace(".", "_") != gold[0]["name"]]
        assert others
        assert not score_bfcl(item, [{**gold[0], "name": others[0]}])[0], item.id


def test_irrelevance_is_correct_only_without_a_call(items):
    for item in items:
        if item.category != "irrelevance":
            continue
        assert score_bfcl(item, []) == (True, "")
        name = item.tools[0]["function"]["name"]
        valid, reason = score_bfcl(item, [{"name": name, "arguments": {}}])
        assert not valid and "call" in reason
        assert score_bfcl(item, [{"name": name, "arguments": "not json"}])[0]  # undecodable: no call was made


def test_schema_types_are_mapped_to_json_schema():
    tool = to_openai_tool({
        "name": "geo.distance",
        "description": "Distance.",
        "parameters": {"type": "dict", "required": ["points"], "properties": {
            "points": {"type": "array", "items": {"type": "tuple", "items": {"type": "float"}}, "description": "P."},
            "scale": {"type": "float", "description": "S."},
            "opts": {"type": "dict", "description": "O.", "properties": {"n": {"type": "integer", "description": "N."},
                                                                        "any": {"type": "any", "description": "A."}}},
            "flag": {"type": "boolean", "description": "F."},
            "label": {"type": "any", "description": "L."},
            "pair": {"type": "tuple", "items": {"type": "string"}, "description": "T."},
            "rows": {"type": "array", "items": {"type": "dict", "properties": {"x": {"type": "float",
                                                                                   "description": "X."}}},
                     "description": "R."},
        }},
    })
    assert tool["type"] == "function"
    f = tool["function"]
    assert f["name"] == "geo_distance" and f["description"].endswith("Python 3 syntax.")
    params = f["parameters"]
    assert params["type"] == "object"
    p = params["properties"]
    assert p["points"]["type"] == "array" and p["points"]["items"] == {"type": "array", "items": {"type": "number"}}
    assert p["scale"]["type"] == "number" and p["scale"]["format"] == "float"
    assert p["opts"]["type"] == "object"
    assert p["opts"]["properties"]["n"]["type"] == "integer" and p["opts"]["properties"]["any"]["type"] == "string"
    assert p["flag"]["type"] == "boolean" and p["label"]["type"] == "string"
    assert p["pair"]["type"] == "array" and p["pair"]["items"]["type"] == "string"
    assert p["rows"]["items"]["type"] == "object" and p["rows"]["items"]["properties"]["x"]["type"] == "number"


def test_every_sample_tool_is_valid_json_schema_typing(items):
    allowed = {"object", "array", "string", "integer", "number", "boolean"}

    def walk(schema):
        assert schema["type"] in allowed, schema
        for sub in schema.get("properties", {}).values():
            walk(sub)
        if "items" in schema:
            walk(schema["items"])

    for item in items:
        for tool in item.tools:
            assert set(tool["function"]["name"]) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
            walk(tool["function"]["parameters"])


def test_evaluate_bfcl_with_an_oracle_and_a_silent_model(items):
    by_first_message = {i.messages[0]["content"]: i for i in items}

    def oracle(messages, tools):
        return gold_calls(by_first_message[messages[0]["content"]])

    report = evaluate_bfcl(oracle, n_per_category=3, seed=0, data_dir=SAMPLE)
    assert report.counts() == {c: (3, 3) for c in CATEGORIES}
    assert report.accuracy()["overall"] == 1.0
    assert "| simple_python | 3/3 | 100.0% |" in report.table()

    silent = evaluate_bfcl(lambda messages, tools: [], n_per_category=3, seed=0, data_dir=SAMPLE)
    acc = silent.accuracy()
    assert acc["irrelevance"] == 1.0 and acc["simple_python"] == 0.0 and acc["overall"] == pytest.approx(0.2)
    assert json.loads(json.dumps(silent.to_dict()))["counts"]["parallel"] == [0, 3]
