"""The sigmoid loss family: definition, init sanity value, softmax comparison, chunked and ring versions."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pali3_edu.siglip import (
    chunked_sigmoid_loss,
    sigmoid_loss,
    simulated_ring_sigmoid_loss,
    softmax_loss,
)


def unit(b, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=-1)


def loop_sigmoid_loss(x, y, t_prime, bias):
    """The paper's formula, one pair at a time."""
    b = x.shape[0]
    total = 0.0
    for i in range(b):
        for j in range(b):
            z = 1.0 if i == j else -1.0
            logit = math.exp(t_prime) * float(x[i] @ y[j]) + bias
            total += -math.log(1 / (1 + math.exp(-z * logit)))
    return total / b


def test_sigmoid_loss_matches_the_formula():
    x, y = unit(5, 8, 0), unit(5, 8, 1)
    got = sigmoid_loss(x, y, math.log(3.0), -1.5)
    assert math.isclose(got.item(), loop_sigmoid_loss(x, y, math.log(3.0), -1.5), rel_tol=1e-10)


def test_sigmoid_loss_matches_transformers_formula():
    # SiglipModel: logits_per_text = text @ image.T * exp(scale) + bias; loss = mean_rows(sum(-logsigmoid(z * logits)))
    x, y = unit(6, 8, 2), unit(6, 8, 3)
    logits_per_text = y @ x.T * math.exp(1.2) + (-4.0)
    z = 2 * torch.eye(6, dtype=torch.float64) - 1
    hf = (-F.logsigmoid(z * logits_per_text)).sum(-1).mean()
    torch.testing.assert_close(sigmoid_loss(x, y, 1.2, -4.0), hf)


def test_sanity_value_at_init():
    # each row ≈ softplus(10) + (B − 1)·softplus(−10) = 10.0000454 + (B − 1)·4.54e−5 when all cosines are 0
    b = 64
    q, _ = torch.linalg.qr(torch.randn(512, 2 * b, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))
    x, y = q[:, :b].T, q[:, b:].T  # orthonormal: every cosine is exactly 0
    t_prime = torch.tensor(math.log(10.0), dtype=torch.float64)
    expected = 10.0000454 + (b - 1) * 4.54e-5
    assert abs(sigmoid_loss(x, y, t_prime, -10.0).item() - expected) < 1e-6
    # random unit vectors in a high dimension: cosines ~ ±1/√d, so only approximately
    x, y = unit(b, 8192, 4), unit(b, 8192, 5)
    assert abs(sigmoid_loss(x, y, t_prime, -10.0).item() - expected) < 0.05


def test_softmax_loss_is_symmetric_cross_entropy():
    x, y = unit(4, 8, 6), unit(4, 8, 7)
    t = 5.0
    logits = t * x @ y.T
    i2t = -torch.log_softmax(logits, 1).diagonal().mean()
    t2i = -torch.log_softmax(logits, 0).diagonal().mean()
    torch.testing.assert_close(softmax_loss(x, y, math.log(t)), (i2t + t2i) / 2)
    torch.testing.assert_close(softmax_loss(x, y, math.log(t)), softmax_loss(y, x, math.log(t)))


def _grads(fn, x, y, tp, b):
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    tp, b = torch.tensor(tp, dtype=x.dtype, requires_grad=True), torch.tensor(b, dtype=x.dtype, requires_grad=True)
    loss = fn(x, y, tp, b)
    loss.backward()
    return loss.detach(), x.grad, y.grad, tp.grad, b.grad


@pytest.mark.parametrize("chunks", [1, 3, 4, 12, 20])
def test_chunked_equals_full_with_gradients(chunks):
    x, y = unit(12, 16, 8), unit(12, 16, 9)
    ref = _grads(sigmoid_loss, x, y, 1.7, -6.0)
    got = _grads(lambda *a: chunked_sigmoid_loss(*a, chunks=chunks), x, y, 1.7, -6.0)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("devices", [1, 2, 4])
def test_simulated_ring_equals_full_with_gradients(devices):
    x, y = unit(8, 16, 10), unit(8, 16, 11)
    ref = _grads(sigmoid_loss, x, y, 2.3, -10.0)
    got = _grads(lambda *a: simulated_ring_sigmoid_loss(*a, devices=devices), x, y, 2.3, -10.0)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r)
    with pytest.raises(ValueError, match="evenly"):
        simulated_ring_sigmoid_loss(x, y, 2.3, -10.0, devices=3)


def test_chunked_never_saves_the_full_matrix():
    b, chunks = 64, 8
    x = unit(b, 4, 12, torch.float32).requires_grad_()  # dim 4: inputs (B·4) are smaller than a block
    y = unit(b, 4, 13, torch.float32).requires_grad_()
    tp, bias = torch.tensor(2.3, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked_sigmoid_loss(x, y, tp, bias, chunks=chunks).backward()
    assert max(sizes) <= b * (b // chunks)  # only (B, B/k) blocks
    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sigmoid_loss(x, y, tp, bias)
    assert max(sizes) == b * b  # the full loss keeps the (B, B) logits


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 9), chunks=st.integers(1, 10), tp=st.floats(-2, 4), bias=st.floats(-12, 3))
def test_chunked_property(b, chunks, tp, bias):
    x, y = unit(b, 4, b), unit(b, 4, b + 100)
    torch.testing.assert_close(chunked_sigmoid_loss(x, y, tp, bias, chunks=chunks), sigmoid_loss(x, y, tp, bias))


def test_loss_input_checks():
    with pytest.raises(ValueError, match="matching pairs"):
        sigmoid_loss(unit(3, 4, 0), unit(4, 4, 0), 0.0, 0.0)
    with pytest.raises(ValueError, match="batch, dim"):
        softmax_loss(unit(3, 4, 0)[None], unit(3, 4, 0)[None], 0.0)
    with pytest.raises(ValueError, match="chunks"):
        chunked_sigmoid_loss(unit(3, 4, 0), unit(3, 4, 1), 0.0, 0.0, chunks=0)


def test_perfect_alignment_lowers_sigmoid_loss():
    x = unit(8, 16, 14)
    assert sigmoid_loss(x, x, math.log(10), -5.0) < sigmoid_loss(x, unit(8, 16, 15), math.log(10), -5.0)


def test_lesson03_check_accepts_the_reference_and_explains_mistakes():
    from pali3_edu.exercises.lesson03 import check_sigmoid_loss

    check_sigmoid_loss(sigmoid_loss)

    def mean_over_pairs(x, y, tp, b):
        logits = tp.exp() * x @ y.T + b
        return -F.logsigmoid((2 * torch.eye(len(x), dtype=x.dtype) - 1) * logits).mean()

    with pytest.raises(AssertionError, match="divided by B²"):
        check_sigmoid_loss(mean_over_pairs)


def test_bench_measures_less_memory_for_the_chunked_loss():
    from pali3_edu.bench.siglip import compare

    (row,) = compare([512], dim=8, chunks=8, timing=False)
    assert row["full_mib"] > 512 * 512 * 4 / 2**20  # at least the (B, B) float32 logits
    assert row["memory_ratio"] > 3


def test_profiling_helpers_measure_and_reject_bad_arguments():
    from pali3_edu.profiling import MemoryTrace, forward_backward, memory_trace, peak_memory, time_call

    x = torch.randn(64, 8, requires_grad=True)
    y = torch.randn(64, 8, requires_grad=True)
    step = forward_backward(lambda a, b: (a @ b.T).square().sum(), x, y)
    step()
    first = x.grad.clone()
    step()
    torch.testing.assert_close(x.grad, first)  # gradients are reset, not accumulated
    calls = []
    seconds = time_call(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and seconds >= 0.0
    trace = memory_trace(step)
    assert isinstance(trace, MemoryTrace) and len(trace.times_us) == len(trace.allocated_bytes)
    assert trace.peak_bytes >= 64 * 64 * 4  # the (64, 64) float32 product
    assert peak_memory(step) >= 64 * 64 * 4  # on CPU: the peak of the same trace
    with pytest.raises(ValueError, match="repeats"):
        time_call(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="cpu' or 'cuda"):
        peak_memory(lambda: None, device="meta")
