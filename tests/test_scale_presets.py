"""The ``8xh100`` preset (one node of eight H100s, FSDP, bf16, the large model) and the single-GPU
presets it must leave exactly as they were (:mod:`pali3_edu.recipes.scale`).

Models are built on PyTorch's ``meta`` device: shapes only, no memory, so a 1-billion-parameter
PaLI-3 costs the test nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io

import pytest
import torch

from pali3_edu.config import SigLIPConfig, TextConfig, get_config
from pali3_edu.pali3 import PaLI3Config
from pali3_edu.recipes import scale
from pali3_edu.recipes.base import get_recipe, get_stage
from pali3_edu.recipes.scale import STAGE_ORDER, TIERS, Tier
from pali3_edu.run import main, resolve_recipes
from pali3_edu.train import TrainConfig

SINGLE_GPU = ("colab-t4", "l4-a100", "h100")


def _model_on_meta(recipe):
    spec = get_stage(recipe.stage)
    if spec.tokenizer is not None:
        tokenizer = spec.tokenizer(recipe)
    else:
        from pali3_edu.tokenizer import course_tokenizer
        tokenizer = course_tokenizer()
    with torch.device("meta"):
        model = spec.build_model(recipe, tokenizer)
    assert all(p.device.type == "meta" for p in model.parameters())
    return model


def _global_batch(recipe) -> int:
    data = recipe.data
    return data.mix.batch_size if hasattr(data, "mix") else data.batch_size


# ---------------------------------------------------------------------------------------------
# 8xh100
# ---------------------------------------------------------------------------------------------


def test_8xh100_is_registered_for_every_stage_with_fsdp_and_bf16():
    assert "8xh100" in scale.SCALE_PRESETS and "8xh100" in TIERS
    for stage in STAGE_ORDER:
        recipe = get_recipe(stage, "8xh100")
        assert recipe.preset == "8xh100"
        assert recipe.train.parallel == "fsdp" and recipe.train.amp_dtype == "bf16"
        assert all(preset == "8xh100" for _, preset in recipe.upstream.values()), recipe.upstream
    assert TIERS["8xh100"].gpus == 8 and TIERS["8xh100"].size == "large"


def test_8xh100_refuses_fp16_because_fsdp_does():
    with pytest.raises(ValueError, match="fsdp"):
        get_recipe("ul2", "8xh100", **{"train.amp_dtype": "fp16"})


def test_8xh100_configs_are_vit_l16_and_t5_large_joined_by_pali3():
    r = {stage: get_recipe(stage, "8xh100") for stage in STAGE_ORDER}
    vit_l16, t5_large = get_config("vit", "L/16"), get_config("encdec", "t5-v1_1-large")
    assert r["siglip"].model.vision == vit_l16 and vit_l16.width == 1024 and vit_l16.image_size == 224
    assert r["siglip"].model.text.width == r["siglip"].model.embed_dim == 1024
    for field in ("d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads"):
        assert getattr(r["ul2"].model, field) == getattr(t5_large, field), field
    stage1 = r["pali3-stage1"]  # loads SigLIP's ViT (without its head) and UL2's encoder-decoder
    assert stage1.model.vision == dataclasses.replace(r["siglip"].model.vision, pool="none")
    assert stage1.model.text == r["ul2"].model
    assert stage1.upstream == {"vision": ("siglip", "8xh100"), "text": ("ul2", "8xh100")}
    assert r["pali3-stage2"].upstream == {"previous": ("pali3-stage1", "8xh100")}
    assert r["pali3-transfer"].upstream == {"previous": ("pali3-stage2", "8xh100")}
    for stage in ("pali3-stage2", "pali3-transfer"):  # 448 px: 784 visual tokens + the prompt fit
        cfg = r[stage].model
        assert cfg.vision.image_size == 448
        assert cfg.vision.num_patches + cfg.max_prompt_len <= cfg.text.max_input_length
    # streamed like the other GPU presets
    assert all(isinstance(r[s].data, scale.StreamedPaLI3Data) for s in ("pali3-stage1", "pali3-stage2",
                                                                      "pali3-transfer"))


def test_8xh100_models_counted_on_meta_are_the_large_size():
    counts = {}
    for stage in STAGE_ORDER:
        model = _model_on_meta(get_recipe(stage, "8xh100"))
        counts[stage] = sum(p.numel() for p in model.parameters())
        if stage == "siglip":
            vit, text = model.vision, model.text
            assert vit.patch_embed.weight.shape[0] == 1024 and len(vit.encoder.blocks) == 24
            assert text.token_embed.weight.shape[1] == 1024 and len(text.encoder.blocks) == 24
        else:
            encdec = model if stage == "ul2" else model.encdec
            assert encdec.embed_tokens.weight.shape[1] == 1024
            assert len(encdec.encoder.layers) == len(encdec.decoder.layers) == 24
        if stage.startswith("pali3"):
            assert model.vit.patch_embed.weight.shape[0] == 1024 and len(model.vit.encoder.blocks) == 24
    # ViT-L/16 is about 300 M parameters, T5-v1.1-large about 720 M with the course vocabulary
    assert 0.95e9 < counts["pali3-stage1"] < 1.1e9, counts
    base = sum(p.numel() for p in _model_on_meta(get_recipe("pali3-stage1", "h100")).parameters())
    assert counts["pali3-stage1"] > 3 * base


def test_8xh100_batches_are_global_and_split_evenly_over_eight_gpus():
    tier = TIERS["8xh100"]
    for stage in STAGE_ORDER:
        big, one = get_recipe(stage, "8xh100"), get_recipe(stage, "h100")
        batch = _global_batch(big)
        assert batch % tier.gpus == 0, stage
        # at least as many examples per optimizer step as one H100 trains
        assert batch * big.train.grad_accum >= _global_batch(one) * one.train.grad_accum, stage


def test_8xh100_chains_like_the_command_line_does():
    recipes = resolve_recipes(STAGE_ORDER, "8xh100", lambda stage, recipe: {})
    assert [r.stage for r in recipes] == list(STAGE_ORDER)
    assert all(r.preset == "8xh100" for r in recipes)
    assert all(r.fingerprint() == get_recipe(r.stage, "8xh100").fingerprint() for r in recipes)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--list"]) == 0
    rows = {line.split()[0]: line for line in out.getvalue().splitlines()[1:] if line.strip()}
    for stage in STAGE_ORDER:
        assert "8xh100" in rows[stage], rows[stage]


# ---------------------------------------------------------------------------------------------
# Tier: the faults it guards against
# ---------------------------------------------------------------------------------------------


def _tier(**changes) -> Tier:
    return dataclasses.replace(TIERS["8xh100"], **changes)


@pytest.mark.parametrize("changes, message", [
    ({"stage1_batch": (252, 1)}, "stage1_batch: the global micro-batch 252 does not divide by gpus=8"),
    ({"siglip_batch": 1020}, "siglip_batch"),
    ({"parallel": "none"}, "several GPUs need parallel='ddp' or 'fsdp'"),
    ({"gpus": 1}, "one GPU parallel='none'"),
    ({"gpus": 0, "parallel": "none"}, "at least 1"),
    ({"size": "huge"}, "Unknown model size 'huge'; sizes: base, large"),
])
def test_tier_refuses_settings_that_cannot_run(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        _tier(**changes)


# ---------------------------------------------------------------------------------------------
# The single-GPU presets are exactly what they were
# ---------------------------------------------------------------------------------------------


def _old_base_model(stage: str):
    """The base-size configs as the GPU presets built them before model sizes became a tier
    setting (literal, not through MODEL_SIZES)."""
    siglip = SigLIPConfig(
        vision=get_config("vit", "B/16"),
        text=TextConfig(vocab_size=1792, max_len=32, width=768, depth=12, mlp_dim=3072, heads=12),
        embed_dim=768,
    )
    t5 = get_config("encdec", "t5-v1_1-base", max_input_length=1024)
    if stage == "siglip":
        return siglip
    if stage == "ul2":
        return t5
    size = 224 if stage == "pali3-stage1" else 448
    vision = dataclasses.replace(siglip.vision, pool="none", image_size=size)
    return PaLI3Config(vision=vision, text=t5, max_prompt_len=24, max_answer_len=40, visual_posemb="sincos2d")


@pytest.mark.parametrize("preset", SINGLE_GPU)
def test_single_gpu_presets_keep_their_recipes_and_fingerprints(preset):
    tier = TIERS[preset]
    assert (tier.size, tier.gpus, tier.parallel) == ("base", 1, "none")
    for stage in STAGE_ORDER:
        recipe = get_recipe(stage, preset)
        assert recipe.model == _old_base_model(stage), stage
        # the training settings the old presets had: one process, TrainConfig's default parallel
        assert recipe.train.parallel == TrainConfig().parallel == "none"
        old = dataclasses.replace(recipe, model=_old_base_model(stage),
                                  train=dataclasses.replace(recipe.train, parallel="none"))
        assert old.to_dict() == recipe.to_dict() and old.fingerprint() == recipe.fingerprint(), stage


def test_base_size_helpers_are_unchanged():
    assert scale.siglip_b16() == _old_base_model("siglip") == scale.siglip_config("base")
    assert scale.t5_base() == _old_base_model("ul2") == scale.t5_config("base")
    assert scale.pali3_base(448) == _old_base_model("pali3-stage2") == scale.pali3_config("base", 448)
    assert scale.pali3_base() == _old_base_model("pali3-stage1")
