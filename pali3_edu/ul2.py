"""UL2's mixture of denoisers, built on T5's span corruption.

A *denoiser* turns a plain token sequence into an (inputs, targets) pair for an encoder-decoder:

- **span corruption** (T5): pick some spans of the sequence, replace each span by one sentinel
  token in the inputs, and ask the decoder for the missing spans, each opened by its sentinel::

      tokens   The  cat  sat  on  the  red  mat
      mask      .    x    x    .   .    x    .     (x = noise)
      inputs   The <X0>  on  the <X1>  mat
      targets  <X0> cat sat <X1> red

  (the real sampler always ends in a noise span; this picture is only for reading).
- **R-denoiser** ("regular"): short spans, 15 % noise, like T5. Mode token ``[NLU]``.
- **X-denoiser** ("extreme"): long spans and/or 50 % noise. Mode token ``[NLG]``.
- **S-denoiser** ("sequential"): prefix language modelling -- the inputs are a prefix, the
  targets the rest. Mode token ``[S2S]``.

UL2 mixes the three in one pretraining run and prepends the mode token to the encoder input so
the model knows which task it is doing (and a user can later pick a mode by prompting with it).

Everything here works on plain integer tensors; special ids come from the tokenizer
(``tok.sentinel_id(i)``, ``tok.mode_id("[NLU]")``, ``tok.eos_id``, ``tok.pad_id``) or from any
object with the same attributes. All randomness comes from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch

from pali3_edu.tokens import IGNORE_INDEX, MODE_TOKENS

SentinelIds = Callable[[int], int] | Sequence[int] | torch.Tensor


class SpecialTokens(Protocol):
    """What the denoisers need from a tokenizer (``pali3_edu.tokenizer.Tokenizer`` has it)."""

    eos_id: int
    pad_id: int

    def sentinel_id(self, i: int) -> int: ...

    def mode_id(self, mode: str) -> int: ...


# ---------------------------------------------------------------------------------------------
# 1. How many noise tokens and spans
# ---------------------------------------------------------------------------------------------


def _check_settings(noise_density: float, mean_span: float) -> None:
    if not 0.0 < noise_density < 1.0:
        raise ValueError(
            f"noise_density must be strictly between 0 and 1 (got {noise_density}); "
            "e.g. 0.15 for the R-denoiser, 0.5 for the X-denoiser."
        )
    if not mean_span > 0:
        raise ValueError(f"mean_span must be > 0 (got {mean_span}); UL2 uses 3, 8 or 64.")


def span_counts(length: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """``(num_noise_tokens, num_noise_spans)`` for a sequence of ``length`` tokens, as in T5.

    ``num_noise = round(length * density)`` clipped to ``[1, length - 1]`` (there is always some
    noise and some non-noise), ``num_spans = max(round(num_noise / mean_span), 1)``. The counts
    are deterministic: only *where* the spans go is random. (T5 would silently create empty
    spans when there are more spans than tokens to fill them; we cap ``num_spans`` at the number
    of noise and of non-noise tokens instead, which only matters for tiny sequences, very dense
    noise or a mean span below 1.)
    """
    _check_settings(noise_density, mean_span)
    if length < 2:
        raise ValueError(
            f"Span corruption needs at least 2 tokens (got {length}): one to hide and one to keep."
        )
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_span), 1)
    num_spans = min(num_spans, num_noise, length - num_noise)
    return num_noise, num_spans


def corrupted_lengths(length: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """Lengths of ``(inputs, targets)`` after span corruption of ``length`` tokens, each with a
    final EOS: inputs = non-noise + spans + 1, targets = noise + spans + 1."""
    num_noise, num_spans = span_counts(length, noise_density, mean_span)
    return length - num_noise + num_spans + 1, num_noise + num_spans + 1


def random_spans_helper(
    inputs_length: int, noise_density: float, mean_span: float
) -> tuple[int, int]:
    """How many raw tokens to feed span corruption so the inputs are ``inputs_length`` long.

    Returns ``(tokens_length, targets_length)``: the largest raw length whose corrupted inputs
    (with EOS) fit in ``inputs_length``, and the matching target length. Like T5's helper of
    the same name (with one sentinel per span); at density 0.5 it gives up one token when the
    targets would come out longer than the inputs.

    >>> random_spans_helper(512, 0.15, 3.0)
    (568, 114)
    """
    _check_settings(noise_density, mean_span)
    if inputs_length < 2:
        raise ValueError(f"inputs_length must be at least 2 (got {inputs_length}).")

    def lengths(n: int) -> tuple[int, int]:  # T5's bookkeeping, without clipping
        num_noise = round(n * noise_density)
        num_spans = round(num_noise / mean_span)
        return n - num_noise + num_spans + 1, num_noise + num_spans + 1

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    _, targets_length = lengths(tokens_length)
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


@functools.lru_cache(maxsize=256)
def max_raw_length(
    max_inputs: int, max_targets: int, noise_density: float, mean_span: float
) -> int:
    """Longest raw sequence whose corrupted inputs and targets (EOS included) fit the limits."""
    n = 1
    while True:
        ins, tgts = corrupted_lengths(n + 1, noise_density, mean_span)
        if ins > max_inputs or tgts > max_targets:
            break
        n += 1
        if n > 100 * (max_inputs + max_targets):  # pragma: no cover - cannot happen for r < 1
            break
    if n < 2:
        raise ValueError(
            f"Limits max_inputs={max_inputs}, max_targets={max_targets} are too small for "
            f"span corruption (density {noise_density}, mean span {mean_span})."
        )
    return n


# ---------------------------------------------------------------------------------------------
# 2. Where the spans go
# ---------------------------------------------------------------------------------------------


def random_segmentation(total: int, parts: int, generator: torch.Generator) -> torch.Tensor:
    """Split ``total`` into ``parts`` positive integers, every split equally likely.

    A split of ``total`` into ``parts`` positive parts is a choice of ``parts - 1`` cut points
    among the ``total - 1`` gaps between items, so a uniformly random subset of gaps gives a
    uniformly random split. Returns a ``(parts,)`` int64 tensor that sums to ``total``.
    """
    if not 1 <= parts <= total:
        raise ValueError(f"Cannot split {total} items into {parts} non-empty parts.")
    cuts = torch.randperm(total - 1, generator=generator)[: parts - 1] + 1
    bounds = torch.cat([torch.zeros(1, dtype=torch.long), cuts.sort().values,
                        torch.tensor([total])])
    return bounds.diff()


def random_spans_noise_mask(
    length: int, noise_density: float, mean_span: float, generator: torch.Generator
) -> torch.Tensor:
    """T5's noise mask: ``(length,)`` bool, True = noise (hidden from the encoder).

    1. the number of noise tokens and spans comes from :func:`span_counts`;
    2. the noise tokens are split into ``num_spans`` spans, and the non-noise tokens into as
       many runs, each split uniformly at random (:func:`random_segmentation`);
    3. runs and spans are interleaved: keep, noise, keep, noise, ... -- so a mask always starts
       with kept tokens and ends with a noise span, and all such masks are equally likely.
    """
    num_noise, num_spans = span_counts(length, noise_density, mean_span)
    noise_lengths = random_segmentation(num_noise, num_spans, generator)
    keep_lengths = random_segmentation(length - num_noise, num_spans, generator)
    run_lengths = torch.stack([keep_lengths, noise_lengths], dim=1).flatten()  # keep, noise, ...
    run_is_noise = np.tile([False, True], num_spans)
    # (NumPy's repeat: torch.repeat_interleave is the same, but very slow on a busy 2-core CPU.)
    return torch.from_numpy(np.repeat(run_is_noise, run_lengths.numpy()))


def span_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Lengths of the noise spans (runs of True) in a ``(length,)`` bool mask."""
    m = mask.to(torch.int8)
    edges = torch.diff(m, prepend=m.new_zeros(1), append=m.new_zeros(1))
    starts = (edges == 1).nonzero().flatten()
    ends = (edges == -1).nonzero().flatten()
    return ends - starts


# ---------------------------------------------------------------------------------------------
# 3. From a mask to (inputs, targets)
# ---------------------------------------------------------------------------------------------


def sentinel_table(sentinel_id: SentinelIds, n: int, strict: bool = True) -> torch.Tensor:
    """The first ``n`` sentinel ids as a ``(n,)`` tensor, from a callable or a sequence.

    A callable is asked for ids 0, 1, ... until it has given ``n`` or raises (a tokenizer has a
    limited number of ``<extra_id_…>`` tokens, 100 in T5). With ``strict`` a shorter table is an
    error; otherwise the table simply holds every sentinel there is (up to ``n``).
    """
    if isinstance(sentinel_id, torch.Tensor):
        table = sentinel_id.long()[:n]
    elif callable(sentinel_id):
        ids: list[int] = []
        for i in range(n):
            try:
                ids.append(int(sentinel_id(i)))
            except (ValueError, IndexError):
                break
        table = torch.tensor(ids, dtype=torch.long)
    else:
        table = torch.as_tensor(list(sentinel_id), dtype=torch.long)[:n]
    if strict and len(table) < n:
        raise ValueError(
            f"Need {n} sentinel tokens but only {len(table)} exist: use shorter sequences or a "
            "larger mean span (or a tokenizer with more <extra_id_…> tokens)."
        )
    return table


def apply_noise_mask(
    tokens: torch.Tensor, mask: torch.Tensor, sentinel_id: SentinelIds
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets for ``tokens`` ``(L,)`` and noise ``mask`` ``(L,)`` (no EOS added).

    Each noise span ``i`` becomes the single token ``sentinel_id(i)`` in the inputs; the targets
    are the noise spans, each opened by its sentinel: inputs ``A <X0> B <X1>``, targets
    ``<X0> a <X1> b``.
    """
    if tokens.shape != mask.shape or tokens.ndim != 1:
        raise ValueError(f"tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)} must both "
                         "be 1-D and of the same length.")
    mask = mask.bool()
    prev = torch.cat([mask.new_zeros(1), mask[:-1]])
    starts = mask & ~prev  # first token of each noise span
    span_id = starts.cumsum(0) - 1  # which span a noise token belongs to (-1 before the first)
    num_spans = int(starts.sum())
    sentinels = sentinel_table(sentinel_id, num_spans)
    sent_at = sentinels[span_id.clamp(min=0)]

    # inputs: keep non-noise tokens and the first token of each span (replaced by its sentinel)
    inputs = torch.where(starts, sent_at, tokens)[~mask | starts]

    # targets: the noise tokens in order, with span i's sentinel inserted before its first token
    noise_tokens = tokens[mask]
    out = torch.empty(len(noise_tokens) + num_spans, dtype=tokens.dtype)
    noise_span = span_id[mask]
    token_pos = torch.arange(len(noise_tokens)) + noise_span + 1  # shifted by sentinels so far
    out[token_pos] = noise_tokens
    first_of_span = starts[mask]
    out[token_pos[first_of_span] - 1] = sentinels.to(tokens.dtype)
    return inputs, out


def span_corruption(
    tokens: torch.Tensor,
    noise_density: float,
    mean_span: float,
    sentinel_id: SentinelIds,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 span corruption of ``tokens`` ``(L,)``: sample a mask, return ``(inputs, targets)``.

    EOS is not appended here (the batcher does it after the mode token is prepended).
    """
    mask = random_spans_noise_mask(len(tokens), noise_density, mean_span, generator)
    return apply_noise_mask(tokens, mask, sentinel_id)


def merge_spans(
    inputs: torch.Tensor, targets: torch.Tensor, sentinel_ids: SentinelIds
) -> torch.Tensor:
    """Undo span corruption: put the target spans back where their sentinels are in the inputs.

    ``sentinel_ids`` lists (or computes) the sentinel ids in order. Used by tests and lessons to
    show that nothing is lost: ``merge_spans(*apply_noise_mask(t, m, s), s) == t``.
    """
    table = sentinel_table(sentinel_ids, len(targets), strict=False).tolist()  # ≥ every span
    inputs, targets = inputs.tolist(), targets.tolist()
    which = {s: i for i, s in enumerate(table)}
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets:
        if t in which:
            current = which[t]
            spans[current] = []
        elif current is None:
            raise ValueError("targets must start with a sentinel token.")
        else:
            spans[current].append(t)
    out: list[int] = []
    for t in inputs:
        if t in which:
            if which[t] not in spans:
                raise ValueError(f"Sentinel {t} in the inputs has no span in the targets.")
            out.extend(spans[which[t]])
        else:
            out.append(t)
    return torch.tensor(out, dtype=torch.long)


def prefix_lm(
    tokens: torch.Tensor,
    generator: torch.Generator,
    min_split: int = 1,
    max_split: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The S-denoiser: split ``tokens`` ``(L,)`` at a uniform point ``k`` in
    ``[min_split, max_split]`` (default ``[1, L - 1]``) and return ``(tokens[:k], tokens[k:])``.

    Both halves are non-empty. The batcher narrows the range so both halves fit their limits.
    """
    L = len(tokens)
    if L < 2:
        raise ValueError(f"prefix_lm needs at least 2 tokens (got {L}): a prefix and a rest.")
    max_split = L - 1 if max_split is None else max_split
    lo, hi = max(1, min_split), min(L - 1, max_split)
    if lo > hi:
        raise ValueError(f"No valid split point in [{min_split}, {max_split}] for {L} tokens.")
    k = int(torch.randint(lo, hi + 1, (1,), generator=generator))
    return tokens[:k], tokens[k:]


# ---------------------------------------------------------------------------------------------
# 4. The UL2 denoisers and their mixture
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Denoiser:
    """One denoising task. ``kind`` R/X use span corruption with ``mean_span`` and
    ``noise_density``; S is prefix LM (the two numbers are unused)."""

    name: str
    kind: Literal["R", "X", "S"]
    mean_span: float = 3.0
    noise_density: float = 0.15
    mode_token: str = ""

    def __post_init__(self) -> None:
        if self.kind not in MODE_TOKENS:
            raise ValueError(f"Denoiser kind must be 'R', 'X' or 'S' (got {self.kind!r}).")
        if not self.mode_token:
            object.__setattr__(self, "mode_token", MODE_TOKENS[self.kind])
        if self.kind != "S":
            _check_settings(self.noise_density, self.mean_span)

    def __call__(
        self, tokens: torch.Tensor, sentinel_id: SentinelIds, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` without mode token and EOS."""
        if self.kind == "S":
            return prefix_lm(tokens, generator)
        return span_corruption(tokens, self.noise_density, self.mean_span, sentinel_id, generator)


# The UL2 paper's seven denoisers (Tay et al. 2022, "Unifying Language Learning Paradigms",
# section 3.1.2): two regular, four extreme (long spans and/or dense noise), one sequential.
UL2_DENOISERS: tuple[Denoiser, ...] = (
    Denoiser("R μ3 r.15", "R", 3, 0.15),
    Denoiser("R μ8 r.15", "R", 8, 0.15),
    Denoiser("X μ3 r.5", "X", 3, 0.5),
    Denoiser("X μ8 r.5", "X", 8, 0.5),
    Denoiser("X μ64 r.15", "X", 64, 0.15),
    Denoiser("X μ64 r.5", "X", 64, 0.5),
    Denoiser("S prefix-LM", "S"),
)


def _default_weights() -> tuple[float, ...]:
    # R 40 % / X 40 % / S 20 % in total, split evenly inside each kind. This split is what
    # public reimplementations use; the UL2 paper's exact proportions are unconfirmed.
    return (0.20, 0.20, 0.10, 0.10, 0.10, 0.10, 0.20)


@dataclass
class UL2Mixture:
    """Denoisers and how often each is picked (weights are normalised; they need not sum to 1).

    The default -- R 40 % / X 40 % / S 20 % -- is **a configurable choice, not a confirmed
    paper value**: the UL2 paper's exact mixing proportions could not be checked, and public
    reimplementations use either this split or S ≈ 34 % with the rest spread evenly.
    """

    denoisers: tuple[Denoiser, ...] = UL2_DENOISERS
    weights: tuple[float, ...] = field(default_factory=_default_weights)

    def __post_init__(self) -> None:
        self.denoisers = tuple(self.denoisers)
        self.weights = tuple(float(w) for w in self.weights)
        if len(self.denoisers) != len(self.weights):
            raise ValueError(f"{len(self.denoisers)} denoisers but {len(self.weights)} weights.")
        if not self.denoisers or any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError("Weights must be non-negative with a positive sum.")

    @property
    def probs(self) -> torch.Tensor:
        w = torch.tensor(self.weights, dtype=torch.float64)
        return w / w.sum()

    def kind_shares(self) -> dict[str, float]:
        """Total probability of each kind, e.g. ``{"R": 0.4, "X": 0.4, "S": 0.2}``."""
        shares: dict[str, float] = {}
        for d, p in zip(self.denoisers, self.probs.tolist()):
            shares[d.kind] = shares.get(d.kind, 0.0) + p
        return shares

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n,)`` denoiser indices drawn with the mixture's probabilities."""
        return torch.multinomial(self.probs.float(), n, replacement=True, generator=generator)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def denoise_example(
    tokens: torch.Tensor,
    denoiser: Denoiser,
    tokenizer: SpecialTokens,
    generator: torch.Generator,
    max_input_len: int,
    max_target_len: int,
    sentinels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training example: ``[mode] inputs EOS`` and ``targets EOS``, within the limits.

    Too-long ``tokens`` are cropped (from the end) to the longest length whose inputs and
    targets fit; the S-denoiser draws its split only among points where both halves fit.
    """
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    mode = tokenizer.mode_id(denoiser.mode_token)
    eos = tokenizer.eos_id
    if denoiser.kind == "S":
        max_prefix, max_rest = max_input_len - 2, max_target_len - 1  # mode + EOS, EOS
        if max_prefix < 1 or max_rest < 1:
            raise ValueError("max_input_len must be ≥ 3 and max_target_len ≥ 2 for prefix LM.")
        tokens = tokens[: max_prefix + max_rest]
        L = len(tokens)
        inputs, targets = prefix_lm(tokens, generator, min_split=L - max_rest, max_split=max_prefix)
    else:
        L_max = max_raw_length(max_input_len - 1, max_target_len,
                               denoiser.noise_density, denoiser.mean_span)
        tokens = tokens[:L_max]
        if sentinels is None:
            sentinels = sentinel_table(tokenizer.sentinel_id, len(tokens), strict=False)
        inputs, targets = denoiser(tokens, sentinels, generator)
    one = torch.ones(1, dtype=torch.long)
    return torch.cat([one * mode, inputs, one * eos]), torch.cat([targets, one * eos])


def ul2_batch(
    token_lists: Sequence[Sequence[int] | torch.Tensor],
    mixture: UL2Mixture,
    tokenizer: SpecialTokens,
    generator: torch.Generator,
    max_input_len: int = 128,
    max_target_len: int = 128,
    pad_to_multiple: int = 8,
    denoiser_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """A padded UL2 batch from raw token sequences.

    Each sequence gets a denoiser drawn from ``mixture`` (or the given ``denoiser_ids``).
    Returns a dict with

    - ``input_ids`` ``(batch, T_in)``: ``[mode] inputs EOS`` padded with ``pad_id``
    - ``attention_mask`` ``(batch, T_in)``: 1 for real tokens, 0 for padding
    - ``labels`` ``(batch, T_out)``: ``targets EOS`` padded with ``IGNORE_INDEX`` (-100, which
      the loss skips)
    - ``denoiser`` ``(batch,)``: index into ``mixture.denoisers``

    The time dimensions are the longest example rounded up to ``pad_to_multiple`` (never above
    the limits).
    """
    B = len(token_lists)
    if B == 0:
        raise ValueError("ul2_batch needs at least one sequence.")
    if denoiser_ids is None:
        denoiser_ids = mixture.sample(B, generator)
    # every sentinel a sequence within the limits could need (a span costs ≥ 2 target tokens)
    sentinels = sentinel_table(tokenizer.sentinel_id, max_target_len // 2 + 1, strict=False)
    pairs = [
        denoise_example(toks, mixture.denoisers[int(d)], tokenizer, generator,
                        max_input_len, max_target_len, sentinels)
        for toks, d in zip(token_lists, denoiser_ids)
    ]
    T_in = min(_round_up(max(len(i) for i, _ in pairs), pad_to_multiple), max_input_len)
    T_out = min(_round_up(max(len(t) for _, t in pairs), pad_to_multiple), max_target_len)
    input_ids = torch.full((B, T_in), tokenizer.pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T_in), dtype=torch.long)
    labels = torch.full((B, T_out), IGNORE_INDEX, dtype=torch.long)
    for b, (inputs, targets) in enumerate(pairs):
        input_ids[b, : len(inputs)] = inputs
        attention_mask[b, : len(inputs)] = 1
        labels[b, : len(targets)] = targets
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "denoiser": denoiser_ids.long()}
