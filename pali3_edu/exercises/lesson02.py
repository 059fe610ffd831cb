"""Checks for lesson 02 (the vision transformer).

* :func:`check_patchify` — the learner's ``patchify(images, patch)``: ``(batch, channels, H, W)``
  → ``(batch, N, patch·patch·channels)``, patches row by row, each flattened as (row, column,
  channel), as :func:`pali3_edu.vit.patchify`.
* :func:`check_map_head` — the learner's ``map_pool(tokens, head)``: ``(batch, N, width)`` →
  ``(batch, width)``, the forward pass of a MAP head built from the parts of a
  :class:`pali3_edu.vit.MAPHead` (``probe``, ``attn``, ``norm``, ``mlp``).

Each check runs the learner's function on all its cases first. When the results differ from the
reference it looks for the usual mistake that gives exactly the learner's results on every case
(channels first, column-major order, the probe as key instead of query, a missing residual, …)
and names it in the ``Hint:``. A stub that still raises ``NotImplementedError`` gets a
"✏️ Your turn" message; any other exception is reported with a hint and chained below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from einops import rearrange

from pali3_edu.exercises import READ_THE_TRACEBACK, call_learner, fail, function_name, require_callable
from pali3_edu.vit import MAPHead, patchify

__all__ = ["check_map_head", "check_patchify"]

# ---------------------------------------------------------------------------------------------
# patchify
# ---------------------------------------------------------------------------------------------

_GRID = "b c (gh p1) (gw p2) -> "

#: The usual wrong layouts: (einops right-hand side, the hint that names the mistake).
_PATCH_MISTAKES: list[tuple[str, str]] = [
    ("b (gh gw) (c p1 p2)",
     "you flattened each patch channels-first, (c p1 p2). Flatten it as (p1 p2 c) — rows, columns, "
     "then channels — so that a Linear on it equals the conv with its weight rearranged "
     "'d c p1 p2 -> d (p1 p2 c)'."),
    ("b (gh gw) (p2 p1 c)",
     "inside each patch you went column by column, (p2 p1 c); go row by row: (p1 p2 c)."),
    ("b (gw gh) (p1 p2 c)",
     "your patches come column by column, (gw gh); the sequence goes row by row like reading text: "
     "(gh gw)."),
    ("b (gw gh) (c p1 p2)",
     "two things: the patches come column by column (gw gh) instead of row by row (gh gw), and each "
     "patch is flattened channels-first (c p1 p2) instead of (p1 p2 c)."),
    ("b (gh gw) (c p2 p1)",
     "you flattened each patch channels-first and column by column, (c p2 p1); flatten it as "
     "(p1 p2 c): rows, then columns, then channels."),
    ("b (p1 p2 c) (gh gw)",
     "your result is (batch, patch·patch·C, N): the features come before the patches. The sequence "
     "axis comes second: (batch, N, patch·patch·C)."),
]

_PATCH_CASES = [((2, 3, 16, 16), 4), ((1, 3, 24, 16), 8), ((3, 1, 6, 9), 3), ((2, 2, 8, 4), 2)]


def _patch_inputs() -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(*shape, generator=g), p) for shape, p in _PATCH_CASES]


def _patch_exception_hint(err: Exception) -> str:
    msg = str(err)
    kind = type(err).__name__
    if "divide axis" in msg or "in chunks of" in msg:
        return ("einops could not split an axis into patches. The images are channels-first, "
                "(batch, channels, H, W): the left side of the pattern is 'b c (gh p1) (gw p2)', "
                "and the patch size goes in as keywords, p1=patch, p2=patch.")
    if kind == "EinopsError" or "einops" in type(err).__module__:
        return ("check the pattern: 'b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)' with p1=patch, "
                "p2=patch as keyword arguments; every name on the right must appear on the left.")
    if "view size is not compatible" in msg:
        return (".view needs a contiguous tensor: after a permute use .reshape (or einops.rearrange, "
                "which does it for you).")
    if "shape" in msg and "invalid for input of size" in msg:
        return ("a reshape with sizes that do not multiply to the number of values: do the sizes "
                "depend on the image (H // patch, W // patch, channels), not on fixed numbers? The "
                "check also uses non-square images and 1-channel images.")
    return READ_THE_TRACEBACK


def check_patchify(fn: Callable[[torch.Tensor, int], Any]) -> None:
    """Compare ``fn(images, patch)`` with :func:`pali3_edu.vit.patchify` on square, non-square,
    3-channel and 1-channel images."""
    require_callable(fn, "check_patchify")
    name = function_name(fn)
    inputs = _patch_inputs()
    results: list[torch.Tensor] = []
    for images, p in inputs:
        call = f"{name}(images {tuple(images.shape)}, patch={p})"
        saved = images.clone()
        got = call_learner(fn, (images, p), call, _patch_exception_hint)
        if not torch.equal(images, saved):
            raise fail(f"{call} changed the images in place.",
                       "rearranging never needs to write into the input: return a new tensor.")
        if got is None:
            raise fail(f"{call} returned None.", "end your function with `return <the patches>`.")
        if not isinstance(got, torch.Tensor):
            raise fail(f"{call} returned a {type(got).__name__}, not a tensor.",
                       "rearrange the images tensor itself (einops.rearrange returns a tensor).")
        b, c, h, w = images.shape
        want_shape = (b, (h // p) * (w // p), p * p * c)
        if tuple(got.shape) != want_shape:
            shape = tuple(got.shape)
            if shape == (b, want_shape[2], want_shape[1]):
                hint = ("the features come before the patches: the sequence axis comes second, "
                        "'... -> b (gh gw) (p1 p2 c)'.")
            elif shape == (b, h // p, w // p, p * p * c):
                hint = "flatten the grid into one sequence axis: (gh gw), not gh gw."
            elif got.numel() == images.numel():
                hint = ("the same number of values, arranged differently: one axis N = (H/patch)·(W/patch) "
                        "for the patches and one axis for each patch's patch·patch·channels values.")
            else:
                hint = "each patch holds patch·patch·channels values and there are (H/patch)·(W/patch) patches."
            raise fail(f"{call} returned shape {shape}, expected (batch, N, patch·patch·C) = {want_shape}.",
                       hint)
        results.append(got.detach())

    wants = [patchify(images, p) for images, p in inputs]
    wrong = [i for i, (g, w) in enumerate(zip(results, wants)) if not torch.allclose(g.float(), w)]
    if not wrong:
        print(f"✅ {name} matches the reference ({len(inputs)} cases: square and non-square images, "
              "3 and 1 channels).")
        return
    for right_side, hint in _PATCH_MISTAKES:
        variants = [rearrange(images, _GRID + right_side, p1=p, p2=p) for images, p in inputs]
        if all(g.shape == v.shape and torch.allclose(g.float(), v) for g, v in zip(results, variants)):
            images, p = inputs[wrong[0]]
            raise fail(f"{name}(images {tuple(images.shape)}, patch={p}) has the right shape but the "
                       "values are in the wrong order:", hint)
    images, p = inputs[wrong[0]]
    raise fail(f"{name}(images {tuple(images.shape)}, patch={p}) has the right shape but different values.",
               "patch k is the block at grid row k // (W/patch), column k % (W/patch), flattened (row, "
               "column, channel); nothing is added or scaled. With einops: rearrange(images, "
               "'b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)', p1=patch, p2=patch).")


# ---------------------------------------------------------------------------------------------
# the MAP head
# ---------------------------------------------------------------------------------------------


def _map_cases() -> tuple[MAPHead, list[torch.Tensor]]:
    """A random MAP head whose every part matters, and two batches of tokens (different sizes)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = MAPHead(32, 64, 4).eval()
        with torch.no_grad():
            for prm in head.parameters():  # biases and LayerNorm start at 0/1: make them matter
                prm.add_(0.1 * torch.randn_like(prm))
    g = torch.Generator().manual_seed(1)
    return head, [torch.randn(3, 10, 32, generator=g), torch.randn(2, 7, 32, generator=g) * 2]


def _probe(head: MAPHead, tokens: torch.Tensor) -> torch.Tensor:
    return head.probe.expand(tokens.shape[0], -1, -1)


def _block(head: MAPHead, x: torch.Tensor) -> torch.Tensor:
    return x + head.mlp(head.norm(x))


#: The usual mistakes: (what they compute from (tokens, head), the hint that names them).
_MAP_MISTAKES: list[tuple[Callable[[torch.Tensor, MAPHead], torch.Tensor], str]] = [
    (lambda t, h: h.mlp(h.norm(h.attn(_probe(h, t), context=t)))[:, 0],
     "you skipped the residual: x = x + head.mlp(head.norm(x)), not x = head.mlp(head.norm(x))."),
    (lambda t, h: (lambda x: x + h.mlp(x))(h.attn(_probe(h, t), context=t))[:, 0],
     "you skipped the LayerNorm before the MLP: x = x + head.mlp(head.norm(x))."),
    (lambda t, h: h.attn(_probe(h, t), context=t)[:, 0],
     "you stopped after the attention: the MAP head also has the block's second half, "
     "x = x + head.mlp(head.norm(x))."),
    (lambda t, h: _block(h, _probe(h, t) + h.attn(_probe(h, t), context=t))[:, 0],
     "you added the probe back as a residual around the attention (x = probe + attn(...)). The MAP "
     "head keeps only the attention's output: x = head.attn(probe, context=tokens)."),
    (lambda t, h: _block(h, h.attn(_probe(h, t), context=h.norm(t)))[:, 0],
     "you applied head.norm to the tokens before the attention. The tokens come from the encoder's "
     "final LayerNorm already; head.norm belongs to the MLP half: x = x + head.mlp(head.norm(x))."),
    (lambda t, h: _block(h, h.attn(t, context=_probe(h, t)))[:, 0],
     "the probe must be the *query* and the tokens the keys/values: head.attn(probe, context=tokens). "
     "With the roles swapped every token attends to the single probe, so the result no longer "
     "depends on the image at all."),
    (lambda t, h: _block(h, h.attn(t))[:, 0],
     "you ran self-attention over the tokens and kept the first one: the learned probe is the "
     "query, head.attn(probe, context=tokens); token 0 is just the top-left patch."),
    (lambda t, h: _block(h, h.attn(t)).mean(1),
     "you ran self-attention over the tokens and averaged them: MAP pools with the learned probe as "
     "the query, head.attn(probe, context=tokens)."),
    (lambda t, h: t.mean(1),
     "that is mean pooling ('gap'): MAP pools with a learned probe that attends to the tokens."),
    (lambda t, h: t.amax(1),
     "that is max pooling: MAP pools with a learned probe that attends to the tokens."),
    (lambda t, h: t[:, 0],
     "you returned the first patch token: MAP pools with a learned probe that attends to ALL tokens."),
]


def _map_exception_hint(err: Exception) -> str:
    msg = str(err)
    if "must match the size" in msg or "Expected size" in msg or "size of tensor" in msg:
        return ("the probe is (1, 1, width), one for the whole model: repeat it for every image, "
                "probe = head.probe.expand(tokens.shape[0], -1, -1), shape (batch, 1, width).")
    if "unexpected keyword" in msg or "positional argument" in msg:
        return "call the attention as head.attn(query, context=keys_and_values)."
    return READ_THE_TRACEBACK


def check_map_head(fn: Callable[[torch.Tensor, MAPHead], Any]) -> None:
    """Compare ``fn(tokens, head)`` with ``head(tokens)`` for a random :class:`MAPHead`.

    ``head`` has ``probe (1, 1, D)``, ``attn`` (call ``head.attn(query, context=tokens)``), ``norm``
    (LayerNorm) and ``mlp``.
    """
    require_callable(fn, "check_map_head")
    name = function_name(fn)
    head, batches = _map_cases()
    results: list[torch.Tensor] = []
    with torch.no_grad():
        for tokens in batches:
            call = f"{name}(tokens {tuple(tokens.shape)}, head)"
            got = call_learner(fn, (tokens.clone(), head), call, _map_exception_hint)
            if got is None:
                raise fail(f"{call} returned None.", "end your function with `return x[:, 0]`.")
            if not isinstance(got, torch.Tensor):
                raise fail(f"{call} returned a {type(got).__name__}, not a tensor.",
                           "return the pooled embeddings, a (batch, width) tensor.")
            b, _, d = tokens.shape
            if tuple(got.shape) == (b, 1, d):
                raise fail(f"{call} returned shape {tuple(got.shape)}: the probe's token still has its "
                           "sequence axis.", "return x[:, 0], shape (batch, width).")
            if tuple(got.shape) != (b, d):
                raise fail(f"{call} returned shape {tuple(got.shape)}, expected (batch, width) = {(b, d)}.",
                           "one pooled vector per image: the probe's output x[:, 0].")
            results.append(got)
        wants = [head(tokens) for tokens in batches]
        wrong = [i for i, (g, w) in enumerate(zip(results, wants))
                 if not torch.allclose(g, w, atol=1e-5, rtol=1e-4)]
        if wrong:
            i = wrong[0]
            call = f"{name}(tokens {tuple(batches[i].shape)}, head)"
            for mistake, hint in _MAP_MISTAKES:
                variants = [mistake(tokens, head) for tokens in batches]
                if all(v.shape == g.shape and torch.allclose(g, v, atol=1e-5, rtol=1e-4)
                       for g, v in zip(results, variants)):
                    raise fail(f"{call} differs from MAPHead:", hint)
            other = call_learner(fn, (batches[i] + 1.0, head), call, _map_exception_hint)
            if isinstance(other, torch.Tensor) and torch.allclose(other, results[i], atol=1e-6):
                raise fail(f"{call} gives the same output when the tokens change.",
                           "the result must depend on the image: the probe must be the *query* and the "
                           "tokens the keys/values, head.attn(probe, context=tokens).")
            raise fail(f"{call} differs from MAPHead (largest difference "
                       f"{(results[i] - wants[i]).abs().max().item():.3g}).",
                       "the steps: probe = head.probe.expand(B, -1, -1); x = head.attn(probe, "
                       "context=tokens); x = x + head.mlp(head.norm(x)); return x[:, 0].")
        tokens = batches[0]
        perm = torch.randperm(tokens.shape[1], generator=torch.Generator().manual_seed(2))
        call = f"{name}(tokens {tuple(tokens.shape)} in another order, head)"
        shuffled = call_learner(fn, (tokens[:, perm].clone(), head), call, _map_exception_hint)
        if not isinstance(shuffled, torch.Tensor) or not torch.allclose(shuffled, wants[0], atol=1e-5, rtol=1e-4):
            raise fail(f"{call}: the result changes when the tokens are shuffled.",
                       "MAP pooling must not depend on the token order: no position-dependent step "
                       "(like taking token 0) belongs in it.")
    print(f"✅ {name} matches MAPHead on {len(batches)} batches (and is invariant to the order of the tokens).")
