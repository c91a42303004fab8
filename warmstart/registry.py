"""One plug-in mechanism for every kind: tasks, policies, phases, rewards, search strategies, scorers,
tool sets.

Each entry pairs a pydantic config model (validated from the recipe, unknown keys rejected) with a
factory, and may declare what it needs from the run (``requires``: slot name -> Protocol from
:mod:`warmstart.contracts`, checked once when a recipe is built) and how to reload a saved object
(``load``: used by :func:`warmstart.policies.load_policy`).

Discovery: the first lookup imports every module of the ``warmstart`` package (walking it with
:mod:`pkgutil`), so a new module that registers itself is found without editing any list. Modules
whose optional third-party dependency is missing are skipped and remembered: asking for a kind they
would have registered says which package to install. User modules register the same way and are
imported through a recipe's ``imports:``.

(The walk imports modules of every layer at run time; that is lookup, not a dependency: no module
here imports a layer above it, which ``tests/test_layers.py`` checks.)
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel

from warmstart.errors import ConfigError


@dataclass
class Entry:
    """One registered plug-in."""

    kind: str
    config: type[BaseModel]
    factory: Callable[..., Any]
    description: str = ""
    requires: dict[str, Any] = field(default_factory=dict)  # slot ("task", "policy", ...) -> Protocol
    load: Callable[..., Any] | None = None  # reload a saved object from a directory


class Registry:
    """A table ``kind -> Entry`` for one kind of plug-in."""

    def __init__(self, name: str):
        self.name = name
        self._entries: dict[str, Entry] = {}

    def register(self, kind: str, config: type[BaseModel], description: str = "", *,
                 requires: dict[str, Any] | None = None, load: Callable[..., Any] | None = None):
        """Decorator: ``@TASKS.register("chain_arithmetic", ChainConfig)`` on a class or function.

        ``requires={"task": MultiTurnTask}`` makes a recipe that pairs this plug-in with a task that
        lacks the protocol a clear error before anything runs."""

        def deco(factory):
            doc = description or (factory.__doc__ or "").strip().split("\n")[0]
            self._entries[kind] = Entry(kind, config, factory, doc, dict(requires or {}), load)
            return factory

        return deco

    def get(self, kind: str) -> Entry:
        if kind not in self._entries:  # registered already (its module imported): no need to walk the package
            discover()
        if kind not in self._entries:
            known = sorted(self._entries)
            near = difflib.get_close_matches(kind, known, n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            skipped = "".join(f" Module {m} was skipped because the package {pkg!r} is not installed (pip install {pkg})."
                              for m, pkg in SKIPPED_MODULES.items())
            raise ConfigError(f"unknown {self.name} kind {kind!r}.{hint} Known kinds: {', '.join(known)}.{skipped}")
        return self._entries[kind]

    def kinds(self) -> list[str]:
        discover()
        return sorted(self._entries)

    def entries(self) -> dict[str, Entry]:
        discover()
        return dict(self._entries)

    def __contains__(self, kind: str) -> bool:
        discover()
        return kind in self._entries


TASKS = Registry("task")
POLICIES = Registry("policy")
PHASES = Registry("phase")
REWARDS = Registry("reward")
SEARCH = Registry("search strategy")
SCORERS = Registry("scorer")
TOOLSETS = Registry("tool set")  # warmstart.tools: named sets of typed tools, served in-process or over HTTP

_discovered = False
SKIPPED_MODULES: dict[str, str] = {}  # module -> missing third-party package


def discover() -> None:
    """Import every module of the package once so that their ``register`` decorators run."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import warmstart

    for info in pkgutil.walk_packages(warmstart.__path__, prefix="warmstart."):
        name = info.name
        if name.rsplit(".", 1)[-1].startswith("_") and not info.ispkg:
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            top = (e.name or "").split(".")[0]
            if not top or top == "warmstart":
                raise
            # an optional dependency of this module is missing: its kinds are unavailable, nothing else is
            SKIPPED_MODULES[name] = top
