"""Tests for the UL2 mixture of denoisers (``pali3_edu.ul2``)."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pali3_edu import ul2
from pali3_edu.tokens import IGNORE_INDEX, MODE_TOKENS
from pali3_edu.ul2 import (
    UL2_DENOISERS,
    Denoiser,
    UL2Mixture,
    apply_noise_mask,
    corrupted_lengths,
    merge_spans,
    prefix_lm,
    random_segmentation,
    random_spans_helper,
    random_spans_noise_mask,
    span_corruption,
    span_counts,
    span_lengths,
    ul2_batch,
)

VOCAB = 1000


def sentinel(i: int) -> int:  # like T5: <extra_id_0> is the highest id, counting down
    return VOCAB - 1 - i


class FakeTokenizer:
    """The few ids the denoisers need, without SentencePiece."""

    pad_id, eos_id = 0, 1
    modes = {"[NLU]": 900, "[NLG]": 901, "[S2S]": 902}

    def sentinel_id(self, i: int) -> int:
        return sentinel(i)

    def mode_id(self, mode: str) -> int:
        return self.modes[mode]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- lengths (T5's own numbers)


@pytest.mark.parametrize(
    "mean_span, density, expected",
    [(3, 0.15, (568, 114)), (8, 0.15, (588, 100)), (3, 0.5, (766, 512)),
     (8, 0.5, (908, 512)), (64, 0.15, (600, 92)), (64, 0.5, (1006, 512))],
)
def test_random_spans_helper_matches_t5_values(mean_span, density, expected):
    assert random_spans_helper(512, density, mean_span) == expected


@pytest.mark.parametrize("mean_span, density", [(3, 0.15), (8, 0.15), (64, 0.15)])
def test_helper_length_gives_512_inputs(mean_span, density):
    tokens_length, targets_length = random_spans_helper(512, density, mean_span)
    assert corrupted_lengths(tokens_length, density, mean_span) == (512, targets_length)
    # and the real corruption produces exactly these lengths (+ EOS)
    inputs, targets = span_corruption(torch.arange(tokens_length) + 2, density, mean_span,
                                      sentinel, gen())
    assert (len(inputs) + 1, len(targets) + 1) == (512, targets_length)


def test_span_counts():
    assert span_counts(100, 0.15, 3) == (15, 5)
    assert span_counts(10, 0.01, 3) == (1, 1)  # at least one noise token
    assert span_counts(3, 0.99, 1) == (2, 1)  # at least one kept token, spans ≤ kept tokens
    assert span_counts(10, 0.2, 0.5) == (2, 2)  # spans ≤ noise tokens


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(length=10, noise_density=0.0, mean_span=3), "noise_density"),
     (dict(length=10, noise_density=1.0, mean_span=3), "noise_density"),
     (dict(length=10, noise_density=-0.2, mean_span=3), "noise_density"),
     (dict(length=10, noise_density=0.15, mean_span=0), "mean_span"),
     (dict(length=10, noise_density=0.15, mean_span=-2), "mean_span"),
     (dict(length=1, noise_density=0.15, mean_span=3), "at least 2 tokens")],
)
def test_bad_settings_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        random_spans_noise_mask(generator=gen(), **kwargs)


def test_bad_inputs_elsewhere():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        prefix_lm(torch.tensor([5]), gen())
    with pytest.raises(ValueError, match="kind"):
        Denoiser("bad", "Q")
    with pytest.raises(ValueError, match="noise_density"):
        Denoiser("bad", "R", 3, 1.5)
    with pytest.raises(ValueError, match="weights"):
        UL2Mixture(UL2_DENOISERS, (1.0, 2.0))
    with pytest.raises(ValueError, match="sentinel"):
        apply_noise_mask(torch.arange(6), torch.tensor([0, 1, 0, 1, 0, 1]).bool(), [999])


# ---------------------------------------------------------------- the mask's structure


@settings(max_examples=150, deadline=None, derandomize=True)
@given(length=st.integers(2, 300), density=st.floats(0.01, 0.99),
       mean_span=st.floats(0.5, 80), seed=st.integers(0, 2**31))
def test_mask_structure(length, density, mean_span, seed):
    mask = random_spans_noise_mask(length, density, mean_span, gen(seed))
    num_noise, num_spans = span_counts(length, density, mean_span)
    assert mask.shape == (length,) and mask.dtype == torch.bool
    assert int(mask.sum()) == num_noise
    assert len(span_lengths(mask)) == num_spans
    assert not mask[0] and mask[-1]  # starts with kept tokens, ends in noise
    assert len(span_lengths(~mask)) == num_spans  # kept runs and spans alternate


@settings(max_examples=150, deadline=None, derandomize=True)
@given(length=st.integers(2, 300), density=st.floats(0.01, 0.99),
       mean_span=st.floats(0.5, 80), seed=st.integers(0, 2**31))
def test_span_corruption_is_invertible(length, density, mean_span, seed):
    tokens = torch.randint(2, 600, (length,), generator=gen(seed + 1))  # below the sentinels
    inputs, targets = span_corruption(tokens, density, mean_span, sentinel, gen(seed))
    num_noise, num_spans = span_counts(length, density, mean_span)
    assert len(inputs) == length - num_noise + num_spans
    assert len(targets) == num_noise + num_spans
    assert targets[0] == sentinel(0)
    assert torch.equal(merge_spans(inputs, targets, sentinel), tokens)
    # sentinels appear in order, once each, in both halves
    expected = [sentinel(i) for i in range(num_spans)]
    assert [t for t in inputs.tolist() if t >= VOCAB - 300] == expected
    assert [t for t in targets.tolist() if t >= VOCAB - 300] == expected


def test_worked_example():
    tokens = torch.tensor([10, 11, 12, 13, 14, 15, 16, 17])
    mask = torch.tensor([0, 1, 1, 0, 0, 1, 0, 1]).bool()
    inputs, targets = apply_noise_mask(tokens, mask, sentinel)
    assert inputs.tolist() == [10, 999, 13, 14, 998, 16, 997]
    assert targets.tolist() == [999, 11, 12, 998, 15, 997, 17]


def test_random_segmentation():
    for total, parts in [(1, 1), (10, 1), (10, 10), (37, 5)]:
        seg = random_segmentation(total, parts, gen(total))
        assert seg.sum() == total and len(seg) == parts and (seg >= 1).all()
    with pytest.raises(ValueError):
        random_segmentation(3, 4, gen())


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("density, mean_span", [(0.15, 3), (0.15, 8), (0.5, 3), (0.5, 8),
                                                (0.15, 64), (0.5, 64)])
def test_density_and_mean_span_match_settings(density, mean_span):
    """Over many samples, noise density within 1 % and mean span length within 10 %.

    Sequences are long enough to hold ≥ 5 spans; with fewer, rounding the span count moves the
    mean span length more (that is T5's behaviour, not an error).
    """
    length = max(512, int(5 * mean_span / density))
    g = gen(1)
    noise, spans = [], []
    for _ in range(50):
        mask = random_spans_noise_mask(length, density, mean_span, g)
        noise.append(int(mask.sum()))
        spans.extend(span_lengths(mask).tolist())
    assert abs(sum(noise) / (50 * length) - density) < 0.01
    assert abs(sum(spans) / len(spans) - mean_span) / mean_span < 0.10
    # individual spans vary (they are not all the mean)
    assert max(spans) > min(spans)


def test_all_masks_equally_likely():
    """L = 8, density .5, mean span 2 → 4 noise tokens in 2 spans: 3 × 3 = 9 masks."""
    g = gen(2)
    n = 2700
    counts = Counter(tuple(random_spans_noise_mask(8, 0.5, 2, g).tolist()) for _ in range(n))
    valid = set()
    for a, b in itertools.product(range(1, 4), range(1, 4)):  # kept runs a, 4-a; spans b, 4-b
        valid.add(tuple([False] * a + [True] * b + [False] * (4 - a) + [True] * (4 - b)))
    assert set(counts) == valid
    expected = n / 9
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 26.1  # 99.9 % quantile of chi-square with 8 degrees of freedom


def test_sampling_is_seeded():
    a = random_spans_noise_mask(200, 0.15, 3, gen(7))
    b = random_spans_noise_mask(200, 0.15, 3, gen(7))
    c = random_spans_noise_mask(200, 0.15, 3, gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------- S-denoiser


def test_prefix_lm_split_points_are_valid_and_uniform():
    tokens = torch.arange(2, 12)  # L = 10 → split in [1, 9]
    g = gen(3)
    splits = Counter()
    for _ in range(2700):
        prefix, rest = prefix_lm(tokens, g)
        assert len(prefix) >= 1 and len(rest) >= 1
        assert torch.equal(torch.cat([prefix, rest]), tokens)
        splits[len(prefix)] += 1
    assert set(splits) == set(range(1, 10))
    chi2 = sum((c - 300) ** 2 / 300 for c in splits.values())
    assert chi2 < 26.1
    for _ in range(100):  # a restricted range is respected
        prefix, _ = prefix_lm(tokens, g, min_split=4, max_split=6)
        assert 4 <= len(prefix) <= 6


# ---------------------------------------------------------------- mixture and batches


def test_paper_denoisers_and_default_mixture():
    settings_ = [(d.kind, d.mean_span, d.noise_density, d.mode_token) for d in UL2_DENOISERS
                 if d.kind != "S"]
    assert settings_ == [("R", 3, 0.15, "[NLU]"), ("R", 8, 0.15, "[NLU]"),
                         ("X", 3, 0.5, "[NLG]"), ("X", 8, 0.5, "[NLG]"),
                         ("X", 64, 0.15, "[NLG]"), ("X", 64, 0.5, "[NLG]")]
    assert UL2_DENOISERS[-1].kind == "S" and UL2_DENOISERS[-1].mode_token == "[S2S]"
    shares = UL2Mixture().kind_shares()
    assert shares == pytest.approx({"R": 0.4, "X": 0.4, "S": 0.2})


def test_ul2_batch_format_and_mixture_frequencies():
    tok = FakeTokenizer()
    mix = UL2Mixture()
    g = gen(4)
    seqs = [torch.randint(2, 800, (int(n),), generator=g) for n in torch.randint(20, 90, (256,),
                                                                                   generator=g)]
    batch = ul2_batch(seqs, mix, tok, g, max_input_len=64, max_target_len=48)
    ids, am, labels, den = (batch[k] for k in ("input_ids", "attention_mask", "labels",
                                               "denoiser"))
    assert ids.shape[0] == labels.shape[0] == den.shape[0] == 256
    assert ids.shape[1] <= 64 and labels.shape[1] <= 48 and ids.shape[1] % 8 == 0
    for b in range(256):
        d = mix.denoisers[int(den[b])]
        n_in = int(am[b].sum())
        inp = ids[b, :n_in]
        assert (ids[b, n_in:] == tok.pad_id).all()
        assert inp[0] == tok.mode_id(d.mode_token) and inp[-1] == tok.eos_id
        tgt = labels[b][labels[b] != IGNORE_INDEX]
        assert tgt[-1] == tok.eos_id and (labels[b, len(tgt):] == IGNORE_INDEX).all()
        original = seqs[b][: 62 + 47]
        if d.kind == "S":
            rebuilt = torch.cat([inp[1:-1], tgt[:-1]])
        else:
            rebuilt = merge_spans(inp[1:-1], tgt[:-1], sentinel)
        # the example is a (possibly cropped) prefix of the original sequence
        assert torch.equal(rebuilt, original[: len(rebuilt)])
    # denoiser frequencies follow the mixture (binomial 4-sigma bands)
    freq = torch.bincount(den, minlength=len(mix.denoisers)).double() / 256
    p = mix.probs
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / 256).sqrt() + 1e-9).all()


def test_ul2_batch_crops_long_sequences_to_fit():
    tok = FakeTokenizer()
    long = torch.arange(2, 602)
    for i, d in enumerate(UL2_DENOISERS):
        batch = ul2_batch([long], UL2Mixture(), tok, gen(i), max_input_len=40,
                          max_target_len=24, denoiser_ids=torch.tensor([i]))
        assert int(batch["attention_mask"].sum()) <= 40
        assert int((batch["labels"] != IGNORE_INDEX).sum()) <= 24


def test_ul2_batch_is_deterministic():
    tok = FakeTokenizer()
    seqs = [torch.arange(2, 60)] * 8
    a = ul2_batch(seqs, UL2Mixture(), tok, gen(5))
    b = ul2_batch(seqs, UL2Mixture(), tok, gen(5))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_custom_mixture_only_s():
    mix = UL2Mixture((UL2_DENOISERS[-1],), (1.0,))
    batch = ul2_batch([torch.arange(2, 30)] * 4, mix, FakeTokenizer(), gen())
    assert (batch["input_ids"][:, 0] == 902).all()
    assert math.isclose(mix.kind_shares()["S"], 1.0)


def test_module_docstring_example_runs():
    assert ul2.random_spans_helper(512, 0.15, 3.0) == (568, 114)


# ---------------------------------------------------------------- lesson 05 exercise checker


def test_check_random_spans_accepts_reference(capsys):
    from pali3_edu.exercises.lesson05 import check_random_spans

    check_random_spans(random_spans_noise_mask, samples=900)
    assert "passed" in capsys.readouterr().out


def _even_spans(length, density, mean_span, generator):
    """A plausible mistake: spans of equal length at equal distances (not random at all)."""
    n, k = span_counts(length, density, mean_span)
    noise = [n // k] * k
    noise[-1] += n - sum(noise)
    keep = [(length - n) // k] * k
    keep[-1] += length - n - sum(keep)
    mask = []
    for a, b in zip(keep, noise):
        mask += [False] * a + [True] * b
    return torch.tensor(mask)


@pytest.mark.parametrize(
    "wrong, message",
    [(lambda L, r, mu, g: random_spans_noise_mask(L, r, mu, g).flip(0), "starts with noise"),
     (lambda L, r, mu, g: random_spans_noise_mask(L, r, mu, g).long(), "bool"),
     (lambda L, r, mu, g: torch.rand(L, generator=g) < r, "noise tokens"),
     (_even_spans, "never appeared")],
)
def test_check_random_spans_explains_mistakes(wrong, message):
    from pali3_edu.exercises.lesson05 import check_random_spans

    with pytest.raises(AssertionError, match=message):
        check_random_spans(wrong, samples=900)


def test_viz_html_and_histograms():
    import matplotlib

    matplotlib.use("Agg")
    from pali3_edu.viz.text import corruption_html, denoise_for_display, plot_span_length_histograms

    class Tok(FakeTokenizer):
        def id_to_token(self, i: int) -> str:
            return f"<extra_id_{VOCAB - 1 - i}>" if i > 950 else f"w{i}"

    tokens = torch.arange(10, 30)
    mask = torch.zeros(20, dtype=torch.bool)
    mask[[3, 4, 10, 19]] = True
    page = corruption_html(tokens, mask, Tok(), "[NLU]")
    assert page.count("&lt;extra_id_0&gt;") == 2 and "&lt;extra_id_2&gt;" in page
    assert "4 noise tokens" in page and "3 spans" in page
    for d in UL2_DENOISERS:
        assert "targets" in denoise_for_display(tokens, d, Tok(), seed=1)
    fig = plot_span_length_histograms(UL2_DENOISERS[:2], length=128, samples=5)
    assert len(fig.axes) == 2


def test_limited_sentinels_give_a_clear_error():
    class Tok100(FakeTokenizer):  # like T5 and the course tokenizer: 100 sentinels
        def sentinel_id(self, i: int) -> int:
            if not 0 <= i < 100:
                raise ValueError("sentinel out of range")
            return sentinel(i)

    long = torch.arange(2, 700)
    r_batch = ul2_batch([long], UL2Mixture(), Tok100(), gen(), 512, 512,
                        denoiser_ids=torch.tensor([0]))  # R μ3: 28 spans, fine
    assert int(r_batch["attention_mask"].sum()) == 512
    with pytest.raises(ValueError, match="sentinel tokens"):  # X μ3 r.5: 128 spans > 100
        ul2_batch([long], UL2Mixture(), Tok100(), gen(), 512, 512, denoiser_ids=torch.tensor([2]))


def test_denoisers_use_the_shared_mode_tokens():
    assert ul2.MODE_TOKENS is MODE_TOKENS
    for d in UL2_DENOISERS:
        assert d.mode_token == MODE_TOKENS[d.kind]
    assert {d.kind: d.mode_token for d in UL2_DENOISERS} == {"R": "[NLU]", "X": "[NLG]", "S": "[S2S]"}
