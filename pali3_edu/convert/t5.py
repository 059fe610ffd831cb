"""Import a Hugging Face ``T5ForConditionalGeneration`` into :class:`pali3_edu.encdec.EncoderDecoder`.

Offline (tests, lesson 06) the ``transformers`` model is built from a small ``T5Config`` with
random weights. Online, the same function loads real checkpoints::

    from transformers import T5ForConditionalGeneration
    from pali3_edu.convert import t5_from_hf

    model = t5_from_hf(T5ForConditionalGeneration.from_pretrained("google/t5-v1_1-base"))
    # also "google/flan-t5-base" (same architecture, instruction-tuned) or "google/ul2"
    # (20B, gated-SiLU, 16 heads × 256: about 80 GB in fp32, load it with torch_dtype=torch.bfloat16)

Caveat (transformers 5.x): its ``T5Config`` always sets ``tie_word_embeddings=True`` and keeps
``lm_head`` tied to ``shared`` in memory, recording the T5 v1.0 "scale before the tied head" in
``config.scale_decoder_outputs`` instead. The converter reads that flag, and copies
``lm_head.weight`` as it finds it; for a v1.1 checkpoint check that
``hf_model.lm_head.weight is not hf_model.shared.weight`` (or load ``lm_head.weight`` from the
checkpoint file) before trusting the untied head. The tests give the HF model its own head.

Name mapping (HF → course)::

    shared                                        → embed_tokens
    {encoder,decoder}.block.0.layer.0.SelfAttention.relative_attention_bias
                                                  → {encoder,decoder}.relative_bias.table
    encoder.block.i.layer.0.layer_norm            → encoder.layers.i.self_attn_norm
    encoder.block.i.layer.0.SelfAttention.{q,k,v,o} → encoder.layers.i.self_attn.{q,k,v,o}
    encoder.block.i.layer.1.layer_norm / .DenseReluDense.{wi_0,wi_1,wi,wo}
                                                  → encoder.layers.i.ff_norm / .ff.{...}
    decoder.block.i.layer.{0,1,2}                 → self_attn*, cross_attn* (EncDecAttention), ff*
    {encoder,decoder}.final_layer_norm            → {encoder,decoder}.final_norm
    lm_head                                       → lm_head (untied models only)
"""

from __future__ import annotations

from typing import Any

import torch

from pali3_edu.config import EncDecConfig
from pali3_edu.encdec import EncoderDecoder


def config_from_hf(hf_config: Any, max_input_length: int = 512) -> EncDecConfig:
    """An :class:`EncDecConfig` with the shape of a ``transformers`` ``T5Config``."""
    kind = hf_config.feed_forward_proj
    if kind not in ("gated-gelu", "gated-silu", "relu"):
        raise ValueError(
            f"feed_forward_proj={kind!r} is not supported: the course model has 'gated-gelu', "
            "'gated-silu' and 'relu'."
        )
    # transformers >= 5 always ties the head in memory and records "scale the decoder output"
    # (the T5 v1.0 behaviour) in `scale_decoder_outputs`; older versions use tie_word_embeddings.
    tied = getattr(hf_config, "scale_decoder_outputs", hf_config.tie_word_embeddings)
    start = getattr(hf_config, "decoder_start_token_id", None)  # T5 starts from pad (= 0)
    return EncDecConfig(
        vocab_size=hf_config.vocab_size,
        d_model=hf_config.d_model,
        d_kv=hf_config.d_kv,
        d_ff=hf_config.d_ff,
        num_layers=hf_config.num_layers,
        num_decoder_layers=hf_config.num_decoder_layers,
        num_heads=hf_config.num_heads,
        relative_attention_num_buckets=hf_config.relative_attention_num_buckets,
        relative_attention_max_distance=hf_config.relative_attention_max_distance,
        dropout_rate=hf_config.dropout_rate,
        layer_norm_eps=hf_config.layer_norm_epsilon,
        feed_forward_proj=kind,
        tie_word_embeddings=bool(tied),
        pad_token_id=hf_config.pad_token_id,
        eos_token_id=hf_config.eos_token_id,
        decoder_start_token_id=start if start is not None else hf_config.pad_token_id,
        max_input_length=max_input_length,
    )


def _ff_names(gated: bool) -> list[str]:
    return ["wi_0", "wi_1", "wo"] if gated else ["wi", "wo"]


def hf_to_course_names(cfg: EncDecConfig) -> dict[str, str]:
    """``{hf_parameter_name: course_parameter_name}`` for a model of shape ``cfg``."""
    gated = cfg.feed_forward_proj.startswith("gated-")
    m = {"shared.weight": "embed_tokens.weight"}
    if not cfg.tie_word_embeddings:
        m["lm_head.weight"] = "lm_head.weight"
    for stack, n_layers in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
        m[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
            f"{stack}.relative_bias.table.weight"
        )
        m[f"{stack}.final_layer_norm.weight"] = f"{stack}.final_norm.weight"
        for i in range(n_layers):
            hf, ours = f"{stack}.block.{i}.layer", f"{stack}.layers.{i}"
            sub = [("0", "self_attn", "SelfAttention")]
            if stack == "decoder":
                sub.append(("1", "cross_attn", "EncDecAttention"))
            for j, name, hf_name in sub:
                m[f"{hf}.{j}.layer_norm.weight"] = f"{ours}.{name}_norm.weight"
                for p in "qkvo":
                    m[f"{hf}.{j}.{hf_name}.{p}.weight"] = f"{ours}.{name}.{p}.weight"
            ff = "2" if stack == "decoder" else "1"
            m[f"{hf}.{ff}.layer_norm.weight"] = f"{ours}.ff_norm.weight"
            for p in _ff_names(gated):
                m[f"{hf}.{ff}.DenseReluDense.{p}.weight"] = f"{ours}.ff.{p}.weight"
    return m


@torch.no_grad()
def t5_from_hf(hf_model: Any, max_input_length: int = 512) -> EncoderDecoder:
    """A course :class:`EncoderDecoder` with the weights of a ``T5ForConditionalGeneration``.

    Works for T5 v1.1 (``feed_forward_proj="gated-gelu"``, ``tie_word_embeddings=False``),
    Flan-T5, UL2 (``gated-silu``) and T5 v1.0 (``relu``, tied head scaled by ``d_model^-½``).
    The result is in eval mode, on the same device and dtype as ``hf_model``.
    """
    cfg = config_from_hf(hf_model.config, max_input_length=max_input_length)
    model = EncoderDecoder(cfg)
    hf_state = hf_model.state_dict()
    ours = model.state_dict()
    mapping = hf_to_course_names(cfg)
    missing = [name for name in mapping if name not in hf_state]
    if missing:
        raise KeyError(
            f"The Hugging Face model lacks {len(missing)} expected weights, e.g. {missing[:3]}: "
            "is it a T5ForConditionalGeneration?"
        )
    new_state = {}
    for hf_name, our_name in mapping.items():
        src = hf_state[hf_name]
        if src.shape != ours[our_name].shape:
            raise ValueError(f"Shape mismatch {hf_name} {tuple(src.shape)} → {our_name} "
                             f"{tuple(ours[our_name].shape)}")
        new_state[our_name] = src.detach().clone()
    model.load_state_dict(new_state, strict=True)
    param = next(hf_model.parameters())
    return model.to(device=param.device, dtype=param.dtype).eval()


__all__ = ["config_from_hf", "hf_to_course_names", "t5_from_hf"]
