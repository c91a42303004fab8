"""The paper's action format (OpenThinkIMG): one JSON object per policy turn,

    {"thought": "...", "actions": [{"name": "read_value", "arguments": {"label": "C"}}]}

``Terminate`` (here ``terminate``, matched case-insensitively) carries the answer and ends the
episode. Only the first action of a turn is executed, as in the paper's controller. Chat models may
instead write their template's own tool-call format; :func:`parse_action` also reads the common
``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` form.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

TERMINATE = "terminate"
_TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


@dataclass
class Action:
    """One parsed action: the tool's name and arguments, and the turn's thought."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    thought: str = ""

    @property
    def is_terminate(self) -> bool:
        return self.name.lower() == TERMINATE


def format_action(name: str, arguments: dict[str, Any], thought: str = "") -> str:
    """The canonical, compact JSON of one action (what scripted demonstrations write)."""
    return json.dumps({"thought": thought, "actions": [{"name": name, "arguments": arguments}]}, separators=(",", ":"))


def _first_object(text: str) -> Any:
    """The first JSON value that starts at a ``{`` in ``text`` (None when there is none)."""
    dec = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch == "{":
            try:
                return dec.raw_decode(text, i)[0]
            except ValueError:
                continue
    return None


def parse_action(text: str) -> tuple[Action | None, str | None]:
    """(action, None) for a valid turn, (None, why) otherwise."""
    m = _TOOL_CALL.search(text)
    if m:  # a chat template's tool-call format
        try:
            obj = json.loads(m.group(1))
        except ValueError as e:
            return None, f"the <tool_call> is not valid JSON ({e.msg})"
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None, "a <tool_call> needs a JSON object with a string name"
        args = obj.get("arguments", {})
        return (Action(obj["name"], args), None) if isinstance(args, dict) else (None, "arguments must be a JSON object")
    obj = _first_object(text)
    if not isinstance(obj, dict):
        return None, 'no JSON action {"thought":..,"actions":[{"name":..,"arguments":{..}}]}'
    acts = obj.get("actions")
    if not isinstance(acts, list) or not acts or not isinstance(acts[0], dict):
        return None, '"actions" must be a list of {"name":..,"arguments":{..}}'
    a = acts[0]
    if not isinstance(a.get("name"), str):
        return None, "the action needs a string name"
    args = a.get("arguments", {})
    if not isinstance(args, dict):
        return None, "the action's arguments must be a JSON object"
    thought = obj.get("thought", "")
    return Action(a["name"], args, thought if isinstance(thought, str) else ""), None


def final_answer(turn_texts: list[str]) -> str | None:
    """The answer of the last turn whose action is ``terminate`` (its ``answer`` argument)."""
    for t in reversed(turn_texts):
        act, _ = parse_action(t)
        if act is not None and act.is_terminate:
            ans = act.arguments.get("answer")
            return None if ans is None else str(ans)
    return None
