"""SigLIP: an image tower and a text tower trained with a pairwise sigmoid loss.

- :class:`TextTransformer`: token + learned position embeddings, the same pre-LN encoder as the
  ViT with **no causal mask**, a final LayerNorm, the **last** token pooled (the caller pads text
  to the fixed length with a "sticky" EOS, so the last position is always EOS), a Linear head.
  Returns a :class:`TextOutput` (``tokens``, ``pooled``), as the ViT returns a ``ViTOutput``.
- :class:`SigLIP`: both towers plus the learnable temperature ``t'`` (``t = exp(t')``, init
  log 10) and bias ``b`` (init −10). ``encode_image`` / ``encode_text`` return the embeddings
  *before* normalisation (as ``transformers`` does); ``forward`` normalises them and returns a
  :class:`SigLIPOutput`: the ``(B_img, B_txt)`` logits ``t·⟨x_i, y_j⟩ + b`` and the loss.
- Losses on L2-normalised embeddings ``x`` (images) and ``y`` (texts), all ``(batch, dim)``:
  :func:`sigmoid_loss` (the paper's, summed over all B² pairs and divided by B),
  :func:`softmax_loss` (CLIP's, for comparison), :func:`chunked_sigmoid_loss` (the same number with
  peak memory ∝ B·B/k), :func:`simulated_ring_sigmoid_loss` (the multi-device schedule, in one
  process) and :func:`distributed_sigmoid_loss` (the real thing over ``torch.distributed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pali3_edu.config import SigLIPConfig, TextConfig
from pali3_edu.vit import ViT, ViTEncoder, init_transformer_weights, lecun_normal_

# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------


def _as_tensor(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=like.dtype, device=like.device)


def _check_pair(image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
    if image_emb.ndim != 2 or text_emb.ndim != 2:
        raise ValueError(
            f"Embeddings must be (batch, dim); got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"The loss needs matching pairs: image_emb {tuple(image_emb.shape)} vs text_emb "
            f"{tuple(text_emb.shape)} (row i of each must be the same example)."
        )


def sigmoid_logits(
    image_emb: torch.Tensor, text_emb: torch.Tensor, t_prime: torch.Tensor | float, bias: torch.Tensor | float
) -> torch.Tensor:
    """``logit_ij = exp(t')·⟨x_i, y_j⟩ + b``: ``(B_img, dim), (B_txt, dim) -> (B_img, B_txt)``."""
    t_prime, bias = _as_tensor(t_prime, image_emb), _as_tensor(bias, image_emb)
    return t_prime.exp() * image_emb @ text_emb.T + bias


def sigmoid_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, t_prime: torch.Tensor | float, bias: torch.Tensor | float
) -> torch.Tensor:
    """SigLIP loss ``−(1/B) Σ_i Σ_j log σ(z_ij · logit_ij)``, ``z_ij = +1`` if ``i == j`` else −1.

    ``image_emb``, ``text_emb``: ``(batch, dim)``, L2-normalised, row i of each is a pair.
    One independent binary problem per pair: summed over all B² pairs, divided by B (not B²).
    """
    _check_pair(image_emb, text_emb)
    logits = sigmoid_logits(image_emb, text_emb, t_prime, bias)  # (B, B)
    labels = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1  # +1 diag, −1 off
    return -F.logsigmoid(labels * logits).sum() / logits.shape[0]


def softmax_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, t_prime: torch.Tensor | float) -> torch.Tensor:
    """CLIP's loss: the mean of the image→text and text→image cross-entropies over the batch.

    Each row (image) is a B-way classification over the texts, and each column the other way
    round; both need the whole row/column, so the batch is coupled through the normalisation.
    """
    _check_pair(image_emb, text_emb)
    logits = _as_tensor(t_prime, image_emb).exp() * image_emb @ text_emb.T
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _softplus_sum(image_emb: torch.Tensor, text_chunk: torch.Tensor, t_prime: torch.Tensor,
                  bias: torch.Tensor) -> torch.Tensor:
    return F.softplus(sigmoid_logits(image_emb, text_chunk, t_prime, bias)).sum()


def chunked_sigmoid_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    t_prime: torch.Tensor | float,
    bias: torch.Tensor | float,
    chunks: int = 4,
) -> torch.Tensor:
    """:func:`sigmoid_loss` computed ``chunks`` text blocks at a time; peak memory ∝ B·B/chunks.

    Uses ``−log σ(z·x) = softplus(x) − [z = +1]·x``, so the loss is
    ``(Σ_all pairs softplus(logit) − Σ_positives logit) / B``. The positives are the diagonal,
    ``t·⟨x_i, y_i⟩ + b``, an O(B·dim) term. Each ``(B, B/chunks)`` block of logits is thrown
    away after its sum and *recomputed* in the backward pass (activation checkpointing), so
    neither pass ever holds the full ``(B, B)`` matrix.
    """
    _check_pair(image_emb, text_emb)
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}")
    t_prime, bias = _as_tensor(t_prime, image_emb), _as_tensor(bias, image_emb)
    batch = image_emb.shape[0]
    positives = (t_prime.exp() * (image_emb * text_emb).sum(-1) + bias).sum()
    total = image_emb.new_zeros(())
    for text_chunk in text_emb.chunk(chunks):
        if torch.is_grad_enabled():
            total = total + checkpoint(_softplus_sum, image_emb, text_chunk, t_prime, bias, use_reentrant=False)
        else:
            total = total + _softplus_sum(image_emb, text_chunk, t_prime, bias)
    return (total - positives) / batch


def simulated_ring_sigmoid_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    t_prime: torch.Tensor | float,
    bias: torch.Tensor | float,
    devices: int = 4,
) -> torch.Tensor:
    """The multi-device schedule of the paper, simulated in one process (for lesson 03).

    The global batch is split into ``devices`` shards. "Device" d first scores its own images
    against its own texts (the block holding the positives), then, at step s = 1 … D−1, the texts
    of device ``(d − s) mod D`` (what it would receive from its left neighbour in a ring) and adds
    only negative terms. Each device only ever holds a ``(B/D, B/D)`` block of logits.
    """
    _check_pair(image_emb, text_emb)
    if image_emb.shape[0] % devices:
        raise ValueError(f"batch {image_emb.shape[0]} must split evenly over {devices} devices")
    images, texts = image_emb.chunk(devices), text_emb.chunk(devices)
    total = image_emb.new_zeros(())
    for d in range(devices):
        # local block: positives on the diagonal (sigmoid_loss divides by the shard size: undo it)
        total = total + sigmoid_loss(images[d], texts[d], t_prime, bias) * images[d].shape[0]
        for step in range(1, devices):
            received = texts[(d - step) % devices]
            total = total + F.softplus(sigmoid_logits(images[d], received, t_prime, bias)).sum()
    return total / image_emb.shape[0]


# ---- multi-process version -------------------------------------------------------------------


def _ring_pass(x: torch.Tensor, group, direction: int) -> torch.Tensor:
    """Send ``x`` to the neighbour ``rank + direction`` and receive from ``rank − direction``."""
    import torch.distributed as dist

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    to, frm = (rank + direction) % world, (rank - direction) % world
    if group is not None:  # P2POp takes global ranks
        to, frm = dist.get_global_rank(group, to), dist.get_global_rank(group, frm)
    received = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x.contiguous(), to, group), dist.P2POp(dist.irecv, received, frm, group)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return received


class _RingShift(torch.autograd.Function):
    """Forward: pass a tensor to the right neighbour. Backward: pass its gradient back to the left,
    so the gradient of a received text embedding reaches the rank that owns it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return _ring_pass(x, group, +1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _ring_pass(grad.contiguous(), ctx.group, -1), None


def distributed_sigmoid_loss(
    local_image_emb: torch.Tensor,
    local_text_emb: torch.Tensor,
    t_prime: torch.Tensor,
    bias: torch.Tensor,
    group=None,
) -> torch.Tensor:
    """The sigmoid loss over a data-parallel group; every rank holds only its local ``(b, dim)`` pairs.

    Each rank scores its images against its own texts (the positives), then the text embeddings
    travel round a ring (send right, receive left, ``world − 1`` times) and only negatives are
    added. Per rank the logits are ``(b, b)``, never ``(B, B)``. Global batch ``B = world·b``
    (all ranks must hold the same ``b``).

    **Returns the global loss value** (the same number on every rank, equal to
    ``sigmoid_loss`` on the gathered batch). Its backward pass differentiates only this rank's
    share ``L_r = (1/B) Σ_{i on rank r} Σ_j ...`` (the other shares enter as constants), so

    - the gradients w.r.t. ``local_image_emb`` and ``local_text_emb`` equal the single-process
      gradients of those rows (text gradients come back along the ring from the other ranks);
    - for replicated parameters (``t'``, ``b``, tower weights) each rank gets its share:
      **sum** them over ranks to get the single-process gradient (DDP *averages*, i.e. it gives
      that gradient divided by ``world``; scale the loss by ``world`` if you need the exact sum).
    """
    import torch.distributed as dist

    _check_pair(local_image_emb, local_text_emb)
    world = dist.get_world_size(group)
    b = local_image_emb.shape[0]
    sizes = torch.tensor([b, -b], dtype=torch.float64, device=local_image_emb.device)
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX, group=group)
    if int(sizes[0]) != b or int(-sizes[1]) != b:
        raise ValueError(f"All ranks must hold the same local batch; this rank has {b}, "
                         f"others between {int(-sizes[1])} and {int(sizes[0])}.")
    global_batch = world * b

    local = sigmoid_loss(local_image_emb, local_text_emb, t_prime, bias) * b  # sum over the local block
    texts = local_text_emb
    for _ in range(world - 1):
        texts = _RingShift.apply(texts, group)
        local = local + F.softplus(sigmoid_logits(local_image_emb, texts, t_prime, bias)).sum()
    share = local / global_batch

    total = share.detach().clone()
    dist.all_reduce(total, group=group)
    return share + (total - share.detach())  # value: global loss; gradient: this rank's share


# ----------------------------------------------------------------------------------------------
# Text tower and the two-tower model
# ----------------------------------------------------------------------------------------------


@dataclass
class TextOutput:
    """What :class:`TextTransformer` returns.

    - ``tokens``: ``(batch, seq, width)`` after the final LayerNorm;
    - ``pooled``: ``(batch, embed_dim)``, the head applied to the last (EOS) position.
    """

    tokens: torch.Tensor
    pooled: torch.Tensor


class TextTransformer(nn.Module):
    """SigLIP text tower: ``input_ids (batch, seq)`` → :class:`TextOutput`.

    ``1 ≤ seq ≤ cfg.max_len``; the caller pads to the fixed length with EOS ("sticky EOS"), and
    the last position's output (after the final LayerNorm) goes through the Linear head. The
    blocks are the ViT's (:class:`~pali3_edu.vit.ViTEncoder`), bidirectional: no mask.
    """

    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.posemb = nn.Parameter(torch.empty(1, cfg.max_len, cfg.width))
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = ViTEncoder(cfg.width, cfg.depth, cfg.mlp_dim, cfg.heads, cfg.layer_norm_eps, cfg.dropout)
        self.head = nn.Linear(cfg.width, embed_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """(Re)initialise every parameter as big_vision does: token and position embeddings
        N(0, 1/√width), the blocks with :func:`~pali3_edu.vit.init_transformer_weights`, the head
        LeCun normal with bias 0. ``__init__`` calls it."""
        nn.init.normal_(self.token_embed.weight, std=self.cfg.width**-0.5)
        nn.init.normal_(self.posemb, std=self.cfg.width**-0.5)
        init_transformer_weights(self)
        lecun_normal_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def _check_input(self, input_ids: torch.Tensor) -> None:
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(
                f"input_ids must be a tensor (batch, seq) of token ids, got {type(input_ids).__name__}: "
                "encode the texts with the tokenizer first."
            )
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must be integer token ids (torch.long), got {input_ids.dtype}")
        seq, vocab = input_ids.shape[1], self.cfg.vocab_size
        if seq == 0:
            raise ValueError(
                "input_ids has no tokens (seq = 0): SigLIP pools the last position, so every text "
                f"needs at least its EOS; pad the texts to max_len={self.cfg.max_len} with EOS."
            )
        if seq > self.cfg.max_len:
            raise ValueError(
                f"Text of {seq} tokens is longer than max_len={self.cfg.max_len}: truncate it "
                "(keeping EOS last) or build the model with a larger TextConfig.max_len."
            )
        if input_ids.numel():
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= vocab:
                raise ValueError(
                    f"input_ids holds ids outside [0, {vocab}) (min {low}, max {high}): the tokenizer "
                    "and TextConfig.vocab_size disagree; build the model with "
                    "TextConfig(vocab_size=len(tokenizer))."
                )

    def forward(self, input_ids: torch.Tensor) -> TextOutput:
        self._check_input(input_ids)
        seq = input_ids.shape[1]
        x = self.drop(self.token_embed(input_ids) + self.posemb[:, :seq])
        tokens = self.encoder(x)  # bidirectional: no mask
        return TextOutput(tokens=tokens, pooled=self.head(tokens[:, -1]))  # the last position is EOS


@dataclass
class SigLIPOutput:
    """What :meth:`SigLIP.forward` returns.

    - ``image_emb``: ``(B_img, embed_dim)``, L2-normalised;
    - ``text_emb``: ``(B_txt, embed_dim)``, L2-normalised;
    - ``logits``: ``(B_img, B_txt)`` = ``t·⟨x_i, y_j⟩ + b``;
    - ``loss``: scalar, or ``None`` when ``loss="none"`` was asked for.
    """

    image_emb: torch.Tensor
    text_emb: torch.Tensor
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class SigLIP(nn.Module):
    """Two towers and the sigmoid loss. ``model.t_prime`` and ``model.bias`` are 0-d parameters."""

    def __init__(self, cfg: SigLIPConfig):
        super().__init__()
        if cfg.vision.pool == "none":
            raise ValueError("SigLIP needs a pooled image embedding: use ViTConfig(pool='map') or 'gap'.")
        self.cfg = cfg
        self.vision = ViT(cfg.vision)
        # The paper's image embedding is the MAP output itself; a projection appears only when a
        # config asks for an embedding size different from the ViT width (a course extension).
        if cfg.embed_dim == cfg.vision.width:
            self.image_proj: nn.Module = nn.Identity()
        else:
            self.image_proj = nn.Linear(cfg.vision.width, cfg.embed_dim)
        self.text = TextTransformer(cfg.text, cfg.embed_dim)
        self.t_prime = nn.Parameter(torch.empty(()))
        self.bias = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """(Re)initialise every parameter: both towers with their own ``reset_parameters``, the
        optional image projection LeCun normal with bias 0, ``t' = cfg.t_prime_init`` (log 10)
        and ``b = cfg.bias_init`` (−10). ``__init__`` calls it."""
        self.vision.reset_parameters()
        self.text.reset_parameters()
        if isinstance(self.image_proj, nn.Linear):
            lecun_normal_(self.image_proj.weight)
            nn.init.zeros_(self.image_proj.bias)
        self.t_prime.fill_(float(self.cfg.t_prime_init))
        self.bias.fill_(float(self.cfg.bias_init))

    @property
    def temperature(self) -> torch.Tensor:
        """``t = exp(t')``."""
        return self.t_prime.exp()

    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` in [-1, 1] → ``(patch tokens (B, N, width), pooled (B, embed_dim))``,
        the pooled embedding unnormalised (as ``transformers``' ``get_image_features``)."""
        out = self.vision(pixel_values)
        return out.tokens, self.image_proj(out.pooled)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, seq)`` token ids (EOS-padded) → pooled ``(B, embed_dim)`` (unnormalised)."""
        return self.text(input_ids).pooled

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        loss: Literal["sigmoid", "softmax", "none"] = "sigmoid",
    ) -> SigLIPOutput:
        """Normalised embeddings, ``(B_img, B_txt)`` logits and the loss (``loss="softmax"``: CLIP's).

        A loss needs pairs: image ``i`` and text ``i`` of the same example, so equal batch sizes.
        To score every image against every text of another size (zero-shot classification,
        retrieval), pass ``loss="none"``.
        """
        if loss not in ("sigmoid", "softmax", "none"):
            raise ValueError(f"loss must be 'sigmoid', 'softmax' or 'none', got {loss!r}")
        image_emb = F.normalize(self.encode_image(pixel_values)[1], dim=-1)
        text_emb = F.normalize(self.encode_text(input_ids), dim=-1)
        if loss != "none" and image_emb.shape[0] != text_emb.shape[0]:
            raise ValueError(
                f"{image_emb.shape[0]} images but {text_emb.shape[0]} texts: the {loss} loss needs "
                "matching pairs (row i of each batch is one example). To score every image against "
                "every text, call model(pixel_values, input_ids, loss='none')."
            )
        logits = sigmoid_logits(image_emb, text_emb, self.t_prime, self.bias)
        value = None
        if loss == "sigmoid":
            value = sigmoid_loss(image_emb, text_emb, self.t_prime, self.bias)
        elif loss == "softmax":
            value = softmax_loss(image_emb, text_emb, self.t_prime)
        return SigLIPOutput(image_emb=image_emb, text_emb=text_emb, logits=logits, loss=value)
