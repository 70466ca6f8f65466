"""Teacher traces: the typed records one agent run leaves behind, and an append-only JSONL store for them.

Messages are kept in the OpenAI chat format (``{"role", "content", "tool_calls", "tool_call_id"}``) with tool-call
arguments as dicts, so that a trace can be fed to any chat template or OpenAI-compatible endpoint unchanged.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Iterator, Literal, TypeVar

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mentor_agents.errors import InvalidInputError
from mentor_agents.files import write_text_atomic
from mentor_agents.messages import ToolCall
from mentor_agents.tasks import ExactMatch, NumericMatch, Verdict

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Usage(Record):
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
        )


class ModelStep(Record):
    """One model call: the exact messages it saw, and what it answered."""

    kind: Literal["model"] = "model"
    input_messages: list[dict[str, Any]]
    output: dict[str, Any]
    tool_calls: list[ToolCall] = []
    latency_s: float = 0.0
    usage: Usage = Usage()


class ToolStep(Record):
    """One tool execution."""

    kind: Literal["tool"] = "tool"
    call_id: str
    name: str
    args: dict[str, Any]
    result: str
    error: bool = False
    latency_s: float = 0.0


Step = Annotated[ModelStep | ToolStep, Field(discriminator="kind")]

class Trace(Record):
    """One teacher run on one task."""

    schema_version: int = SCHEMA_VERSION
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    task_id: str
    sample: int = 0
    """Index of this run among several runs of the same task (self-consistency); 0 for a single run."""
    task_input: str
    ground_truth: Any = None
    verifier: Annotated[ExactMatch | NumericMatch, Field(discriminator="kind")] | Literal["custom"] | None = None
    """The task's verifier when it is a built-in one; ``"custom"`` for a callable, which cannot be stored."""
    system_prompt: str | None = None
    tools: list[dict[str, Any]] = []
    """Tool schemas bound to the model, in the OpenAI format."""
    steps: list[Step] = []
    final_answer: str | None = None
    teacher_model: str | None = None
    teacher_endpoint: str | None = None
    verdict: Verdict = "unknown"
    started_at: float = Field(default_factory=time.time)
    duration_s: float = 0.0
    usage: Usage = Usage()
    error: str | None = None
    stopped: Literal["turn_limit", "loop", "timeout"] | None = None
    """Why a bounded run was ended early: the turn cap, a repeated identical tool call, or its time limit."""
    metadata: dict[str, Any] = {}

    @property
    def key(self) -> tuple[str, int]:
        return (self.task_id, self.sample)

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [call for step in self.steps if isinstance(step, ModelStep) for call in step.tool_calls]

    @property
    def tool_steps(self) -> list[ToolStep]:
        return [step for step in self.steps if isinstance(step, ToolStep)]


class RecordFileError(InvalidInputError):
    """A line of a JSONL record file (traces, reward references) that is not a valid record; names the file,
    line and field."""

    def __init__(self, path: Path, line: int, field: str, message: str):
        self.path, self.line, self.field = path, line, field
        super().__init__(f"{path}:{line}: field '{field}': {message}")


R = TypeVar("R", bound=BaseModel)


def parse_line(text: str, model: type[R], path: Path, line: int, context: dict[str, Any] | None = None) -> R:
    """One JSONL line as a validated ``model``, or a `RecordFileError` naming the file, line and field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordFileError(path, line, "<json>", f"not valid JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:
        raise RecordFileError(path, line, "<json>", f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise RecordFileError(path, line, "<root>", f"expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise RecordFileError(
            path, line, "schema_version",
            f"written with schema version {version!r}; this mentor_agents reads version {SCHEMA_VERSION}",
        )
    try:
        return model.model_validate(data, context=context)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(part) for part in err["loc"]) or "<root>"
        raise RecordFileError(path, line, field, err["msg"]) from None


@dataclass
class LineError:
    line: int
    field: str
    message: str


class TraceStore:
    """An append-only JSONL file of traces.

    Each `append` writes one whole line and fsyncs it, so a killed process loses at most the trace it was writing.
    A partial last line left by such a kill is moved aside to ``<path>.partial`` by the next append, so new lines
    never run into it. Appends hold a file lock (``<path>.lock``), so several processes and threads can share one
    store: another writer's unfinished line is never taken for a partial tail.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.skipped: list[LineError] = []
        """The invalid lines skipped by the last `read(skip_invalid=True)`."""

    def __repr__(self) -> str:
        return f"TraceStore({str(self.path)!r})"

    def append(self, trace: Trace) -> None:
        data = (trace.model_dump_json() + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(self.path.with_name(self.path.name + ".lock")):
                self._repair_tail()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    written = os.write(fd, data)
                    if written != len(data):
                        raise OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)")
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as e:
            raise OSError(e.errno, f"{self.path}: could not append trace of task {trace.task_id!r}: {e.strerror}") from e

    def _repair_tail(self) -> None:
        """Under the append lock: end a last line that lacks its newline. A whole record (written by another tool)
        gets the newline; anything else is a kill's partial line and moves to ``<path>.partial``."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            cut = last_line_start(f)
            f.seek(cut)
            tail = f.read()
            try:
                parse_line(tail.decode("utf-8"), Trace, self.path, 0)
            except (UnicodeDecodeError, RecordFileError):
                with open(self.path.with_name(self.path.name + ".partial"), "ab") as aside:
                    aside.write(tail + b"\n")
                f.truncate(cut)
                logger.warning("%s: moved a partial last line (%d bytes) to %s.partial", self.path, len(tail),
                               self.path.name)
            else:
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())

    def __iter__(self) -> Iterator[Trace]:
        return iter(self.read())

    def read(self, skip_invalid: bool = False) -> list[Trace]:
        """All traces in file order.

        Raises `RecordFileError` on the first invalid line, or, with ``skip_invalid=True``, skips invalid lines,
        logs how many, and keeps them in `skipped`; a line of another schema version raises in both cases.
        """
        traces, self.skipped = read_jsonl(self.path, Trace, skip_invalid)
        return traces

    def runs(self) -> dict[tuple[str, int], Trace]:
        """One trace per run, by (task id, sample), in the order the runs were first stored. A later trace of a run
        replaces a failed one, never a completed one; invalid lines are skipped."""
        runs: dict[tuple[str, int], Trace] = {}
        for trace in self.read(skip_invalid=True):
            if trace.key not in runs or (runs[trace.key].error is not None and trace.error is None):
                runs[trace.key] = trace
        return runs

    def recorded_keys(self) -> set[tuple[str, int]]:
        """(task id, sample) of every trace already stored, failed ones included; invalid lines are ignored."""
        return set(self.runs())


def last_line_start(f: BinaryIO, block: int = 1 << 20) -> int:
    """The offset just after the last newline of the open file ``f`` (0 when it has none), read from the end."""
    end = f.seek(0, os.SEEK_END)
    while end > 0:
        start = max(0, end - block)
        f.seek(start)
        found = f.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def read_jsonl(path: Path, model: type[R], skip_invalid: bool = False, context: dict[str, Any] | None = None,
               ) -> tuple[list[R], list[LineError]]:
    """Validated records from a JSONL file, and the invalid lines skipped (only with ``skip_invalid=True``);
    ``context`` is pydantic's validation context."""
    records: list[R] = []
    skipped: list[LineError] = []
    if not path.exists():
        return records, skipped
    with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    error = RecordFileError(path, number, "<encoding>", f"not UTF-8 ({e.reason})")
                else:
                    if not text.strip():
                        continue
                    try:
                        records.append(parse_line(text, model, path, number, context))
                        continue
                    except RecordFileError as e:
                        error = e
                # A record of another schema version is not a damaged line: skipping it would silently drop data.
                if not skip_invalid or error.field == "schema_version":
                    raise error
                skipped.append(LineError(error.line, error.field, str(error)))
    if skipped:
        logger.warning("%s: skipped %d invalid line(s); first: %s", path, len(skipped), skipped[0].message)
    return records, skipped


def write_jsonl_atomic(path: Path, records: list[BaseModel]) -> None:
    """Replace ``path`` with ``records``, one per line, through a temporary file and a rename."""
    write_text_atomic(path, "".join(record.model_dump_json() + "\n" for record in records))
