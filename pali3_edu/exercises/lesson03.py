"""Checks for lesson 03 (sigmoid loss).

* :func:`check_sigmoid_loss` — the learner's ``sigmoid_loss(image_emb, text_emb, t_prime, bias)``
  on L2-normalised ``(B, D)`` embeddings, value and gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from pali3_edu.siglip import sigmoid_loss, softmax_loss


def _fail(msg: str) -> None:
    raise AssertionError(msg)


def _inputs(b: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(x + 0.8 * torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)  # related pairs
    return x, y


def _diagnose(got: float, x, y, tp: float, bias: float) -> str:
    b = x.shape[0]
    cos = x @ y.T
    z = 2 * torch.eye(b, dtype=x.dtype) - 1
    t = math.exp(tp)

    def loss(logits, labels=z, norm=b):
        return (-F.logsigmoid(labels * logits)).sum().item() / norm

    variants = {
        "You divided by B² (a mean over all pairs). The paper sums over the B² pairs and divides by B.":
            loss(t * cos + bias, norm=b * b),
        "You forgot to divide by the batch size B.": loss(t * cos + bias, norm=1),
        "You used t' directly as the temperature: t = exp(t') (t_prime.exp()).": loss(tp * cos + bias),
        "The bias b is missing: logit_ij = t·⟨x_i, y_j⟩ + b.": loss(t * cos),
        "Labels are flipped: z_ij = +1 on the diagonal (matching pairs), −1 elsewhere.": loss(t * cos + bias, -z),
        "Only the positive pairs are counted: every one of the B² pairs is a binary problem "
        "(negatives have z = −1).": (-F.logsigmoid(t * cos.diagonal() + bias)).sum().item() / b,
        "That is the softmax (CLIP) loss; the sigmoid loss has one sigmoid per pair.":
            softmax_loss(x, y, torch.tensor(tp)).item(),
        "You used labels 0/1 inside log σ(z·logit): z must be ±1 (or use BCE with 0/1 targets).":
            loss(t * cos + bias, torch.eye(b, dtype=x.dtype)),
    }
    for why, value in variants.items():
        if math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-9):
            return why
    return ("Check the formula: logits = exp(t')·x @ y.T + b; z = 2·eye(B) − 1; "
            "loss = −logsigmoid(z·logits).sum() / B.")


def check_sigmoid_loss(fn: Callable[..., torch.Tensor]) -> None:
    """Compare ``fn(image_emb, text_emb, t_prime, bias)`` with :func:`pali3_edu.siglip.sigmoid_loss`."""
    cases = [(4, 8, 0, math.log(10), -10.0), (7, 16, 1, 1.0, -2.0), (1, 4, 2, 0.5, 0.3), (16, 32, 3, 2.0, -5.0)]
    for b, d, seed, tp, bias in cases:
        x, y = _inputs(b, d, seed)
        args = [x.clone().requires_grad_(), y.clone().requires_grad_(),
                torch.tensor(tp, dtype=torch.float64, requires_grad=True),
                torch.tensor(bias, dtype=torch.float64, requires_grad=True)]
        try:
            got = fn(*args)
        except Exception as e:  # noqa: BLE001
            _fail(f"Your sigmoid_loss raised {type(e).__name__}: {e} (batch {b}, dim {d}).")
        if not isinstance(got, torch.Tensor) or got.numel() != 1:
            _fail(f"sigmoid_loss should return a scalar tensor, got {got!r:.80}.")
        ref_args = [a.detach().clone().requires_grad_() for a in args]
        want = sigmoid_loss(*ref_args)
        if not math.isclose(got.item(), want.item(), rel_tol=1e-6, abs_tol=1e-9):
            _fail(f"batch {b}, t' = {tp:.3f}, b = {bias}: you got {got.item():.6f}, expected {want.item():.6f}.\n"
                  + _diagnose(got.item(), x, y, tp, bias))
        if not got.requires_grad:
            _fail("The loss does not require grad: compute it with torch operations on the inputs "
                  "(no .item(), numpy or .detach()) so training can backpropagate through it.")
        got.sum().backward()
        want.backward()
        for name, a, r in zip(("image_emb", "text_emb", "t_prime", "bias"), args, ref_args):
            if a.grad is None or not torch.allclose(a.grad, r.grad, rtol=1e-6, atol=1e-9):
                _fail(f"The value is right but the gradient w.r.t. {name} differs: "
                      "is some part computed with a detached or in-place-modified tensor?")
    print(f"✅ sigmoid_loss matches the reference on {len(cases)} cases (values and gradients).")
