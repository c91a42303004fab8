"""Training log-probs of a causal LM computed only where a learner uses them.

A learner differentiates the log-probs of *action* tokens (a completion, a turn) and nothing else,
yet a plain ``model(input_ids).logits`` pays for the LM head and a vocabulary-wide log-softmax at
every position, and a GRPO group forwards (and back-propagates) the same prompt G times. This module
is the faster, exactly-equal path behind ``LMPolicy.forward_logprobs(..., action_mask=...)``:

1. **Shared context prefixes.** Each row's context prefix is everything before its first action
   token (single-turn GRPO: the prompt; a multi-turn episode: its first-turn prompt). Rows whose
   prefixes are the same token ids are forwarded once through the decoder with its key/value cache
   on; the cache is expanded to every row (an index select, differentiable) and the rest of each row
   runs on top of it. The gradient of all G rows flows back into the one prefix forward, so loss and
   gradients equal those of the G full sequences (to float rounding). This is what the KV-cache
   sampler does at sampling time (it prefills each distinct prompt once and copies its cache rows).
2. **The LM head at action positions only**, chunked (:func:`warmstart.functional.head_logprobs`).
3. **Optionally compiled** (:class:`DecoderPasses`, ``policy.compile``): the decoder passes above
   are two pure functions of tensors (HF's cache object lives and dies inside one of them, so it
   never crosses a compiled boundary), compiled once with dynamic shapes so that batches of any
   length reuse the same kernels.

Only models whose head is a plain ``nn.Linear`` over the decoder's ``last_hidden_state`` qualify
(Llama, Qwen2/3, Mistral, SmolLM2, ...); others (logit soft-capping or scaling, a wrapped head) use
the plain full-logits path, see :func:`supports_action_logprobs`.
"""

from __future__ import annotations

import torch

from warmstart.errors import warn
from warmstart.functional import head_logprobs

# config attributes that mean "the logits are not just lm_head(last_hidden_state)"
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def supports_action_logprobs(model) -> bool:
    """Whether ``model``'s logits are exactly ``lm_head(get_decoder()(...).last_hidden_state)``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or not hasattr(model, "get_decoder"):
        return False
    cfg = getattr(model, "config", None)
    return not any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in _LOGIT_TRANSFORMS)


def shared_prefixes(input_ids: torch.Tensor, action_mask: torch.Tensor) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Rows with at least one action, their context-prefix lengths and which distinct prefix each has.

    ``input_ids`` (B, T), ``action_mask`` (B, T-1) (target position t scores token t+1). A row's
    prefix is input positions ``[0, L)`` with ``L = first action target position + 1``: the position
    predicting the first action token closes it. Returns ``(rows, L (R,), inv (R,))`` where ``inv[r]``
    numbers the distinct prefixes (same ids, same length) in order of first appearance.
    """
    act = action_mask.bool()
    rows = act.any(1).nonzero().squeeze(1).tolist()
    first = act.int().argmax(1)  # (B,) first action target position
    keys: dict[tuple, int] = {}
    inv, lens = [], []
    for b in rows:
        n = int(first[b]) + 1
        inv.append(keys.setdefault(tuple(input_ids[b, :n].tolist()), len(keys)))
        lens.append(n)
    dev = input_ids.device
    return rows, torch.tensor(lens, dtype=torch.long, device=dev), torch.tensor(inv, dtype=torch.long, device=dev)


def _inputs(x: torch.Tensor) -> dict:
    """The decoder's input argument for ``x``: token ids (R, T) or input embeddings (R, T, H)."""
    return {"input_ids": x} if x.dim() == 2 else {"inputs_embeds": x}


def decoder_hidden(decoder, ids: torch.Tensor, att: torch.Tensor | None) -> torch.Tensor:
    """Final hidden states (R, T, H) of right-padded rows ``ids`` (R, T) (or their embeddings (R, T,
    H)): one plain decoder pass (``att`` None: no padding, plain causal attention)."""
    return decoder(**_inputs(ids), attention_mask=att).last_hidden_state


def shared_prefix_hidden(decoder, pref, pmask, inv, suffix, full_mask, pos) -> tuple[torch.Tensor, torch.Tensor]:
    """The two passes of a prefix-shared forward: the distinct prefixes ``pref`` (U, P) (mask
    ``pmask``) with the cache on, the cache expanded to the R rows by ``inv`` (R,) (an index select,
    so every row's gradient flows into its prefix), then the suffixes ``suffix`` (R, S) on it (mask
    ``full_mask`` (R, P + S), rotary positions ``pos`` (R, S)); ``pref``/``suffix`` may be embeddings
    (U, P, H), (R, S, H) instead of ids. Returns ``(h_pref (U, P, H), h_suf (R, S, H))``."""
    out = decoder(**_inputs(pref), attention_mask=pmask, use_cache=True)
    cache = out.cache  # transformers 5.x name (was past_key_values)
    cache.reorder_cache(inv)  # (U, ...) -> (R, ...): every row gets its prefix's keys/values
    h_suf = decoder(**_inputs(suffix), attention_mask=full_mask, position_ids=pos, cache=cache).last_hidden_state
    return out.last_hidden_state, h_suf


class DecoderPasses:
    """Runs the decoder passes of :func:`action_logprobs` eagerly or through ``torch.compile``.

    Compiled (``compile=True``): each pass is compiled once, with dynamic batch and sequence sizes
    (``dynamic=True``), so a new length reuses the kernels instead of recompiling. torch.compile
    specialises sizes 0 and 1, so :func:`action_logprobs` gives it no batch of one (a single row or
    prefix is run twice, the copy unused: a few wasted FLOPs in a rare batch instead of a
    compilation of minutes). The backward is compiled at the same time as the forward, so a
    compiler failure surfaces here, where the pass is rerun eagerly and compilation switched off
    with a one-line notice (a failure that the eager rerun repeats is the caller's error and
    propagates). Gradient checkpointing runs eagerly.
    """

    def __init__(self, compile: bool = False, backend: str = "inductor", what: str = "the training forward",
                 dynamic: bool | None = True):
        self.compile = compile
        self.what = what  # named in the fallback notice
        self.dynamic = dynamic  # torch.compile's: True = every size symbolic; None = sizes the caller marks dynamic
        self.backend = backend  # tests use "aot_eager": the same graphs and guards, no code generation
        self._compiled: dict = {}

    def run(self, fn, *args):
        """``fn(*args)``, compiled when this object compiles."""
        if not self.compile:
            return fn(*args)
        compiled = self._compiled.get(fn)
        if compiled is None:
            compiled = self._compiled[fn] = torch.compile(fn, dynamic=self.dynamic, backend=self.backend)
        try:
            # compile the backward with the forward (it is otherwise lowered at the first backward,
            # where a failure could not fall back)
            # no duck sizing: a batch that happens to equal a model size (8 rows, head_dim 8) would
            # otherwise share its symbol and recompile when the batch shrinks
            with torch._functorch.config.patch(force_non_lazy_backward_lowering=True), \
                    torch.fx.experimental._config.patch(use_duck_shape=False):
                return compiled(*args)
        except Exception as e:  # noqa: BLE001 -- rerun eagerly: a real error raises again there
            out = fn(*args)
            self.compile = False
            while (inner := getattr(e, "inner_exception", None) or e.__cause__) is not None:
                e = inner  # dynamo wraps the compiler's own error: name that one
            first = (str(e).strip().splitlines() or [""])[0][:200]
            warn(f"torch.compile of {self.what} failed ({type(e).__name__}: {first}); "
                 "it continues eagerly (policy.compile: false skips the attempt).")
            return out


def action_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, action_mask: torch.Tensor,
                    temperature: float = 1.0, with_entropy: bool = False, share_prefix: bool = True,
                    passes: DecoderPasses | None = None, inputs_embeds: torch.Tensor | None = None,
                    prefix_key: torch.Tensor | None = None, logit_bias: torch.Tensor | None = None):
    """Log-probs (B, T-1) of ``input_ids[:, 1:]`` at the positions set in ``action_mask`` (B, T-1), 0
    elsewhere (and the entropy there, no gradient, when asked), for a right-padded batch.

    With ``share_prefix`` rows that share a context prefix forward it once (see the module text);
    without it, or when every prefix is distinct, one decoder forward over the whole batch. Either
    way the LM head runs at the action positions only. ``passes`` runs the decoder (default: eagerly;
    see :class:`DecoderPasses`). ``model`` must pass :func:`supports_action_logprobs`.

    A vision-language model passes its ``inputs_embeds`` (B, T, H) (image features in the image
    slots), ``prefix_key`` (B, T): ids that tell prefixes apart (the image slots numbered by distinct
    image, so equal text with other images is not shared) and ``logit_bias`` (V,) added to the head.
    """
    B, T = input_ids.shape
    lp_out = torch.zeros(B, T - 1, dtype=torch.float32, device=input_ids.device)
    ent_out = torch.zeros(B, T - 1, dtype=torch.float32, device=input_ids.device) if with_entropy else None
    rows, L, inv = shared_prefixes(input_ids if prefix_key is None else prefix_key, action_mask)
    if not rows:  # nothing to score: keep the graph connected so backward() still works
        lp_out = lp_out + 0.0 * sum(p.sum() for p in model.parameters() if p.requires_grad)
        return (lp_out, ent_out) if with_entropy else lp_out
    rows_t = torch.tensor(rows, dtype=torch.long, device=input_ids.device)
    act = action_mask[rows_t].bool()  # (R, T-1)
    r_idx, t_idx = act.nonzero(as_tuple=True)  # (N,), (N,): the scored positions
    targets = input_ids[rows_t][r_idx, t_idx + 1]  # (N,)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    U = int(inv.max()) + 1
    # HF turns the cache off under gradient checkpointing: then every row runs on its own
    ckpt = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.x name
    ckpt = ckpt if ckpt is not None else getattr(model, "is_gradient_checkpointing", False)
    share_prefix = share_prefix and not ckpt
    passes = passes if passes is not None and not ckpt else _EAGER
    x = (input_ids if inputs_embeds is None else inputs_embeds)[rows_t]  # (R, T) ids or (R, T, H) embeddings
    if not share_prefix or U == len(rows):
        att = attention_mask[rows_t]
        # collate pads to a multiple of 8: the columns past the longest row are pure padding (6 of 24
        # for an 18-token demo), so the pass runs on the rows' real extent only. A batch left without
        # padding passes no mask (None, not an all-ones tensor, so that a compiled pass sees exactly two
        # kinds of batch: HF takes a data-dependent branch on an all-ones mask)
        T_real = int(att.sum(1).max())
        x, att = x[:, :T_real], att[:, :T_real]
        att = None if bool(att.all()) else att
        if passes.compile and len(rows) == 1:  # a second copy: a batch of one would compile a graph of its own
            x = x.repeat(2, *[1] * (x.dim() - 1))
        hidden = passes.run(decoder_hidden, decoder, x, att)  # (R, T, H)
        h = hidden[r_idx, t_idx]  # (N, H)
    else:
        h = _prefix_shared_hidden(decoder, x, attention_mask[rows_t], L, inv, U, r_idx, t_idx, passes)
    bias = head.bias
    if logit_bias is not None:
        bias = logit_bias.to(head.weight) if bias is None else bias + logit_bias.to(bias)
    res = head_logprobs(h, head.weight, bias, targets, temperature, with_entropy)
    lp, ent = res if with_entropy else (res, None)
    b_idx = rows_t[r_idx]
    lp_out = lp_out.index_put((b_idx, t_idx), lp)
    if with_entropy:
        ent_out[b_idx, t_idx] = ent
        return lp_out, ent_out
    return lp_out


def _prefix_shared_hidden(decoder, ids, att, L, inv, U, r_idx, t_idx, passes: DecoderPasses) -> torch.Tensor:
    """Final hidden states (N, H) at target positions ``(r_idx, t_idx)`` of rows ``ids`` (R, T) (or
    their embeddings (R, T, H)), with
    each distinct prefix (lengths ``L`` (R,), ids ``inv`` (R,)) forwarded once.

    Prefixes are right-padded to the longest (a padded query still sees its real predecessors, so no
    attention row is empty); the suffixes (input positions ``L[r]`` .. row end) are right-padded too,
    attend to the expanded cache through the 2-D mask [prefix mask | suffix mask], and carry their true
    positions ``L[r] + i`` for the rotary embedding.
    """
    R, T = ids.shape[:2]
    dev = ids.device
    first_row = [int((inv == u).nonzero()[0]) for u in range(U)]
    Lu = L[first_row]  # (U,)
    P = int(Lu.max())
    ar_p = torch.arange(P, device=dev)
    pmask = (ar_p.unsqueeze(0) < Lu.unsqueeze(1)).long()  # (U, P)
    pref = ids[first_row, :P]  # (U, P[, H]); columns past a prefix's end are masked out (pmask)
    lengths = att.sum(1)  # (R,)
    S = int((lengths - L).max())  # longest suffix
    ar_s = torch.arange(S, device=dev)
    src = (L.unsqueeze(1) + ar_s.unsqueeze(0)).clamp(max=T - 1)  # (R, S) input column of each suffix slot
    smask = (ar_s.unsqueeze(0) < (lengths - L).unsqueeze(1)).long()  # (R, S)
    if ids.dim() == 2:
        suffix = ids.gather(1, src) * smask  # (R, S); slots past a row's end are padding (id 0, masked)
    else:
        suffix = ids.gather(1, src.unsqueeze(-1).expand(-1, -1, ids.shape[-1]))  # (R, S, H), masked as above
    full_mask = torch.cat([pmask[inv], smask], dim=1)  # (R, P + S)
    pos = L.unsqueeze(1) + ar_s.unsqueeze(0)  # (R, S) true positions, for the rotary embedding
    if passes.compile and U == 1:  # a second copy, unused: one prefix would compile a graph of its own
        pref, pmask = pref.repeat(2, *[1] * (pref.dim() - 1)), pmask.repeat(2, 1)
    h_pref, h_suf = passes.run(shared_prefix_hidden, decoder, pref, pmask, inv, suffix, full_mask, pos)  # (U, P, H), (R, S, H)
    # target position t of row r reads the hidden state at input position t: the prefix's last
    # position (t = L - 1) or suffix slot t - L
    in_prefix = (t_idx < L[r_idx]).unsqueeze(1)  # (N, 1)
    hp = h_pref[inv[r_idx], t_idx.clamp(max=P - 1)]
    hs = h_suf[r_idx, (t_idx - L[r_idx]).clamp(min=0, max=max(S - 1, 0))] if S > 0 else hp
    return torch.where(in_prefix, hp, hs)


_EAGER = DecoderPasses(compile=False)
