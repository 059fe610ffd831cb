"""Checks for lesson 08 (the PaLI-3 model): joining the visual tokens to the prompt, and the
loss on the answer tokens.

- ``check_join(fn)``: ``fn(visual_tokens, prompt_embeds, prompt_mask)`` with shapes
  ``(batch, patches, d_model)``, ``(batch, prompt, d_model)``, ``(batch, prompt)`` must return
  ``(embeds, mask)`` of shapes ``(batch, patches + prompt, d_model)`` and ``(batch, patches +
  prompt)``: the visual tokens first, then the prompt; the mask is 1 on every image token and
  copies the prompt's mask after them (what :meth:`pali3_edu.pali3.PaLI3.embed_inputs` builds).
- ``check_answer_loss(fn)``: ``fn(logits, labels)`` with shapes ``(batch, target, vocab)`` and
  ``(batch, target)`` must return a scalar tensor: the cross-entropy averaged over every answer
  token of the batch (labels of -100 are not tokens and do not count), equal to the ``loss`` of
  :class:`pali3_edu.pali3.PaLI3`.

A check runs the learner's function on small inputs and compares the result with the reference.
When they differ it raises an ``AssertionError`` whose message says what is wrong and names the
likely cause: it recognises the usual mistakes (text before the image, padding left unmasked, a
per-example mean, a shifted target, ...). An exception raised inside the learner's function is
reported the same way, with a hint, and the original exception chained below it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pali3_edu.tokens import IGNORE_INDEX

JoinFn = Callable[[Tensor, Tensor, Tensor], Any]
LossFn = Callable[[Tensor, Tensor], Any]


def _fail(message: str, hint: str) -> AssertionError:
    return AssertionError(f"{message}\nHint: {hint}")


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", "your function")


def _call(fn: Callable[..., Any], call: str, args: tuple[Any, ...], hint_for: Callable[[Exception], str]) -> Any:
    """Run the learner's function; an exception becomes an AssertionError with a hint."""
    try:
        return fn(*args)
    except Exception as err:  # the learner's code may raise anything
        raise _fail(f"{call} raised {type(err).__name__}: {err}", hint_for(err)) from err


# --------------------------------------------------------------------------------------------
# Exercise 1: [visual tokens ; prompt] and its keep-mask
# --------------------------------------------------------------------------------------------


def _join_inputs(batch: int, patches: int, prompt: int, width: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Visual tokens around +3 and prompt embeddings around -3 (so a swap is easy to spot); row
    ``b`` of the prompt has ``b`` padding positions at its end (row 0 none)."""
    g = torch.Generator().manual_seed(seed)
    visual = torch.randn(batch, patches, width, generator=g) + 3
    text = torch.randn(batch, prompt, width, generator=g) - 3
    mask = torch.ones(batch, prompt, dtype=torch.long)
    for b in range(1, batch):
        mask[b, prompt - b:] = 0
    return visual, text, mask


def _join_exception_hint(err: Exception) -> str:
    msg = str(err)
    if "Sizes of tensors must match" in msg:
        return ("torch.cat joins tensors along ONE dimension and the others must agree. The visual "
                "tokens and the prompt have the same batch and width but different lengths: "
                "concatenate along the sequence, dim=1.")
    if "same number of dimensions" in msg:
        return ("the embeddings are (batch, length, d_model) and the mask is (batch, length): "
                "join embeddings with embeddings and masks with masks (the image part of the mask "
                "is a (batch, patches) tensor of ones).")
    return "the error comes from your function: read the traceback above it to find the line."


def _describe_shape(got: tuple[int, ...], want: tuple[int, ...], parts: tuple[Tensor, Tensor]) -> str:
    """Hint for a wrongly shaped join of ``parts`` (visual/text or image-mask/prompt-mask)."""
    a, b = parts
    if a.ndim == b.ndim and a.shape[0] == b.shape[0]:
        for dim in range(a.ndim):
            if dim == 1:
                continue
            shape = list(a.shape)
            shape[dim] = a.shape[dim] + b.shape[dim]
            if tuple(shape) == got and a.shape[1] == b.shape[1]:
                what = {0: "the batch", 2: "the features"}.get(dim, f"dim {dim}")
                return (f"you concatenated along dim={dim} ({what}). The image and the prompt are "
                        "two pieces of ONE sequence: concatenate along dim=1.")
    return f"expected shape {want}: the sequence (dim=1) holds patches + prompt positions."


def check_join(fn: JoinFn) -> None:
    """Check ``fn(visual_tokens (B, P, D), prompt_embeds (B, S, D), prompt_mask (B, S))
    -> (embeds (B, P + S, D), mask (B, P + S))`` against :meth:`PaLI3.embed_inputs`'s join."""
    name = _name(fn)
    # First P == S, so that a join along the wrong dimension still runs and can be recognised
    # from its shape; then a batch where the image is longer than the prompt.
    cases = [(2, 4, 4, 6, 0), (3, 6, 5, 8, 1)]
    for batch, patches, prompt, width, seed in cases:
        visual, text, mask = _join_inputs(batch, patches, prompt, width, seed)
        visual.requires_grad_(True)
        originals = (visual.detach().clone(), text.clone(), mask.clone())
        call = (f"{name}(visual_tokens {tuple(visual.shape)}, prompt_embeds {tuple(text.shape)}, "
                f"prompt_mask {tuple(mask.shape)})")
        out = _call(fn, call, (visual, text, mask), _join_exception_hint)

        if out is None:
            raise _fail(f"{call} returned None.", "end your function with `return embeds, mask`.")
        if isinstance(out, Tensor):
            raise _fail(f"{call} returned one tensor of shape {tuple(out.shape)}.",
                        "return a pair: `return embeds, mask` (the encoder needs both).")
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise _fail(f"{call} returned {type(out).__name__}.", "return a pair: `return embeds, mask`.")
        embeds, keep = out
        for what, value in (("embeds", embeds), ("mask", keep)):
            if not isinstance(value, Tensor):
                raise _fail(f"{call}: {what} is a {type(value).__name__}, not a tensor.",
                            "build both with torch operations (torch.cat, torch.ones).")
        for label, now, before in zip(("visual_tokens", "prompt_embeds", "prompt_mask"),
                                      (visual.detach(), text, mask), originals):
            if not torch.equal(now, before):
                raise _fail(f"{call} changed its input {label} in place.",
                            "build new tensors (torch.cat returns a new one) and leave the inputs "
                            "as they were: the model uses them again.")

        want_embeds = torch.cat([visual.detach(), text], dim=1)
        want_keep = torch.cat([torch.ones(batch, patches, dtype=mask.dtype), mask], dim=1)

        # --- the embeddings
        if tuple(embeds.shape) != tuple(want_embeds.shape):
            raise _fail(f"{call}: embeds has shape {tuple(embeds.shape)}, expected "
                        f"{tuple(want_embeds.shape)} (batch, patches + prompt, d_model).",
                        _describe_shape(tuple(embeds.shape), tuple(want_embeds.shape), (visual, text)))
        got = embeds.detach().float()
        if not torch.allclose(got, want_embeds, atol=1e-6):
            if torch.allclose(got, torch.cat([text, visual.detach()], dim=1), atol=1e-6):
                raise _fail(f"{call}: embeds has the prompt first and the image after it.",
                            "PaLI-3 PREPENDS the visual tokens: torch.cat([visual_tokens, "
                            "prompt_embeds], dim=1). The order also decides where the mask's "
                            "zeros go and the positions the encoder's relative bias sees.")
            if torch.allclose(got[:, :patches], want_embeds[:, :patches], atol=1e-6):
                raise _fail(f"{call}: the first {patches} positions are right (the image), the "
                            "prompt positions after them are not.",
                            "the prompt embeddings follow the visual tokens unchanged.")
            raise _fail(f"{call}: embeds has the right shape but the wrong values.",
                        "the join only places tensors side by side: positions 0..P-1 hold the "
                        "visual tokens, P..P+S-1 the prompt embeddings, nothing is added or scaled.")
        if not embeds.requires_grad:
            raise _fail(f"{call}: embeds is cut off from the autograd graph.",
                        "no .detach(), .data, torch.no_grad() or NumPy round trip: in training the "
                        "gradient of the loss flows back through the join into the projector (and "
                        "into the ViT when it is trained too).")

        # --- the keep-mask
        if tuple(keep.shape) != tuple(want_keep.shape):
            image_part = torch.ones(batch, patches, dtype=mask.dtype)
            raise _fail(f"{call}: mask has shape {tuple(keep.shape)}, expected {tuple(want_keep.shape)} "
                        "(batch, patches + prompt): one entry per position of embeds.",
                        _describe_shape(tuple(keep.shape), tuple(want_keep.shape), (image_part, mask)))
        got_keep = keep.detach().to(torch.long) if keep.dtype == torch.bool else keep.detach()
        if torch.equal(got_keep.to(mask.dtype), want_keep) and ((got_keep == 0) | (got_keep == 1)).all():
            continue
        image_keep, text_keep = got_keep[:, :patches], got_keep[:, patches:]
        if (got_keep == 1).all():
            raise _fail(f"{call}: mask is 1 everywhere, so the prompt's padding is not masked.",
                        "copy prompt_mask for the prompt positions: the padding (0 in prompt_mask) "
                        "must stay 0, or the encoder attends to pad tokens and the answer depends on "
                        "how much padding a batch happens to have.")
        if text_keep.shape == mask.shape and torch.equal(text_keep.to(mask.dtype), mask) and (image_keep == 0).all():
            raise _fail(f"{call}: mask is 0 on the image tokens.",
                        "image tokens are never padding: their part of the mask is torch.ones("
                        "batch, patches). With zeros the encoder would ignore the image entirely.")
        flipped = torch.cat([mask, torch.ones(batch, patches, dtype=mask.dtype)], dim=1)
        if torch.equal(got_keep.to(mask.dtype), flipped):
            raise _fail(f"{call}: mask has the prompt's mask first and the image's ones after it.",
                        "the mask must follow the order of embeds: ones for the image first, then "
                        "prompt_mask.")
        if not (image_keep == 1).all():
            raise _fail(f"{call}: the image part of mask (the first {patches} positions) is not all 1.",
                        "every image token is real: use torch.ones(batch, patches) there.")
        raise _fail(f"{call}: the prompt part of mask differs from prompt_mask.\n  got:  "
                    f"{text_keep.tolist()}\n  want: {mask.tolist()}",
                    "copy prompt_mask unchanged after the image's ones.")
    print(f"✅ {name} puts the visual tokens first and masks only the prompt's padding "
          f"({len(cases)} batches checked, padded and unpadded rows).")


# --------------------------------------------------------------------------------------------
# Exercise 2: the answer-only loss
# --------------------------------------------------------------------------------------------


def _loss_inputs() -> tuple[Tensor, Tensor]:
    """Answers of 6, 2 and 4 tokens padded to 6 with -100: long and short answers, so a
    per-example mean and a token mean differ."""
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(3, 6, 11, generator=g) * 2
    labels = torch.randint(2, 11, (3, 6), generator=g)
    labels[1, 2:] = IGNORE_INDEX
    labels[2, 4:] = IGNORE_INDEX
    return logits, labels


def _token_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy per position ``(batch, target)``, 0 where the label is ignored."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="none").view(labels.shape)


def _wrong_losses(logits: Tensor, labels: Tensor) -> list[tuple[Tensor, str, str]]:
    """The usual mistakes, each as (its value on these inputs, what it is, its cause and fix)."""
    real = labels != IGNORE_INDEX
    per_token = _token_losses(logits, labels)
    batch = labels.shape[0]
    start = torch.zeros(batch, 1, dtype=labels.dtype)
    as_decoder_input = torch.cat([start, labels[:, :-1]], dim=1)
    right = "The labels already line up with the logits. "
    aligned = ("The decoder's INPUT is the labels shifted right (start token first), so "
               "logits[:, t] is the prediction for labels[:, t]. Compare logits[:, t] with "
               "labels[:, t]; do not shift again.")
    return [
        (per_token.sum() / labels.numel(),
         "the mean over ALL positions, the ignored ones (-100) included",
         ("averaging over every position counts the padding as zero-loss tokens, so batches with "
          "more padding get a smaller loss. Divide by the number of real tokens, (labels != -100).sum().")),
        (F.cross_entropy(logits.flatten(0, 1).float(), labels.clamp(min=0).flatten()),
         "a loss that scores the padding positions (the -100 labels turned into a token id)",
         ("averaging over all positions, ignored ones included, trains the model to write padding "
          "and dilutes the answer. Skip labels of -100: F.cross_entropy(..., ignore_index=-100) or a "
          "mask labels != -100.")),
        ((per_token.sum(1) / real.sum(1)).mean(),
         "the mean of per-example means",
         ("a per-example mean and then a mean over examples gives each token of a short answer ('red') "
          "more weight than a token of a long one (a detection). The loss is the mean over all real "
          "tokens of the whole batch: sum the token losses and divide by the total number of real "
          "tokens.")),
        (F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                         ignore_index=IGNORE_INDEX),
         "logits[:, t] scored against labels[:, t + 1] (a decoder-only language model's shift)",
         right + aligned),
        (F.cross_entropy(logits[:, 1:].flatten(0, 1).float(), labels[:, :-1].flatten(),
                         ignore_index=IGNORE_INDEX),
         "logits[:, t + 1] scored against labels[:, t]", right + aligned),
        (F.cross_entropy(logits.flatten(0, 1).float(), as_decoder_input.flatten(), ignore_index=IGNORE_INDEX),
         "the decoder's input (the labels shifted right) used as the target",
         "the target is the labels themselves; the shifted sequence is what the decoder READS. "
         + aligned),
        (F.cross_entropy(logits.flatten(0, 1).float(),
                         as_decoder_input.masked_fill(as_decoder_input == IGNORE_INDEX, 0).flatten()),
         "the decoder's input (the labels shifted right, padding as pad tokens) used as the target",
         "the target is the labels themselves; the shifted sequence is what the decoder READS. "
         + aligned),
        (per_token.sum(),
         "the SUM of the token losses",
         ("a sum grows with the batch size and the answer lengths, so the learning rate would have "
          "to change with them. Divide by the number of real tokens: the loss is a mean.")),
        (per_token.sum(1).mean(),
         "the per-example SUM averaged over examples",
         ("summing within an example makes long answers dominate. Divide by the number of real "
          "tokens of the whole batch instead.")),
        (-per_token.sum() / real.sum(),
         "the negative of the loss",
         ("the cross-entropy is −log p(label): log_softmax gives log-probabilities (≤ 0), so negate "
          "them. A loss to minimise is ≥ 0.")),
        (-logits.float().softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0][real].mean(),
         "the negative probability instead of the negative log-probability",
         ("use log_softmax (or F.cross_entropy), not softmax: the loss is −log p, the mean of −p is "
          "not a cross-entropy.")),
        (-logits.float().gather(-1, labels.clamp(min=0)[..., None])[..., 0][real].mean(),
         "the negative raw logit of the label, without log_softmax",
         ("logits are not log-probabilities: take log_softmax over the vocabulary first (or use "
          "F.cross_entropy, which does it).")),
    ]


def _loss_exception_hint(err: Exception) -> str:
    msg = str(err)
    if "Expected target size" in msg or "Expected input batch_size" in msg:
        return ("F.cross_entropy wants the classes in dim 1: pass logits.flatten(0, 1) (batch·target, "
                "vocab) with labels.flatten() (batch·target,), or logits.transpose(1, 2).")
    if "out of bounds" in msg or "-100" in msg or "index" in msg.lower():
        return ("-100 is not a token id, so it cannot index the vocabulary. Use "
                "F.cross_entropy(..., ignore_index=-100), or keep only the real positions "
                "(labels != -100) before gather.")
    if "only one element tensors" in msg or "a Tensor with" in msg:
        return "reduce to one number before converting; better, keep the loss a tensor."
    return "the error comes from your function: read the traceback above it to find the line."


@functools.lru_cache(maxsize=1)
def _model_case() -> tuple[Tensor, Tensor, Tensor]:
    """Logits, labels and the loss of a tiny, seeded :class:`PaLI3` on a padded batch."""
    from pali3_edu.pali3 import PaLI3, PaLI3Config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = PaLI3(PaLI3Config()).eval()
        g = torch.Generator().manual_seed(1)
        size = model.image_size
        pixels = torch.rand(3, 3, size, size, generator=g) * 2 - 1
        ids = torch.randint(3, 500, (3, 7), generator=g)
        labels = torch.randint(3, 500, (3, 9), generator=g)
        labels[0, 3:] = IGNORE_INDEX
        labels[2, 6:] = IGNORE_INDEX
        with torch.no_grad():
            out = model(pixels, ids, labels=labels)
    return out.logits, labels, out.loss


def _check_loss_value(fn: LossFn, logits: Tensor, labels: Tensor, call: str) -> Tensor:
    """Run ``fn`` once and check everything except the value; return the loss as a tensor."""
    saved = labels.clone()
    got = _call(fn, call, (logits, labels), _loss_exception_hint)
    if not torch.equal(labels, saved):
        raise _fail(f"{call} changed labels in place.",
                    "work on a copy (labels.clone(), or masked_fill without the trailing _): the "
                    "caller still needs its labels, and -100 must stay -100.")
    if got is None:
        raise _fail(f"{call} returned None.", "end your function with `return loss`.")
    if isinstance(got, (float, int)) or (hasattr(got, "dtype") and not isinstance(got, Tensor)):
        raise _fail(f"{call} returned a {type(got).__name__}, not a tensor.",
                    "keep the loss a torch tensor (no .item(), no NumPy): training calls "
                    "loss.backward() on it.")
    if not isinstance(got, Tensor):
        raise _fail(f"{call} returned {type(got).__name__}.", "return the loss as a scalar tensor.")
    batch, target = labels.shape
    if got.ndim != 0:
        shape = tuple(got.shape)
        if shape == (batch,):
            hint = ("you return one loss per example. Return one number: the mean over all real "
                    "tokens of the whole batch (not the mean of the per-example losses).")
        elif shape in ((batch, target), (batch * target,)):
            hint = ("you return one loss per position (reduction='none'?). Average them over the "
                    "real tokens (labels != -100) to get one number.")
        else:
            hint = "reduce to a single number: the mean over the answer tokens."
        raise _fail(f"{call} returned a tensor of shape {shape}, not a scalar.", hint)
    if logits.requires_grad and not got.requires_grad:
        raise _fail(f"{call}: the loss is cut off from the autograd graph.",
                    "no .detach(), .data, torch.no_grad() or NumPy round trip: training needs the "
                    "gradient of this loss.")
    if not torch.isfinite(got):
        raise _fail(f"{call} returned {got.item()}.",
                    "a NaN or infinity: a mean over zero tokens, or the log of a softmax "
                    "probability that underflowed to 0. Use log_softmax or F.cross_entropy.")
    return got.detach().float()


def check_answer_loss(fn: LossFn) -> None:
    """Check ``fn(logits (B, T, V), labels (B, T)) -> scalar``: the mean cross-entropy over the
    answer tokens of the whole batch, labels of -100 ignored; also against :class:`PaLI3`'s
    own ``loss`` on a real forward pass."""
    name = _name(fn)
    logits, labels = _loss_inputs()
    logits.requires_grad_(True)
    call = f"{name}(logits {tuple(logits.shape)}, labels {tuple(labels.shape)})"
    got = _check_loss_value(fn, logits, labels, call)
    real = labels != IGNORE_INDEX
    with torch.no_grad():
        want = _token_losses(logits, labels).sum() / real.sum()
        wrongs = _wrong_losses(logits.detach(), labels)
    if not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
        counts = real.sum(1).tolist()
        context = (f"(answers of {counts} tokens, padded with -100 to {labels.shape[1]}): got "
                   f"{got.item():.4f}, expected {want.item():.4f}")
        for value, what, hint in wrongs:
            if torch.allclose(got, value, rtol=1e-5, atol=1e-6):
                raise _fail(f"{call} {context}, which is {what}.", hint)
        raise _fail(f"{call} {context}.",
                    "the loss is −log_softmax(logits)[label] averaged over the positions whose label "
                    "is not -100, all rows of the batch together: "
                    "F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100).")

    model_logits, model_labels, model_loss = _model_case()
    call = f"{name}(PaLI3 logits {tuple(model_logits.shape)}, labels {tuple(model_labels.shape)})"
    got = _check_loss_value(fn, model_logits.clone(), model_labels.clone(), call)
    if not torch.allclose(got, model_loss, rtol=1e-5, atol=1e-5):
        raise _fail(f"{call}: got {got.item():.5f}, but the model's own loss is {model_loss.item():.5f}.",
                    "your function passed the small example but not a real batch: does it assume a "
                    "vocabulary size, a batch size, or a label dtype?")
    print(f"✅ {name} is the mean cross-entropy over the answer tokens, padding ignored; it equals "
          f"the PaLI3 model's loss ({model_loss.item():.4f} on a test batch).")


__all__ = ["check_answer_loss", "check_join"]
