"""Generation (pali3_edu.generate): greedy, beam search, sampling, KV cache == no cache."""

from __future__ import annotations

import itertools

import pytest
import torch

from pali3_edu.config import get_config
from pali3_edu.encdec import EncoderDecoder
from pali3_edu.generate import generate, sample_next, top_k_top_p_filter

EOS, PAD = 1, 0


def model_with_eos(seed: int = 1, vocab: int = 50) -> EncoderDecoder:
    """A random tiny model whose sequences end (EOS) at different lengths."""
    torch.manual_seed(seed)
    cfg = get_config(
        "encdec", "tiny-cpu", vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2,
        num_decoder_layers=2, num_heads=4,
    )
    model = EncoderDecoder(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight[EOS] *= 1.6
    return model


def lengths(out: torch.Tensor) -> list[int]:
    """Generated length of each row (through its EOS, or the full width)."""
    return [int((r == EOS).nonzero()[0]) + 1 if (r == EOS).any() else r.numel() for r in out]


@pytest.fixture(scope="module")
def model() -> EncoderDecoder:
    return model_with_eos()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    ids = torch.randint(2, 50, (6, 10))
    mask = torch.ones(6, 10, dtype=torch.long)
    mask[2, 7:] = 0
    return ids, mask


# ---- greedy ------------------------------------------------------------------------------------


def test_greedy_matches_step_by_step_argmax(model, batch) -> None:
    ids, mask = batch
    out = generate(model, ids, attention_mask=mask, max_new_tokens=12)
    assert len(set(lengths(out))) > 1, "the test needs sequences that end at different steps"
    # reference: teacher-forced full forward passes, one argmax at a time
    tokens = torch.zeros(6, 1, dtype=torch.long)
    for _ in range(out.shape[1]):
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=tokens).logits
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    for row, ref, n in zip(out, tokens[:, 1:], lengths(out)):
        assert torch.equal(row[:n], ref[:n])
        assert (row[n:] == PAD).all()  # finished rows are padded


def test_cached_equals_uncached_greedy_and_beam(model, batch) -> None:
    ids, mask = batch
    for kw in (dict(strategy="greedy"), dict(strategy="beam", num_beams=3, length_penalty=1.0),
               dict(strategy="beam", num_beams=4, length_penalty=2.0)):
        a = generate(model, ids, attention_mask=mask, max_new_tokens=12, use_cache=True, **kw)
        b = generate(model, ids, attention_mask=mask, max_new_tokens=12, use_cache=False, **kw)
        assert torch.equal(a, b), kw


def test_min_new_tokens_forces_length(model, batch) -> None:
    ids, _ = batch
    out = generate(model, ids, max_new_tokens=9, min_new_tokens=9)
    assert out.shape == (6, 9)
    assert not (out[:, :8] == EOS).any()


def test_inputs_embeds_path_and_training_mode_restored(model, batch) -> None:
    ids, mask = batch
    model.train()
    try:
        a = generate(model, ids, attention_mask=mask, max_new_tokens=6)
        assert model.training  # restored
        b = generate(model, inputs_embeds=model.embed_tokens(ids), attention_mask=mask, max_new_tokens=6)
    finally:
        model.eval()
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="strategy"):
        generate(model, ids, strategy="nucleus")


# ---- beam search -----------------------------------------------------------------------------------


@torch.no_grad()
def sequence_logprobs(model, ids, seqs: list[list[int]]) -> torch.Tensor:
    """Total log-probability of each candidate output (one batched teacher-forced pass)."""
    width = max(map(len, seqs))
    labels = torch.tensor([s + [-100] * (width - len(s)) for s in seqs])
    logits = model(input_ids=ids.expand(len(seqs), -1), labels=labels).logits
    logp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return (logp * (labels != -100)).sum(-1)


def test_wide_beam_search_finds_the_brute_force_optimum() -> None:
    """With length_penalty=0 and enough beams, beam search is exhaustive: compare with brute force."""
    model = model_with_eos(seed=3, vocab=5)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.3)  # flatter distributions: many competitive sequences
    max_len = 3
    for row in range(3):
        ids = torch.randint(2, 5, (1, 6), generator=torch.Generator().manual_seed(row))
        candidates = []  # every finished sequence: ends in EOS, or reaches max_len
        for n in range(1, max_len + 1):
            for body in itertools.product([t for t in range(5) if t != EOS], repeat=n - 1):
                candidates.append(list(body) + [EOS])
                if n == max_len:
                    candidates += [list(body) + [t] for t in range(5) if t != EOS]
        best = candidates[int(sequence_logprobs(model, ids, candidates).argmax())]
        out = generate(model, ids, max_new_tokens=max_len, strategy="beam", num_beams=25,
                       length_penalty=0.0)
        assert out[0, : len(best)].tolist() == best


def test_beam_score_uses_length_penalty(model, batch) -> None:
    ids, _ = batch
    short = generate(model, ids, max_new_tokens=12, strategy="beam", num_beams=4, length_penalty=0.0)
    long = generate(model, ids, max_new_tokens=12, strategy="beam", num_beams=4, length_penalty=3.0)
    # a larger penalty exponent divides by a larger power of the length: favours long outputs
    assert sum(lengths(long)) >= sum(lengths(short))
    assert not torch.equal(short, long)


# ---- sampling -----------------------------------------------------------------------------------------


def test_top_k_top_p_filter() -> None:
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    kept = lambda f: (f > float("-inf")).squeeze(0).tolist()  # noqa: E731
    assert kept(top_k_top_p_filter(logits, top_k=2)) == [False, True, False, True]
    assert kept(top_k_top_p_filter(logits, top_p=0.4)) == [False, True, False, False]
    assert kept(top_k_top_p_filter(logits, top_p=0.75)) == [False, True, False, True]
    assert kept(top_k_top_p_filter(logits, top_p=0.85)) == [False, True, True, True]
    assert kept(top_k_top_p_filter(logits, top_k=3, top_p=0.4)) == [False, True, False, False]
    torch.testing.assert_close(top_k_top_p_filter(logits), logits)  # both off
    with pytest.raises(ValueError):
        top_k_top_p_filter(logits, top_p=0.0)


def test_sampling_matches_the_distribution() -> None:
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0]).repeat(20000, 1)
    draws = sample_next(logits, temperature=2.0, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, torch.softmax(logits[0] / 2.0, -1), atol=0.015, rtol=0)
    # top-k=2 never draws outside the two best tokens
    draws = sample_next(logits[:2000], top_k=2, generator=torch.Generator().manual_seed(1))
    assert set(draws.tolist()) == {0, 3}


def test_sampling_is_seeded_and_top_k_1_is_greedy(model, batch) -> None:
    ids, mask = batch
    run = lambda seed, **kw: generate(  # noqa: E731
        model, ids, attention_mask=mask, max_new_tokens=10, strategy="sample",
        generator=torch.Generator().manual_seed(seed), **kw,
    )
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    greedy = generate(model, ids, attention_mask=mask, max_new_tokens=10)
    assert torch.equal(run(5, top_k=1), greedy)
    assert torch.equal(run(5, temperature=1e-4), greedy)
    out = run(2, top_p=0.9, temperature=0.7)
    for row, n in zip(out, lengths(out)):
        assert (row[n:] == PAD).all()
