"""The two attention paths of the T5 stacks (pali3_edu.encdec): ``"flex"`` equals ``"sdpa"``.

FlexAttention (``torch.nn.attention.flex_attention``) computes the relative position bias with a
``score_mod`` and padding / causality with a ``block_mask``; SDPA adds a dense bias. Both must give
the same outputs and gradients (fp32, tight tolerance) for the encoder, the decoder, the
cross-attention, cached generation and a whole PaLI-3 model.

**Gradients on CPU.** PyTorch's FlexAttention refuses a backward pass on CPU (a check in
``flex_attention``; its fused CPU kernel has none). The unfused reference implementation that
FlexAttention runs eagerly does have one, and that is what these tests use: the fixture
``cpu_flex_backward`` lifts the check for the test's duration. What is tested is the course's
part: that the ``score_mod`` and ``block_mask`` describe the same attention as the dense bias,
gradient of the bias table included. (The model itself, untouched, says on CPU that training needs
``attention='sdpa'``: see :func:`test_training_with_flex_on_cpu_says_to_use_sdpa`.)
"""

from __future__ import annotations

import sys

import pytest
import torch

from pali3_edu.config import EncDecConfig, ViTConfig
from pali3_edu.encdec import (
    EncoderDecoder,
    KVCache,
    RelativePositionBias,
    causal_mask,
    flex_attention_available,
    set_attention,
)
from pali3_edu.generate import generate
from pali3_edu.pali3 import PaLI3, PaLI3Config

OUT = dict(rtol=1e-5, atol=2e-5)  # outputs
GRAD = dict(rtol=1e-4, atol=1e-5)  # gradients: sums of many terms, in another order

pytestmark = [pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile"),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture
def cpu_flex_backward(monkeypatch):
    """Allow FlexAttention's (unfused, reference) backward pass on CPU for one test."""
    import torch.nn.attention.flex_attention as fa

    original = fa._validate_device  # fails loudly (AttributeError) if PyTorch renames the check

    def validate_device(query, key, value):
        if query.device.type != "cpu":
            original(query, key, value)

    monkeypatch.setattr(fa, "_validate_device", validate_device)


def _cfg(**overrides) -> EncDecConfig:
    # max_distance 16 with 11- to 13-token inputs: the log-spaced buckets are used too
    base = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                relative_attention_num_buckets=16, relative_attention_max_distance=16)
    return EncDecConfig(**{**base, **overrides})


def _model(**overrides) -> EncoderDecoder:
    torch.manual_seed(0)
    return EncoderDecoder(_cfg(**overrides))


def _inputs(batch: int = 3, source: int = 13, target: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (batch, source), generator=g)
    mask = torch.ones(batch, source, dtype=torch.long)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    labels = torch.randint(3, 64, (batch, target), generator=g)
    labels[2, 5:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _assert_close_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tol) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], **tol, msg=lambda m, n=name: f"{n}: {m}")


# ---- the pieces ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional, queries, keys, offset",
                         [(True, 13, 13, 0), (False, 7, 7, 0), (False, 3, 10, 7), (False, 1, 30, 29)])
def test_bias_by_distance_is_the_dense_bias(bidirectional, queries, keys, offset):
    torch.manual_seed(0)
    rel = RelativePositionBias(_cfg(), bidirectional)
    dense = rel(queries, keys, offset)[0]  # (heads, queries, keys)
    vector = rel.by_distance(queries, keys, offset)  # (heads, queries + keys - 1)
    assert vector.shape == (4, queries + keys - 1)
    q = torch.arange(queries)[:, None]
    k = torch.arange(keys)[None, :]
    torch.testing.assert_close(vector[:, k - q + queries - 1], dense, rtol=0, atol=0)


def test_flex_is_available_here():
    ok, why = flex_attention_available()
    assert ok, why


def test_set_attention_switches_every_stack_and_checks_the_name():
    model = _model()
    assert (model.encoder.attention, model.decoder.attention) == ("sdpa", "sdpa")
    assert set_attention(model, "flex") == 2
    assert (model.encoder.attention, model.decoder.attention) == ("flex", "flex")
    with pytest.raises(ValueError, match="'sdpa', 'flex'"):
        set_attention(model, "flash")
    model.encoder.attention = "flash"  # set by hand, wrongly
    with pytest.raises(ValueError, match="attention must be one of"):
        model(**_inputs())


def test_flex_asked_for_but_unavailable_says_to_use_sdpa(monkeypatch):
    # a PyTorch without FlexAttention (before 2.5): the import fails
    monkeypatch.setitem(sys.modules, "torch.nn.attention.flex_attention", None)
    ok, why = flex_attention_available()
    assert not ok and "2.5" in why
    model = _model()
    with pytest.raises(RuntimeError, match="attention='flex' is unavailable.*attention='sdpa'"):
        set_attention(model, "flex")
    assert model.encoder.attention == "sdpa"  # nothing was switched


def test_training_with_flex_on_cpu_says_to_use_sdpa():
    model = _model().train()
    set_attention(model, "flex")
    with pytest.raises(RuntimeError, match="no backward.*attention='sdpa'"):
        model(**_inputs())
    with torch.no_grad():  # inference works on CPU
        model(**_inputs())


def test_flex_refuses_attention_dropout_in_training(cpu_flex_backward):
    model = _model(dropout_rate=0.1).train()
    set_attention(model, "flex")
    with pytest.raises(ValueError, match="no attention dropout.*attention='sdpa'"):
        model(**_inputs())
    model.eval()  # no dropout in evaluation: fine
    with torch.no_grad():
        model(**_inputs())


# ---- equal results -------------------------------------------------------------------------------


def _run_both(fn, model: torch.nn.Module):
    """``fn(model)`` on the sdpa path, then on the flex path (same weights)."""
    set_attention(model, "sdpa")
    model.zero_grad(set_to_none=True)
    a = fn(model)
    set_attention(model, "flex")
    model.zero_grad(set_to_none=True)
    b = fn(model)
    return a, b


def test_encoder_forward_and_gradients(cpu_flex_backward):
    """Bidirectional bias + padding mask: encoder states and every encoder gradient."""
    model = _model().train()
    x = _inputs()

    def run(m):
        embeds = m.embed_tokens(x["input_ids"]).detach().requires_grad_()
        states = m.encoder(embeds, x["attention_mask"])
        (states * torch.linspace(-1, 1, states.shape[-1])).sum().backward()
        return states.detach(), embeds.grad, _grads(m.encoder)

    (s1, e1, g1), (s2, e2, g2) = _run_both(run, model)
    torch.testing.assert_close(s2, s1, **OUT)
    torch.testing.assert_close(e2, e1, **GRAD)
    _assert_close_dicts(g2, g1, **GRAD)
    assert "relative_bias.table.weight" in g1  # the bias table gets its gradient through score_mod


def test_decoder_and_cross_attention_forward_and_gradients(cpu_flex_backward):
    """Causal self-attention + bias (flex), cross-attention to padded encoder states (SDPA on
    both paths): decoder states and the gradients of the decoder and of the encoder states."""
    model = _model().train()
    x = _inputs()
    torch.manual_seed(1)
    encoder_states = torch.randn(3, 13, 32)

    def run(m):
        states = encoder_states.clone().requires_grad_()
        out = m.decode(m.shift_right(x["labels"]), states, x["attention_mask"])
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        return out.detach(), states.grad, _grads(m.decoder)

    (o1, s1, g1), (o2, s2, g2) = _run_both(run, model)
    torch.testing.assert_close(o2, o1, **OUT)
    torch.testing.assert_close(s2, s1, **GRAD)
    # padding keys get no gradient on either path
    assert (s1[1, 9:] == 0).all() and (s2[1, 9:] == 0).all() and (s1[1, :9] != 0).any()
    _assert_close_dicts(g2, g1, **GRAD)
    assert "relative_bias.table.weight" in g1


def test_encoder_decoder_loss_and_gradients(cpu_flex_backward):
    model = _model().train()
    x = _inputs()

    def run(m):
        out = m(**x)
        out.loss.backward()
        return out.logits.detach(), _grads(m)

    (l1, g1), (l2, g2) = _run_both(run, model)
    torch.testing.assert_close(l2, l1, **OUT)
    _assert_close_dicts(g2, g1, **GRAD)


def test_kv_cache_decoding_with_a_query_offset():
    """Decoding in chunks (3, 1, 2, 1 new positions) with a cache equals decoding all at once,
    on both paths: the causal block mask and the bias lookup shift by the cached length."""
    model = _model().eval()
    x = _inputs()
    ids = model.shift_right(x["labels"])
    with torch.no_grad():
        states = model.encode(x["input_ids"], attention_mask=x["attention_mask"])
        full = model.decode(ids, states, x["attention_mask"])
        for path in ("sdpa", "flex"):
            set_attention(model, path)
            cache, pieces, start = KVCache(), [], 0
            for size in (3, 1, 2, 1):
                pieces.append(model.decode(ids[:, start:start + size], states, x["attention_mask"], cache=cache))
                start += size
            assert cache.length == ids.shape[1]
            torch.testing.assert_close(torch.cat(pieces, dim=1), full, **OUT, msg=lambda m, p=path: f"{p}: {m}")


def test_causal_block_mask_is_the_causal_mask():
    from pali3_edu.encdec import causal_block_mask

    for queries, keys in ((7, 7), (3, 10), (200, 260)):  # 200 x 260: several 128-blocks, some partial
        block = causal_block_mask(queries, keys)
        assert tuple(block.shape[-2:]) == (queries, keys)
        assert torch.equal(_dense(block, queries, keys), causal_mask(queries, keys))
    assert causal_block_mask(1, 9) is None  # one query sees every key: no mask needed
    with pytest.raises(ValueError, match="key_length"):
        causal_block_mask(5, 3)


def _dense(block, queries: int, keys: int) -> torch.Tensor:
    """Element mask ``(queries, keys)`` from a BlockMask's ``mask_mod``."""
    q = torch.arange(queries)[:, None]
    k = torch.arange(keys)[None, :]
    zero = torch.zeros((), dtype=torch.long)
    return block.mask_mod(zero, zero, q, k).expand(queries, keys)


def test_greedy_generation_with_the_kv_cache_gives_the_same_tokens():
    model = _model().eval()
    x = _inputs()
    set_attention(model, "sdpa")
    a = generate(model, x["input_ids"], attention_mask=x["attention_mask"], max_new_tokens=8, min_new_tokens=8)
    set_attention(model, "flex")
    b = generate(model, x["input_ids"], attention_mask=x["attention_mask"], max_new_tokens=8, min_new_tokens=8)
    c = generate(model, x["input_ids"], attention_mask=x["attention_mask"], max_new_tokens=8, min_new_tokens=8,
                 use_cache=False)
    assert a.shape == (3, 8)
    assert torch.equal(a, b) and torch.equal(a, c)


def _pali3() -> PaLI3:
    torch.manual_seed(0)
    cfg = PaLI3Config(
        vision=ViTConfig(image_size=32, patch_size=8, width=32, depth=1, mlp_dim=64, heads=2, pool="none"),
        text=_cfg(), max_prompt_len=24, max_answer_len=20)
    return PaLI3(cfg)


def test_pali3_forward_and_gradients(cpu_flex_backward):
    """16 visual tokens in front of a padded prompt: the encoder's keep-mask has its zeros after
    the image tokens, and the flex path reads it from there."""
    model = _pali3().train()
    x = _inputs(source=7)
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def run(m):
        out = m(pixels, x["input_ids"], x["attention_mask"], labels=x["labels"])
        out.loss.backward()
        return out.logits.detach(), out.encoder_mask, _grads(m)

    (l1, k1, g1), (l2, k2, g2) = _run_both(run, model)
    assert k1.shape == (3, 16 + 7) and k1[:, :16].all() and not k1[2, 16 + 4:].any()
    torch.testing.assert_close(l2, l1, **OUT)
    _assert_close_dicts(g2, g1, **GRAD)
    assert any(name.startswith("vit.") for name in g1)  # the ViT trains here, through SDPA


# ---- the command lines ---------------------------------------------------------------------------


def test_bench_train_refuses_flex_on_cpu(capsys):
    from pali3_edu.bench.train import main

    with pytest.raises(SystemExit):
        main(["--attention", "flex", "--device", "cpu", "--steps", "1"])
    assert "--attention flex needs a CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--attention", "flash"])
    assert "invalid choice: 'flash'" in capsys.readouterr().err


def test_train_command_line_has_the_attention_flag():
    from pali3_edu.run import build_parser

    parser = build_parser()
    args = parser.parse_args(["--recipe", "ul2", "--attention", "flex"])
    assert args.attention == "flex"
    assert parser.parse_args(["--recipe", "ul2"]).attention == "sdpa"
