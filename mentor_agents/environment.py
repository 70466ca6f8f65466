"""Fresh state per run: what a user-supplied factory builds for each run of the agent.

Like TRL's ``environment_factory``, `distill`, `record`, GRPO rollouts and evaluation call the factory once per run
(each recorded task, each rollout, each evaluation run), so concurrent runs never share a database or a folder:

```python
def environment() -> Environment:
    db = fresh_copy_of_my_database()                       # this run's own resources
    return Environment(agent=build_my_graph(llm, db), state=db, close=db.unlink)
```

The run's model is swapped into ``agent`` (teacher, or student); a task verifier that declares a ``state`` parameter
is called as ``verifier(answer, ground_truth, state=environment.state)`` after the run and before ``close``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable


@dataclass
class Environment:
    """One run's agent and the state its tools touch.

    ``agent``: the compiled graph for this run, built on this run's own resources. ``state``: what the task verifier
    sees after the run (a database path, a connection, a folder...). ``close``: releases the resources; called
    once the verdict is taken, also when the run failed. Usable as a context manager.
    """

    agent: Any
    state: Any = None
    close: Callable[[], Any] | None = None

    def __enter__(self) -> Environment:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.close is not None:
            self.close()


EnvironmentFactory = Callable[[], Environment]
"""Builds a fresh `Environment` for one run; called once per run, from several threads at once."""


def map_agent(factory: EnvironmentFactory, change: Callable[[Any], Any]) -> EnvironmentFactory:
    """A factory whose environments run ``change(agent)`` in place of their agent (e.g. with another model swapped
    in); state and close are kept."""

    def make() -> Environment:
        env = factory()
        return replace(env, agent=change(env.agent))

    return make
