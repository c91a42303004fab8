"""The run-level artifacts store: what one phase hands a later one, by name.

A reward model trained by one phase and used by a later search, the shared KL reference of SCoRe's
two stages, an offline dataset, a learned model of an environment: each is ``put`` under a name and
``get`` by that name. The store lives in the run directory (``<run>/artifacts/``), is written when
something is put (atomically: a temporary file or folder, then one rename) and is read back lazily,
so ``--resume`` finds every artifact an earlier phase made, and checkpoints need not copy them.

What can be stored, and how it is written:

* an object with ``save(dir)`` and a class method ``load(dir)`` (a reward model, a policy): a folder
  ``artifacts/<name>/``, reopened with that class's ``load``;
* a ``torch.nn.Module`` without them (a frozen reference model): its ``state_dict`` in
  ``artifacts/<name>.pt``; ``get(name, like=module)`` loads it into a module of the same shape;
* a path (a dataset already on disk): recorded, not copied;
* anything else ``torch.save`` can write (tensors, dicts, lists, numbers): ``artifacts/<name>.pt``.

Without a run directory (tests, notebooks) the store keeps everything in memory.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from warmstart.errors import WarmstartError

INDEX_FILE = "index.json"


class Artifacts:
    """Named artifacts of one run (see the module docstring)."""

    def __init__(self, root: str | Path | None = None):
        self._mem: dict[str, Any] = {}
        self._index: dict[str, dict] = {}
        self.root: Path | None = None
        if root is not None:
            self.attach(root)

    # ------------------------------------------------------------------------------------- setup
    def attach(self, root: str | Path) -> None:
        """Use ``root`` (``<run>/artifacts``) as the store; what is already there becomes visible and
        what was put in memory before is written."""
        self.root = Path(root)
        idx = self.root / INDEX_FILE
        if idx.exists():
            try:
                on_disk = json.loads(idx.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise WarmstartError(f"{idx} is damaged ({e}); the artifacts of this run cannot be read. "
                                     "Restore it, or start a new run directory.") from None
            self._index.update(on_disk)
        for name, value in list(self._mem.items()):
            if name not in self._index:
                self._write(name, value)

    # ------------------------------------------------------------------------------------ access
    def names(self) -> list[str]:
        return sorted(set(self._mem) | set(self._index))

    def __contains__(self, name: str) -> bool:
        return name in self._mem or name in self._index

    def path(self, name: str) -> Path | None:
        """Where ``name`` is stored on disk (None when only in memory or unknown)."""
        rec = self._index.get(name)
        if rec is None:
            return None
        return Path(rec["path"]) if rec["format"] == "path" else self.root / rec["file"]

    def put(self, name: str, value: Any) -> None:
        """Store ``value`` under ``name`` (replacing an earlier one), on disk when the run has a directory."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"artifact name {name!r}: use a plain name such as 'prm' or 'shared_reference'")
        self._mem[name] = value
        if self.root is not None:
            self._write(name, value)

    def get(self, name: str, default: Any = None, like: torch.nn.Module | None = None) -> Any:
        """The artifact ``name`` (``default`` when there is none). A stored module state is loaded into
        ``like`` (a module of the same architecture), which is returned."""
        if name in self._mem:
            return self._mem[name]
        rec = self._index.get(name)
        if rec is None:
            return default
        value = self._read(name, rec, like)
        self._mem[name] = value
        return value

    # ---------------------------------------------------------------------------------- disk I/O
    def _write(self, name: str, value: Any) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if isinstance(value, (str, Path)):
            rec = {"format": "path", "path": str(Path(value).resolve())}
        elif hasattr(value, "save") and hasattr(type(value), "load"):
            tmp = self.root / f".tmp-{name}-{os.getpid()}"
            if tmp.exists():
                shutil.rmtree(tmp)
            value.save(tmp)
            final = self.root / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            cls = type(value)
            rec = {"format": "object", "file": name, "loader": f"{cls.__module__}:{cls.__qualname__}"}
        else:
            state = value.state_dict() if isinstance(value, torch.nn.Module) else value
            tmp = self.root / f".tmp-{name}.pt"
            torch.save(state, tmp)
            os.replace(tmp, self.root / f"{name}.pt")
            rec = {"format": "module_state" if isinstance(value, torch.nn.Module) else "torch", "file": f"{name}.pt"}
        self._index[name] = rec
        tmp = self.root / f".{INDEX_FILE}.tmp"
        tmp.write_text(json.dumps(self._index, indent=2))
        os.replace(tmp, self.root / INDEX_FILE)

    def _read(self, name: str, rec: dict, like: torch.nn.Module | None) -> Any:
        fmt = rec["format"]
        if fmt == "path":
            return Path(rec["path"])
        where = self.root / rec["file"]
        if not where.exists():
            raise WarmstartError(f"artifact {name!r} is listed in {self.root / INDEX_FILE} but {where} is missing; "
                                 "the run directory was changed by hand. Restore it or rerun the phase that made it.")
        if fmt == "object":
            mod, _, qual = rec["loader"].partition(":")
            obj: Any = importlib.import_module(mod)
            for part in qual.split("."):
                obj = getattr(obj, part)
            return obj.load(where)
        state = torch.load(where, weights_only=False)
        if fmt == "module_state":
            if like is None:
                raise WarmstartError(f"artifact {name!r} is a module's weights; get it with like=<a module of that shape>.")
            like.load_state_dict(state)
            return like
        return state
