"""Checks for lesson 02 (vision transformer).

* :func:`check_patchify` — the learner's ``patchify(images, patch) -> (B, N, patch·patch·C)``.
* :func:`check_map_head` — the learner's ``map_pool(tokens, head) -> (B, D)``, the forward pass
  of a MAP head using the submodules of a :class:`pali3_edu.vit.MAPHead`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange

from pali3_edu.vit import MAPHead, patchify


def _fail(msg: str) -> None:
    raise AssertionError(msg)


def _patch_variants(images: torch.Tensor, p: int) -> dict[str, torch.Tensor]:
    """Common wrong layouts, with the explanation for each."""
    pat = "b c (gh p1) (gw p2) -> "
    return {
        "You flattened each patch channels-first, (c p1 p2). Flatten it as (p1 p2 c) — rows, "
        "columns, then channels — so that a Linear on it equals the conv with its weight "
        "rearranged 'd c p1 p2 -> d (p1 p2 c)'.": rearrange(images, pat + "b (gh gw) (c p1 p2)", p1=p, p2=p),
        "Inside each patch you went column by column, (p2 p1 c); go row by row: (p1 p2 c).":
            rearrange(images, pat + "b (gh gw) (p2 p1 c)", p1=p, p2=p),
        "Your patches come column by column, (gw gh); the sequence goes row by row like reading "
        "text: (gh gw).": rearrange(images, pat + "b (gw gh) (p1 p2 c)", p1=p, p2=p),
    }


def check_patchify(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """Compare ``fn(images, patch)`` with :func:`pali3_edu.vit.patchify` on several shapes."""
    g = torch.Generator().manual_seed(0)
    for shape, p in [((2, 3, 16, 16), 4), ((1, 3, 24, 16), 8), ((3, 1, 6, 9), 3)]:
        images = torch.randn(*shape, generator=g)
        want = patchify(images, p)
        try:
            got = fn(images.clone(), p)
        except Exception as e:  # noqa: BLE001 - show the learner what went wrong
            _fail(f"Your patchify raised {type(e).__name__}: {e} (images {tuple(shape)}, patch {p}).")
        if not isinstance(got, torch.Tensor):
            _fail(f"patchify should return a torch.Tensor, got {type(got).__name__}.")
        b, c, h, w = shape
        n, d = (h // p) * (w // p), p * p * c
        if got.shape != want.shape:
            hint = ""
            if got.numel() == want.numel():
                hint = " Same number of values: flatten the grid into one axis N and each patch into one vector."
            _fail(f"For images {tuple(shape)} and patch {p} the shape should be (batch, N, patch·patch·C) = "
                  f"{(b, n, d)}, got {tuple(got.shape)}.{hint}")
        if torch.allclose(got, want):
            continue
        for why, variant in _patch_variants(images, p).items():
            if torch.allclose(got, variant):
                _fail(why)
        _fail(f"Values differ for images {tuple(shape)}, patch {p}. Patch k should be the block at grid row "
              f"k // (W/patch), column k % (W/patch), flattened (row, column, channel). Try einops: "
              "rearrange(images, 'b c (gh p1) (gw p2) -> b (gh gw) (p1 p2 c)', p1=patch, p2=patch).")
    print("✅ patchify matches the reference (3 shapes, including non-square images and 1 channel).")


def check_map_head(fn: Callable[[torch.Tensor, MAPHead], torch.Tensor]) -> None:
    """Compare ``fn(tokens, head)`` with ``head(tokens)`` for a random :class:`MAPHead`.

    ``head`` has ``probe (1, 1, D)``, ``attn`` (call ``head.attn(query, context=tokens)``), ``norm``
    (LayerNorm) and ``mlp``.
    """
    torch.manual_seed(0)
    head = MAPHead(32, 64, 4).eval()
    with torch.no_grad():
        for p in head.parameters():  # make every part matter (biases of the MLP start near 0)
            p.add_(0.1 * torch.randn_like(p))
    tokens = torch.randn(3, 10, 32)
    with torch.no_grad():
        want = head(tokens)
        try:
            got = fn(tokens.clone(), head)
        except Exception as e:  # noqa: BLE001
            _fail(f"Your map_pool raised {type(e).__name__}: {e}. Expand the probe to the batch first: "
                  "head.probe.expand(tokens.shape[0], -1, -1) has shape (B, 1, D).")
        if not isinstance(got, torch.Tensor):
            _fail(f"map_pool should return a tensor, got {type(got).__name__}.")
        if got.shape == (3, 1, 32):
            _fail("Your output is (B, 1, D): return the probe's token, x[:, 0], shape (B, D).")
        if got.shape != want.shape:
            _fail(f"Expected shape (batch, width) = {tuple(want.shape)}, got {tuple(got.shape)}.")
        if torch.allclose(got, want, atol=1e-5, rtol=1e-4):
            shuffled = fn(tokens[:, torch.randperm(10)], head)
            if not torch.allclose(shuffled, want, atol=1e-5, rtol=1e-4):
                _fail("Matches on one input but changes when the tokens are shuffled: MAP pooling must not "
                      "depend on the token order.")
            print("✅ map_pool matches MAPHead (and is invariant to the order of the tokens).")
            return
        probe = head.probe.expand(3, -1, -1)
        x = head.attn(probe, context=tokens)
        variants = {
            "You skipped the residual: x = x + head.mlp(head.norm(x)), not x = head.mlp(head.norm(x)).":
                head.mlp(head.norm(x))[:, 0],
            "You skipped the LayerNorm before the MLP: x = x + head.mlp(head.norm(x)).": (x + head.mlp(x))[:, 0],
            "You stopped after the attention: the MAP head also has the block's second half, "
            "x = x + head.mlp(head.norm(x)).": x[:, 0],
            "That is mean pooling ('gap'): MAP pools with a learned probe that attends to the tokens.":
                tokens.mean(1),
            "The probe must be the *query* and the tokens the keys/values: head.attn(probe, context=tokens).":
                None,
        }
        for why, variant in variants.items():
            if variant is not None and variant.shape == got.shape and torch.allclose(got, variant, atol=1e-5):
                _fail(why)
        _fail("Values differ from MAPHead. Steps: probe = head.probe.expand(B, -1, -1); "
              "x = head.attn(probe, context=tokens); x = x + head.mlp(head.norm(x)); return x[:, 0].")
