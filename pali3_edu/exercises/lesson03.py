"""Checks for lesson 03 (the sigmoid loss).

* :func:`check_sigmoid_loss` — the learner's ``sigmoid_loss(image_emb, text_emb, t_prime, bias)``
  on L2-normalised ``(B, D)`` embeddings and 0-d ``t_prime``, ``bias``: a scalar tensor equal to
  :func:`pali3_edu.siglip.sigmoid_loss`, with the same gradients.

The check runs the learner's function on all its cases first. When the values differ it looks
for the usual mistake that gives exactly the learner's values on every case (a mean over B²
pairs, t' used without exp, flipped labels, 0/1 labels, the softmax loss, …) and names it in the
``Hint:``. A stub that still raises ``NotImplementedError`` gets a "✏️ Your turn" message; any
other exception is reported with a hint and chained below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from pali3_edu.exercises import READ_THE_TRACEBACK, call_learner, fail, function_name, require_callable
from pali3_edu.siglip import sigmoid_loss, softmax_loss

__all__ = ["check_sigmoid_loss"]

#: (batch, dim, seed, t', b): the paper's init, milder values, a batch of one, a bigger batch.
_CASES = [(4, 8, 0, math.log(10), -10.0), (7, 16, 1, 1.0, -2.0), (1, 4, 2, 0.5, 0.3), (16, 32, 3, 2.0, -5.0)]


def _inputs(b: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit image embeddings and captions related to them (noise of norm 0.5 against a unit signal)."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    noise = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    return x, F.normalize(x + 0.5 * noise, dim=-1)


def _pair_loss(logits: torch.Tensor, labels: torch.Tensor, norm: float) -> float:
    return (-F.logsigmoid(labels * logits)).sum().item() / norm


#: The usual mistakes: (their value on (x, y, t', b), the hint that names them).
_MISTAKES: list[tuple[Callable[[torch.Tensor, torch.Tensor, float, float], float], str]] = [
    (lambda x, y, tp, b: _pair_loss(math.exp(tp) * x @ y.T + b, 2 * torch.eye(len(x), dtype=x.dtype) - 1, len(x) ** 2),
     "you divided by B² (a mean over all pairs). The paper sums over the B² pairs and divides by B."),
    (lambda x, y, tp, b: _pair_loss(math.exp(tp) * x @ y.T + b, 2 * torch.eye(len(x), dtype=x.dtype) - 1, 1),
     "you forgot to divide by the batch size B: sum over the B² pairs, then divide by B."),
    (lambda x, y, tp, b: _pair_loss(tp * x @ y.T + b, 2 * torch.eye(len(x), dtype=x.dtype) - 1, len(x)),
     "you used t' directly as the temperature: t = exp(t') (t_prime.exp()). The model learns t' = log t "
     "so that t stays positive."),
    (lambda x, y, tp, b: _pair_loss(math.exp(tp) * x @ y.T, 2 * torch.eye(len(x), dtype=x.dtype) - 1, len(x)),
     "the bias b is missing: logit_ij = t·⟨x_i, y_j⟩ + b."),
    (lambda x, y, tp, b: _pair_loss(math.exp(tp) * (x @ y.T + b), 2 * torch.eye(len(x), dtype=x.dtype) - 1, len(x)),
     "you multiplied the bias by the temperature, t·(⟨x_i, y_j⟩ + b): the bias is added after "
     "scaling, logit_ij = t·⟨x_i, y_j⟩ + b."),
    (lambda x, y, tp, b: _pair_loss(math.exp(tp) * x @ y.T + b, 1 - 2 * torch.eye(len(x), dtype=x.dtype), len(x)),
     "the labels are flipped: z_ij = +1 on the diagonal (matching pairs), −1 elsewhere."),
    (lambda x, y, tp, b: (-F.logsigmoid(math.exp(tp) * (x * y).sum(-1) + b)).sum().item() / len(x),
     "only the positive pairs are counted: every one of the B² pairs is a binary problem (the "
     "negatives, i ≠ j, have z = −1)."),
    (lambda x, y, tp, b: (F.softplus(math.exp(tp) * x @ y.T + b)
                          * (1 - torch.eye(len(x), dtype=x.dtype))).sum().item() / len(x),
     "only the negative pairs are counted: the diagonal (the matching pairs, z = +1) belongs to the "
     "sum too."),
    (lambda x, y, tp, b: softmax_loss(x, y, torch.tensor(tp, dtype=x.dtype)).item(),
     "that is the softmax (CLIP) loss; the sigmoid loss has one sigmoid per pair and no normaliser."),
    (lambda x, y, tp, b: _pair_loss(math.exp(tp) * x @ y.T + b, torch.eye(len(x), dtype=x.dtype), len(x)),
     "you used labels 0/1 inside log σ(z·logit): z must be ±1, 2·eye(B) − 1 (or use "
     "binary_cross_entropy_with_logits with 0/1 targets)."),
    (lambda x, y, tp, b: -_pair_loss(math.exp(tp) * x @ y.T + b, 2 * torch.eye(len(x), dtype=x.dtype) - 1, len(x)),
     "your loss has the wrong sign: log σ(·) is ≤ 0, the loss is its NEGATIVE, −log σ(z·logit) (≥ 0)."),
    (lambda x, y, tp, b: -(torch.sigmoid((2 * torch.eye(len(x), dtype=x.dtype) - 1) * (math.exp(tp) * x @ y.T + b)))
     .sum().item() / len(x),
     "you used σ instead of log σ: the loss of a pair is −log σ(z·logit) (F.logsigmoid)."),
]


def _exception_hint(err: Exception) -> str:
    msg = str(err)
    if "cannot be multiplied" in msg or "size mismatch" in msg:
        return ("the similarities of all pairs are image_emb @ text_emb.T: (B, D) @ (D, B) gives the "
                "(B, B) matrix.")
    if "must match the size" in msg:
        return ("the labels and the logits must have the same (B, B) shape: torch.eye(B) with "
                "B = image_emb.shape[0].")
    if "dtype" in msg.lower() or "Double" in msg or "Float" in msg:
        return ("the tensors mix float32 and float64: build the labels in the logits' dtype, "
                "torch.eye(B, dtype=logits.dtype).")
    return READ_THE_TRACEBACK


def _as_scalar(got: Any, call: str, b: int) -> torch.Tensor:
    if got is None:
        raise fail(f"{call} returned None.", "end your function with `return loss`.")
    if isinstance(got, (int, float)) or (hasattr(got, "dtype") and not isinstance(got, torch.Tensor)):
        raise fail(f"{call} returned a {type(got).__name__}, not a tensor.",
                   "keep the loss a torch tensor (no .item(), no NumPy): training calls loss.backward() on it.")
    if not isinstance(got, torch.Tensor):
        raise fail(f"{call} returned a {type(got).__name__}.", "return the loss as a scalar tensor.")
    if got.numel() != 1:
        shape = tuple(got.shape)
        if shape == (b, b):
            hint = "you return the loss of every pair: sum them and divide by B."
        elif shape == (b,):
            hint = "you return one loss per row: sum the rows too, then divide by B."
        else:
            hint = "reduce to one number: −logsigmoid(z·logits).sum() / B."
        raise fail(f"{call} returned a tensor of shape {shape}, not a scalar.", hint)
    return got


def check_sigmoid_loss(fn: Callable[..., Any]) -> None:
    """Compare ``fn(image_emb, text_emb, t_prime, bias)`` with :func:`pali3_edu.siglip.sigmoid_loss`:
    the value on four cases (the paper's init, a batch of one, …), then the gradients."""
    require_callable(fn, "check_sigmoid_loss")
    name = function_name(fn)
    runs = []
    for b, d, seed, tp, bias in _CASES:
        x, y = _inputs(b, d, seed)
        args = [x.clone().requires_grad_(), y.clone().requires_grad_(),
                torch.tensor(tp, dtype=torch.float64, requires_grad=True),
                torch.tensor(bias, dtype=torch.float64, requires_grad=True)]
        call = f"{name}(image_emb ({b}, {d}), text_emb ({b}, {d}), t_prime={tp:.3g}, bias={bias:g})"
        got = _as_scalar(call_learner(fn, tuple(args), call, _exception_hint), call, b)
        runs.append((call, (x, y, tp, bias), args, got))

    values = [got.item() for *_, got in runs]
    wants = [sigmoid_loss(x, y, tp, bias).item() for _, (x, y, tp, bias), _, _ in runs]
    wrong = [i for i, (g, w) in enumerate(zip(values, wants)) if not math.isclose(g, w, rel_tol=1e-6, abs_tol=1e-9)]
    if wrong:
        i = wrong[0]
        context = f"{runs[i][0]} returned {values[i]:.6f}, expected {wants[i]:.6f}"
        for mistake, hint in _MISTAKES:
            if all(math.isclose(g, mistake(*inputs), rel_tol=1e-6, abs_tol=1e-9)
                   for g, (_, inputs, _, _) in zip(values, runs)):
                raise fail(f"{context}:", hint)
        raise fail(f"{context}.",
                   "check the formula: logits = exp(t')·image_emb @ text_emb.T + b; z = 2·eye(B) − 1; "
                   "loss = −logsigmoid(z·logits).sum() / B.")

    for call, (x, y, tp, bias), args, got in runs:
        if not got.requires_grad:
            raise fail(f"{call}: the loss is cut off from the autograd graph.",
                       "compute it with torch operations on the inputs (no .item(), NumPy, math.exp or "
                       ".detach()) so training can backpropagate through it.")
        got.sum().backward()
        ref_args = [a.detach().clone().requires_grad_() for a in args]
        sigmoid_loss(*ref_args).backward()
        for what, a, r in zip(("image_emb", "text_emb", "t_prime", "bias"), args, ref_args):
            if a.grad is None:
                raise fail(f"{call}: the value is right but no gradient reaches {what}.",
                           f"{what} became a plain number somewhere (float(), .item(), math.exp): use "
                           "torch operations on the tensor itself, e.g. t_prime.exp().")
            if not torch.allclose(a.grad, r.grad, rtol=1e-6, atol=1e-9):
                raise fail(f"{call}: the value is right but the gradient with respect to {what} differs.",
                           "is some part computed with a detached or in-place-modified tensor?")
    print(f"✅ {name} matches the reference on {len(_CASES)} cases (values and gradients).")
