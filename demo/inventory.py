"""The inventory agent: a second tool domain, disjoint from the calculator's, over a real SQLite database.

Eight tools (look up, search and list products, read stock, place, read and cancel orders, restock) run SQL against
a seeded database of products, stock and orders. Every run of the agent works on its own copy of that database, so
runs can go in parallel and one run's orders never change another's answers. `make_tasks` draws single-step
lookups and multi-step tasks (find then read, find then order, cancel then read, order then read) whose numeric
ground truth is computed from the seeded database; `make_write_tasks` draws write tasks (place an order) whose
verifier, `order_placed`, checks the run's database; `ScriptedInventoryTeacher` is a deterministic stand-in for a
teacher LLM that solves them with correct tool calls. `environment` is the factory for `distill(...,
environment=...)`: each run gets its own copy of the database, and the verifier sees that copy.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import sqlite3
import tempfile
import uuid
import weakref
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Sequence

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, AgentState
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, ToolException, tool
from langgraph.prebuilt import InjectedState
from typing_extensions import NotRequired

from mentor_agents.demo.scripted import ScriptedTeacher
from mentor_agents.environment import Environment, EnvironmentFactory
from mentor_agents.tasks import NumericMatch, Task, last_number

# -------------------------------------------------------------------------------------------------------- database

CATEGORIES = ("electronics", "kitchen", "garden", "office", "toys")
_NOUNS = {
    "electronics": ["Headphones", "Charger", "Speaker", "Webcam", "Keyboard", "Mouse", "Router"],
    "kitchen": ["Kettle", "Cutting Board", "Blender", "Frying Pan", "Knife Set", "Toaster", "Spice Rack"],
    "garden": ["Hose", "Rake", "Planter", "Shears", "Watering Can", "Bird Feeder", "Trowel"],
    "office": ["Stapler", "Desk Lamp", "Notebook", "Monitor Stand", "Pen Set", "Paper Shredder", "Whiteboard"],
    "toys": ["Puzzle", "Kite", "Robot Kit", "Board Game", "Yo-Yo", "Building Blocks", "Plush Bear"],
}
_ADJECTIVES = ["Compact", "Deluxe", "Classic", "Bamboo", "Solar", "Steel", "Mini", "Pro", "Eco", "Vintage"]
_SUPPLIERS = ["Acme Supply", "Northwind Traders", "Globex", "Initech Wholesale"]
CUSTOMERS = ("Alice Chen", "Bruno Diaz", "Chloe Martin", "Dev Patel", "Emma Novak", "Farid Haddad", "Grace Okafor",
             "Hiro Tanaka")

_SCHEMA = """
CREATE TABLE products (sku INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, category TEXT NOT NULL,
                       price REAL NOT NULL, supplier TEXT NOT NULL);
CREATE TABLE stock (sku INTEGER PRIMARY KEY REFERENCES products(sku), quantity INTEGER NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT, sku INTEGER NOT NULL REFERENCES products(sku),
                     quantity INTEGER NOT NULL, unit_price REAL NOT NULL, customer TEXT NOT NULL,
                     status TEXT NOT NULL CHECK (status IN ('placed', 'shipped', 'cancelled')));
"""


def create_db(path: str | Path, seed: int = 0, n_products: int = 30, n_orders: int = 20) -> Path:
    """Write a fresh seeded inventory database to ``path`` (replacing any file there) and return the path.

    SKUs are 1001, 1002, ...; order ids 1, 2, ...; the same seed always gives the same database.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    rng = random.Random(f"inventory-db-{seed}")
    names = sorted({(c, f"{a} {n}") for c in CATEGORIES for a in _ADJECTIVES for n in _NOUNS[c]})
    chosen = rng.sample(names, n_products)
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(_SCHEMA)
        for i, (category, name) in enumerate(chosen):
            sku = 1001 + i
            conn.execute("INSERT INTO products VALUES (?, ?, ?, ?, ?)",
                         (sku, name, category, round(rng.uniform(2, 250), 2), rng.choice(_SUPPLIERS)))
            conn.execute("INSERT INTO stock VALUES (?, ?)", (sku, 0 if rng.random() < 0.1 else rng.randint(5, 200)))
        for _ in range(n_orders):
            sku = 1001 + rng.randrange(n_products)
            price = conn.execute("SELECT price FROM products WHERE sku = ?", (sku,)).fetchone()[0]
            conn.execute("INSERT INTO orders (sku, quantity, unit_price, customer, status) VALUES (?, ?, ?, ?, ?)",
                         (sku, rng.randint(1, 12), price, rng.choice(CUSTOMERS),
                          rng.choice(["placed", "placed", "shipped", "cancelled"])))
    return path


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def _money(x: float) -> float:
    return round(x + 0.0, 2)


# ----------------------------------------------------------------------------------------------------------- tools

RunState = Annotated[dict, InjectedState]


def _db(state: dict) -> str:
    if "db_path" not in state:
        raise ToolException("this tool needs the inventory agent's state (db_path); build the agent with build_agent")
    return state["db_path"]


def _product(conn: sqlite3.Connection, sku: int) -> sqlite3.Row:
    row = conn.execute("SELECT p.*, s.quantity FROM products p JOIN stock s USING (sku) WHERE sku = ?",
                       (sku,)).fetchone()
    if row is None:
        raise ToolException(f"no product with SKU {sku}")
    return row


def _order(conn: sqlite3.Connection, order_id: int) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    if row is None:
        raise ToolException(f"no order with id {order_id}")
    return row


def _listing(rows: Sequence[sqlite3.Row]) -> str:
    return json.dumps([{"sku": r["sku"], "name": r["name"], "category": r["category"], "price": r["price"]}
                       for r in rows])


@tool(parse_docstring=True)
def list_products(category: str, state: RunState) -> str:
    """List the products of one category with their SKU, name and unit price.

    Args:
        category: One of electronics, kitchen, garden, office, toys.
    """
    if category.strip().lower() not in CATEGORIES:
        raise ToolException(f"unknown category {category!r}; choose one of {', '.join(CATEGORIES)}")
    with closing(_connect(_db(state))) as conn:
        rows = conn.execute("SELECT * FROM products WHERE category = ? ORDER BY sku",
                            (category.strip().lower(),)).fetchall()
    return _listing(rows)


@tool(parse_docstring=True)
def search_products(query: str, state: RunState) -> str:
    """Find products whose name contains the query text (case-insensitive).

    Args:
        query: Part of the product name, for example "kettle".
    """
    with closing(_connect(_db(state))) as conn:
        rows = conn.execute("SELECT * FROM products WHERE name LIKE ? ORDER BY sku",
                            (f"%{query.strip()}%",)).fetchall()
    return _listing(rows)


@tool(parse_docstring=True)
def get_product(sku: int, state: RunState) -> str:
    """Get one product's details: name, category, unit price in dollars and supplier.

    Args:
        sku: The product's SKU number, for example 1004.
    """
    with closing(_connect(_db(state))) as conn:
        row = _product(conn, sku)
    return json.dumps({k: row[k] for k in ("sku", "name", "category", "price", "supplier")})


@tool(parse_docstring=True)
def get_stock(sku: int, state: RunState) -> str:
    """Get how many units of a product are in stock.

    Args:
        sku: The product's SKU number.
    """
    with closing(_connect(_db(state))) as conn:
        row = _product(conn, sku)
    return json.dumps({"sku": sku, "quantity": row["quantity"]})


@tool(parse_docstring=True)
def place_order(sku: int, quantity: int, customer: str, state: RunState) -> str:
    """Order units of a product for a customer; takes them out of stock and returns the order id and total price.

    Args:
        sku: The product's SKU number.
        quantity: How many units to order; at least 1 and at most the units in stock.
        customer: The customer's full name.
    """
    if quantity < 1:
        raise ToolException(f"quantity must be at least 1, got {quantity}")
    with closing(_connect(_db(state))) as conn, conn:
        row = _product(conn, sku)
        if quantity > row["quantity"]:
            raise ToolException(f"only {row['quantity']} units of SKU {sku} in stock, cannot order {quantity}")
        conn.execute("UPDATE stock SET quantity = quantity - ? WHERE sku = ?", (quantity, sku))
        cursor = conn.execute("INSERT INTO orders (sku, quantity, unit_price, customer, status) "
                              "VALUES (?, ?, ?, ?, 'placed')", (sku, quantity, row["price"], customer))
    return json.dumps({"order_id": cursor.lastrowid, "sku": sku, "quantity": quantity,
                       "total": _money(quantity * row["price"]), "status": "placed"})


@tool(parse_docstring=True)
def get_order(order_id: int, state: RunState) -> str:
    """Get an order: its product SKU, quantity, customer, total price in dollars and status.

    Args:
        order_id: The order number.
    """
    with closing(_connect(_db(state))) as conn:
        row = _order(conn, order_id)
    return json.dumps({"order_id": order_id, "sku": row["sku"], "quantity": row["quantity"],
                       "customer": row["customer"], "total": _money(row["quantity"] * row["unit_price"]),
                       "status": row["status"]})


@tool(parse_docstring=True)
def cancel_order(order_id: int, state: RunState) -> str:
    """Cancel an order that has not shipped yet; its units go back into stock.

    Args:
        order_id: The order number.
    """
    with closing(_connect(_db(state))) as conn, conn:
        row = _order(conn, order_id)
        if row["status"] != "placed":
            raise ToolException(f"order {order_id} is {row['status']} and cannot be cancelled")
        conn.execute("UPDATE orders SET status = 'cancelled' WHERE id = ?", (order_id,))
        conn.execute("UPDATE stock SET quantity = quantity + ? WHERE sku = ?", (row["quantity"], row["sku"]))
    return json.dumps({"order_id": order_id, "status": "cancelled", "sku": row["sku"],
                       "returned_to_stock": row["quantity"]})


@tool(parse_docstring=True)
def restock(sku: int, quantity: int, state: RunState) -> str:
    """Add delivered units of a product to stock and return the new stock level.

    Args:
        sku: The product's SKU number.
        quantity: How many units arrived; at least 1.
    """
    if quantity < 1:
        raise ToolException(f"quantity must be at least 1, got {quantity}")
    with closing(_connect(_db(state))) as conn, conn:
        _product(conn, sku)
        conn.execute("UPDATE stock SET quantity = quantity + ? WHERE sku = ?", (quantity, sku))
        new = conn.execute("SELECT quantity FROM stock WHERE sku = ?", (sku,)).fetchone()[0]
    return json.dumps({"sku": sku, "quantity": new})


TOOLS: list[BaseTool] = [list_products, search_products, get_product, get_stock, place_order, get_order,
                         cancel_order, restock]
for _t in TOOLS:
    # Unknown SKUs, refused orders and the like come back to the agent as error ToolMessages instead of crashing.
    _t.handle_tool_error = True

SYSTEM_PROMPT = (
    "You are an inventory assistant for a shop. Use the tools to look up products, stock and orders and to place, "
    "cancel or restock; never guess a number. Products are identified by their SKU number. Call one or more tools, "
    "read their results, and call more tools if needed. When you have the result, reply with a short final message "
    "that ends with 'Answer: <number>'."
)

# ----------------------------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class _Template:
    """A question kind: how to draw it from the database, its answer from SQL, and the tool calls that solve it.

    ``plan(values, results)`` returns the next ``(tool, args)`` given the parsed JSON results so far, or
    ``("answer", number)`` when done.
    """

    kind: str
    text: str
    tools: tuple[str, ...]
    draw: Callable[[random.Random, sqlite3.Connection], dict[str, Any]]
    truth: Callable[[sqlite3.Connection, dict[str, Any]], float]
    plan: Callable[[dict[str, Any], list[Any]], tuple[str, Any]]

    @property
    def pattern(self) -> re.Pattern[str]:
        regex = re.escape(self.text)
        for name in re.findall(r"\{(\w+)\}", self.text):
            group = r"\d+" if name in ("sku", "order_id", "quantity") else r"[A-Za-z][A-Za-z -]*?"
            regex = regex.replace(re.escape("{" + name + "}"), f"(?P<{name}>{group})", 1)
        return re.compile(regex)


def _one(conn: sqlite3.Connection, sql: str, *args: Any) -> Any:
    return conn.execute(sql, args).fetchone()[0]


def _any_product(rng: random.Random, conn: sqlite3.Connection) -> dict[str, Any]:
    sku, name = rng.choice(conn.execute("SELECT sku, name FROM products ORDER BY sku").fetchall())
    return {"sku": sku, "name": name}


def _in_stock(rng: random.Random, conn: sqlite3.Connection) -> dict[str, Any]:
    sku, name, qty = rng.choice(conn.execute("SELECT sku, name, quantity FROM products JOIN stock USING (sku) "
                                             "WHERE quantity > 0 ORDER BY sku").fetchall())
    return {"sku": sku, "name": name, "quantity": rng.randint(1, min(qty, 10)), "customer": rng.choice(CUSTOMERS)}


def _any_order(rng: random.Random, conn: sqlite3.Connection) -> dict[str, Any]:
    return {"order_id": rng.choice([r[0] for r in conn.execute("SELECT id FROM orders ORDER BY id")])}


def _placed_order(rng: random.Random, conn: sqlite3.Connection) -> dict[str, Any]:
    return {"order_id": rng.choice([r[0] for r in conn.execute("SELECT id FROM orders WHERE status = 'placed' "
                                                               "ORDER BY id")])}


def _find(values: dict[str, Any], listing: list[dict[str, Any]]) -> int:
    return next(p["sku"] for p in listing if p["name"].lower() == values["name"].lower())


def _steps(*steps: Callable[[dict[str, Any], list[Any]], tuple[str, Any]]):
    """A plan that takes ``steps[k]`` after ``k`` tool results."""
    return lambda values, results: steps[len(results)](values, results)


_STOCK = "SELECT quantity FROM stock WHERE sku = ?"
_PRICE = "SELECT price FROM products WHERE sku = ?"

TEMPLATES = (
    _Template("stock", "How many units of SKU {sku} are in stock?", ("get_stock",), _any_product,
              lambda c, v: _one(c, _STOCK, v["sku"]),
              _steps(lambda v, r: ("get_stock", {"sku": v["sku"]}),
                     lambda v, r: ("answer", r[0]["quantity"]))),
    _Template("price", "What is the unit price in dollars of SKU {sku}?", ("get_product",), _any_product,
              lambda c, v: _one(c, _PRICE, v["sku"]),
              _steps(lambda v, r: ("get_product", {"sku": v["sku"]}),
                     lambda v, r: ("answer", r[0]["price"]))),
    _Template("order_quantity", "How many units were ordered in order {order_id}?", ("get_order",), _any_order,
              lambda c, v: _one(c, "SELECT quantity FROM orders WHERE id = ?", v["order_id"]),
              _steps(lambda v, r: ("get_order", {"order_id": v["order_id"]}),
                     lambda v, r: ("answer", r[0]["quantity"]))),
    _Template("order_total", "What is the total price in dollars of order {order_id}?", ("get_order",), _any_order,
              lambda c, v: _money(_one(c, "SELECT quantity * unit_price FROM orders WHERE id = ?", v["order_id"])),
              _steps(lambda v, r: ("get_order", {"order_id": v["order_id"]}),
                     lambda v, r: ("answer", r[0]["total"]))),
    _Template("category_count", "How many products are in the {category} category?", ("list_products",),
              lambda rng, c: {"category": rng.choice(CATEGORIES)},
              lambda c, v: _one(c, "SELECT COUNT(*) FROM products WHERE category = ?", v["category"]),
              _steps(lambda v, r: ("list_products", {"category": v["category"]}),
                     lambda v, r: ("answer", len(r[0])))),
    _Template("cheapest", "Which product in the {category} category has the lowest unit price? Give its SKU.",
              ("list_products",), lambda rng, c: {"category": rng.choice(CATEGORIES)},
              lambda c, v: _one(c, "SELECT sku FROM products WHERE category = ? ORDER BY price, sku LIMIT 1",
                                v["category"]),
              _steps(lambda v, r: ("list_products", {"category": v["category"]}),
                     lambda v, r: ("answer", min(r[0], key=lambda p: (p["price"], p["sku"]))["sku"]))),
    _Template("restock", "We received {quantity} more units of SKU {sku}. Restock them and tell me the new stock "
              "level.", ("restock",),
              lambda rng, c: {**_any_product(rng, c), "quantity": rng.randint(5, 50)},
              lambda c, v: _one(c, _STOCK, v["sku"]) + v["quantity"],
              _steps(lambda v, r: ("restock", {"sku": v["sku"], "quantity": v["quantity"]}),
                     lambda v, r: ("answer", r[0]["quantity"]))),
    _Template("find_stock", "How many units of the {name} do we have in stock?", ("search_products", "get_stock"),
              _any_product, lambda c, v: _one(c, _STOCK, v["sku"]),
              _steps(lambda v, r: ("search_products", {"query": v["name"]}),
                     lambda v, r: ("get_stock", {"sku": _find(v, r[0])}),
                     lambda v, r: ("answer", r[1]["quantity"]))),
    _Template("find_and_order", "Order {quantity} units of the {name} for {customer}. What is the order total in "
              "dollars?", ("search_products", "place_order"), _in_stock,
              lambda c, v: _money(v["quantity"] * _one(c, _PRICE, v["sku"])),
              _steps(lambda v, r: ("search_products", {"query": v["name"]}),
                     lambda v, r: ("place_order", {"sku": _find(v, r[0]), "quantity": v["quantity"],
                                                   "customer": v["customer"]}),
                     lambda v, r: ("answer", r[1]["total"]))),
    _Template("order_then_stock", "Order {quantity} units of SKU {sku} for {customer}, then tell me how many units "
              "of it are left in stock.", ("place_order", "get_stock"), _in_stock,
              lambda c, v: _one(c, _STOCK, v["sku"]) - v["quantity"],
              _steps(lambda v, r: ("place_order", {"sku": v["sku"], "quantity": v["quantity"],
                                                   "customer": v["customer"]}),
                     lambda v, r: ("get_stock", {"sku": v["sku"]}),
                     lambda v, r: ("answer", r[1]["quantity"]))),
    _Template("cancel_then_stock", "Cancel order {order_id}. How many units of its product are in stock after the "
              "cancellation?", ("cancel_order", "get_stock"), _placed_order,
              lambda c, v: _one(c, "SELECT s.quantity + o.quantity FROM orders o JOIN stock s USING (sku) "
                                   "WHERE o.id = ?", v["order_id"]),
              _steps(lambda v, r: ("cancel_order", {"order_id": v["order_id"]}),
                     lambda v, r: ("get_stock", {"sku": r[0]["sku"]}),
                     lambda v, r: ("answer", r[1]["quantity"]))),
)


WRITE_TEMPLATES = (
    _Template("place_order", "Place an order of {quantity} units of SKU {sku} for {customer} and tell me the new "
              "order's id.", ("place_order",), _in_stock,
              lambda c, v: {"sku": v["sku"], "quantity": v["quantity"], "customer": v["customer"],
                            "stock": _one(c, _STOCK, v["sku"]) - v["quantity"],
                            "order_id": _one(c, "SELECT MAX(id) FROM orders") + 1},
              _steps(lambda v, r: ("place_order", {"sku": v["sku"], "quantity": v["quantity"],
                                                   "customer": v["customer"]}),
                     lambda v, r: ("answer", r[0]["order_id"]))),
)
"""Tasks that change the database; their ground truth is the order the run must leave behind."""


def order_placed(answer: str, ground_truth: dict[str, Any], state: str) -> bool:
    """The verifier of the write tasks: the run's database (``state``, its path) holds exactly one new order, of
    the requested product, quantity and customer, stock went down by that quantity, and the answer names the
    order's id (its last number)."""
    with closing(_connect(state)) as conn:
        new = conn.execute("SELECT * FROM orders WHERE id >= ?", (ground_truth["order_id"],)).fetchall()
        stock = _one(conn, _STOCK, ground_truth["sku"])
    if len(new) != 1 or stock != ground_truth["stock"]:
        return False
    order = new[0]
    return ((order["sku"], order["quantity"], order["customer"], order["status"]) ==
            (ground_truth["sku"], ground_truth["quantity"], ground_truth["customer"], "placed")
            and last_number(answer) == order["id"])


def make_write_tasks(n: int, seed: int = 0, db_seed: int = 0) -> list[Task]:
    """``n`` distinct write tasks (place an order, answer its id) on the database of ``db_seed``, each judged by
    `order_placed` on the run's own database: run them with `environment`. Task ids are
    ``f"inventory-write-{seed}-{i}"``."""
    return _draw_tasks(n, WRITE_TEMPLATES, f"inventory-write-{seed}", db_seed, order_placed, f"inventory-write-{seed}")


def make_tasks(n: int, seed: int = 0, db_seed: int = 0) -> list[Task]:
    """``n`` distinct inventory tasks with numeric ground truth computed from the database `create_db` builds from
    ``db_seed``; the same arguments give the same tasks. Task ids are ``f"inventory-{seed}-{i}"``.

    Kinds alternate between single-step lookups or updates (one tool call) and multi-step tasks (two dependent
    calls); ``metadata`` holds the kind, the tools that solve it and ``db_seed``. Every task assumes a fresh copy
    of the database, which is what `build_agent` gives each run.
    """
    return _draw_tasks(n, TEMPLATES, f"inventory-tasks-{seed}", db_seed, NumericMatch(), f"inventory-{seed}")


def _draw_tasks(n: int, templates: Sequence[_Template], rng_seed: str, db_seed: int, verifier: Any,
                prefix: str) -> list[Task]:
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rng = random.Random(rng_seed)
    templates = list(templates)
    rng.shuffle(templates)
    tasks: list[Task] = []
    seen: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp, \
            closing(sqlite3.connect(create_db(Path(tmp) / "inventory.sqlite", db_seed))) as conn:
        for i in range(n):
            # Kinds with few distinct questions (5 categories) run out first; the others then take their turns.
            for template in templates[i % len(templates):] + templates[:i % len(templates)]:
                drawn = (template.text.format(**(values := template.draw(rng, conn))) for _ in range(200))
                question = next((q for q in drawn if q not in seen), None)
                if question is not None:
                    break
            else:
                raise ValueError(f"cannot draw {n} distinct inventory tasks; ask for fewer")
            seen.add(question)
            tasks.append(Task(id=f"{prefix}-{i}", input=question,
                              ground_truth=template.truth(conn, values), verifier=verifier,
                              metadata={"split": "inventory", "kind": template.kind, "tools": list(template.tools),
                                        "db_seed": db_seed}))
    return tasks


# --------------------------------------------------------------------------------------------------------- teacher


class ScriptedInventoryTeacher(ScriptedTeacher):
    """A deterministic stand-in for a teacher LLM on the inventory tasks: no model behind it.

    It recognises the last user question, and answers with the next tool call of its plan (reading the JSON
    results of the earlier calls, e.g. the SKU a search returned), then with ``"Answer: <number>"``. A question it
    does not recognise, a needed tool that is not bound, or a tool error gets ``"Answer: unknown"``.
    """

    model_name: str = "scripted-inventory-teacher"

    def _respond(self, messages: list[BaseMessage], bound: set[str]) -> AIMessage:
        last_user = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=None)
        if last_user is None:
            return AIMessage(content="Answer: unknown")
        question = messages[last_user].text.strip()
        found = next(((t, m) for t in TEMPLATES + WRITE_TEMPLATES if (m := t.pattern.fullmatch(question))), None)
        if found is None:
            return AIMessage(content="I cannot handle this request with the inventory tools. Answer: unknown")
        template, match = found
        if not set(template.tools) <= bound:
            return AIMessage(content="The tools I need are not available. Answer: unknown")
        results = [m for m in messages[last_user + 1:] if isinstance(m, ToolMessage)]
        if any(m.status == "error" for m in results):
            return AIMessage(content=f"The tool reported an error: {results[-1].text}. Answer: unknown")
        values = {k: int(v) if v.isdigit() else v for k, v in match.groupdict().items()}
        step, payload = template.plan(values, [json.loads(m.text) for m in results])
        if step == "answer":
            return AIMessage(content=f"Answer: {payload}")
        call_id = f"call_{hashlib.sha256(question.encode()).hexdigest()[:8]}_{len(results)}"
        return AIMessage(content="", tool_calls=[{"name": step, "args": payload, "id": call_id, "type": "tool_call"}])


# ----------------------------------------------------------------------------------------------------------- agent


class _RunState(AgentState):
    db_path: NotRequired[str]


class _FreshDatabase(AgentMiddleware):
    """Gives every run its own copy of the seeded database, and deletes it when the run ends."""

    state_schema = _RunState

    def __init__(self, template: Path):
        super().__init__()
        self.template = template
        self.runs_dir = Path(tempfile.mkdtemp(prefix="inventory-runs-"))
        # Runs cut short (timeouts, errors) skip after_agent; their copies go when the agent does.
        weakref.finalize(self, shutil.rmtree, self.runs_dir, True)

    def before_agent(self, state: _RunState, runtime: Any) -> dict[str, Any]:
        copy = self.runs_dir / f"{uuid.uuid4().hex}.sqlite"
        shutil.copyfile(self.template, copy)
        return {"db_path": str(copy)}

    def after_agent(self, state: _RunState, runtime: Any) -> None:
        Path(state["db_path"]).unlink(missing_ok=True)


class _Database(AgentMiddleware):
    """Points every run of the agent at one database file (an environment's own copy)."""

    state_schema = _RunState

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def before_agent(self, state: _RunState, runtime: Any) -> dict[str, Any]:
        return {"db_path": str(self.path)}


def environment(model: BaseChatModel, db_path: str | Path | None = None, db_seed: int = 0) -> EnvironmentFactory:
    """The factory of fresh inventory environments for ``distill(..., environment=...)``: each call copies the
    database ``db_path`` (created from ``db_seed`` when missing, as in `build_agent`) into a folder of its own and
    returns the agent on that copy, with the copy's path as the state the verifier sees (`order_placed`); closing
    the environment deletes the folder."""
    template = _template_db(db_path, db_seed)

    def make() -> Environment:
        folder = Path(tempfile.mkdtemp(prefix="inventory-env-"))
        copy = folder / "inventory.sqlite"
        shutil.copyfile(template, copy)
        agent = create_agent(model, TOOLS, system_prompt=SYSTEM_PROMPT, middleware=[_Database(copy)])
        return Environment(agent=agent, state=str(copy), close=lambda: shutil.rmtree(folder, ignore_errors=True))

    return make


def _template_db(db_path: str | Path | None, db_seed: int) -> Path:
    if db_path is None:
        db_path = Path(tempfile.mkdtemp(prefix="inventory-")) / "inventory.sqlite"
    db_path = Path(db_path)
    if not db_path.exists():
        create_db(db_path, db_seed)
    return db_path


def build_agent(model: BaseChatModel, db_path: str | Path | None = None, db_seed: int = 0):
    """The inventory agent around ``model``, as a compiled `langchain.agents.create_agent` graph.

    ``db_path`` is the database every run starts from (a fresh copy per run, deleted afterwards; the file itself
    is never written). It is created from ``db_seed`` with `create_db` when it does not exist, or in a temporary
    folder when None. Tasks from ``make_tasks(..., db_seed=s)`` need the database of seed ``s``.
    """
    return create_agent(model, TOOLS, system_prompt=SYSTEM_PROMPT,
                        middleware=[_FreshDatabase(_template_db(db_path, db_seed))])
