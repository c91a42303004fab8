"""Tools a policy calls between its turns (METHODS.md §E): typed functions, grouped in named tool sets,
called in-process or served over HTTP; every fault becomes an observation, never a crash.

* A **tool** is a method of a :class:`ToolSet` marked with :func:`tool`. Its JSON schema (the
  ``{"type": "function", "function": {...}}`` dict chat templates take as ``tools=``) comes from its
  signature and Google-style docstring through ``transformers.utils.get_json_schema`` -- the same
  function HF chat templates use, so a schema here is exactly what a chat model is shown.
* A **tool set** is a :class:`ToolSet` subclass registered by name in
  :data:`warmstart.registry.TOOLSETS`. It is built per call from the episode's JSON ``state`` (the
  chart a question is about, ...), so a server holds no per-episode memory and any number of runs
  can share it.
* A tool returns text, or a :class:`ToolOutput` with text and images; a new image joins the
  conversation under the next id (``img_2``, ``img_3`` ...: :func:`next_image_id`).
* **Executors** run calls and count what happened (:class:`ToolStats`): :class:`LocalTools` in this
  process (tests, debugging) and :class:`warmstart.tools.server.HttpTools` against a tool server. Both
  answer every call with a :class:`ToolResult`: ``ok`` with the output, or ``error`` with a kind from
  :data:`ERROR_KINDS` and a one-line message the policy sees as its observation.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from pydantic import Field

from warmstart.config import Strict

TOOL_ATTR = "__warmstart_tool__"

# every way a call can fail; each is counted under this name (``tool_errors/<kind>``)
ERROR_KINDS = (
    "bad_action",      # the policy's turn is not a valid action (JSON, name + arguments)
    "unknown_tool",    # no tool of that name in the set
    "malformed_args",  # arguments missing, unexpected or of the wrong type for the schema
    "raised",          # the tool raised an exception
    "timeout",         # the call ran past its time limit
    "oversized",       # the output is larger than the limit
    "bad_output",      # the tool returned something that is neither text nor text + images
    "server_down",     # the tool server could not be reached (after a restart, when it is ours)
    "sandbox",         # a sandboxed tool was killed by its CPU, memory or wall-time limit
)


def tool(fn: Callable) -> Callable:
    """Mark a :class:`ToolSet` method as a tool. It needs type hints on every argument and a
    Google-style docstring with an ``Args:`` entry for each (``get_json_schema`` reads them)."""
    setattr(fn, TOOL_ATTR, True)
    return fn


@dataclass
class ToolOutput:
    """What a tool returns when it has images: text plus PIL images (each becomes ``img_<n>``)."""

    text: str = ""
    images: list[Any] = field(default_factory=list)


@dataclass
class ToolResult:
    """The outcome of one call. ``error`` is None on success; otherwise ``error_kind`` is one of
    :data:`ERROR_KINDS` and ``error`` the message the policy is shown."""

    name: str
    text: str = ""
    images: list[Any] = field(default_factory=list)
    error: str | None = None
    error_kind: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def observation(self) -> str:
        """The text the policy reads after the call (the paper's ``OBSERVATION:`` content)."""
        return self.text if self.ok else f"ERROR ({self.error_kind}): {self.error}"


def failure(name: str, kind: str, message: str) -> ToolResult:
    """A failed call, as every executor reports it."""
    assert kind in ERROR_KINDS, kind
    return ToolResult(name=name, error=message, error_kind=kind)


class ToolLimits(Strict):
    """What one call may take (recipe block ``task.tools``, fields shared by every executor)."""

    timeout_s: float = Field(5.0, gt=0, description="wall-time limit of one call; past it the call is an error observation")
    max_output_chars: int = Field(2000, ge=1, description="longer text output is an error observation (not silently cut)")
    max_images: int = Field(2, ge=0, description="images one call may return")
    max_image_pixels: int = Field(1024 * 1024, ge=1, description="pixels (w x h) of one returned image")


class ToolSet:
    """Base of tool sets: a class whose :func:`tool` methods act on one episode's ``state``.

    Subclasses register with ``@TOOLSETS.register("name", ConfigModel)`` on a factory returning the
    *class* configured (see :func:`toolset_class`); instances are cheap and built per call."""

    name: str = "tools"

    def __init__(self, state: dict | None = None, **options):
        self.state = state or {}
        self.options = options

    @classmethod
    def tool_names(cls) -> list[str]:
        return sorted(n for n in dir(cls) if getattr(getattr(cls, n, None), TOOL_ATTR, False))

    @classmethod
    def schemas(cls) -> list[dict]:
        """JSON schemas of every tool, as ``apply_chat_template(tools=...)`` takes them."""
        if cls not in _SCHEMAS:  # parsing docstrings on every call would cost more than most tools
            from transformers.utils import get_json_schema

            probe = cls.__new__(cls)  # a bound method drops ``self`` from the signature; no state needed
            _SCHEMAS[cls] = [get_json_schema(getattr(probe, n)) for n in cls.tool_names()]
        return copy.deepcopy(_SCHEMAS[cls])


_SCHEMAS: dict[type, list[dict]] = {}


def toolset_class(kind: str, options: dict | None = None) -> tuple[type[ToolSet], dict]:
    """The registered tool set ``kind`` and its validated options (its config, less ``kind``)."""
    from warmstart.registry import TOOLSETS

    entry = TOOLSETS.get(kind)
    cfg = entry.config(kind=kind, **(options or {}))
    return entry.factory(cfg), cfg.model_dump(exclude={"kind"})


_JSON_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
               "array": (list,), "object": (dict,)}


def check_arguments(schema: dict, arguments: Any) -> str | None:
    """Why ``arguments`` do not fit a tool's schema (None when they do): not an object, a required
    argument missing, an unknown one, or a value of the wrong JSON type."""
    params = schema["function"].get("parameters", {})
    props, required = params.get("properties", {}), params.get("required", [])
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {type(arguments).__name__}"
    missing = [r for r in required if r not in arguments]
    if missing:
        return f"missing argument(s) {missing}; the tool takes {sorted(props)}"
    extra = [k for k in arguments if k not in props]
    if extra:
        return f"unexpected argument(s) {extra}; the tool takes {sorted(props)}"
    for k, v in arguments.items():
        want = props[k].get("type")
        types = _JSON_TYPES.get(want) if isinstance(want, str) else None
        if types is None:
            continue
        if isinstance(v, bool) and want in ("integer", "number"):  # JSON true is not a number
            return f"argument {k!r} must be {want}, got a boolean"
        if not isinstance(v, types):
            return f"argument {k!r} must be {want}, got {type(v).__name__} {json.dumps(v)[:40]}"
    return None


def check_output(name: str, out: Any, limits: ToolLimits) -> ToolResult:
    """Turn what a tool returned into a result, enforcing the output limits."""
    if isinstance(out, str):
        text, images = out, []
    elif isinstance(out, ToolOutput) and isinstance(out.text, str):
        text, images = out.text, list(out.images)
    else:
        return failure(name, "bad_output", f"the tool returned {type(out).__name__}, not text or text + images")
    if len(text) > limits.max_output_chars:
        return failure(name, "oversized", f"the output has {len(text)} characters, more than the limit of {limits.max_output_chars}")
    if len(images) > limits.max_images:
        return failure(name, "oversized", f"the tool returned {len(images)} images, more than the limit of {limits.max_images}")
    for im in images:
        size = getattr(im, "size", None)
        if not (isinstance(size, tuple) and len(size) == 2):
            return failure(name, "bad_output", f"the tool returned an image of type {type(im).__name__}, not a PIL image")
        if size[0] * size[1] > limits.max_image_pixels:
            return failure(name, "oversized", f"an image of {size[0]}x{size[1]} pixels is over the limit of {limits.max_image_pixels}")
    return ToolResult(name=name, text=text, images=images)


@dataclass
class ToolStats:
    """Counts of an executor's calls (thread-safe): calls, successes, errors by kind, server restarts."""

    calls: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    per_tool: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, res: ToolResult) -> None:
        with self._lock:
            self.calls += 1
            self.per_tool[res.name] = self.per_tool.get(res.name, 0) + 1
            if res.ok:
                self.ok += 1
            else:
                self.errors[res.error_kind] = self.errors.get(res.error_kind, 0) + 1

    def as_metrics(self) -> dict[str, float]:
        out = {"tool_calls": float(self.calls), "tool_success_rate": self.ok / self.calls if self.calls else float("nan"),
               "tool_errors": float(sum(self.errors.values())), "tool_server_restarts": float(self.restarts)}
        out.update({f"tool_errors/{k}": float(v) for k, v in sorted(self.errors.items())})
        return out


@runtime_checkable
class ToolExecutor(Protocol):
    """What a task needs to call tools: ``call`` never raises for a tool's fault, it returns a failed
    :class:`ToolResult`; ``close`` stops whatever the executor started (a server process)."""

    stats: ToolStats

    def schemas(self) -> list[dict]: ...

    def call(self, name: str, arguments: Any, state: dict) -> ToolResult: ...

    def close(self) -> None: ...


def run_with_timeout(fn: Callable[[], Any], timeout_s: float) -> tuple[bool, Any]:
    """Run ``fn`` in a daemon thread; (True, value), (True, exception) or (False, None) on timeout.

    Python cannot kill a thread: a tool that hangs keeps its thread until it returns (it is a daemon,
    so it never holds the process open). Code that may run away belongs in the sandbox
    (:mod:`warmstart.tools.sandbox`), which kills a whole process."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 -- a tool's exception is reported, never raised here
            box["error"] = e

    t = threading.Thread(target=target, daemon=True, name="warmstart-tool")
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        return False, None
    return True, box["error"] if "error" in box else box.get("value")


def call_local(cls: type[ToolSet], options: dict, name: str, arguments: Any, state: dict, limits: ToolLimits) -> ToolResult:
    """One call of tool ``name`` of tool set ``cls`` on ``state``: checked, timed, limited."""
    if name not in cls.tool_names():
        return failure(name, "unknown_tool", f"no tool {name!r}; the tools are {cls.tool_names()}")
    schema = next(s for s in _SCHEMAS.get(cls) or cls.schemas() if s["function"]["name"] == name)
    why = check_arguments(schema, arguments)
    if why:
        return failure(name, "malformed_args", why)
    finished, out = run_with_timeout(lambda: getattr(cls(state, **options), name)(**arguments), limits.timeout_s)
    if not finished:
        return failure(name, "timeout", f"no answer within {limits.timeout_s:g} s")
    if isinstance(out, ToolFault):
        return failure(name, out.kind, str(out))
    if isinstance(out, BaseException):
        return failure(name, "raised", f"{type(out).__name__}: {out}"[:300])
    return check_output(name, out, limits)


class ToolFault(Exception):
    """Raised by a tool to report a fault of a known kind (e.g. the sandbox killed the code)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class LocalTools:
    """Calls a tool set in this process (tests, debugging; no server). Faults still become results."""

    def __init__(self, kind: str, options: dict | None = None, limits: ToolLimits | None = None):
        self.kind = kind
        self.cls, self.options = toolset_class(kind, options)
        self.limits = limits or ToolLimits()
        self.stats = ToolStats()

    def schemas(self) -> list[dict]:
        return self.cls.schemas()

    def call(self, name: str, arguments: Any, state: dict) -> ToolResult:
        res = call_local(self.cls, self.options, name, arguments, state, self.limits)
        self.stats.record(res)
        return res

    def close(self) -> None:
        pass


def next_image_id(images: list) -> str:
    """The id of the next image of an episode that already shows ``images`` (``img_1`` is the prompt's)."""
    return f"img_{len(images) + 1}"
