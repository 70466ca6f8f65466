"""The calculator agent: the twelve arithmetic tools of the MENTOR reference code, seeded word problems with ground
truth, a scripted stand-in for a teacher LLM, and the same agent built three ways (create_agent, create_react_agent,
a hand-written StateGraph).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import BaseTool, ToolException, tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from mentor_agents.demo.scripted import ScriptedTeacher
from mentor_agents.tasks import NumericMatch, Task

# ----------------------------------------------------------------------------------------------------------- tools


def _number(x: float) -> int | float:
    # 12 significant digits hide float noise (0.1 + 0.2) in what the agent reads; integral values print as ints.
    x = float(f"{x:.12g}")
    return int(x) if x.is_integer() and abs(x) < 1e15 else x


@tool(parse_docstring=True)
def add(a: float, b: float) -> float:
    """Add two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return _number(a + b)


@tool(parse_docstring=True)
def subtract(a: float, b: float) -> float:
    """Subtract the second number from the first.

    Args:
        a: The number to subtract from.
        b: The number to subtract.
    """
    return _number(a - b)


@tool(parse_docstring=True)
def multiply(a: float, b: float) -> float:
    """Multiply two numbers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return _number(a * b)


@tool(parse_docstring=True)
def divide(a: float, b: float) -> float:
    """Divide the first number by the second.

    Args:
        a: The dividend.
        b: The divisor; must not be zero.
    """
    if b == 0:
        raise ToolException(f"cannot divide {_number(a)} by zero")
    return _number(a / b)


@tool(parse_docstring=True)
def sum_numbers(numbers: list[float]) -> float:
    """Add up a list of numbers.

    Args:
        numbers: The numbers to add up.
    """
    return _number(math.fsum(numbers))


@tool(parse_docstring=True)
def floor(x: float) -> int:
    """Round a number down to the nearest integer.

    Args:
        x: The number to round down.
    """
    return math.floor(x)


@tool(parse_docstring=True)
def ceil(x: float) -> int:
    """Round a number up to the nearest integer.

    Args:
        x: The number to round up.
    """
    return math.ceil(x)


@tool(parse_docstring=True)
def round_number(number: float, ndigits: int = 0) -> float:
    """Round a number to a given number of decimal places (halves go to the even neighbour, as in Python).

    Args:
        number: The number to round.
        ndigits: How many decimal places to keep; 0 rounds to an integer.
    """
    return _number(round(number, ndigits))


@tool(parse_docstring=True)
def power(base: float, exponent: float) -> float:
    """Raise a number to a power.

    Args:
        base: The base.
        exponent: The exponent.
    """
    try:
        result = base**exponent
    except (OverflowError, ZeroDivisionError) as e:
        raise ToolException(f"cannot compute {_number(base)} to the power of {_number(exponent)}: {e}") from None
    if isinstance(result, complex):
        raise ToolException(f"{_number(base)} to the power of {_number(exponent)} is not a real number")
    return _number(result)


@tool(parse_docstring=True)
def sqrt(x: float) -> float:
    """Take the square root of a number.

    Args:
        x: The number; must not be negative.
    """
    if x < 0:
        raise ToolException(f"cannot take the square root of the negative number {_number(x)}")
    return _number(math.sqrt(x))


@tool(parse_docstring=True)
def abs_value(x: float) -> float:
    """Take the absolute value of a number.

    Args:
        x: The number.
    """
    return _number(abs(x))


@tool(parse_docstring=True)
def modulo(a: float, b: float) -> float:
    """The remainder of dividing the first number by the second.

    Args:
        a: The dividend.
        b: The divisor; must not be zero.
    """
    if b == 0:
        raise ToolException(f"cannot take {_number(a)} modulo zero")
    return _number(a % b)


TOOLS: list[BaseTool] = [
    add, subtract, multiply, divide, sum_numbers, floor, ceil, round_number, power, sqrt, abs_value, modulo,
]
for _t in TOOLS:
    # A bad argument (divide by zero, sqrt of a negative) becomes an error ToolMessage the agent can read, in every
    # graph builder: ToolNode itself re-raises exceptions other than invalid-argument errors.
    _t.handle_tool_error = True

SYSTEM_PROMPT = (
    "You are a careful calculator assistant. Do every arithmetic operation with the tools, never in your head: "
    "call one or more tools, read their results, and call more tools if needed. When you have the result, reply "
    "with a short final message that ends with 'Answer: <number>'."
)

# ------------------------------------------------------------------------------------------------------- problems

_NUM = r"-?\d+(?:\.\d+)?"
_NUM_LIST = rf"{_NUM}(?:(?:,? and |, ){_NUM})+"


@dataclass(frozen=True)
class _Template:
    """A question pattern, the tool calls that solve it and an independent formula for its answer.

    ``turns`` lists the model turns; each turn is ``"tool(arg=value, ...) & tool(...)"`` (calls in one turn run in
    parallel), where a value is a placeholder of the text, ``#k`` (the result of the k-th call) or an int literal.
    """

    text: str
    turns: tuple[str, ...]
    truth: Callable[..., float]
    draw: Callable[[random.Random], dict[str, Any]]

    @property
    def pattern(self) -> re.Pattern[str]:
        regex = re.escape(self.text)
        for name in re.findall(r"\{(\w+)\}", self.text):
            group = _NUM_LIST if name == "nums" else _NUM
            regex = regex.replace(re.escape("{" + name + "}"), f"(?P<{name}>{group})", 1)
        return re.compile(regex, re.IGNORECASE)

    def render(self, values: dict[str, Any]) -> str:
        shown = {k: _join(v) if isinstance(v, list) else _show(v) for k, v in values.items()}
        return self.text.format(**shown)


def _show(x: int | float) -> str:
    return repr(x)


def _join(xs: list[int | float]) -> str:
    return ", ".join(_show(x) for x in xs[:-1]) + " and " + _show(xs[-1])


def _ints(rng: random.Random, lo: int, hi: int, k: int) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(k)]


def _dec(rng: random.Random, lo: float, hi: float) -> float:
    x = round(rng.uniform(lo, hi), 2)
    return x if not x.is_integer() else x + 0.25


def _ab(lo: int = 1, hi: int = 99) -> Callable[[random.Random], dict[str, Any]]:
    return lambda rng: dict(zip("ab", _ints(rng, lo, hi, 2)))


def _abc(lo: int = 1, hi: int = 60) -> Callable[[random.Random], dict[str, Any]]:
    return lambda rng: dict(zip("abc", _ints(rng, lo, hi, 3)))


def _exact_division(rng: random.Random) -> dict[str, Any]:
    b = rng.randint(2, 25)
    return {"a": b * rng.randint(2, 40), "b": b}


def _difference_over(rng: random.Random) -> dict[str, Any]:
    c = rng.randint(2, 12)
    return {"a": rng.randint(50, 200), "b": rng.randint(1, 49), "c": c}


# Train and test share these templates; a hash of the question decides which split a problem belongs to.
IN_DOMAIN = (
    _Template("What is {a} plus {b}?", ("add(a=a, b=b)",), lambda a, b: a + b, _ab(1, 999)),
    _Template("Add {a} and {b}.", ("add(a=a, b=b)",), lambda a, b: a + b, _ab(-99, 999)),
    _Template("What is {a} minus {b}?", ("subtract(a=a, b=b)",), lambda a, b: a - b, _ab(1, 999)),
    _Template("What is {a} times {b}?", ("multiply(a=a, b=b)",), lambda a, b: a * b, _ab(2, 99)),
    _Template("Multiply {a} by {b}.", ("multiply(a=a, b=b)",), lambda a, b: a * b,
              lambda rng: {"a": _dec(rng, 1, 50), "b": rng.randint(2, 30)}),
    _Template("What is {a} divided by {b}?", ("divide(a=a, b=b)",), lambda a, b: a / b, _exact_division),
    _Template("What is the sum of {nums}?", ("sum_numbers(numbers=nums)",), lambda nums: sum(nums),
              lambda rng: {"nums": _ints(rng, 1, 99, rng.randint(3, 6))}),
    _Template("What is {x} rounded down to a whole number?", ("floor(x=x)",), lambda x: math.floor(x),
              lambda rng: {"x": _dec(rng, -50, 99)}),
    _Template("What is {x} rounded up to a whole number?", ("ceil(x=x)",), lambda x: math.ceil(x),
              lambda rng: {"x": _dec(rng, -50, 99)}),
    _Template("Round {x} to {n} decimal places.", ("round_number(number=x, ndigits=n)",), lambda x, n: round(x, n),
              lambda rng: {"x": round(rng.uniform(0, 100), 4), "n": rng.randint(1, 2)}),
    _Template("What is {a} to the power of {b}?", ("power(base=a, exponent=b)",), lambda a, b: a**b,
              lambda rng: {"a": rng.randint(2, 40), "b": rng.randint(2, 4)}),
    _Template("What is the square root of {x}?", ("sqrt(x=x)",), lambda x: math.sqrt(x),
              lambda rng: {"x": rng.randint(2, 300) ** 2}),
    _Template("What is the absolute value of {x}?", ("abs_value(x=x)",), lambda x: abs(x),
              lambda rng: {"x": -rng.randint(1, 999)}),
    _Template("What is {a} modulo {b}?", ("modulo(a=a, b=b)",), lambda a, b: a % b,
              lambda rng: {"a": rng.randint(20, 999), "b": rng.randint(3, 19)}),
    _Template("What is ({a} plus {b}) times {c}?", ("add(a=a, b=b)", "multiply(a=#0, b=c)"),
              lambda a, b, c: (a + b) * c, _abc()),
    _Template("What is ({a} minus {b}) divided by {c}?", ("subtract(a=a, b=b)", "divide(a=#0, b=c)"),
              lambda a, b, c: (a - b) / c, _difference_over),
    _Template("What is {a} times {b} plus {c}?", ("multiply(a=a, b=b)", "add(a=#0, b=c)"),
              lambda a, b, c: a * b + c, _abc()),
    _Template("What is the absolute value of {a} minus {b}?", ("subtract(a=a, b=b)", "abs_value(x=#0)"),
              lambda a, b: abs(a - b), lambda rng: {"a": rng.randint(1, 50), "b": rng.randint(51, 150)}),
    _Template("What is ({a} plus {b}) times ({c} minus {d})?",
              ("add(a=a, b=b) & subtract(a=c, b=d)", "multiply(a=#0, b=#1)"),
              lambda a, b, c, d: (a + b) * (c - d), lambda rng: dict(zip("abcd", _ints(rng, 1, 40, 4)))),
)

# Story problems that need tool combinations never seen in train.
OUT_OF_DOMAIN = (
    _Template("A square garden has an area of {x} square meters. How long is one side in meters, rounded to {n} "
              "digits after the decimal point?", ("sqrt(x=x)", "round_number(number=#0, ndigits=n)"),
              lambda x, n: round(math.sqrt(x), n),
              lambda rng: {"x": rng.choice([k for k in range(2, 400) if math.isqrt(k) ** 2 != k]),
                           "n": rng.randint(1, 2)}),
    _Template("A combination lock has {m} positions numbered from 0. Starting at 0, the dial is turned forward "
              "{a} to the power of {b} positions. Which position does it stop at?",
              ("power(base=a, exponent=b)", "modulo(a=#0, b=m)"), lambda m, a, b: a**b % m,
              lambda rng: {"m": rng.randint(5, 30), "a": rng.randint(2, 9), "b": rng.randint(2, 5)}),
    _Template("Over {k} days a bakery sold {nums} loaves. How many loaves did it sell per day on average?",
              ("sum_numbers(numbers=nums)", "divide(a=#0, b=k)"), lambda k, nums: sum(nums) / k,
              lambda rng: (lambda nums: {"k": len(nums), "nums": nums})(_ints(rng, 10, 90, rng.randint(3, 6)))),
    _Template("{a} students are going on a trip in vans that seat {b} students each. How many vans do they need?",
              ("divide(a=a, b=b)", "ceil(x=#0)"), lambda a, b: math.ceil(a / b),
              lambda rng: {"a": rng.randint(20, 300), "b": rng.randint(5, 15)}),
    _Template("A rope {a} meters long is cut into pieces of {b} meters. How many whole pieces can be cut?",
              ("divide(a=a, b=b)", "floor(x=#0)"), lambda a, b: math.floor(a / b),
              lambda rng: {"a": rng.randint(20, 500), "b": rng.randint(3, 17)}),
    _Template("A tank holds {a} liters of water. Then {c} buckets of {b} liters each are poured out. How many liters "
              "are left in the tank?", ("multiply(a=c, b=b)", "subtract(a=a, b=#0)"), lambda a, b, c: a - b * c,
              lambda rng: {"a": rng.randint(300, 900), "b": rng.randint(2, 20), "c": rng.randint(2, 14)}),
    _Template("The morning temperature was {a} degrees and the evening temperature was {b} degrees. What was the "
              "average of the two, rounded down to a whole degree?",
              ("add(a=a, b=b)", "divide(a=#0, b=2)", "floor(x=#1)"), lambda a, b: math.floor((a + b) / 2),
              lambda rng: {"a": rng.randint(-10, 25), "b": rng.randint(-10, 35)}),
)

# New phrasings (stories) of tool combinations that train has: out of domain in wording only. Graded against
# OUT_OF_DOMAIN, whose stories also need tool combinations train never has.
OOD_PHRASING = (
    _Template("Tom has {a} apples and buys {b} more. How many apples does he have now?", ("add(a=a, b=b)",),
              lambda a, b: a + b, _ab(2, 500)),
    _Template("A shop had {a} chairs and sold {b} of them. How many chairs are left?", ("subtract(a=a, b=b)",),
              lambda a, b: a - b, lambda rng: {"a": rng.randint(100, 900), "b": rng.randint(1, 99)}),
    _Template("Each box holds {a} pencils. How many pencils are there in {b} boxes?", ("multiply(a=a, b=b)",),
              lambda a, b: a * b, _ab(2, 60)),
    _Template("{a} cookies are shared equally among {b} children. How many cookies does each child get?",
              ("divide(a=a, b=b)",), lambda a, b: a / b, _exact_division),
    _Template("A hiker walked {nums} kilometers on successive days. How many kilometers did she walk in total?",
              ("sum_numbers(numbers=nums)",), lambda nums: sum(nums),
              lambda rng: {"nums": _ints(rng, 3, 40, rng.randint(3, 6))}),
    _Template("A parcel weighs {x} kilograms and the post office charges for every started kilogram. How many "
              "kilograms are charged?", ("ceil(x=x)",), lambda x: math.ceil(x), lambda rng: {"x": _dec(rng, 1, 60)}),
    _Template("A board is {x} meters long. How many whole meters long is it, dropping the fraction?", ("floor(x=x)",),
              lambda x: math.floor(x), lambda rng: {"x": _dec(rng, 1, 90)}),
    _Template("A square field has an area of {x} square meters. How long is one side in meters?", ("sqrt(x=x)",),
              lambda x: math.sqrt(x), lambda rng: {"x": rng.randint(2, 300) ** 2}),
    _Template("{a} eggs are packed into cartons of {b}. How many eggs are left over?", ("modulo(a=a, b=b)",),
              lambda a, b: a % b, lambda rng: {"a": rng.randint(20, 999), "b": rng.randint(3, 19)}),
    _Template("A class has {a} girls and {b} boys, and every student needs {c} notebooks. How many notebooks does "
              "the class need?", ("add(a=a, b=b)", "multiply(a=#0, b=c)"), lambda a, b, c: (a + b) * c, _abc()),
    _Template("{a} workers each earn {b} dollars a day, and the manager gets {c} dollars. How much is paid in total "
              "for the day?", ("multiply(a=a, b=b)", "add(a=#0, b=c)"), lambda a, b, c: a * b + c, _abc()),
    _Template("A club collected {a} dollars and spent {b} dollars. The rest is split equally among {c} members. How "
              "much does each member get?", ("subtract(a=a, b=b)", "divide(a=#0, b=c)"),
              lambda a, b, c: (a - b) / c, _difference_over),
    _Template("One thermometer reads {a} degrees and another reads {b} degrees. How many degrees apart are they?",
              ("subtract(a=a, b=b)", "abs_value(x=#0)"), lambda a, b: abs(a - b),
              lambda rng: {"a": rng.randint(1, 50), "b": rng.randint(51, 150)}),
)


SPLITS = ("train", "test", "dev", "ood", "ood_phrasing")


def _split_of(question: str) -> Literal["train", "test"]:
    return "test" if int(hashlib.sha256(question.encode()).hexdigest(), 16) % 5 == 0 else "train"


def make_tasks(n: int, split: Literal["train", "test", "dev", "ood", "ood_phrasing"] = "train",
               seed: int = 0) -> list[Task]:
    """``n`` distinct calculator word problems with numeric ground truth; the same arguments give the same tasks.

    ``train`` and ``test`` share templates (one or two dependent steps, 1-3 tool calls) but never a problem; ``dev``
    draws train-side problems from a stream of its own (for tuning a recipe without touching test; drop any that
    are in your train set). Out of domain, graded: ``ood_phrasing`` problems are stories that need tool combinations
    train has, ``ood`` stories need tool combinations absent from train. Task ids are ``f"{split}-{seed}-{i}"``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rng = random.Random(f"calculator-{split}-{seed}")
    templates = list({"ood": OUT_OF_DOMAIN, "ood_phrasing": OOD_PHRASING}.get(split, IN_DOMAIN))
    hashed = {"train": "train", "dev": "train", "test": "test"}.get(split)
    rng.shuffle(templates)
    tasks: list[Task] = []
    seen: set[str] = set()
    for i in range(n):
        question = None
        while question is None:
            if not templates:
                raise ValueError(f"cannot draw {n} distinct {split} problems; ask for fewer")
            template = templates[i % len(templates)]
            for _ in range(200):
                candidate = template.render(template.draw(rng))
                if candidate not in seen and (hashed is None or _split_of(candidate) == hashed):
                    question = candidate
                    break
            else:  # this template has (nearly) run out of distinct problems
                templates.remove(template)
        seen.add(question)
        parsed = {k: _parse_value(v) for k, v in template.pattern.fullmatch(question).groupdict().items()}
        tasks.append(Task(
            id=f"{split}-{seed}-{i}",
            input=question,
            ground_truth=_number(template.truth(**parsed)),
            verifier=NumericMatch(),
            metadata={"split": split, "tools": sorted({call[0] for turn in template.turns
                                                        for call in _calls(turn)})},
        ))
    return tasks


def _parse_value(text: str) -> int | float | list[int | float]:
    numbers = [float(x) if "." in x else int(x) for x in re.findall(_NUM, text)]
    return numbers if len(numbers) > 1 else numbers[0]


def _calls(turn: str) -> list[tuple[str, dict[str, str]]]:
    calls = []
    for name, args in re.findall(r"(\w+)\(([^)]*)\)", turn):
        calls.append((name, dict(part.strip().split("=") for part in args.split(","))))
    return calls


# --------------------------------------------------------------------------------------------------------- teacher


SYNTHESIS_PROMPT = re.compile(r"Write (?P<count>\d+) new, varied user requests.*Variation seed: (?P<seed>\S+)", re.S)
"""The task-synthesis prompt of `mentor_agents.integrations.langgraph.adapter.LangGraphAdapter.synthesize_tasks`."""


class ScriptedCalculatorTeacher(ScriptedTeacher):
    """A deterministic stand-in for a teacher LLM on the calculator tasks: no model behind it.

    It reads the last user question and the tool results that follow it, and answers with the next tool calls
    (ids, names, argument dicts), one model turn at a time, then with ``"Answer: <the last tool result>"``.
    A question it does not recognise, a needed tool that is not bound, or a tool error gets ``"Answer: unknown"``.
    Asked to write requests for the agent (task synthesis, no tools bound), it writes calculator word problems.
    """

    model_name: str = "scripted-calculator-teacher"

    def _respond(self, messages: list[BaseMessage], bound: set[str]) -> AIMessage:
        last_user = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=None)
        if last_user is None:
            return AIMessage(content="Answer: unknown")
        question = messages[last_user].text.strip()
        request = SYNTHESIS_PROMPT.search(question)
        if request is not None and not bound:
            return AIMessage(content=self._write_requests(int(request["count"]), request["seed"]))
        templates = IN_DOMAIN + OUT_OF_DOMAIN + OOD_PHRASING
        found = next(((t, m) for t in templates if (m := t.pattern.fullmatch(question))), None)
        if found is None:
            return AIMessage(content="I cannot solve this with the calculator tools. Answer: unknown")
        template, match = found
        turns = [_calls(turn) for turn in template.turns]
        if not {name for turn in turns for name, _ in turn} <= bound:
            return AIMessage(content="The tools I need are not available. Answer: unknown")
        results = {m.tool_call_id: m for m in messages[last_user + 1:] if isinstance(m, ToolMessage)}
        if any(m.status == "error" for m in results.values()):
            return AIMessage(content="A tool reported an error, so I cannot give a number. Answer: unknown")
        call_prefix = "call_" + hashlib.sha256(question.encode()).hexdigest()[:8]
        values = {k: _parse_value(v) for k, v in match.groupdict().items()}
        index = 0
        for turn in turns:
            ids = [f"{call_prefix}_{index + j}" for j in range(len(turn))]
            if not all(i in results for i in ids):
                calls = []
                for call_id, (name, args) in zip(ids, turn):
                    resolved = {k: self._resolve(v, values, results, call_prefix) for k, v in args.items()}
                    calls.append({"name": name, "args": resolved, "id": call_id, "type": "tool_call"})
                return AIMessage(content="", tool_calls=calls)
            index += len(turn)
        return AIMessage(content=f"Answer: {results[f'{call_prefix}_{index - 1}'].text.strip()}")

    @staticmethod
    def _write_requests(count: int, seed: str) -> str:
        """Answer a task-synthesis prompt the way an LLM would: numbered, varied requests, seeded."""
        numeric_seed = int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16)
        tasks = make_tasks(count, "train", seed=numeric_seed)
        return "\n".join(f"{i}. {task.input}" for i, task in enumerate(tasks, start=1))

    @staticmethod
    def _resolve(value: str, values: dict[str, Any], results: dict[str, ToolMessage], prefix: str) -> Any:
        if value.startswith("#"):
            return _parse_value(results[f"{prefix}_{value[1:]}"].text)
        if value.lstrip("-").isdigit():
            return int(value)
        return values[value]


# ----------------------------------------------------------------------------------------------------------- agent


def build_agent(model: BaseChatModel,
                builder: Literal["create_agent", "react", "stategraph"] = "create_agent") -> CompiledStateGraph:
    """The calculator agent around ``model``, as a compiled graph, built with `langchain.agents.create_agent`, the
    deprecated `langgraph.prebuilt.create_react_agent`, or a hand-written ``StateGraph`` (nodes "llm" and "run_tools").
    """
    if builder == "create_agent":
        return create_agent(model, TOOLS, system_prompt=SYSTEM_PROMPT)
    if builder == "react":
        from langgraph.prebuilt import create_react_agent
        from langgraph.warnings import LangGraphDeprecatedSinceV10

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LangGraphDeprecatedSinceV10)
            return create_react_agent(model, TOOLS, prompt=SYSTEM_PROMPT)
    if builder == "stategraph":
        return _state_graph(model)
    raise ValueError(f"builder must be 'create_agent', 'react' or 'stategraph', got {builder!r}")


def _state_graph(model: BaseChatModel) -> CompiledStateGraph:
    bound = model.bind_tools(TOOLS)

    def llm(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [bound.invoke([SystemMessage(SYSTEM_PROMPT), *state["messages"]])]}

    async def allm(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await bound.ainvoke([SystemMessage(SYSTEM_PROMPT), *state["messages"]])]}

    graph = StateGraph(MessagesState)
    graph.add_node("llm", RunnableLambda(llm, afunc=allm, name="llm"))
    graph.add_node("run_tools", ToolNode(TOOLS))
    graph.add_edge(START, "llm")
    graph.add_conditional_edges("llm", tools_condition, {"tools": "run_tools", END: END})
    graph.add_edge("run_tools", "llm")
    return graph.compile()
