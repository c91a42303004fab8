"""Policies: token policies (causal LMs) and vector policies (MLP actor-critics).

:func:`load_policy` is the one loader: every saved policy directory holds a small ``policy.json``
naming its kind, and the kind's registered ``load`` reopens it (``warmstart eval``, ``search``,
``scaling``, benchmarks and resume all go through it).
"""

from __future__ import annotations

import json
from pathlib import Path

from warmstart.errors import WarmstartError

POLICY_FILE = "policy.json"


def load_policy(path: str | Path):
    """Open any saved policy: a run's ``final/`` or ``checkpoints/step-N/``, or a plain local Hugging
    Face causal-LM directory (no ``policy.json``: read as ``kind: lm``)."""
    from warmstart.registry import POLICIES

    d = Path(path)
    if not d.is_dir():
        raise WarmstartError(f"{str(path)!r} is not a directory. Pass a run's final/ or checkpoints/step-N/, "
                             "or a local Hugging Face model directory.")
    meta = d / POLICY_FILE
    if meta.exists():
        try:
            kind = json.loads(meta.read_text()).get("kind")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise WarmstartError(f"{meta} is not valid JSON ({e}); it should read like {{\"kind\": \"lm\"}}.") from None
    elif (d / "config.json").exists():
        kind = "lm"  # an HF model directory (or a checkpoint written before policy.json existed)
    else:
        raise WarmstartError(f"{d} is not a checkpoint directory (no {POLICY_FILE} or config.json). "
                             "Pass a run's final/ or checkpoints/step-N/.")
    entry = POLICIES.get(kind)
    if entry.load is None:
        raise WarmstartError(f"policy kind {kind!r} (in {meta}) cannot be reopened from a directory: its plug-in "
                             "registers no load().")
    return entry.load(d)
