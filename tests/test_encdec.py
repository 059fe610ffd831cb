"""The T5 v1.1 / UL2 encoder-decoder (pali3_edu.encdec): pieces, masks, cache, loss, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pali3_edu.config import get_config
from pali3_edu.encdec import (
    EncoderDecoder,
    KVCache,
    RMSNorm,
    Seq2SeqOutput,
    T5Attention,
    causal_mask,
    relative_position_bucket,
    shift_right,
)


def tiny(**overrides) -> EncoderDecoder:
    torch.manual_seed(0)
    cfg = get_config(
        "encdec", "tiny-cpu", vocab_size=97, d_model=32, d_kv=12, d_ff=48, num_layers=2,
        num_decoder_layers=2, num_heads=4, max_input_length=40, **overrides,
    )
    return EncoderDecoder(cfg).eval()


# ---- relative position buckets --------------------------------------------------------------


@pytest.mark.parametrize(
    "rel, bidirectional, expected",
    [
        # encoder: 16 buckets per direction, exact below 8, log-spaced to 128
        (0, True, 0), (-1, True, 1), (-7, True, 7), (-8, True, 8), (-20, True, 10),
        (-127, True, 15), (-1000, True, 15), (1, True, 17), (7, True, 23), (20, True, 26),
        (1000, True, 31),
        # decoder: keys to the right do not exist (bucket 0), 32 buckets for the left, exact below 16
        (5, False, 0), (0, False, 0), (-5, False, 5), (-15, False, 15), (-16, False, 16),
        (-32, False, 21), (-127, False, 31), (-1000, False, 31),
    ],
)
def test_relative_position_bucket_values(rel: int, bidirectional: bool, expected: int) -> None:
    got = relative_position_bucket(torch.tensor([rel]), bidirectional, 32, 128)
    assert got.item() == expected


def test_relative_position_bucket_is_monotone_and_in_range() -> None:
    rel = torch.arange(-300, 301)
    for bidirectional in (True, False):
        b = relative_position_bucket(rel, bidirectional, 32, 128)
        assert b.dtype == torch.long and b.min() >= 0 and b.max() <= 31
    left = relative_position_bucket(-torch.arange(0, 300), True)
    right = relative_position_bucket(torch.arange(1, 300), True)
    assert (left.diff() >= 0).all() and (right.diff() >= 0).all()
    assert left.max() < 16 <= right.min()  # the two directions never share a bucket


# ---- masks, norm, attention ---------------------------------------------------------------------


def test_causal_mask_plain_and_with_cached_past() -> None:
    assert torch.equal(causal_mask(3, 3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]]).bool())
    # 2 new queries after 3 cached tokens: positions 3 and 4 of 5
    assert torch.equal(causal_mask(2, 5), torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]).bool())
    with pytest.raises(ValueError):
        causal_mask(4, 3)


def test_rmsnorm_formula_and_fp32_statistics() -> None:
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(2, 3, 8) * 5 + 3  # a mean offset: RMSNorm must NOT subtract it
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    big = torch.full((1, 8), 300.0, dtype=torch.float16)  # 300² overflows fp16 (max 65504)
    norm16 = RMSNorm(8).half()
    out = norm16(big)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), torch.ones(1, 8), atol=1e-3, rtol=0)


def test_attention_is_unscaled_softmax_with_additive_bias() -> None:
    cfg = get_config("encdec", "tiny-cpu", d_model=16, d_kv=5, num_heads=3)  # inner 15 != 16
    attn = T5Attention(cfg)
    x, mem = torch.randn(2, 4, 16), torch.randn(2, 6, 16)
    bias = torch.randn(1, 3, 4, 6)
    k, v = attn.project_kv(mem)
    q = attn.q(x).view(2, 4, 3, 5).transpose(1, 2)
    probs = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1)  # no 1/sqrt(d_kv)
    expected = attn.o((probs @ v).transpose(1, 2).reshape(2, 4, 15))
    torch.testing.assert_close(attn(x, (k, v), bias), expected)


# ---- the model -------------------------------------------------------------------------------------


def test_forward_shapes_and_loss_ignores_minus_100() -> None:
    model = tiny()
    ids = torch.randint(2, 97, (3, 10))
    labels = torch.randint(2, 97, (3, 7))
    labels[0, 4:] = -100
    out = model(input_ids=ids, labels=labels)
    assert out.logits.shape == (3, 7, 97) and out.encoder_states.shape == (3, 10, 32)
    keep = labels != -100
    manual = F.cross_entropy(out.logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, manual)
    # decoder inputs default to the labels shifted right (start = pad = 0, -100 → pad)
    again = model(input_ids=ids, decoder_input_ids=shift_right(labels), labels=labels)
    torch.testing.assert_close(again.loss, out.loss)


def test_shift_right() -> None:
    labels = torch.tensor([[5, 6, 1, -100, -100], [7, 8, 9, 10, 1]])
    expected = torch.tensor([[0, 5, 6, 1, 0], [0, 7, 8, 9, 10]])
    assert torch.equal(shift_right(labels), expected)
    assert torch.equal(tiny().shift_right(labels), expected)


def test_one_position_bias_table_per_stack() -> None:
    model = tiny()
    tables = [n for n, _ in model.named_parameters() if "relative_bias" in n]
    assert tables == ["encoder.relative_bias.table.weight", "decoder.relative_bias.table.weight"]
    assert model.encoder.relative_bias.bidirectional and not model.decoder.relative_bias.bidirectional
    assert not any("bias" in n and "relative" not in n for n, _ in model.named_parameters())


def test_decoder_is_causal() -> None:
    model = tiny()
    ids = torch.randint(2, 97, (2, 8))
    dec = torch.randint(2, 97, (2, 6))
    changed = dec.clone()
    changed[:, 4:] = torch.randint(2, 97, (2, 2))
    a = model(input_ids=ids, decoder_input_ids=dec).logits
    b = model(input_ids=ids, decoder_input_ids=changed).logits
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_keep_mask_dtypes_are_equivalent() -> None:
    """The boundary convention: a (batch, source) keep-mask, 1/True = real token, any dtype."""
    model = tiny()
    ids = torch.randint(2, 97, (2, 6))
    keep = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    dec = torch.randint(2, 97, (2, 3))
    outs = [model(input_ids=ids, attention_mask=m, decoder_input_ids=dec).logits
            for m in (keep, keep.bool(), keep.float())]
    for other in outs[1:]:
        torch.testing.assert_close(other, outs[0])


def test_output_is_a_plain_dataclass() -> None:
    model = tiny()
    out = model(input_ids=torch.randint(2, 97, (1, 4)), decoder_input_ids=torch.zeros(1, 2, dtype=torch.long))
    assert isinstance(out, Seq2SeqOutput) and out.loss is None and out.encoder_states.shape == (1, 4, 32)
    with pytest.raises(TypeError):
        out["logits"]


def test_encoder_padding_is_invisible() -> None:
    model = tiny()
    ids = torch.randint(2, 97, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 6:] = 0
    other = ids.clone()
    other[0, 6:] = torch.randint(2, 97, (3,))  # change only padded positions
    dec = torch.randint(2, 97, (2, 5))
    a = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
    b = model(input_ids=other, attention_mask=mask, decoder_input_ids=dec)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.encoder_states[0, :6], b.encoder_states[0, :6])
    # and the mask matters: without it the changed tokens change the output
    c = model(input_ids=other, decoder_input_ids=dec)
    assert not torch.allclose(a.logits[0], c.logits[0])


def test_inputs_embeds_equals_input_ids() -> None:
    model = tiny()
    ids = torch.randint(2, 97, (2, 7))
    labels = torch.randint(2, 97, (2, 4))
    a = model(input_ids=ids, labels=labels)
    b = model(inputs_embeds=model.embed_tokens(ids), labels=labels)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.loss, b.loss)


def test_kv_cache_decoding_equals_full_decoding() -> None:
    model = tiny()
    ids = torch.randint(2, 97, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    dec = torch.randint(2, 97, (2, 6))
    states = model.encode(ids, attention_mask=mask)
    full = model.lm_logits(model.decode(dec, states, mask))
    cache = KVCache()
    steps = [model.lm_logits(model.decode(dec[:, :2], states, mask, cache=cache))]  # 2 at once
    for t in range(2, 6):
        steps.append(model.lm_logits(model.decode(dec[:, t : t + 1], states, mask, cache=cache)))
    assert cache.length == 6
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_init_scales_follow_t5() -> None:
    cfg = get_config("encdec", "tiny-cpu", d_model=256, d_kv=64, num_heads=4, d_ff=512)
    model = EncoderDecoder(cfg)
    attn = model.encoder.layers[0].self_attn
    ff = model.encoder.layers[0].ff
    for weight, std in [
        (attn.q.weight, (256 * 64) ** -0.5), (attn.k.weight, 256**-0.5), (attn.v.weight, 256**-0.5),
        (attn.o.weight, (4 * 64) ** -0.5), (ff.wi_0.weight, 256**-0.5), (ff.wo.weight, 512**-0.5),
        (model.embed_tokens.weight, 1.0), (model.lm_head.weight, 1.0),
    ]:
        assert abs(weight.std().item() / std - 1) < 0.05, (weight.shape, weight.std(), std)


def test_reset_parameters_restores_the_init() -> None:
    model = tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    model.reset_parameters()
    assert abs(model.embed_tokens.weight.std().item() - 1) < 0.05
    assert torch.equal(model.encoder.final_norm.weight, torch.ones(32))
    assert not any((p == 0.5).all() for p in model.parameters())


def test_tied_head_rescales_decoder_output() -> None:
    model = tiny(tie_word_embeddings=True)
    assert model.lm_head is None
    h = torch.randn(2, 3, 32)
    expected = (h * 32**-0.5) @ model.embed_tokens.weight.T
    torch.testing.assert_close(model.lm_logits(h), expected)


@pytest.mark.parametrize("kind, names", [("gated-silu", {"wi_0", "wi_1", "wo"}), ("relu", {"wi", "wo"})])
def test_feed_forward_variants(kind: str, names: set[str]) -> None:
    model = tiny(feed_forward_proj=kind)
    got = {n.split(".")[-2] for n, _ in model.encoder.layers[0].ff.named_parameters()}
    assert got == names
    out = model(input_ids=torch.randint(2, 97, (1, 5)), labels=torch.randint(2, 97, (1, 3)))
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="feed_forward_proj"):
        tiny(feed_forward_proj="gated-swish")


def test_bf16_forward_runs() -> None:
    model = tiny().to(torch.bfloat16)
    out = model(input_ids=torch.randint(2, 97, (2, 6)), labels=torch.randint(2, 97, (2, 4)))
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    assert torch.isfinite(out.loss)


def _copy_batch(generator: torch.Generator, batch: int, length: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Random sources over 8 token ids; the target is the source followed by EOS (id 1)."""
    ids = torch.randint(2, 10, (batch, length), generator=generator)
    return ids, torch.cat([ids, torch.ones(batch, 1, dtype=torch.long)], dim=1)


def test_learns_to_copy() -> None:
    """Every batch holds new random sequences, so the targets cannot be memorised: only a model
    that reads its input through the encoder and cross-attention can beat chance (1/8 per token)."""
    torch.manual_seed(0)
    model = tiny().train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    data = torch.Generator().manual_seed(0)
    first = None
    for _ in range(80):
        ids, labels = _copy_batch(data, 32)
        loss = model(input_ids=ids, labels=labels).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert math.isfinite(first) and loss.item() < 0.5 * first, (first, loss.item())
    model.eval()
    ids, labels = _copy_batch(torch.Generator().manual_seed(123), 128)  # sequences never trained on
    with torch.no_grad():
        copied = model(input_ids=ids, labels=labels).logits.argmax(-1)[:, :3] == ids
        # the same targets with the inputs of other rows: a model that ignored its input would
        # score as well here as above
        other = model(input_ids=ids.roll(1, dims=0), labels=labels).logits.argmax(-1)[:, :3] == ids
    assert copied.float().mean() > 0.5, copied.float().mean()
    assert other.float().mean() < 0.25, other.float().mean()


# ---- clear errors ------------------------------------------------------------------------------------


def test_errors_are_clear() -> None:
    model = tiny()
    ids = torch.randint(2, 97, (2, 5))
    labels = torch.randint(2, 97, (2, 3))
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        model(labels=labels)
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        model(input_ids=ids, inputs_embeds=model.embed_tokens(ids), labels=labels)
    with pytest.raises(ValueError, match="max_input_length"):
        model(input_ids=torch.randint(2, 97, (1, 41)), labels=labels[:1])
    with pytest.raises(ValueError, match="vocab_size"):
        model(input_ids=torch.tensor([[5, 97]]), labels=labels[:1])
    with pytest.raises(ValueError, match="-100"):
        model(input_ids=ids, labels=torch.tensor([[3, -5, 1], [3, 4, 1]]))
    with pytest.raises(TypeError, match="integer token ids"):
        model(input_ids=ids.float(), labels=labels)
    with pytest.raises(TypeError, match="floating-point"):
        model(inputs_embeds=torch.ones(2, 5, 32, dtype=torch.long), labels=labels)
    with pytest.raises(ValueError, match="d_model"):
        model(inputs_embeds=torch.randn(2, 5, 31), labels=labels)
    with pytest.raises(ValueError, match="attention_mask"):
        model(input_ids=ids, attention_mask=torch.ones(2, 4), labels=labels)
    with pytest.raises(ValueError, match="keep-mask"):  # an additive 0 / -inf mask by mistake
        model(input_ids=ids, attention_mask=torch.zeros(2, 5).masked_fill(torch.eye(2, 5) > 0, -1e9),
              labels=labels)
    with pytest.raises(ValueError, match="labels .* or decoder_input_ids"):
        model(input_ids=ids)


# ---- lesson 06 helpers: the exercise checks and the plots ----------------------------------------


def test_lesson06_checks_accept_the_reference_and_explain_mistakes() -> None:
    from pali3_edu.exercises.lesson06 import check_causal_mask, check_relative_position_bucket

    check_relative_position_bucket(relative_position_bucket)
    check_causal_mask(causal_mask)

    def no_right_half(rel, bidirectional, num_buckets, max_distance):  # forgets the +16 offset
        return relative_position_bucket(-rel.abs() if bidirectional else rel, bidirectional,
                                        num_buckets, max_distance)

    with pytest.raises(AssertionError, match="upper half"):
        check_relative_position_bucket(no_right_half)
    with pytest.raises(AssertionError, match="LAST"):
        check_causal_mask(lambda q, k: torch.ones(q, k, dtype=torch.bool).tril())
    with pytest.raises(AssertionError, match="FUTURE"):
        check_causal_mask(lambda q, k: torch.ones(q, k, dtype=torch.bool))


def test_lesson06_plots() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pali3_edu.viz.encdec import plot_attention_mask, plot_position_buckets

    for fig in (plot_position_buckets(), plot_attention_mask(3, 6),
                plot_attention_mask(4, padding=torch.tensor([1, 1, 0, 0]))):
        assert len(fig.axes) >= 1
        plt.close(fig)
