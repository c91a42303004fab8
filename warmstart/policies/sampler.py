"""Fast batched sampling for Llama-family models (Llama, Mistral, Qwen2/2.5, Qwen3) on a preallocated KV cache.

For tiny models Hugging Face ``generate`` spends most of its time in per-token Python overhead
(cache objects, logits processors, stopping criteria). This sampler runs the *same weights* of a
``LlamaForCausalLM`` (read from the live module, so it always samples the current policy) with a
flat decode loop: one prefill over the left-padded prompts, then one fused step per token writing
into a cache allocated once. Finished rows are dropped from the batch as they stop, so short
answers do not pay for long ones. Tests check its logits token for token against the HF model.

Left padding: each row's positions count from its first real token, and padded key slots are
masked, so a prompt's continuation does not depend on how much padding its batch needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from warmstart.policies.action_logprobs import DecoderPasses


@dataclass
class Samples:
    """Per row: generated token ids (without padding; the EOS is included when it was produced),
    their behaviour log-probs, and whether the row stopped at EOS."""

    ids: list[list[int]]
    logprobs: list[list[float]]
    finished: list[bool]


# decoder-only families whose layers are Llama's up to q/k/v biases (Qwen2) and per-head q/k RMSNorm
# (Qwen3); anything else samples through HF ``generate`` (see :func:`kv_sampler_unsupported`)
KV_SAMPLER_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def kv_sampler_unsupported(model) -> str | None:
    """Why the KV-cache sampler cannot run ``model`` (None when it can): it covers Llama, Mistral,
    Qwen2/2.5 and Qwen3 with default RoPE, a SiLU MLP and full (not sliding-window) attention."""
    cfg = getattr(model, "config", None)
    mt = getattr(cfg, "model_type", None)
    if mt not in KV_SAMPLER_TYPES:
        return f"model type {mt!r} is not one of {', '.join(KV_SAMPLER_TYPES)}"
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default") if isinstance(rope, dict) else "default"
    if rope_type != "default":
        return f"RoPE scaling {rope_type!r}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    window = getattr(cfg, "sliding_window", None)
    sliding = any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or []))
    if mt == "mistral":
        sliding = window is not None and window < cfg.max_position_embeddings
    if sliding:
        return f"sliding-window attention (window {window})"
    return None


def supports_kv_sampler(model) -> bool:
    return kv_sampler_unsupported(model) is None


def linear_weight(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (out, in), bias) that ``module`` applies: a plain ``nn.Linear``'s own, or for a peft
    LoRA layer the base weight plus each active adapter's ``scale * B @ A`` (peft's
    ``get_delta_weight``), i.e. the merged weight, computed without touching the module."""
    base = getattr(module, "base_layer", None)
    if base is None:
        return module.weight, module.bias
    w = base.weight
    if not module.merged and not module.disable_adapters:
        for name in module.active_adapters:
            if name in module.lora_A:
                w = w + module.get_delta_weight(name).to(w.dtype)
    return w, base.bias


class LlamaKVSampler:
    """Samples from a live Llama-family causal LM (``LlamaForCausalLM``, Mistral, Qwen2, Qwen3; peft
    LoRA layers inside it are sampled with their merged weights) with a preallocated KV cache."""

    def __init__(self, model, compile: bool = False):
        why = kv_sampler_unsupported(model)
        if why is not None:
            raise ValueError(f"LlamaKVSampler cannot run this model: {why}")
        self.model = model
        self.compile_decode(compile)
        self._w = None  # the fused weights of the current call (:meth:`_fuse`)
        cfg = model.config
        self.qk_norm = cfg.model_type == "qwen3"  # RMSNorm over head_dim on queries and keys, before RoPE
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.hidden = cfg.hidden_size
        self.head_dim = getattr(cfg, "head_dim", None) or self.hidden // self.n_heads
        self.eps = cfg.rms_norm_eps
        rope = getattr(cfg, "rope_parameters", None) or {}
        self.theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
        self.max_pos = cfg.max_position_embeddings
        w0 = model.model.norm.weight  # a plain tensor in every model this runs (LoRA never wraps a norm)
        dev = w0.device  # tables and per-step tensors live beside the weights
        # computed in fp32, stored in the weights' dtype (as HF does), so bf16 queries stay bf16
        inv = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        t = torch.arange(self.max_pos, dtype=torch.float32)
        freqs = torch.outer(t, inv)  # (P, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (P, hd), HF's rotate_half layout
        self.cos = emb.cos().to(dev, w0.dtype)
        # rotate_half(x) * sin == flip_halves(x) * (sign * sin) with sign = [-1]*hd/2 + [+1]*hd/2
        sign = torch.cat([-torch.ones(self.head_dim // 2), torch.ones(self.head_dim // 2)])
        self.sin_signed = (emb.sin() * sign).to(dev, w0.dtype)

    def compile_decode(self, compile: bool, backend: str = "inductor") -> None:
        """Run the per-token decode step compiled (``policy.compile``) or eagerly; the prefill runs
        once per call and stays eager. Sizes that vary are marked by :func:`mark_decode_dynamic`."""
        self.passes = DecoderPasses(compile, backend, what="the sampler's decode step", dynamic=None)

    # -------------------------------------------------------------------------------- building blocks
    def _rms(self, x, w):
        if x.dtype == torch.float32:  # one fused kernel instead of five
            return F.rms_norm(x, (x.shape[-1],), w, self.eps)
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def _rope_tables(self, pos):
        """cos and signed sin at positions ``pos`` (B, S), shaped (B, S, 1, hd) to broadcast over
        heads; computed once per forward, shared by every layer."""
        return self.cos[pos].unsqueeze(2), self.sin_signed[pos].unsqueeze(2)

    def _rope(self, x, rope):
        """Rotary embedding of x (B, S, heads, hd), HF's rotate_half convention."""
        cos, sin_s = rope
        B, S, nh, hd = x.shape
        flipped = x.reshape(B, S, nh, 2, hd // 2).flip(3).reshape(B, S, nh, hd)
        return torch.addcmul(x * cos, flipped, sin_s)

    def _fuse(self):
        """Concatenate q/k/v and gate/up weights once per ``sample`` call (the policy may have been
        updated since the last call): 4 matmuls a layer instead of 7. The query rows are pre-scaled by
        1/sqrt(head_dim) (RoPE is linear, so this commutes; with Qwen3's q-norm the scale moves to the
        norm's weight instead), which saves a scaling op per layer. LoRA layers contribute their
        merged weights (:func:`linear_weight`)."""
        self._w = []
        qs = 1.0 / math.sqrt(self.head_dim)
        qw = 1.0 if self.qk_norm else qs
        for layer in self.model.model.layers:
            att, mlp = layer.self_attn, layer.mlp
            (wq, bq), (wk, bk), (wv, bv) = (linear_weight(m) for m in (att.q_proj, att.k_proj, att.v_proj))
            (wg, bg), (wu, bu) = linear_weight(mlp.gate_proj), linear_weight(mlp.up_proj)
            qkv_b = None
            if bq is not None:
                qkv_b = torch.cat([bq * qw, bk, bv])
            norms = (att.q_norm.weight * qs, att.k_norm.weight) if self.qk_norm else None
            self._w.append((
                torch.cat([wq * qw, wk, wv]), qkv_b,
                torch.cat([wg, wu]), torch.cat([bg, bu]) if bg is not None else None,
                linear_weight(att.o_proj), linear_weight(mlp.down_proj), norms,
            ))

    def _layer(self, li, x, rope, kc, vc, slot, mask):
        """One decoder layer. x: (B, S, H); rope: tables from :meth:`_rope_tables`; writes K/V at cache
        columns ``slot`` (a slice) and attends over columns [:slot.stop] with ``mask`` (B, 1, S, K):
        boolean (True = attend) for a prefill, an additive float bias (0 / -inf) for a decode step."""
        layer = self.model.model.layers[li]
        att = layer.self_attn
        w_qkv, b_qkv, w_gu, b_gu, (w_o, b_o), (w_down, b_down), norms = self._w[li]
        B, S, _ = x.shape
        nq, nkv = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        h = self._rms(x, layer.input_layernorm.weight)
        qkv = F.linear(h, w_qkv, b_qkv)  # (B, S, nq + 2 nkv)
        qk = qkv[..., : nq + nkv].view(B, S, self.n_heads + self.n_kv, self.head_dim)
        if norms is not None:  # Qwen3: per-head RMSNorm of q (weight pre-scaled by 1/sqrt(hd)) and k
            qk = torch.cat([self._rms(qk[:, :, : self.n_heads], norms[0]), self._rms(qk[:, :, self.n_heads :], norms[1])], 2)
        # RoPE on queries and keys together: (B, S, nh + nkv, hd)
        qk = self._rope(qk, rope)
        q = qk[:, :, : self.n_heads].transpose(1, 2)  # (B, nh, S, hd), already scaled by 1/sqrt(hd)
        k = qk[:, :, self.n_heads :].transpose(1, 2)  # (B, nkv, S, hd)
        v = qkv[..., nq + nkv :].view(B, S, self.n_kv, self.head_dim).transpose(1, 2)
        kc[li][:, :, slot] = k
        vc[li][:, :, slot] = v
        K = kc[li][:, :, : slot.stop]  # (B, nkv, K, hd)
        V = vc[li][:, :, : slot.stop]
        if S == 1:
            # decode: one query per row; plain matmuls beat the fused kernel at this size. Grouped-query
            # attention without copying the cache: query head h reads kv head h // rep (HF's repeat_kv),
            # so the rep query heads of a kv head attend together as a (rep, hd) block. Expanding K/V
            # to every query head instead (repeat_interleave) copied the whole cache per layer and
            # token: 25x slower on SmolLM2 (9 query / 3 kv heads) at 200 cached tokens.
            rep = self.n_heads // self.n_kv
            qg = q.reshape(B, self.n_kv, rep, self.head_dim)
            att_w = qg @ K.transpose(-1, -2) + mask  # (B, nkv, rep, K); mask is the additive bias (B, 1, 1, K)
            o = (att_w.softmax(-1) @ V).reshape(B, S, nq)  # (B, nkv, rep, hd) -> (B, 1, nh * hd)
        else:
            o = F.scaled_dot_product_attention(q, K, V, attn_mask=mask, scale=1.0,
                                               enable_gqa=self.n_kv != self.n_heads)  # (B, nh, S, hd)
            o = o.transpose(1, 2).reshape(B, S, nq)
        x = x + F.linear(o, w_o, b_o)
        h = self._rms(x, layer.post_attention_layernorm.weight)
        gu = F.linear(h, w_gu, b_gu)
        inter = gu.shape[-1] // 2
        return x + F.linear(F.silu(gu[..., :inter]) * gu[..., inter:], w_down, b_down)

    def _logits(self, x):
        return self.model.lm_head(self._rms(x, self.model.model.norm.weight))

    def _decode_step(self, tok, pos, kc, vc, bias):
        """One token for the active rows: embed ``tok`` (b,) at positions ``pos`` (b,), write its
        keys/values at cache column ``K - 1`` and return the next logits (b, V); ``bias`` (b, K) is
        the additive attention bias over the K columns written so far (this one included). A pure
        function of tensors, so that ``torch.compile`` (``compile=True``) traces it once, with the
        batch and cache sizes dynamic (:func:`mark_decode_dynamic`), and fuses its elementwise ops."""
        x = self.model.model.embed_tokens(tok.unsqueeze(1))  # (b, 1, H)
        rope = self._rope_tables(pos.unsqueeze(1))
        col = bias.shape[1] - 1
        mask = bias[:, None, None, :]  # (b, 1, 1, K)
        slot = slice(col, col + 1)
        for li in range(self.n_layers):
            x = self._layer(li, x, rope, kc, vc, slot, mask)
        return self._logits(x)[:, -1, :]

    # ------------------------------------------------------------------------------------- forward
    @torch.no_grad()
    def prefill_logits(self, prompts: list[list[int]], pad_id: int = 0) -> torch.Tensor:
        """Logits (B, P, V) of left-padded prompts (used by tests against the HF model)."""
        P = max(len(p) for p in prompts)
        state = self._prefill(prompts, P, pad_id, extra=0)
        self._w = None
        return state["logits_all"]

    def _prefill(self, prompts, P, pad_id, extra, all_logits=True):
        self._fuse()
        B = len(prompts)
        dev = self.cos.device
        ids = torch.full((B, P), pad_id, dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        ids = ids.to(dev)
        npad = torch.tensor([P - len(p) for p in prompts], device=dev)
        ar = torch.arange(P, device=dev)
        pos = (ar.unsqueeze(0) - npad.unsqueeze(1)).clamp(min=0)  # (B, P)
        real = ar.unsqueeze(0) >= npad.unsqueeze(1)  # (B, P) key is a real token
        causal = torch.tril(torch.ones(P, P, dtype=torch.bool, device=dev))
        mask = causal.unsqueeze(0) & real.unsqueeze(1)  # (B, Q, K)
        mask = mask | torch.eye(P, dtype=torch.bool, device=dev).unsqueeze(0)  # pad queries see themselves (no NaN)
        mask = mask.unsqueeze(1)  # (B, 1, Q, K)
        L = P + extra
        dtype = self.model.lm_head.weight.dtype
        kc = [torch.empty(B, self.n_kv, L, self.head_dim, dtype=dtype, device=dev) for _ in range(self.n_layers)]
        vc = [torch.empty(B, self.n_kv, L, self.head_dim, dtype=dtype, device=dev) for _ in range(self.n_layers)]
        x = self.model.model.embed_tokens(ids)
        slot = slice(0, P)
        rope = self._rope_tables(pos)
        for li in range(self.n_layers):
            x = self._layer(li, x, rope, kc, vc, slot, mask)
        logits = self._logits(x if all_logits else x[:, -1:])
        return {"kc": kc, "vc": vc, "real": real, "npad": npad, "logits_all": logits}

    @torch.no_grad()
    def sample(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        eos_id: int | None,
        pad_id: int = 0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        stop_ids: list[int] | None = None,
    ) -> Samples:
        """Sample continuations. ``temperature == 0`` is greedy. Log-probs are those of the sampled
        token under ``softmax(logits / temperature)`` (T=1 for greedy), before top-p truncation,
        i.e. the distribution a learner differentiates."""
        B = len(prompts)
        if B == 0:
            return Samples([], [], [])
        try:
            return self._sample(prompts, max_new_tokens, eos_id, pad_id, temperature, top_p, generator, stop_ids)
        finally:
            self._w = None  # the fused weights are a copy of most of the model: do not keep it between calls

    def _sample(self, prompts, max_new_tokens, eos_id, pad_id, temperature, top_p, generator, stop_ids) -> Samples:
        B = len(prompts)
        P = max(len(p) for p in prompts)
        if P + max_new_tokens > self.max_pos:
            max_new_tokens = max(0, self.max_pos - P)
        # GRPO and pass@k sample each prompt many times: prefill every distinct prompt once, then
        # copy its cache rows (the cache copy is much cheaper than the repeated prefill)
        distinct: dict[tuple, int] = {}
        inv = torch.tensor([distinct.setdefault(tuple(p), len(distinct)) for p in prompts])
        dev = self.cos.device
        inv = inv.to(dev)
        st = self._prefill([list(p) for p in distinct], P, pad_id, extra=max_new_tokens, all_logits=False)
        kc, vc, real, npad = st["kc"], st["vc"], st["real"], st["npad"]
        last = st["logits_all"][:, -1, :]  # (U, V)
        if len(distinct) < B:
            kc = [c.index_select(0, inv) for c in kc]
            vc = [c.index_select(0, inv) for c in vc]
            last, real, npad = last[inv], real[inv], npad[inv]
        # per-row state; `rows` maps active batch index -> original row
        rows = torch.arange(B, device=dev)
        # additive attention bias over cache columns: -inf on left padding, 0 on real prompt tokens and
        # on every generated column (a decode step only looks at the columns written so far)
        key_bias = torch.zeros(B, P + max_new_tokens, dtype=last.dtype, device=dev)
        key_bias[:, :P].masked_fill_(~real, float("-inf"))
        next_pos = P - npad  # (B,) position of the next token
        out_ids: list[list[int]] = [[] for _ in range(B)]
        out_lp: list[list[float]] = [[] for _ in range(B)]
        finished = [False] * B
        stops = set(stop_ids or [])
        if eos_id is not None:
            stops.add(eos_id)
        stop_t = torch.tensor(sorted(stops), dtype=torch.long, device=dev) if stops else None
        gen_ids = torch.empty(B, max_new_tokens, dtype=torch.long, device=dev)
        gen_lp = torch.empty(B, max_new_tokens, device=dev)
        lengths = torch.full((B,), max_new_tokens, dtype=torch.long, device=dev)
        alive_done = torch.zeros(B, dtype=torch.bool, device=dev)  # finished rows still in the active batch
        for t in range(max_new_tokens):
            tok, lp = self._pick(last, temperature, top_p, generator)
            gen_ids[rows, t] = torch.where(alive_done, pad_id, tok)
            gen_lp[rows, t] = lp
            if stop_t is not None:
                done = torch.isin(tok, stop_t) & ~alive_done
                if done.any():
                    lengths[rows[done]] = t + 1
                    for r in rows[done].tolist():
                        finished[r] = True
                    alive_done = alive_done | done
                    n_done = int(alive_done.sum())
                    if n_done == len(rows):
                        break
                # compact (drop finished rows from every per-row tensor and the cache) only once a
                # quarter of the batch is done: copying the cache costs more than a few idle rows
                if alive_done.any() and int(alive_done.sum()) * 4 >= len(rows):
                    keep = ~alive_done
                    alive_done = alive_done[keep]
                    idx = keep.nonzero().squeeze(1)
                    rows, tok, next_pos = rows[idx], tok[idx], next_pos[idx]
                    key_bias = key_bias[idx]
                    kc = [c.index_select(0, idx) for c in kc]
                    vc = [c.index_select(0, idx) for c in vc]
            if t == max_new_tokens - 1:
                break
            bias = key_bias[:, : P + t + 1]
            if self.passes.compile and len(rows) > 1:
                mark_decode_dynamic(tok, next_pos, kc, vc, bias)
                last = self.passes.run(self._decode_step, tok, next_pos, kc, vc, bias)
            else:  # eager (torch.compile would specialise a last row's batch of one: a second compile)
                last = self._decode_step(tok, next_pos, kc, vc, bias)
            next_pos = next_pos + 1
        L = lengths.tolist()
        ids_l = gen_ids.tolist()
        lp_l = gen_lp.tolist()
        for b in range(B):
            out_ids[b] = ids_l[b][: L[b]]
            out_lp[b] = lp_l[b][: L[b]]
        return Samples(out_ids, out_lp, finished)

    @staticmethod
    def _pick(logits, temperature, top_p, generator):
        logits = logits.float()
        if temperature == 0:
            tok = logits.argmax(-1)
            lp = torch.log_softmax(logits, -1).gather(-1, tok.unsqueeze(-1)).squeeze(-1)
            return tok, lp
        logp = torch.log_softmax(logits / temperature, -1)
        probs = logp.exp()
        if top_p < 1.0:
            sp, si = probs.sort(-1, descending=True)
            cum = sp.cumsum(-1)
            drop = cum - sp > top_p  # keep the smallest prefix whose mass reaches top_p
            sp = sp.masked_fill(drop, 0.0)
            choice = torch.multinomial(sp, 1, generator=generator)
            tok = si.gather(-1, choice).squeeze(-1)
        else:
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        return tok, logp.gather(-1, tok.unsqueeze(-1)).squeeze(-1)


def sample_in_chunks(model, n: int, batch_size: int | None, sample_chunk) -> Samples:
    """Rows ``[0, n)`` sampled ``batch_size`` at a time (all at once by default) by
    ``sample_chunk(start, stop) -> Samples``, joined in row order; ``model`` is in eval mode meanwhile
    (dropout off) and back in its own mode after, whatever happens."""
    was_training = model.training
    model.eval()
    try:
        bs = batch_size or n or 1
        parts = [sample_chunk(i, min(i + bs, n)) for i in range(0, n, bs)]
    finally:
        model.train(was_training)
    return Samples([x for p in parts for x in p.ids], [x for p in parts for x in p.logprobs],
                   [x for p in parts for x in p.finished])


def mark_decode_dynamic(tok, pos, kc, vc, bias) -> None:
    """Tell torch.compile which sizes of :meth:`LlamaKVSampler._decode_step`'s inputs vary: the
    batch (rows finish and are dropped) and the cache length (each call's prompt and token budget)
    and written columns. Everything else (weights, heads, RoPE tables) stays static, which keeps
    tracing quick: with every size symbolic it took ~20 s of shape reasoning for one layer."""
    mark = torch._dynamo.mark_dynamic
    for t in (tok, pos):
        mark(t, 0)
    mark(bias, 0)
    mark(bias, 1)
    for c in (*kc, *vc):  # (b, n_kv, L, hd)
        mark(c, 0)
        mark(c, 2)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask, both (B, P), for HF ``generate``."""
    B, P = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, P), pad_id, dtype=torch.long)
    att = torch.zeros((B, P), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, P - len(p) :] = torch.tensor(p)
        att[b, P - len(p) :] = 1
    return ids, att


def cut_at_stops(gen: torch.Tensor, lps: torch.Tensor, stops: set[int]) -> Samples:
    """Generated ids (B, N) and their log-probs as :class:`Samples`, each row cut after its first stop token."""
    res_ids, res_lp, fin = [], [], []
    for b in range(gen.shape[0]):
        row = gen[b].tolist()
        n, done = len(row), False
        for i, tok in enumerate(row):
            if tok in stops:
                n, done = i + 1, True
                break
        res_ids.append(row[:n])
        res_lp.append(lps[b, :n].tolist())
        fin.append(done)
    return Samples(res_ids, res_lp, fin)


def hf_sample(model, prompts, max_new_tokens, eos_id, pad_id, temperature=1.0, top_p=1.0, generator=None, stop_ids=None):
    """Fallback for models the KV sampler does not cover: HF ``generate`` + one scoring pass for
    behaviour log-probs. Slower, but any causal LM works."""
    P = max(len(p) for p in prompts)
    ids, att = left_pad(prompts, pad_id)
    dev = next(model.parameters()).device
    ids, att = ids.to(dev), att.to(dev)
    if generator is not None:
        torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))
    kw = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
              eos_token_id=list({*(stop_ids or []), *([eos_id] if eos_id is not None else [])}) or None)
    if temperature > 0:
        kw.update(temperature=temperature, top_p=top_p, top_k=0)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=att, **kw)
    gen = out[:, P:]
    stops = set(stop_ids or []) | ({eos_id} if eos_id is not None else set())
    full_att = torch.cat([att, torch.ones_like(gen)], 1)
    with torch.no_grad():
        logits = model(input_ids=out, attention_mask=full_att).logits[:, P - 1 : -1].float()
    t = temperature if temperature > 0 else 1.0
    lps = torch.log_softmax(logits / t, -1).gather(-1, gen.unsqueeze(-1)).squeeze(-1)
    return cut_at_stops(gen.cpu(), lps.cpu(), stops)
