"""Recipes: YAML files validated into typed models.

A recipe names a task, a policy, reward terms and a list of phases (init and learning steps), each
a plug-in chosen by ``kind`` and validated by that plug-in's own pydantic model. Unknown keys,
wrong types and missing files stop with one paragraph naming the file, the key, its line and, for
near misses, the key that was probably meant.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from warmstart.config import EvalConfig, PhaseConfig, PluginConfig, RewardConfig, Strict  # noqa: F401 (re-exported for user modules)
from warmstart.errors import ConfigError
from warmstart.registry import PHASES, POLICIES, REWARDS, TASKS, Registry


class CheckpointConfig(Strict):
    every: int = Field(50, ge=0, description="save a checkpoint every N global steps (0: only at phase ends)")
    keep: int = Field(2, ge=1, description="how many step checkpoints to keep (final/ is always kept)")


class LogConfig(Strict):
    tensorboard: bool = Field(False, description="also write TensorBoard event files under tb/")
    every: int = Field(1, ge=1, description="print a progress line every N steps")
    mlflow: bool = Field(False, description="also track the run in MLflow: the resolved recipe as parameters, every "
                         "metric, summary.json and curves.png as artifacts (pip install 'warmstart[tracking]')")
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (a server http://host:5000, sqlite:///f.db ...); "
                                   "default: a SQLite store in the run directory's mlruns/ (artifacts beside it)")
    mlflow_experiment: str | None = Field(None, description="MLflow experiment name; default: the recipe's name")
    wandb: Literal[False, "offline", "online"] = Field(False, description="also track the run in Weights & Biases: "
                                                       "'offline' (files under <run>/wandb, `wandb sync` later) or 'online'")
    wandb_project: str | None = Field(None, description="W&B project; default: the recipe's name")


class ScaleConfig(Strict):
    """Where sampling runs. The default samples in this process (no server). Episodes depend on the
    seed and ``shards`` only, so a Ray run and an in-process run with the same shards are identical."""

    backend: Literal["inprocess", "ray"] = Field("inprocess", description="'ray': rollout and search workers are Ray actors")
    workers: int = Field(1, ge=1, description="Ray actors, each holding a copy of the policy (backend: ray)")
    shards: int | None = Field(None, ge=1, description="pieces each step's problems are split into, each seeded on its "
                               "own; default: workers (ray) or 1 (inprocess). Same seed + shards -> same episodes")
    address: str | None = Field(None, description="an existing Ray cluster: 'auto', 'HOST:6379' or 'ray://HOST:10001'; "
                                "default: start a local Ray instance with workers x threads CPUs")
    threads: int = Field(1, ge=1, description="torch threads (and CPUs reserved) per worker")

    @model_validator(mode="after")
    def _workers_need_ray(self):
        if self.backend == "inprocess" and (self.workers > 1 or self.address is not None):
            raise ValueError(f"workers: {self.workers} / address: {self.address!r} need backend: ray (in-process "
                             f"sampling has no workers); to reproduce a {self.workers}-worker Ray run in this process, "
                             f"set shards: {self.workers} instead")
        return self


class GuardConfig(Strict):
    max_nonfinite_steps: int = Field(3, ge=1, description="stop the run after this many steps in a row whose loss or "
                                     "gradient was non-finite (each such update is skipped and counted)")
    callback_timeout_s: float = Field(60.0, ge=0, description="time limit per call of a reward term (seconds; 0: none); "
                                      "a call over it is reported like a raise and scores None")


class Recipe(Strict):
    """A whole experiment. ``task``, ``policy``, ``rewards`` and ``phases`` hold validated plug-in
    configs (their own models), the rest are plain settings."""

    name: str = Field(description="short name of the experiment")
    imports: list[str] = Field(
        default_factory=list,
        description="Python modules to import before validation (your own tasks, rewards, phases that "
        "register themselves); looked up beside the recipe and in the working directory",
    )
    description: str = Field("", description="one line shown by `warmstart recipes`")
    seed: int = Field(0, description="global seed; same seed -> same numbers on CPU, resumed or not")
    task: Any = Field(description="task block: {kind: ..., ...}")
    eval_task: Any = Field(None, description="optional held-out task block; default: task with split=test")
    policy: Any = Field(description="policy block: {kind: ..., ...}")
    rewards: list[Any] = Field(default_factory=list, description="reward terms: [{kind, weight, ...}]")
    phases: list[Any] = Field(min_length=1, description="phases run in order: [{kind: sft, ...}, {kind: grpo, ...}]")
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    smoke: dict[str, Any] = Field(default_factory=dict, description="overrides applied by --smoke")

    def phase_index(self, label: str) -> int:
        for i, p in enumerate(self.phases):
            if p.label == label or p.kind == label:
                return i
        raise KeyError(label)


# ----------------------------------------------------------------------------------------- loading


def _line_map(text: str) -> dict[tuple, int]:
    """Map each key path in a YAML document to its 1-based line number (for error messages)."""
    lines: dict[tuple, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = path + (k.value,)
                lines[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    return lines


def parse_value(text: str) -> Any:
    """Parse an override value as a YAML scalar (``3``, ``1e-3``, ``true``, ``[1,2]``, ``foo``)."""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(v, str):
        try:  # YAML 1.1 reads `1e-4` as a string; a number is what anyone means
            return float(v) if any(c in v for c in ".eE") else int(v)
        except ValueError:
            pass
    return v


def apply_override(raw: dict, dotted: str, value: Any, source: str = "--set") -> None:
    """Set ``a.b.c`` in a raw recipe dict. A list of phases may be indexed by position or by the
    phase's name/kind (``phases.grpo.lr``)."""
    parts = dotted.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = None
            if part.lstrip("-").isdigit():
                idx = int(part)
            else:
                for j, item in enumerate(node):
                    if isinstance(item, dict) and part in (item.get("name"), item.get("kind")):
                        idx = j
                        break
            if idx is None or not -len(node) <= idx < len(node):
                names = [str(it.get("name") or it.get("kind")) for it in node if isinstance(it, dict)]
                raise ConfigError(
                    f"{source} {dotted}={value!r}: no list entry {part!r} under "
                    f"'{'.'.join(parts[:i]) or '<root>'}'. Entries: {', '.join(names) or 'none'} "
                    f"(or an index 0..{len(node) - 1})."
                )
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if part not in node or node[part] is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(
                f"{source} {dotted}={value!r}: '{'.'.join(parts[:i])}' is a value, not a section."
            )


def _fmt_loc(loc: tuple) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (("." if out else "") + str(p))
    return out


def _describe(err: dict, model: type[BaseModel] | None, loc: tuple, lines: dict, source: str) -> str:
    key = _fmt_loc(loc)
    where = f" (line {lines[loc]})" if loc in lines else ""
    if not where:
        # an override or a default: point at the nearest enclosing key that has a line
        for n in range(len(loc) - 1, 0, -1):
            if loc[:n] in lines:
                where = f" (in the block at line {lines[loc[:n]]})"
                break
    typ = err.get("type", "")
    if typ == "extra_forbidden":
        valid = sorted(model.model_fields) if model is not None else []
        near = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        return f"{key}{where}: unknown key.{hint} Valid keys here: {', '.join(valid)}."
    if typ == "missing":
        return f"{key}{where}: required key is missing."
    inp = err.get("input")
    shown = "" if isinstance(inp, (dict, list)) else f" (got {inp!r})"
    return f"{key}{where}: {err.get('msg', 'invalid value')}{shown}."


def _model_at(model: type[BaseModel], rel: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of ``rel`` (for near-miss suggestions)."""
    cur: Any = model
    for part in rel[:-1]:
        if isinstance(part, int):
            continue
        f = getattr(cur, "model_fields", {}).get(part)
        if f is None:
            return None
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            cur = ann
        else:
            return None
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _validate_plugin(reg: Registry, raw: Any, loc: tuple, problems: list, lines: dict, source: str):
    if not isinstance(raw, dict):
        problems.append(f"{_fmt_loc(loc)}: expected a mapping with a 'kind' key, got {raw!r}.")
        return None
    kind = raw.get("kind")
    if kind is None:
        problems.append(
            f"{_fmt_loc(loc)}{' (line %d)' % lines[loc] if loc in lines else ''}: missing 'kind'. "
            f"Known {reg.name} kinds: {', '.join(reg.kinds())}."
        )
        return None
    try:
        entry = reg.get(kind)
    except ConfigError as e:
        problems.append(f"{_fmt_loc(loc + ('kind',))}: {e}")
        return None
    try:
        return entry.config.model_validate(raw)
    except ValidationError as ve:
        for err in ve.errors():
            rel = tuple(err["loc"])
            problems.append(_describe(err, _model_at(entry.config, rel), loc + rel, lines, source))
        return None


def validate_recipe(raw: Any, source: str = "<recipe>", text: str | None = None) -> Recipe:
    """Validate a raw recipe dict into a :class:`Recipe`; raise :class:`ConfigError` listing every
    problem with its key and line."""
    lines = _line_map(text) if text else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe must be a YAML mapping (key: value lines), got {type(raw).__name__}.")
    problems: list[str] = []
    recipe = None
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as ve:
        for err in ve.errors():
            loc = tuple(err["loc"])
            problems.append(_describe(err, _model_at(Recipe, loc), loc, lines, source))
    if recipe is not None:
        recipe.task = _validate_plugin(TASKS, raw["task"], ("task",), problems, lines, source)
        if raw.get("eval_task") is not None:
            recipe.eval_task = _validate_plugin(TASKS, raw["eval_task"], ("eval_task",), problems, lines, source)
        recipe.policy = _validate_plugin(POLICIES, raw["policy"], ("policy",), problems, lines, source)
        recipe.rewards = [
            _validate_plugin(REWARDS, r, ("rewards", i), problems, lines, source) for i, r in enumerate(raw.get("rewards") or [])
        ]
        recipe.phases = [
            _validate_plugin(PHASES, p, ("phases", i), problems, lines, source) for i, p in enumerate(raw["phases"])
        ]
        if not problems:
            labels = [p.label for p in recipe.phases]
            dup = {x for x in labels if labels.count(x) > 1}
            if dup:
                problems.append(f"phases: names must be unique, {sorted(dup)} repeat; give each a `name:`.")
    if problems:
        body = "\n  - ".join(problems)
        raise ConfigError(f"{source}: the recipe is not valid:\n  - {body}\nNothing was run or written.")
    return recipe


def read_text_file(path: Path, what: str, max_bytes: int = 16 << 20) -> str:
    """A small text file (recipe, override) as UTF-8; a clear error for a directory, a huge or
    binary file, or another encoding, naming the file and line."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give the YAML file inside it.")
    size = path.stat().st_size
    if size > max_bytes:
        raise ConfigError(f"{what} {path} is {size} bytes; a {what} is a small YAML file (at most {max_bytes} bytes).")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: the {what} is not UTF-8 text (byte {data[e.start]:#x} at offset {e.start}). "
                          "Save it as UTF-8.") from None


def resolve_recipe_path(path: str | Path) -> Path:
    """A recipe path as given, or a bare name looked up in the shipped ``recipes/`` folder."""
    p = Path(path)
    if p.exists():
        return p
    for base in (Path.cwd() / "recipes", Path(__file__).resolve().parents[2] / "recipes"):
        for cand in (base / p.name, base / f"{p.name}.yaml"):
            if cand.exists():
                return cand
    raise ConfigError(
        f"recipe file {str(path)!r} does not exist. Give a path to a YAML recipe, or a name from "
        "`warmstart recipes` (e.g. `quickstart`)."
    )


def load_recipe(
    path: str | Path, overrides: list[str] | None = None, smoke: bool = False
) -> tuple[Recipe, dict]:
    """Read, override and validate a recipe. Returns the typed recipe and the resolved raw dict
    (what is saved as the run's ``config.yaml``)."""
    p = resolve_recipe_path(path)
    text = read_text_file(p, "recipe")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(e, 'problem', e)}.") from None
    raw = copy.deepcopy(raw) if raw is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a recipe must be a YAML mapping (key: value lines).")
    if smoke:
        if not isinstance(raw.get("smoke"), dict) or not raw["smoke"]:
            raise ConfigError(f"{p}: --smoke needs a `smoke:` block in the recipe (the keys a tiny run changes, e.g. "
                              "`smoke: {phases.sft.steps: 2, eval.n: 8}`); this recipe has none. Nothing was run.")
        for k, v in raw["smoke"].items():
            apply_override(raw, k, v, source=f"{p} smoke:")
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"--set {ov!r}: expected KEY=VALUE, e.g. --set phases.grpo.lr=1e-4.")
        k, v = ov.split("=", 1)
        apply_override(raw, k.strip(), parse_value(v), source="--set")
    import_plugins(raw.get("imports") or [], p)
    recipe = validate_recipe(raw, source=str(p), text=text)
    return recipe, raw


def import_plugins(modules: list, recipe_path: Path) -> None:
    """Import the recipe's ``imports:`` so that user modules can register tasks, rewards and phases
    (``@REWARDS.register("my_reward", MyConfig)``) without touching warmstart itself."""
    import importlib
    import sys

    if not isinstance(modules, list):
        raise ConfigError(f"{recipe_path}: imports must be a list of module names, e.g. [my_rewards].")
    for base in (str(Path(recipe_path).resolve().parent), str(Path.cwd())):
        if base not in sys.path:
            sys.path.insert(0, base)
    for m in modules:
        try:
            importlib.import_module(str(m))
        except Exception as e:  # the user's module: say which one and why, not a traceback
            raise ConfigError(
                f"{recipe_path}: imports: could not import {m!r} ({type(e).__name__}: {e}). It is looked up "
                "beside the recipe, in the working directory and on PYTHONPATH."
            ) from None


def dump_config(raw: dict) -> str:
    return yaml.safe_dump(raw, sort_keys=False)
