"""Speed paths (``pali3_edu.speed``): each one gives the plain path's loss on CPU.

torch.compile is tested with the ``aot_eager``/``eager`` backends (no code generation: seconds
on a CPU); the ``inductor`` speed-up itself needs a GPU and is measured by
``python -m pali3_edu.bench train``.
"""

from __future__ import annotations

import pytest
import torch

from pali3_edu.config import EncDecConfig, ViTConfig
from pali3_edu.encdec import EncoderDecoder
from pali3_edu.pali3 import PaLI3, PaLI3Config
from pali3_edu.speed import (
    SpeedSettings,
    adamw_kwargs,
    bucket_batch,
    bucket_caps,
    bucket_length,
    compile_available,
    compile_model,
    disable_checkpointing,
    enable_checkpointing,
    pick_amp_dtype,
    pick_fused_adamw,
    speed_stage,
    transformer_blocks,
    use_speed_settings,
)

TOL = dict(rtol=1e-5, atol=1e-6)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _cfg(dropout: float = 0.0, depth: int = 2) -> PaLI3Config:
    return PaLI3Config(
        vision=ViTConfig(image_size=32, patch_size=8, width=32, depth=depth, mlp_dim=64, heads=2, pool="none",
                         dropout=dropout),
        text=EncDecConfig(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=depth,
                          num_decoder_layers=depth, num_heads=4, dropout_rate=dropout),
        max_prompt_len=24, max_answer_len=20)


def _model(dropout: float = 0.0, depth: int = 2) -> PaLI3:
    torch.manual_seed(0)
    return PaLI3(_cfg(dropout, depth))


def _batch(prompt: int = 7, answer: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (3, prompt), generator=g)
    mask = torch.ones(3, prompt, dtype=torch.long)
    mask[1, 4:] = 0
    labels = torch.randint(3, 64, (3, answer), generator=g)
    labels[2, 3:] = -100
    return {"pixel_values": torch.rand(3, 3, 32, 32, generator=g) * 2 - 1, "input_ids": ids,
            "attention_mask": mask, "labels": labels}


def _loss_and_grads(model: torch.nn.Module, batch: dict, seed: int = 1):
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], labels=batch["labels"]).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------------------------------------
# mixed precision and AdamW choosers
# ---------------------------------------------------------------------------------------------


def test_pick_amp_dtype():
    assert pick_amp_dtype("cuda", capability=(7, 5)) == "fp16"  # T4
    assert pick_amp_dtype("cuda", capability=(7, 0)) == "fp16"  # V100
    assert pick_amp_dtype("cuda", capability=(8, 0)) == "bf16"  # A100
    assert pick_amp_dtype("cuda", capability=(8, 9)) == "bf16"  # L4
    assert pick_amp_dtype("cuda", capability=(9, 0)) == "bf16"  # H100
    assert pick_amp_dtype("cpu") == "bf16"
    assert pick_amp_dtype(torch.device("mps")) is None


def test_pick_fused_adamw():
    assert pick_fused_adamw("cuda") and pick_fused_adamw(torch.device("cuda", 1))
    assert not pick_fused_adamw("cpu")
    assert adamw_kwargs("cuda") == {"fused": True}
    assert adamw_kwargs("cpu") == {}
    assert adamw_kwargs("cpu", fused=True) == {"fused": True}


def test_fused_adamw_equals_the_plain_one():
    """PyTorch also has a fused AdamW kernel for CPU: three updates give the same losses.

    (Weights are compared through the loss: parameters whose gradient is rounding noise, such as
    the attention key biases, get updates of ±lr from either kernel, since Adam divides by |g|.)"""
    batch = _batch()
    runs = []
    for kwargs in ({}, {"fused": True}):
        model = _model()
        try:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01, **kwargs)
        except (RuntimeError, ValueError) as err:  # pragma: no cover - builds without the CPU kernel
            pytest.skip(f"fused AdamW is not available on CPU in this PyTorch build: {err}")
        losses = []
        for _ in range(4):
            loss, _ = _loss_and_grads(model, batch)
            opt.step()
            losses.append(float(loss))
        runs.append(losses)
    plain, fused = runs
    assert plain[-1] < plain[0] - 0.05  # the updates do something
    assert fused == pytest.approx(plain, rel=1e-4)


# ---------------------------------------------------------------------------------------------
# activation checkpointing
# ---------------------------------------------------------------------------------------------


def test_checkpointing_gives_the_same_loss_and_gradients_with_dropout():
    plain = _model(dropout=0.1)
    ckpt = _model(dropout=0.1)
    keys = list(ckpt.state_dict())
    assert enable_checkpointing(ckpt) == 2 + 2 + 2  # ViT blocks + encoder + decoder layers
    assert enable_checkpointing(ckpt) == 6  # twice: still wrapped once
    assert list(ckpt.state_dict()) == keys  # names (and checkpoints) unchanged
    batch = _batch()
    loss_a, grads_a = _loss_and_grads(plain, batch)
    loss_b, grads_b = _loss_and_grads(ckpt, batch)
    assert float(loss_a) > 0
    torch.testing.assert_close(loss_a, loss_b, **TOL)  # dropout masks replayed on recompute
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], **TOL, msg=name)
    # another dropout seed changes the loss: the test above compares something that can differ
    loss_c, _ = _loss_and_grads(plain, batch, seed=2)
    assert not torch.allclose(loss_a, loss_c)
    disable_checkpointing(ckpt)
    assert all(not hasattr(b.forward, "__pali3_checkpointed__") for b in transformer_blocks(ckpt))


def test_checkpointing_saves_activation_memory():
    from pali3_edu.profiling import peak_memory

    batch = _batch(prompt=20, answer=16)

    def step(model):
        def run():
            model.zero_grad(set_to_none=True)
            model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                  labels=batch["labels"]).loss.backward()
        return run

    plain, ckpt = _model(depth=4), _model(depth=4)
    enable_checkpointing(ckpt)
    assert peak_memory(step(ckpt)) < peak_memory(step(plain))


def test_checkpointing_is_off_in_eval_and_generation():
    model = _model()
    enable_checkpointing(model)
    batch = _batch()
    model.eval()
    with torch.no_grad():
        out = model.generate(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], max_new_tokens=4)
    assert out.shape[0] == 3


def test_checkpointing_needs_blocks():
    with pytest.raises(ValueError, match="no transformer blocks"):
        enable_checkpointing(torch.nn.Linear(3, 3))


# ---------------------------------------------------------------------------------------------
# length bucketing
# ---------------------------------------------------------------------------------------------


def test_bucket_length():
    assert [bucket_length(n, 16) for n in (1, 16, 17, 33)] == [16, 16, 32, 48]
    assert bucket_length(17, 16, cap=24) == 24
    assert bucket_length(30, 16, cap=24) == 30  # never cuts
    with pytest.raises(ValueError, match="positive"):
        bucket_length(3, 0)


def test_bucketing_keeps_the_pali3_loss():
    model = _model().eval()
    batch = _batch(prompt=7, answer=5)
    caps = bucket_caps(model.cfg)
    assert caps == {"input_ids": 24, "labels": 20}
    padded = bucket_batch(batch, 16, caps)
    assert padded["input_ids"].shape == (3, 16) and padded["labels"].shape == (3, 16)
    assert (padded["attention_mask"][:, 7:] == 0).all() and (padded["labels"][:, 5:] == -100).all()
    assert torch.equal(padded["pixel_values"], batch["pixel_values"])
    with torch.no_grad():
        a = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], labels=batch["labels"]).loss
        b = model(padded["pixel_values"], padded["input_ids"], padded["attention_mask"], labels=padded["labels"]).loss
    torch.testing.assert_close(a, b, **TOL)
    # a prompt of 17 tokens goes to the cap (24), not to 32, which the model would refuse
    long = bucket_batch(_batch(prompt=17, answer=18), 16, caps)
    assert long["input_ids"].shape[1] == 24 and long["labels"].shape[1] == 20
    with torch.no_grad():
        model(long["pixel_values"], long["input_ids"], long["attention_mask"], labels=long["labels"])


def test_bucketing_keeps_the_encoder_decoder_loss():
    torch.manual_seed(0)
    model = EncoderDecoder(_cfg().text).eval()
    batch = _batch(prompt=9, answer=6)
    padded = bucket_batch(batch, 16, bucket_caps(model.cfg))
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        b = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], labels=padded["labels"]).loss
    torch.testing.assert_close(a, b, **TOL)


def test_bucketing_leaves_unmasked_ids_alone():
    """SigLIP's captions are padded with EOS and read at the last position: no mask, no padding."""
    ids = torch.randint(3, 60, (4, 10))
    out = bucket_batch({"pixel_values": torch.zeros(4, 3, 8, 8), "input_ids": ids}, 16)
    assert torch.equal(out["input_ids"], ids)


# ---------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------


def _need_compile():
    ok, why = compile_available()
    if not ok:  # pragma: no cover - e.g. a Python version dynamo does not support yet
        pytest.skip(f"torch.compile is unavailable on this platform: {why}")


def test_compiled_blocks_with_checkpointing_give_the_plain_loss():
    _need_compile()
    torch._dynamo.reset()
    batch = _batch()
    plain = _model(depth=1)
    fast = SpeedSettings(compile="blocks", compile_backend="aot_eager", checkpointing=True).prepare_model(
        _model(depth=1))
    assert list(fast.state_dict()) == list(plain.state_dict())
    loss_a, grads_a = _loss_and_grads(plain, batch)
    loss_b, grads_b = _loss_and_grads(fast, batch)
    torch.testing.assert_close(loss_a, loss_b, **TOL)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_frozen_blocks_are_not_checkpointed_and_compile_with_checkpointing():
    """Stage 1 freezes the ViT: its blocks need no backward, so they run plain (checkpointing a
    region that needs no gradient made the compiled graph fail); the trained blocks still are."""
    _need_compile()
    torch._dynamo.reset()
    batch = _batch()
    plain, fast = _model(depth=1), _model(depth=1)
    for m in (plain, fast):
        m.vit.requires_grad_(False)
    SpeedSettings(compile="blocks", compile_backend="aot_eager", checkpointing=True).prepare_model(fast)
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def spy(fn, *args, **kwargs):
        calls.append(fn)
        return original(fn, *args, **kwargs)

    torch.utils.checkpoint.checkpoint = spy
    try:
        loss_b, grads_b = _loss_and_grads(fast, batch)
    finally:
        torch.utils.checkpoint.checkpoint = original
    loss_a, grads_a = _loss_and_grads(plain, batch)
    torch.testing.assert_close(loss_a, loss_b, **TOL)
    assert grads_a.keys() == grads_b.keys() and not any(n.startswith("vit.") for n in grads_a)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-5, msg=name)
    assert len(calls) == 2  # the encoder and decoder layer, not the frozen ViT block


def test_compiled_model_gives_the_plain_loss():
    _need_compile()
    torch._dynamo.reset()
    batch = _batch()
    plain = _model(depth=1)
    fast = compile_model(_model(depth=1), "model", backend="eager")
    torch.testing.assert_close(_loss_and_grads(plain, batch)[0], _loss_and_grads(fast, batch)[0], **TOL)
    with pytest.raises(ValueError, match="'blocks' or 'model'"):
        compile_model(_model(depth=1), "layers")


# ---------------------------------------------------------------------------------------------
# settings and stages
# ---------------------------------------------------------------------------------------------


def test_speed_settings_check_their_values():
    with pytest.raises(ValueError, match="compile"):
        SpeedSettings(compile="fast")
    with pytest.raises(ValueError, match="bucket"):
        SpeedSettings(bucket=0)
    assert not SpeedSettings().active and SpeedSettings(bucket=16).active
    assert SpeedSettings(checkpointing=True, bucket=16).describe() == "checkpointing, bucket=16"


def test_use_speed_settings_swaps_the_stages_and_restores_them():
    from pali3_edu.recipes import base, get_recipe

    plain = base.get_stage("ul2")
    with use_speed_settings(SpeedSettings(checkpointing=True, bucket=16), ["ul2"]):
        stage = base.get_stage("ul2")
        assert stage is not plain and stage.version == plain.version and stage.presets is plain.presets
        recipe = get_recipe("ul2", "micro")

        class Tok:
            padded_vocab_size = 64

        model = stage.build_model(recipe, Tok())
        assert all(getattr(b.forward, "__pali3_checkpointed__", False) for b in transformer_blocks(model))
    assert base.get_stage("ul2") is plain
    # speed settings change how, not what: the fingerprint is the same
    assert speed_stage(plain, SpeedSettings(bucket=16)).version == plain.version


# ---------------------------------------------------------------------------------------------
# attention path (FlexAttention for the T5 stacks; equality in detail: tests/test_attention_paths.py)
# ---------------------------------------------------------------------------------------------


def test_attention_setting_checks_its_value_and_is_described():
    with pytest.raises(ValueError, match="attention must be 'sdpa' or 'flex'"):
        SpeedSettings(attention="flash")
    assert not SpeedSettings(attention="sdpa").active
    flex = SpeedSettings(attention="flex", bucket=16)
    assert flex.active and flex.describe() == "bucket=16, attention=flex"


@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")
def test_attention_flex_switches_the_t5_stacks_and_compiles_with_the_blocks():
    """prepare_model switches the encoder-decoder inside PaLI-3 (names and weights unchanged),
    and the flex path runs inside compiled, checkpointed blocks: the plain model's logits
    (inference: FlexAttention has no backward pass on CPU)."""
    _need_compile()
    batch = _batch()
    plain, fast = _model(), _model()
    names = [n for n, _ in fast.named_parameters()]
    settings = SpeedSettings(attention="flex", compile="blocks", compile_backend="aot_eager", checkpointing=True)
    settings.prepare_model(fast)
    assert (fast.encdec.encoder.attention, fast.encdec.decoder.attention) == ("flex", "flex")
    assert [n for n, _ in fast.named_parameters()] == names
    with torch.no_grad():
        a = plain(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
        b = fast(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=2e-5)


def test_attention_flex_leaves_models_without_t5_stacks_alone():
    from pali3_edu.vit import ViT

    torch.manual_seed(0)
    vit = ViT(_cfg().vision)
    assert SpeedSettings(attention="flex").prepare_model(vit) is vit


def test_attention_flex_keeps_the_stage_version():
    from pali3_edu.recipes import base

    plain = base.get_stage("ul2")
    assert speed_stage(plain, SpeedSettings(attention="flex")).version == plain.version
