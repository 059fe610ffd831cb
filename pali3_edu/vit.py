"""Vision transformer: the SigLIP image tower (and PaLI-3's image encoder).

Data flow, in the order the modules below appear::

    pixels (B, 3, H, W) in [-1, 1]
      └─ patch embedding: conv, kernel = stride = patch  ─► (B, N, D)   N = (H/p)·(W/p)
      └─ + position embedding (learned, or fixed sincos-2D) ─► (B, N, D)
      └─ depth × pre-LN block: x + MHA(LN(x)); x + MLP(LN(x))
      └─ final LayerNorm                                   ─► patch tokens (B, N, D)  (PaLI-3 uses these)
      └─ head: MAP (learned probe attends to the tokens) | "gap" (mean) | "none"
                                                           ─► pooled (B, D)           (SigLIP uses this)

Paper facts followed here (``shared/REFERENCE_FACTS.md``): no CLS token; LayerNorm eps 1e-6;
tanh-approximate GELU; attention with biases and 1/√head_dim scaling; learned position embedding
initialised N(0, 1/√width).

**Other image sizes.** Any ``H, W`` divisible by the patch size works: a learned position grid is
resized on the fly (bilinear, as big_vision does; set ``vit.posemb_resize = "bicubic"`` for
``transformers``' choice), a sincos grid is recomputed. To change the resolution for good (PaLI-3
stage 2), call :meth:`ViT.set_image_size`, which resizes the learned parameter once.
"""

from __future__ import annotations

import dataclasses
import math
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


def sincos_2d_posemb(grid_h: int, grid_w: int, width: int, temperature: float = 10_000.0) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, ``(1, grid_h·grid_w, width)``.

    A quarter of the channels each hold sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω) for
    ``width/4`` frequencies ω from 1 down to 1/temperature (big_vision's ``posemb_sincos_2d``).
    """
    if width % 4:
        raise ValueError(f"sincos-2D position embedding needs width divisible by 4, got {width}.")
    quarter = width // 4
    omega = torch.arange(quarter, dtype=torch.float32) / max(quarter - 1, 1)
    omega = 1.0 / temperature**omega  # (quarter,)
    y, x = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float32), torch.arange(grid_w, dtype=torch.float32), indexing="ij"
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
# Transformer building blocks (shared with the SigLIP text tower)
# ----------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention with biases; self-attention, or cross-attention when ``context`` is given.

    ``x``: ``(batch, queries, width)``, ``context``: ``(batch, keys, width)`` → ``(batch, queries, width)``.
    Scores are scaled by 1/√head_dim (SDPA's default).
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

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (rearrange(f(t), "b n (h d) -> b h n d", h=self.heads)
                   for f, t in ((self.q, x), (self.k, context), (self.v, context)))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(rearrange(y, "b h n d -> b n (h d)"))


class MLP(nn.Module):
    """Dense → tanh-approximate GELU → Dense: ``(..., width) -> (..., width)``."""

    def __init__(self, width: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + MHA(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(self, width: int, mlp_dim: int, heads: int, eps: float = 1e-6, dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask=mask))
        return x + self.drop(self.mlp(self.ln2(x)))


class Encoder(nn.Module):
    """``depth`` pre-LN blocks and a final LayerNorm: ``(batch, seq, width) -> (batch, seq, width)``."""

    def __init__(self, width: int, depth: int, mlp_dim: int, heads: int, eps: float = 1e-6,
                 dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, mlp_dim, heads, eps, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
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
        nn.init.xavier_uniform_(self.probe)
        self.attn = Attention(width, heads)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        x = self.attn(probe, context=tokens)  # (B, 1, D)
        x = x + self.mlp(self.norm(x))
        return x[:, 0]


def init_transformer_weights(module: nn.Module) -> None:
    """big_vision-style init: Dense kernels Xavier-uniform, attention biases 0, MLP biases N(0, 1e-6)."""
    for m in module.modules():
        if isinstance(m, Attention):
            for lin in (m.q, m.k, m.v, m.out):
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)
        elif isinstance(m, MLP):
            for lin in (m.fc1, m.fc2):
                nn.init.xavier_uniform_(lin.weight)
                nn.init.normal_(lin.bias, std=1e-6)


def lecun_normal_(weight: torch.Tensor) -> None:
    """Truncated-free LeCun normal: std = 1/√fan_in (flax's default for Dense and Conv)."""
    fan_in = weight[0].numel()
    nn.init.normal_(weight, std=fan_in**-0.5)


# ----------------------------------------------------------------------------------------------
# The vision transformer
# ----------------------------------------------------------------------------------------------


class ViT(nn.Module):
    """SigLIP-style vision transformer.

    ``forward(pixel_values)`` with ``pixel_values`` ``(batch, channels, H, W)`` float in [-1, 1]
    returns ``(patch_tokens, pooled)``: ``(batch, N, width)`` after the final LayerNorm, and
    ``(batch, width)`` from the head (``None`` when ``cfg.pool == "none"``).
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} must be divisible by patch_size {cfg.patch_size}")
        if cfg.pool not in ("map", "gap", "none"):
            raise ValueError(f"pool must be 'map', 'gap' or 'none', got {cfg.pool!r}")
        self.cfg = cfg
        self.posemb_resize: ResizeMethod = "bilinear"
        self.patch_embed = nn.Conv2d(cfg.channels, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        g = cfg.grid_size
        if cfg.posemb == "learn":
            self.posemb = nn.Parameter(torch.randn(1, g * g, cfg.width) * cfg.width**-0.5)
        elif cfg.posemb == "sincos2d":
            self.register_buffer("posemb", sincos_2d_posemb(g, g, cfg.width), persistent=False)
        else:
            raise ValueError(f"posemb must be 'learn' or 'sincos2d', got {cfg.posemb!r}")
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = Encoder(cfg.width, cfg.depth, cfg.mlp_dim, cfg.heads, cfg.layer_norm_eps, cfg.dropout)
        self.head = MAPHead(cfg.width, cfg.mlp_dim, cfg.heads, cfg.layer_norm_eps) if cfg.pool == "map" else None
        init_transformer_weights(self)
        lecun_normal_(self.patch_embed.weight)
        nn.init.zeros_(self.patch_embed.bias)

    # -- position embedding for any grid
    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """``(1, grid_h·grid_w, width)`` for the given patch grid (resized or recomputed if needed)."""
        g = self.cfg.grid_size
        if (grid_h, grid_w) == (g, g):
            return self.posemb
        if self.cfg.posemb == "sincos2d":
            return sincos_2d_posemb(grid_h, grid_w, self.cfg.width).to(self.posemb)
        return resize_posemb(self.posemb, (grid_h, grid_w), self.posemb_resize)

    def set_image_size(self, image_size: int, method: ResizeMethod = "bilinear") -> None:
        """Change the native resolution for good (PaLI-3 stage 2): resize the learned grid once."""
        if image_size % self.cfg.patch_size:
            raise ValueError(f"image_size {image_size} must be divisible by patch_size {self.cfg.patch_size}")
        g = image_size // self.cfg.patch_size
        with torch.no_grad():
            if self.cfg.posemb == "learn":
                self.posemb = nn.Parameter(resize_posemb(self.posemb.data, g, method))
            else:
                self.posemb = sincos_2d_posemb(g, g, self.cfg.width).to(self.posemb)
        self.cfg = dataclasses.replace(self.cfg, image_size=image_size)

    def _check_input(self, x: torch.Tensor) -> None:
        c, p = self.cfg.channels, self.cfg.patch_size
        if x.ndim != 4:
            raise ValueError(
                f"pixel_values must be (batch, {c}, H, W); got shape {tuple(x.shape)}. "
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
                "Use pali3_edu.data.collate.images_to_batch, or x.float() / 127.5 - 1."
            )
        h, w = x.shape[-2:]
        if h % p or w % p:
            raise ValueError(
                f"Image size {h}x{w} is not divisible by the patch size {p}: resize to a multiple of {p} "
                f"(the model was built for {self.cfg.image_size}x{self.cfg.image_size})."
            )

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch embedding + position embedding: ``(B, C, H, W) -> (B, N, width)``."""
        self._check_input(pixel_values)
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # (B, D, gh, gw)
        gh, gw = x.shape[-2:]
        x = rearrange(x, "b d gh gw -> b (gh gw) d")
        return self.drop(x + self.position_embedding(gh, gw))

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens = self.encoder(self.embed(pixel_values))
        if self.cfg.pool == "map":
            pooled = self.head(tokens)
        elif self.cfg.pool == "gap":
            pooled = tokens.mean(dim=1)
        else:
            pooled = None
        return tokens, pooled
