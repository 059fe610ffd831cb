"""Text generation for :class:`pali3_edu.encdec.EncoderDecoder`: greedy, beam search, sampling.

The encoder runs once. The decoder then produces one token per step, starting from the start
token (``cfg.decoder_start_token_id`` = pad = 0). Two ways to run a step:

- **without a cache** (``use_cache=False``): feed the whole prefix again and keep the last
  position's logits. Step ``t`` costs ``t`` tokens of decoder work, so ``n`` tokens cost O(n²).
- **with a KV cache** (default): each decoder layer keeps the keys and values of the tokens it
  has already seen (:class:`pali3_edu.encdec.KVCache`), and the cross-attention keys/values of
  the encoder states are projected once. A step feeds only the newest token: O(n) in total.

Both give the same tokens (the tests check it for greedy and beam search);
``python -m pali3_edu.bench generate`` measures the speed-up.

Output convention: a ``LongTensor`` ``(batch, T)`` of generated ids **without** the start token.
A sequence stops after its EOS (``cfg.eos_token_id`` = 1), which is kept; shorter sequences are
padded with ``cfg.pad_token_id`` (0) up to the longest one, ``T <= max_new_tokens``.
(``transformers``' ``generate`` returns the same ids with the start token in front.)

>>> from pali3_edu.encdec import EncoderDecoder
>>> model = EncoderDecoder.from_preset("tiny-cpu").eval()
>>> out = generate(model, torch.tensor([[5, 6, 7, 1]]), max_new_tokens=4, min_new_tokens=4)
>>> out.shape
torch.Size([1, 4])
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pali3_edu.encdec import EncoderDecoder, KVCache

Strategy = Literal["greedy", "beam", "sample"]


# --------------------------------------------------------------------------------------------
# Picking the next token
# --------------------------------------------------------------------------------------------


def top_k_top_p_filter(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set to ``-inf`` the logits that top-k and/or nucleus (top-p) sampling exclude.

    - ``top_k > 0``: keep the ``top_k`` largest logits of each row (ties at the border kept).
    - ``top_p < 1``: keep the smallest set of most likely tokens whose probabilities sum to at
      least ``top_p`` (the most likely token is always kept).

    ``logits`` ``(batch, vocab)`` → a filtered copy of the same shape. Both filters off
    (``top_k=0, top_p=1``) returns the logits unchanged.
    """
    if top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"Need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k}, top_p={top_p}.")
    logits = logits.clone()
    if 0 < top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above
        drop_sorted = mass_before >= top_p  # the set already reached top_p without this token
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One sampled token id per row of ``logits`` ``(batch, vocab)`` → ``(batch,)``.

    Order as in ``transformers``: divide by the temperature, then top-k, then top-p. With a
    ``generator`` the draw is reproducible; it may live on another device than the logits.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (use strategy='greedy' for temperature 0).")
    probs = top_k_top_p_filter(logits / temperature, top_k, top_p).softmax(dim=-1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# --------------------------------------------------------------------------------------------
# One decoder step, with or without the KV cache
# --------------------------------------------------------------------------------------------


class _Stepper:
    """Next-token logits ``(rows, vocab)`` (fp32) for the running sequences ``(rows, t)``."""

    def __init__(
        self, model: EncoderDecoder, states: Tensor, mask: Tensor | None, use_cache: bool
    ) -> None:
        self.model, self.states, self.mask = model, states, mask
        self.cache = KVCache() if use_cache else None

    def __call__(self, tokens: Tensor) -> Tensor:
        if self.cache is not None:
            tokens = tokens[:, self.cache.length :]  # only what the cache has not seen (1 token)
        hidden = self.model.decode(tokens, self.states, self.mask, cache=self.cache)
        return self.model.lm_logits(hidden[:, -1]).float()

    def reorder(self, rows: Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(rows)


# --------------------------------------------------------------------------------------------
# The strategies
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    model: EncoderDecoder,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    attention_mask: Tensor | None = None,
    max_new_tokens: int = 32,
    strategy: Strategy = "greedy",
    num_beams: int = 4,
    length_penalty: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    min_new_tokens: int = 0,
) -> Tensor:
    """Generate up to ``max_new_tokens`` ids per example → ``LongTensor (batch, T)``.

    - ``input_ids`` ``(batch, source)`` or ``inputs_embeds`` ``(batch, source, d_model)``
      (PaLI-3: visual tokens + prompt), with an optional ``attention_mask`` ``(batch, source)``.
    - ``strategy="greedy"``: the most likely token each step.
    - ``strategy="beam"``: beam search with ``num_beams`` beams; finished hypotheses are ranked
      by ``sum of log-probs / generated_length ** length_penalty`` (as in ``transformers``, with
      its default ``early_stopping=False`` rule); returns the best one.
    - ``strategy="sample"``: sampling with ``temperature``, ``top_k``, ``top_p``; pass a seeded
      ``torch.Generator`` for reproducible draws.
    - ``min_new_tokens``: EOS is forbidden before that many tokens (set it equal to
      ``max_new_tokens`` to force full-length outputs, as the benchmark does).
    - ``use_cache=False`` recomputes the whole prefix each step (for teaching and testing).

    The output holds no start token; each row stops after its EOS and is padded with the pad id.
    The model is put in eval mode while generating (dropout off) and restored afterwards.
    """
    if strategy not in ("greedy", "beam", "sample"):
        raise ValueError(f"Unknown strategy {strategy!r}: use 'greedy', 'beam' or 'sample'.")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    was_training = model.training
    model.eval()
    try:
        states = model.encode(input_ids, inputs_embeds, attention_mask)
        if strategy == "beam":
            return _beam_search(
                model, states, attention_mask, max_new_tokens, num_beams, length_penalty,
                use_cache, min_new_tokens,
            )
        return _greedy_or_sample(
            model, states, attention_mask, max_new_tokens, strategy == "sample", temperature,
            top_k, top_p, generator, use_cache, min_new_tokens,
        )
    finally:
        model.train(was_training)


def _greedy_or_sample(
    model: EncoderDecoder,
    states: Tensor,
    mask: Tensor | None,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
    use_cache: bool,
    min_new_tokens: int,
) -> Tensor:
    cfg = model.cfg
    batch = states.shape[0]
    step_logits = _Stepper(model, states, mask, use_cache)
    tokens = torch.full((batch, 1), cfg.decoder_start_token_id, dtype=torch.long, device=states.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=states.device)
    for step in range(max_new_tokens):
        logits = step_logits(tokens)  # (batch, vocab)
        if step < min_new_tokens:
            logits[:, cfg.eos_token_id] = float("-inf")
        if do_sample:
            next_ids = sample_next(logits, temperature, top_k, top_p, generator)
        else:
            next_ids = logits.argmax(dim=-1)
        next_ids = next_ids.masked_fill(finished, cfg.pad_token_id)  # finished rows get padding
        tokens = torch.cat([tokens, next_ids[:, None]], dim=1)
        finished |= next_ids == cfg.eos_token_id
        if finished.all():
            break
    return tokens[:, 1:]


def _beam_search(
    model: EncoderDecoder,
    states: Tensor,
    mask: Tensor | None,
    max_new_tokens: int,
    num_beams: int,
    length_penalty: float,
    use_cache: bool,
    min_new_tokens: int,
) -> Tensor:
    """Beam search with the rules of ``transformers`` (``early_stopping=False``):

    1. Each step, every running beam proposes every token; keep the ``2·num_beams`` best
       continuations by total log-probability (twice as many, so that enough stay open when
       some end in EOS).
    2. Continuations that end (EOS, or the length limit) and rank among the first ``num_beams``
       become finished hypotheses with score ``logprob / length ** length_penalty``; the best
       ``num_beams`` finished hypotheses per example are kept.
    3. The best ``num_beams`` continuations that did not end are the next running beams.
    4. An example is done once ``num_beams`` hypotheses are finished and its best running beam,
       scored at the current length, cannot beat the worst of them; stop when all are done.
    """
    cfg = model.cfg
    batch, beams, device = states.shape[0], num_beams, states.device
    if beams < 1:
        raise ValueError("num_beams must be >= 1.")
    neg = -1.0e9  # "impossible" score (finite, so that sums stay comparable)

    # every beam of an example attends to the same encoder states
    states = states.repeat_interleave(beams, dim=0)
    mask = None if mask is None else mask.repeat_interleave(beams, dim=0)
    step_logits = _Stepper(model, states, mask, use_cache)

    seqs = torch.full((batch * beams, 1), cfg.decoder_start_token_id, dtype=torch.long,
                      device=device)
    run_scores = torch.zeros(batch, beams, device=device)
    run_scores[:, 1:] = neg  # at step 0 all beams are identical: let only the first propose
    done_seqs = torch.full((batch, beams, max_new_tokens), cfg.pad_token_id, dtype=torch.long,
                           device=device)
    done_scores = torch.full((batch, beams), neg, device=device)
    done_lengths = torch.zeros(batch, beams, dtype=torch.long, device=device)
    done_flags = torch.zeros(batch, beams, dtype=torch.bool, device=device)
    improvable = torch.ones(batch, dtype=torch.bool, device=device)
    first_beams = torch.arange(2 * beams, device=device) < beams
    rows = torch.arange(batch, device=device)[:, None]

    for step in range(max_new_tokens):
        length = step + 1  # generated tokens including the new one
        log_probs = F.log_softmax(step_logits(seqs), dim=-1)  # (batch*beams, vocab)
        if step < min_new_tokens:
            log_probs[:, cfg.eos_token_id] = float("-inf")
        vocab = log_probs.shape[-1]
        # 1. the 2·beams best continuations over all (beam, token) pairs of each example
        total = (log_probs.view(batch, beams, vocab) + run_scores[..., None]).view(batch, -1)
        cand_scores, cand_index = total.topk(2 * beams, dim=-1)  # (batch, 2·beams), sorted
        cand_beam, cand_token = cand_index // vocab, cand_index % vocab
        src_rows = (rows * beams + cand_beam).flatten()  # flat row of the parent beam
        cand_seqs = torch.cat([seqs[src_rows], cand_token.reshape(-1, 1)], dim=1)
        cand_seqs = cand_seqs.view(batch, 2 * beams, length + 1)
        ends = (cand_token == cfg.eos_token_id) | (length == max_new_tokens)

        # 2. finished hypotheses: merge the new ones with the kept ones, keep the best `beams`
        new_done = ends & first_beams & improvable[:, None]
        new_scores = (cand_scores / length**length_penalty).masked_fill(~new_done, neg)
        new_seqs = torch.full_like(done_seqs.repeat(1, 2, 1), cfg.pad_token_id)  # (batch, 2·beams, max)
        new_seqs[..., :length] = cand_seqs[..., 1:]  # without the start token
        new_lengths = torch.full_like(new_done, length, dtype=torch.long)
        best = torch.cat([done_scores, new_scores], dim=1).topk(beams, dim=-1).indices
        done_scores = _pick(done_scores, new_scores, best)
        done_flags = _pick(done_flags, new_done, best)
        done_lengths = _pick(done_lengths, new_lengths, best)
        done_seqs = _pick(done_seqs, new_seqs, best)

        # 3. next running beams: the best continuations that did not end
        open_scores = cand_scores + ends.float() * neg
        keep = open_scores.topk(beams, dim=-1).indices  # (batch, beams)
        run_scores = open_scores.gather(1, keep)
        parent = src_rows.view(batch, 2 * beams).gather(1, keep).flatten()
        seqs = _pick(None, cand_seqs, keep).view(batch * beams, -1)

        step_logits.reorder(parent)  # the cache follows the beams that continue

        # 4. can the best running beam still beat the worst finished hypothesis?
        worst_done = torch.where(done_flags, done_scores.min(dim=1, keepdim=True).values, neg)
        best_running = run_scores[:, :1] / length**length_penalty
        improvable &= (best_running > worst_done).any(dim=1)
        if not improvable.any() or bool(ends.all()):
            break

    out_len = int(done_lengths[:, 0].max())
    return done_seqs[:, 0, :out_len]


def _pick(old: Tensor | None, new: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` ``(batch, k)`` of ``cat([old, new], dim=1)`` (each ``(batch, n, ...)``)."""
    both = new if old is None else torch.cat([old, new], dim=1)
    index = index.view(*index.shape, *([1] * (both.dim() - 2))).expand(-1, -1, *both.shape[2:])
    return both.gather(1, index)


__all__ = ["generate", "sample_next", "top_k_top_p_filter"]
