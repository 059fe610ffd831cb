"""Reference equivalence: the course encoder-decoder vs ``transformers``' T5 (random small configs).

``transformers`` is a test dependency: without it these tests fail (they never skip).
"""

from __future__ import annotations

import pytest
import torch
import transformers

from pali3_edu.convert import t5_from_hf
from pali3_edu.convert.t5 import hf_to_course_names
from pali3_edu.generate import generate

TOL = dict(rtol=1e-5, atol=1e-5)
# In float64 both implementations agree to ~1e-12 except where both compute in fp32 on purpose
# (the RMSNorm statistics): far tighter than float32 allows for logits of size ~50.
TOL64 = dict(rtol=1e-9, atol=1e-9)


def hf_t5(seed: int = 0, eos_boost: float = 1.0, **overrides):
    """A random ``T5ForConditionalGeneration``; v1.1 shape (gated-GELU, untied head) by default.

    Inner width heads·d_kv = 4·12 = 48 differs from d_model = 32 on purpose, and the buckets are
    few and short (8, max distance 20) so that the 30-token inputs reach the log-spaced buckets.
    """
    torch.manual_seed(seed)
    kw = dict(
        vocab_size=60, d_model=32, d_kv=12, d_ff=64, num_layers=2, num_decoder_layers=3,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
        decoder_start_token_id=0,
    )
    kw.update(overrides)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**kw)).eval()
    if kw.get("tie_word_embeddings", True) is False:
        # transformers 5 keeps lm_head tied in memory even for v1.1 configs: give it its own
        # weights so the test can tell the head from the input embedding
        with torch.no_grad():
            head = torch.randn(kw["vocab_size"], kw["d_model"]) * 2
            head[1] *= eos_boost  # EOS more or less likely: sequences of varied lengths
        hf.lm_head.weight = torch.nn.Parameter(head)
    return hf


def inputs(batch: int = 3, source: int = 30, target: int = 25, vocab: int = 60):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, vocab, (batch, source), generator=g)
    mask = torch.ones(batch, source, dtype=torch.long)
    mask[1, 20:] = 0
    mask[2, 5:] = 0
    labels = torch.randint(2, vocab, (batch, target), generator=g)
    labels[0, 18:] = -100
    return ids, mask, labels


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),  # T5 v1.1: gated-GELU, untied head
        dict(feed_forward_proj="gated-silu"),  # UL2
        dict(feed_forward_proj="relu", tie_word_embeddings=True),  # T5 v1.0: tied, rescaled head
    ],
    ids=["t5-v1.1", "ul2-gated-silu", "t5-v1.0-tied"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_transformers(overrides, dtype) -> None:
    hf = hf_t5(**overrides).to(dtype)
    model = t5_from_hf(hf)
    assert model.cfg.tie_word_embeddings == overrides.get("tie_word_embeddings", False)
    assert model.embed_tokens.weight.dtype == dtype
    ids, mask, labels = inputs()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    if dtype == torch.float64:
        tol = TOL64
    else:  # float32 logits reach ~50 here: allow a few ulp of that scale
        tol = dict(rtol=1e-5, atol=1e-5 * ref.logits.abs().max().item())
    torch.testing.assert_close(out.encoder_states, ref.encoder_last_hidden_state, **tol)
    torch.testing.assert_close(out.logits, ref.logits, **tol)
    torch.testing.assert_close(out.loss, ref.loss, **tol)


def test_inputs_embeds_match_transformers() -> None:
    hf = hf_t5()
    model = t5_from_hf(hf)
    ids, mask, labels = inputs()
    embeds = torch.randn(3, 30, 32)  # e.g. visual tokens: any vectors, not only token embeddings
    with torch.no_grad():
        ref = hf(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        out = model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, **TOL)


def test_every_weight_is_mapped() -> None:
    hf = hf_t5()
    model = t5_from_hf(hf)
    mapping = hf_to_course_names(model.cfg)
    assert set(mapping.values()) == set(model.state_dict())
    hf_names = set(hf.state_dict())
    # the only HF names left out are the aliases of the shared embedding
    assert hf_names - set(mapping) <= {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}


def _until_eos(x: torch.Tensor) -> list[list[int]]:
    return [r[: r.index(1) + 1] if 1 in r else r for r in x.tolist()]


@pytest.mark.parametrize("seed", [0, 3])
def test_greedy_generation_matches_transformers(seed: int) -> None:
    hf = hf_t5(seed=seed, eos_boost=1.6, num_decoder_layers=2)  # transformers' cache needs equal depths
    model = t5_from_hf(hf)
    ids, mask, _ = inputs(batch=5, source=12)
    ref = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=15)
    out = generate(model, ids, attention_mask=mask, max_new_tokens=15)
    assert len({len(r) for r in _until_eos(out)}) > 1  # rows end at different steps: padding tested
    assert torch.equal(out, ref[:, 1:])  # transformers keeps the start token in front


@pytest.mark.parametrize("length_penalty", [0.5, 1.0, 2.0])
def test_beam_search_matches_transformers(length_penalty: float) -> None:
    """Same rules as transformers' beam search with early_stopping=False (its default)."""
    hf = hf_t5(seed=0, eos_boost=1.6, num_decoder_layers=2)
    model = t5_from_hf(hf)
    ids, mask, _ = inputs(batch=5, source=12)
    ref = hf.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, num_beams=3, max_new_tokens=15,
        early_stopping=False, length_penalty=length_penalty,
    )
    out = generate(model, ids, attention_mask=mask, max_new_tokens=15, strategy="beam",
                   num_beams=3, length_penalty=length_penalty)
    lengths = [len(r) for r in _until_eos(out)]
    assert len(set(lengths)) > 1  # some beams end early: the EOS bookkeeping is exercised
    # after EOS transformers' beam search fills with EOS (its pad id 0 is falsy), ours with pad
    assert _until_eos(out) == _until_eos(ref[:, 1:])
    assert out.shape[1] == ref.shape[1] - 1
