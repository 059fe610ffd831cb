"""The T5 v1.1 / UL2 encoder-decoder, written to be read top to bottom.

Data flow (``cfg`` is a :class:`pali3_edu.config.EncDecConfig`)::

    input_ids ─► embed_tokens ─┐                     (or inputs_embeds: PaLI-3 puts visual
                               ▼                      tokens in front of the prompt here)
          T5Encoder: N × [RMSNorm → self-attention (+ bidirectional relative bias)  → residual
                          RMSNorm → gated-GELU feed-forward                        → residual]
                     final RMSNorm ─► encoder states (batch, source, d_model)
                                            │
    decoder_input_ids ─► embed_tokens ─┐    │  (the same embedding table)
                                       ▼    ▼
          T5Decoder: N × [RMSNorm → causal self-attention (+ causal relative bias) → residual
                          RMSNorm → cross-attention to the encoder states           → residual
                          RMSNorm → gated-GELU feed-forward                        → residual]
                     final RMSNorm ─► lm_head ─► logits (batch, target, vocab)

Class names carry the family (``T5Attention``, ``T5FeedForward``, ``T5EncoderLayer``,
``T5DecoderLayer``, ``T5Encoder``, ``T5Decoder``), distinct from the ViT's ``ViTAttention`` and
``ViTEncoder`` in :mod:`pali3_edu.vit`.

**Masks.** At the boundary (``forward``, ``encode``, ``decode``) a mask is a ``(batch, seq)``
*keep-mask*: 1/True for a real token, 0/False for padding (as the tokenizer's
``attention_mask``). Inside, masks become an *additive bias* on the attention scores
(:func:`padding_bias`, and the causal mask in :class:`T5Decoder`), added to the relative
position bias.

What makes it *T5* rather than the original Transformer:

- **RMSNorm** pre-norm (no mean subtraction, no bias), computed in fp32, eps 1e-6.
- **No biases** in any linear layer.
- **Relative position bias** instead of position embeddings: each (query, key) distance falls into
  one of 32 buckets (exact for small distances, log-spaced up to 128), and a learned table gives
  one scalar per bucket and head that is *added to the attention scores*. The table exists once
  per stack; the bias is computed once and shared by every layer of that stack. Cross-attention
  has no position bias.
- **Unscaled attention**: scores are ``q·k`` without ``1/sqrt(d_kv)``; the scale lives in the
  initialisation of ``q`` instead (see :meth:`EncoderDecoder.reset_parameters`).
- **Gated feed-forward**: ``wo(act(wi_0 x) * wi_1 x)`` with tanh-GELU (T5 v1.1) or SiLU (UL2 20B).
- The decoder starts from the pad token (id 0); EOS is id 1; labels ``-100`` are ignored.

Generation lives in :mod:`pali3_edu.generate`; this module gives it the pieces it needs:
:meth:`EncoderDecoder.encode`, :meth:`EncoderDecoder.decode` with a :class:`KVCache`, and
:meth:`EncoderDecoder.lm_logits`.

>>> from pali3_edu.config import get_config
>>> model = EncoderDecoder(get_config("encdec", "tiny-cpu"))
>>> out = model(input_ids=torch.tensor([[5, 6, 7, 1]]), labels=torch.tensor([[8, 9, 1]]))
>>> out.logits.shape
torch.Size([1, 3, 1792])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from pali3_edu.config import EncDecConfig, get_config

IGNORE_INDEX = -100  # label value that the loss skips (padding of the targets)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """T5's layer norm: ``x / sqrt(mean(x²) + eps) * weight``; no mean subtraction, no bias.

    The statistics are computed in fp32 even when ``x`` is bf16/fp16 (their sum of squares
    overflows or loses precision otherwise). Input and output: ``(..., dim)``.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        variance = x.float().pow(2).mean(dim=-1, keepdim=True)  # fp32 statistics
        normed = x * torch.rsqrt(variance + self.eps)  # bf16/fp16 · fp32 → fp32 (fp64 stays fp64)
        return self.weight * normed.to(self.weight.dtype)


def relative_position_bucket(
    relative_position: Tensor,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> Tensor:
    """Map ``relative_position = key_pos - query_pos`` to a bucket id in ``[0, num_buckets)``.

    - Bidirectional (encoder): half of the buckets are for keys to the left (``rel <= 0``), half
      (offset by ``num_buckets // 2``) for keys to the right; the distance is ``|rel|``.
    - Causal (decoder): only keys to the left matter; the distance is ``max(-rel, 0)`` and all
      buckets are used for it.
    - Within a direction with ``n`` buckets, distances below ``max_exact = n // 2`` get a bucket
      each; larger ones share log-spaced buckets up to ``max_distance``, beyond which everything
      falls into the last bucket.

    ``relative_position``: integer tensor of any shape; returns a ``long`` tensor of that shape.
    """
    buckets = torch.zeros_like(relative_position, dtype=torch.long)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_exact = distance < max_exact
    # log-spaced buckets for the far distances (clamp(min=1) only avoids log(0) on positions that
    # take the exact branch anyway)
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    far = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    far = far.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_exact, distance.long(), far)


def causal_mask(query_length: int, key_length: int, device: torch.device | None = None) -> Tensor:
    """Boolean ``(query_length, key_length)`` mask, ``True`` where a query may attend to a key.

    The queries are the *last* ``query_length`` positions of a sequence of ``key_length``
    tokens (with a KV cache the keys include the cached past), so query ``i`` sits at absolute
    position ``i + key_length - query_length`` and sees every key at or before that position.
    """
    if key_length < query_length:
        raise ValueError(f"key_length ({key_length}) must be >= query_length ({query_length})")
    offset = key_length - query_length
    q_pos = torch.arange(query_length, device=device)[:, None] + offset
    k_pos = torch.arange(key_length, device=device)[None, :]
    return k_pos <= q_pos


class RelativePositionBias(nn.Module):
    """The learned ``(num_buckets, heads)`` table of one stack, turned into an additive bias.

    (Hugging Face stores this table in the first layer's self-attention; the course keeps it on
    the stack, which is where it is used: computed once, added in every layer.)
    """

    def __init__(self, cfg: EncDecConfig, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = cfg.relative_attention_num_buckets
        self.max_distance = cfg.relative_attention_max_distance
        self.table = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)

    def forward(self, query_length: int, key_length: int, offset: int = 0) -> Tensor:
        """Bias ``(1, heads, query_length, key_length)``; query ``i`` is at position ``offset + i``."""
        device = self.table.weight.device
        q_pos = torch.arange(query_length, device=device)[:, None] + offset
        k_pos = torch.arange(key_length, device=device)[None, :]
        buckets = relative_position_bucket(
            k_pos - q_pos, self.bidirectional, self.num_buckets, self.max_distance
        )
        return rearrange(self.table(buckets), "q k h -> 1 h q k")


class T5Attention(nn.Module):
    """Multi-head attention without biases and without the ``1/sqrt(d_kv)`` scale.

    The inner width ``heads * d_kv`` may differ from ``d_model`` (UL2 20B: 16 × 256 = 4096 = d_model,
    T5 v1.1 XL: 32 × 64 = 2048). Used for self-attention (keys/values from ``x``) and for
    cross-attention (keys/values from the encoder states, projected by :meth:`project_kv`).
    """

    def __init__(self, cfg: EncDecConfig) -> None:
        super().__init__()
        self.heads, self.d_kv = cfg.num_heads, cfg.d_kv
        inner = cfg.num_heads * cfg.d_kv
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)
        self.dropout = cfg.dropout_rate

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values ``(batch, heads, length, d_kv)`` of ``x`` ``(batch, length, d_model)``."""
        k = rearrange(self.k(x), "b s (h d) -> b h s d", h=self.heads)
        v = rearrange(self.v(x), "b s (h d) -> b h s d", h=self.heads)
        return k, v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], bias: Tensor | None) -> Tensor:
        """``x`` ``(batch, queries, d_model)`` attends to ``kv`` (from :meth:`project_kv`).

        ``bias`` is added to the scores: relative positions and/or ``-inf``-like masks, of a shape
        that broadcasts to ``(batch, heads, queries, keys)``.
        """
        q = rearrange(self.q(x), "b t (h d) -> b h t d", h=self.heads)
        k, v = kv
        if bias is not None:
            bias = bias.to(q.dtype)
        # scale=1.0: T5 does not divide by sqrt(d_kv). The fused SDPA kernels keep the softmax
        # statistics in fp32, and the math kernel upcasts bf16/fp16 to fp32 (PyTorch default).
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0, scale=1.0
        )
        return self.o(rearrange(out, "b h t d -> b t (h d)"))


_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x, approximate="tanh"),  # T5 v1.1 "gelu_new" is the tanh form
    "silu": F.silu,
    "relu": F.relu,
}


class T5FeedForward(nn.Module):
    """Gated: ``wo(act(wi_0 x) * wi_1 x)`` (``gated-gelu``, ``gated-silu``); plain: ``wo(act(wi x))``
    (``relu``, the original T5). Input and output ``(batch, length, d_model)``."""

    def __init__(self, cfg: EncDecConfig) -> None:
        super().__init__()
        kind = cfg.feed_forward_proj
        self.gated = kind.startswith("gated-")
        name = kind.removeprefix("gated-")
        if name not in _ACTIVATIONS:
            raise ValueError(
                f"Unknown feed_forward_proj {kind!r}: use 'gated-gelu' (T5 v1.1), 'gated-silu' "
                "(UL2 20B) or 'relu' (T5 v1.0)."
            )
        self.act = _ACTIVATIONS[name]
        if self.gated:
            self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
            self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        else:
            self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(self.dropout(h))


# --------------------------------------------------------------------------------------------
# Layers and stacks
# --------------------------------------------------------------------------------------------


@dataclass
class KVCache:
    """What the decoder keeps between generation steps, one entry per decoder layer.

    - ``self_kv[i]``: keys/values ``(batch, heads, steps so far, d_kv)`` of the decoder's own
      tokens; each call appends the new steps, so a step costs one token, not the whole prefix.
    - ``cross_kv[i]``: keys/values of the encoder states for cross-attention; they never change
      during generation, so they are projected on the first call and reused afterwards.
    """

    self_kv: list[tuple[Tensor, Tensor] | None] = field(default_factory=list)
    cross_kv: list[tuple[Tensor, Tensor] | None] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Number of decoder positions already cached."""
        first = self.self_kv[0] if self.self_kv else None
        return 0 if first is None else first[0].shape[2]

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search: continue from the chosen beams).

        Only the self-attention entries move; beam search reorders beams *within* an example,
        and all beams of one example share the same encoder states, hence the same cross K/V.
        """
        self.self_kv = [
            None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))
            for kv in self.self_kv
        ]


class T5EncoderLayer(nn.Module):
    """Pre-norm block: ``x + SelfAttn(RMSNorm(x))``, then ``x + FF(RMSNorm(x))``."""

    def __init__(self, cfg: EncDecConfig) -> None:
        super().__init__()
        self.self_attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.self_attn = T5Attention(cfg)
        self.ff_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.ff = T5FeedForward(cfg)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        h = self.self_attn_norm(x)
        x = x + self.dropout(self.self_attn(h, self.self_attn.project_kv(h), bias))
        return x + self.dropout(self.ff(self.ff_norm(x)))


class T5DecoderLayer(nn.Module):
    """Pre-norm block: causal self-attention, cross-attention to the encoder, feed-forward."""

    def __init__(self, cfg: EncDecConfig) -> None:
        super().__init__()
        self.self_attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.self_attn = T5Attention(cfg)
        self.cross_attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.cross_attn = T5Attention(cfg)
        self.ff_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.ff = T5FeedForward(cfg)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(
        self,
        x: Tensor,
        self_bias: Tensor,
        encoder_states: Tensor,
        cross_bias: Tensor | None,
        cache: KVCache | None = None,
        index: int = 0,
    ) -> Tensor:
        # 1. causal self-attention; with a cache, the new keys/values are appended to the past ones
        h = self.self_attn_norm(x)
        k, v = self.self_attn.project_kv(h)
        if cache is not None:
            past = cache.self_kv[index]
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            cache.self_kv[index] = (k, v)
        x = x + self.dropout(self.self_attn(h, (k, v), self_bias))
        # 2. cross-attention: the encoder's keys/values are projected once per generation
        if cache is not None and cache.cross_kv[index] is not None:
            cross_kv = cache.cross_kv[index]
        else:
            cross_kv = self.cross_attn.project_kv(encoder_states)
            if cache is not None:
                cache.cross_kv[index] = cross_kv
        x = x + self.dropout(self.cross_attn(self.cross_attn_norm(x), cross_kv, cross_bias))
        # 3. feed-forward
        return x + self.dropout(self.ff(self.ff_norm(x)))


def padding_bias(attention_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """``(batch, keys)`` mask (1 = real token) → additive bias ``(batch, 1, 1, keys)``.

    Masked keys get the most negative finite number (not ``-inf``: a row with every key masked
    then gives a uniform softmax instead of NaNs).
    """
    if attention_mask is None:
        return None
    keep = attention_mask.bool()[:, None, None, :]
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(
        ~keep, torch.finfo(dtype).min
    )


class T5Encoder(nn.Module):
    """Embeddings in, encoder states out: ``(batch, source, d_model)`` → same shape."""

    def __init__(self, cfg: EncDecConfig) -> None:
        super().__init__()
        self.relative_bias = RelativePositionBias(cfg, bidirectional=True)
        self.layers = nn.ModuleList(T5EncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.final_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(self, embeds: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        length = embeds.shape[1]
        bias = self.relative_bias(length, length)  # (1, heads, S, S), shared by all layers
        pad = padding_bias(attention_mask, bias.dtype)
        if pad is not None:
            bias = bias + pad  # (batch, heads, S, S)
        x = self.dropout(embeds)
        for layer in self.layers:
            x = layer(x, bias)
        return self.dropout(self.final_norm(x))


class T5Decoder(nn.Module):
    """Target embeddings + encoder states in, decoder states ``(batch, target, d_model)`` out."""

    def __init__(self, cfg: EncDecConfig) -> None:
        super().__init__()
        self.relative_bias = RelativePositionBias(cfg, bidirectional=False)
        self.layers = nn.ModuleList(T5DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers))
        self.final_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(
        self,
        embeds: Tensor,
        encoder_states: Tensor,
        encoder_attention_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        new = embeds.shape[1]
        past = 0
        if cache is not None:
            if not cache.self_kv:  # a fresh cache: one slot per layer
                cache.self_kv = [None] * len(self.layers)
                cache.cross_kv = [None] * len(self.layers)
            past = cache.length
        total = past + new
        # relative bias of the new queries (positions past..total-1) against all keys, + causal mask
        bias = self.relative_bias(new, total, offset=past)  # (1, heads, new, total)
        allowed = causal_mask(new, total, device=bias.device)
        bias = bias.masked_fill(~allowed, torch.finfo(bias.dtype).min)
        cross_bias = padding_bias(encoder_attention_mask, bias.dtype)  # no position bias here
        x = self.dropout(embeds)
        for i, layer in enumerate(self.layers):
            x = layer(x, bias, encoder_states, cross_bias, cache, i)
        return self.dropout(self.final_norm(x))


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


@dataclass
class Seq2SeqOutput:
    """What :meth:`EncoderDecoder.forward` returns.

    - ``logits``: ``(batch, target, vocab)``;
    - ``encoder_states``: ``(batch, source, d_model)``, the encoder's output;
    - ``loss``: scalar mean cross-entropy over the labels that are not ``-100``, or ``None``
      when no labels were given.
    """

    logits: Tensor
    encoder_states: Tensor
    loss: Tensor | None = None


def shift_right(labels: Tensor, start_token_id: int = 0, pad_token_id: int = 0) -> Tensor:
    """Decoder inputs from labels: prepend the start token, drop the last label, ``-100`` → pad.

    ``labels`` ``(batch, target)`` → ``(batch, target)``: ``[a, b, EOS]`` → ``[START, a, b]``.
    """
    shifted = torch.full_like(labels, start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_token_id)


class EncoderDecoder(nn.Module):
    """T5 v1.1 / UL2 encoder-decoder. Build with ``EncoderDecoder(cfg)`` or
    ``EncoderDecoder.from_preset("tiny-cpu")``.

    Parts: ``embed_tokens`` (shared by encoder and decoder), ``encoder``, ``decoder``, and
    ``lm_head`` (absent when ``cfg.tie_word_embeddings``; then the logits use ``embed_tokens``
    and the decoder output is scaled by ``d_model ** -0.5`` first, as in T5 v1.0).

    Training: ``model(input_ids, attention_mask=..., labels=...)`` → ``.loss``, ``.logits``.
    Generation (see :func:`pali3_edu.generate.generate`)::

        states = model.encode(input_ids, attention_mask=mask)            # once
        cache = KVCache()
        hidden = model.decode(step_ids, states, mask, cache=cache)      # each step: new ids only
        logits = model.lm_logits(hidden)
    """

    def __init__(self, cfg: EncDecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = T5Encoder(cfg)
        self.decoder = T5Decoder(cfg)
        self.lm_head = (
            None if cfg.tie_word_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        )
        self.reset_parameters()

    @classmethod
    def from_preset(cls, name: str = "tiny-cpu", **overrides) -> EncoderDecoder:
        """A freshly initialised model from an ``encdec`` preset (``tiny-cpu``, ``small``, ``t5-v1_1-base``...)."""
        return cls(get_config("encdec", name, **overrides))

    # ---- initialisation ------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """(Re)initialise every parameter with T5's scheme, which carries the attention scale
        that the forward pass omits. ``__init__`` calls it.

        ``q ~ N(0, (d_model·d_kv)^-½)`` (so ``q·k`` has unit scale without dividing by
        ``sqrt(d_kv)``), ``k, v ~ N(0, d_model^-½)``, ``o ~ N(0, (heads·d_kv)^-½)``,
        ``wi ~ N(0, d_model^-½)``, ``wo ~ N(0, d_ff^-½)``, embeddings and the untied head
        ``~ N(0, 1)``, norms = 1. The relative-bias tables use ``N(0, d_model^-½)`` (as in
        Hugging Face; the T5 paper does not state it).
        """
        c = self.cfg
        nn.init.normal_(self.embed_tokens.weight, std=1.0)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=1.0)
        for m in self.modules():
            if isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
            elif isinstance(m, RelativePositionBias):
                nn.init.normal_(m.table.weight, std=c.d_model**-0.5)
            elif isinstance(m, T5Attention):
                nn.init.normal_(m.q.weight, std=(c.d_model * c.d_kv) ** -0.5)
                nn.init.normal_(m.k.weight, std=c.d_model**-0.5)
                nn.init.normal_(m.v.weight, std=c.d_model**-0.5)
                nn.init.normal_(m.o.weight, std=(c.num_heads * c.d_kv) ** -0.5)
            elif isinstance(m, T5FeedForward):
                for wi in (m.wi_0, m.wi_1) if m.gated else (m.wi,):
                    nn.init.normal_(wi.weight, std=c.d_model**-0.5)
                nn.init.normal_(m.wo.weight, std=c.d_ff**-0.5)

    # ---- input checks --------------------------------------------------------------------
    def _check_ids(self, name: str, ids: Tensor, allow_ignore: bool = False) -> None:
        if ids.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"{name} must hold integer token ids (torch.long), got {ids.dtype}.")
        if ids.dim() != 2:
            raise ValueError(f"{name} must have shape (batch, length), got {tuple(ids.shape)}.")
        if ids.numel() == 0:
            return
        real = ids[ids != IGNORE_INDEX] if allow_ignore else ids
        if real.numel() and (int(real.min()) < 0 or int(real.max()) >= self.cfg.vocab_size):
            hint = " (use -100 for ignored label positions)" if allow_ignore else ""
            raise ValueError(
                f"{name} holds ids outside [0, {self.cfg.vocab_size}) (min {int(real.min())}, "
                f"max {int(real.max())}): the tokenizer and cfg.vocab_size disagree{hint}."
            )

    def _embed_source(self, input_ids: Tensor | None, inputs_embeds: Tensor | None) -> Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(
                "Pass exactly one of input_ids (batch, source) or inputs_embeds (batch, source, "
                "d_model) — PaLI-3 passes inputs_embeds with the visual tokens in front."
            )
        if input_ids is not None:
            self._check_ids("input_ids", input_ids)
            embeds = self.embed_tokens(input_ids)
        else:
            embeds = inputs_embeds
            if not torch.is_floating_point(embeds):
                raise TypeError(
                    f"inputs_embeds must be a floating-point tensor, got {embeds.dtype} "
                    "(token ids go to input_ids)."
                )
            if embeds.dim() != 3 or embeds.shape[-1] != self.cfg.d_model:
                raise ValueError(
                    f"inputs_embeds must have shape (batch, source, d_model={self.cfg.d_model}), "
                    f"got {tuple(embeds.shape)}."
                )
        if embeds.shape[1] > self.cfg.max_input_length:
            raise ValueError(
                f"Input of {embeds.shape[1]} tokens is longer than cfg.max_input_length="
                f"{self.cfg.max_input_length}: truncate it, or raise max_input_length in the config."
            )
        return embeds

    @staticmethod
    def _check_mask(mask: Tensor | None, length: int, batch: int, name: str = "attention_mask") -> None:
        """A keep-mask ``(batch, length)``: bool, or integers/floats that are all 0 or 1."""
        if mask is None:
            return
        if not isinstance(mask, Tensor) or mask.dtype.is_complex:
            raise TypeError(f"{name} must be a bool or 0/1 tensor (batch, source), got {type(mask).__name__}.")
        if tuple(mask.shape) != (batch, length):
            raise ValueError(
                f"{name} must have shape (batch, source) = {(batch, length)}, "
                f"got {tuple(mask.shape)}."
            )
        if mask.dtype != torch.bool and mask.numel() and not ((mask == 0) | (mask == 1)).all():
            raise ValueError(
                f"{name} is a keep-mask: 1/True for real tokens, 0/False for padding; it holds other "
                f"values (min {mask.min().item()}, max {mask.max().item()}). An additive mask "
                f"(0 / -inf) converts with {name} = (additive == 0)."
            )

    # ---- the three steps generation needs --------------------------------------------------
    def encode(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Encoder states ``(batch, source, d_model)`` from ids or embeddings (exactly one).

        ``attention_mask`` ``(batch, source)``: 1/True for real tokens, 0/False for padding.
        """
        embeds = self._embed_source(input_ids, inputs_embeds)
        self._check_mask(attention_mask, embeds.shape[1], embeds.shape[0])
        return self.encoder(embeds, attention_mask)

    def decode(
        self,
        decoder_input_ids: Tensor,
        encoder_states: Tensor,
        encoder_attention_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Decoder states ``(batch, target, d_model)`` (before the output head).

        Without a cache, ``decoder_input_ids`` ``(batch, target)`` is the whole target prefix.
        With a :class:`KVCache` it holds only the *new* positions (usually one), which are placed
        after the ``cache.length`` cached ones; the cache is updated in place.
        ``encoder_attention_mask`` is the ``(batch, source)`` keep-mask given to :meth:`encode`
        (checked there, not again here: generation calls this once per token).
        """
        return self.decoder(
            self.embed_tokens(decoder_input_ids), encoder_states, encoder_attention_mask, cache
        )

    def lm_logits(self, decoder_states: Tensor) -> Tensor:
        """Output head: ``(batch, target, d_model)`` → logits ``(batch, target, vocab)``."""
        if self.lm_head is None:  # tied (T5 v1.0): rescale, then reuse the input embedding
            return F.linear(decoder_states * self.cfg.d_model**-0.5, self.embed_tokens.weight)
        return self.lm_head(decoder_states)

    def shift_right(self, labels: Tensor) -> Tensor:
        """Decoder inputs from labels (see :func:`shift_right`), with this model's start/pad ids."""
        return shift_right(labels, self.cfg.decoder_start_token_id, self.cfg.pad_token_id)

    # ---- training forward ------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Seq2SeqOutput:
        """Teacher-forced forward pass.

        - ``input_ids`` ``(batch, source)`` or ``inputs_embeds`` ``(batch, source, d_model)``.
        - ``attention_mask`` ``(batch, source)``: 1 for real tokens, 0 for padding.
        - ``labels`` ``(batch, target)``, ``-100`` where no loss is wanted; when
          ``decoder_input_ids`` is not given it is ``shift_right(labels)``.

        Returns :class:`Seq2SeqOutput`; ``loss`` is the mean cross-entropy over the labels that
        are not ``-100`` (computed in fp32 at least, also for a bf16/fp16 model).
        """
        if labels is not None:
            self._check_ids("labels", labels, allow_ignore=True)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("Pass labels (training) or decoder_input_ids (scoring a prefix).")
            decoder_input_ids = self.shift_right(labels)
        else:
            self._check_ids("decoder_input_ids", decoder_input_ids)
        states = self.encode(input_ids, inputs_embeds, attention_mask)
        if decoder_input_ids.shape[0] != states.shape[0]:
            raise ValueError(
                f"Batch sizes differ: encoder {states.shape[0]}, decoder {decoder_input_ids.shape[0]}."
            )
        logits = self.lm_logits(self.decode(decoder_input_ids, states, attention_mask))
        loss = None
        if labels is not None:
            if labels.shape != decoder_input_ids.shape:
                raise ValueError(
                    f"labels {tuple(labels.shape)} and decoder_input_ids "
                    f"{tuple(decoder_input_ids.shape)} must have the same shape."
                )
            wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 → fp32
            loss = F.cross_entropy(wide.flatten(0, 1), labels.long().flatten(), ignore_index=IGNORE_INDEX)
        return Seq2SeqOutput(logits=logits, encoder_states=states, loss=loss)


T5 = EncoderDecoder  # alias

__all__ = [
    "IGNORE_INDEX",
    "EncoderDecoder",
    "KVCache",
    "RMSNorm",
    "RelativePositionBias",
    "Seq2SeqOutput",
    "T5",
    "T5Attention",
    "T5Decoder",
    "T5DecoderLayer",
    "T5Encoder",
    "T5EncoderLayer",
    "T5FeedForward",
    "causal_mask",
    "padding_bias",
    "relative_position_bucket",
    "shift_right",
]
