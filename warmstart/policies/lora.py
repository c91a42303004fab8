"""LoRA adapters on a causal LM through ``peft`` (``policy.lora: {r, alpha, dropout, target_modules}``).

Only the adapters train: every learner builds its optimizer over the parameters that require a
gradient, and peft freezes the rest. Sampling reads the adapted weights: the KV-cache sampler merges
each LoRA layer's ``scale * B @ A`` into its fused weights once per sampling call (without touching
the modules), and HF ``generate`` runs the peft model as it is.

A checkpoint is what peft writes and reads (``adapter_config.json`` + ``adapter_model.safetensors``,
opened with ``PeftModel.from_pretrained(base, dir)``), plus:

* ``base/``: the frozen base model, only when it has no directory of its own to be read back from
  (a tiny model built from a config); otherwise ``policy.json`` names the base directory;
* ``merged/``: a plain HF model with the adapters merged in, when ``save_merged: true`` (loads with
  ``AutoModelForCausalLM.from_pretrained`` and ``warmstart eval``, no peft needed).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from pydantic import Field

from warmstart.config import Strict
from warmstart.errors import WarmstartError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_DIR = "base"
MERGED_DIR = "merged"


class LoRAConfig(Strict):
    r: int = Field(8, ge=1, description="rank of each adapter (B @ A with A: r x in, B: out x r)")
    alpha: float = Field(16.0, gt=0, description="scale numerator: the update is (alpha / r) * B @ A")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input while training")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1, description="names of the linear layers that get adapters (module-name suffixes)")
    save_merged: bool = Field(False, description="also write merged/ (adapters merged into a plain HF model) in every checkpoint")


def _peft():
    try:
        import peft
    except ImportError:
        raise WarmstartError("policy.lora needs the 'peft' package: pip install 'warmstart[lora]' (or pip install peft).") from None
    return peft


def is_lora(model) -> bool:
    """Whether ``model`` is a peft model (checked by its class's module, so peft is imported only
    when it is already in use)."""
    return type(model).__module__.startswith("peft.")


def adapter_model(model):
    """The causal LM inside a peft model (its LoRA layers in place), or ``model`` itself."""
    return model.get_base_model() if is_lora(model) else model


def apply_lora(model, cfg: LoRAConfig):
    """Wrap ``model`` with fresh LoRA adapters (B = 0, so the policy is unchanged at first)."""
    peft = _peft()
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n}
    missing = [t for t in cfg.target_modules if t not in names]
    if missing:
        import torch

        linears = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise WarmstartError(f"policy.lora.target_modules: {', '.join(repr(m) for m in missing)} is not a module of this "
                             f"{type(model).__name__}. Its linear layers are: {', '.join(linears)}.")
    lc = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                         target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    return peft.get_peft_model(model, lc)


def save_lora(model, path: Path, base_path: str | None, merged: bool, tokenizer) -> dict:
    """Write the adapter with peft's ``save_pretrained`` (plus ``base/`` and ``merged/``, see the
    module docstring) into ``path``; returns the ``lora`` entry of ``policy.json``."""
    model.save_pretrained(path, safe_serialization=True)
    if base_path is None:
        # peft's unload() strips the adapter layers in place: work on a copy (small: no path means a tiny model)
        copy.deepcopy(model).unload().save_pretrained(path / BASE_DIR, safe_serialization=True)
    if merged:
        out = path / MERGED_DIR
        copy.deepcopy(model).merge_and_unload().save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (out / "policy.json").write_text(json.dumps({"kind": "lm", "format": "warmstart-lm-policy"}, indent=2))
    return {"base": base_path if base_path is not None else BASE_DIR}


def load_lora_policy_model(path: str | Path, entry: dict, load_hf_model):
    """(peft model, tokenizer, base path) of a saved LoRA policy: the base model read from its
    directory, then the adapter loaded with ``PeftModel.from_pretrained`` (trainable)."""
    peft = _peft()
    from transformers import AutoTokenizer

    path = Path(path)
    base = entry["base"]
    base_dir = path / BASE_DIR if base == BASE_DIR else Path(base)
    if not base_dir.is_dir():
        raise WarmstartError(f"{path} is a LoRA checkpoint of the base model {base_dir}, which no longer exists. "
                             f"Put the base model back there, or load {path / MERGED_DIR} if it was saved merged.")
    if base == BASE_DIR:  # a tiny model's base: its tokenizer is the one beside the adapter
        from transformers import AutoModelForCausalLM

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), local_files_only=True)
    else:
        _, model = load_hf_model(base_dir)
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    tok.padding_side = "left"
    model = peft.PeftModel.from_pretrained(model, str(path), is_trainable=True)
    return model, tok, None if base == BASE_DIR else str(base_dir)


def load_adapter_weights(model, path: str | Path) -> None:
    """Load a checkpoint's adapter weights into the live peft model (resume), with peft's
    ``set_peft_model_state_dict``; any mismatch is an error naming the tensors."""
    peft = _peft()
    from safetensors.torch import load_file

    f = Path(path) / ADAPTER_WEIGHTS
    if not f.exists():
        raise WarmstartError(f"{path} holds no {ADAPTER_WEIGHTS}: it is not a checkpoint of this LoRA policy "
                             "(was it written without policy.lora?).")
    state = load_file(str(f))
    res = peft.set_peft_model_state_dict(model, state)
    unexpected = list(getattr(res, "unexpected_keys", []) or [])
    missing = [k for k in (getattr(res, "missing_keys", []) or []) if "lora_" in k]
    if unexpected or missing:
        raise WarmstartError(f"the adapter in {path} does not match the policy's LoRA layers: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]} (different target_modules or r?).")
