"""Model configurations as dataclasses, with named presets.

Every model in the course is built from one of these dataclasses. Presets have short names:
``tiny-cpu`` sizes train in minutes on a laptop CPU (the notebooks and tests use them), the
paper-sized presets (``B/16``, ``So400m/14``, ``t5-v1_1-base`` ...) describe the real models.

>>> cfg = get_config("siglip", "tiny-cpu")
>>> cfg.vision.width
128
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")


@dataclass
class ViTConfig:
    """Vision transformer (SigLIP image tower). Shapes follow big_vision's naming.

    - ``image_size``: the native resolution (square images); a multiple of ``patch_size``.
    - ``posemb``: ``"learn"`` (a learned ``(1, patches, width)`` grid, SigLIP) or ``"sincos2d"``
      (fixed 2-D sine-cosine, recomputed for any grid).
    - ``posemb_resize``: how :meth:`pali3_edu.vit.ViT.set_image_size` resizes a learned grid for
      a new resolution: ``"bilinear"`` (big_vision) or ``"bicubic"`` (``transformers``'
      ``interpolate_pos_encoding``).
    - ``pool``: ``"map"`` (attention pooling, SigLIP), ``"gap"`` (mean) or ``"none"`` (PaLI-3
      uses the patch tokens only).

    Invalid values raise ``ValueError`` when the config is built (also through
    ``dataclasses.replace``).
    """

    image_size: int = 64
    patch_size: int = 8
    channels: int = 3
    width: int = 128
    depth: int = 4
    mlp_dim: int = 512
    heads: int = 4
    posemb: Literal["learn", "sincos2d"] = "learn"
    posemb_resize: Literal["bilinear", "bicubic"] = "bilinear"
    pool: Literal["map", "gap", "none"] = "map"
    layer_norm_eps: float = 1e-6
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "channels", "width", "depth", "mlp_dim", "heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"ViTConfig.{name} must be a positive int, got {value!r}.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ViTConfig: image_size {self.image_size} is not divisible by patch_size "
                f"{self.patch_size}; pick an image size that is a multiple of {self.patch_size} "
                f"(e.g. {max(1, round(self.image_size / self.patch_size)) * self.patch_size})."
            )
        if self.width % self.heads:
            raise ValueError(f"ViTConfig: width {self.width} must be divisible by heads {self.heads}.")
        _check_choice("ViTConfig.posemb", self.posemb, ("learn", "sincos2d"))
        _check_choice("ViTConfig.posemb_resize", self.posemb_resize, ("bilinear", "bicubic"))
        _check_choice("ViTConfig.pool", self.pool, ("map", "gap", "none"))

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


@dataclass
class TextConfig:
    """SigLIP text tower: bidirectional pre-LN transformer, pooled at the last (EOS) token."""

    vocab_size: int = 1792
    max_len: int = 24
    width: int = 128
    depth: int = 3
    mlp_dim: int = 512
    heads: int = 4
    layer_norm_eps: float = 1e-6
    dropout: float = 0.0


@dataclass
class SigLIPConfig:
    """Two towers, a shared embedding size, and the loss's temperature and bias at init."""

    vision: ViTConfig = field(default_factory=ViTConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 128
    t_prime_init: float = math.log(10.0)  # t = exp(t') = 10 at init (SigLIP paper)
    bias_init: float = -10.0


@dataclass
class EncDecConfig:
    """T5 v1.1 / UL2 encoder-decoder (names follow Hugging Face's ``T5Config``)."""

    vocab_size: int = 1792
    d_model: int = 128
    d_kv: int = 32
    d_ff: int = 256
    num_layers: int = 3
    num_decoder_layers: int = 3
    num_heads: int = 4
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.0
    layer_norm_eps: float = 1e-6
    feed_forward_proj: Literal["gated-gelu", "gated-silu", "relu"] = "gated-gelu"
    tie_word_embeddings: bool = False
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    max_input_length: int = 512  # longer inputs get a clear error, not a silent truncation


# --------------------------------------------------------------------------------------------
# Presets. Keys are (family, name). The ViT shapes (width, depth, MLP size, heads) are those of
# big_vision's ViT variants as used by SigLIP ("Sigmoid Loss for Language Image Pre-Training",
# Zhai et al. 2023; So400m from "Getting ViT in Shape", Alabdulmohsin et al. 2023; G/14 from
# "Scaling Vision Transformers", Zhai et al. 2022). The encoder-decoder sizes are Google's T5 v1.1
# checkpoints and UL2 20B ("UL2: Unifying Language Learning Paradigms", Tay et al. 2022).
# --------------------------------------------------------------------------------------------

_VIT_SHAPES = {  # width, depth, mlp_dim, heads
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "G": (1664, 48, 8192, 16),
    "G-opt": (1536, 48, 8192, 16),
}


def vit_variant(variant: str, image_size: int = 224, **overrides: Any) -> ViTConfig:
    """A ViT config from a big_vision-style variant string such as ``"B/16"`` or ``"So400m/14"``."""
    try:
        name, patch = variant.split("/")
        width, depth, mlp_dim, heads = _VIT_SHAPES[name]
    except (ValueError, KeyError):
        raise ValueError(
            f"Unknown ViT variant {variant!r}. Use '<shape>/<patch>' with shape in "
            f"{sorted(_VIT_SHAPES)}, e.g. 'B/16'."
        ) from None
    cfg = ViTConfig(
        image_size=image_size, patch_size=int(patch), width=width, depth=depth,
        mlp_dim=mlp_dim, heads=heads,
    )
    return dataclasses.replace(cfg, **overrides)


_T5_SHAPES = {  # d_model, d_ff, layers per stack, heads (d_kv 64, vocab 32128)
    "t5-v1_1-small": (512, 1024, 8, 6),
    "t5-v1_1-base": (768, 2048, 12, 12),
    "t5-v1_1-large": (1024, 2816, 24, 16),
    "t5-v1_1-xl": (2048, 5120, 24, 32),
}


def _presets() -> dict[tuple[str, str], Any]:
    p: dict[tuple[str, str], Any] = {}
    # ---- vision transformer alone
    p["vit", "tiny-cpu"] = ViTConfig()
    for v in ("B/16", "L/16", "So400m/14", "G/14"):
        p["vit", v] = vit_variant(v)
    # ---- SigLIP two-tower models
    p["siglip", "tiny-cpu"] = SigLIPConfig()
    p["siglip", "small"] = SigLIPConfig(
        vision=ViTConfig(image_size=128, patch_size=16, width=384, depth=6, mlp_dim=1536, heads=6),
        text=TextConfig(width=384, depth=6, mlp_dim=1536, heads=6, max_len=32),
        embed_dim=384,
    )
    p["siglip", "B/16"] = SigLIPConfig(
        vision=vit_variant("B/16"),
        text=TextConfig(vocab_size=32000, max_len=64, width=768, depth=12, mlp_dim=3072, heads=12),
        embed_dim=768,
    )
    # ---- encoder-decoders
    p["encdec", "tiny-cpu"] = EncDecConfig()
    p["encdec", "small"] = EncDecConfig(
        d_model=384, d_kv=64, d_ff=1024, num_layers=6, num_decoder_layers=6, num_heads=6
    )
    for name, (d_model, d_ff, layers, heads) in _T5_SHAPES.items():
        p["encdec", name] = EncDecConfig(
            vocab_size=32128, d_model=d_model, d_kv=64, d_ff=d_ff, num_layers=layers,
            num_decoder_layers=layers, num_heads=heads,
        )
    p["encdec", "ul2-20b"] = EncDecConfig(
        vocab_size=32128, d_model=4096, d_kv=256, d_ff=16384, num_layers=32,
        num_decoder_layers=32, num_heads=16, feed_forward_proj="gated-silu",
    )
    return p


PRESETS = _presets()


def list_presets(family: str | None = None) -> list[str]:
    """Preset names, optionally only those of one family (``vit``, ``siglip``, ``encdec``)."""
    return sorted(f"{f}:{n}" for f, n in PRESETS if family is None or f == family)


def get_config(family: str, name: str = "tiny-cpu", **overrides: Any) -> Any:
    """A fresh copy of a preset, with top-level fields replaced by ``overrides``."""
    try:
        cfg = PRESETS[family, name]
    except KeyError:
        raise ValueError(
            f"No preset {family!r}:{name!r}. Available: {', '.join(list_presets())}"
        ) from None
    return dataclasses.replace(cfg, **overrides)
