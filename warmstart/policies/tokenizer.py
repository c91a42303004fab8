"""A character-level tokenizer built from a config, saved and loaded as a plain HF tokenizer.

Tiny models learn arithmetic far better one character per token, and nothing may be downloaded:
so the quickstart builds a ``PreTrainedTokenizerFast`` over printable ASCII (plus specials) that
``AutoTokenizer.from_pretrained(dir)`` loads back.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def build_char_tokenizer(chars: str | None = None) -> PreTrainedTokenizerFast:
    """One token per character of ``chars`` (default: printable ASCII), plus pad/bos/eos/unk."""
    chars = chars if chars is not None else "".join(c for c in string.printable if c not in "\r\x0b\x0c")
    vocab: dict[str, int] = {}
    for tok in SPECIALS.values():
        vocab[tok] = len(vocab)
    for c in chars:
        if c not in vocab:
            vocab[c] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIALS["unk_token"]))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, **SPECIALS)
    tok.padding_side = "left"
    return tok
