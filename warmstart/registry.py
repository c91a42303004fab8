"""Named, typed plug-ins: tasks, policies, phases (learners), rewards, search strategies.

Each entry pairs a pydantic config model (validated from the recipe, unknown keys rejected) with a
factory. New methods register pieces here; the engine only looks them up by ``kind``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel


@dataclass
class Entry:
    kind: str
    config: type[BaseModel]
    factory: Callable[..., Any]
    description: str = ""


class Registry:
    """A table ``kind -> (config model, factory)``."""

    def __init__(self, name: str):
        self.name = name
        self._entries: dict[str, Entry] = {}

    def register(self, kind: str, config: type[BaseModel], description: str = ""):
        """Decorator: ``@TASKS.register("chain_arithmetic", ChainConfig)`` on a class or function."""

        def deco(factory):
            self._entries[kind] = Entry(kind, config, factory, description or (factory.__doc__ or "").strip().split("\n")[0])
            return factory

        return deco

    def get(self, kind: str) -> Entry:
        from warmstart.plugins import load_all

        load_all()
        if kind not in self._entries:
            import difflib

            known = sorted(self._entries)
            near = difflib.get_close_matches(kind, known, n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            from warmstart.errors import ConfigError

            raise ConfigError(f"unknown {self.name} kind {kind!r}.{hint} Known kinds: {', '.join(known)}.")
        return self._entries[kind]

    def kinds(self) -> list[str]:
        from warmstart.plugins import load_all

        load_all()
        return sorted(self._entries)

    def entries(self) -> dict[str, Entry]:
        from warmstart.plugins import load_all

        load_all()
        return dict(self._entries)


TASKS = Registry("task")
POLICIES = Registry("policy")
PHASES = Registry("phase")
REWARDS = Registry("reward")
