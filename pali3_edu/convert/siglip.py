"""Load Hugging Face ``transformers`` SigLIP weights into the course's :class:`~pali3_edu.siglip.SigLIP`.

Offline (tests) the ``transformers`` model is built from a small config with random weights; on a
machine with internet the same functions take a pretrained model::

    from transformers import SiglipModel
    hf = SiglipModel.from_pretrained("google/siglip-base-patch16-224")
    model = siglip_from_hf(hf)            # course SigLIP, same logits as hf(...)
    vit = vit_from_hf(hf.vision_model)    # or a SiglipVisionModel: the image tower alone

The architectures match one to one (no CLS token, tanh-GELU, LN eps from the config, MAP head,
last-token text pooling, a Linear text head, no image projection). Name mapping:

==============================================  ===============================
transformers                                     course
==============================================  ===============================
embeddings.patch_embedding                       patch_embed
embeddings.position_embedding.weight (N, D)      posemb (1, N, D)
encoder.layers.i.layer_norm1 / layer_norm2       encoder.blocks.i.ln1 / ln2
encoder.layers.i.self_attn.{q,k,v,out}_proj      encoder.blocks.i.attn.{q,k,v,out}
encoder.layers.i.mlp.fc1 / fc2                   encoder.blocks.i.mlp.fc1 / fc2
post_layernorm (vision) / final_layer_norm       encoder.norm
head.probe / head.layernorm / head.mlp           head.probe / head.norm / head.mlp
head.attention.in_proj_{weight,bias} (3D, D)     head.attn.{q,k,v} (split in three)
head.attention.out_proj                          head.attn.out
text embeddings.token_embedding                  text.token_embed
text head                                        text.head
logit_scale, logit_bias (1,)                     t_prime, bias (0-d)
==============================================  ===============================
"""

from __future__ import annotations

import re
from typing import Any

import torch

from pali3_edu.config import SigLIPConfig, TextConfig, ViTConfig
from pali3_edu.siglip import SigLIP
from pali3_edu.vit import ResizeMethod, ViT

_TANH_GELUS = {"gelu_pytorch_tanh", "gelu_new", "gelu_fast"}  # all tanh-approximate GELU


def _check_act(cfg: Any) -> None:
    if cfg.hidden_act not in _TANH_GELUS:
        raise NotImplementedError(
            f"hidden_act={cfg.hidden_act!r}: the course model uses tanh-approximate GELU "
            f"(SigLIP's choice); supported transformers names: {sorted(_TANH_GELUS)}."
        )
    if getattr(cfg, "attention_dropout", 0.0):
        raise NotImplementedError("attention_dropout > 0 is not supported by the course model.")


def _square(v: Any) -> int:
    if isinstance(v, (list, tuple)):
        if len(set(v)) != 1:
            raise NotImplementedError(f"Only square image/patch sizes are supported, got {v}")
        return int(v[0])
    return int(v)


def vit_config_from_hf(cfg: Any, posemb_resize: ResizeMethod = "bilinear") -> ViTConfig:
    """A :class:`ViTConfig` from a ``SiglipVisionConfig``.

    ``posemb_resize`` is how :meth:`ViT.set_image_size` will resize the position grid:
    ``"bilinear"`` (big_vision, the course's default) or ``"bicubic"`` (what ``transformers``
    does with ``interpolate_pos_encoding=True``).
    """
    _check_act(cfg)
    return ViTConfig(
        image_size=_square(cfg.image_size), patch_size=_square(cfg.patch_size), channels=cfg.num_channels,
        width=cfg.hidden_size, depth=cfg.num_hidden_layers, mlp_dim=cfg.intermediate_size,
        heads=cfg.num_attention_heads, posemb="learn", posemb_resize=posemb_resize,
        pool="map" if getattr(cfg, "vision_use_head", True) else "none",
        layer_norm_eps=cfg.layer_norm_eps,
    )


def _encoder_key(rest: str) -> str:
    """Rename one ``encoder.layers.i....`` key (without the prefix) to the course's names."""
    rest = re.sub(r"^layers\.(\d+)\.", r"blocks.\1.", rest)
    for old, new in (("layer_norm1", "ln1"), ("layer_norm2", "ln2"), ("self_attn.q_proj", "attn.q"),
                     ("self_attn.k_proj", "attn.k"), ("self_attn.v_proj", "attn.v"),
                     ("self_attn.out_proj", "attn.out")):
        rest = rest.replace(old, new)
    return rest


def _vision_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue
        if key.startswith("embeddings.patch_embedding."):
            out["patch_embed." + key.rsplit(".", 1)[1]] = value
        elif key == "embeddings.position_embedding.weight":
            out["posemb"] = value[None]
        elif key.startswith("encoder."):
            out["encoder." + _encoder_key(key[len("encoder."):])] = value
        elif key.startswith("post_layernorm."):
            out["encoder.norm." + key.rsplit(".", 1)[1]] = value
        elif key == "head.probe":
            out["head.probe"] = value
        elif key.startswith("head.attention.in_proj_"):
            kind = key.rsplit("_", 1)[1]  # weight | bias
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"head.attn.{name}.{kind}"] = part
        elif key.startswith("head.attention.out_proj."):
            out["head.attn.out." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("head.layernorm."):
            out["head.norm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("head.mlp."):
            out[key] = value
        else:
            raise KeyError(f"Unexpected transformers vision weight {key!r}")
    return out


def _text_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue
        if key == "embeddings.token_embedding.weight":
            out["token_embed.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["posemb"] = value[None]
        elif key.startswith("encoder."):
            out["encoder." + _encoder_key(key[len("encoder."):])] = value
        elif key.startswith("final_layer_norm."):
            out["encoder.norm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("head."):
            out[key] = value
        else:
            raise KeyError(f"Unexpected transformers text weight {key!r}")
    return out


def _inner(model: Any, attr: str) -> Any:
    """``SiglipVisionModel`` / ``SiglipTextModel`` wrap the transformer in ``.vision_model`` / ``.text_model``
    in some ``transformers`` versions; accept either."""
    inner = getattr(model, attr, None)
    return inner if isinstance(inner, torch.nn.Module) else model


def vit_from_hf(hf_vision_model: Any, posemb_resize: ResizeMethod = "bilinear") -> ViT:
    """A course :class:`ViT` with the weights of a ``transformers`` ``SiglipVisionModel``.

    ``vit(x).tokens`` equals the HF ``last_hidden_state`` (after ``post_layernorm``),
    ``vit(x).pooled`` its ``pooler_output`` (MAP head). For another resolution call
    ``vit.set_image_size(n)``; with ``posemb_resize="bicubic"`` the result equals HF's
    ``interpolate_pos_encoding=True`` at that size.
    """
    inner = _inner(hf_vision_model, "vision_model")
    vit = ViT(vit_config_from_hf(hf_vision_model.config, posemb_resize))
    vit.load_state_dict(_vision_state(inner.state_dict()), strict=True)
    return vit.to(next(inner.parameters()).dtype)


def siglip_from_hf(hf_model: Any, posemb_resize: ResizeMethod = "bilinear") -> SigLIP:
    """A course :class:`SigLIP` with the weights of a ``transformers`` ``SiglipModel``.

    ``posemb_resize``: how ``model.vision.set_image_size`` resizes the position grid (see
    :func:`vit_config_from_hf`).

    Works on a randomly initialised model built from a config (tests) and on
    ``SiglipModel.from_pretrained("google/siglip-base-patch16-224")`` (needs internet).
    Text input must be padded to ``max_len`` with the tokenizer's pad/EOS id as in HF
    (``padding="max_length"``); no attention mask is used, as in SigLIP.
    """
    tc, vc = hf_model.config.text_config, hf_model.config.vision_config
    _check_act(tc)
    vision = vit_config_from_hf(vc, posemb_resize)
    if vision.pool != "map":
        raise NotImplementedError("SiglipModel without a vision head (vision_use_head=False) has no image embedding.")
    text = TextConfig(
        vocab_size=tc.vocab_size, max_len=tc.max_position_embeddings, width=tc.hidden_size,
        depth=tc.num_hidden_layers, mlp_dim=tc.intermediate_size, heads=tc.num_attention_heads,
        layer_norm_eps=tc.layer_norm_eps,
    )
    embed_dim = getattr(tc, "projection_size", None) or tc.hidden_size
    if embed_dim != vision.width:
        raise ValueError(f"text projection_size {embed_dim} must equal the vision width {vision.width} "
                         "(SigLIP has no image projection).")
    model = SigLIP(SigLIPConfig(vision=vision, text=text, embed_dim=embed_dim))
    vision_sd = _inner(hf_model.vision_model, "vision_model").state_dict()
    state = {"vision." + k: v for k, v in _vision_state(vision_sd).items()}
    state |= {"text." + k: v for k, v in _text_state(_inner(hf_model.text_model, "text_model").state_dict()).items()}
    state["t_prime"] = hf_model.logit_scale.detach().reshape(())
    state["bias"] = hf_model.logit_bias.detach().reshape(())
    model.load_state_dict(state, strict=True)
    return model.to(hf_model.logit_scale.dtype)
