"""Vision transformer: the SigLIP image tower (and PaLI-3's image encoder).

Data flow, in the order the modules below appear::

    pixels (B, 3, H, W) in [-1, 1]
      └─ patch embedding: conv, kernel = stride = patch  ─► (B, N, D)   N = (H/p)·(W/p)
      └─ + position embedding (learned, or fixed sincos-2D) ─► (B, N, D)
      └─ depth × pre-LN block: x + MHA(LN(x)); x + MLP(LN(x))
      └─ final LayerNorm                                   ─► patch tokens (B, N, D)  (PaLI-3 uses these)
      └─ head: MAP (learned probe attends to the tokens) | "gap" (mean) | "none"
                                                           ─► pooled (B, D)           (SigLIP uses this)

Choices that follow SigLIP and big_vision's ViT: no CLS token; LayerNorm eps 1e-6;
tanh-approximate GELU; attention with biases and 1/√head_dim scaling; a learned position
embedding initialised N(0, 1/√width); Dense kernels Xavier-uniform, the patch embedding LeCun
normal (see :meth:`ViT.reset_parameters`).

The class names carry the family: ``ViTAttention``, ``ViTMLP``, ``ViTBlock``, ``ViTEncoder``
(the SigLIP text tower reuses them, as big_vision's does), distinct from the encoder-decoder's
``T5Attention``/``T5Encoder`` in :mod:`pali3_edu.encdec`.

**Resolution.** A ViT works at its native ``cfg.image_size``; other sizes get a clear error.
To change the resolution for good (PaLI-3 stage 2), call :meth:`ViT.set_image_size`: a learned
position grid is resized once with ``cfg.posemb_resize`` (bilinear as in big_vision, or bicubic
as ``transformers``' ``interpolate_pos_encoding``), a sincos grid is recomputed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from pali3_edu.config import ViTConfig

ResizeMethod = Literal["bilinear", "bicubic"]


# ----------------------------------------------------------------------------------------------
# Patches and position embeddings
# ----------------------------------------------------------------------------------------------


def square_grid(n: int, hint: str = "grid") -> tuple[int, int]:
    """``(side, side)`` for ``n`` positions on a square grid; a clear error for any other ``n``."""
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} positions are not a square grid: pass {hint}=(h, w).")
    return side, side


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut images into non-overlapping patches, row by row.

    ``(batch, channels, H, W) -> (batch, N, patch·patch·channels)`` with ``N = (H/patch)·(W/patch)``.
    Each patch is flattened as (row in patch, column in patch, channel). A ``Linear`` on these
    vectors is the same map as a ``Conv2d(kernel_size=patch, stride=patch)`` whose weight is
    rearranged ``"d c p1 p2 -> d (p1 p2 c)"`` (lesson 02 checks it).
    """
    if images.ndim != 4:
        raise ValueError(f"patchify expects (batch, channels, H, W), got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h % patch or w % patch:
        raise ValueError(f"Image size {h}x{w} is not divisible by the patch size {patch}.")
    return rearrange(images, "b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)", p1=patch, p2=patch)


def sincos_2d_posemb(
    grid_h: int, grid_w: int, width: int, temperature: float = 10_000.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, ``(1, grid_h·grid_w, width)`` float32.

    A quarter of the channels each hold sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω) for
    ``width/4`` frequencies ω from 1 down to 1/temperature (big_vision's ``posemb_sincos_2d``).
    """
    if width % 4:
        raise ValueError(f"sincos-2D position embedding needs width divisible by 4, got {width}.")
    quarter = width // 4
    omega = torch.arange(quarter, dtype=torch.float32, device=device) / max(quarter - 1, 1)
    omega = 1.0 / temperature**omega  # (quarter,)
    y, x = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float32, device=device),
        torch.arange(grid_w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    y = y.flatten()[:, None] * omega[None, :]  # (N, quarter)
    x = x.flatten()[:, None] * omega[None, :]
    pe = torch.cat([torch.sin(x), torch.cos(x), torch.sin(y), torch.cos(y)], dim=1)
    return pe[None]


def resize_posemb(
    posemb: torch.Tensor,
    new_grid: int | tuple[int, int],
    method: ResizeMethod = "bilinear",
    old_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resize a learned position embedding to a new patch grid.

    ``posemb``: ``(1, N, width)`` laid out row by row on an ``old_grid`` (square if not given).
    Returns ``(1, new_h·new_w, width)``. ``"bilinear"`` is big_vision's choice, ``"bicubic"``
    ``transformers``' (both with ``align_corners=False``, i.e. pixel centres line up).
    """
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise ValueError(f"posemb must be (1, N, width), got shape {tuple(posemb.shape)}")
    if method not in ("bilinear", "bicubic"):
        raise ValueError(f"method must be 'bilinear' or 'bicubic', got {method!r}")
    if old_grid is None:
        old_grid = square_grid(posemb.shape[1], hint="old_grid")
    new_hw = (new_grid, new_grid) if isinstance(new_grid, int) else tuple(new_grid)
    if tuple(old_grid) == new_hw:
        return posemb
    grid = rearrange(posemb, "1 (h w) d -> 1 d h w", h=old_grid[0], w=old_grid[1])
    grid = F.interpolate(grid.float(), size=new_hw, mode=method, align_corners=False).to(posemb.dtype)
    return rearrange(grid, "1 d h w -> 1 (h w) d")


# ----------------------------------------------------------------------------------------------
# Transformer building blocks (the SigLIP text tower uses them too)
# ----------------------------------------------------------------------------------------------


class ViTAttention(nn.Module):
    """Multi-head attention with biases; self-attention, or cross-attention when ``context`` is given.

    ``x``: ``(batch, queries, width)``, ``context``: ``(batch, keys, width)`` → ``(batch, queries, width)``.
    Scores are scaled by 1/√head_dim (SDPA's default). No mask: every token sees every token
    (images have no padding, and SigLIP pads text with EOS tokens that are meant to be seen).
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (rearrange(f(t), "b n (h d) -> b h n d", h=self.heads)
                   for f, t in ((self.q, x), (self.k, context), (self.v, context)))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(rearrange(y, "b h n d -> b n (h d)"))


class ViTMLP(nn.Module):
    """Dense → tanh-approximate GELU → Dense: ``(..., width) -> (..., width)``."""

    def __init__(self, width: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x), approximate="tanh")))


class ViTBlock(nn.Module):
    """Pre-LN transformer block: ``x + MHA(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(self, width: int, mlp_dim: int, heads: int, eps: float = 1e-6, dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(width, eps=eps)
        self.attn = ViTAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width, eps=eps)
        self.mlp = ViTMLP(width, mlp_dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class ViTEncoder(nn.Module):
    """``depth`` pre-LN blocks and a final LayerNorm: ``(batch, seq, width) -> (batch, seq, width)``."""

    def __init__(self, width: int, depth: int, mlp_dim: int, heads: int, eps: float = 1e-6,
                 dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(ViTBlock(width, mlp_dim, heads, eps, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class MAPHead(nn.Module):
    """Multihead attention pooling: a learned probe ``(1, 1, width)`` attends to the tokens,
    then ``x = x + MLP(LN(x))``; the probe's output is the pooled embedding.

    ``tokens``: ``(batch, N, width)`` → ``(batch, width)``. Unlike mean pooling, the probe learns
    *which* patches matter; like mean pooling, the result does not depend on the token order.
    """

    def __init__(self, width: int, mlp_dim: int, heads: int, eps: float = 1e-6):
        super().__init__()
        self.probe = nn.Parameter(torch.empty(1, 1, width))
        self.attn = ViTAttention(width, heads)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.mlp = ViTMLP(width, mlp_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """big_vision's init (:func:`init_transformer_weights`); also run by ``ViT.reset_parameters``."""
        init_transformer_weights(self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        x = self.attn(probe, context=tokens)  # (B, 1, D)
        x = x + self.mlp(self.norm(x))
        return x[:, 0]


@torch.no_grad()
def init_transformer_weights(module: nn.Module) -> None:
    """big_vision's init for every building block inside ``module`` (used by the models'
    ``reset_parameters``): Dense kernels Xavier-uniform, attention biases 0, MLP biases
    N(0, 1e-6), LayerNorm scale 1 and offset 0, the MAP probe Xavier-uniform."""
    for m in module.modules():
        if isinstance(m, ViTAttention):
            for lin in (m.q, m.k, m.v, m.out):
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)
        elif isinstance(m, ViTMLP):
            for lin in (m.fc1, m.fc2):
                nn.init.xavier_uniform_(lin.weight)
                nn.init.normal_(lin.bias, std=1e-6)
        elif isinstance(m, nn.LayerNorm):
            m.reset_parameters()
        elif isinstance(m, MAPHead):
            nn.init.xavier_uniform_(m.probe)


@torch.no_grad()
def lecun_normal_(weight: torch.Tensor) -> None:
    """LeCun normal without truncation: std = 1/√fan_in (flax's default for Dense and Conv)."""
    fan_in = weight[0].numel()
    nn.init.normal_(weight, std=fan_in**-0.5)


# ----------------------------------------------------------------------------------------------
# The vision transformer
# ----------------------------------------------------------------------------------------------


@dataclass
class ViTOutput:
    """What :meth:`ViT.forward` returns.

    - ``tokens``: ``(batch, patches, width)``, the patch tokens after the final LayerNorm
      (PaLI-3 hands these to the language model);
    - ``pooled``: ``(batch, width)`` from the head, or ``None`` when ``cfg.pool == "none"``
      (SigLIP's image embedding).
    """

    tokens: torch.Tensor
    pooled: torch.Tensor | None = None


class ViT(nn.Module):
    """SigLIP-style vision transformer.

    ``vit(pixel_values)`` with ``pixel_values`` ``(batch, channels, image_size, image_size)``
    float in [-1, 1] returns a :class:`ViTOutput` (``.tokens``, ``.pooled``).
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg  # ViTConfig validates itself (patch size, pool, posemb choices)
        self.patch_embed = nn.Conv2d(cfg.channels, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        # learned: a (1, patches, width) parameter; sincos2d: nothing stored (see position_embedding)
        learned = cfg.posemb == "learn"
        self.posemb = nn.Parameter(torch.empty(1, cfg.num_patches, cfg.width)) if learned else None
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = ViTEncoder(cfg.width, cfg.depth, cfg.mlp_dim, cfg.heads, cfg.layer_norm_eps, cfg.dropout)
        self.head = MAPHead(cfg.width, cfg.mlp_dim, cfg.heads, cfg.layer_norm_eps) if cfg.pool == "map" else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """(Re)initialise every parameter as big_vision does: patch embedding LeCun normal with
        bias 0, learned position embedding N(0, 1/√width), the blocks and the MAP head with
        :func:`init_transformer_weights`. ``__init__`` calls it."""
        lecun_normal_(self.patch_embed.weight)
        nn.init.zeros_(self.patch_embed.bias)
        if self.posemb is not None:
            nn.init.normal_(self.posemb, std=self.cfg.width**-0.5)
        init_transformer_weights(self)

    # -- position embedding: the one place that knows the two kinds
    def position_embedding(self, grid_h: int | None = None, grid_w: int | None = None) -> torch.Tensor:
        """``(1, grid_h·grid_w, width)`` for a patch grid (default: the native grid).

        Learned: the stored grid, resized with ``cfg.posemb_resize`` when another grid is asked
        for. Sincos-2D: computed for the grid.
        """
        g = self.cfg.grid_size
        grid = (grid_h or g, grid_w or g)
        if self.cfg.posemb == "sincos2d":
            weight = self.patch_embed.weight
            return sincos_2d_posemb(*grid, self.cfg.width, device=weight.device).to(weight.dtype)
        return resize_posemb(self.posemb, grid, self.cfg.posemb_resize, old_grid=(g, g))

    def set_image_size(self, image_size: int) -> None:
        """Change the native resolution for good (PaLI-3 stage 2, e.g. 64 → 128 px).

        The learned position grid is resized once with ``cfg.posemb_resize`` and becomes the new
        parameter (build the optimizer afterwards: the old parameter object is replaced);
        ``cfg.image_size`` is updated. Raises ``ValueError`` for a size the patch size does not divide.
        """
        new_cfg = dataclasses.replace(self.cfg, image_size=image_size)  # validates the size
        if self.posemb is not None:
            with torch.no_grad():
                resized = self.position_embedding(new_cfg.grid_size, new_cfg.grid_size).clone()
            self.posemb = nn.Parameter(resized, requires_grad=self.posemb.requires_grad)
        self.cfg = new_cfg

    def _check_input(self, x: torch.Tensor) -> None:
        c, size = self.cfg.channels, self.cfg.image_size
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"pixel_values must be a tensor (batch, {c}, {size}, {size}), got {type(x).__name__}. "
                f"Convert images with pali3_edu.data.collate.images_to_batch(images, {size})."
            )
        if x.ndim != 4:
            raise ValueError(
                f"pixel_values must be (batch, {c}, {size}, {size}); got shape {tuple(x.shape)}. "
                "Add a batch dimension with x[None] for a single image."
            )
        if x.shape[1] != c:
            raise ValueError(
                f"Expected {c} channels in dim 1, got shape {tuple(x.shape)}. "
                "Images must be channels-first (use einops.rearrange(x, 'b h w c -> b c h w'))."
            )
        if not x.is_floating_point():
            raise TypeError(
                f"pixel_values must be float in [-1, 1], got {x.dtype}. "
                f"Use pali3_edu.data.collate.images_to_batch(images, {size}), or x.float() / 127.5 - 1."
            )
        h, w = x.shape[-2:]
        if (h, w) != (size, size):
            raise ValueError(
                f"Images are {h}x{w} but this ViT works at {size}x{size}: resize them with "
                f"pali3_edu.data.collate.images_to_batch(images, {size}), or change the model's "
                f"resolution with vit.set_image_size(n) (n a multiple of the patch size "
                f"{self.cfg.patch_size})."
            )

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch embedding + position embedding: ``(B, C, H, W) -> (B, N, width)``."""
        self._check_input(pixel_values)
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # (B, D, gh, gw)
        x = rearrange(x, "b d gh gw -> b (gh gw) d")
        return self.drop(x + self.position_embedding())

    def forward(self, pixel_values: torch.Tensor) -> ViTOutput:
        tokens = self.encoder(self.embed(pixel_values))
        if self.cfg.pool == "map":
            pooled = self.head(tokens)
        elif self.cfg.pool == "gap":
            pooled = tokens.mean(dim=1)
        else:
            pooled = None
        return ViTOutput(tokens=tokens, pooled=pooled)


__all__ = [
    "MAPHead",
    "ResizeMethod",
    "ViT",
    "ViTAttention",
    "ViTBlock",
    "ViTEncoder",
    "ViTMLP",
    "ViTOutput",
    "init_transformer_weights",
    "lecun_normal_",
    "patchify",
    "resize_posemb",
    "sincos_2d_posemb",
    "square_grid",
]
